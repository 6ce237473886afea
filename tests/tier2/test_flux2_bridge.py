"""Flux.2 on the diffusers bridge: a tiny Flux2Transformer2DModel as the DiT host (tier 2).

The hooks' contract on its fused single-stream blocks, flow inversion, Feature Fusion (both presets, store
and recompute), the teacher, the nodes, and the input model left untouched.
"""
import pytest
import torch
from dit_bridges import CASES, case_data, invert
from stylekit.attention.feature_fusion import PRESETS
from stylekit.attention.layers import UnsupportedModelError, model_layers
from stylekit.attention.rope import embed_ids
from stylekit.bridge.flux2 import Flux2BridgePatcher, flux2_ids
from stylekit.models.magicstyle import fusion_model
from stylekit.models.stylestudio import teacher_model

CTX, CHANNELS = 32, 8


@pytest.fixture(scope="module")
def transformer():
    return CASES["flux2"].build(0)


@pytest.fixture
def flux2(transformer):
    return Flux2BridgePatcher(transformer)


@pytest.fixture(scope="module")
def data():
    return case_data(CASES["flux2"])


def raw(transformer, x, sigma, cond, guidance=True):
    """The unpatched transformer's denoised x0 = x - sigma * v, its position ids built by diffusers' Flux.2 pipeline."""
    from diffusers import Flux2Pipeline
    b, c, h, w = x.shape
    txt_ids, img_ids = Flux2Pipeline._prepare_text_ids(cond["c_crossattn"]), Flux2Pipeline._prepare_latent_ids(x)
    with torch.no_grad():
        v = transformer(hidden_states=x.flatten(2).transpose(1, 2), encoder_hidden_states=cond["c_crossattn"],
                        timestep=sigma, img_ids=img_ids, txt_ids=txt_ids,
                        guidance=cond["guidance"] if guidance else None).sample
    return x - sigma.view(-1, 1, 1, 1) * v.transpose(1, 2).reshape(b, c, h, w)


def test_layers_read_from_the_model(flux2):
    layers = model_layers(flux2)
    assert layers.family == "flux2" and layers.is_dit and layers.title == "Flux.2"
    assert layers.keys == [("double", 0, 0), ("double", 1, 0), ("single", 0, 0), ("single", 1, 0)]
    assert layers.layers[0].context_dim == CTX and layers.layers[0].heads == 2
    with pytest.raises(UnsupportedModelError, match="SD1.5 / SDXL models; the model given is Flux.2"):
        layers.require("ip_adapter", "X")


def test_hooks_see_flux_contract_on_both_block_kinds(flux2, transformer, data, roundoff):
    """Every block calls the hooks with (B, heads, text + image, dim_head) q/k/v before RoPE and the image
    slice after the text; a hook that hands q back unchanged takes the bridge's own RoPE and attention path,
    which equals diffusers' within float32 round-off, while a pe of another theta (Flux.1's 10000 for Flux.2's
    2000) is seen far above it: the 4-axis ids and theta are the model's."""
    x, s, ctx = data["content"], torch.tensor([0.6]), data["cond"]["c_crossattn"]
    plain = raw(transformer, x, s, data["cond"])
    seen = []

    def hand_back(q, k, v, pe=None, attn_mask=None, extra_options=None):
        seen.append((extra_options["block_type"], extra_options["block_index"], tuple(q.shape), extra_options["img_slice"]))
        return {"q": q}
    txt, img = flux2_ids(6, 8, 8)
    flux1_theta = embed_ids(torch.cat([txt, img])[None], transformer.config.axes_dims_rope, 10000)
    with torch.no_grad():
        ours = flux2.apply_model(x, s, ctx, {"patches": {"attn1_patch": [hand_back]}}, guidance=data["cond"]["guidance"])
        wrong = flux2.apply_model(x, s, ctx, {"patches": {"attn1_patch": [lambda q, k, v, **kw: {"pe": flux1_theta}]}},
                                  guidance=data["cond"]["guidance"])
    assert seen == [(kind, i, (1, 2, 6 + 64, 16), [6, 70]) for kind in ("double", "single") for i in range(2)]
    tol = roundoff(plain, flux2, 1)  # one call: the layers' reordered reductions, float32
    assert float((ours - plain).abs().max()) <= tol
    assert float((wrong - plain).abs().max()) > 10 * tol


def test_idle_patches_are_bit_identical_to_the_unpatched_transformer(flux2, transformer, data):
    inv, sig = invert(flux2, data, 4)
    x, s, cond = data["content"], torch.tensor([0.6]), data["cond"]
    plain = raw(transformer, x, s, cond)
    for m in (fusion_model(flux2, inv, PRESETS["StyleID"], weight=0.0),
              fusion_model(flux2, inv, PRESETS["MagicStyle"], sigma_start=0.3, sigma_end=0.0),  # window not reached
              teacher_model(flux2, 0.0, 1.0)):
        with torch.no_grad():
            out = m.apply_model(x, s, cond["c_crossattn"], dict(m.model_options["transformer_options"], sigmas=s,
                                                                 cond_or_uncond=[0]), guidance=cond["guidance"])
        assert torch.equal(out, plain)


def test_nodes_take_a_flux2_model(flux2, data):
    from stylekit.attention.families import late_double
    from stylekit.nodes.magicstyle import AUTO_BLOCKS, StyleKitDDIMInvert, StyleKitFeatureFusion
    from stylekit.nodes.patch_map import StyleKitPatchMap
    from stylekit.nodes.stylestudio import StyleKitTeacherLayout
    cond = [[data["cond"]["c_crossattn"], {"guidance": 1.0}]]
    latent = {"samples": data["content"]}
    inv, _, sigmas = StyleKitDDIMInvert().invert(flux2, latent, {"samples": data["style"]}, cond, 4, AUTO_BLOCKS,
                                                 "fp16", "model device", "auto (SD: store, Flux: recompute)")
    assert inv.family == "flux2" and inv.grid == (8, 8)  # one token per latent pixel
    assert list(inv.store.policy.layers) == late_double(model_layers(flux2))
    model = StyleKitFeatureFusion().apply(flux2, inv, "MagicStyle", 0.75, 1.5, 0.0, 1.0, True, 0.0, 1.0)[0]
    assert "double 1.0 joint: feature_fusion" in StyleKitPatchMap().run(model)[1]
    teacher = StyleKitTeacherLayout().apply(model, 0.5, unstyled_conditioning=cond)[0]
    assert "teacher_layout" in StyleKitPatchMap().run(teacher)[1]


def test_a_model_without_guidance_runs_without_it(data):
    """Klein's distilled layout has no guidance embedding: the bridge passes none (diffusers refuses one)."""
    from tiny_models import tiny_flux2
    klein = tiny_flux2(seed=3, channels=CHANNELS, context_dim=CTX, guidance=False)
    x, s = data["content"], torch.tensor([0.7])
    with torch.no_grad():
        out = Flux2BridgePatcher(klein).model.apply_model(x, s, c_crossattn=data["cond"]["c_crossattn"],
                                                          guidance=torch.tensor([3.5]), transformer_options={})
    assert torch.equal(out, raw(klein, x, s, data["cond"], guidance=False))


@pytest.mark.parametrize("kind", ["double", "single"])
def test_a_fused_blocks_text_rows_are_the_unpatched_ones(flux2, transformer, data, kind, roundoff):
    """Feature Fusion keeps the text rows' attention plain through the output hook, which must run where ComfyUI's
    runs it: on the attention output before the projections (the fused to_out of a single-stream block). So the
    first fused block hands on the unpatched text rows (within round-off: the plain rows are recomputed), while its
    image rows change. The single-stream case fuses the single blocks only, so that block 0's input is unpatched."""
    from dit_bridges import text_rows_after
    from stylekit.attention.layers import model_layers
    keys = model_layers(flux2).select(kind)
    inv, sig = invert(flux2, data, 4, layers=keys)
    x, s, cond = data["content"], sig[1:2], data["cond"]  # a stored level
    block = (transformer.transformer_blocks if kind == "double" else transformer.single_transformer_blocks)[0]
    m = fusion_model(flux2, inv, PRESETS["StyleID"])
    to = dict(m.model_options["transformer_options"], sigmas=s, cond_or_uncond=[0])
    txt = cond["c_crossattn"].shape[1]

    def run(model, options):
        return lambda: model.apply_model(x, s, cond["c_crossattn"], options, guidance=cond["guidance"])
    plain = text_rows_after(transformer, block, run(flux2, {}), txt, kind == "double")
    fused = text_rows_after(transformer, block, run(m, to), txt, kind == "double")
    assert float((fused - plain).abs().max()) <= roundoff(plain, flux2, 1)
    assert not torch.equal(run(m, to)(), run(flux2, {})())  # the image rows were fused
