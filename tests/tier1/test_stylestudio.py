"""StyleStudio math and formats: AdaIN and the adapter contribution against explicit references, the
teacher's attention swap, its step window, and IP-Adapter / CSGO files in the published key layouts."""
import argparse
import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from stylekit.attention.adapter_attention import adain, adapter_contribution
from stylekit.attention.options import TEACHER_CHUNKS
from references import explicit_attention
from stylekit.attention.layers import LayerInfo, ModelLayers, UnsupportedModelError
from stylekit.attention.teacher import TeacherWrapper, duplicate_rows, teacher_layout_contribution
from tiny_models import flat_state_dict, tiny_ip_adapter
from stylekit.models.ip_adapter import AdapterWeightsError, load_adapter, processor_order

HEADS = 2
KEY = ("output", 3, 0)
SD15_KEYS = ([("input", i, 0) for i in (1, 2, 4, 5, 7, 8)] + [("middle", 0, 0)] + [("output", i, 0) for i in range(3, 12)])
SD15 = ModelLayers("sd15", tuple(LayerInfo(k, 16, HEADS, 24) for k in SD15_KEYS))
SDXL_KEYS = ([("input", i, t) for i in (4, 5, 7, 8) for t in range(2)] + [("middle", 0, t) for t in range(2)]
             + [("output", i, t) for i in range(6) for t in range(2)])
SDXL = ModelLayers("sdxl", tuple(LayerInfo(k, 16, HEADS, 24) for k in SDXL_KEYS))


def rand(*s, seed=0):
    return torch.randn(*s, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- AdaIN and the contribution
def test_adain_matches_per_sample_per_channel_statistics():
    c, s = rand(2, 7, 3, seed=1) * 3 + 1, rand(2, 5, 3, seed=2) * 0.5 - 2
    out = adain(c, s)
    for b in range(2):
        for ch in range(3):
            cv, sv = c[b, :, ch].tolist(), s[b, :, ch].tolist()
            want = [(x - statistics.mean(cv)) / statistics.stdev(cv) * statistics.stdev(sv) + statistics.mean(sv) for x in cv]
            torch.testing.assert_close(out[b, :, ch], torch.tensor(want), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(adain(torch.ones(1, 4, 3), s[:1])).all()  # constant content: no NaN


def run(contribution, q, k, v, labels, extra=None, w=None):
    extra = dict({"block": KEY[:2], "block_index": KEY[2], "n_heads": HEADS, "cond_or_uncond": labels,
                  "original_shape": [q.shape[0], 4, 8, 4]}, **(extra or {}))
    text = lambda q2, k2, v2, e: explicit_attention(q2, k2, v2, HEADS)  # noqa: E731
    return contribution.apply(q, k, v, extra, text, contribution.weight if w is None else w)


@pytest.mark.parametrize("fusion", ["add", "cross-modal AdaIN"])
def test_contribution_against_explicit_reference_per_chunk(fusion):
    wk, wv = rand(16, 24, seed=3) * 0.3, rand(16, 24, seed=4) * 0.3
    cond, uncond = rand(1, 4, 24, seed=5), rand(1, 4, 24, seed=6)
    q, k, v = rand(4, 32, 16, seed=7), rand(4, 9, 16, seed=8), rand(4, 9, 16, seed=9)  # 2 rows per chunk
    c = adapter_contribution(cond, uncond, {KEY: (wk, wv)}, fusion, weight=0.7)
    out = run(c, q, k, v, [1, 0])
    for rows, tokens in ((slice(0, 2), uncond), (slice(2, 4), cond)):
        t = explicit_attention(q[rows], k[rows], v[rows], HEADS)
        i = explicit_attention(q[rows], (tokens @ wk.T).expand(2, -1, -1), (tokens @ wv.T).expand(2, -1, -1), HEADS)
        want = t + 0.7 * i if fusion == "add" else t + 0.7 * (adain(t, i) - t)
        torch.testing.assert_close(out[rows], want, atol=1e-5, rtol=1e-5)


def test_adain_weight_one_is_the_official_replacement_and_mask_blends():
    wk, wv = rand(16, 24, seed=3), rand(16, 24, seed=4)
    cond = rand(1, 4, 24, seed=5)
    q, k, v = rand(1, 32, 16, seed=7), rand(1, 9, 16, seed=8), rand(1, 9, 16, seed=9)
    t = explicit_attention(q, k, v, HEADS)
    i = explicit_attention(q, cond @ wk.T, cond @ wv.T, HEADS)
    plain = adapter_contribution(cond, cond, {KEY: (wk, wv)}, "cross-modal AdaIN")
    torch.testing.assert_close(run(plain, q, k, v, [0]), adain(t, i), atol=1e-5, rtol=1e-5)
    mask = torch.zeros(1, 16, 8)
    mask[:, :8] = 1  # top half of an (8, 4) token grid once resized
    masked = adapter_contribution(cond, cond, {KEY: (wk, wv)}, "cross-modal AdaIN", mask=mask)
    out = run(masked, q, k, v, [0], {"activations_shape": [1, 16, 8, 4]})
    torch.testing.assert_close(out[:, :16], adain(t, i)[:, :16], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 16:], t[:, 16:])


def test_teacher_rows_get_no_image_branch():
    wk, wv = rand(16, 24, seed=3), rand(16, 24, seed=4)
    cond = rand(1, 4, 24, seed=5)
    q, k, v = rand(4, 32, 16, seed=7), rand(4, 9, 16, seed=8), rand(4, 9, 16, seed=9)
    c = adapter_contribution(cond, cond * 0, {KEY: (wk, wv)}, "add")
    out = run(c, q, k, v, [0, 0], {TEACHER_CHUNKS: 1})  # rows 2, 3 are the teacher's
    t = explicit_attention(q, k, v, HEADS)
    torch.testing.assert_close(out[2:], t[2:])
    assert (out[:2] - t[:2]).abs().max() > 1e-3


def test_teacher_layout_uses_teacher_map_with_own_values():
    q, k, v = rand(8, 12, 16, seed=1), rand(8, 12, 16, seed=2), rand(8, 12, 16, seed=3)
    c = teacher_layout_contribution()
    extra = {"cond_or_uncond": [0, 1, 0, 1], TEACHER_CHUNKS: 2, "n_heads": HEADS}
    out = c.apply(q, k, v, extra, lambda q2, k2, v2, e: explicit_attention(q2, k2, v2, HEADS), 1.0)
    torch.testing.assert_close(out[:4], explicit_attention(q[4:], k[4:], v[:4], HEADS))  # map of teacher, values own
    torch.testing.assert_close(out[4:], explicit_attention(q[4:], k[4:], v[4:], HEADS))
    plain = c.apply(q, k, v, {"cond_or_uncond": [0, 1]}, lambda *a: explicit_attention(*a[:3], HEADS), 1.0)
    torch.testing.assert_close(plain, explicit_attention(q, k, v, HEADS))  # no teacher rows: untouched


def test_teacher_window_counts_steps():
    sigmas = torch.linspace(14.6, 0.03, 50).tolist() + [0.0]
    w = TeacherWrapper(0.4, fallback_sigma=1.0)
    active = [w.active(s, {"sample_sigmas": torch.tensor(sigmas)}) for s in sigmas[:-1]]
    assert active == [True] * 20 + [False] * 30
    assert not any(TeacherWrapper(0.0, 1.0).active(s, {"sample_sigmas": torch.tensor(sigmas)}) for s in sigmas)
    assert w.active(2.0, {}) and not w.active(0.5, {})  # no sample_sigmas: the percent fallback


def test_teacher_wrapper_duplicates_batch_and_returns_stylised_half():
    seen = {}

    def apply_model(x, t, c_crossattn, control, transformer_options):
        seen.update(x=x, t=t, ctx=c_crossattn, control=control, to=transformer_options)
        return x * 2
    x, ctx = rand(4, 4, 2, 2, seed=1), rand(4, 3, 8, seed=2)
    c = {"c_crossattn": ctx, "control": {"input": [rand(4, 5, seed=3), None]},
         "transformer_options": {"cond_or_uncond": [0, 1], "uuids": ["a", "b"]}}
    out = TeacherWrapper(0.5, 0.0)(apply_model, {"input": x, "timestep": torch.full((4,), 3.0), "c": c, "cond_or_uncond": [0, 1]})
    torch.testing.assert_close(out, x * 2)
    assert seen["x"].shape[0] == 8 and torch.equal(seen["ctx"][4:], ctx) and seen["control"]["input"][1] is None
    assert seen["to"]["cond_or_uncond"] == [0, 1, 0, 1] and seen["to"][TEACHER_CHUNKS] == 2
    assert seen["to"]["uuids"] == ["a", "b", "a", "b"] and "stylekit_teacher_chunks" not in c["transformer_options"]
    assert duplicate_rows((rand(3, 2), rand(2, 2)), 3)[1].shape == (2, 2)


# ---------------------------------------------------------------- weight files
def ln(x, w, b):
    return F.layer_norm(x, x.shape[-1:], w, b, 1e-5)


def reference_plus(sd, hidden, heads=1):
    """Perceiver Resampler written out from the published key names (dim_head 64, scale d^-1/2)."""
    x = hidden @ sd["proj_in.weight"].T + sd["proj_in.bias"]
    lat = sd["latents"].expand(hidden.shape[0], -1, -1)
    i = 0
    while f"layers.{i}.0.to_q.weight" in sd:
        p = f"layers.{i}."
        xn, ln_ = ln(x, sd[p + "0.norm1.weight"], sd[p + "0.norm1.bias"]), ln(lat, sd[p + "0.norm2.weight"], sd[p + "0.norm2.bias"])
        q = ln_ @ sd[p + "0.to_q.weight"].T
        kv = torch.cat([xn, ln_], 1) @ sd[p + "0.to_kv.weight"].T
        k, v = kv.chunk(2, -1)
        lat = explicit_attention(q, k, v, heads) @ sd[p + "0.to_out.weight"].T + lat
        h = ln(lat, sd[p + "1.0.weight"], sd[p + "1.0.bias"]) @ sd[p + "1.1.weight"].T
        lat = F.gelu(h) @ sd[p + "1.3.weight"].T + lat
        i += 1
    return ln(lat @ sd["proj_out.weight"].T + sd["proj_out.bias"], sd["norm_out.weight"], sd["norm_out.bias"])


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_plain_adapter_file_loads_and_projects(tmp_path, fmt):
    nested = tiny_ip_adapter(SD15, "plain", feature_width=48, seed=1)
    path = tmp_path / f"ip-adapter_tiny.{fmt}"
    torch.save(nested, path) if fmt == "bin" else save_file(flat_state_dict(nested), str(path))
    a = load_adapter(str(path))
    assert (a.kind, a.feature, a.feature_width, a.tokens, a.context_dim) == ("plain", "image_embeds", 48, 4, 24)
    emb = rand(2, 48, seed=2)
    sd = nested["image_proj"]
    want = ln((emb @ sd["proj.weight"].T + sd["proj.bias"]).reshape(2, 4, 24), sd["norm.weight"], sd["norm.bias"])
    torch.testing.assert_close(a.encode(emb), want, atol=1e-5, rtol=1e-5)
    bound = a.bind(SD15)
    order = processor_order(SD15)  # published SD1.5 numbering: input 1..11, output 13..29, middle 31
    assert order[0] == ("input", 1, 0) and order[6] == ("output", 3, 0) and order[15] == ("middle", 0, 0)
    for n, key in ((1, ("input", 1, 0)), (13, ("output", 3, 0)), (31, ("middle", 0, 0))):
        assert torch.equal(bound[key][0], nested["ip_adapter"][f"{n}.to_k_ip.weight"])
        assert torch.equal(bound[key][1], nested["ip_adapter"][f"{n}.to_v_ip.weight"])


def test_plus_adapter_matches_written_out_resampler(tmp_path):
    nested = tiny_ip_adapter(SDXL, "plus", feature_width=40, tokens=16, seed=2, heads=2)
    save_file(flat_state_dict(nested), str(tmp_path / "plus.safetensors"))
    a = load_adapter(str(tmp_path / "plus.safetensors"))
    assert (a.kind, a.feature, a.tokens, len(a.bind(SDXL))) == ("plus", "penultimate_hidden_states", 16, 22)
    hidden = rand(2, 10, 40, seed=3)
    torch.testing.assert_close(a.encode(hidden), reference_plus(nested["image_proj"], hidden, heads=2), atol=1e-4, rtol=1e-4)
    # SDXL numbering puts the middle block last: number 2*20+1 is middle transformer 0
    assert torch.equal(a.bind(SDXL)[("middle", 0, 0)][0], nested["ip_adapter"]["41.to_k_ip.weight"])


def test_csgo_style_branch_uses_style_projection_and_up_blocks(tmp_path):
    nested = tiny_ip_adapter(SDXL, "plus", feature_width=40, tokens=32, seed=3, csgo=True)
    torch.save(nested, tmp_path / "csgo_4_32.bin")
    a = load_adapter(str(tmp_path / "csgo_4_32.bin"))
    assert a.source == "CSGO style branch" and a.tokens == 32
    assert set(a.bind(SDXL)) == {k for k in SDXL_KEYS if k[0] == "output"}
    hidden = rand(1, 10, 40, seed=4)
    torch.testing.assert_close(a.encode(hidden), reference_plus(nested["style_image_proj"], hidden), atol=1e-4, rtol=1e-4)


def test_mismatched_pairs_fail_naming_both_sides(tmp_path):
    torch.save(tiny_ip_adapter(SD15, "plain"), tmp_path / "sd15.bin")
    a = load_adapter(str(tmp_path / "sd15.bin"))
    with pytest.raises(UnsupportedModelError, match=r"16 cross-attention layers.*SDXL-shaped \(22"):
        a.bind(SDXL)
    wide = ModelLayers("sdxl", tuple(LayerInfo(k, 16, HEADS, 2048) for k in SDXL_KEYS))
    with pytest.raises(UnsupportedModelError, match=r"24 wide context.*2048 wide \(SDXL\) context"):
        a.bind(wide)
    with pytest.raises(UnsupportedModelError, match=r"48 wide.*gives 64 wide"):
        a.encode(torch.zeros(1, 64))
    big = tiny_ip_adapter(SD15, "plus", feature_width=1280, tokens=2)
    torch.save(big, tmp_path / "plus_vit-h.bin")
    with pytest.raises(UnsupportedModelError, match=r"1280 wide \(CLIP ViT-H/14\).*1664 wide \(CLIP ViT-bigG/14\)"):
        load_adapter(str(tmp_path / "plus_vit-h.bin")).encode(torch.zeros(1, 3, 1664))


def test_bad_files_are_refused(tmp_path):
    torch.save({"weights": argparse.Namespace(a=1)}, tmp_path / "pickled.bin")
    with pytest.raises(AdapterWeightsError, match=r"pickled.bin .*pickled object \(argparse.Namespace\)"):
        load_adapter(str(tmp_path / "pickled.bin"))
    nested = tiny_ip_adapter(SD15, "plain")
    torch.save({"image_proj": {"proj.0.weight": torch.zeros(2, 2)}, "ip_adapter": nested["ip_adapter"]}, tmp_path / "faceid.bin")
    with pytest.raises(AdapterWeightsError, match="unsupported image projection"):
        load_adapter(str(tmp_path / "faceid.bin"))
    del nested["ip_adapter"]["3.to_v_ip.weight"]
    torch.save(nested, tmp_path / "broken.bin")
    with pytest.raises(AdapterWeightsError, match=r"incomplete at \[3\]"):
        load_adapter(str(tmp_path / "broken.bin"))
    with pytest.raises(AdapterWeightsError, match=r"missing.safetensors: not found"):
        load_adapter(str(tmp_path / "missing.safetensors"))
