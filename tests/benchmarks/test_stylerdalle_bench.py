"""StylerDALLE benchmark (make bench): stylise throughput at batch 1 and 8, a pre-training step and a
REINFORCE step (time, peak RSS), at the published sizes (dVAE n_hid 256 / vocab 8192, translator
hidden 512, 8 heads, 4 + 4 blocks) with random weights, on this machine.
"""
import json
import resource
import sys
import time
from pathlib import Path

import pytest
import torch

from stylekit.models.dvae import DVAEDecoder, DVAEEncoder
from stylekit.models.stylerdalle import StylerDALLETranslator
from stylekit.models.stylerdalle_pipeline import StylerDALLE, stylize
from stylekit.models.stylerdalle_train import PretrainSettings, StyleSettings, pretrain, train_style

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_of  # noqa: E402

pytestmark = pytest.mark.benchmark


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_stylerdalle_figures():
    torch.manual_seed(0)
    model = StylerDALLE(DVAEEncoder().eval(), DVAEDecoder().eval(), StylerDALLETranslator().eval())
    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 128, 128, 3, generator=g)
    fig = {"params_millions": {"translator": sum(p.numel() for p in model.translator.parameters()) / 1e6,
                               "dvae_encoder": sum(p.numel() for p in model.encoder.parameters()) / 1e6,
                               "dvae_decoder": sum(p.numel() for p in model.decoder.parameters()) / 1e6}}
    t1 = best_of(lambda: stylize(model, images[:1], batch=1), n=2)[0]
    t8 = best_of(lambda: stylize(model, images, batch=8), n=1)[0]
    fig["stylize_images_per_s"] = {"batch_1": 1 / t1, "batch_8": 8 / t8}
    t16 = torch.randint(0, 8192, (8, 16, 16), generator=g)
    t32 = torch.randint(0, 8192, (8, 32, 32), generator=g)
    t0 = time.perf_counter()
    pretrain(model.translator, model.decoder, t16, t32, PretrainSettings(steps=2, batch=8, warmup=1))
    fig["pretrain_step_seconds_batch_8"] = (time.perf_counter() - t0) / 2
    fig["peak_rss_mb_after_pretrain"] = peak_rss_mb()
    reward = lambda images, captions: images.mean((1, 2, 3))  # noqa: E731  (CLIP's cost not included)
    t0 = time.perf_counter()
    train_style(model.translator, model.decoder, t16[:4], reward, ["a photo"] * 4, StyleSettings(steps=2, batch=4))
    fig["reinforce_step_seconds_batch_4_without_clip"] = (time.perf_counter() - t0) / 2
    fig["peak_rss_mb_after_reinforce"] = peak_rss_mb()
    fig["threads"] = torch.get_num_threads()
    print(json.dumps(fig, indent=1))
    assert fig["stylize_images_per_s"]["batch_8"] > 0
