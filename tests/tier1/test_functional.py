import torch

from references import explicit_attention
from stylekit.attention.functional import sdpa_attention


def test_sdpa_matches_explicit_softmax_with_mask_and_scale():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 16, generator=g) for _ in range(3))
    k = torch.randn(2, 9, 16, generator=g)
    v = torch.randn(2, 9, 16, generator=g)
    mask = torch.randn(1, 1, 7, 9, generator=g)
    for scale in (None, 0.7):
        got = sdpa_attention(q, k, v, heads=4, mask=mask, scale=scale)
        ref = explicit_attention(q, k, v, heads=4, mask=mask, scale=scale)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_explicit_attention_is_a_softmax_average():
    # one key -> the output is that key's value whatever the query
    q = torch.randn(1, 3, 8)
    k = torch.randn(1, 1, 8)
    v = torch.randn(1, 1, 8)
    out = explicit_attention(q, k, v, heads=2)
    torch.testing.assert_close(out, v.expand(1, 3, 8))
