"""CatVersion benchmark (make bench): prefixed vs plain text encoding; training step time and memory.

Target: encoding with the prefix <= 1.05x without. Encoding is timed on a CLIP-L-sized text
encoder (768 wide, 12 layers, 77 tokens; random weights) in the ComfyUI-shaped bridge encoder. Training
runs on the tiny UNet (widths 64/128, 32x32 latent) with that CLIP-L encoder; on CUDA (when the
benchmark is run on a GPU machine) the peak allocated memory is reported as well.
"""
import resource
import sys
import time
from pathlib import Path

import pytest
import torch
from stylekit.bridge import BridgePatcher
from stylekit.bridge.clip_text import BridgeCLIP, clip_text_from_transformers
from tiny_models import tiny_sd15_unet
from stylekit.models.catversion import CatVersionPrefix, catversion_clip
from stylekit.models.catversion_train import TrainSettings, train_prefix
from stylekit.models.magicstyle import host_apply_model

sys.path.insert(0, str(Path(__file__).parent))
from timing import check_targets  # noqa: E402

pytestmark = pytest.mark.benchmark


def clip_l(device):
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    hf = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                      num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                      bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    return BridgeCLIP(clip_text_from_transformers(hf).to(device))


def per_call(fn, n):
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def test_catversion_figures():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clip = clip_l(device)
    prefix = CatVersionPrefix.random([9, 10, 11], 768, seed=0).to(device)
    patched = catversion_clip(clip, prefix)
    tokens = {k: v.to(device) for k, v in clip.tokenize("a photo of a teapot on a sandy beach").items()}
    plain_t, pref_t = [], []
    with torch.no_grad():
        for _ in range(5):  # interleaved rounds: the ratio is not skewed by drift
            plain_t.append(per_call(lambda: clip.encode_from_tokens(tokens), 10))
            pref_t.append(per_call(lambda: patched.encode_from_tokens(tokens), 10))
    encode_ratio = min(pref_t) / min(plain_t)

    unet = tiny_sd15_unet(seed=0, channels=(64, 64, 128, 128), context_dim=768).to(device)
    model = BridgePatcher(unet)
    model.model_sampling.to(device)
    latents = torch.randn(4, 4, 32, 32, device=device)
    train_prefix_ = CatVersionPrefix.random([9, 10, 11], 768, seed=0).to(device)
    text = catversion_clip(clip, train_prefix_, trainable=True)
    ids = {k: v.to(device) for k, v in text.tokenize("teapot").items()}
    steps = 20
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = train_prefix(train_prefix_, lambda: text.encode_from_tokens(ids),
                          lambda x, s, c: host_apply_model(model, x, s, c, {}), latents,
                          model.model_sampling.sigmas, TrainSettings(steps=steps, batch=2))
    step_s = (time.perf_counter() - t0) / steps
    fig = {"device": device, "threads": torch.get_num_threads(),
           "encode_prefixed_vs_plain": encode_ratio,
           "encode_ms": {"plain": 1e3 * min(plain_t), "prefixed": 1e3 * min(pref_t)},
           "train_step_ms_tiny_unet_clip_l": 1e3 * step_s,
           "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # models included
           "loss_first_last": [losses[0], losses[-1]]}
    if device == "cuda":
        fig["train_peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    check_targets("catversion", fig, {"encode_prefixed_vs_plain": 1.05})
