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


# ------------------------------------------------------------------ ComfyUI's patch protocol
def test_router_to_device_rebuilds_contributions_on_moved_tensors():
    from stylekit.attention.image_kv import image_kv_contribution
    g = torch.Generator().manual_seed(0)
    tokens = {KEY: torch.randn(1, 3, 6, generator=g)}
    proj = {KEY: (torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g))}
    router = AttentionRouter("attn2", KEY, contributions=(image_kv_contribution(tokens, proj, 0.5),))
    q, k, v = qkv()
    out = router(q, k, v, extra())  # fills the contribution's cache of projected tokens on the CPU
    assert router.to(torch.float16) is router  # ComfyUI also passes the model's dtype: cast at use instead
    meta = router.to(torch.device("meta"))
    (c,) = meta.contributions
    assert meta is not router and c is not router.contributions[0]
    assert c.state["tokens"][KEY].device.type == "meta" and all(w.device.type == "meta" for w in c.state["projections"][KEY])
    assert c.weight == 0.5 and c.name == "image_kv"  # every other argument as it was
    assert router.contributions[0].state["tokens"][KEY].device.type == "cpu"  # the original is untouched
    again = meta.to("cpu")  # back where the node built it: the original itself, no copy
    assert again.contributions[0] is router.contributions[0]
    torch.testing.assert_close(again(q, k, v, extra()), out, atol=0, rtol=0)
    source = image_kv_contribution(tokens, proj, 0.5)  # held, as the node's output holds it in ComfyUI
    assert source.to(torch.device("meta")).to(torch.device("cpu")) is source  # a moved copy's way back


def test_routers_sharing_a_contribution_share_one_moved_copy_while_they_hold_it():
    """A method puts one contribution on every layer's router and ComfyUI moves each router on every load
    and offload: the state is copied once per device, not once per router, and nothing keeps the copy
    on the device once no router holds it."""
    import gc
    import weakref

    from stylekit.attention.image_kv import image_kv_contribution
    g = torch.Generator().manual_seed(0)
    keys = [("input", i, 0) for i in range(4)]
    tokens = {key: torch.randn(1, 3, 6, generator=g) for key in keys}
    proj = {key: (torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)) for key in keys}
    c = image_kv_contribution(tokens, proj)
    routers = [AttentionRouter("attn2", key, contributions=(c,)) for key in keys]
    moved = [r.to(torch.device("meta")) for r in routers]
    copies = {id(m.contributions[0]) for m in moved}
    assert len(copies) == 1 and moved[0].contributions[0] is not c
    assert moved[0].contributions[0].state["projections"][keys[3]][0].device.type == "meta"
    back = [m.to(torch.device("cpu")) for m in moved]
    assert all(b.contributions[0] is c for b in back)
    ref = weakref.ref(moved[0].contributions[0])
    del moved
    gc.collect()
    assert ref() is None  # offloaded: the device copy is gone
    again = routers[0].to(torch.device("meta")).contributions[0]
    assert again is not c and again.state["tokens"][keys[0]].device.type == "meta"


def test_router_reaches_a_foreign_base_for_to_models_and_cleanup():
    seen = []

    class ForeignPatch:  # another pack's replace patch with core's protocol
        def __call__(self, q, k, v, extra):
            return sdpa_attention(q, k, v, extra["n_heads"])

        def to(self, device_or_dtype):
            seen.append(("to", device_or_dtype))
            return self

        def models(self):
            return ["their model"]

        def cleanup(self):
            seen.append("cleanup")

    router = AttentionRouter("attn1", KEY, base=ForeignPatch(), contributions=(scale_v(2.0),))
    assert router.models() == ["their model"]
    router.to(torch.device("cpu")).cleanup()
    router.to(torch.float16)
    assert seen == [("to", torch.device("cpu")), "cleanup", ("to", torch.float16)]
    assert AttentionRouter("attn1", KEY).models() == []


def test_host_attention_hands_comfyui_the_block_options(monkeypatch):
    """Inside ComfyUI every attention goes through optimized_attention with transformer_options, so an
    optimized_attention_override applies; with a mask, through optimized_attention_masked."""
    import sys
    import types

    from stylekit.attention.functional import host_attention
    calls = []

    def backend(name):
        def fn(q, k, v, heads, mask=None, attn_precision=None, transformer_options=None):
            calls.append((name, heads, mask is not None, transformer_options))
            return sdpa_attention(q, k, v, heads, mask)
        return fn
    fake = types.SimpleNamespace(optimized_attention=backend("plain"), optimized_attention_masked=backend("masked"))
    monkeypatch.setitem(sys.modules, "comfy.ldm.modules.attention", fake)
    q, k, v = qkv()
    e = extra()
    mask = torch.zeros(1, 1, 1, 5)
    torch.testing.assert_close(host_attention(q, k, v, e), sdpa_attention(q, k, v, 2))
    torch.testing.assert_close(host_attention(q, k, v, e, mask), sdpa_attention(q, k, v, 2, mask))
    assert calls == [("plain", 2, False, e), ("masked", 2, True, e)]
    router = AttentionRouter("attn1", KEY, contributions=(scale_v(3.0),))
    router(q, k, v, e)  # the router's own base call is the host's too
    assert calls[-1] == ("plain", 2, False, e)


def test_current_sigma_reads_each_sigmas_tensor_once():
    """ComfyUI hands every block of a model call the same sigmas tensor; reading it is a wait for the GPU,
    so the router reads a tensor once (a new model call brings a new tensor, read again)."""
    from stylekit.attention.router import current_sigma
    s = torch.tensor([3.0, 3.0])
    assert current_sigma({"sigmas": s}) == 3.0
    s.fill_(5.0)  # the same object: not read again (hosts never change it in place)
    assert current_sigma({"sigmas": s}) == 3.0
    assert current_sigma({"sigmas": torch.tensor([5.0])}) == 5.0
    assert current_sigma({"sigmas": 2}) == 2.0 and current_sigma({}) is None
