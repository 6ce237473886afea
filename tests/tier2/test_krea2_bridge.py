"""Krea 2 on the diffusers bridge: a tiny Krea2Transformer2DModel as the DiT host (tier 2).

Grouped-query attention under the hooks, one-frame video latents, flow inversion, Feature Fusion (both
presets, store and recompute), the teacher, the nodes, and the input model left untouched.
"""
from types import SimpleNamespace

import pytest
import torch
from dit_bridges import CASES, case_data, invert
from stylekit.attention.families import late_single
from stylekit.attention.feature_fusion import PRESETS
from stylekit.attention.layers import UnsupportedModelError, model_layers
from stylekit.bridge.krea2 import Krea2BridgePatcher
from stylekit.models.magicstyle import fusion_model
from stylekit.models.stylestudio import teacher_model

TEXT_LAYERS, TEXT_DIM, CHANNELS = 2, 32, 16
CTX = TEXT_LAYERS * TEXT_DIM  # ComfyUI's Krea 2 conditioning: the stacked layers, flattened


@pytest.fixture(scope="module")
def transformer():
    return CASES["krea2"].build(0)


@pytest.fixture
def krea2(transformer):
    return Krea2BridgePatcher(transformer)


@pytest.fixture(scope="module")
def data():
    return case_data(CASES["krea2"])


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


def test_hooks_see_grouped_query_heads_and_the_bridge_path_equals_diffusers(krea2, transformer, data, roundoff):
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
    tol = roundoff(plain, krea2, 1)  # one call: the layers' reordered reductions, float32
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


def test_a_fused_blocks_text_rows_are_the_unpatched_ones(krea2, transformer, data, roundoff):
    """Feature Fusion keeps the text rows' attention plain through the output hook, which Krea 2 runs before the
    sigmoid gate and the output projection: the first fused block hands on the unpatched text rows (within
    round-off), while its image rows change."""
    from dit_bridges import text_rows_after
    inv, sig = invert(krea2, data, 4)
    x, s, ctx = data["content"], sig[1:2], data["cond"]["c_crossattn"]
    m = fusion_model(krea2, inv, PRESETS["StyleID"])
    to = dict(m.model_options["transformer_options"], sigmas=s, cond_or_uncond=[0])
    block, txt = transformer.transformer_blocks[0], ctx.shape[1]
    plain = text_rows_after(transformer, block, lambda: krea2.apply_model(x, s, ctx, {}), txt, False)
    fused = text_rows_after(transformer, block, lambda: m.apply_model(x, s, ctx, to), txt, False)
    assert float((fused - plain).abs().max()) <= roundoff(plain, krea2, 1)
    with torch.no_grad():
        assert not torch.equal(m.apply_model(x, s, ctx, to), krea2.apply_model(x, s, ctx, {}))


def test_a_latent_of_several_frames_is_refused(krea2, data):
    from stylekit.errors import InputError
    with pytest.raises(InputError, match="one-frame latents .* got 2 frames"):
        krea2.apply_model(data["content"].expand(1, -1, 2, -1, -1), torch.tensor([0.5]), data["cond"]["c_crossattn"], {})
