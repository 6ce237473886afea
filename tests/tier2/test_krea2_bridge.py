"""Krea 2 on the diffusers bridge: a tiny Krea2Transformer2DModel as the DiT host (tier 2).

Grouped-query attention under the hooks, one-frame video latents, flow inversion, Feature Fusion (both
presets, store and recompute), the teacher, the nodes, and the input model left untouched.
"""
from types import SimpleNamespace

import pytest
import torch
from stylekit.attention.families import late_single
from stylekit.attention.feature_fusion import PRESETS
from stylekit.attention.layers import UnsupportedModelError, model_layers
from stylekit.bridge.krea2 import Krea2BridgePatcher
from stylekit.bridge.sampling import sample_euler_cfg
from stylekit.models.feature_store import StorePolicy
from stylekit.models.inversion import every_step_schedule
from stylekit.models.magicstyle import fusion_model, invert_pair, start_latent
from stylekit.models.schedules import simple_sigmas
from stylekit.models.stylestudio import teacher_model

TEXT_LAYERS, TEXT_DIM, CHANNELS = 2, 32, 16
CTX = TEXT_LAYERS * TEXT_DIM  # ComfyUI's Krea 2 conditioning: the stacked layers, flattened


@pytest.fixture(scope="module")
def transformer():
    from tiny_models import tiny_krea2
    return tiny_krea2(seed=0, channels=CHANNELS, text_layers=TEXT_LAYERS, text_dim=TEXT_DIM)


@pytest.fixture
def krea2(transformer):
    return Krea2BridgePatcher(transformer)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {"content": r(1, CHANNELS, 1, 8, 8), "style": r(1, CHANNELS, 1, 8, 8),
            "cond": {"c_crossattn": r(1, 6, CTX)}, "uncond": {"c_crossattn": r(1, 6, CTX)}}


def invert(model, data, steps, mode="store"):
    sig = simple_sigmas(model.model_sampling, steps)
    policy = StorePolicy(layers=tuple(model_layers(model).keys), dtype=torch.float32, mode=mode)
    return invert_pair(model, data["content"], data["style"], data["cond"]["c_crossattn"], every_step_schedule(sig),
                       policy), sig


def sample(model, sig, data, start, uncond=False, cfg=1.0):
    with torch.no_grad():
        return sample_euler_cfg(model, None, sig, data["cond"], data["uncond"] if uncond else None, cfg, start=start)


def raw(transformer, x, sigma, ctx):
    """The unpatched transformer's denoised x0 = x - sigma * v, packed, positioned and unpacked by diffusers' Krea 2
    pipeline's own functions."""
    from diffusers import Krea2Pipeline
    b, c, _, h, w = x.shape
    pipe = SimpleNamespace(patch_size=2, vae_scale_factor=1)
    tokens = Krea2Pipeline._pack_latents(pipe, x, b, c, h, w)
    ids = Krea2Pipeline.prepare_position_ids(ctx.shape[1], h // 2, w // 2, x.device)
    with torch.no_grad():
        v = transformer(hidden_states=tokens, encoder_hidden_states=ctx.unflatten(-1, (TEXT_LAYERS, TEXT_DIM)),
                        timestep=sigma, position_ids=ids).sample
    return x - sigma.view(-1, 1, 1, 1, 1) * Krea2Pipeline._unpack_latents(pipe, v, h, w)


def test_layers_read_from_the_model(krea2):
    layers = model_layers(krea2)
    assert layers.family == "krea2" and layers.title == "Krea 2"
    assert layers.keys == [("single", i, 0) for i in range(3)]
    assert layers.layers[0].context_dim == CTX and layers.layers[0].heads == 4
    assert late_single(layers) == [("single", 1, 0), ("single", 2, 0)]
    with pytest.raises(UnsupportedModelError, match="the model given is Krea 2"):
        layers.require("deadiff", "X")


def test_hooks_see_grouped_query_heads_and_the_bridge_path_equals_diffusers(krea2, transformer, data):
    """The hooks get q at 4 heads and k, v at their own 2, before RoPE; a hook handing q back takes the bridge's
    own RoPE, key/value repeat and attention path, which equals diffusers' within float32 round-off; k and v
    tiled instead of interleaved to the query heads are seen far above it."""
    x, s, ctx = data["content"], torch.tensor([0.6]), data["cond"]["c_crossattn"]
    plain = raw(transformer, x, s, ctx)
    seen = []

    def hand_back(q, k, v, pe=None, attn_mask=None, extra_options=None):
        seen.append((extra_options["block_index"], tuple(q.shape), tuple(k.shape), extra_options["img_slice"]))
        return {"q": q}

    def tiled(q, k, v, pe=None, attn_mask=None, extra_options=None):
        # what a tiling repeat feeds the query heads: k, v heads (0, 1, 0, 1) instead of (0, 0, 1, 1)
        return {"k": k[:, [0, 1, 0, 1]], "v": v[:, [0, 1, 0, 1]]}
    with torch.no_grad():
        ours = krea2.apply_model(x, s, ctx, {"patches": {"attn1_patch": [hand_back]}})
        wrong = krea2.apply_model(x, s, ctx, {"patches": {"attn1_patch": [tiled]}})
    assert seen == [(i, (1, 4, 6 + 16, 16), (1, 2, 6 + 16, 16), [6, 22]) for i in range(3)]
    assert ours.shape == x.shape
    tol = 64 * torch.finfo(torch.float32).eps * float(plain.abs().max())
    assert float((ours - plain).abs().max()) <= tol
    assert float((wrong - plain).abs().max()) > 10 * tol


def test_idle_patches_are_bit_identical_to_the_unpatched_transformer(krea2, transformer, data):
    inv, sig = invert(krea2, data, 4)
    x, s, ctx = data["content"], torch.tensor([0.6]), data["cond"]["c_crossattn"]
    plain = raw(transformer, x, s, ctx)
    for m in (fusion_model(krea2, inv, PRESETS["StyleID"], weight=0.0),
              fusion_model(krea2, inv, PRESETS["MagicStyle"], sigma_start=0.3, sigma_end=0.0),
              teacher_model(krea2, 0.0, 1.0)):
        with torch.no_grad():
            out = m.apply_model(x, s, ctx, dict(m.model_options["transformer_options"], sigmas=s, cond_or_uncond=[0]))
        assert torch.equal(out, plain)


def test_flow_inversion_reconstructs_with_error_shrinking_as_steps_grow(krea2, data):
    errors = []
    for steps in (4, 8, 16):
        inv, sig = invert(krea2, data, steps)
        assert inv.result.latent.shape == (2, CHANNELS, 1, 8, 8)
        errors.append(float((sample(krea2, sig, data, inv.result.latent[0:1]) - data["content"]).abs().mean()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.7 * errors[1], errors


@pytest.mark.parametrize("preset", ["StyleID", "MagicStyle"])
def test_store_equals_recompute_and_fusion_acts(krea2, data, preset, roundoff):
    inv_s, sig = invert(krea2, data, 5, "store")
    inv_r, _ = invert(krea2, data, 5, "recompute")
    a = sample(fusion_model(krea2, inv_s, PRESETS[preset]), sig, data, start_latent(inv_s))
    b = sample(fusion_model(krea2, inv_r, PRESETS[preset]), sig, data, start_latent(inv_r))
    plain = sample(krea2, sig, data, start_latent(inv_s))
    tol = roundoff(a, krea2, 5)
    torch.testing.assert_close(a, b, atol=tol, rtol=0)
    assert (a - plain).abs().mean() > 10 * tol


def test_teacher_with_no_style_is_the_plain_sample(krea2, data):
    sig = simple_sigmas(krea2.model_sampling, 6)
    start = torch.randn(1, CHANNELS, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sample(teacher_model(krea2, 0.5, 0.5), sig, data, start), sample(krea2, sig, data, start),
                               atol=1e-5, rtol=0)


def test_input_model_stays_bit_identical(krea2, transformer, data):
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    x, s, ctx = data["content"], torch.tensor([0.6]), data["cond"]["c_crossattn"]
    ref = raw(transformer, x, s, ctx)
    inv, sig = invert(krea2, data, 4, "recompute")
    sample(teacher_model(fusion_model(krea2, inv, PRESETS["MagicStyle"]), 0.5, 0.5), sig, data, start_latent(inv),
           uncond=True, cfg=2.0)
    assert all(torch.equal(before[k], v) for k, v in transformer.state_dict().items())
    assert torch.equal(raw(transformer, x, s, ctx), ref)
    assert {type(p).__name__ for p in transformer.attn_processors.values()} == {"Krea2AttnProcessor"}


def test_nodes_take_a_krea2_model_and_its_video_latents(krea2, data):
    from stylekit.errors import InputError
    from stylekit.nodes.magicstyle import AUTO_BLOCKS, StyleKitDDIMInvert, StyleKitFeatureFusion
    from stylekit.nodes.patch_map import StyleKitPatchMap
    cond = [[data["cond"]["c_crossattn"], {}]]
    latent = {"samples": data["content"]}
    inv, _, sigmas = StyleKitDDIMInvert().invert(krea2, latent, {"samples": data["style"]}, cond, 4, AUTO_BLOCKS,
                                                 "fp16", "model device", "auto (SD: store, Flux: recompute)")
    assert inv.family == "krea2" and inv.grid == (4, 4)
    assert list(inv.store.policy.layers) == late_single(model_layers(krea2))
    model = StyleKitFeatureFusion().apply(krea2, inv, "StyleID", 0.75, 1.5, 0.0, 1.0, True, 0.0, 1.0)[0]
    assert "single 2.0 joint: feature_fusion" in StyleKitPatchMap().run(model)[1]
    with pytest.raises(InputError, match="one-frame video latents"):
        StyleKitDDIMInvert().invert(krea2, {"samples": data["content"][:, :, 0]}, latent, cond, 4, AUTO_BLOCKS,
                                    "fp16", "cpu", "store")
