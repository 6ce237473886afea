"""Tier 3: StyleStudio nodes with ComfyUI's CLIP vision, models/ipadapter folder, KSampler and its
sample_sigmas, on tiny SD1.5 and SDXL UNetModels."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
STEPS = 5


def ksample(model, cond, neg, cfg=4.0, batch=1):
    import nodes
    latent = {"samples": torch.zeros(batch, 4, 16, 16)}
    return nodes.KSampler().sample(model, 0, STEPS, cfg, "euler", "normal", cond, neg, latent)[0]["samples"]


def conds(sdxl=False):
    g = torch.Generator().manual_seed(1)
    extra = lambda: {"pooled_output": torch.randn(1, 1280, generator=g), "width": 128, "height": 128} if sdxl else {}  # noqa: E731
    return [[torch.randn(1, 77, 64, generator=g), extra()]], [[torch.randn(1, 77, 64, generator=g), extra()]]


def spy_calls(model, attn):
    """Wrap every installed router so the test sees which keys ComfyUI called, and with what."""
    calls = []
    table = model.model_options["transformer_options"]["patches_replace"][attn]
    for key, router in list(table.items()):
        table[key] = (lambda r, k: (lambda q, kk, v, e: (calls.append((k, q.shape[0], e.get("stylekit_teacher_chunks"))),
                                                         r(q, kk, v, e))[1]))(router, key)
    return calls


@pytest.mark.parametrize("host,kind,name", [("sd15", "plain", "ip-adapter_sd15.safetensors"),
                                            ("sdxl", "plus", "csgo_4_32.bin")])
def test_style_adapter_and_teacher_in_comfyui(comfy_nodes, tmp_path, host, kind, name):
    import folder_paths
    from comfy_host import comfy_clip_vision_tiny, comfy_sd15_random, comfy_sdxl_random, write_tiny_adapter
    from stylekit.attention.layers import model_layers
    from stylekit.nodes.stylestudio import StyleKitAdapterLoader, StyleKitStyleAdapter, StyleKitTeacherLayout

    model = comfy_sd15_random() if host == "sd15" else comfy_sdxl_random()
    write_tiny_adapter(model, tmp_path / "ipadapter", name, kind, csgo=name.startswith("csgo"))
    folder_paths.add_model_folder_path("ipadapter", str(tmp_path / "ipadapter"), is_default=True)
    assert name in StyleKitAdapterLoader.INPUT_TYPES()["required"]["adapter_name"][0]
    adapter = StyleKitAdapterLoader().load(name)[0]
    cv = comfy_clip_vision_tiny(tmp_path)
    image = torch.rand(1, 120, 90, 3, generator=torch.Generator().manual_seed(0))
    cond, neg = conds(host == "sdxl")

    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        before = ksample(model, cond, neg)
        styled = StyleKitStyleAdapter().apply(model, adapter, cv, image, "cross-modal AdaIN", "all", 1.0, 0.0, 1.0, "")[0]
        taught = StyleKitTeacherLayout().apply(styled, 0.4)[0]
        off = StyleKitTeacherLayout().apply(styled, 0.0)[0]
        spied = taught.clone()
        calls = spy_calls(spied, "attn2")
        out = ksample(spied, cond, neg, batch=2)
        plain_styled = ksample(styled, cond, neg)
        assert torch.equal(ksample(off, cond, neg), plain_styled)  # 0 teacher steps: exactly no teacher
        assert (ksample(taught, cond, neg) - plain_styled).abs().mean() > 1e-4
        assert torch.equal(ksample(model, cond, neg), before)  # the input model is untouched
    wanted = {k for k in model_layers(model).keys if k[0] in adapter.blocks}
    assert {k for k, _, _ in calls} == wanted  # ComfyUI called every installed key
    doubled = [rows for _, rows, n in calls if n is not None]
    per_step = len(wanted)  # cond and uncond run batched in one call per step here
    assert len(doubled) == round(0.4 * STEPS) * per_step and set(doubled) == {8}  # 2 images x (cond, uncond) x 2
    assert torch.isfinite(out).all() and out.shape == (2, 4, 16, 16)
    assert (plain_styled - before).abs().mean() > 1e-3


def test_pairing_errors_before_sampling(comfy_nodes, tmp_path):
    import folder_paths
    from comfy_host import comfy_clip_vision_tiny, comfy_sd15_random, comfy_sdxl_random, write_tiny_adapter
    from stylekit.attention.layers import UnsupportedModelError
    from stylekit.nodes.stylestudio import StyleKitAdapterLoader, StyleKitStyleAdapter

    write_tiny_adapter(comfy_sd15_random(), tmp_path / "ipadapter", "sd15.safetensors")
    folder_paths.add_model_folder_path("ipadapter", str(tmp_path / "ipadapter"), is_default=True)
    adapter = StyleKitAdapterLoader().load("sd15.safetensors")[0]
    image = torch.rand(1, 64, 64, 3)
    with pytest.raises(UnsupportedModelError, match=r"sd15.safetensors.*16 cross-attention layers.*SDXL-shaped \(17"):
        StyleKitStyleAdapter().apply(comfy_sdxl_random(), adapter, comfy_clip_vision_tiny(tmp_path), image,
                                     "add", "all", 1.0, 0.0, 1.0, "")


def test_comfy_and_bridge_vision_features_agree(comfy_nodes, tmp_path):
    from comfy_host import comfy_clip_vision_tiny
    from stylekit.bridge import BridgeClipVision
    from tiny_models import tiny_clip_vision
    from stylekit.nodes.comfy_glue import vision_features
    hf = tiny_clip_vision()
    cv = comfy_clip_vision_tiny(tmp_path, hf)
    with torch.no_grad():
        for p in hf.parameters():  # ComfyUI keeps CLIP vision weights in its text-encoder dtype
            p.copy_(p.to(cv.dtype).float())
    image = torch.rand(2, 120, 90, 3, generator=torch.Generator().manual_seed(0))
    for feature in ("image_embeds", "penultimate_hidden_states"):
        torch.testing.assert_close(vision_features(cv, image, feature), vision_features(BridgeClipVision(hf), image, feature),
                                   atol=2e-3, rtol=2e-3)
