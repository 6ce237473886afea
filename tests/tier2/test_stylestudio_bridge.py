"""StyleStudio end to end through the nodes on the diffusers bridge: tiny UNets, tiny CLIP vision,
adapter files in the published layouts. "Off" paths are bit-identical; the teacher really shares
its attention maps, only during its steps, with batch > 1, CFG and split cond/uncond calls."""
import pytest
import torch
from safetensors.torch import save_file

from stylekit.attention.layers import model_layers
from stylekit.attention.router import Contribution, add_contribution
from stylekit.bridge import sample_euler_cfg
from tiny_models import flat_state_dict, tiny_bridge_clip_vision, tiny_ip_adapter
from stylekit.models.ip_adapter import load_adapter
from stylekit.models.stylestudio import style_adapter_model
from stylekit.nodes.comfy_glue import vision_features
from stylekit.nodes.stylestudio import StyleKitStyleAdapter, StyleKitTeacherLayout

STEPS = 5


@pytest.fixture(scope="module")
def vision():
    return tiny_bridge_clip_vision(seed=0)


def adapter_for(model, tmp_path, kind="plain", csgo=False):
    nested = tiny_ip_adapter(model_layers(model), kind, feature_width=48, tokens=4 if kind == "plain" else 8, seed=5,
                             csgo=csgo)
    path = tmp_path / f"{kind}{'_csgo' if csgo else ''}.safetensors"
    save_file(flat_state_dict(nested), str(path))
    return load_adapter(str(path))


def images(seed, n=1):
    return torch.rand(n, 64, 48, 3, generator=torch.Generator().manual_seed(seed))


def sample(model, batch=1, cfg=4.0, split=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 4, 16, 16, generator=g)
    cond = torch.randn(1, 77, 64, generator=g).expand(batch, -1, -1)
    with torch.no_grad():
        return sample_euler_cfg(model, noise, model.model_sampling.ddim_sigmas(STEPS), cond, torch.zeros_like(cond),
                                cfg=cfg, split=split)


def styled(model, adapter, vision, fusion="cross-modal AdaIN", preset="all", weight=1.0, negative=None, mask=None):
    return StyleKitStyleAdapter().apply(model, adapter, vision, images(1), fusion, preset, weight, 0.0, 1.0, "",
                                        negative, mask)[0]


@pytest.mark.parametrize("fusion", ["cross-modal AdaIN", "add"])
@pytest.mark.parametrize("host,kind", [("sd15", "plain"), ("sdxl", "plus")])
def test_style_adapter_acts_and_input_model_is_untouched(request, tmp_path, vision, fusion, host, kind):
    model = request.getfixturevalue(host)
    adapter = adapter_for(model, tmp_path, kind)
    before = sample(model)
    out = sample(styled(model, adapter, vision, fusion))
    assert torch.isfinite(out).all() and (out - before).abs().mean() > 1e-3
    assert torch.equal(sample(model), before)
    assert torch.equal(sample(styled(model, adapter, vision, fusion, weight=0.0)), before)  # weight 0 is plain


def test_presets_patch_their_blocks(sdxl, tmp_path, vision):
    adapter = adapter_for(sdxl, tmp_path, "plus")
    keys = lambda m: set(m.model_options["transformer_options"]["patches_replace"]["attn2"])  # noqa: E731
    assert keys(styled(sdxl, adapter, vision, preset="InstantStyle: style blocks")) == {("output", 1, 0), ("output", 1, 1)}
    assert {k[0] for k in keys(styled(sdxl, adapter, vision, preset="StyleStudio: all up blocks"))} == {"output"}
    custom = StyleKitStyleAdapter().apply(sdxl, adapter, vision, images(1), "add", "custom", 1.0, 0.0, 1.0,
                                          "input 7=0.5, middle 0=1")[0]
    assert keys(custom) == {("input", 7, 0), ("input", 7, 1), ("middle", 0, 0), ("middle", 0, 1)}
    csgo = adapter_for(sdxl, tmp_path, "plus", csgo=True)
    assert {k[0] for k in keys(styled(sdxl, csgo, vision, preset="all"))} == {"output"}  # CSGO: up blocks only


def test_mask_zero_is_plain_and_ones_is_unmasked(sd15, tmp_path, vision):
    adapter = adapter_for(sd15, tmp_path)
    assert torch.equal(sample(styled(sd15, adapter, vision, mask=torch.zeros(1, 128, 96))), sample(sd15))
    torch.testing.assert_close(sample(styled(sd15, adapter, vision, mask=torch.ones(128, 96))),
                               sample(styled(sd15, adapter, vision)), atol=1e-4, rtol=1e-4)


def test_style_cfg_without_negative_equals_zero_features(sd15, tmp_path, vision):
    adapter = adapter_for(sd15, tmp_path)
    feats = vision_features(vision, images(1), adapter.feature)
    default = sample(style_adapter_model(sd15, adapter, feats, None, preset="all"))
    zeros = sample(style_adapter_model(sd15, adapter, feats, torch.zeros_like(feats), preset="all"))
    assert torch.equal(default, zeros)
    negative = sample(styled(sd15, adapter, vision, negative=images(2)))
    assert (negative - default).abs().mean() > 1e-4
    assert torch.equal(sample(styled(sd15, adapter, vision, negative=images(2)), cfg=1.0),
                       sample(styled(sd15, adapter, vision), cfg=1.0))  # cfg 1: no unconditional pass to change


def teacher(model, fraction):
    return StyleKitTeacherLayout().apply(model, fraction)[0]


def test_teacher_off_and_weight_zero_paths_are_exact(sd15, tmp_path, vision, roundoff):
    adapter = adapter_for(sd15, tmp_path)
    model = styled(sd15, adapter, vision)
    assert torch.equal(sample(teacher(model, 0.0)), sample(model))  # 0 teacher steps: no teacher
    plain = sample(sd15, batch=2)
    silent = teacher(styled(sd15, adapter, vision, weight=0.0), 1.0)
    # stylised == teacher, computed in a batch twice as large (other reduction order)
    torch.testing.assert_close(sample(silent, batch=2), plain, atol=roundoff(plain, sd15, STEPS), rtol=0)
    assert (sample(teacher(model, 0.6)) - sample(model)).abs().mean() > 1e-4
    assert torch.equal(sample(sd15), sample(BridgeCopy(sd15)))  # the input model is untouched


def BridgeCopy(model):
    from stylekit.bridge import BridgePatcher
    return BridgePatcher(model.unet)


def test_teacher_shares_maps_only_during_its_steps_batched_or_split(sd15, tmp_path, vision, roundoff):
    adapter = adapter_for(sd15, tmp_path)
    model = teacher(styled(sd15, adapter, vision), 0.4)  # round(0.4 * 5) = 2 of 5 steps
    seen = []

    def spy(q, k, v, extra, call_next, w):
        labels = extra["cond_or_uncond"]
        n = extra.get("stylekit_teacher_chunks")
        if n is not None:  # the stylised rows see exactly the teacher's queries and keys
            half = q.shape[0] // 2
            assert torch.equal(q[:half], q[half:]) and torch.equal(k[:half], k[half:])
            assert not torch.equal(v[:half], v[half:]) or extra["block"] == ("input", 1)
        seen.append((float(extra["sigmas"].reshape(-1)[0]), len(labels), n))
        return call_next(q, k, v, extra)
    spied = model.clone()
    add_contribution(spied, Contribution("spy", spy), [("output", 11, 0)], "attn1")
    batched = sample(spied, batch=2)
    sigmas = sorted({s for s, _, n in seen if n is not None}, reverse=True)
    assert len(sigmas) == 2 and all(n == 2 for _, _, n in seen if n is not None)  # 2 steps, cond + uncond
    seen.clear()
    split = sample(spied, batch=2, split=True)
    assert {(labels, n) for _, labels, n in seen} == {(2, 1), (1, None)}  # split calls: one chunk each
    torch.testing.assert_close(split, batched, atol=roundoff(batched, sd15, STEPS), rtol=0)
    assert batched.shape == (2, 4, 16, 16)


def test_pairing_is_refused_before_any_image_is_encoded(sd15, sdxl, tmp_path):
    """The cheap checks come first: a wrong adapter/model pairing, preset or block weight is refused
    before CLIP vision runs (at full size the encode alone takes tens of seconds on a CPU)."""
    from stylekit.errors import InputError, UnsupportedModelError
    adapter = adapter_for(sd15, tmp_path)

    class NoEncode:
        def __call__(self, *a, **k):
            raise AssertionError("CLIP vision ran before the pairing was checked")
        parameters = __call__
    with pytest.raises(UnsupportedModelError, match="SDXL-shaped"):
        StyleKitStyleAdapter().apply(sdxl, adapter, NoEncode(), images(1), "add", "all", 1.0, 0.0, 1.0, "")
    with pytest.raises(InputError, match="output 40"):
        StyleKitStyleAdapter().apply(sd15, adapter, NoEncode(), images(1), "add", "all", 1.0, 0.0, 1.0, "output 40=1")
