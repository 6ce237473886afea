"""Tier 3: StyleKit patches follow ComfyUI's host protocol.

* Attention backends: every attention a patched model computes, StyleKit's own included, goes through
  ComfyUI's attention function with the block's ``transformer_options``, so a model-level
  ``optimized_attention_override`` (``set_model_optimized_attention``, other packs' kernels) sees it.
* Memory management: ComfyUI moves patches with ``.to(device)`` when it loads and offloads a model;
  after it unloads a patched model no StyleKit tensor (weights, tokens, caches, stored features) stays
  on the device the model ran on.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
STEPS = 3


def ksample(model, cond, neg, cfg=4.0):
    import nodes
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    return nodes.KSampler().sample(model, 0, STEPS, cfg, "ddim", "ddim_uniform", cond, neg, latent)[0]["samples"]


def conds():
    g = torch.Generator().manual_seed(1)
    return [[torch.randn(1, 77, 64, generator=g), {}]], [[torch.randn(1, 77, 64, generator=g), {}]]


def style_stack(model, tmp_path, adapter_weight=1.0, start_percent=0.0):
    """DEADiff Apply, then the Style Adapter (cross-modal AdaIN, every layer), then the Teacher Layout."""
    import folder_paths
    from comfy_host import comfy_clip_vision_tiny, write_tiny_adapter, write_tiny_deadiff
    from tiny_models import tiny_clip_vision
    from stylekit.nodes.deadiff import StyleKitDEADiffApply, StyleKitDEADiffEncode, StyleKitDEADiffLoader
    from stylekit.nodes.stylestudio import StyleKitAdapterLoader, StyleKitStyleAdapter, StyleKitTeacherLayout

    write_tiny_deadiff(model, tmp_path / "deadiff", "protocol.safetensors")
    write_tiny_adapter(model, tmp_path / "ipadapter", "protocol.safetensors")
    folder_paths.add_model_folder_path("deadiff", str(tmp_path / "deadiff"), is_default=True)
    folder_paths.add_model_folder_path("ipadapter", str(tmp_path / "ipadapter"), is_default=True)
    cv = comfy_clip_vision_tiny(tmp_path, tiny_clip_vision())
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    tokens = StyleKitDEADiffEncode().encode(StyleKitDEADiffLoader().load("protocol.safetensors")[0], cv, image,
                                            "style", "", None)[0]
    m = StyleKitDEADiffApply().apply(model, tokens, 1.0, "official", True, 0.0, 1.0, "")[0]
    adapter = StyleKitAdapterLoader().load("protocol.safetensors")[0]
    m = StyleKitStyleAdapter().apply(m, adapter, cv, image, "cross-modal AdaIN", "all", adapter_weight,
                                     start_percent, 1.0, "")[0]
    return StyleKitTeacherLayout().apply(m, 0.4)[0]


def feature_fusion(model, mode, weight):
    from stylekit.nodes.magicstyle import EVERY_STEP, StyleKitDDIMInvert, StyleKitFeatureFusion
    g = torch.Generator().manual_seed(3)
    content, style = ({"samples": torch.randn(1, 4, 16, 16, generator=g)} for _ in range(2))
    cond, _ = conds()
    # sampled by KSampler on ddim_uniform: every step of that schedule is stored
    inv = StyleKitDDIMInvert().invert(model, content, style, cond, STEPS, "output 6-11 (StyleID)", "fp32",
                                      "model device", mode, EVERY_STEP)[0]
    return StyleKitFeatureFusion().apply(model, inv, "MagicStyle", 0.75, 1.5, 0.0, weight, True, 0.0, 1.0)[0]


def attention_layers(model):
    from stylekit.attention.layers import model_layers
    return len(model_layers(model).keys)  # attn2 layers; each transformer block has one attn1 beside it


@pytest.fixture
def counting_attention(monkeypatch):
    """(install(model), calls, bypassed): the override counts the calls it sees and computes them with
    ComfyUI's attention_basic; any call of fused SDPA is an attention that went around the override."""
    import comfy.ldm.modules.attention as comfy_attention
    calls, bypassed = [], []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        bypassed.append(args[0].shape)
        return sdpa(*args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)

    def override(func, *args, **kwargs):
        calls.append(args[0].shape[0])
        return comfy_attention.attention_basic(*args, **kwargs)

    def install(model):
        m = model.clone()  # what ModelPatcher.set_model_optimized_attention does (2026 ComfyUI)
        m.model_options["transformer_options"]["optimized_attention_override"] = override
        return m
    return install, calls, bypassed


@pytest.mark.parametrize("start_percent", [0.0, 0.5], ids=["active", "idle-half"])
def test_override_sees_every_attention_of_a_styled_model(comfy_nodes, tmp_path, counting_attention, start_percent):
    from comfy_host import comfy_sd15_random
    install, calls, bypassed = counting_attention
    model = comfy_sd15_random()
    cond, neg = conds()
    n = attention_layers(model)
    plain = ksample(install(model), cond, neg)
    assert len(calls) == STEPS * 2 * n and not bypassed  # attn1 + attn2 of every block, one batched call a step
    calls.clear()
    styled = style_stack(model, tmp_path, start_percent=start_percent)
    bypassed.clear()  # the image encoders (CLIP vision, DEADiff's Q-Former) are not the model's attention
    out = ksample(install(styled), cond, neg)
    import comfy.samplers
    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", STEPS)[:-1]
    active_steps = int((sigmas <= float(ms.percent_to_sigma(start_percent))).sum())  # the adapter's window
    assert 0 < active_steps <= STEPS
    assert not bypassed, f"{len(bypassed)} attention calls went around the override"
    # every block's own two attentions, plus the adapter's image attention on each attn2 while it acts
    assert len(calls) == STEPS * 2 * n + active_steps * n
    assert torch.isfinite(out).all() and (out - plain).abs().mean() > 1e-4


@pytest.mark.parametrize("mode,weight", [("store", 1.0), ("recompute", 0.5)])
def test_override_sees_feature_fusion(comfy_nodes, counting_attention, mode, weight):
    from comfy_host import comfy_sd15_random
    from stylekit.attention.feature_fusion import STYLEID_BLOCKS
    install, calls, bypassed = counting_attention
    model = comfy_sd15_random()
    cond, neg = conds()
    n = attention_layers(model)
    fused = feature_fusion(model, mode, weight)
    ff_layers = len([k for k in fused.model_options["transformer_options"]["patches_replace"]["attn1"]
                     if k[:2] in STYLEID_BLOCKS])
    assert ff_layers > 0
    bypassed.clear()
    out = ksample(install(fused), cond, neg)
    assert not bypassed, f"{len(bypassed)} attention calls went around the override"
    per_call = 2 * n + (ff_layers if weight != 1.0 else 0)  # a partial weight also runs the plain attention
    references = STEPS * 2 * n if mode == "recompute" else 0  # recompute re-runs the references each step
    assert len(calls) == STEPS * per_call + references
    assert torch.isfinite(out).all()


def stylekit_tensors(model_options) -> list:
    """Every tensor reachable from the StyleKit objects in ``model_options``: routers, recorders and
    wrappers, through their attributes, containers and the closures of their functions."""
    from stylekit.attention.router import is_router
    to = model_options["transformer_options"]
    roots = [p for table in to.get("patches_replace", {}).values() for p in table.values() if is_router(p)]
    roots += [p for plist in to.get("patches", {}).values() for p in plist if type(p).__module__.startswith("stylekit")]
    wrapper = model_options.get("model_function_wrapper")
    if wrapper is not None and type(wrapper).__module__.startswith("stylekit"):
        roots.append(wrapper)
    assert roots, "no StyleKit patch found"
    seen, found, todo = set(), [], list(roots)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None), type)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        elif isinstance(obj, dict):
            todo += list(obj.keys()) + list(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo += list(obj)
        elif callable(obj) and getattr(obj, "__closure__", None):
            todo += [c.cell_contents for c in obj.__closure__ if c.cell_contents is not None]
        if hasattr(obj, "__dict__") and not isinstance(obj, torch.Tensor):
            todo += list(vars(obj).values())
    return found


@pytest.mark.parametrize("config", ["style stack", "feature fusion store", "feature fusion recompute"])
def test_unloading_moves_every_stylekit_tensor_off_the_load_device(comfy_nodes, tmp_path, config):
    """The patched model offloads to the meta device, so on a CPU-only machine a tensor left on the load
    device (the CPU) is told apart from one ComfyUI moved (a lent GPU: see the benchmarks)."""
    import comfy.model_management as mm
    from comfy_host import comfy_sd15_random
    model = comfy_sd15_random()
    cond, neg = conds()
    if config == "style stack":
        patched = style_stack(model, tmp_path)
    else:
        patched = feature_fusion(model, config.split()[-1], 1.0)
    patched.offload_device = torch.device("meta")
    ksample(patched, cond, neg)  # ComfyUI loads the model (and its patches) and sampling fills every cache
    held = stylekit_tensors(patched.model_options)
    assert held and all(t.device == patched.load_device for t in held)
    assert any(m.model is patched for m in mm.current_loaded_models)
    mm.unload_all_models()
    left = [tuple(t.shape) for t in stylekit_tensors(patched.model_options) if t.device.type != "meta"]
    assert not left, f"{len(left)} StyleKit tensors stayed on the load device after unloading: {left[:6]}"


def test_the_bridge_model_answers_with_comfyuis_base_model_names():
    """What the pack asks ``patcher.model`` exists on ComfyUI's BaseModel under the same names, and every
    argument the bridge names is one ComfyUI's takes (or ComfyUI's takes any keyword)."""
    import inspect

    from comfy.model_base import BaseModel
    from stylekit.bridge.patcher import BridgeModel
    for name in ("apply_model", "process_latent_in", "process_latent_out", "extra_conds"):
        ours, theirs = (inspect.signature(getattr(cls, name)).parameters for cls in (BridgeModel, BaseModel))
        takes_any = any(p.kind is p.VAR_KEYWORD for p in theirs.values())
        named = [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert takes_any or set(named) <= set(theirs), (name, named, list(theirs))
        assert named[:2] == list(theirs)[:2] or len(named) < 2 or takes_any, (name, named, list(theirs))


def test_the_bridge_vae_and_clip_vision_answer_with_comfyuis_names():
    """The bridge's VAE and CLIP vision take the arguments ComfyUI's VAE and ClipVisionModel take, in order."""
    import inspect

    from comfy.clip_vision import ClipVisionModel
    from comfy.sd import VAE
    from stylekit.bridge import BridgeClipVision, BridgeVAE
    for ours, theirs, name in ((BridgeVAE, VAE, "encode"), (BridgeVAE, VAE, "decode"),
                               (BridgeClipVision, ClipVisionModel, "encode_image")):
        a, b = (list(inspect.signature(getattr(cls, name)).parameters) for cls in (ours, theirs))
        assert a == b[:len(a)], (name, a, b)
