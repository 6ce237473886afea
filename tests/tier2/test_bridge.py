import torch

from stylekit.attention.layers import model_layers
from stylekit.attention.router import Contribution, add_contribution
from stylekit.bridge import calc_cond_batch, sample_euler_cfg


def inputs(seed=0, batch=1, ctx=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 16, 16, generator=g), torch.randn(batch, 77, ctx, generator=g)


def unpatched_eps(unet, ms, x, sigma, ctx):
    with torch.no_grad():
        return unet(ms.calculate_input(sigma, x), ms.timestep(sigma).float(), encoder_hidden_states=ctx).sample


def idle(name="idle"):
    return Contribution(name, lambda q, k, v, e, nxt, w: nxt(q, k, v, e) * 0 + 123.0, weight=0.0)


def test_idle_router_is_bit_identical_to_unpatched_diffusers(sd15):
    x, ctx = inputs()
    sigma = torch.tensor([3.0])
    ref = unpatched_eps(sd15.unet, sd15.model_sampling, x, sigma, ctx)
    m = sd15.clone()
    keys = model_layers(m).keys
    for attn in ("attn1", "attn2"):
        add_contribution(m, idle(), keys, attn)
    with torch.no_grad():
        got = m.eps(x, sigma, ctx)
        plain = sd15.eps(x, sigma, ctx)
    # eps goes through x0 and back: compare the UNet outputs through the same arithmetic
    assert torch.equal(got, plain)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    x0 = sd15.model_sampling.calculate_denoised(sigma, ref, x)
    with torch.no_grad():
        assert torch.equal(m.apply_model(x, sigma, ctx), x0)


def test_every_installed_key_is_called_with_comfy_extra_options(sdxl):
    x, ctx = inputs(batch=2)
    m = sdxl.clone()
    calls = []

    def spy(q, k, v, extra, nxt, w):
        calls.append((extra["block"], extra["block_index"], tuple(extra["cond_or_uncond"]),
                      extra["n_heads"], extra["dim_head"], float(extra["sigmas"][0]),
                      tuple(extra["activations_shape"][2:]), q.shape[1]))
        return nxt(q, k, v, extra)

    keys = model_layers(m).keys
    add_contribution(m, Contribution("spy", spy), keys, "attn1")
    with torch.no_grad():
        calc_cond_batch(m, [ctx, ctx * 0], x, torch.tensor([2.5, 2.5]))
    called = {(b[0], b[1], i) for b, i, *_ in calls}
    assert called == set(keys)
    for block, idx, cu, heads, dh, sig, hw, tokens in calls:
        assert cu == (0, 1) and sig == 2.5 and heads * dh == model_layers(m).by_key((*block, idx)).channels
        assert hw[0] * hw[1] == tokens


def test_split_and_batched_cond_uncond_agree(sd15):
    x, ctx = inputs(seed=1)
    neg = torch.zeros_like(ctx)
    sig = sd15.model_sampling.ddim_sigmas(4)
    with torch.no_grad():
        a = sample_euler_cfg(sd15, x, sig, ctx, neg, cfg=5.0)
        b = sample_euler_cfg(sd15, x, sig, ctx, neg, cfg=5.0, split=True)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_patching_a_clone_leaves_the_input_model_bit_identical(sd15):
    from stylekit.nodes.patch_map import StyleKitPatchMap
    x, ctx = inputs(seed=2)
    sig = sd15.model_sampling.ddim_sigmas(3)
    with torch.no_grad():
        before = sample_euler_cfg(sd15, x, sig, ctx, ctx * 0, cfg=4.0)
    m = sd15.clone()
    boost = Contribution("boost", lambda q, k, v, e, nxt, w: nxt(q * (1 + w), k, v, e), weight=1.5)
    add_contribution(m, boost, model_layers(m).keys, "attn1")
    StyleKitPatchMap().run(m)
    with torch.no_grad():
        patched = sample_euler_cfg(m, x, sig, ctx, ctx * 0, cfg=4.0)
        after = sample_euler_cfg(sd15, x, sig, ctx, ctx * 0, cfg=4.0)
    assert not torch.allclose(patched, before)
    assert torch.equal(after, before)
    assert sd15.model_options == {"transformer_options": {}}
    # the unet's own processors were restored after each call
    assert {type(p).__name__ for p in sd15.unet.attn_processors.values()} == {"AttnProcessor2_0"}


def test_the_bridge_model_has_comfyuis_base_model_surface(sd15):
    """``patcher.model`` answers what nodes ask ComfyUI's BaseModel (apply_model with ComfyUI's argument
    names and explicit transformer_options, the latent hooks, extra_conds), so no node asks its host."""
    x, ctx = inputs(seed=4)
    sigma = torch.tensor([2.0])
    m = sd15.clone()
    add_contribution(m, Contribution("scale", lambda q, k, v, e, nxt, w: nxt(q, k, v, e) * 0.5, weight=1.0),
                     model_layers(m).keys, "attn2")
    assert m.model is sd15.model  # clones share the model, as ComfyUI's do
    with torch.no_grad():
        patched = m.apply_model(x, sigma, ctx)
        assert torch.equal(m.model.apply_model(x, sigma, c_crossattn=ctx, transformer_options=m.model_options[
            "transformer_options"]), patched)
        plain = m.model.apply_model(x, sigma, c_crossattn=ctx)  # no options: no patches, as in ComfyUI
        assert torch.equal(plain, sd15.apply_model(x, sigma, ctx)) and not torch.equal(plain, patched)
    assert torch.equal(m.model.process_latent_in(x), x) and torch.equal(m.model.process_latent_out(x), x)
    conds = m.model.extra_conds(cross_attn=ctx, width=128, height=128)
    assert list(conds) == ["c_crossattn"] and conds["c_crossattn"].cond is ctx


def test_the_bridge_vae_and_clip_vision_compute_what_comfyui_does():
    """BridgeVAE: the scaled posterior mean (what ComfyUI's VAE encode + process_latent_in give) and its
    inverse on decode; BridgeClipVision: transformers' outputs on ComfyUI's encode_image preprocessing."""
    from tiny_models import tiny_bridge_clip_vision, tiny_bridge_vae
    from stylekit.models.clip_preprocess import clip_pixels
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 64, 48, 3, generator=g)
    vae = tiny_bridge_vae()
    net, scale = vae.first_stage, vae.first_stage.config.scaling_factor
    with torch.no_grad():
        want = net.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean * scale
        latent = vae.encode(image)
        torch.testing.assert_close(latent, want)
        decoded = ((net.decode(latent / scale).sample.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(vae.decode(latent), decoded)
    assert vae.decode(latent).shape == image.shape

    cv = tiny_bridge_clip_vision()
    with torch.no_grad():
        ref = cv.model.hf(pixel_values=clip_pixels(image), output_hidden_states=True)
    out = cv.encode_image(image, crop=True)
    torch.testing.assert_close(out["penultimate_hidden_states"], ref.hidden_states[-2])
    torch.testing.assert_close(out["image_embeds"], ref.pooler_output)
    torch.testing.assert_close(out["last_hidden_state"], ref.last_hidden_state)


def test_clip_vision_runs_in_chunks_and_refuses_strips():
    """vision_features encodes CLIP_CHUNK images at a time (the same features as one by one) and refuses an
    image beyond 16:1 before CLIP's resize (shortest side to 224) would blow it up."""
    import pytest

    from tiny_models import tiny_bridge_clip_vision
    from stylekit.errors import InputError
    from stylekit.nodes.comfy_glue import CLIP_CHUNK, vision_features
    cv = tiny_bridge_clip_vision()
    images = torch.rand(CLIP_CHUNK + 3, 40, 48, 3, generator=torch.Generator().manual_seed(1))
    got = vision_features(cv, images, "penultimate_hidden_states")
    one_by_one = torch.cat([cv.encode_image(images[i:i + 1])["penultimate_hidden_states"] for i in range(len(images))])
    torch.testing.assert_close(got, one_by_one, atol=1e-5, rtol=1e-5)  # batch size changes only the reduction order
    with pytest.raises(InputError, match="up to 16:1"):
        vision_features(cv, torch.rand(1, 8, 200, 3), field="image")


def test_processors_are_put_back_after_a_failing_call_and_must_match_the_layers(sd15):
    """The bridge swaps processors on the layers it found once: an error inside a call leaves every layer
    running what it ran before (the very objects), and a set of processors for other layers is refused."""
    import pytest

    from stylekit.bridge.installed import attention_layers, processors_installed
    before = dict(sd15.unet.attn_processors)
    assert list(attention_layers(sd15.unet)) == list(before)

    class Boom:
        def __call__(self, *a, **k):
            raise RuntimeError("boom")
    x, ctx = inputs(seed=3)
    with pytest.raises(RuntimeError, match="boom"):
        with processors_installed(sd15.unet, {name: Boom() for name in before}):
            sd15.unet(x, torch.tensor([500.0]), encoder_hidden_states=ctx)
    after = sd15.unet.attn_processors
    assert all(after[name] is p for name, p in before.items())
    with pytest.raises(ValueError, match="do not match"):
        with processors_installed(sd15.unet, dict(list(before.items())[1:])):
            pass
