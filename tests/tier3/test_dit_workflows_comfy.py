"""Tier 3: the shipped Flux.2 Klein and Qwen-Image workflows, as shipped (only their sizes and steps made tiny),
run in-process through ComfyUI 0.33.0's own core nodes on tiny models built from its own classes, with stand-ins
for the weight files; V3 and V1 node bodies give the same outputs. On a ComfyUI without these families (0.3.64)
they skip: the workflows say they need 0.33.0 (tools/workflow_check.REQUIRES)."""
import copy
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"width": 128, "height": 128, "steps": 4}


def _flux2():
    from comfy_host import FluxClipStandin, FluxVaeStandin, comfy_flux2_tiny, tiny_or_skip
    tiny_or_skip(comfy_flux2_tiny, "Flux.2 (model_base.Flux2)")
    return comfy_flux2_tiny, FluxClipStandin(32, pooled=None), FluxVaeStandin(128, 16), (1, 128, 8, 8)


def _qwen():
    import comfy.ldm.qwen_image.model as qm
    from comfy_host import FluxClipStandin, FluxVaeStandin, comfy_qwen_image_tiny
    from stylekit.attention.layers import has_joint_hooks
    if not has_joint_hooks(qm.Attention):
        pytest.skip("this ComfyUI's Qwen-Image blocks have no attn1_patch hook")
    return comfy_qwen_image_tiny, FluxClipStandin(32, pooled=None), FluxVaeStandin(16, 8, video=True), (1, 16, 1, 16, 16)


@pytest.mark.parametrize("name,family", [("flux2_klein_style_transfer", _flux2), ("qwen_image_style_transfer", _qwen)])
def test_shipped_2026_workflows_run_in_process(comfy_nodes, tmp_path, name, family):
    from comfy_host import assert_same_outputs, bodies, dit_standins, run_api_workflow
    from stylekit.tools.workflow_check import check_api, required_comfyui, spec_from_node_class
    factory, clip, vae, shape = family()
    nodes, _ = comfy_nodes
    path = ROOT / "example_workflows" / "api" / f"{name}.json"
    assert required_comfyui(path) == "0.33.0"
    specs = {k: spec_from_node_class(c) for k, c in nodes.NODE_CLASS_MAPPINGS.items() if hasattr(c, "INPUT_TYPES")}
    wf = json.loads(path.read_text())
    errs = [e for e in check_api(wf, specs) if not any(f in e for f in ("unet_name", "clip_name", "vae_name", "image="))]
    assert errs == [], errs  # the graph as shipped, against this ComfyUI's own node definitions
    for node in wf.values():
        node["inputs"].update({k: v for k, v in SMALL.items() if k in node["inputs"]})
    overrides = dit_standins(factory, clip, vae, tmp_path)
    results = run_api_workflow(wf, nodes.NODE_CLASS_MAPPINGS, overrides)  # the nodes as ComfyUI registered them: V3
    assert_same_outputs(results, run_api_workflow(wf, bodies(nodes.NODE_CLASS_MAPPINGS), overrides), name)
    sampler = [n for n, node in wf.items() if node["class_type"] == "SamplerCustomAdvanced"]
    sampled = results[sampler[0]][0]["samples"]
    assert len(sampler) == 1 and sampled.shape == shape and torch.isfinite(sampled).all()
    # the same graph with Feature Fusion bypassed (the guider takes the model the fusion node takes; the start
    # noise still comes from it): the fusion changes the sample beyond what float32 round-off can
    bypassed = copy.deepcopy(wf)
    fusion = next(n for n in bypassed.values() if n["class_type"] == "StyleKitFeatureFusion")
    next(n for n in bypassed.values() if n["class_type"] == "CFGGuider")["inputs"]["model"] = fusion["inputs"]["model"]
    plain = run_api_workflow(bypassed, nodes.NODE_CLASS_MAPPINGS, overrides)[sampler[0]][0]["samples"]
    layers = sum(isinstance(m, torch.nn.Linear) for m in factory().model.diffusion_model.modules())
    calls = 2 * SMALL["steps"]  # CFG: a conditional and an unconditional call a step
    assert (sampled - plain).abs().mean() > calls * layers * torch.finfo(torch.float32).eps * float(sampled.abs().max())
