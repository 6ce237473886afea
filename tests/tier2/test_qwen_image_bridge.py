"""Qwen-Image on the diffusers bridge: a tiny QwenImageTransformer2DModel as the DiT host (tier 2).

ComfyUI's Qwen-Image hook contract (RoPE after the hooks with the pe they return, a returned mask ignored,
no output hook, blocks through the ``dit`` block replace), flow inversion, Feature Fusion (both presets,
store and recompute) with its plain text rows, the teacher, the nodes, and the input model left untouched.
"""
import pytest
import torch
from dit_bridges import CASES, case_data, invert
from stylekit.attention.families import is_comfy_qwen_image, late_double
from stylekit.attention.feature_fusion import PRESETS
from stylekit.attention.layers import model_layers
from stylekit.bridge.qwen_image import QwenImageBridgePatcher
from stylekit.models.magicstyle import fusion_model
from stylekit.models.stylestudio import teacher_model

CTX, CHANNELS = 32, 16


@pytest.fixture(scope="module")
def transformer():
    return CASES["qwen_image"].build(0)


@pytest.fixture
def qwen(transformer):
    return QwenImageBridgePatcher(transformer)


@pytest.fixture(scope="module")
def data():
    return case_data(CASES["qwen_image"])


def raw(transformer, x, sigma, ctx):
    """The unpatched transformer's forward, its latent packed and unpacked by diffusers' Qwen-Image pipeline."""
    from diffusers import QwenImagePipeline
    b, c, _, h, w = x.shape
    with torch.no_grad():
        v = transformer(hidden_states=QwenImagePipeline._pack_latents(x[:, :, 0], b, c, h, w), encoder_hidden_states=ctx,
                        timestep=sigma, img_shapes=[[(1, h // 2, w // 2)]] * b).sample
    return x - sigma.view(-1, 1, 1, 1, 1) * QwenImagePipeline._unpack_latents(v, h, w, 1)


def test_layers_read_from_the_model(qwen, transformer):
    layers = model_layers(qwen)
    assert layers.family == "qwen_image" and layers.title == "Qwen-Image"
    assert layers.keys == [("double", i, 0) for i in range(3)] and layers.layers[0].context_dim == CTX
    assert not is_comfy_qwen_image(transformer)  # same class name as ComfyUI's port; diffusers' has no ComfyUI hooks


def test_hooks_run_with_comfyuis_qwen_image_contract(qwen, transformer, data, roundoff):
    """The hooks get the joint q, k, v before RoPE (text first) and the text mask; handing q back takes the
    bridge's own path, equal to diffusers' within float32 round-off; a returned pe is what rotates q and k
    afterwards (a pe of the identity is seen far above round-off), and a returned mask is ignored."""
    x, s, ctx = data["content"], torch.tensor([0.6]), data["cond"]["c_crossattn"]
    plain = raw(transformer, x, s, ctx)
    seen = []

    def hand_back(q, k, v, pe=None, attn_mask=None, extra_options=None):
        seen.append((extra_options["block_type"], extra_options["block_index"], tuple(q.shape), attn_mask,
                     extra_options["img_slice"]))
        return {"q": q}

    def identity(q, k, v, pe=None, attn_mask=None, extra_options=None):
        eye = torch.zeros_like(pe)
        eye[..., 0, 0] = eye[..., 1, 1] = 1
        return {"pe": eye}

    def block_all(q, k, v, pe=None, attn_mask=None, extra_options=None):
        return {"q": q, "attn_mask": torch.full((1, 1, 1, q.shape[2]), float("-inf"))}
    with torch.no_grad():
        ours = qwen.apply_model(x, s, ctx, {"patches": {"attn1_patch": [hand_back]}})
        unrotated = qwen.apply_model(x, s, ctx, {"patches": {"attn1_patch": [identity]}})
        masked = qwen.apply_model(x, s, ctx, {"patches": {"attn1_patch": [block_all]}})
    assert seen == [("double", i, (1, 2, 6 + 16, 16), None, [6, 22]) for i in range(3)]
    tol = roundoff(plain, qwen, 1)  # one call: the layers' reordered reductions, float32
    assert float((ours - plain).abs().max()) <= tol
    assert float((unrotated - plain).abs().max()) > 10 * tol
    assert torch.equal(masked, ours)


def test_idle_patches_are_bit_identical_to_the_unpatched_transformer(qwen, transformer, data):
    inv, sig = invert(qwen, data, 4)
    x, s, ctx = data["content"], torch.tensor([0.6]), data["cond"]["c_crossattn"]
    plain = raw(transformer, x, s, ctx)
    for m in (fusion_model(qwen, inv, PRESETS["MagicStyle"], sigma_start=0.3, sigma_end=0.0),  # window not reached
              teacher_model(qwen, 0.0, 1.0)):
        with torch.no_grad():
            out = m.apply_model(x, s, ctx, dict(m.model_options["transformer_options"], sigmas=s, cond_or_uncond=[0]))
        assert torch.equal(out, plain)


def test_fused_blocks_hand_on_the_plain_text_stream(qwen, transformer, data):
    """With no output hook, a fused block's text rows come from a second, plain run of the block (the ``dit``
    block replace): block 0's text output, as the next block reads it, is the unpatched model's bit for bit,
    while the fused run's own text output differs."""
    inv, sig = invert(qwen, data, 4)
    x, s, ctx = data["content"], sig[1:2], data["cond"]["c_crossattn"]  # a stored level
    calls = []
    hook = transformer.transformer_blocks[0].register_forward_hook(lambda m, a, out: calls.append(out[0].clone()))
    try:
        raw(transformer, x, s, ctx)
        m = fusion_model(qwen, inv, PRESETS["StyleID"])
        with torch.no_grad():
            m.apply_model(x, s, ctx, dict(m.model_options["transformer_options"], sigmas=s, cond_or_uncond=[0]))
    finally:
        hook.remove()
    unpatched, fused, plain_rerun = calls
    assert torch.equal(plain_rerun, unpatched)
    assert not torch.equal(fused, unpatched)


def test_nodes_take_a_qwen_image_model_and_refuse_what_it_cannot_do(qwen, data):
    from stylekit.attention.layers import UnsupportedModelError
    from stylekit.nodes.magicstyle import AUTO_BLOCKS, StyleKitDDIMInvert, StyleKitFeatureFusion
    from stylekit.nodes.patch_map import StyleKitPatchMap
    cond = [[data["cond"]["c_crossattn"], {}]]
    latent = {"samples": data["content"]}
    inv, _, _ = StyleKitDDIMInvert().invert(qwen, latent, {"samples": data["style"]}, cond, 4, AUTO_BLOCKS, "fp16",
                                            "model device", "auto (SD: store, Flux: recompute)")
    assert inv.family == "qwen_image" and inv.grid == (4, 4)
    assert list(inv.store.policy.layers) == late_double(model_layers(qwen))
    model = StyleKitFeatureFusion().apply(qwen, inv, "MagicStyle", 0.75, 1.5, 0.0, 1.0, True, 0.0, 1.0)[0]
    assert "double 2.0 joint: feature_fusion" in StyleKitPatchMap().run(model)[1]
    with pytest.raises(UnsupportedModelError, match="Qwen-Image runs at weight 1"):  # blending needs an output hook
        StyleKitFeatureFusion().apply(qwen, inv, "MagicStyle", 0.75, 1.5, 0.0, 0.5, True, 0.0, 1.0)


def test_a_block_replace_gets_comfyuis_pe_and_its_change_reaches_the_block(qwen, transformer, data):
    """Another pack's ``dit`` block replace sees ``pe`` as ComfyUI hands it ((1, 1, tokens, dim/2, 2, 2)); passing it
    on unchanged is the unpatched model bit for bit, and a pe it changes (no rotation) is what the block rotates by."""
    x, s, ctx = data["content"], torch.tensor([0.6]), data["cond"]["c_crossattn"]
    seen = []

    def keep(args, extra):
        seen.append(tuple(args["pe"].shape))
        return extra["original_block"](args)

    def unrotate(args, extra):
        eye = torch.zeros_like(args["pe"])
        eye[..., 0, 0] = eye[..., 1, 1] = 1
        return extra["original_block"](dict(args, pe=eye))
    with torch.no_grad():
        plain = qwen.apply_model(x, s, ctx, {})
        kept = qwen.apply_model(x, s, ctx, {"patches_replace": {"dit": {("double_block", 0): keep}}})
        changed = qwen.apply_model(x, s, ctx, {"patches_replace": {"dit": {("double_block", 0): unrotate}}})
    assert seen == [(1, 1, 6 + 16, 8, 2, 2)] and torch.equal(kept, plain)
    assert not torch.equal(changed, plain)
