"""Tier 3, Flux.2 (dev / Klein): a tiny model built from ComfyUI's own Flux class with Flux.2's configuration
(model_base.Flux2: one modulation for all blocks, unpatched 128-channel latents, text padded to 512 tokens,
reference latents after the image's tokens), driven through ComfyUI's own sampler and hooks.

ComfyUI 0.3.64 has no Flux.2; there these tests skip.
"""
import pytest
import torch
from test_flux_comfy import sample_advanced

GRID = 6  # latent side: one token per latent pixel on Flux.2


@pytest.fixture
def flux2():
    from comfy_host import comfy_flux2_tiny, tiny_or_skip
    return tiny_or_skip(comfy_flux2_tiny, "Flux.2 (model_base.Flux2)")


def conds(seed=0, reference=None):
    g = torch.Generator().manual_seed(seed)
    opts = {"guidance": 1.0}
    if reference is not None:
        opts["reference_latents"] = [reference]
    return [[torch.randn(1, 8, 32, generator=g), opts]]


def latent(seed):
    g = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(1, 128, GRID, GRID, generator=g)}


def test_flux2_is_its_own_family(flux2):
    from stylekit.attention.layers import model_layers
    layers = model_layers(flux2)
    assert layers.family == "flux2" and layers.title == "Flux.2" and layers.spec.patch == 1
    assert layers.keys == [("double", 0, 0), ("double", 1, 0), ("single", 0, 0), ("single", 1, 0)]


def test_feature_fusion_and_teacher_run_through_comfyui_and_leave_the_input_model_alone(flux2):
    from stylekit.attention.joint import JointContribution, add_joint_contribution
    from stylekit.attention.layers import model_layers
    from stylekit.nodes.magicstyle import StyleKitDDIMInvert, StyleKitFeatureFusion
    from stylekit.nodes.stylestudio import StyleKitTeacherLayout
    content, style = latent(1), latent(2)
    keys = model_layers(flux2).keys
    inv, inverted, sigmas = StyleKitDDIMInvert().invert(flux2, content, style, conds(), 4, "all", "fp32", "model device", "store")
    assert inv.family == "flux2" and inv.grid == (GRID, GRID) and inverted["samples"].shape == (2, 128, GRID, GRID)
    assert len(inv.store.features) == 4 * len(keys)
    # every stored feature holds the sample's image tokens: one per latent pixel
    assert all(f["k_s"].shape[2] == GRID * GRID for f in inv.store.features.values())
    fused, _, noise = StyleKitFeatureFusion().apply(flux2, inv, "MagicStyle", 0.75, 1.0, 1.0, 0.8, True, 0.0, 1.0)
    seen = []

    def probe(call, call_next, w):
        seen.append((call.extra["block_type"], call.extra["block_index"], call.txt, call.img, call.ref_latents))
        return call_next(call)
    probed = fused.clone()
    add_joint_contribution(probed, JointContribution("probe", probe), keys)
    teacher = StyleKitTeacherLayout().apply(probed, 0.5)[0]
    plain_before = sample_advanced(flux2, noise, sigmas, conds(3), content)
    out = sample_advanced(teacher, noise, sigmas, conds(3), content)
    assert out.shape == (1, 128, GRID, GRID) and torch.isfinite(out).all()
    assert (out - plain_before).abs().max() > 1e-3  # the patches act
    assert {k[:2] for k in seen} == {k[:2] for k in keys}
    assert {(t, img, refs) for *_, t, img, refs in seen} == {(512, (512, 512 + GRID * GRID), (548, 548))}  # padded text
    assert flux2.model_options["transformer_options"] == {}
    torch.testing.assert_close(sample_advanced(flux2, noise, sigmas, conds(3), content), plain_before, atol=0, rtol=0)


def test_an_edit_keeps_its_reference_latent_out_of_the_fusion(flux2):
    """With a reference latent (Flux.2's edits), the image range stops before it and its rows stay plain."""
    from stylekit.attention.joint import JointContribution, add_joint_contribution
    from stylekit.attention.layers import model_layers
    from stylekit.nodes.magicstyle import StyleKitDDIMInvert, StyleKitFeatureFusion
    content, style, edited = latent(1), latent(2), latent(4)["samples"]
    keys = model_layers(flux2).keys
    inv, _, sigmas = StyleKitDDIMInvert().invert(flux2, content, style, conds(), 3, "all", "fp32", "model device", "store")
    ranges, kept = [], []

    def probe(call, call_next, w):  # installed before the fusion: sees the block's call and what the fusion makes of it
        out = call_next(call)
        (i0, i1), (r0, r1) = call.img, call.ref_latents
        ranges.append(((i0, i1), (r0, r1)))
        kept.append(out.q[:, :, r0:r1].equal(call.q[:, :, r0:r1]) and out.k[:, :, -(r1 - r0):].equal(call.k[:, :, r0:r1])
                    and not out.q[:, :, i0:i1].equal(call.q[:, :, i0:i1]))
        return out
    probed = flux2.clone()
    add_joint_contribution(probed, JointContribution("probe", probe), keys)
    fused, _, noise = StyleKitFeatureFusion().apply(probed, inv, "StyleID", 0.75, 1.0, 0.0, 1.0, True, 0.0, 1.0)
    out = sample_advanced(fused, noise, sigmas, conds(3, reference=edited), content)
    assert torch.isfinite(out).all()
    n = GRID * GRID
    assert set(ranges) == {((512, 512 + n), (512 + n, 512 + 2 * n))} and len(kept) == (len(sigmas) - 1) * len(keys) and all(kept)
