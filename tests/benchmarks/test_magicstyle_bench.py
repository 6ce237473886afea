"""MagicStyle benchmark (run on request: make bench). Ratios measured in one run on the same model.

Targets: store <= 10% of the naive fp32 all-layers-all-steps store; the content and style inverted in
one batch of 2 <= 0.6x the two inverted one after the other (two batch-1 inversions); FFA sampling
<= 1.3x plain sampling. A missed target is a warning in the summary; the figures go to bench/magicstyle.json.
"""
import sys
from pathlib import Path

import pytest
import torch
from stylekit.attention.feature_fusion import PRESETS, STYLEID_BLOCKS
from stylekit.attention.layers import model_layers
from stylekit.bridge import BridgePatcher, sample_euler_cfg
from tiny_models import tiny_sd15_unet
from stylekit.models.feature_store import StorePolicy
from stylekit.models.inversion import styleid_schedule
from stylekit.models.magicstyle import (
    fusion_model,
    invert_batch,
    invert_pair,
    start_latent,
)

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_of, check_targets  # noqa: E402

pytestmark = pytest.mark.benchmark


def test_magicstyle_figures():
    torch.manual_seed(0)
    model = BridgePatcher(tiny_sd15_unet(seed=0, channels=(64, 64, 128, 128)))
    side, steps = 32, 20
    g = torch.Generator().manual_seed(0)
    content, style = torch.randn(1, 4, side, side, generator=g), torch.randn(1, 4, side, side, generator=g)
    ctx = torch.randn(1, 77, 64, generator=g)
    sched = styleid_schedule(model.model_sampling, steps)
    layers = model_layers(model)
    styleid = StorePolicy(layers=tuple(layers.select(STYLEID_BLOCKS)))
    naive = StorePolicy(layers=tuple(layers.keys), dtype=torch.float32)
    with torch.no_grad():
        t_batched, inv = best_of(lambda: invert_pair(model, content, style, ctx, sched, StorePolicy(layers=styleid.layers)))
        t_seq, _ = best_of(lambda: [invert_batch(model, x, ctx[:1], sched, StorePolicy(layers=styleid.layers))
                                    for x in (content, style)])
        # naive: fp32 q, k, v of both images on every layer and step (tokens per layer read off a full store)
        full = invert_pair(model, content, style, ctx, sched, naive).store.features
        naive_bytes = sum(h.shape[1] * layers.by_key(key).channels * 6 * 4 for (key, _), h in full.items())
        x_T, sig = start_latent(inv), inv.result.sigmas
        t_plain, _ = best_of(lambda: sample_euler_cfg(model, None, sig, ctx, start=x_T))
        t_ffa, _ = best_of(lambda: sample_euler_cfg(fusion_model(model, inv, PRESETS["StyleID"]), None, sig, ctx, start=x_T))
        inv_r = invert_pair(model, content, style, ctx, sched, StorePolicy(layers=styleid.layers, mode="recompute"))
        t_rec, _ = best_of(lambda: sample_euler_cfg(fusion_model(model, inv_r, PRESETS["StyleID"]), None, sig, ctx,
                                                    start=x_T))
    fig = {"latent": side, "steps": steps, "store_bytes": inv.store.size_bytes(), "naive_bytes": naive_bytes,
           "store_ratio": inv.store.size_bytes() / naive_bytes,
           "batched_vs_sequential": t_batched / t_seq, "ffa_vs_plain": t_ffa / t_plain,
           "recompute_vs_plain": t_rec / t_plain,
           "seconds": {"batched": t_batched, "sequential": t_seq, "plain": t_plain, "ffa": t_ffa, "recompute": t_rec}}
    check_targets("magicstyle", fig, {"store_ratio": 0.10, "batched_vs_sequential": 0.6, "ffa_vs_plain": 1.3})
