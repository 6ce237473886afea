"""Flux benchmark (run on request: make bench). Ratios measured in one run on the same model.

Targets: Feature Fusion sampling from the store <= 1.3x plain sampling on the same Flux model; the
default store policy (late double blocks, recompute: one step of features, fp16) <= 2 GB at Flux.1-dev's
real sizes (1024 px: 4096 image tokens, width 3072, 19 double blocks, 28 steps), by arithmetic from the
config. The recompute mode's cost is reported. Figures go to bench/flux.json.
"""
import sys
from pathlib import Path

import pytest
import torch
from stylekit.attention.feature_fusion import PRESETS
from stylekit.attention.layers import LayerInfo, ModelLayers, model_layers
from stylekit.bridge.flux import FluxBridgePatcher
from stylekit.bridge.sampling import sample_euler_cfg
from stylekit.models.schedules import simple_sigmas
from tiny_models import tiny_flux
from references import dit_store_bytes
from stylekit.models.feature_store import StorePolicy
from stylekit.models.inversion import every_step_schedule
from stylekit.models.magicstyle import fusion_model, invert_pair, start_latent
from stylekit.attention.families import late_double as dit_default_blocks

sys.path.insert(0, str(Path(__file__).parent))
from timing import check_targets, interleaved  # noqa: E402

pytestmark = pytest.mark.benchmark

GB = 1e9


def flux_dev_layers():
    """Flux.1-dev's block table (config arithmetic: 19 double, 38 single blocks, width 3072, 24 heads)."""
    keys = [("double", i, 0) for i in range(19)] + [("single", i, 0) for i in range(38)]
    return ModelLayers("flux", tuple(LayerInfo(k, 3072, 24, 3072) for k in keys))


def test_flux_figures():
    torch.manual_seed(0)
    model = FluxBridgePatcher(tiny_flux(seed=0, double=4, single=8, heads=4, head_dim=32, latent_channels=16,
                                        context_dim=64, pooled_dim=32))
    side, steps = 32, 8  # 16 x 16 = 256 image tokens, 32 text tokens
    g = torch.Generator().manual_seed(0)
    content, style = torch.randn(1, 16, side, side, generator=g), torch.randn(1, 16, side, side, generator=g)
    cond = {"c_crossattn": torch.randn(1, 32, 64, generator=g), "y": torch.randn(1, 32, generator=g),
            "guidance": torch.tensor([3.5])}
    extra = {"y": cond["y"], "guidance": cond["guidance"]}
    sig = simple_sigmas(model.model_sampling, steps)
    blocks = tuple(dit_default_blocks(model_layers(model)))
    with torch.no_grad():
        inv = invert_pair(model, content, style, cond["c_crossattn"], every_step_schedule(sig), StorePolicy(layers=blocks),
                          extra_conds=extra)
        inv_r = invert_pair(model, content, style, cond["c_crossattn"], every_step_schedule(sig), StorePolicy(layers=blocks, mode="recompute"),
                            extra_conds=extra)
        x = start_latent(inv)
        styleid, magic = fusion_model(model, inv, PRESETS["StyleID"]), fusion_model(model, inv, PRESETS["MagicStyle"])
        recompute = fusion_model(model, inv_r, PRESETS["StyleID"])
        t = interleaved({
            "plain": lambda: sample_euler_cfg(model, None, sig, cond, start=x),
            "styleid": lambda: sample_euler_cfg(styleid, None, sig, cond, start=x),
            "magicstyle": lambda: sample_euler_cfg(magic, None, sig, cond, start=x),
            "recompute": lambda: sample_euler_cfg(recompute, None, sig, cond, start=x),
        }, rounds=3)
    dev = flux_dev_layers()
    default_blocks = len(dit_default_blocks(dev))
    tokens, width = (1024 // 16) ** 2, 3072
    fig = {"image_tokens": (side // 2) ** 2, "steps": steps, "blocks_fused": len(blocks),
           "styleid_vs_plain": t["styleid"] / t["plain"], "magicstyle_vs_plain": t["magicstyle"] / t["plain"],
           "recompute_vs_plain": t["recompute"] / t["plain"], "seconds": t,
           "flux_dev_1024": {
               "default_blocks": default_blocks,
               "default_recompute_gb": dit_store_bytes(default_blocks, tokens, width, 1) / GB,
               "default_blocks_store_28_steps_gb": dit_store_bytes(default_blocks, tokens, width, 28) / GB,
               "all_blocks_store_28_steps_gb": dit_store_bytes(57, tokens, width, 28) / GB,
               "all_blocks_recompute_gb": dit_store_bytes(57, tokens, width, 1) / GB}}
    fig["default_policy_gb"] = fig["flux_dev_1024"]["default_recompute_gb"]
    check_targets("flux", fig, {"styleid_vs_plain": 1.3, "magicstyle_vs_plain": 1.3, "default_policy_gb": 2.0})
