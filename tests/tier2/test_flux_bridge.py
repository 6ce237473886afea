"""Flux on the diffusers bridge: a tiny FluxTransformer2DModel as the DiT host (tier 2).

Flow inversion, Feature Fusion (store and recompute), the teacher, and the nodes, end to end.
"""
import pytest
import torch
from stylekit.attention.feature_fusion import PRESETS
from stylekit.attention.layers import (
    UnsupportedModelError,
    model_layers,
    parse_block_weights,
)
from stylekit.bridge.flux import FluxBridgePatcher, image_ids, patchify, unpatchify
from stylekit.bridge.sampling import sample_euler_cfg
from stylekit.models.schedules import simple_sigmas
from stylekit.models.feature_store import StorePolicy
from stylekit.models.inversion import every_step_schedule
from stylekit.models.magicstyle import fusion_model, invert_pair, start_latent
from stylekit.models.stylestudio import teacher_model

CTX, POOLED = 32, 16


@pytest.fixture(scope="module")
def transformer():
    from tiny_models import tiny_flux
    return tiny_flux(seed=0)


@pytest.fixture
def flux(transformer):
    return FluxBridgePatcher(transformer)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    cond = {"c_crossattn": r(1, 6, CTX), "y": r(1, POOLED), "guidance": torch.tensor([3.5])}
    uncond = {"c_crossattn": r(1, 6, CTX), "y": r(1, POOLED), "guidance": torch.tensor([3.5])}
    return {"content": r(1, 4, 16, 16), "style": r(1, 4, 16, 16), "cond": cond, "uncond": uncond}


def invert(flux, data, steps, mode="store", layers=None, dtype=torch.float32):
    sig = simple_sigmas(flux.model_sampling, steps)
    cond = data["cond"]
    policy = StorePolicy(layers=tuple(layers or model_layers(flux).keys), dtype=dtype, mode=mode)
    return invert_pair(flux, data["content"], data["style"], cond["c_crossattn"], every_step_schedule(sig), policy,
                       extra_conds={"y": cond["y"], "guidance": cond["guidance"]}), sig


def sample(model, sig, data, start, uncond=False, cfg=1.0, split=False):
    with torch.no_grad():
        return sample_euler_cfg(model, None, sig, data["cond"], data["uncond"] if uncond else None, cfg, split, start=start)


def velocity(transformer, x, sigma, cond):
    """The flow's velocity from the unpatched diffusers transformer, called directly (no bridge processor)."""
    with torch.no_grad():
        v = transformer(hidden_states=patchify(x), encoder_hidden_states=cond["c_crossattn"], pooled_projections=cond["y"],
                        timestep=sigma, img_ids=image_ids(x.shape[-2] // 2, x.shape[-1] // 2),
                        txt_ids=torch.zeros(cond["c_crossattn"].shape[1], 3), guidance=cond["guidance"]).sample
    return unpatchify(v, x.shape)


def raw(transformer, x, sigma, cond):
    """The unpatched transformer's denoised x0 = x - sigma * v."""
    return x - sigma.view(-1, 1, 1, 1) * velocity(transformer, x, sigma, cond)


def test_flow_inversion_is_the_explicit_euler_inversion(flux, transformer, data, roundoff):
    """Flux's convention (models/inversion.py): from the clean latent at sigma 0, Euler steps up ComfyUI's
    simple sigmas, the velocity read at the level stepped to; the start is the latent at sigma 1."""
    steps = 6
    inv, sig = invert(flux, data, steps)
    levels = [float(v) for v in sig][::-1]  # 0, ..., 1
    for row, x0 in enumerate((data["content"], data["style"])):
        x = x0.clone()
        for a, b in zip(levels, levels[1:]):
            torch.testing.assert_close(inv.result.inputs[b][row:row + 1], x, rtol=0,
                                       atol=roundoff(x, flux, steps) + 1e-7)
            x = x + (b - a) * velocity(transformer, x, torch.tensor([b]), data["cond"])
        err = float((inv.result.latent[row:row + 1] - x).abs().max())
        assert err <= roundoff(x, flux, steps), err
    assert torch.equal(inv.result.sigmas, sig)


def test_layers_read_from_the_model(flux):
    layers = model_layers(flux)
    assert layers.family == "flux" and layers.is_dit
    assert layers.keys == [("double", 0, 0), ("double", 1, 0), ("single", 0, 0), ("single", 1, 0)]
    assert layers.select("single") == [("single", 0, 0), ("single", 1, 0)]
    assert parse_block_weights("double 1=0.5", layers) == {("double", 1): 0.5}
    with pytest.raises(ValueError, match="double 0, double 1, single 0, single 1"):
        parse_block_weights("output 3=1", layers)
    with pytest.raises(UnsupportedModelError, match="SD1.5 / SDXL models; the model given is Flux.1"):
        layers.require("ip_adapter", "X")


def test_idle_patches_are_bit_identical_to_the_unpatched_transformer(flux, transformer, data):
    inv, sig = invert(flux, data, 4)
    x, s = data["content"], torch.tensor([0.6])
    plain = raw(transformer, x, s, data["cond"])
    cond = data["cond"]
    for m in (fusion_model(flux, inv, PRESETS["StyleID"], weight=0.0),
              fusion_model(flux, inv, PRESETS["StyleID"], sigma_start=0.3, sigma_end=0.0),  # window not reached
              teacher_model(flux, 0.0, 1.0)):
        with torch.no_grad():
            out = m.apply_model(x, s, cond["c_crossattn"], dict(m.model_options["transformer_options"], sigmas=s,
                                                                 cond_or_uncond=[0]), y=cond["y"], guidance=cond["guidance"])
        assert torch.equal(out, plain)


def test_flow_inversion_reconstructs_with_error_shrinking_as_steps_grow(flux, data):
    errors = []
    for steps in (4, 8, 16):
        inv, sig = invert(flux, data, steps)
        assert float(sig[0]) == 1.0 and inv.result.latent.shape == (2, 4, 16, 16)
        errors.append(float((sample(flux, sig, data, inv.result.latent[0:1]) - data["content"]).abs().mean()))
    # the Euler inversion is first order: each doubling of the steps about halves the error
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.7 * errors[1] < 0.49 * errors[0], errors
    assert errors[0] < 0.2 * float(data["content"].abs().mean())


@pytest.mark.parametrize("preset", ["StyleID", "MagicStyle"])
def test_store_equals_recompute_and_fusion_acts(flux, data, preset, roundoff):
    inv_s, sig = invert(flux, data, 5, "store")
    inv_r, _ = invert(flux, data, 5, "recompute")
    assert inv_r.store.size_bytes() == 0 < inv_s.store.size_bytes()
    a = sample(fusion_model(flux, inv_s, PRESETS[preset]), sig, data, start_latent(inv_s))
    b = sample(fusion_model(flux, inv_r, PRESETS[preset]), sig, data, start_latent(inv_r))
    plain = sample(flux, sig, data, start_latent(inv_s))
    tol = roundoff(a, flux, 5)
    torch.testing.assert_close(a, b, atol=tol, rtol=0)
    assert (a - plain).abs().mean() > 10 * tol  # the fusion acts, far above round-off


def test_split_cond_uncond_equals_batched(flux, data, roundoff):
    inv, sig = invert(flux, data, 4)
    m = fusion_model(flux, inv, PRESETS["MagicStyle"], weight=0.7)
    a = sample(m, sig, data, start_latent(inv), uncond=True, cfg=2.0)
    b = sample(m, sig, data, start_latent(inv), uncond=True, cfg=2.0, split=True)
    torch.testing.assert_close(a, b, atol=roundoff(a, flux, 4), rtol=0)


def test_input_model_stays_bit_identical(flux, transformer, data):
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    x, s = data["content"], torch.tensor([0.6])
    ref = raw(transformer, x, s, data["cond"])
    options = repr(flux.model_options)
    inv, sig = invert(flux, data, 4, "recompute")
    mask = torch.ones(128, 128)
    mask[:, :64] = 0
    patched = teacher_model(fusion_model(flux, inv, PRESETS["StyleID"], mask=mask), 0.5, 0.5)
    sample(patched, sig, data, start_latent(inv), uncond=True, cfg=2.0)
    assert repr(flux.model_options) == options
    assert all(torch.equal(before[k], v) for k, v in transformer.state_dict().items())
    assert torch.equal(raw(transformer, x, s, data["cond"]), ref)
    assert all(type(p).__name__ == "FluxAttnProcessor" for p in transformer.attn_processors.values())


def test_mask_spares_its_region_of_the_sample(flux, data):
    inv, sig = invert(flux, data, 4)
    plain = sample(flux, sig, data, start_latent(inv))
    mask = torch.zeros(128, 128)  # the 16x16 latent is 128 px; its 8x8 token grid
    mask[:, 64:] = 1
    out = sample(fusion_model(flux, inv, PRESETS["StyleID"], mask=mask), sig, data, start_latent(inv))
    full = sample(fusion_model(flux, inv, PRESETS["StyleID"]), sig, data, start_latent(inv))
    left, right = (slice(None), slice(None), slice(None), slice(0, 8)), (slice(None), slice(None), slice(None), slice(8, 16))
    # image tokens mix through attention, so the spared half moves less than the styled half, and less than unmasked
    assert (out - plain)[left].abs().mean() < 0.5 * (out - plain)[right].abs().mean()
    assert (out - plain)[left].abs().mean() < 0.5 * (full - plain)[left].abs().mean()


def test_teacher_runs_beside_the_sample_and_only_during_its_steps(flux, data):
    sig = simple_sigmas(flux.model_sampling, 6)
    start = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    seen = []
    m = teacher_model(flux, 0.5, 0.5)
    inner = m.model_options["model_function_wrapper"]

    def spy(apply_model, args):
        seen.append(args["input"].shape[0])
        return inner(lambda x, t, **c: (seen.append(-x.shape[0]), apply_model(x, t, **c))[1], args)
    m.model_options["model_function_wrapper"] = spy
    out = sample(m, sig, data, start)
    assert out.shape == start.shape
    assert seen == [1, -2] * 3 + [1, -1] * 3  # 3 of 6 steps with the teacher rows beside the sample
    # with no style in the conditioning the teacher is the sample itself: the map swap changes nothing
    torch.testing.assert_close(out, sample(flux, sig, data, start), atol=1e-5, rtol=0)


def test_nodes_take_a_flux_model(flux, data):
    from stylekit.nodes.magicstyle import (
        AUTO_BLOCKS,
        StyleKitDDIMInvert,
        StyleKitFeatureFusion,
    )
    from stylekit.attention.families import late_double as dit_default_blocks
    from stylekit.nodes.patch_map import StyleKitPatchMap
    from stylekit.nodes.stylestudio import StyleKitTeacherLayout
    cond = [[data["cond"]["c_crossattn"], {"pooled_output": data["cond"]["y"], "guidance": 1.0}]]
    latent = {"samples": data["content"]}
    inv, inverted, sigmas = StyleKitDDIMInvert().invert(flux, latent, {"samples": data["style"]}, cond, 4,
                                                        AUTO_BLOCKS, "fp16",
                                                        "model device", "auto (SD: store, Flux: recompute)")
    layers = model_layers(flux)
    assert inv.store.policy.mode == "recompute" and list(inv.store.policy.layers) == dit_default_blocks(layers)
    assert inv.family == "flux" and inv.grid == (8, 8) and float(sigmas[0]) == 1.0 and len(sigmas) == 5
    with pytest.raises(UnsupportedModelError, match="not for a Flux.1 model; choose one of: auto"):
        StyleKitDDIMInvert().invert(flux, latent, latent, cond, 4, "output 6-11 (StyleID)", "fp16", "cpu", "store")
    model, start, noise = StyleKitFeatureFusion().apply(flux, inv, "StyleID", 0.75, 1.5, 0.0, 1.0, True, 0.0, 1.0,
                                                        block_weights="double 1=0.5")
    summary = StyleKitPatchMap().run(model)[1]
    assert "double 1.0 joint: feature_fusion w=0.5" in summary and "double 0.0 joint: feature_fusion w=1" in summary
    assert "single 0.0" not in summary, summary  # the tiny model's 2 double blocks are its late double set
    # the NOISE lands the sampler exactly on the start latent: sigma0 * noise + (1 - sigma0) * latent_image
    n = noise.generate_noise(latent)
    s0 = float(sigmas[0])
    torch.testing.assert_close(s0 * n + (1 - s0) * latent["samples"], start["samples"])
    teacher = StyleKitTeacherLayout().apply(model, 0.5, unstyled_conditioning=cond)[0]
    assert "teacher_layout" in StyleKitPatchMap().run(teacher)[1]
    with pytest.raises(ValueError, match="start_noise is for a"):
        noise.generate_noise({"samples": torch.zeros(1, 4, 8, 8)})


def test_a_prompt_of_another_width_is_refused_on_flux(flux, data):
    """An SD-wide prompt given to Flux (DDIM Invert, the teacher's unstyled prompt) is refused naming both
    widths before the model runs (it ended in a raw matmul error in txt_in)."""
    from stylekit.errors import InputError
    from stylekit.nodes.magicstyle import AUTO_BLOCKS, StyleKitDDIMInvert
    from stylekit.nodes.stylestudio import StyleKitTeacherLayout
    good = data["cond"]["c_crossattn"]
    width = good.shape[-1]
    assert model_layers(flux).layers[0].context_dim == width
    wrong = [[good, {}], [torch.zeros(*good.shape[:-1], width + 8), {}]]
    latent = {"samples": data["content"]}
    with pytest.raises(InputError, match=f"conditioning entry 1 is {width + 8} wide; this flux model's text input "
                                         f"takes {width}"):
        StyleKitDDIMInvert().invert(flux, latent, latent, wrong, 4, AUTO_BLOCKS, "fp16", "cpu", "store")
    with pytest.raises(InputError, match=f"unstyled_conditioning entry 1 is {width + 8} wide"):
        StyleKitTeacherLayout().apply(flux, 0.5, unstyled_conditioning=wrong)


def test_start_noise_inverts_comfyuis_eps_noise_scaling(sd15):
    from stylekit.nodes.comfy_glue import StartNoise
    g = torch.Generator().manual_seed(0)
    x, latent = torch.randn(1, 4, 8, 8, generator=g), {"samples": torch.randn(1, 4, 8, 8, generator=g)}
    ms = sd15.model_sampling
    for sigma in (float(ms.sigma_max), 3.0):  # max_denoise scales by sqrt(1 + sigma^2), otherwise by sigma
        n = StartNoise(sd15, x, sigma).generate_noise(latent)
        scale = (1 + sigma ** 2) ** 0.5 if sigma == float(ms.sigma_max) else sigma
        torch.testing.assert_close(n * scale + latent["samples"], x)


def test_the_store_size_formula_counts_what_a_store_holds(flux, data):
    from references import dit_store_bytes
    inv, _ = invert(flux, data, 3, "store", layers=[("double", 1, 0), ("single", 0, 0)], dtype=torch.float16)
    tokens, width = (16 // 2) ** 2, model_layers(flux).layers[0].channels
    assert inv.store.size_bytes() == dit_store_bytes(2, tokens, width, 3, 2)


def test_flux_extra_conds_are_the_pooled_vector_and_guidance(flux, data):
    """The Flux bridge builds ComfyUI's Flux inputs from a CONDITIONING's options: ``y`` from the pooled
    output, ``guidance`` (3.5 unless the options say), each running the transformer as given directly."""
    from stylekit.nodes.comfy_glue import model_conds
    cond = data["cond"]
    pooled = cond["y"][:1]
    ctx, extra = model_conds(flux, [[cond["c_crossattn"][:1], {"pooled_output": pooled, "guidance": 2.0}]],
                             data["content"], torch.device("cpu"))
    assert torch.equal(extra["y"], pooled) and extra["guidance"].tolist() == [2.0]
    _, default = model_conds(flux, [[ctx, {}]], data["content"], torch.device("cpu"))
    assert set(default) == {"guidance"} and default["guidance"].tolist() == [3.5]
    sigma = torch.tensor([0.5])
    with torch.no_grad():
        via_model = flux.model.apply_model(data["content"], sigma, c_crossattn=ctx, **extra)
        direct = flux.apply_model(data["content"], sigma, ctx, {}, y=pooled, guidance=torch.tensor([2.0]))
    assert torch.equal(via_model, direct)


def test_schnell_and_odd_latent_sizes_run_as_comfyui_runs_them():
    """A guidance-less Flux (schnell) takes no guidance (the bridge passed 3.5 and diffusers refused it); an
    odd latent side is padded circularly to the 2x2 patches and the output cropped back, as ComfyUI's Flux
    does: the crop's top-left block equals the same sampling of the padded latent."""
    from tiny_models import tiny_flux
    schnell = FluxBridgePatcher(tiny_flux(seed=3, guidance=False))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 9, 7, generator=g)
    ctx = torch.randn(1, 5, 32, generator=g)
    sigma = torch.tensor([0.7])
    with torch.no_grad():
        out = schnell.model.apply_model(x, sigma, c_crossattn=ctx, transformer_options={})
        padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="circular")
        full = schnell.model.apply_model(padded, sigma, c_crossattn=ctx, transformer_options={})
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, full[..., :9, :7])
