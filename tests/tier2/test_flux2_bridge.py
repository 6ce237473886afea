"""Flux.2 on the diffusers bridge: a tiny Flux2Transformer2DModel as the DiT host (tier 2).

The hooks' contract on its fused single-stream blocks, flow inversion, Feature Fusion (both presets, store
and recompute), the teacher, the nodes, and the input model left untouched.
"""
import pytest
import torch
from stylekit.attention.feature_fusion import PRESETS
from stylekit.attention.layers import UnsupportedModelError, model_layers
from stylekit.attention.rope import embed_ids
from stylekit.bridge.flux2 import Flux2BridgePatcher, flux2_ids
from stylekit.bridge.sampling import sample_euler_cfg
from stylekit.models.feature_store import StorePolicy
from stylekit.models.inversion import every_step_schedule
from stylekit.models.magicstyle import fusion_model, invert_pair, start_latent
from stylekit.models.schedules import simple_sigmas
from stylekit.models.stylestudio import teacher_model

CTX, CHANNELS = 32, 8


@pytest.fixture(scope="module")
def transformer():
    from tiny_models import tiny_flux2
    return tiny_flux2(seed=0, channels=CHANNELS, context_dim=CTX)


@pytest.fixture
def flux2(transformer):
    return Flux2BridgePatcher(transformer)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {"content": r(1, CHANNELS, 8, 8), "style": r(1, CHANNELS, 8, 8),
            "cond": {"c_crossattn": r(1, 6, CTX), "guidance": torch.tensor([3.5])},
            "uncond": {"c_crossattn": r(1, 6, CTX), "guidance": torch.tensor([3.5])}}


def invert(model, data, steps, mode="store"):
    sig = simple_sigmas(model.model_sampling, steps)
    policy = StorePolicy(layers=tuple(model_layers(model).keys), dtype=torch.float32, mode=mode)
    return invert_pair(model, data["content"], data["style"], data["cond"]["c_crossattn"], every_step_schedule(sig),
                       policy, extra_conds={"guidance": data["cond"]["guidance"]}), sig


def sample(model, sig, data, start, uncond=False, cfg=1.0):
    with torch.no_grad():
        return sample_euler_cfg(model, None, sig, data["cond"], data["uncond"] if uncond else None, cfg, start=start)


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


def test_hooks_see_flux_contract_on_both_block_kinds(flux2, transformer, data):
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
    tol = 64 * torch.finfo(torch.float32).eps * float(plain.abs().max())
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


def test_flow_inversion_reconstructs_with_error_shrinking_as_steps_grow(flux2, data):
    errors = []
    for steps in (4, 8, 16):
        inv, sig = invert(flux2, data, steps)
        assert inv.result.latent.shape == (2, CHANNELS, 8, 8)
        errors.append(float((sample(flux2, sig, data, inv.result.latent[0:1]) - data["content"]).abs().mean()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.7 * errors[1], errors


@pytest.mark.parametrize("preset", ["StyleID", "MagicStyle"])
def test_store_equals_recompute_and_fusion_acts(flux2, data, preset, roundoff):
    inv_s, sig = invert(flux2, data, 5, "store")
    inv_r, _ = invert(flux2, data, 5, "recompute")
    a = sample(fusion_model(flux2, inv_s, PRESETS[preset]), sig, data, start_latent(inv_s))
    b = sample(fusion_model(flux2, inv_r, PRESETS[preset]), sig, data, start_latent(inv_r))
    plain = sample(flux2, sig, data, start_latent(inv_s))
    tol = roundoff(a, flux2, 5)
    torch.testing.assert_close(a, b, atol=tol, rtol=0)
    assert (a - plain).abs().mean() > 10 * tol


def test_teacher_with_no_style_is_the_plain_sample(flux2, data):
    """The teacher's rows beside the sample, with nothing styled in the conditioning, change nothing."""
    sig = simple_sigmas(flux2.model_sampling, 6)
    start = torch.randn(1, CHANNELS, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sample(teacher_model(flux2, 0.5, 0.5), sig, data, start), sample(flux2, sig, data, start),
                               atol=1e-5, rtol=0)


def test_input_model_stays_bit_identical(flux2, transformer, data):
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    x, s = data["content"], torch.tensor([0.6])
    ref = raw(transformer, x, s, data["cond"])
    options = repr(flux2.model_options)
    inv, sig = invert(flux2, data, 4, "recompute")
    patched = teacher_model(fusion_model(flux2, inv, PRESETS["MagicStyle"]), 0.5, 0.5)
    sample(patched, sig, data, start_latent(inv), uncond=True, cfg=2.0)
    assert repr(flux2.model_options) == options
    assert all(torch.equal(before[k], v) for k, v in transformer.state_dict().items())
    assert torch.equal(raw(transformer, x, s, data["cond"]), ref)
    assert {type(p).__name__ for p in transformer.attn_processors.values()} == {
        "Flux2AttnProcessor", "Flux2ParallelSelfAttnProcessor"}


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
