"""Tier 3, Qwen-Image: a tiny model built from ComfyUI's own classes, through ComfyUI's own sampler and hooks.

Qwen-Image's blocks call attn1_patch but no output patch, build their text mask before the patch and rotate
q and k after it with whatever pe comes back. So StyleKit returns identity rotations, keeps the text rows
plain by running a changed block once more plainly (a block replace), and refuses what would need an
output or mask hook (a weight below 1, a MASK). ComfyUI 0.3.64's Qwen-Image has no attention hook: the
model is refused there with what to update.
"""
import pytest
import torch
from test_flux_comfy import sample_advanced

GRID = 4  # image tokens per side: the 8x8 one-frame latent in 2x2 patches


@pytest.fixture
def qwen():
    from comfy_host import comfy_qwen_image_tiny
    from stylekit.attention.layers import has_joint_hooks
    import comfy.ldm.qwen_image.model as qm
    if not has_joint_hooks(qm.Attention):
        pytest.skip("this ComfyUI's Qwen-Image blocks have no attn1_patch hook")
    return comfy_qwen_image_tiny()


def conds(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 6, 32, generator=g), {}]]


def latent(seed):
    g = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(1, 16, 1, 2 * GRID, 2 * GRID, generator=g)}


def test_an_old_comfyui_qwen_image_is_refused_with_what_to_update():
    import comfy.ldm.qwen_image.model as qm
    from comfy_host import comfy_qwen_image_tiny
    from stylekit.attention.layers import has_joint_hooks, model_layers
    from stylekit.errors import UnsupportedModelError
    model = comfy_qwen_image_tiny()
    if has_joint_hooks(qm.Attention):
        layers = model_layers(model)
        assert layers.family == "qwen_image" and layers.keys == [("double", 0, 0), ("double", 1, 0)]
    else:
        with pytest.raises(UnsupportedModelError, match="update ComfyUI"):
            model_layers(model)


def text_streams(model):
    """The model with ComfyUI's after-block patch recording each block's text stream."""
    seen = {}

    def record(args):
        seen.setdefault(args["block_index"], []).append(args["txt"].clone())
        return {"img": args["img"], "txt": args["txt"]}
    m = model.clone()
    m.set_model_patch(record, "double_block")
    return m, seen


def test_fusion_keeps_the_text_stream_plain_and_changes_the_image(qwen):
    from stylekit.models.magicstyle import fusion_model
    from stylekit.nodes.magicstyle import StyleKitDDIMInvert
    from stylekit.attention.feature_fusion import PRESETS
    content, style = latent(1), latent(2)
    inv, _, sigmas = StyleKitDDIMInvert().invert(qwen, content, style, conds(), 3, "all", "fp32", "model device", "store")
    assert inv.family == "qwen_image" and inv.grid == (GRID, GRID)
    from stylekit.errors import InputError
    with pytest.raises(InputError, match="works on one-frame video latents"):  # an image latent (B, C, H, W)
        StyleKitDDIMInvert().invert(qwen, {"samples": content["samples"][:, :, 0]}, style, conds(), 3, "all", "fp32",
                                    "model device", "store")
    plain, plain_txt = text_streams(qwen)
    fused, fused_txt = text_streams(fusion_model(qwen, inv, PRESETS["StyleID"]))
    from stylekit.nodes import comfy_glue
    noise = comfy_glue.StartNoise(fused, inv.result.latent[0:1], float(sigmas[0]))
    a = sample_advanced(plain, noise, sigmas, conds(3), content)
    b = sample_advanced(fused, noise, sigmas, conds(3), content)
    assert torch.isfinite(b).all() and (a - b).abs().max() > 1e-3  # the image changed
    # block 0's text output at the first step: the same computation as unpatched (its plain run), bit for bit
    torch.testing.assert_close(fused_txt[0][0], plain_txt[0][0], atol=0, rtol=0)
    assert qwen.model_options["transformer_options"] == {}


def test_magicstyle_and_the_teacher_run_and_blends_are_refused(qwen):
    from stylekit.errors import UnsupportedModelError
    from stylekit.nodes.magicstyle import StyleKitDDIMInvert, StyleKitFeatureFusion
    from stylekit.nodes.stylestudio import StyleKitTeacherLayout
    content, style = latent(1), latent(2)
    inv, _, sigmas = StyleKitDDIMInvert().invert(qwen, content, style, conds(), 3, "all", "fp32", "model device",
                                                 "auto (SD: store, Flux: recompute)")
    # MagicStyle: the content's keys beside the style's at equal mass (content_kv 1: no mask needed)
    fused, _, noise = StyleKitFeatureFusion().apply(qwen, inv, "MagicStyle", 0.75, 1.0, 1.0, 1.0, True, 0.0, 1.0)
    out = sample_advanced(StyleKitTeacherLayout().apply(fused, 0.5)[0], noise, sigmas, conds(3), content)
    assert out.shape == content["samples"].shape and torch.isfinite(out).all()
    with pytest.raises(UnsupportedModelError, match="Qwen-Image runs at weight 1, with no MASK"):
        StyleKitFeatureFusion().apply(qwen, inv, "StyleID", 0.75, 1.0, 0.0, 0.8, True, 0.0, 1.0)
    with pytest.raises(UnsupportedModelError, match="takes content_kv 0 .StyleID. or 1"):
        StyleKitFeatureFusion().apply(qwen, inv, "custom", 0.75, 1.0, 2.0, 1.0, True, 0.0, 1.0)
    with pytest.raises(UnsupportedModelError, match="cannot hide style tokens"):
        StyleKitTeacherLayout().apply(fused, 0.5, conds(4))
