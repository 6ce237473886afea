"""Tier 3, Krea 2: a tiny model built from ComfyUI's own classes (comfy.ldm.krea2: single-stream blocks only,
grouped-query attention whose hooks see k and v before they are repeated to the query heads, no block
replace), driven through ComfyUI's own sampler and hooks.

ComfyUI 0.3.64 has no Krea 2; there these tests skip.
"""
import pytest
import torch
from test_flux_comfy import sample_advanced

GRID = 4  # image tokens per side: the 8x8 latent in 2x2 patches (Krea 2 latents are one-frame video latents)


@pytest.fixture
def krea2():
    from comfy_host import comfy_krea2_tiny, tiny_or_skip
    return tiny_or_skip(comfy_krea2_tiny, "Krea 2 (model_base.Krea2)")


def conds(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 8, 64, generator=g), {}]]


def latent(seed):
    g = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(1, 16, 1, 2 * GRID, 2 * GRID, generator=g)}  # the Wan VAE's one-frame latent


def test_krea2_is_its_own_family_and_refuses_double_blocks(krea2):
    from stylekit.attention.layers import model_layers
    from stylekit.errors import UnsupportedModelError
    from stylekit.nodes.magicstyle import StyleKitDDIMInvert
    layers = model_layers(krea2)
    assert layers.family == "krea2" and layers.title == "Krea 2" and layers.is_dit
    assert layers.keys == [("single", i, 0) for i in range(3)] and layers.layers[0].heads == 4
    assert layers.select("feature_fusion") == [("single", 1, 0), ("single", 2, 0)]
    with pytest.raises(UnsupportedModelError, match="names no attention block of this Krea 2 model; its blocks: single"):
        StyleKitDDIMInvert().invert(krea2, latent(1), latent(2), conds(), 3, "double (Flux)", "fp32", "model device", "store")


def test_feature_fusion_and_teacher_run_with_grouped_query_attention(krea2):
    from stylekit.attention.joint import JointContribution, add_joint_contribution
    from stylekit.attention.layers import model_layers
    from stylekit.nodes.magicstyle import StyleKitDDIMInvert, StyleKitFeatureFusion
    from stylekit.nodes.stylestudio import StyleKitTeacherLayout
    content, style = latent(1), latent(2)
    keys = model_layers(krea2).keys
    inv, _, sigmas = StyleKitDDIMInvert().invert(krea2, content, style, conds(), 4, "all", "fp32", "model device", "store")
    assert inv.family == "krea2" and inv.grid == (GRID, GRID) and len(inv.store.features) == 4 * len(keys)
    f = next(iter(inv.store.features.values()))  # queries at the 4 query heads, keys and values at the 2 kv heads
    assert f["q_c"].shape == (1, 4, GRID * GRID, 16) and f["k_s"].shape == f["v_s"].shape == (1, 2, GRID * GRID, 16)
    seen = []

    def probe(call, call_next, w):
        seen.append((call.extra["block_index"], call.q.shape[1], call.k.shape[1]))
        return call_next(call)
    probed = krea2.clone()
    add_joint_contribution(probed, JointContribution("probe", probe), keys)
    # MagicStyle at weight 0.8: the content's keys beside the style's, a blend that needs the plain rows too
    fused, _, noise = StyleKitFeatureFusion().apply(probed, inv, "MagicStyle", 0.75, 1.0, 1.0, 0.8, True, 0.0, 1.0)
    teacher = StyleKitTeacherLayout().apply(fused, 0.5)[0]
    plain = sample_advanced(krea2, noise, sigmas, conds(3), content)
    out = sample_advanced(teacher, noise, sigmas, conds(3), content)
    assert out.shape == content["samples"].shape and torch.isfinite(out).all()
    assert (out - plain).abs().max() > 1e-3
    assert {s[0] for s in seen} == {0, 1, 2} and {s[1:] for s in seen} == {(4, 2)}
    assert krea2.model_options["transformer_options"] == {}
    torch.testing.assert_close(sample_advanced(krea2, noise, sigmas, conds(3), content), plain, atol=0, rtol=0)


def test_identical_references_leave_krea2_as_it_was(krea2):
    """Fusing a content with itself (gamma 1, T 1, style = content) is the plain model: the GQA heads line up."""
    from stylekit.attention.feature_fusion import FusionSettings
    from stylekit.models.feature_store import StorePolicy
    from stylekit.models.inversion import every_step_schedule
    from stylekit.models.magicstyle import fusion_model, invert_pair
    from stylekit.models.schedules import simple_sigmas
    from stylekit.nodes import comfy_glue
    x = comfy_glue.latent_in(krea2, latent(1)["samples"])
    cond = conds(2)
    ctx, extra = comfy_glue.model_conds(krea2, cond, x, torch.device("cpu"))
    sig = simple_sigmas(krea2.get_model_object("model_sampling"), 3)
    inv = invert_pair(krea2, x, x, ctx, every_step_schedule(sig), StorePolicy(dtype=torch.float32), extra_conds=extra)
    fused = fusion_model(krea2, inv, FusionSettings(1.0, 1.0, 0.0))
    s = torch.full((1,), float(sig[1]))
    x_s = next(x for sigma, x in inv.result.inputs.items() if abs(sigma - float(s)) < 1e-4)[0:1]  # what was recorded at s
    with torch.no_grad():
        plain = krea2.model.apply_model(x_s, s, c_crossattn=ctx)
        to = dict(fused.model_options["transformer_options"], sigmas=s, cond_or_uncond=[0])
        got = fused.model.apply_model(x_s, s, c_crossattn=ctx, transformer_options=to)
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=1e-4)  # float32: RoPE applied by us vs by the host
