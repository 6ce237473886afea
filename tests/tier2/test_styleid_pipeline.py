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


def mismatches(model, pack, ref, roundoff) -> list:
    """Each intermediate of the pack's run farther from the reference's than the round-off of the model
    calls made up to it allows (``roundoff`` per call: layers x eps x the value's scale; the conversions
    between the two scalings count as one)."""
    inv, keys, start, seen, final = pack
    out = []

    def close(got, want, calls, what):
        bound = roundoff(want, model, max(calls, 1))
        err = float((got - want).abs().max())
        if not err <= bound:
            out.append(f"{what}: {err:.3g} > {bound:.3g}")

    inputs = inv.result.inputs
    if sorted(inputs) != sorted(sigma_of(model, t) for t in ref.inversion_inputs):
        out.append(f"inverted at other sigmas: {len(inputs)} calls vs {len(ref.inversion_inputs)}")
    for j, (t, x) in enumerate(ref.inversion_inputs.items()):  # each inversion call's input
        if sigma_of(model, t) in inputs:
            close(vp(inputs[sigma_of(model, t)], sigma_of(model, t)), x, j, f"inversion input at t={t}")
    sampled = list(ref.sampler_inputs)
    calls = len(ref.inversion_inputs)
    for t in sampled:  # the stored features of every sampled step (content row 0, style row 1)
        for k in keys:
            close(inv.store.lookup(k, sigma_of(model, t)), ref.features[(k, t)], calls, f"features {k} at t={t}")
    s0 = float(inv.result.sigmas[0])
    if abs(s0 - sigma_of(model, sampled[0])) > 1e-6 * s0:
        out.append(f"the sampler starts at sigma {s0:.4f}, the reference at t={sampled[0]}")
    close(vp(start, s0), ref.start, calls, "start latent")
    if len(seen) != len(sampled):
        out.append(f"{len(seen)} sampler steps vs {len(sampled)}")
    for i, ((sigma, x), t) in enumerate(zip(seen.items(), sampled)):  # each sampler input
        close(vp(x, sigma), ref.sampler_inputs[t], calls + i, f"sampler input at t={t}")
    last = float(inv.result.sigmas[-1])
    close(vp(final, last), ref.final, calls + len(sampled), "final latent")
    return out


@pytest.fixture(scope="module")
def at_ten(sd15_unet):
    """One pack run and its official reference at 10 steps (the issue's short run), shared below."""
    from stylekit.bridge import BridgePatcher
    model = BridgePatcher(sd15_unet)
    content, style, ctx = refs()
    return (model, (content, style, ctx), pack_pipeline(model, content, style, ctx, 10),
            reference(model, content, style, ctx, 10))


def check(model, steps, pack, ref, roundoff):
    assert list(ref.sampler_inputs) == ref.timesteps[::-1][1:] and len(ref.timesteps) == steps  # top skipped
    assert float(pack[0].result.sigmas[-1]) == pytest.approx(sigma_of(model, 0), rel=1e-6)  # lands at t = 0
    assert mismatches(model, pack, ref, roundoff) == []


def test_pipeline_equals_the_official_reference_at_every_step_10(at_ten, roundoff):
    model, _, pack, ref = at_ten
    check(model, 10, pack, ref, roundoff)


@pytest.mark.parametrize("steps", [30, 50])
def test_pipeline_equals_the_official_reference_at_every_step(sd15, steps, roundoff):
    """50: StyleID's; 30 does not divide 1000 (the official timesteps are then make_ddim_timesteps' 30 and
    the start is the latent one step past the top one, t = 991, not t = 999)."""
    content, style, ctx = refs()
    check(sd15, steps, pack_pipeline(sd15, content, style, ctx, steps), reference(sd15, content, style, ctx, steps),
          roundoff)


@pytest.mark.parametrize("change", ["clean_at_sigma0", "eps_at_target", "end_at_top", "unscaled_start",
                                    "last_to_zero"])
def test_each_official_convention_changed_alone_breaks_the_match(at_ten, change, roundoff):
    """Were the pack to follow the changed convention, it would match the changed reference; the changed
    reference is outside the round-off of the official one somewhere (the official one is matched by the
    test above), so the match excludes the changed convention."""
    model, (content, style, ctx), pack, _ = at_ten
    changed = reference(model, content, style, ctx, 10, Changes(**{change: True}))
    assert mismatches(model, pack, changed, roundoff) != []
