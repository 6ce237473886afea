"""DiT joint attention (Flux): the router, Feature Fusion and the teacher against explicit references.

The references here rotate with complex numbers (an independent form of RoPE from the pack's 2x2
matrices) and compute softmax attention in float64 over explicitly built key sets.
"""
import math

import pytest
import torch
from stylekit.attention.feature_fusion import PRESETS, FusionSettings
from stylekit.attention.joint import (
    JointContribution,
    JointOutput,
    JointRouter,
    add_joint_contribution,
    dit_key,
)
from stylekit.attention.joint_fusion import (
    fuse_joint,
    joint_fusion_contribution,
)
from stylekit.attention.joint_teacher import joint_teacher_contribution
from stylekit.attention.masks import mask_tokens
from stylekit.attention.options import JOINT_AFTER, TEACHER_CHUNKS
from stylekit.attention.rope import apply_rope, embed_ids
from stylekit.attention.router import Contribution, add_contribution

H, D, TXT, GH, GW = 2, 8, 3, 3, 4
THETA = 10000
AXES = (2, 2, 4)
IMG = GH * GW
L = TXT + IMG


def ids():
    img = torch.zeros(GH, GW, 3)
    img[..., 1] = torch.arange(GH)[:, None]
    img[..., 2] = torch.arange(GW)[None, :]
    return torch.cat([torch.zeros(TXT, 3), img.reshape(-1, 3)])


def complex_rotate(x, pos):
    """RoPE as complex multiplication: channel pairs (2i, 2i+1) of each axis band turned by pos * theta^(-2i/d)."""
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    angles = []
    for a, d in enumerate(AXES):
        freqs = THETA ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles.append(pos[:, a, None].double() * freqs)
    ang = torch.cat(angles, dim=-1)  # (tokens, D/2)
    return torch.view_as_real(xc * torch.polar(torch.ones_like(ang), ang)).reshape(x.shape)


def softmax_attention(q, k, v, bias=None):
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits, -1) @ v


def merged(x):  # (B, H, N, D) -> (B, N, H*D)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def host_run(router, q, k, v, pe, extra):
    """What ComfyUI's Flux block does around the hooks: patch, RoPE (if pe is left), attention, output patch."""
    out = router(q, k, v, pe=pe, attn_mask=None, extra_options=extra)
    q, k, v, pe, mask = (out.get(n, d) for n, d in (("q", q), ("k", k), ("v", v), ("pe", pe), ("attn_mask", None)))
    if pe is not None:
        q, k = apply_rope(q, pe), apply_rope(k, pe)
    attn = merged(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    return JointOutput()(attn, extra)


def extra_for(block=("double", 0), sigma=0.5, cond_or_uncond=(0,)):
    return {"block_type": block[0], "block_index": block[1], "img_slice": [TXT, L], "sigmas": torch.tensor([sigma]),
            "cond_or_uncond": list(cond_or_uncond)}


class Store:
    recording = False

    def __init__(self, refs):
        self.refs = refs

    def lookup(self, key, sigma, device=None):
        return self.refs

    def check_sampler(self, sample_sigmas):  # the same references at every sigma: any schedule fits
        pass

    def move_to(self, device):
        return self


def random_refs(g):
    return {n: torch.randn(1, H, IMG, D, generator=g, dtype=torch.float64).float() for n in ("q_c", "k_c", "v_c", "k_s", "v_s")}


@pytest.mark.parametrize("preset", ["StyleID", "MagicStyle", "custom"])
def test_joint_fusion_matches_explicit_reference_with_its_own_rope(preset):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, H, L, D, generator=g) for _ in range(3))
    refs = random_refs(g)
    s = PRESETS.get(preset, FusionSettings(gamma=0.4, temperature=1.3, content_kv=2.5))
    pe = embed_ids(ids()[None], AXES, THETA)
    router = JointRouter().with_contribution(joint_fusion_contribution(Store(refs), s), [("double", 0, 0)])
    got = host_run(router, q, k, v, pe, extra_for())

    pos = ids()
    pos_img = pos[TXT:]
    rq, rk = complex_rotate(q, pos), complex_rotate(k, pos)
    ref = {n: complex_rotate(t, pos_img) if n in ("q_c", "k_c", "k_s") else t.double() for n, t in refs.items()}
    text = softmax_attention(rq[:, :, :TXT], rk, v.double())
    q_img = s.temperature * (s.gamma * ref["q_c"] + (1 - s.gamma) * rq[:, :, TXT:])
    keys = [rk[:, :, :TXT], ref["k_s"].expand(2, -1, -1, -1)]
    vals = [v[:, :, :TXT].double(), ref["v_s"].expand(2, -1, -1, -1)]
    bias = torch.zeros(TXT + IMG + (IMG if s.content_kv else 0), dtype=torch.float64)
    if s.content_kv:
        keys.append(ref["k_c"].expand(2, -1, -1, -1))
        vals.append(ref["v_c"].expand(2, -1, -1, -1))
        bias[TXT + IMG:] = math.log(s.content_kv)
    img = softmax_attention(q_img, torch.cat(keys, 2), torch.cat(vals, 2), bias)
    want = merged(torch.cat([text, img], dim=2))
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)  # float32 attention over <= 27 keys


def test_identical_references_with_gamma_1_and_t_1_is_plain_attention():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, H, L, D, generator=g) for _ in range(3))
    img = slice(TXT, L)
    refs = {"q_c": q[:, :, img], "k_c": k[:, :, img], "v_c": v[:, :, img], "k_s": k[:, :, img], "v_s": v[:, :, img]}
    pe = embed_ids(ids()[None], AXES, THETA)
    plain = host_run(JointRouter(), q, k, v, pe, extra_for())
    fused = JointRouter().with_contribution(joint_fusion_contribution(Store(refs), FusionSettings(1.0, 1.0, 0.0)),
                                            [("double", 0, 0)])
    torch.testing.assert_close(host_run(fused, q, k, v, pe, extra_for()), plain, atol=1e-6, rtol=1e-5)


def test_text_tokens_keep_their_plain_output_and_image_tokens_change():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, H, L, D, generator=g) for _ in range(3))
    pe = embed_ids(ids()[None], AXES, THETA)
    plain = host_run(JointRouter(), q, k, v, pe, extra_for())
    router = JointRouter().with_contribution(joint_fusion_contribution(Store(random_refs(g)), PRESETS["MagicStyle"]),
                                             [("single", 1, 0)])
    got = host_run(router, q, k, v, pe, extra_for(("single", 1)))
    torch.testing.assert_close(got[:, :TXT], plain[:, :TXT], atol=1e-6, rtol=1e-5)
    assert (got[:, TXT:] - plain[:, TXT:]).abs().mean() > 0.05


def test_mask_spares_its_region_and_weight_blends():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, H, L, D, generator=g) for _ in range(3))
    pe = embed_ids(ids()[None], AXES, THETA)
    refs = random_refs(g)
    plain = host_run(JointRouter(), q, k, v, pe, extra_for())
    full = host_run(JointRouter().with_contribution(joint_fusion_contribution(Store(refs), PRESETS["StyleID"]),
                                                    [("double", 0, 0)]), q, k, v, pe, extra_for())
    mask = torch.zeros(GH * 8, GW * 8)
    mask[:, GW * 4:] = 1  # the right half acts
    masked = host_run(JointRouter().with_contribution(
        joint_fusion_contribution(Store(refs), PRESETS["StyleID"], mask=mask, grid=(GH, GW)), [("double", 0, 0)]),
        q, k, v, pe, extra_for())
    right = mask_tokens(mask, (GH, GW)).reshape(-1) > 0.5
    torch.testing.assert_close(masked[:, TXT:][:, ~right], plain[:, TXT:][:, ~right], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(masked[:, TXT:][:, right], full[:, TXT:][:, right], atol=1e-5, rtol=1e-5)
    half = host_run(JointRouter().with_contribution(
        joint_fusion_contribution(Store(refs), PRESETS["StyleID"], weight=0.5), [("double", 0, 0)]), q, k, v, pe, extra_for())
    torch.testing.assert_close(half[:, TXT:], 0.5 * (plain[:, TXT:] + full[:, TXT:]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(half[:, :TXT], plain[:, :TXT], atol=1e-6, rtol=1e-5)


def test_router_is_idle_outside_window_weight_zero_and_other_blocks():
    calls = []

    def apply(call, call_next, w):
        calls.append(dit_key(call.extra))
        return call_next(call)
    c = JointContribution("probe", apply, sigma_start=0.8, sigma_end=0.2, block_weights={("double", 1): 0.0})
    router = JointRouter().with_contribution(c, [("double", 0, 0), ("double", 1, 0)])
    q = k = v = torch.zeros(1, H, L, D)
    pe = embed_ids(ids()[None], AXES, THETA)
    assert router(q, k, v, pe=pe, extra_options=extra_for(("double", 0), sigma=0.9)) == {}
    assert router(q, k, v, pe=pe, extra_options=extra_for(("double", 1), sigma=0.5)) == {}
    assert router(q, k, v, pe=pe, extra_options=extra_for(("single", 0), sigma=0.5)) == {}
    out = router(q, k, v, pe=pe, extra_options=extra_for(("double", 0), sigma=0.5))
    assert calls == [("double", 0, 0)] and out == {}  # it ran and changed nothing: the block runs as unpatched


def test_teacher_uses_the_teacher_map_on_image_rows_and_hides_style_tokens():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, H, L, D, generator=g) for _ in range(3))  # row 0 stylised, row 1 teacher
    pe = embed_ids(ids()[None], AXES, THETA)
    prompt = 2  # context tokens [2, TXT) are style tokens (Redux)
    router = JointRouter().with_contribution(joint_teacher_contribution(prompt), [("double", 0, 0)])
    extra = dict(extra_for(cond_or_uncond=(0, 0)), **{TEACHER_CHUNKS: 1})  # as the wrapper doubles the chunks
    got = host_run(router, q, k, v, pe, extra)
    pos = ids()
    rq, rk, vd = complex_rotate(q, pos), complex_rotate(k, pos), v.double()
    hide = torch.zeros(L, dtype=torch.float64)
    hide[prompt:TXT] = float("-inf")
    teacher = softmax_attention(rq[1:], rk[1:], vd[1:], hide)
    styled_img = softmax_attention(rq[1:, :, TXT:], rk[1:], vd[0:1], hide)
    styled_txt = softmax_attention(rq[0:1, :, :TXT], rk[0:1], vd[0:1])
    want = torch.cat([merged(torch.cat([styled_txt, styled_img], 2)), merged(teacher)])
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    without = host_run(router, q, k, v, pe, extra_for())  # no teacher rows this step: plain
    torch.testing.assert_close(without, host_run(JointRouter(), q, k, v, pe, extra_for()), atol=1e-6, rtol=1e-5)


def test_add_joint_contribution_keeps_one_router_copy_on_write_and_foreign_patches():
    from stylekit.bridge.patcher import BridgePatcher
    base = BridgePatcher(torch.nn.Linear(1, 1))
    foreign = lambda q, k, v, pe=None, attn_mask=None, extra_options=None: {}  # noqa: E731
    base.set_model_patch(foreign, "attn1_patch")
    a = base.clone()
    add_joint_contribution(a, JointContribution("one", None), [("double", 0, 0)])
    b = a.clone()
    add_joint_contribution(b, JointContribution("two", None), [("single", 0, 0)])
    la, lb = (m.model_options["transformer_options"]["patches"]["attn1_patch"] for m in (a, b))
    assert la[0] is foreign and lb[0] is foreign and len(la) == len(lb) == 2
    assert [c.name for c, _ in la[1].entries] == ["one"] and [c.name for c, _ in lb[1].entries] == ["one", "two"]
    assert len(b.model_options["transformer_options"]["patches"]["attn1_output_patch"]) == 1
    with pytest.raises(TypeError, match="UNet attention contribution"):  # each installer takes its own kind
        add_joint_contribution(b, Contribution("unet kind", None), [("double", 0, 0)])
    with pytest.raises(TypeError, match="joint-attention contribution"):
        add_contribution(base.clone(), JointContribution("joint kind", None), [("output", 3, 0)], "attn1")
    with pytest.raises(ValueError, match="DiT block keys"):
        add_joint_contribution(b, JointContribution("bad", None), [("output", 3, 0)])


def test_fuse_joint_without_text_tokens_needs_no_fix_up():
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, H, IMG, D, generator=g) for _ in range(3))
    from stylekit.attention.joint import JointQKV
    pe = embed_ids(ids()[None, TXT:], AXES, THETA)
    extra = {"img_slice": [0, IMG]}
    call = JointQKV(q, k, v, None, 0, (0, IMG), pe, extra)
    fuse_joint(call, random_refs(g), PRESETS["StyleID"])
    assert JOINT_AFTER not in extra


REFS = 5  # reference-latent tokens (Flux.1 Kontext, Flux.2) after the image's, as ComfyUI appends them


def ids_with_refs():
    ref = torch.zeros(REFS, 3)
    ref[:, 0] = 1  # Kontext's "offset" method: index 1, positions beside the image's
    ref[:, 2] = GW + torch.arange(REFS)
    return torch.cat([ids(), ref])


def extra_with_refs(**kw):
    extra = extra_for(**kw)
    return dict(extra, img_slice=[TXT, L + REFS], reference_image_num_tokens=[REFS])


@pytest.mark.parametrize("preset,weight", [("StyleID", 1.0), ("MagicStyle", 1.0), ("MagicStyle", 0.5)])
def test_reference_latent_tokens_keep_their_rows_and_their_keys(preset, weight):
    """Reference latents are neither image nor text: their rows stay plain, the image rows still read their keys."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, H, L + REFS, D, generator=g) for _ in range(3))
    refs = random_refs(g)
    s = PRESETS[preset]
    pos = ids_with_refs()
    pe = embed_ids(pos[None], AXES, THETA)
    router = JointRouter().with_contribution(joint_fusion_contribution(Store(refs), s, weight), [("double", 0, 0)])
    got = host_run(router, q, k, v, pe, extra_with_refs())

    rq, rk, vd = complex_rotate(q, pos), complex_rotate(k, pos), v.double()
    plain = softmax_attention(rq, rk, vd)
    ref = {n: complex_rotate(t, pos[TXT:L]) if n in ("q_c", "k_c", "k_s") else t.double() for n, t in refs.items()}
    q_img = s.temperature * (s.gamma * ref["q_c"] + (1 - s.gamma) * rq[:, :, TXT:L])
    keys = [rk[:, :, :TXT], ref["k_s"].expand(2, -1, -1, -1)]
    vals = [vd[:, :, :TXT], ref["v_s"].expand(2, -1, -1, -1)]
    bias = [torch.zeros(TXT + IMG, dtype=torch.float64)]
    if s.content_kv:
        keys.append(ref["k_c"].expand(2, -1, -1, -1))
        vals.append(ref["v_c"].expand(2, -1, -1, -1))
        bias.append(torch.full((IMG,), math.log(s.content_kv), dtype=torch.float64))
    keys.append(rk[:, :, L:])
    vals.append(vd[:, :, L:])
    bias.append(torch.zeros(REFS, dtype=torch.float64))
    img = softmax_attention(q_img, torch.cat(keys, 2), torch.cat(vals, 2), torch.cat(bias))
    img = plain[:, :, TXT:L] + weight * (img - plain[:, :, TXT:L])
    want = merged(torch.cat([plain[:, :, :TXT], img, plain[:, :, L:]], dim=2))
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)  # float32 attention over <= 32 keys
    # without the count, the reference tokens would be read as image tokens (and refused: 17 stored vs 12)
    with pytest.raises(ValueError, match="stored 12 image tokens"):
        host_run(router, q, k, v, pe, dict(extra_with_refs(), reference_image_num_tokens=[]))


def test_teacher_leaves_reference_latent_rows_plain():
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, H, L + REFS, D, generator=g) for _ in range(3))  # row 0 stylised, row 1 teacher
    pos = ids_with_refs()
    pe = embed_ids(pos[None], AXES, THETA)
    router = JointRouter().with_contribution(joint_teacher_contribution(), [("double", 0, 0)])
    got = host_run(router, q, k, v, pe, dict(extra_with_refs(cond_or_uncond=(0, 0)), **{TEACHER_CHUNKS: 1}))
    rq, rk, vd = complex_rotate(q, pos), complex_rotate(k, pos), v.double()
    styled_plain = softmax_attention(rq[0:1], rk[0:1], vd[0:1])
    styled_img = softmax_attention(rq[1:, :, TXT:L], rk[1:], vd[0:1])
    styled = torch.cat([styled_plain[:, :, :TXT], styled_img, styled_plain[:, :, L:]], 2)
    want = torch.cat([merged(styled), merged(softmax_attention(rq[1:], rk[1:], vd[1:]))])
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def gqa_host_run(router, q, k, v, pe, extra):
    """Krea 2's block around the hooks: k and v reach the patch with fewer heads and are repeated after it."""
    out = router(q, k, v, pe=pe, attn_mask=None, extra_options=extra)
    q, k, v, pe, mask = (out.get(n, d) for n, d in (("q", q), ("k", k), ("v", v), ("pe", pe), ("attn_mask", None)))
    if pe is not None:
        q, k = apply_rope(q, pe), apply_rope(k, pe)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    attn = merged(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    return JointOutput()(attn, extra)


def test_grouped_query_attention_reads_each_query_heads_own_key_head():
    """Queries at 4 heads, keys and values at 2 (Krea 2's layout: query heads 0-1 read key head 0, 2-3 head 1): the fusion at weight 0.5 (main call, plain
    rows and the blend) against the explicit float64 computation with the key head repeated."""
    g = torch.Generator().manual_seed(9)
    heads, kv = 4, 2
    q = torch.randn(2, heads, L, D, generator=g)
    k, v = (torch.randn(2, kv, L, D, generator=g) for _ in range(2))
    refs = {"q_c": torch.randn(1, heads, IMG, D, generator=g),
            **{n: torch.randn(1, kv, IMG, D, generator=g) for n in ("k_c", "v_c", "k_s", "v_s")}}
    s = PRESETS["MagicStyle"]
    pe = embed_ids(ids()[None], AXES, THETA)
    router = JointRouter().with_contribution(joint_fusion_contribution(Store(refs), s, 0.5), [("single", 0, 0)])
    got = gqa_host_run(router, q, k, v, pe, extra_for(("single", 0)))

    pos = ids()
    def spread(x):  # key head j serves query heads 2j and 2j + 1
        return x.repeat_interleave(heads // x.shape[1], dim=1)
    rq, rk, vd = complex_rotate(q, pos), spread(complex_rotate(k, pos)), spread(v.double())
    ref = {n: spread(complex_rotate(t, pos[TXT:]) if n in ("q_c", "k_c", "k_s") else t.double()) for n, t in refs.items()}
    plain = softmax_attention(rq, rk, vd)
    q_img = s.temperature * (s.gamma * ref["q_c"] + (1 - s.gamma) * rq[:, :, TXT:])
    keys = torch.cat([rk[:, :, :TXT], ref["k_s"].expand(2, -1, -1, -1), ref["k_c"].expand(2, -1, -1, -1)], 2)
    vals = torch.cat([vd[:, :, :TXT], ref["v_s"].expand(2, -1, -1, -1), ref["v_c"].expand(2, -1, -1, -1)], 2)
    bias = torch.cat([torch.zeros(TXT + IMG, dtype=torch.float64), torch.full((IMG,), math.log(s.content_kv), dtype=torch.float64)])
    img = softmax_attention(q_img, keys, vals, bias)
    want = merged(torch.cat([plain[:, :, :TXT], plain[:, :, TXT:] + 0.5 * (img - plain[:, :, TXT:])], 2))
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["StyleID", "MagicStyle"])
def test_a_host_that_always_rotates_gets_identity_rotations(preset):
    """Qwen-Image rotates q and k with whatever pe the hook returns (trimmed to each): the router's identity
    rotations must leave the result of the Flux contract, where pe comes back as None."""
    from stylekit.attention.families import JointHooks

    def rotating_host(router, q, k, v, pe, extra):
        out = router(q, k, v, pe=pe, attn_mask=None, extra_options=extra)
        q, k, v, pe = (out.get(n, d) for n, d in (("q", q), ("k", k), ("v", v), ("pe", pe)))
        q, k = apply_rope(q, pe[:, :, :q.shape[2]]), apply_rope(k, pe[:, :, :k.shape[2]])  # as ComfyUI trims
        return JointOutput()(merged(torch.nn.functional.scaled_dot_product_attention(q, k, v)), extra)
    g = torch.Generator().manual_seed(10)
    q, k, v = (torch.randn(1, H, L, D, generator=g) for _ in range(3))
    pe = embed_ids(ids()[None], AXES, THETA)
    c = joint_fusion_contribution(Store(random_refs(g)), PRESETS[preset])
    want = host_run(JointRouter().with_contribution(c, [("double", 0, 0)]), q, k, v, pe, extra_for())
    rotating = JointRouter(hooks=JointHooks(rope_always=True)).with_contribution(c, [("double", 0, 0)])
    got = rotating_host(rotating, q, k, v, pe, extra_for())
    torch.testing.assert_close(got, want, atol=0, rtol=0)  # cos 1, sin 0: every value exact
