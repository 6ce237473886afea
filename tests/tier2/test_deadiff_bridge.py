"""DEADiff end to end on the bridge: nodes, layer split per block, unconditional branch, input untouched."""
import pytest
import torch
from safetensors.torch import save_file

from stylekit.attention.layers import model_layers
from stylekit.attention.router import Contribution, add_contribution
from stylekit.bridge import sample_euler_cfg
from tiny_models import tiny_bridge_clip_vision, tiny_deadiff_state_dict
from stylekit.models.deadiff_inject import CONTENT_BLOCKS, STYLE_BLOCKS
from stylekit.models.schedules import ddim_uniform_sigmas
from stylekit.nodes.deadiff import StyleKitDEADiffApply, StyleKitDEADiffEncode, StyleKitDEADiffLoader


@pytest.fixture
def deadiff(sd15, tmp_path):
    sd = tiny_deadiff_state_dict(model_layers(sd15), seed=1)
    path = tmp_path / "deadiff_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={"qformer_heads": "4"})
    return StyleKitDEADiffLoader().load(str(path))[0]


def encode(deadiff, mode, seed=0, add_to=None):
    img = torch.rand(2, 96, 80, 3, generator=torch.Generator().manual_seed(seed))
    return StyleKitDEADiffEncode().encode(deadiff, tiny_bridge_clip_vision(), img, mode, "1, 3", add_to)[0]


def sample(model, cfg=4.0, split=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    sig = ddim_uniform_sigmas(model.model_sampling, 4)
    x, ctx, neg = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 64, generator=g), torch.randn(1, 77, 64, generator=g)
    with torch.no_grad():
        return sample_euler_cfg(model, x, sig, ctx, neg, cfg=cfg, split=split)


def captured_k(model):
    """Run once (cond + uncond batched) and return, per attn2 key, the K the attention finally sees."""
    seen = {}

    def capture(q, k, v, extra, call_next, w):
        seen[(*extra["block"], extra["block_index"])] = (k, list(extra["cond_or_uncond"]))
        return call_next(q, k, v, extra)

    m = model.clone()
    add_contribution(m, Contribution("capture", capture), model_layers(model).keys, "attn2")
    sample(m)
    return seen


def test_layer_split_zero_tokens_and_unconditional_branch(sd15, deadiff):
    tokens = encode(deadiff, "style")
    assert tokens.content is None and tokens.style.shape == (1, 16, 32)
    seen = captured_k(StyleKitDEADiffApply().apply(sd15, tokens, 0.8, "official", True, 0.0, 1.0, "")[0])
    layers = model_layers(sd15)
    for key in layers.keys:
        k, labels = seen[key]
        assert k.shape[1] == 77 + 16 and labels == [0, 1]
        img_k = k[:, 77:]
        expected = 0.8 * tokens.style @ deadiff.attn2[key][0].T
        if key[:2] in STYLE_BLOCKS:
            torch.testing.assert_close(img_k[0:1], expected, atol=1e-5, rtol=1e-5)
        else:
            assert key[:2] in CONTENT_BLOCKS and torch.equal(img_k[0], torch.zeros_like(img_k[0]))  # off branch
        assert torch.equal(img_k[1], torch.zeros_like(img_k[1]))  # unconditional: zero tokens everywhere
    dropped = captured_k(StyleKitDEADiffApply().apply(sd15, tokens, 0.8, "official", False, 0.0, 1.0, "")[0])
    assert all((dropped[k][0].shape[1] == 77) == (k[:2] in CONTENT_BLOCKS) for k in layers.keys)


def test_style_and_content_from_two_images(sd15, deadiff):
    both = encode(deadiff, "content", seed=2, add_to=encode(deadiff, "style", seed=1))
    seen = captured_k(StyleKitDEADiffApply().apply(sd15, both, 1.0, "official", True, 0.0, 1.0, "")[0])
    for key, (k, _) in seen.items():
        branch = both.style if key[:2] in STYLE_BLOCKS else both.content
        torch.testing.assert_close(k[0:1, 77:], branch @ deadiff.attn2[key][0].T, atol=1e-5, rtol=1e-5)


def test_end_to_end_off_split_and_input_untouched(sd15, deadiff):
    tokens = encode(deadiff, "both")
    before = sample(sd15)
    patched = StyleKitDEADiffApply().apply(sd15, tokens, 1.0, "official", True, 0.0, 1.0, "")[0]
    out = sample(patched)
    assert torch.isfinite(out).all() and (out - before).abs().mean() > 1e-3
    # ComfyUI may run cond and uncond in separate calls: same result
    torch.testing.assert_close(sample(patched, split=True), out, atol=1e-4, rtol=1e-4)  # batching round-off x cfg 4
    off = StyleKitDEADiffApply().apply(sd15, tokens, 0.0, "official", True, 0.0, 1.0, "")[0]
    assert torch.equal(sample(off), before)  # img_weight 0: the plain model
    assert sd15.model_options == {"transformer_options": {}} and torch.equal(sample(sd15), before)


def test_wrong_pairings_are_refused_before_sampling(sdxl, sd15, deadiff):
    tokens = encode(deadiff, "style")
    with pytest.raises(ValueError, match="image projections for 16 attn2 layers .made for SD1.5. but this SDXL UNet has 22"):
        StyleKitDEADiffApply().apply(sdxl, tokens, 1.0, "official", True, 0.0, 1.0, "")
    with pytest.raises(ValueError, match="ViT-L/14"):
        StyleKitDEADiffEncode().encode(deadiff, tiny_bridge_clip_vision(width=64), torch.rand(1, 64, 64, 3), "style", "", None)
    with pytest.raises(ValueError, match="mix_weights gives 2 weights for 1 images"):
        StyleKitDEADiffEncode().encode(deadiff, tiny_bridge_clip_vision(), torch.rand(1, 64, 64, 3), "style", "1,2", None)
