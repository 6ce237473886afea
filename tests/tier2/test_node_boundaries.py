"""Every node, fed boundary values on every input, either works or raises the pack's own error.

The test walks each node's INPUT_TYPES and, starting from a valid call on the diffusers bridge,
replaces one input at a time with boundary values of its declared type (min and max of numbers, NaN
and inf for floats, empty and odd strings, empty / 1 px / grayscale / RGBA / NaN images, empty / 2-D /
out-of-range / NaN masks, empty conditioning and latents, missing or escaping file names). The node
must return or raise a StyleKitError: no raw library exception escapes a node. Long work (training,
inversion) is stopped at its first progress report: reaching it means the inputs were accepted.
The input MODEL and CLIP stay bit-identical after every refusal.
"""
import math
import os

import pytest
import torch
from safetensors.torch import save_file

from stylekit.attention.layers import model_layers
from stylekit.bridge import BridgePatcher
from tiny_models import (flat_state_dict, tiny_bridge_clip, tiny_bridge_clip_vision, tiny_bridge_vae,
                                  tiny_deadiff_state_dict, tiny_dvae, tiny_ip_adapter, tiny_sd15_unet, tiny_translator, write_official_dvae_pickles)
from stylekit.errors import StyleKitError
from stylekit.models.catversion import CatVersionPrefix, save_prefix
from stylekit.models.stylerdalle import save_translator
from stylekit.nodes import NODE_CLASS_MAPPINGS as NODES
from stylekit.nodes import comfy_glue


class Enough(Exception):
    """Raised at the first progress report of long work: the node accepted its inputs."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Valid objects of every type the nodes take, and valid files in a folder."""
    folder = tmp_path_factory.mktemp("boundary")
    model = BridgePatcher(tiny_sd15_unet(seed=0))
    layers = model_layers(model)
    deadiff_sd = tiny_deadiff_state_dict(layers, seed=1)
    save_file({k: v.contiguous() for k, v in deadiff_sd.items()}, str(folder / "deadiff.safetensors"),
              metadata={"qformer_heads": "4"})
    torch.save({"state_dict": deadiff_sd}, str(folder / "deadiff_v1.ckpt"))
    save_file(flat_state_dict(tiny_ip_adapter(layers, "plain", feature_width=48, tokens=4)), str(folder / "adapter.safetensors"))
    save_prefix(CatVersionPrefix.random([2, 3], 48, seed=0, base_word="dog"), str(folder / "prefix.safetensors"))
    write_official_dvae_pickles(*tiny_dvae(seed=1), folder)
    from stylekit.models.dvae import convert_files
    convert_files(str(folder / "encoder.pkl"), str(folder / "decoder.pkl"), str(folder / "dvae.safetensors"))
    save_translator(tiny_translator(seed=2), str(folder / "translator.safetensors"))
    cv, clip = tiny_bridge_clip_vision(width=48), tiny_bridge_clip(width=48)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 64, 64, 3, generator=g)
    cond = [[torch.randn(1, 77, 64, generator=g), {}]]
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=g)}
    w = dict(folder=folder, model=model, clip=clip, cv=cv, vae=tiny_bridge_vae(), image=image, cond=cond, latent=latent)
    w["deadiff"] = NODES["StyleKitDEADiffLoader"]().load(str(folder / "deadiff.safetensors"))[0]
    w["tokens"] = NODES["StyleKitDEADiffEncode"]().encode(w["deadiff"], tiny_bridge_clip_vision(), image, "style", "")[0]
    w["adapter"] = NODES["StyleKitAdapterLoader"]().load(str(folder / "adapter.safetensors"))[0]
    w["inversion"] = NODES["StyleKitDDIMInvert"]().invert(model, latent, latent, cond, 2, "output 6-11 (StyleID)",
                                                          "fp32", "cpu", "store")[0]
    w["prefix"] = NODES["StyleKitCatVersionLoad"]().load(str(folder / "prefix.safetensors"))[0]
    w["stylerdalle"] = NODES["StyleKitStylerDALLELoad"]().load(str(folder / "dvae.safetensors"),
                                                              str(folder / "translator.safetensors"))[0]
    return w


@pytest.fixture(autouse=True)
def bridge_sampler(monkeypatch):
    """Build Pairs draws with ComfyUI's sampler; here the bridge's stands in (tier 3 runs ComfyUI's)."""
    from stylekit.bridge.sampling import text_to_image
    monkeypatch.setattr(comfy_glue, "text_to_image", text_to_image)


def pairs_here() -> str:
    """A DEADiff data folder (two pairs of each kind) in the current folder, which is ComfyUI's input folder
    to a node run outside ComfyUI; its name."""
    if not os.path.isdir("pairs"):
        from stylekit.toy.deadiff import write_pair_folder
        write_pair_folder("pairs", per_kind=2, seed=0)
    return "pairs"


def valid_call(node_id, w) -> dict:
    f = str(w["folder"])
    return {
        "StyleKitPatchMap": dict(model=w["model"]),
        "StyleKitDDIMInvert": dict(model=w["model"], content=w["latent"], style=w["latent"], conditioning=w["cond"],
                                   steps=2, store_blocks="output 6-11 (StyleID)", store_dtype="fp16",
                                   store_device="cpu", mode="store"),
        "StyleKitFeatureFusion": dict(model=w["model"], inversion=w["inversion"], preset="StyleID", gamma=0.75,
                                      temperature=1.5, content_kv=0.0, weight=1.0, adain_start=True, start_percent=0.0,
                                      end_percent=1.0, mask=torch.ones(1, 64, 64)),
        "StyleKitDEADiffLoader": dict(deadiff_name=f + "/deadiff.safetensors"),
        "StyleKitDEADiffExtract": dict(checkpoint=f + "/deadiff_v1.ckpt", filename="boundary"),
        "StyleKitDEADiffEncode": dict(deadiff=w["deadiff"], clip_vision=tiny_bridge_clip_vision(), image=w["image"], mode="style",
                                      mix_weights=""),
        "StyleKitDEADiffApply": dict(model=w["model"], tokens=w["tokens"], img_weight=1.0, layer_split="official",
                                     zero_tokens=True, start_percent=0.0, end_percent=1.0, block_weights=""),
        "StyleKitDEADiffBuildPairs": dict(model=w["model"], clip=tiny_bridge_clip(), vae=w["vae"], subjects="a cat\na ship",
                                          styles="ink\noil", template="a {subject}, {style}", per_style=2, per_subject=2,
                                          negative="", width=64, height=64, steps=1, cfg=1.0, seed=0,
                                          data_folder="built"),
        "StyleKitDEADiffTrain": dict(model=w["model"], clip=tiny_bridge_clip(), clip_vision=tiny_bridge_clip_vision(),
                                     vae=w["vae"], data_folder=pairs_here(), steps=1, learning_rate=1e-4, warmup=0,
                                     batch_size=2, seed=0, filename="boundary", deadiff=w["deadiff"]),
        "StyleKitCatVersionLoad": dict(catversion_name=f + "/prefix.safetensors"),
        "StyleKitCatVersionApply": dict(clip=w["clip"], catversion=w["prefix"], strength=1.0, official_bias=True),
        "StyleKitCatVersionTrain": dict(images=w["image"], model=w["model"], clip=tiny_bridge_clip(), vae=w["vae"],
                                        base_word="dog", steps=1, learning_rate=1e-2, batch_size=1, hflip=False,
                                        layers="2, 3", seed=0, filename="boundary"),
        "StyleKitCatVersionScore": dict(clip_vision=w["cv"], reference=w["image"], generated=w["image"],
                                        background="black", reference_mask=torch.ones(1, 64, 64), clip=w["clip"],
                                        prompt="a dog"),
        "StyleKitAdapterLoader": dict(adapter_name=f + "/adapter.safetensors"),
        "StyleKitStyleAdapter": dict(model=w["model"], adapter=w["adapter"], clip_vision=w["cv"], image=w["image"],
                                     fusion="cross-modal AdaIN", preset="all", weight=1.0, start_percent=0.0,
                                     end_percent=1.0, block_weights="", mask=torch.ones(1, 64, 64)),
        "StyleKitTeacherLayout": dict(model=w["model"], teacher_fraction=0.4),
        "StyleKitTrainingImages": dict(image_1=w["image"], side=64, fit="center crop", image_2=torch.rand(2, 48, 80, 3)),
        "StyleKitStylerDALLELoad": dict(dvae_name=f + "/dvae.safetensors", translator_name=f + "/translator.safetensors"),
        "StyleKitStylerDALLEStylize": dict(stylerdalle=w["stylerdalle"], images=w["image"], seed=0, sampling="sample",
                                           official_dropout=False, batch_size=4),
        "StyleKitStylerDALLEPretrain": dict(stylerdalle=w["stylerdalle"], steps=1, learning_rate=1e-3, batch_size=1,
                                            warmup_steps=0, seed=0, filename="boundary", images=w["image"]),
        "StyleKitStylerDALLETrainStyle": dict(stylerdalle=w["stylerdalle"], images=w["image"], clip_vision=w["cv"],
                                              clip=w["clip"], style="oil", captions="a dog", steps=1,
                                              learning_rate=1e-6, batch_size=1, official_dropout=False, seed=0,
                                              filename="boundary"),
        "StyleKitStylerDALLEConvert": dict(encoder_pickle=f + "/encoder.pkl", decoder_pickle=f + "/decoder.pkl",
                                           filename="boundary"),
    }[node_id]


def boundary_values(typ, opts):
    if typ == "INT":
        return [v for v in (opts.get("min"), opts.get("max")) if v is not None]
    if typ == "FLOAT":
        return [v for v in (opts.get("min"), opts.get("max")) if v is not None] + [math.nan, math.inf, -math.inf]
    if typ == "STRING":
        return ["", "   ", "nul\x00", "x" * 1000, "../../escape", "1e999, nan"]
    if typ == "BOOLEAN":
        return [True, False]
    if isinstance(typ, (list, tuple)):
        return list(typ) + ["", "missing.safetensors", "../../escape.safetensors", "/etc/passwd"]
    if typ == "IMAGE":
        return [torch.rand(0, 64, 64, 3), torch.rand(1, 1, 1, 3), torch.rand(1, 64, 64, 1), torch.rand(1, 64, 64, 4),
                torch.full((1, 64, 64, 3), math.nan), torch.rand(2, 64, 48, 3)]
    if typ == "MASK":
        return [torch.ones(0, 64, 64), torch.ones(64, 64), torch.full((1, 64, 64), 2.0), torch.full((1, 64, 64), -1.0),
                torch.full((1, 64, 64), math.nan), torch.ones(3, 64, 64), torch.zeros(1, 7, 5)]
    if typ == "LATENT":
        return [{"samples": torch.randn(0, 4, 8, 8)}, {"samples": torch.full((1, 4, 8, 8), math.nan)}, {}]
    if typ == "CONDITIONING":
        return [[], [[torch.randn(1, 0, 64), {}]], [["not a tensor", {}]]]
    return []  # MODEL, CLIP and the pack's own types: the valid object only


def cases():
    for node_id, cls in sorted(NODES.items()):
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, decl in spec.get(section, {}).items():
                opts = decl[1] if len(decl) > 1 else {}
                for i, value in enumerate(boundary_values(decl[0], opts)):
                    yield pytest.param(node_id, name, i, id=f"{node_id}-{name}-{i}")


def weights(obj):
    return {k: v.clone() for k, v in obj.state_dict().items()}


@pytest.mark.parametrize("node_id,name,index", list(cases()))
def test_node_takes_or_refuses_boundary_values(world, monkeypatch, tmp_path, node_id, name, index):
    monkeypatch.chdir(tmp_path)  # outside ComfyUI nodes write here: nothing may land anywhere else
    monkeypatch.setattr(comfy_glue, "interrupted", stop_at_first_step(monkeypatch))
    cls = NODES[node_id]
    spec = cls.INPUT_TYPES()
    decl = {**spec.get("required", {}), **spec.get("optional", {})}[name]
    value = boundary_values(decl[0], decl[1] if len(decl) > 1 else {})[index]
    kwargs = dict(valid_call(node_id, world), **{name: value})
    unet, clip_before = weights(world["model"].unet), weights(world["clip"].patcher.model)
    try:
        getattr(cls(), cls.FUNCTION)(**kwargs)
    except (StyleKitError, Enough):
        pass
    except Exception as e:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{node_id}({name}={value!r:.60}) raised {type(e).__module__}.{type(e).__name__}: {e}")
    assert all(torch.equal(v, unet[k]) for k, v in world["model"].unet.state_dict().items())
    assert all(torch.equal(v, clip_before[k]) for k, v in world["clip"].patcher.model.state_dict().items())
    assert world["model"].model_options == {"transformer_options": {}}


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_the_valid_call_works(world, monkeypatch, tmp_path, node_id):
    monkeypatch.chdir(tmp_path)
    cls = NODES[node_id]
    assert getattr(cls(), cls.FUNCTION)(**valid_call(node_id, world)) is not None


def stated_inputs(pattern: str):
    """(node, input, N) for every IMAGE input whose tooltip states a limit N as ``pattern`` (one number group) reads it."""
    import re
    for node_id, cls in sorted(NODES.items()):
        spec = cls.INPUT_TYPES()
        for name, decl in {**spec.get("required", {}), **spec.get("optional", {})}.items():
            found = re.search(pattern, decl[1].get("tooltip", "")) if decl[0] == "IMAGE" else None
            if found:
                yield pytest.param(node_id, name, int(found.group(1)), id=f"{node_id}-{name}")


def stated_limits():
    """(node, input, N) for every IMAGE input whose tooltip says "At most N images"."""
    return stated_inputs(r"At most (\d+) images")


def stop_at_first_step(monkeypatch):
    """A node's first progress step raises Enough: what a node refuses, it refuses before any work."""
    def stop(*a, **k):
        raise Enough
    monkeypatch.setattr(comfy_glue, "progress", lambda total: stop)
    return stop


@pytest.mark.parametrize("node_id,name,limit", list(stated_limits()))
def test_a_node_takes_the_batch_its_tooltip_states_and_refuses_one_more(world, monkeypatch, tmp_path, node_id, name,
                                                                         limit):
    monkeypatch.chdir(tmp_path)
    stop_at_first_step(monkeypatch)
    cls = NODES[node_id]
    call = valid_call(node_id, world)
    with pytest.raises(StyleKitError, match=f"{name} holds {limit + 1} images; this node takes at most {limit}"):
        getattr(cls(), cls.FUNCTION)(**dict(call, **{name: torch.rand(limit + 1, 8, 8, 3)}))
    try:  # the stated batch itself is not refused for its size
        getattr(cls(), cls.FUNCTION)(**dict(call, **{name: torch.rand(limit, 8, 8, 3)}))
    except Enough:
        pass
    except StyleKitError as e:
        assert "at most" not in str(e), e


def test_every_checked_batch_limit_is_stated():
    """The nodes that check a batch limit state it in a tooltip (twelve IMAGE inputs of five nodes)."""
    assert {(p.values[0], p.values[1]) for p in stated_limits()} == {
        ("StyleKitStyleAdapter", "image"), ("StyleKitStyleAdapter", "negative_style_image"),
        ("StyleKitDEADiffEncode", "image"), ("StyleKitCatVersionScore", "reference"),
        ("StyleKitCatVersionScore", "generated"), ("StyleKitCatVersionTrain", "images"),
        *{("StyleKitTrainingImages", f"image_{i}") for i in range(1, 7)}}


def stated_sides():
    """(node, input, N) for every IMAGE input whose tooltip says "Sides of at most N px"."""
    return stated_inputs(r"Sides of at most (\d+) px")


@pytest.mark.parametrize("node_id,name,limit", list(stated_sides()))
def test_a_node_takes_the_side_its_tooltip_states_and_refuses_a_longer_one(world, monkeypatch, tmp_path, node_id, name,
                                                                          limit):
    """Refused before any work (no progress step), naming the field, both sides and the fix; an image as large
    as the stated side gets past the check, a sliver is refused too."""
    monkeypatch.chdir(tmp_path)
    stop_at_first_step(monkeypatch)
    cls = NODES[node_id]
    call = valid_call(node_id, world)
    for shape in ((1, limit + 8, 32, 3), (1, 32, limit + 8, 3)):
        h, w = shape[1], shape[2]
        with pytest.raises(StyleKitError, match=f"{name} is {w}x{h} px; this node takes sides of at most {limit} px.*scale"):
            getattr(cls(), cls.FUNCTION)(**dict(call, **{name: torch.rand(*shape)}))
    with pytest.raises(StyleKitError, match=f"{name} is 8x{limit} px; this node takes sides of at least"):
        getattr(cls(), cls.FUNCTION)(**dict(call, **{name: torch.rand(1, limit, 8, 3)}))
    with pytest.raises(Enough):
        getattr(cls(), cls.FUNCTION)(**dict(call, **{name: torch.rand(1, limit, 32, 3)}))


def test_every_checked_side_limit_is_stated():
    assert {(p.values[0], p.values[1]) for p in stated_sides()} == {("StyleKitCatVersionTrain", "images")}
