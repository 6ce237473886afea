"""Tier 3, Flux: a tiny in-process model built from ComfyUI's own Flux class, through ComfyUI's own hooks.

Needs a ComfyUI whose Flux blocks call attn1_patch (0.16.4, March 2026, on); an older one is refused
with a clear error, which is tested too.
"""
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hooks():
    from stylekit.attention.layers import has_joint_hooks
    import comfy.ldm.flux.layers
    return has_joint_hooks(comfy.ldm.flux.layers.DoubleStreamBlock)


@pytest.fixture
def needs_hooks(hooks):
    if not hooks:
        pytest.skip("this ComfyUI's Flux blocks have no attn1_patch hook (before 0.16.4)")


def conds(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 8, 32, generator=g), {"pooled_output": torch.randn(1, 16, generator=g), "guidance": 1.0}]]


def latents(seed=0):
    g = torch.Generator().manual_seed(seed)
    return ({"samples": torch.randn(1, 16, 16, 16, generator=g)} for _ in range(2))


def sample_advanced(model, noise, sigmas, cond, latent):
    from comfy_extras.nodes_custom_sampler import BasicGuider, KSamplerSelect, SamplerCustomAdvanced
    guider = BasicGuider().get_guider(model, cond)[0] if hasattr(BasicGuider(), "get_guider") else BasicGuider.execute(model, cond)[0]
    sampler = KSamplerSelect().get_sampler("euler")[0] if hasattr(KSamplerSelect(), "get_sampler") else KSamplerSelect.execute("euler")[0]
    run = SamplerCustomAdvanced().sample if hasattr(SamplerCustomAdvanced(), "sample") else SamplerCustomAdvanced.execute
    with torch.inference_mode():
        return run(noise, guider, sampler, sigmas, latent)[0]["samples"]


def test_an_old_comfyui_flux_is_refused_with_the_version_to_update_to(hooks):
    from comfy_host import comfy_flux_tiny
    from stylekit.attention.layers import model_layers
    from stylekit.errors import UnsupportedModelError
    if hooks:
        assert model_layers(comfy_flux_tiny()).family == "flux"
    else:
        with pytest.raises(UnsupportedModelError, match="update ComfyUI to 0.16.4"):
            model_layers(comfy_flux_tiny())


def test_every_installed_patch_is_called_and_the_input_model_is_untouched(needs_hooks):
    from comfy_host import comfy_flux_tiny
    from stylekit.attention.joint import JointContribution, add_joint_contribution
    from stylekit.attention.layers import model_layers
    from stylekit.nodes.magicstyle import StyleKitDDIMInvert, StyleKitFeatureFusion
    from stylekit.nodes.stylestudio import StyleKitTeacherLayout
    model = comfy_flux_tiny()
    keys = model_layers(model).keys
    content, style = latents()
    plain_before = sample_advanced(model, _noise(), _sigmas(model), conds(1), content)
    inv, _, sigmas = StyleKitDDIMInvert().invert(model, content, style, conds(), 4, "all", "fp32", "model device", "store")
    assert set(k for k, _ in inv.store.features) == set(keys) and len(inv.store.features) == 4 * len(keys)
    fused, _, noise = StyleKitFeatureFusion().apply(model, inv, "MagicStyle", 0.75, 1.0, 1.0, 0.8, True, 0.0, 1.0)
    seen = []

    def probe(call, call_next, w):
        seen.append((call.extra["block_type"], call.extra["block_index"], float(call.extra["sigmas"][0])))
        return call_next(call)
    probed = fused.clone()
    add_joint_contribution(probed, JointContribution("probe", probe), keys)
    teacher = StyleKitTeacherLayout().apply(probed, 0.5)[0]
    out = sample_advanced(teacher, noise, sigmas, conds(1), content)
    assert torch.isfinite(out).all() and out.shape == (1, 16, 16, 16)
    steps = [float(s) for s in sigmas[:-1]]
    assert sorted(set(seen)) == sorted({(k[0], k[1], s) for k in keys for s in steps})  # every block, every step
    assert model.model_options["transformer_options"] == {}  # the input model: no patch
    # recompute mode (the Flux default): the references' pass stops after the last stored block, inside ComfyUI
    inv_r, _, _ = StyleKitDDIMInvert().invert(model, content, style, conds(), 4, "all", "fp32", "model device",
                                              "auto (SD: store, Flux: recompute)")
    assert inv_r.store.policy.mode == "recompute"
    fused_r, _, noise_r = StyleKitFeatureFusion().apply(model, inv_r, "MagicStyle", 0.75, 1.0, 1.0, 0.8, True, 0.0, 1.0)
    a = sample_advanced(fused, noise, sigmas, conds(1), content)
    b = sample_advanced(fused_r, noise_r, sigmas, conds(1), content)
    linear = sum(isinstance(m, torch.nn.Linear) for m in model.model.diffusion_model.modules())
    roundoff = (len(sigmas) - 1) * linear * torch.finfo(torch.float32).eps * float(a.abs().max())  # as conftest's
    torch.testing.assert_close(a, b, atol=roundoff, rtol=0)
    torch.testing.assert_close(sample_advanced(model, _noise(), _sigmas(model), conds(1), content), plain_before,
                               atol=0, rtol=0)


def _noise():
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise
    return Noise_RandomNoise(0)


def _sigmas(model):
    import comfy.samplers
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 4).cpu()


def test_comfyui_and_the_bridge_agree_on_the_same_weights(needs_hooks, roundoff):
    import comfy.samplers
    from comfy_host import comfy_flux_tiny, diffusers_flux_from_comfy
    from stylekit.attention.feature_fusion import PRESETS
    from stylekit.bridge.flux import FluxBridgePatcher
    from stylekit.bridge.sampling import sample_euler_cfg
    from stylekit.bridge.schedule import FlowSchedule
    from stylekit.models.schedules import simple_sigmas
    from stylekit.models.feature_store import StorePolicy
    from stylekit.models.inversion import every_step_schedule
    from stylekit.models.magicstyle import fusion_model, invert_pair, start_latent
    from stylekit.nodes import comfy_glue
    comfy_model = comfy_flux_tiny()
    bridge = FluxBridgePatcher(diffusers_flux_from_comfy(comfy_model), FlowSchedule(shift=1.15))
    ms = comfy_model.get_model_object("model_sampling")
    sig_c = comfy.samplers.calculate_sigmas(ms, "simple", 5).cpu()
    torch.testing.assert_close(simple_sigmas(ms, 5), sig_c)  # ComfyUI's own scheduler
    torch.testing.assert_close(simple_sigmas(bridge.model_sampling, 5), sig_c)
    content, style = (x["samples"] for x in latents(3))
    cond = conds(2)
    ctx, extra = comfy_glue.model_conds(comfy_model, cond, content, torch.device("cpu"))
    results = []
    x_c, x_s = (comfy_glue.latent_in(comfy_model, x) for x in (content, style))  # model space, for both hosts
    with torch.no_grad():  # first the plain models, one call
        s = torch.tensor([0.7])
        plain_c = comfy_model.model.apply_model(x_c, s, c_crossattn=ctx, **extra)
        plain_b = bridge.apply_model(x_c, s, ctx, **extra)
    # the hosts differ in kernels (RoPE, attention, fused qkv), i.e. in reduction order only
    assert (plain_c - plain_b).abs().max() <= roundoff(plain_c, bridge, 1)
    for host in (comfy_model, bridge):
        with torch.no_grad():
            inv = invert_pair(host, x_c, x_s, ctx, every_step_schedule(sig_c), StorePolicy(dtype=torch.float32), extra_conds=extra)
            m = fusion_model(host, inv, PRESETS["StyleID"], weight=0.9)
            if host is bridge:
                out = sample_euler_cfg(m, None, sig_c, {"c_crossattn": ctx, **extra}, start=start_latent(inv))
            else:
                out = sample_advanced(m, comfy_glue.StartNoise(m, start_latent(inv), float(sig_c[0])), sig_c, cond,
                                      {"samples": content})
                out = comfy_glue.latent_in(host, out)  # the sampler hands back the latent after process_latent_out
        results.append(out)
    comfy_out, bridge_out = results
    calls = 2 * (len(sig_c) - 1)  # inversion and sampling
    assert (comfy_out - bridge_out).abs().max() <= roundoff(comfy_out, bridge, calls)
    assert (comfy_out - start_latent(inv)).abs().max() > 0.1  # it sampled


def test_shipped_flux_workflows_run_in_process(comfy_nodes, tmp_path, needs_hooks):
    from comfy_host import assert_same_outputs, bodies, flux_standins, run_api_workflow
    from stylekit.tools.workflow_check import check_api, spec_from_node_class
    nodes, _ = comfy_nodes
    specs = {k: spec_from_node_class(c) for k, c in nodes.NODE_CLASS_MAPPINGS.items() if hasattr(c, "INPUT_TYPES")}
    overrides = flux_standins(tmp_path)
    small = {"width": 128, "height": 128, "steps": 4}
    paths = sorted((ROOT / "example_workflows" / "api").glob("flux_*.json"))
    assert len(paths) == 2
    files = ("unet_name", "clip_name", "vae_name", "style_model_name", "image=")
    for path in paths:
        wf = json.loads(path.read_text())
        errs = [e for e in check_api(wf, specs) if not any(f in e for f in files)]
        assert errs == [], (path.name, errs)
        for node in wf.values():
            node["inputs"].update({k: v for k, v in small.items() if k in node["inputs"]})
        results = run_api_workflow(wf, nodes.NODE_CLASS_MAPPINGS, overrides)  # the nodes as ComfyUI registered them: V3
        assert_same_outputs(results, run_api_workflow(wf, bodies(nodes.NODE_CLASS_MAPPINGS), overrides), path.name)
        sampled = [results[n][0]["samples"] for n, node in wf.items() if node["class_type"] == "SamplerCustomAdvanced"]
        assert len(sampled) == 1 and sampled[0].shape == (1, 16, 16, 16) and torch.isfinite(sampled[0]).all(), path.name
