"""StylerDALLE training (zipengxuc/StylerDALLE train.py / train_rl.py).

Stage 1, token super-resolution: the translator learns to predict the 32x32 tokens of a 256 px image
from the 16x16 tokens of the same image at 128 px; NLL, AdamW 1e-4, linear warm-up then linear decay.
Stage 2, one style: REINFORCE with reward = CLIP cosine between the decoded sample and
"{style} of {caption}", baseline = running mean of batch rewards (b <- n/(n+1) b + 1/(n+1) r, as the
official code), only ``nat_dec`` and ``outNet`` train; Adam 1e-6 (betas 0.9/0.98, eps 1e-9), gradient
norm clipped at 3.

Both run outside ``torch.inference_mode`` (ComfyUI runs nodes inside it) on a trainable copy of the
translator, so the model a node was given is never changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError
from .dvae import DVAEDecoder
from .stylerdalle import GRID_IN, StylerDALLETranslator, load_translator_state, sample_tokens


@dataclass(frozen=True)
class PretrainSettings:
    steps: int = 1000
    lr: float = 1e-4
    batch: int = 8
    warmup: int = 100
    seed: int = 0


@dataclass(frozen=True)
class StyleSettings:
    steps: int = 500
    lr: float = 1e-6
    batch: int = 4
    grad_clip: float = 3.0
    official_dropout: bool = True  # the official model trains with its decoder-output dropout on
    seed: int = 0


def trainable_copy(model: StylerDALLETranslator) -> StylerDALLETranslator:
    """A copy with ordinary (not inference-mode) parameters."""
    with torch.inference_mode(False):
        return load_translator_state(model.state_dict(), model.heads).to(next(model.parameters()).device).train()


def embed_tokens(decoder: DVAEDecoder, tokens16: torch.Tensor) -> torch.Tensor:
    """(B, 16, 16) ids -> (B, 256, n_init): what the translator reads (the decoder's first conv)."""
    with torch.no_grad():
        e = decoder.embed(tokens16)
    return e.permute(0, 2, 3, 1).reshape(e.shape[0], GRID_IN * GRID_IN, -1).clone()


def linear_warmup_decay(step: int, warmup: int, total: int) -> float:
    """transformers' get_linear_schedule_with_warmup factor."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def pretrain(model: StylerDALLETranslator, decoder: DVAEDecoder, tokens16: torch.Tensor, tokens32: torch.Tensor,
             settings: PretrainSettings = PretrainSettings(), callback: Callable | None = None):
    """Token super-resolution; returns (trained copy, per-step NLL)."""
    if tokens16.shape[0] != tokens32.shape[0]:
        raise InputError(f"{tokens16.shape[0]} low-resolution token grids for {tokens32.shape[0]} targets")
    with torch.inference_mode(False), torch.enable_grad():
        net = trainable_copy(model)
        opt = torch.optim.AdamW(net.parameters(), lr=settings.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: linear_warmup_decay(s, settings.warmup, settings.steps))
        g = torch.Generator().manual_seed(settings.seed)
        device = next(net.parameters()).device
        enc_all, target_all = embed_tokens(decoder, tokens16.to(device)), tokens32.to(device).reshape(tokens32.shape[0], -1).clone()
        losses = []
        for step in range(settings.steps):
            idx = torch.randint(0, enc_all.shape[0], (min(settings.batch, enc_all.shape[0]),), generator=g).to(device)
            log_probs = net(enc_all[idx])
            loss = -log_probs.gather(2, target_all[idx].unsqueeze(2)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if callback is not None:
                callback(step + 1, settings.steps)
    return net.eval().requires_grad_(False), losses


def update_baseline(baseline: float, batch_mean: float, batch: int) -> float:
    """The official running mean: b <- n/(n+1) b + 1/(n+1) r (n = batch size)."""
    return batch / (batch + 1) * baseline + 1 / (batch + 1) * batch_mean


def train_style(model: StylerDALLETranslator, decoder: DVAEDecoder, tokens16: torch.Tensor,
                reward: Callable[[torch.Tensor, list], torch.Tensor], captions: list[str],
                settings: StyleSettings = StyleSettings(), callback: Callable | None = None):
    """REINFORCE for one style. ``reward(images (B, 3, 256, 256) in [0, 1], captions) -> (B,)``.
    Returns (trained copy, per-step loss, per-step mean reward, final baseline)."""
    if len(captions) != tokens16.shape[0]:
        raise InputError(f"{len(captions)} captions for {tokens16.shape[0]} images")
    with torch.inference_mode(False), torch.enable_grad():
        net = trainable_copy(model)
        params = [p for n, p in net.named_parameters() if n.startswith(("nat_dec.", "outNet."))]
        for n, p in net.named_parameters():
            p.requires_grad_(n.startswith(("nat_dec.", "outNet.")))
        opt = torch.optim.Adam(params, lr=settings.lr, betas=(0.9, 0.98), eps=1e-9)
        g = torch.Generator().manual_seed(settings.seed)
        device = next(net.parameters()).device
        enc_all = embed_tokens(decoder, tokens16.to(device))
        baseline, losses, rewards = 0.0, [], []
        for step in range(settings.steps):
            idx = torch.randint(0, enc_all.shape[0], (min(settings.batch, enc_all.shape[0]),), generator=g)
            log_probs = net(enc_all[idx.to(device)], official_dropout=settings.official_dropout)
            sample = sample_tokens(log_probs.detach(), seed=settings.seed * 100003 + step)
            chosen = log_probs.gather(2, sample.reshape(sample.shape[0], -1, 1)).squeeze(2)  # (B, 1024)
            with torch.no_grad():
                r = reward(decoder.decode(sample), [captions[i] for i in idx.tolist()]).float().to(device)
            loss = (-chosen * (r[:, None] - baseline)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            opt.step()
            baseline = update_baseline(baseline, float(r.mean()), len(idx))
            losses.append(float(loss.detach()))
            rewards.append(float(r.mean()))
            if callback is not None:
                callback(step + 1, settings.steps)
    return net.eval().requires_grad_(False), losses, rewards, baseline
