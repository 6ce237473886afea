import math

import torch

from stylekit.attention.feature_fusion import PRESETS, FusionSettings, feature_fusion_contribution, fuse
from references import explicit_attention
from stylekit.attention.functional import sdpa_attention
from stylekit.models.feature_store import FeatureStore, MissingStepError, StorePolicy
from stylekit.models.inversion import adain_latent

H = 2


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_identity_case_equals_plain_self_attention():
    q, k, v = rand(1, 16, 8, seed=1), rand(1, 16, 8, seed=2), rand(1, 16, 8, seed=3)
    out = fuse(q, q, k, v, k, v, H, FusionSettings(gamma=1.0, temperature=1.0, content_kv=0.0))
    torch.testing.assert_close(out, sdpa_attention(q, k, v, H), atol=1e-6, rtol=1e-6)


def test_fusion_against_explicit_softmax():
    q, q_c = rand(3, 16, 8, seed=1), rand(1, 16, 8, seed=2)
    k_c, v_c, k_s, v_s = (rand(1, 16, 8, seed=s) for s in (3, 4, 5, 6))
    for s in (FusionSettings(0.75, 1.5, 0.0), FusionSettings(0.3, 0.7, 2.5), PRESETS["MagicStyle"]):
        masks = []
        got = fuse(q, q_c, k_c, v_c, k_s, v_s, H, s,
                   lambda q_, k_, v_, m_: masks.append(m_) or sdpa_attention(q_, k_, v_, H, mask=m_))
        assert (masks[0] is None) == (s.content_kv in (0.0, 1.0))  # a zero bias is no mask: the fastest kernel
        q_mix = s.gamma * q_c + (1 - s.gamma) * q
        if s.content_kv:
            K, V = torch.cat([k_s, k_c], 1), torch.cat([v_s, v_c], 1)
            bias = torch.cat([torch.zeros(16), torch.full((16,), math.log(s.content_kv))]).view(1, 1, 1, 32)
        else:
            K, V, bias = k_s, v_s, None
        ref = explicit_attention(q_mix, K.expand(3, -1, -1), V.expand(3, -1, -1), H, mask=bias,
                                 scale=s.temperature / math.sqrt(4))
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


class Projections(torch.nn.Module):
    """A layer's attn1 projections (bias-free, as in SD's attention)."""

    def __init__(self, dim=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(dim, dim, bias=False) for _ in range(3))


def store_with(h_c, h_s, sigma=1.0, key=("output", 6, 0), dtype=torch.float32):
    st = FeatureStore(StorePolicy(layers=(key,), dtype=dtype), sigmas=[sigma])
    st.record(key, sigma, torch.cat([h_c, h_s]))
    return st


@torch.no_grad()
def test_contribution_projects_stored_states_with_the_layer_weights():
    q, k, v = rand(2, 16, 8, seed=1), rand(2, 16, 8, seed=2), rand(2, 16, 8, seed=3)
    h_c, h_s = rand(1, 16, 8, seed=4), rand(1, 16, 8, seed=5)
    proj = Projections()
    extra = {"block": ("output", 6), "block_index": 0, "sigmas": torch.tensor([1.0]), "n_heads": H}
    for s in (FusionSettings(0.75, 1.5, 0.0), FusionSettings(0.5, 1.0, 1.0)):
        c = feature_fusion_contribution(store_with(h_c, h_s), s, {("output", 6, 0): proj})
        got = c.apply(q, k, v, extra, None, 1.0)
        W = lambda lin, h: h @ lin.weight.T  # independent of nn.Linear's forward
        ref = fuse(q, W(proj.to_q, h_c), W(proj.to_k, h_c), W(proj.to_v, h_c), W(proj.to_k, h_s), W(proj.to_v, h_s), H, s)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_mask_marks_where_fusion_acts_and_weight_blends():
    q, k, v = rand(1, 16, 8, seed=1), rand(1, 16, 8, seed=2), rand(1, 16, 8, seed=3)
    h_c, h_s = rand(1, 16, 8, seed=4), rand(1, 16, 8, seed=5)
    proj = {("output", 6, 0): Projections()}
    st = store_with(h_c, h_s)
    mask = torch.zeros(8, 8)
    mask[:, 4:] = 1.0  # fuse the right half, leave the left one plain
    extra = {"block": ("output", 6), "block_index": 0, "sigmas": torch.tensor([1.0]), "n_heads": H,
             "activations_shape": [1, 8, 4, 4]}
    s = FusionSettings()
    c = feature_fusion_contribution(st, s, proj, weight=1.0, mask=mask)
    plain_fn = lambda q_, k_, v_, e: sdpa_attention(q_, k_, v_, H)
    out = c.apply(q, k, v, extra, plain_fn, 1.0)
    fused = feature_fusion_contribution(st, s, proj).apply(q, k, v, extra, plain_fn, 1.0)
    plain = sdpa_attention(q, k, v, H)
    left = torch.tensor([(i % 4) < 2 for i in range(16)])
    torch.testing.assert_close(out[:, left], plain[:, left])
    torch.testing.assert_close(out[:, ~left], fused[:, ~left])
    half = feature_fusion_contribution(st, s, proj).apply(q, k, v, extra, plain_fn, 0.25)
    torch.testing.assert_close(half, 0.25 * fused + 0.75 * plain)


def test_store_reports_size_and_names_missing_steps():
    st = store_with(rand(1, 16, 8, seed=0), rand(1, 16, 8, seed=1), sigma=2.5)
    assert st.size_bytes() == 2 * 16 * 8 * 4  # one attn1 input per image
    st.policy.dtype = torch.float16
    st.record(("output", 6, 0), 2.5, rand(2, 16, 8))
    assert st.size_bytes() == 2 * 16 * 8 * 2
    try:
        st.lookup(("output", 6, 0), 3.1)
    except MissingStepError as e:
        assert "3.1000" in str(e) and "2.5" in str(e) and "sigmas output of StyleKit DDIM Invert" in str(e) and "Inversion Sigmas" not in str(e)
    else:
        raise AssertionError("a sigma with no stored step must raise")
    st.free()
    assert st.size_bytes() == 0


def test_adain_latent_takes_style_statistics():
    c, s = rand(1, 4, 8, 8, seed=1) * 3 + 1, rand(1, 4, 8, 8, seed=2) * 0.5 - 2
    out = adain_latent(c, s)
    torch.testing.assert_close(out.mean((-2, -1)), s.mean((-2, -1)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.std((-2, -1)), s.std((-2, -1)), atol=1e-4, rtol=1e-4)
    # the spatial pattern is the content's: correlation 1 per channel
    cc = ((out - out.mean((-2, -1), keepdim=True)) * (c - c.mean((-2, -1), keepdim=True))).mean((-2, -1))
    assert torch.allclose(cc / (out.std((-2, -1), unbiased=False) * c.std((-2, -1), unbiased=False)), torch.ones(1, 4), atol=1e-4)
