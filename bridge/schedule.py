"""Noise schedules in sigma space, matching ComfyUI's: ``DiscreteSchedule`` (SD, eps prediction:
x = x0 + sigma * eps; the UNet sees x / sqrt(sigma^2 + 1) and the timestep nearest to sigma) and
``FlowSchedule`` (Flux, flow matching), with the ``ddim_uniform`` and ``simple`` schedulers.
"""
from __future__ import annotations

import math

import torch

from ..models.schedules import ddim_uniform_sigmas


class SigmaTable(torch.nn.Module):
    """A schedule's sigma table (``sigmas``, low to high), as ComfyUI's model_sampling objects hold it."""

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]


class DiscreteSchedule(SigmaTable):
    def __init__(self, linear_start=0.00085, linear_end=0.012, timesteps=1000):
        super().__init__()
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    def timestep(self, sigma):
        dists = sigma.log().reshape(-1, 1) - self.log_sigmas.to(sigma.device).reshape(1, -1)
        return dists.abs().argmin(dim=1).view(sigma.shape)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float(), 0, len(self.sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()

    def calculate_input(self, sigma, x):
        return x / (sigma.view(-1, *[1] * (x.ndim - 1)) ** 2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma, eps, x):
        return x - eps * sigma.view(-1, *[1] * (x.ndim - 1))

    def noise_scaling(self, sigma, noise, latent, max_denoise=False):
        return noise * ((1.0 + sigma ** 2) ** 0.5 if max_denoise else sigma) + latent

    def ddim_sigmas(self, steps: int) -> torch.Tensor:
        """ComfyUI's ``ddim_uniform`` scheduler: high to low, ending in 0."""
        return ddim_uniform_sigmas(self, steps)


def flux_time_shift(mu: float, t):
    """Flux's resolution shift of the flow time ``t`` in (0, 1]: exp(mu) / (exp(mu) + 1/t - 1)."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


class FlowSchedule(SigmaTable):
    """Flow-matching schedule of Flux (ComfyUI's ``ModelSamplingFlux`` + ``CONST``).

    x_sigma = (1 - sigma) * x0 + sigma * noise; the model predicts the velocity v = noise - x0 and sees
    x itself with timestep sigma; denoised x0 = x - sigma * v. ``shift`` is Flux's mu (1.15 default).
    """

    def __init__(self, shift: float = 1.15, timesteps: int = 10000):
        super().__init__()
        self.shift = shift
        t = torch.arange(1, timesteps + 1, 1) / timesteps
        self.register_buffer("sigmas", flux_time_shift(shift, t).float())

    def timestep(self, sigma):
        return sigma

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(flux_time_shift(self.shift, torch.tensor(1.0 - percent)))

    def calculate_input(self, sigma, x):
        return x

    def calculate_denoised(self, sigma, v, x):
        return x - v * sigma.view(-1, *[1] * (x.ndim - 1))

    def noise_scaling(self, sigma, noise, latent, max_denoise=False):
        return sigma * noise + (1.0 - sigma) * latent
