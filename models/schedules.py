"""ComfyUI's schedulers over a model's sigma table (``model_sampling.sigmas``, low to high): the one home
of the schedules the core computes, for both hosts (ComfyUI's model_sampling objects and the bridge's)."""
from __future__ import annotations

import math

import torch


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


def simple_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """ComfyUI's ``simple`` scheduler: ``steps`` evenly spaced entries of the model's sigma table, then 0."""
    s = model_sampling.sigmas
    ss = len(s) / steps
    return torch.tensor([float(s[-(1 + int(x * ss))]) for x in range(steps)] + [0.0], dtype=torch.float32)
