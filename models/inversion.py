"""DDIM inversion in ComfyUI's sigma space (x = x0 + sigma * eps), eps-prediction models.

Sampling with DDIM (eta 0) over sigmas s_0 > s_1 > ... > s_{n-1} > 0 is the Euler step
x <- x + (s_{i+1} - s_i) * eps(x, s_i). Inversion walks the same sigmas upwards and evaluates eps at
each *target* sigma with the current (less noisy) latent, as diffusers' DDIMInverseScheduler does:
x <- x + (s_j - s_{j+1}) * eps(x, s_j). So the model is called at exactly the sigmas the sampler will
visit, which is what lets features recorded here be matched to the sampler's steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import InputError


def ddim_uniform_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """ComfyUI's ``ddim_uniform`` scheduler over the model's own sigma table (high to low, then 0)."""
    s = model_sampling.sigmas
    x = 1
    if math.isclose(float(s[x]), 0, abs_tol=1e-5):
        steps += 1
        sigs = []
    else:
        sigs = [0.0]
    ss = max(len(s) // steps, 1)
    while x < len(s):
        sigs.append(float(s[x]))
        x += ss
    return torch.tensor(sigs[::-1], dtype=torch.float32)



@dataclass
class InversionResult:
    sigmas: torch.Tensor                     # the sampling sigmas, high to low, ending in 0
    latent: torch.Tensor                     # the inverted latent at sigmas[0], (batch, C, H, W)
    inputs: dict = field(default_factory=dict)  # sigma (float) -> latent fed to the model at that sigma


def ddim_invert(eps_fn: Callable[[torch.Tensor, float], torch.Tensor], x0: torch.Tensor, sigmas: torch.Tensor,
                callback: Callable[[int, int], None] | None = None) -> InversionResult:
    """Invert clean latents ``x0`` (any batch; one model call per step for the whole batch).

    ``eps_fn(x, sigma)`` returns eps for the batch; ``sigmas`` are the sampling sigmas (high to low,
    last 0). Returns the latent at ``sigmas[0]`` and the model input at every sigma.
    """
    sig = [float(s) for s in sigmas]
    if sig[-1] != 0.0 or any(a <= b for a, b in zip(sig, sig[1:])):
        raise InputError("sigmas must decrease strictly and end in 0 (a sampler's schedule)")
    x = x0.clone()
    inputs = {}
    levels = sig[::-1]  # 0, s_{n-1}, ..., s_0
    for j in range(1, len(levels)):
        target, current = levels[j], levels[j - 1]
        inputs[target] = x
        x = x + (target - current) * eps_fn(x, target)
        if callback is not None:
            callback(j, len(levels) - 1)
    return InversionResult(torch.as_tensor(sig), x, inputs)


def adain_latent(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-channel AdaIN over the spatial axes: content's normalised latent with style's mean/std."""
    cm, cs = content.mean((-2, -1), keepdim=True), content.std((-2, -1), keepdim=True)
    sm, ss = style.mean((-2, -1), keepdim=True), style.std((-2, -1), keepdim=True)
    return (content - cm) / (cs + eps) * ss + sm
