"""CatVersion training: only the prefix learns, with the plain eps-MSE of latent diffusion.

Host-agnostic: the caller supplies ``encode()`` (the prefixed text encoder on the base-class word,
differentiable in the prefix) and ``denoise(x, sigma, context)`` (the frozen UNet's x0 in ComfyUI's
sigma space, x = x0 + sigma * eps). Gradients are taken with ``torch.autograd.grad`` on the prefix
alone, so the frozen weights never receive a ``.grad`` and never change.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError
from .catversion import CatVersionPrefix


@dataclass
class TrainSettings:
    """The paper's defaults: AdamW at 1e-2, batch 2, about 1000 steps, horizontal flips."""
    steps: int = 1000
    lr: float = 1e-2
    batch: int = 2
    weight_decay: float = 1e-2   # torch's AdamW default, as the official optimiser
    seed: int = 0


def train_prefix(prefix: CatVersionPrefix, encode, denoise, latents: torch.Tensor, sigmas: torch.Tensor,
                 settings: TrainSettings, progress=None, interrupted=None) -> list[float]:
    """Train ``prefix`` in place; returns the loss of every step.

    ``latents``: the training pool (the images and, for h-flip augmentation, their flipped encodings),
    already in the model's latent space. ``sigmas``: the model's discrete noise levels (one per
    training timestep); each sample draws one uniformly, as LDM training draws t.
    """
    if latents.ndim != 4 or latents.shape[0] == 0:
        raise InputError(f"expected a latent batch (N, C, H, W), got {tuple(latents.shape)}")
    if settings.steps < 1 or settings.batch < 1:
        raise InputError("steps and batch size must be at least 1")
    params = [prefix.keys, prefix.values]
    for p in params:
        p.requires_grad_(True)
    try:
        return _train(params, encode, denoise, latents, sigmas, settings, progress, interrupted)
    finally:
        for p in params:
            p.requires_grad_(False)


def _train(params, encode, denoise, latents, sigmas, settings, progress, interrupted) -> list[float]:
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    g = torch.Generator().manual_seed(settings.seed)
    losses = []
    for step in range(settings.steps):
        if interrupted is not None:
            interrupted()
        idx = torch.randint(latents.shape[0], (settings.batch,), generator=g)
        x0 = latents[idx]
        sigma = sigmas[torch.randint(len(sigmas), (settings.batch,), generator=g)].to(x0)
        noise = torch.randn(x0.shape, generator=g).to(x0)
        x = x0 + sigma.view(-1, 1, 1, 1) * noise
        context = encode()
        context = context.expand(settings.batch, *context.shape[1:])
        eps = (x - denoise(x, sigma, context).float()) / sigma.view(-1, 1, 1, 1)
        loss = F.mse_loss(eps, noise)
        if not torch.isfinite(loss):
            raise InputError(f"CatVersion training: loss is {loss.item()} at step {step}; lower the learning rate")
        grads = torch.autograd.grad(loss, params)
        for p, gr in zip(params, grads):
            p.grad = gr
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, settings.steps)
    return losses
