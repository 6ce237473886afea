"""What every 2026 DiT family does the same on the diffusers bridge (Flux.2, Krea 2, Qwen-Image; tier 2): flow
inversion, Feature Fusion in store and recompute mode, the teacher, and the input model left untouched. Each
family's own hook contract is tested in its file (test_flux2_bridge.py, test_krea2_bridge.py,
test_qwen_image_bridge.py)."""
import pytest
import torch
from dit_bridges import CASES, case_data, invert, sample
from stylekit.attention.feature_fusion import PRESETS
from stylekit.models.magicstyle import fusion_model, start_latent
from stylekit.models.schedules import simple_sigmas
from stylekit.models.stylestudio import teacher_model


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    c = CASES[request.param]
    return c, c.build(0)


@pytest.fixture
def model(case):
    c, transformer = case
    return c.patcher(transformer)


@pytest.fixture(scope="module")
def data(case):
    return case_data(case[0])


def test_flow_inversion_reconstructs_with_error_shrinking_as_steps_grow(model, data):
    errors = []
    for steps in (4, 8, 16):
        inv, sig = invert(model, data, steps)
        assert inv.result.latent.shape == (2, *data["content"].shape[1:])
        errors.append(float((sample(model, sig, data, inv.result.latent[0:1]) - data["content"]).abs().mean()))
    # the Euler inversion is first order: each doubling of the steps about halves the error
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.7 * errors[1], errors


@pytest.mark.parametrize("preset", ["StyleID", "MagicStyle"])
def test_store_equals_recompute_and_fusion_acts(model, data, preset, roundoff):
    inv_s, sig = invert(model, data, 5, "store")
    inv_r, _ = invert(model, data, 5, "recompute")
    a = sample(fusion_model(model, inv_s, PRESETS[preset]), sig, data, start_latent(inv_s))
    b = sample(fusion_model(model, inv_r, PRESETS[preset]), sig, data, start_latent(inv_r))
    plain = sample(model, sig, data, start_latent(inv_s))
    tol = roundoff(a, model, 5)
    torch.testing.assert_close(a, b, atol=tol, rtol=0)
    assert (a - plain).abs().mean() > 10 * tol  # the fusion acts, far above round-off


def test_teacher_with_no_style_is_the_plain_sample(model, data):
    """The teacher's rows beside the sample, with nothing styled in the conditioning, change nothing."""
    sig = simple_sigmas(model.model_sampling, 6)
    start = torch.randn(data["content"].shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sample(teacher_model(model, 0.5, 0.5), sig, data, start), sample(model, sig, data, start),
                               atol=1e-5, rtol=0)


def test_the_teacher_acts_where_the_prompt_carries_style_tokens(case, model, data, roundoff):
    """With style tokens after the prompt (as core Redux appends them) and the teacher told the prompt's length, the
    teacher's rows are the unstyled sample and its map swap changes the result beyond round-off (told the whole
    length, it is the sample itself, within round-off); Qwen-Image's
    blocks ignore a returned mask, so there the teacher refuses to hide tokens rather than run wrongly."""
    from stylekit.attention.layers import UnsupportedModelError
    prompt = data["cond"]["c_crossattn"]
    styled = dict(data, cond=dict(data["cond"], c_crossattn=torch.cat([prompt, 3 * prompt[:, :4]], dim=1)))
    if case[0].family == "qwen_image":
        with pytest.raises(UnsupportedModelError, match="ignore an attention mask"):
            teacher_model(model, 0.5, 0.5, prompt_tokens=prompt.shape[1])
        return
    sig = simple_sigmas(model.model_sampling, 6)
    start = torch.randn(data["content"].shape, generator=torch.Generator().manual_seed(3))
    a = sample(model, sig, styled, start)
    tol = roundoff(a, model, 6)
    sees_all = sample(teacher_model(model, 1.0, 0.5, prompt_tokens=styled["cond"]["c_crossattn"].shape[1]), sig, styled,
                      start)
    assert (sees_all - a).abs().max() <= tol  # a teacher that sees the style tokens too is the sample itself
    b = sample(teacher_model(model, 1.0, 0.5, prompt_tokens=prompt.shape[1]), sig, styled, start)  # every step
    assert (b - a).abs().mean() > tol  # on average above the largest difference round-off can make


def test_input_model_stays_bit_identical(case, model, data):
    _, transformer = case
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    processors = {k: type(p) for k, p in transformer.attn_processors.items()}
    x, s, cond = data["content"], torch.tensor([0.6]), data["cond"]
    extra = {k: v for k, v in cond.items() if k != "c_crossattn"}
    with torch.no_grad():
        ref = model.apply_model(x, s, cond["c_crossattn"], {}, **extra)
    options = repr(model.model_options)
    inv, sig = invert(model, data, 4, "recompute")
    sample(teacher_model(fusion_model(model, inv, PRESETS["MagicStyle"]), 0.5, 0.5), sig, data, start_latent(inv),
           uncond=True, cfg=2.0)
    assert repr(model.model_options) == options
    assert all(torch.equal(before[k], v) for k, v in transformer.state_dict().items())
    assert {k: type(p) for k, p in transformer.attn_processors.items()} == processors  # diffusers' own, put back
    with torch.no_grad():
        assert torch.equal(model.apply_model(x, s, cond["c_crossattn"], {}, **extra), ref)
