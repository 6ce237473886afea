"""StylerDALLE: dVAE round trip and pixel mapping, the pickle converter's allow-list, the translator
against an explicit re-implementation of the official forward (einsum attention, eye masks,
repeat_interleave upsample), sampling, checkpoints, pretraining and REINFORCE on tiny models."""
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from tiny_models import tiny_dvae, tiny_translator, write_official_dvae_pickles
from stylekit.models.dvae import (DVAEWeightsError, convert_dalle_pickle, map_pixels,
                                  unmap_pixels)
from stylekit.models.stylerdalle import (StylerDALLEWeightsError, load_translator,
                                         official_upsample, sample_tokens, save_translator)
from stylekit.models.stylerdalle_train import (PretrainSettings, StyleSettings, embed_tokens, pretrain, train_style,
                                               update_baseline)

VOCAB = 64


# ------------------------------------------------------------------------------------------------ dVAE
def test_pixel_mapping_and_inverse():
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(map_pixels(x).min() >= 0.1, torch.tensor(True))
    torch.testing.assert_close(unmap_pixels(map_pixels(x)), x)
    assert unmap_pixels(torch.tensor([0.0, 1.0])).tolist() == [0.0, 1.0]  # clamped


def test_dvae_round_trip_shapes_and_lookup_equals_one_hot_conv():
    enc, dec = tiny_dvae()
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = enc.tokens(x)
        assert tokens.shape == (2, 16, 16) and tokens.dtype == torch.int64 and int(tokens.max()) < VOCAB
        torch.testing.assert_close(tokens, enc(map_pixels(x)).argmax(1))
        out = dec.decode(tokens)
        one_hot = F.one_hot(tokens, VOCAB).permute(0, 3, 1, 2).float()  # the official decoder input
        ref = unmap_pixels(torch.sigmoid(dec(one_hot)[:, :3]))
    assert out.shape == (2, 3, 128, 128) and 0 <= float(out.min()) and float(out.max()) <= 1
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------- converter: fake dall_e classes, pickled by torch
def test_converter_reads_official_layout_pickles_and_refuses_others(tmp_path):
    enc, dec = tiny_dvae(seed=3)
    write_official_dvae_pickles(enc, dec, tmp_path)
    assert "dall_e" not in sys.modules  # the converter needs no dall-e package
    for path, ref in (("encoder.pkl", enc), ("decoder.pkl", dec)):
        part, sd = convert_dalle_pickle(str(tmp_path / path))
        assert part == path.split(".")[0] and set(sd) == set(ref.state_dict())
        assert all(torch.equal(sd[k], v) for k, v in ref.state_dict().items())

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))
    torch.save({"blocks": Evil()}, tmp_path / "evil.pkl")
    with pytest.raises(DVAEWeightsError, match=r"evil.pkl .*pickled object \((posix|os)\.system\), which StyleKit does not unpickle"):
        convert_dalle_pickle(str(tmp_path / "evil.pkl"))
    torch.save({"w": torch.zeros(1)}, tmp_path / "dict.pkl")
    with pytest.raises(DVAEWeightsError, match="holds a builtins.dict"):
        convert_dalle_pickle(str(tmp_path / "dict.pkl"))


# --------------------------------------------- translator against the official forward, written out
def ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"])


def official_attention(sd, p, q, k, v, heads, mask):
    b, n, c = q.shape
    m = k.shape[1]
    qq = (q @ sd[p + ".to_queries.weight"].T).reshape(b, n, heads, c // heads)
    if p + ".to_keys_values.weight" in sd:
        kv = (k @ sd[p + ".to_keys_values.weight"].T).reshape(b, m, 2, heads, c // heads)
        kk, vv = kv[:, :, 0], kv[:, :, 1]
    else:
        kk = (k @ sd[p + ".to_keys.weight"].T).reshape(b, m, heads, c // heads)
        vv = (v @ sd[p + ".to_values.weight"].T).reshape(b, m, heads, c // heads)
    att = torch.einsum("bnhd,bmhd->bnmh", qq, kk) * (c // heads) ** -0.5
    if mask:
        att = att.masked_fill(torch.eye(n, dtype=torch.bool)[None, :, :, None], float("-inf"))
    out = torch.einsum("bnmh,bmhd->bnhd", att.softmax(dim=2), vv).reshape(b, n, c)
    return out @ sd[p + ".project.weight"].T + sd[p + ".project.bias"]


def mlp(sd, p, x):
    return F.relu(x @ sd[p + ".fc1.weight"].T + sd[p + ".fc1.bias"]) @ sd[p + ".fc2.weight"].T + sd[p + ".fc2.bias"]


def official_pos(sd, p, n):
    x_emb = sd[p + ".col_embed.weight"][:n]
    y_emb = sd[p + ".row_embed.weight"][:n]
    return torch.cat([x_emb.unsqueeze(0).repeat(n, 1, 1), y_emb.unsqueeze(1).repeat(1, n, 1)], -1).view(1, n * n, -1)


def official_forward(sd, x, heads):
    bs, h = x.shape[0], sd["linear_proj.weight"].shape[0]
    e = F.relu(x @ sd["linear_proj.weight"].T + sd["linear_proj.bias"])
    y = e + official_pos(sd, "nat_enc.pos_embedding", 16)
    for i in range(4):
        p = f"nat_enc.layers.{i}"
        xn = ln(y, sd, p + ".norm1")
        y = y + official_attention(sd, p + ".attn", xn, xn, xn, heads, False)
        y = y + mlp(sd, p + ".mlp", ln(y, sd, p + ".norm2"))
    x_ = torch.repeat_interleave(e.view(bs, 16, 16, h), 2, dim=1).view(bs, -1, h)
    x_ = torch.repeat_interleave(x_.view(bs, 16, 32, h), 2, dim=1).view(bs, -1, h)
    pos = official_pos(sd, "nat_dec.pos_embedding", 32).repeat(bs, 1, 1)
    d = x_
    j = 0
    while f"nat_dec.transformer.layers.{j}.norm1.weight" in sd:
        p = f"nat_dec.transformer.layers.{j}"
        q, k, v, mask = [(d, d, d, True), (pos, pos, d, True), (d, y, y, False)][j % 3]
        d = d + official_attention(sd, p + ".attn", ln(q, sd, p + ".norm1"), k, v, heads, mask)
        d = d + mlp(sd, p + ".mlp", ln(d, sd, p + ".norm2"))
        j += 1
    d = ln(d, sd, "nat_dec.ln_final")
    return torch.log_softmax(d @ sd["outNet.weight"].T + sd["outNet.bias"], dim=-1)


def test_translator_matches_official_forward():
    t = tiny_translator(seed=4)
    sd = t.state_dict()
    x = torch.randn(2, 256, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(t(x), official_forward(sd, x, heads=4), atol=1e-4, rtol=1e-4)
    e = torch.arange(256.0).view(1, 256, 1)
    up = official_upsample(e).view(32, 32)
    assert up[5, 20] == (5 // 2) * 16 + 20 % 16  # rows doubled, columns tiled
    with pytest.raises(ValueError, match=r"expected embedded tokens \(B, 256, 8\)"):
        t(torch.zeros(1, 100, 8))


def test_official_dropout_option_and_sampling():
    t = tiny_translator()
    x = torch.randn(1, 256, 8)
    with torch.no_grad():
        assert torch.equal(t(x), t(x))  # deterministic by default
        torch.manual_seed(0)
        a = t(x, official_dropout=True)
        assert not torch.equal(a, t(x))
        lp = t(x)
    s1, s2 = sample_tokens(lp, seed=3), sample_tokens(lp, seed=3)
    assert s1.shape == (1, 32, 32) and torch.equal(s1, s2) and not torch.equal(s1, sample_tokens(lp, seed=4))
    assert torch.equal(sample_tokens(lp, argmax=True).view(1, -1), lp.argmax(-1))


def test_checkpoints_round_trip_and_refuse_pickles(tmp_path):
    t = tiny_translator(seed=2)
    save_translator(t, str(tmp_path / "style.safetensors"), style="oil painting")
    back = load_translator(str(tmp_path / "style.safetensors"))
    assert back.heads == 4 and all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), back.state_dict().values()))
    torch.save(t.state_dict(), tmp_path / "official.pt")  # what the official train.py writes
    assert load_translator(str(tmp_path / "official.pt"), heads=4).vocab == VOCAB
    torch.save({"model": t}, tmp_path / "module.pt")
    with pytest.raises(StylerDALLEWeightsError, match=r"module.pt .*pickled object \(.*StylerDALLETranslator\)"):
        load_translator(str(tmp_path / "module.pt"))
    sd = t.state_dict()
    del sd["outNet.bias"]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(StylerDALLEWeightsError, match=r"missing \['outNet.bias'\]"):
        load_translator(str(tmp_path / "broken.pt"), heads=4)


# --------------------------------------------------------------------------------------- training
def test_pretraining_lowers_nll_and_leaves_input_untouched():
    enc, dec = tiny_dvae()
    t = tiny_translator()
    before = {k: v.clone() for k, v in t.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    big = torch.rand(4, 3, 256, 256, generator=g)
    with torch.no_grad():
        t16, t32 = enc.tokens(F.interpolate(big, size=128, mode="area")), enc.tokens(big)
    net, losses = pretrain(t, dec, t16, t32, PretrainSettings(steps=40, lr=3e-3, batch=4, warmup=5))
    assert losses[-1] < 0.7 * losses[0] and math.isfinite(losses[-1])
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())
    with torch.no_grad():
        nll = -net(embed_tokens(dec, t16)).gather(2, t32.view(4, -1, 1)).mean()
    assert float(nll) < losses[0]


def test_running_mean_baseline():
    b = 0.0
    for r in (0.2, 0.5, 0.1):
        b = update_baseline(b, r, 4)
    assert b == pytest.approx(((0.2 * 0.2) * 0.8 + 0.2 * 0.5) * 0.8 + 0.2 * 0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinforce_step_raises_the_advantage_weighted_likelihood_of_its_samples(seed):
    """One REINFORCE step, for any seed: re-scoring the step's own samples, the advantage-weighted
    log-likelihood (the surrogate it ascends) goes up. With a small lr the step is first order (Adam's
    first step moves every parameter by lr against its gradient's sign), so this holds whatever samples
    the seed draws and however the machine rounds, unlike a reward gain over many stochastic steps."""
    enc, dec = tiny_dvae(seed=seed)
    t = tiny_translator(seed=seed)
    t16 = enc.tokens(torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(1)))
    reward = lambda images, captions: images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))  # noqa: E731  red, not blue
    settings = StyleSettings(steps=1, lr=1e-4, batch=2, official_dropout=False, seed=seed)
    net, losses, rewards, baseline = train_style(t, dec, t16, reward, ["a photo"] * 4, settings)
    # the step's batch and samples, drawn as train_style draws them (baseline 0 at the first step)
    idx = torch.randint(0, 4, (2,), generator=torch.Generator().manual_seed(seed))
    enc_in = embed_tokens(dec, t16)[idx]
    with torch.no_grad():
        sample = sample_tokens(t(enc_in), seed=seed * 100003)
        advantage = reward(dec.decode(sample), None)

        def surrogate(model):
            chosen = model(enc_in).gather(2, sample.reshape(2, -1, 1)).squeeze(2)
            return float((chosen * advantage[:, None]).mean())
        before, after = surrogate(t), surrogate(net)
    assert losses[0] == pytest.approx(-before, rel=1e-4)  # the loss is minus the surrogate
    assert rewards[0] == pytest.approx(float(advantage.mean()), rel=1e-4, abs=1e-6)
    assert after > before
    assert baseline == pytest.approx(update_baseline(0.0, rewards[0], 2))
    trained = {n for n, p in net.named_parameters() if not torch.equal(p, t.state_dict()[n])}
    assert trained and all(n.startswith(("nat_dec.", "outNet.")) for n in trained)  # only decoder and head
