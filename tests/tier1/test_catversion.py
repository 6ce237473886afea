"""CatVersion: prefix attention against an explicit softmax, the official flat layout, files, metric math."""
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from stylekit.attention.prefix import prefix_attention, strength_bias
from stylekit.errors import WeightFileError
from stylekit.models.catversion import CatVersionPrefix, load_official, load_ours, load_prefix, save_prefix
from stylekit.models.clip_alignment import mean_pairwise_cosine, remove_background

H, D, N = 4, 8, 7
C = H * D


def causal(n):
    return torch.full((n, n), -torch.finfo(torch.float32).max).triu_(1)


def reference(q, k, v, pk, pv, bias, mask):
    """Per sample, head and query: softmax over [prefix logit + bias, token logits + mask], written out."""
    b = q.shape[0]
    out = torch.zeros(b, N, C, dtype=torch.float64)
    for s in range(b):
        for h in range(H):
            sl = slice(h * D, (h + 1) * D)
            for i in range(N):
                qi = q[s, i, sl].double()
                logits = [float(qi @ pk[0, sl].double()) / math.sqrt(D) + bias]
                logits += [float(qi @ k[s, j, sl].double()) / math.sqrt(D) + (float(mask[i, j]) if mask is not None else 0.0)
                           for j in range(N)]
                w = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
                vals = torch.cat([pv[:, sl], v[s, :, sl]]).double()
                out[s, i, sl] = w @ vals
    return out.float()


@pytest.mark.parametrize("bias", [1.0, 0.0])
@pytest.mark.parametrize("masked", [True, False])
def test_prefix_attention_matches_explicit_softmax(bias, masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, N, C, generator=g) for _ in range(3))
    pk, pv = torch.randn(1, C, generator=g), torch.randn(1, C, generator=g)
    mask = causal(N) if masked else None
    got = prefix_attention(q, k, v, pk, pv, H, mask, bias)
    torch.testing.assert_close(got, reference(q, k, v, pk, pv, bias, mask), atol=1e-5, rtol=1e-5)


def test_batched_mask_and_bias_change_output():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, N, C, generator=g) for _ in range(3))
    pk, pv = torch.randn(1, C, generator=g), torch.randn(1, C, generator=g)
    m4 = causal(N).expand(2, 1, N, N)
    torch.testing.assert_close(prefix_attention(q, k, v, pk, pv, H, m4, 1.0), prefix_attention(q, k, v, pk, pv, H, causal(N), 1.0))
    assert (prefix_attention(q, k, v, pk, pv, H, None, 1.0) - prefix_attention(q, k, v, pk, pv, H, None, 0.0)).abs().max() > 1e-3


def test_zero_mass_prefix_is_the_plain_attention():
    g = torch.Generator().manual_seed(2)
    u = torch.nn.functional.normalize(torch.randn(H, D, generator=g), dim=1).reshape(C)  # unit per head
    q = torch.randn(2, N, C, generator=g) + 8 * u          # every query's every head leans along u
    k, v = torch.randn(2, N, C, generator=g), torch.randn(2, N, C, generator=g)
    pk = (-1e4 * u)[None]                                   # very negative logit for every query
    pv = torch.full((1, C), 1e3)                            # would show if it got any mass
    plain = reference(q, k, v, torch.zeros(1, C), torch.zeros(1, C), -1e30, causal(N))
    torch.testing.assert_close(prefix_attention(q, k, v, pk, pv, H, causal(N), 1.0), plain, atol=1e-5, rtol=1e-5)
    # and through the strength knob: log(1e-30) = -69 leaves e^-69 of the mass
    got = prefix_attention(q, k, v, torch.randn(1, C, generator=g), pv, H, causal(N), strength_bias(1e-30))
    torch.testing.assert_close(got, plain, atol=1e-4, rtol=1e-4)


def test_strength_bias():
    assert strength_bias(1.0) == 1.0 and strength_bias(1.0, official_bias=False) == 0.0
    assert strength_bias(2.0) == pytest.approx(1 + math.log(2))
    with pytest.raises(ValueError):
        strength_bias(0.0)


def official_flat(layers=3, heads=12, dim=64):
    """The official vector with each value telling its own (j, kv, head, d) by the published index."""
    flat = torch.empty(layers * 2 * heads * dim)
    for j in range(layers):
        for kv in range(2):
            for h in range(heads):
                for d in range(dim):
                    flat[((2 * j + kv) * heads + h) * dim + d] = j * 1e4 + kv * 1e3 + h * 100 + d
    return flat


def test_official_bin_parsed_index_by_index(tmp_path):
    flat = official_flat()
    assert flat.numel() == 4608
    names = ["text_model.encoder.layers.9.self_attn.prefix_tuning.pool.prefix_tunings.prefix_tuning1.clip_text_model_self_prefix.control_trans",
             "text_model.encoder.layers.10.self_attn.prefix_tuning.pool.prefix_tunings.prefix_tuning1.clip_text_model_self_prefix.control_trans",
             "text_model.prefix_tuning.prefix_tunings.prefix_tuning1.clip_text_model_self_prefix.control_trans"]
    torch.save({n: flat.clone() for n in names}, tmp_path / "pytorch_adapter.bin")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"hidden_size": 768, "config": {"prefix_length": 1}}))
    p = load_prefix(str(tmp_path / "pytorch_adapter.bin"))
    assert p.keys.shape == (3, 768) and p.layers is None
    for j in range(3):
        for kv, t in ((0, p.keys), (1, p.values)):
            for h in range(12):
                for d in range(64):
                    assert t[j, h * 64 + d].item() == j * 1e4 + kv * 1e3 + h * 100 + d
    assert torch.equal(p.flat(), flat)


def test_official_bin_errors(tmp_path):
    flat = official_flat(dim=4)
    torch.save({"a.control_trans": flat, "b.control_trans": flat + 1}, tmp_path / "two.bin")
    with pytest.raises(ValueError, match="differ"):
        load_official(str(tmp_path / "two.bin"))
    torch.save({"text_model.embeddings.token_embedding.weight": torch.zeros(2)}, tmp_path / "none.bin")
    with pytest.raises(ValueError, match="control_trans"):
        load_official(str(tmp_path / "none.bin"))
    torch.save({"x.control_trans": torch.zeros(1000)}, tmp_path / "odd.bin")
    with pytest.raises(ValueError, match="4608"):
        load_official(str(tmp_path / "odd.bin"))


def test_reparameterised_prefix_is_evaluated(tmp_path):
    g = torch.Generator().manual_seed(3)
    p = "prefix_tunings.prefix_tuning1.self_prefix."
    sd = {p + "wte.weight": torch.randn(1, 768, generator=g),
          p + "control_trans.0.weight": torch.randn(16, 768, generator=g) * 0.05, p + "control_trans.0.bias": torch.randn(16, generator=g),
          p + "control_trans.2.weight": torch.randn(4608, 16, generator=g), p + "control_trans.2.bias": torch.randn(4608, generator=g)}
    torch.save(sd, tmp_path / "reparam.bin")
    mlp = torch.nn.Sequential(torch.nn.Linear(768, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4608))
    mlp.load_state_dict({k[len(p + "control_trans."):]: v for k, v in sd.items() if "control_trans" in k})
    with torch.no_grad():
        want = mlp(sd[p + "wte.weight"]).reshape(-1)
    torch.testing.assert_close(load_official(str(tmp_path / "reparam.bin")).flat(), want)


def test_refuses_pickled_objects(tmp_path):
    import argparse
    torch.save({"x.control_trans": argparse.Namespace(cmd="rm -rf")}, tmp_path / "evil.bin")
    with pytest.raises(WeightFileError, match=r"evil.bin .*pickled object \(argparse.Namespace\), which StyleKit does not unpickle"):
        load_official(str(tmp_path / "evil.bin"))


def test_save_load_round_trip(tmp_path):
    p = CatVersionPrefix.random([9, 10, 11], 768, seed=4, base_word="teapot")
    save_prefix(p, str(tmp_path / "c.safetensors"))
    q = load_ours(str(tmp_path / "c.safetensors"))
    assert torch.equal(q.keys, p.keys) and torch.equal(q.values, p.values)
    assert q.layers == [9, 10, 11] and q.base_word == "teapot"
    save_file({"other": torch.zeros(3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="catversion.control_trans"):
        load_ours(str(tmp_path / "x.safetensors"))


def test_remove_background_and_pairwise_cosine():
    img = torch.rand(2, 8, 6, 3)
    mask = torch.zeros(8, 6)
    mask[2:5, 1:4] = 1
    out = remove_background(img, mask, "white")
    assert torch.equal(out[:, 2:5, 1:4], img[:, 2:5, 1:4]) and (out[:, 0] == 1).all()
    assert torch.equal(remove_background(img, None), img)
    small = remove_background(img, torch.ones(1, 4, 3), "black")  # resized mask
    torch.testing.assert_close(small, img)
    a, b = torch.randn(3, 5), torch.randn(4, 5)
    want = sum(float(torch.dot(x, y) / x.norm() / y.norm()) for x in a for y in b) / 12
    assert mean_pairwise_cosine(a, b) == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="different CLIP"):
        mean_pairwise_cosine(a, torch.randn(2, 6))


def test_weight_wrapper_hands_autograd_an_ordinary_tensor_without_a_cast_copy():
    """ComfyUI's dynamic patcher (comfy-aimdo) may pass a weight wrapper the stored inference tensor itself
    instead of a copy: training through the wrapped weight must still work (and leave it unchanged)."""
    from stylekit.nodes.comfy_glue import ordinary
    with torch.inference_mode():  # as ComfyUI loads weights
        stored = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    prefix = torch.randn(2, 3, requires_grad=True)
    with torch.inference_mode(False), torch.enable_grad():
        with pytest.raises(RuntimeError, match="[Ii]nference tensors"):  # what a plain identity wrapper gives
            torch.nn.functional.linear(prefix, stored).square().sum().backward()
        out = torch.nn.functional.linear(prefix, ordinary(stored))  # the no-copy cast, through our wrapper
        out.square().sum().backward()
    torch.testing.assert_close(prefix.grad, 2 * (prefix.detach() @ stored.T) @ stored)
    copy = torch.randn(4, 3)
    assert ordinary(copy) is copy  # an ordinary copy (ComfyUI's usual cast) passes through as it is
