"""DEADiff benchmark (make bench): Apply vs plain sampling in one run; encoding time per reference.

Target: Apply <= 1.05x plain sampling. Encoding is timed at the published sizes (BERT-base
Q-Formers, CLIP ViT-L/14 at 224 px) with random weights, on this machine's CPU.
"""
import sys
from pathlib import Path

import pytest
import torch
from stylekit.attention.layers import model_layers
from stylekit.bridge import BridgePatcher, sample_euler_cfg
from tiny_models import tiny_deadiff_state_dict, tiny_sd15_unet
from stylekit.models.deadiff import (
    DEADiffAdapter,
    QFormerShape,
    adapter_from_state_dict,
)
from stylekit.models.deadiff_inject import DEADiffTokens, deadiff_model
from stylekit.models.schedules import ddim_uniform_sigmas

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_of, check_targets, interleaved  # noqa: E402

pytestmark = pytest.mark.benchmark


@torch.no_grad()
def test_deadiff_figures():
    model = BridgePatcher(tiny_sd15_unet(seed=0, channels=(64, 64, 128, 128)))
    adapter = adapter_from_state_dict(tiny_deadiff_state_dict(model_layers(model), hidden=64), heads=4)
    tokens = DEADiffTokens(adapter, style=torch.randn(1, 16, 64), content=torch.randn(1, 16, 64))
    patched = deadiff_model(model, tokens)
    sig = ddim_uniform_sigmas(model.model_sampling, 20)
    g = torch.Generator().manual_seed(0)
    x, ctx, neg = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 77, 64, generator=g), torch.zeros(1, 77, 64)
    t = interleaved({"plain": lambda: sample_euler_cfg(model, x, sig, ctx, neg, cfg=7.5),
                     "deadiff": lambda: sample_euler_cfg(patched, x, sig, ctx, neg, cfg=7.5)})
    t_plain, t_dead = t["plain"], t["deadiff"]

    from transformers import CLIPVisionConfig, CLIPVisionModel
    full = DEADiffAdapter(QFormerShape(), {}).eval()  # published sizes, random weights
    vit = CLIPVisionModel(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                           num_hidden_layers=24, patch_size=14, image_size=224)).eval()
    px = torch.randn(1, 3, 224, 224)
    t_vit = best_of(lambda: vit(pixel_values=px, output_hidden_states=True), n=2)[0]
    hidden = vit(pixel_values=px, output_hidden_states=True).hidden_states[-2]
    t_qf = best_of(lambda: full.encode(hidden, "style"), n=2)[0]
    fig = {"apply_vs_plain": t_dead / t_plain, "seconds": {"plain": t_plain, "deadiff": t_dead},
           "encode_seconds_per_reference_cpu": {"clip_vit_l14": t_vit, "qformer_branch": t_qf, "total": t_vit + t_qf},
           "threads": torch.get_num_threads()}
    check_targets("deadiff", fig, {"apply_vs_plain": 1.05})
