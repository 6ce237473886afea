"""CatVersion end to end on the bridge: the ComfyUI-shaped CLIP, Apply, training, the Train and Score nodes."""
import copy
import math

import pytest
import torch

from references import explicit_attention
from stylekit.bridge import BridgePatcher
from stylekit.bridge.clip_text import clip_text_from_transformers
from tiny_models import tiny_bridge_clip, tiny_bridge_clip_vision, tiny_bridge_vae, tiny_clip_text
from stylekit.models.catversion import CatVersionPrefix, catversion_clip, load_prefix, save_prefix
from stylekit.models.catversion_train import TrainSettings, train_prefix
from stylekit.models.magicstyle import host_apply_model
from stylekit.nodes.catversion import StyleKitCatVersionApply, StyleKitCatVersionScore, StyleKitCatVersionTrain

PROMPT = "a photo of a teapot"


def encode(clip, text=PROMPT):
    with torch.no_grad():
        return clip.encode_from_tokens(clip.tokenize(text))


def test_bridge_clip_matches_transformers():
    hf = tiny_clip_text()
    ours = clip_text_from_transformers(hf)
    ids = torch.tensor([[998, 5, 17, 300, 999] + [999] * 72])
    with torch.no_grad():
        want = hf(input_ids=ids).last_hidden_state
        got, pooled = ours(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, got[:, 4])


def reference_encode(clip, prefix, bias, text=PROMPT):
    """The prefixed encoder written out layer by layer with an explicit softmax."""
    tm = clip.text_model
    tokens = clip.tokenize(text)["l"]
    n = tokens.shape[1]
    with torch.no_grad():
        x = tm.embeddings.token_embedding(tokens) + tm.embeddings.position_embedding.weight[:n]
        causal = torch.full((n, n), -torch.finfo(x.dtype).max).triu_(1)
        for i, layer in enumerate(tm.encoder.layers):
            a = layer.self_attn
            h = layer.layer_norm1(x)
            q, k, v = a.q_proj(h), a.k_proj(h), a.v_proj(h)
            mask = causal
            if i in prefix.layers:
                j = prefix.layers.index(i)
                k, v = torch.cat([prefix.keys[j][None, None], k], 1), torch.cat([prefix.values[j][None, None], v], 1)
                mask = torch.cat([torch.full((n, 1), bias), causal], 1)
            x = x + a.out_proj(explicit_attention(q, k, v, a.heads, mask))
            x = x + layer.mlp(layer.layer_norm2(x))
        return tm.final_layer_norm(x)


@pytest.mark.parametrize("strength,official", [(1.0, True), (1.0, False), (2.5, True)])
def test_apply_matches_reference_and_leaves_input_clip_untouched(strength, official):
    clip = tiny_bridge_clip()
    prefix = CatVersionPrefix.random([2, 3], 64, seed=1)
    before = encode(clip)
    patched = StyleKitCatVersionApply().apply(clip, prefix, strength, official)[0]
    got = encode(patched)
    bias = (1.0 if official else 0.0) + math.log(strength)
    torch.testing.assert_close(got, reference_encode(clip, prefix, bias), atol=1e-4, rtol=1e-4)
    assert (got - before).abs().max() > 1e-3
    torch.testing.assert_close(encode(catversion_clip(clip, prefix, strength, official, trainable=True)), got)
    assert torch.equal(encode(clip), before)                 # the input CLIP is untouched
    assert torch.equal(encode(StyleKitCatVersionApply().apply(clip, prefix, 0.0, official)[0]), before)
    assert not clip.patcher.object_patches


def test_official_prefix_meets_wrong_encoder():
    clip = tiny_bridge_clip()
    with pytest.raises(ValueError, match="768 wide.*64"):
        catversion_clip(clip, CatVersionPrefix.from_flat(torch.zeros(4608), 768))
    with pytest.raises(ValueError, match="layers \\[7\\]"):
        catversion_clip(clip, CatVersionPrefix.random([7], 64))
    # an official file names no layers: it takes the encoder's last ones
    p = CatVersionPrefix.from_flat(torch.randn(2 * 2 * 64), 64)
    out = catversion_clip(clip, p)
    assert sorted(out.patcher.object_patches) == [f"clip_l.transformer.text_model.encoder.layers.{i}.self_attn" for i in (2, 3)]
    with pytest.raises(ValueError, match="already has a CatVersion prefix"):
        catversion_clip(out, p)


def eval_loss(prefix, clip, unet, latents, seed=123):
    """Loss on a fixed set of (image, sigma, noise) draws, so before/after compare like for like."""
    g = torch.Generator().manual_seed(seed)
    sig = unet.model_sampling.sigmas
    text = catversion_clip(clip, prefix)
    ctx = encode(text, "teapot")
    total = 0.0
    with torch.no_grad():
        for _ in range(12):
            x0 = latents[torch.randint(len(latents), (1,), generator=g)]
            s = sig[torch.randint(len(sig), (1,), generator=g)]
            noise = torch.randn(x0.shape, generator=g)
            x = x0 + s * noise
            eps = (x - host_apply_model(unet, x, s, ctx, {})) / s
            total += float(((eps - noise) ** 2).mean())
    return total / 12


def test_training_lowers_loss_and_leaves_frozen_weights(sd15):
    clip = tiny_bridge_clip()
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    prefix = CatVersionPrefix.random([2, 3], 64, seed=0, base_word="teapot")
    unet_before = copy.deepcopy(sd15.unet.state_dict())
    clip_before = copy.deepcopy(clip.text_model.state_dict())
    start = eval_loss(prefix, clip, sd15, latents)
    text = catversion_clip(clip, prefix)
    tokens = text.tokenize("teapot")
    seen = []
    losses = train_prefix(prefix, lambda: text.encode_from_tokens(tokens),
                          lambda x, s, c: host_apply_model(sd15, x, s, c, {}), latents, sd15.model_sampling.sigmas,
                          TrainSettings(steps=40, lr=1e-1, batch=2), progress=lambda j, n: seen.append(j))
    end = eval_loss(prefix, clip, sd15, latents)
    assert len(losses) == 40 and seen[-1] == 40
    # a random UNet barely listens to its context (1.158 -> 1.143 here); the analytic test below is the sharp one
    assert end < start - 0.005, (start, end)
    for k, v in sd15.unet.state_dict().items():
        assert torch.equal(v, unet_before[k]), k
    for k, v in clip.text_model.state_dict().items():
        assert torch.equal(v, clip_before[k]), k
    assert all(p.grad is None for p in list(sd15.unet.parameters()) + list(clip.text_model.parameters()))


def test_training_removes_a_context_driven_error():
    """With eps_pred = mean(context) @ W (all error from the context), training the prefix alone must drive
    the text encoder's output to where that error vanishes: the loss falls to the noise floor (1)."""
    clip = tiny_bridge_clip()
    W = torch.randn(64, 4, generator=torch.Generator().manual_seed(9))

    def denoise(x, s, ctx):
        return x - s.view(-1, 1, 1, 1) * (ctx.mean(1) @ W).view(-1, 4, 1, 1)

    prefix = CatVersionPrefix.random([2, 3], 64, seed=0)
    text = catversion_clip(clip, prefix)
    tokens = text.tokenize("teapot")
    excess = lambda: float((encode(text, "teapot").mean(1) @ W).pow(2).mean())  # noqa: E731
    before = excess()
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    train_prefix(prefix, lambda: text.encode_from_tokens(tokens), denoise, latents, torch.linspace(0.1, 10, 100),
                 TrainSettings(steps=60, lr=1e-1, batch=2))
    assert before > 5 and excess() < 0.01 * before, (before, excess())


def test_train_node_saves_a_loadable_prefix(sd15, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside ComfyUI a node writes into the current folder
    clip = tiny_bridge_clip()
    images = torch.rand(2, 64, 48, 3, generator=torch.Generator().manual_seed(0))
    out = StyleKitCatVersionTrain().train(images, sd15, clip, tiny_bridge_vae(), "teapot", 3, 1e-2, 2, True, "2, 3", 0,
                                          "teapot")
    prefix, curve = out["result"]
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and 0 <= curve.min() and curve.max() <= 1
    saved = load_prefix(str(tmp_path / "teapot.safetensors"))
    assert torch.equal(saved.keys, prefix.keys.detach()) and saved.layers == [2, 3] and saved.base_word == "teapot"
    fresh = CatVersionPrefix.random([2, 3], 64, seed=0)
    assert not torch.equal(saved.keys, fresh.keys)  # it trained
    StyleKitCatVersionTrain().train(images, sd15, clip, tiny_bridge_vae(), "teapot", 1, 1e-2, 1, False, "3", 0, "teapot")
    assert (tmp_path / "teapot_00001.safetensors").exists()  # never overwrites


def test_score_node():
    cv = tiny_bridge_clip_vision()
    g = torch.Generator().manual_seed(0)
    ref, gen = torch.rand(2, 64, 64, 3, generator=g), torch.rand(3, 64, 64, 3, generator=g)
    out = StyleKitCatVersionScore().score(cv, ref, gen, "black")["result"]
    assert -1 <= out[0] <= 1 and math.isnan(out[1]) and "not computed" in out[2]
    same = StyleKitCatVersionScore().score(cv, ref, ref[:1], "black")["result"][0]
    masked = StyleKitCatVersionScore().score(cv, ref, gen, "black", torch.zeros(1, 64, 64), torch.zeros(1, 64, 64))["result"][0]
    assert masked == pytest.approx(1.0, abs=1e-5)  # all background: identical black images
    assert same > out[0]
    with pytest.raises(ValueError, match="different CLIP"):  # text tower 64 wide vs vision pooled 48
        StyleKitCatVersionScore().score(cv, ref, gen, "black", clip=tiny_bridge_clip(), prompt="teapot")


def test_score_clip_t_against_direct_cosine():
    clip = tiny_bridge_clip(width=48)
    cv = tiny_bridge_clip_vision(width=48)
    gen = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    out = StyleKitCatVersionScore().score(cv, gen, gen, "black", clip=clip, prompt="teapot")["result"]
    from stylekit.models.clip_preprocess import clip_pixels  # ComfyUI's encode_image(crop=True) pixels
    with torch.no_grad():
        img = cv.model.hf(pixel_values=clip_pixels(gen)).pooler_output
        txt = clip.encode_from_tokens(clip.tokenize("teapot"), return_pooled=True)[1]
    want = torch.nn.functional.cosine_similarity(img, txt).mean().item()
    assert out[1] == pytest.approx(want, abs=1e-5)
