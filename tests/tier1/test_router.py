import copy

import pytest
import torch

from stylekit.attention.functional import sdpa_attention
from stylekit.attention.router import AttentionRouter, Contribution, add_contribution, installed_patch
from stylekit.bridge import BridgePatcher, DiscreteSchedule

KEY = ("output", 6, 0)


def extra(sigma=1.0, key=KEY):
    return {"n_heads": 2, "dim_head": 4, "sigmas": torch.tensor([sigma]), "cond_or_uncond": [0],
            "block": key[:2], "block_index": key[2]}


def qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 5, 8, generator=g) for _ in range(3)]


class FakePatcher:
    """The two things add_contribution touches, with ComfyUI's copy-on-write semantics."""

    def __init__(self):
        self.model_options = {"transformer_options": {}}

    def clone(self):
        n = FakePatcher()
        n.model_options = copy.deepcopy(self.model_options)
        return n

    set_model_patch_replace = BridgePatcher.set_model_patch_replace


def scale_v(factor, log=None, name="scale_v"):
    def apply(q, k, v, extra, call_next, weight):
        if log is not None:
            log.append(name)
        return call_next(q, k, v * (1 + (factor - 1) * weight), extra)
    return Contribution(name, apply)


def add_out(const, log=None, name="add_out"):
    def apply(q, k, v, extra, call_next, weight):
        if log is not None:
            log.append(name)
        return call_next(q, k, v, extra) + const * weight
    return Contribution(name, apply)


def test_two_contributions_on_one_block_both_act_in_order():
    p = FakePatcher()
    log = []
    add_contribution(p, scale_v(3.0, log), [KEY], "attn1")
    add_contribution(p, add_out(0.5, log), [KEY], "attn1")
    router = installed_patch(p.model_options, "attn1", KEY)
    q, k, v = qkv()
    out = router(q, k, v, extra())
    ref = sdpa_attention(q, k, v * 3.0, 2) + 0.5
    torch.testing.assert_close(out, ref)
    assert log == ["scale_v", "add_out"]
    # a third contribution keeps the order of the first two
    add_contribution(p, add_out(0.0, log, "third"), [KEY], "attn1")
    log.clear()
    installed_patch(p.model_options, "attn1", KEY)(q, k, v, extra())
    assert log == ["scale_v", "add_out", "third"]


def test_foreign_replace_function_is_kept_as_base_and_called():
    p = FakePatcher()
    seen = []

    def foreign(q, k, v, extra):
        seen.append(v.clone())
        return torch.zeros_like(q) + 7.0

    p.set_model_patch_replace(foreign, "attn2", "output", 6)  # another pack's 2-part key
    add_contribution(p, scale_v(2.0), [KEY], "attn2")
    router = installed_patch(p.model_options, "attn2", KEY)
    assert router.base is foreign
    q, k, v = qkv()
    out = router(q, k, v, extra())
    assert torch.equal(out, torch.full_like(q, 7.0))
    assert torch.equal(seen[0], v * 2.0)  # the foreign function received our modified values


def test_three_part_foreign_key_wins_like_comfyui():
    p = FakePatcher()
    f2, f3 = (lambda q, k, v, e: q * 2), (lambda q, k, v, e: q * 3)
    p.set_model_patch_replace(f2, "attn1", "output", 6)
    p.set_model_patch_replace(f3, "attn1", "output", 6, 0)
    add_contribution(p, scale_v(1.0), [KEY], "attn1")
    assert installed_patch(p.model_options, "attn1", KEY).base is f3


def test_sigma_window_from_percent_is_honoured():
    ms = DiscreteSchedule()
    start, end = ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.6)
    assert start > end
    p = FakePatcher()
    c = Contribution("w", add_out(1.0).apply, sigma_start=start, sigma_end=end)
    add_contribution(p, c, [KEY], "attn1")
    router = installed_patch(p.model_options, "attn1", KEY)
    q, k, v = qkv()
    plain = sdpa_attention(q, k, v, 2)
    sigmas = ms.ddim_sigmas(20)[:-1]
    for s in sigmas.tolist():
        out = router(q, k, v, extra(s))
        inside = end <= s <= start
        assert torch.allclose(out, plain + 1.0) if inside else torch.equal(out, plain), s
    assert any(end <= s <= start for s in sigmas.tolist()) and any(s > start for s in sigmas.tolist())


def test_block_weights_and_zero_weight_skip():
    p = FakePatcher()
    k2 = ("output", 7, 0)
    c = Contribution("bw", add_out(1.0).apply, weight=2.0, block_weights={("output", 7): 0.0, KEY: 0.25})
    add_contribution(p, c, [KEY, k2], "attn1")
    q, k, v = qkv()
    plain = sdpa_attention(q, k, v, 2)
    torch.testing.assert_close(installed_patch(p.model_options, "attn1", KEY)(q, k, v, extra()), plain + 0.5)
    assert torch.equal(installed_patch(p.model_options, "attn1", k2)(q, k, v, extra(key=k2)), plain)


def test_clone_is_copy_on_write_and_shares_tensors():
    big = torch.randn(1000)
    p = FakePatcher()
    c = Contribution("t", add_out(1.0).apply, info={"features": big})
    add_contribution(p, c, [KEY], "attn1")
    q2 = p.clone()
    r_parent = installed_patch(p.model_options, "attn1", KEY)
    r_clone = installed_patch(q2.model_options, "attn1", KEY)
    assert r_clone.contributions[0] is c and r_clone.contributions[0].info["features"] is big
    add_contribution(q2, add_out(1.0), [KEY], "attn1")
    assert len(installed_patch(p.model_options, "attn1", KEY).contributions) == 1
    assert len(installed_patch(q2.model_options, "attn1", KEY).contributions) == 2
    assert installed_patch(p.model_options, "attn1", KEY) is r_parent


def test_router_rejects_bad_keys():
    with pytest.raises(ValueError, match="triples"):
        add_contribution(FakePatcher(), add_out(1.0), [("output", 6)], "attn1")
    with pytest.raises(ValueError, match="attn1"):
        add_contribution(FakePatcher(), add_out(1.0), [KEY], "attn3")
