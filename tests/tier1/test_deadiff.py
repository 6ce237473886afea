"""DEADiff: Q-Former + projection against an explicit LAVIS-semantics reference, loader and extractor
errors, the concatenated image K/V against an explicit softmax, preprocessing against kornia."""
import math

import pytest
import torch
import torch.nn.functional as F

from references import explicit_attention
from stylekit.attention.image_kv import image_kv_contribution
from stylekit.attention.layers import ModelLayers, LayerInfo
from tiny_models import tiny_deadiff_state_dict
from stylekit.errors import StyleKitError
from stylekit.models.deadiff import (INSTRUCTION_IDS, DEADiffWeightsError, adapter_from_state_dict, attn2_key,
                                     extract_deadiff, load_deadiff)

HEADS = 4
KEYS = [("input", 1, 0), ("middle", 0, 0), ("output", 11, 0)]
LAYERS = ModelLayers("sd15", tuple(LayerInfo(k, 16, 2, 64) for k in KEYS))


def official_sd(seed=0):
    return tiny_deadiff_state_dict(LAYERS, seed=seed)


# ---- an explicit reference of the official (LAVIS) Q-Former forward, from the official key names ----
def ln(x, sd, p, eps=1e-12):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def lin(x, sd, p):
    return x @ sd[p + ".weight"].T + sd[p + ".bias"]


def mha(x, ctx, sd, p):
    q, k, v = lin(x, sd, p + ".self.query"), lin(ctx, sd, p + ".self.key"), lin(ctx, sd, p + ".self.value")
    att = explicit_attention(q, k, v, HEADS)
    return ln(lin(att, sd, p + ".output.dense") + x, sd, p + ".output.LayerNorm")


def ffn(x, sd, p, suffix):
    h = F.gelu(lin(x, sd, f"{p}.intermediate{suffix}.dense"))
    return ln(lin(h, sd, f"{p}.output{suffix}.dense") + x, sd, f"{p}.output{suffix}.LayerNorm")


def reference_tokens(sd, branch, vision):
    p = f"{branch}_blip.Qformer.bert"
    ids = torch.tensor(INSTRUCTION_IDS[branch])
    text = sd[p + ".embeddings.word_embeddings.weight"][ids] + sd[p + ".embeddings.position_embeddings.weight"][:3]
    queries = sd[f"{branch}_blip.query_tokens"][0]
    x = ln(torch.cat([queries, text]).unsqueeze(0), sd, p + ".embeddings.LayerNorm")
    image = ln(vision, sd, f"{branch}_blip.ln_vision", eps=1e-5)
    nq = queries.shape[0]
    for i in range(2):
        lp = f"{p}.encoder.layer.{i}"
        x = mha(x, x, sd, lp + ".attention")                       # queries and text, bidirectional
        xq = mha(x[:, :nq], image, sd, lp + ".crossattention")      # only the queries see the image
        x = torch.cat([ffn(xq, sd, lp, "_query"), ffn(x[:, nq:], sd, lp, "")], dim=1)
    out = x[:, :nq]
    pp = f"{branch}_proj_layer"
    h = lin(ln(out, sd, pp + ".LayerNorm"), sd, pp + ".dense1")
    return out + lin(h * torch.sigmoid(1.702 * h), sd, pp + ".dense2")


@torch.no_grad()
@pytest.mark.parametrize("branch", ["style", "content"])
def test_qformer_and_projection_match_the_official_architecture(branch):
    sd = official_sd()
    adapter = adapter_from_state_dict(sd, heads=HEADS)
    vision = torch.randn(1, 50, 48, generator=torch.Generator().manual_seed(3))
    got = adapter.encode(vision, branch)
    assert got.shape == (1, 16, 32)
    torch.testing.assert_close(got, reference_tokens(sd, branch, vision), atol=1e-4, rtol=1e-4)
    other = adapter.encode(vision, "content" if branch == "style" else "style")
    assert (other - got).abs().max() > 1e-2  # the two branches (and instructions) differ


def test_attn2_key_names_follow_comfyui_blocks():
    assert attn2_key("model.diffusion_model.input_blocks.7.1.transformer_blocks.0.attn2.i_to_v.weight") == \
        (("input", 7, 0), "i_to_v")
    assert attn2_key("model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.i_to_k.weight") == \
        (("middle", 0, 0), "i_to_k")
    assert attn2_key("model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight") is None


def test_loader_names_missing_and_misshapen_keys(tmp_path):
    from safetensors.torch import save_file
    sd = official_sd()
    del sd["content_blip.Qformer.bert.encoder.layer.1.crossattention.self.key.weight"]
    with pytest.raises(DEADiffWeightsError, match="missing.*content.qformer.encoder.layer.1.crossattention"):
        adapter_from_state_dict(sd, heads=HEADS)
    sd = official_sd()
    sd["style_proj_layer.dense1.bias"] = torch.zeros(7)
    with pytest.raises(DEADiffWeightsError, match=r"style_proj_layer.dense1.bias has shape \(7,\), expected \(64,\)"):
        adapter_from_state_dict(sd, heads=HEADS)
    sd = official_sd()
    del sd["model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.i_to_v.weight"]
    with pytest.raises(DEADiffWeightsError, match=r"incomplete.*middle"):
        adapter_from_state_dict(sd, heads=HEADS)
    with pytest.raises(DEADiffWeightsError, match="not DEADiff weights"):
        adapter_from_state_dict({"first_stage_model.encoder.conv_in.weight": torch.zeros(1)})
    path = tmp_path / "deadiff.ckpt"
    path.write_bytes(b"")
    with pytest.raises(DEADiffWeightsError, match="deadiff.ckpt.*DEADiff Extract node.*tools/deadiff_extract.py"):
        load_deadiff(path)
    out = tmp_path / "d.safetensors"
    save_file({k: v.contiguous() for k, v in official_sd().items()}, str(out), metadata={"qformer_heads": "4"})
    assert load_deadiff(out).shape.heads == 4


class NotATensor:
    pass


def test_extractor_keeps_only_deadiff_and_refuses_pickled_objects(tmp_path):
    from safetensors import safe_open
    from stylekit.tools.deadiff_extract import main
    sd = official_sd()
    full = dict(sd, **{"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(16, 64),
                       "first_stage_model.decoder.conv_out.weight": torch.zeros(3, 4, 3, 3),
                       "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(8)})
    torch.save({"state_dict": full, "global_step": 5}, tmp_path / "deadiff_v1.ckpt")
    assert main([str(tmp_path / "deadiff_v1.ckpt"), str(tmp_path / "out.safetensors")]) == 0
    with safe_open(str(tmp_path / "out.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys == {k for k in sd if not k.endswith("position_ids")}
    assert extract_deadiff(full).keys() == keys
    torch.save({"state_dict": full, "callbacks": NotATensor()}, tmp_path / "evil.ckpt")
    assert main([str(tmp_path / "evil.ckpt"), str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists()


def test_extract_node_writes_a_loadable_file_into_its_folder(tmp_path, monkeypatch):
    from stylekit.nodes.deadiff import StyleKitDEADiffExtract, StyleKitDEADiffLoader
    monkeypatch.chdir(tmp_path)  # outside ComfyUI a node writes into the current folder
    sd = official_sd()
    torch.save({"state_dict": dict(sd, **{"first_stage_model.decoder.conv_out.weight": torch.zeros(3, 4, 3, 3)})},
               tmp_path / "deadiff_v1.ckpt")
    out = StyleKitDEADiffExtract().extract(str(tmp_path / "deadiff_v1.ckpt"), "extracted")
    assert "extracted.safetensors" in out["result"][0]
    again = StyleKitDEADiffExtract().extract(str(tmp_path / "deadiff_v1.ckpt"), "extracted")  # never overwrites
    assert "extracted_00001.safetensors" in again["result"][0]
    from safetensors.torch import load_file
    written = load_file(str(tmp_path / "extracted.safetensors"))
    assert written.keys() == {k for k in sd if not k.endswith("position_ids")}
    assert all(torch.equal(written[k], sd[k]) for k in written)
    with pytest.raises(StyleKitError, match="filename"):  # the name is checked before the checkpoint is read
        StyleKitDEADiffExtract().extract(str(tmp_path / "missing.ckpt"), "../escape")
    assert StyleKitDEADiffLoader.INPUT_TYPES()["required"]["deadiff_name"][0] == []


@torch.no_grad()
def test_image_kv_equals_explicit_softmax_over_concatenated_tokens():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(4, 10, 16, generator=g), torch.randn(4, 77, 16, generator=g), torch.randn(4, 77, 16, generator=g)
    tokens = torch.randn(1, 16, 32, generator=g)
    wk, wv = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    key = ("output", 5, 0)
    c = image_kv_contribution({key: tokens}, {key: (wk, wv)}, weight=0.7)
    extra = {"block": ("output", 5), "block_index": 0, "cond_or_uncond": [1, 0], "n_heads": 2}
    base = lambda q_, k_, v_, e: explicit_attention(q_, k_, v_, 2)  # noqa: E731
    got = c.apply(q, k, v, extra, base, 0.7)
    ik, iv = 0.7 * tokens @ wk.T, 0.7 * tokens @ wv.T
    zeros = torch.zeros(2, 16, 16)
    K = torch.cat([k, torch.cat([zeros, ik.expand(2, -1, -1)])], 1)  # uncond chunk first: zero tokens
    V = torch.cat([v, torch.cat([zeros, iv.expand(2, -1, -1)])], 1)
    ref = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q.view(4, 10, 2, 8), K.view(4, 93, 2, 8)) / math.sqrt(8), -1)
    ref = torch.einsum("bhqk,bkhd->bqhd", ref, V.view(4, 93, 2, 8)).reshape(4, 10, 16)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # zero tokens are not "no tokens": they take softmax mass and shrink the output
    plain = explicit_attention(q[:2], k[:2], v[:2], 2)
    assert (got[:2] - plain).abs().max() > 1e-3


def test_preprocessing_equals_kornia_as_the_official_code_calls_it():
    kornia = pytest.importorskip("kornia")  # a test dependency ([test] extra)
    from stylekit.models.clip_preprocess import CLIP_MEAN, CLIP_STD, deadiff_pixels
    for shape in [(2, 300, 257, 3), (1, 100, 180, 3), (1, 224, 224, 3)]:
        img = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
        ref = kornia.geometry.resize(img.movedim(-1, 1), (224, 224), interpolation="bicubic", align_corners=True,
                                     antialias=True)
        ref = kornia.enhance.normalize(ref, torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD))
        torch.testing.assert_close(deadiff_pixels(img), ref, atol=1e-5, rtol=1e-5)
