"""The pack's StyleID pipeline (DDIM Invert -> Feature Fusion -> SamplerCustom on the inversion's sigmas,
as the shipped workflow wires it) against an explicit reference of the official pipeline
(tests/styleid_reference.py) on the bridge's tiny SD1.5 UNet, same weights: every intermediate and the
final latent within round-off, and each convention of the official code, changed alone, breaks it."""
import pytest
import torch
from styleid_reference import Changes, styleid_pipeline

from stylekit.attention.feature_fusion import PRESETS, STYLEID_BLOCKS
from stylekit.attention.layers import attention_modules, model_layers
from stylekit.bridge import sample_euler_cfg
from stylekit.models.feature_store import StorePolicy
from stylekit.models.inversion import styleid_schedule
from stylekit.models.magicstyle import fusion_model, invert_pair, start_latent


def refs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g) * 0.8 + 0.3,
            torch.randn(1, 77, 64, generator=g))


def pack_pipeline(model, content, style, ctx, steps):
    keys = tuple(model_layers(model).select(STYLEID_BLOCKS))
    inv = invert_pair(model, content, style, ctx, styleid_schedule(model.model_sampling, steps),
                      StorePolicy(layers=keys, dtype=torch.float32))
    m = fusion_model(model, inv, PRESETS["StyleID"])
    seen = {}

    def record(apply_model, args):  # what the sampler feeds the model at each sigma
        seen[float(args["timestep"][0])] = args["input"].clone()
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(record)
    start = start_latent(inv)
    with torch.no_grad():
        final = sample_euler_cfg(m, None, inv.result.sigmas, ctx, start=start)
    return inv, keys, start, seen, final


def reference(model, content, style, ctx, steps, changes=Changes()):
    keys = tuple(model_layers(model).select(STYLEID_BLOCKS))
    modules = attention_modules(model, "attn1")

    def eps(x, t):
        return model.unet(x, torch.full((x.shape[0],), float(t)), encoder_hidden_states=ctx.expand(x.shape[0], -1, -1)).sample

    return styleid_pipeline(eps, {k: modules[k] for k in keys}, content, style, steps, changes=changes)


def vp(x, sigma):
    """ComfyUI's latent at ``sigma`` in the VP scaling of the official code."""
    return x / (1.0 + float(sigma) ** 2) ** 0.5


def sigma_of(model, t):
    return float(model.model_sampling.sigmas[t])


@pytest.mark.parametrize("steps", [10, 50])
def test_pipeline_equals_the_official_reference_at_every_step(sd15, steps, roundoff):
    content, style, ctx = refs()
    inv, keys, start, seen, final = pack_pipeline(sd15, content, style, ctx, steps)
    ref = reference(sd15, content, style, ctx, steps)
    calls = 2 * len(ref.timesteps)

    def close(got, want, what):
        bound = roundoff(want, sd15, calls)
        err = float((got - want).abs().max())
        assert err <= bound, f"{what}: {err:.3g} > round-off bound {bound:.3g}"

    assert [round(s, 4) for s in inv.result.inputs] == [round(sigma_of(sd15, t), 4) for t in ref.timesteps]
    for t, x in ref.inversion_inputs.items():  # each inversion call's input
        close(vp(inv.result.inputs[sigma_of(sd15, t)], sigma_of(sd15, t)), x, f"inversion input at t={t}")
    sampled = [t for t in ref.sampler_inputs]
    assert sampled == ref.timesteps[::-1][1:]  # the top timestep is skipped
    for t in sampled:  # the stored features of every sampled step (content row 0, style row 1)
        for k in keys:
            close(inv.store.lookup(k, sigma_of(sd15, t)), ref.features[(k, t)], f"features {k} at t={t}")
    s0 = float(inv.result.sigmas[0])
    assert s0 == pytest.approx(sigma_of(sd15, sampled[0]), rel=1e-6)
    close(vp(start, s0), ref.start, "start latent")
    assert len(seen) == len(sampled)
    for (sigma, x), t in zip(seen.items(), sampled):  # each sampler input
        assert sigma == pytest.approx(sigma_of(sd15, t), rel=1e-6)
        close(vp(x, sigma), ref.sampler_inputs[t], f"sampler input at t={t}")
    last = float(inv.result.sigmas[-1])
    assert last == pytest.approx(sigma_of(sd15, 0), rel=1e-6)  # lands at t = 0, alpha_cumprod 0.99915
    close(vp(final, last), ref.final, "final latent")


@pytest.mark.parametrize("change", ["eps_at_target", "end_at_top", "unscaled_start", "last_to_zero"])
def test_each_official_convention_changed_alone_breaks_the_match(sd15, change, roundoff):
    """If the pack followed the changed convention it would equal the changed reference; the changed
    reference is far outside the round-off bound of the official one, so the match above excludes it."""
    content, style, ctx = refs(1)
    steps = 10
    *_, final = pack_pipeline(sd15, content, style, ctx, steps)
    ref = reference(sd15, content, style, ctx, steps)
    changed = reference(sd15, content, style, ctx, steps, Changes(**{change: True}))
    got = vp(final, float(sd15.model_sampling.sigmas[0]))
    bound = roundoff(ref.final, sd15, 2 * len(ref.timesteps))
    assert float((got - ref.final).abs().max()) <= bound
    gap = float((got - changed.final).abs().max())
    assert gap > bound, f"{change}: the changed pipeline is {gap:.3g} away, within the bound {bound:.3g}"
