"""StyleStudio benchmark (make bench): ratios against plain sampling measured in the same run.

Targets: the style adapter (either fusion) <= 1.05x plain sampling; the teacher <= 2.1x
plain while it acts (measured with the teacher on for every step), so a 20-of-50 teacher costs about
1 + 0.4 x 1.1 of plain overall. SD1.5-layout UNet at 64/128 channels, 32x32 latents, CFG, this CPU.
"""
import sys
from pathlib import Path

import pytest
import torch
from stylekit.attention.layers import model_layers
from stylekit.bridge import BridgePatcher, sample_euler_cfg
from tiny_models import tiny_ip_adapter, tiny_sd15_unet
from stylekit.models.schedules import ddim_uniform_sigmas
from stylekit.models.ip_adapter import load_adapter
from stylekit.models.stylestudio import style_adapter_model, teacher_model

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_of, check_targets, interleaved  # noqa: E402

pytestmark = pytest.mark.benchmark


@torch.no_grad()
def test_stylestudio_figures(tmp_path):
    model = BridgePatcher(tiny_sd15_unet(seed=0, channels=(64, 64, 128, 128)))
    torch.save(tiny_ip_adapter(model_layers(model), "plus", feature_width=1280, tokens=16, dim=768, heads=12, depth=4),
               tmp_path / "ip-adapter-plus_sd15_sized.bin")  # the published SD1.5 plus Resampler, 64-wide context
    adapter = load_adapter(str(tmp_path / "ip-adapter-plus_sd15_sized.bin"))
    feats = torch.randn(1, 257, 1280)
    t_encode = best_of(lambda: adapter.encode(feats))[0]
    add = style_adapter_model(model, adapter, feats, fusion="add", preset="all")
    adain = style_adapter_model(model, adapter, feats, fusion="cross-modal AdaIN", preset="all")
    sig = ddim_uniform_sigmas(model.model_sampling, 20)
    always = teacher_model(adain, 1.0, 0.0)
    paper = teacher_model(adain, 0.4, 0.0)
    g = torch.Generator().manual_seed(0)
    x, ctx, neg = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 77, 64, generator=g), torch.zeros(1, 77, 64)
    run = lambda m: (lambda: sample_euler_cfg(m, x, sig, ctx, neg, cfg=5.0))  # noqa: E731
    t = interleaved({"plain": run(model), "add": run(add), "adain": run(adain), "teacher_every_step": run(always),
                     "teacher_8_of_20": run(paper)})
    fig = {"add_vs_plain": t["add"] / t["plain"], "adain_vs_plain": t["adain"] / t["plain"],
           "adain_vs_add": t["adain"] / t["add"], "teacher_steps_vs_no_teacher": t["teacher_every_step"] / t["adain"],
           "teacher_8_of_20_vs_no_teacher": t["teacher_8_of_20"] / t["adain"], "seconds": t,
           "resampler_encode_seconds": t_encode, "threads": torch.get_num_threads()}
    check_targets("stylestudio", fig, {"add_vs_plain": 1.05, "adain_vs_plain": 1.05, "teacher_steps_vs_no_teacher": 2.1})
