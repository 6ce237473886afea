"""Inversion schedules in ComfyUI's sigma space (x = x0 + sigma * eps) and the inversion loop.

One step between noise levels a < b is the Euler step x <- x + (b - a) * eps(x, s), which is DDIM
(eta 0) on SD and the flow's Euler step on Flux; conventions differ in the level ``s`` eps is read at
and in where the walk starts and ends.

Two conventions:

:func:`styleid_schedule` (SD) follows StyleID's official code (``ldm/models/diffusion/ddim.py``,
``encode_ddim`` / ``reverse_ddim`` / ``ddim_sampling`` with ``start_step`` 49 of 50):

- the clean latent is taken as the latent at t = 1 (VP: x_1 = x0), i.e. x0 * sqrt(1 + sigma_1^2) here;
- eps is read at the CURRENT level, on the latent at that level, then the step goes up one DDIM
  timestep (t = 1, 1 + c, ..., t_top, c = 1000 // steps: ComfyUI's ``ddim_uniform`` timesteps when steps
  divide 1000);
- the last step goes from t_top to t = 999, past the top DDIM timestep (to t_top + c for other steps);
- sampling skips the top timestep: that last latent is fed unchanged (in VP scaling) at the second
  timestep, i.e. here multiplied by sqrt((1 + sigma_second^2) / (1 + sigma_last^2));
- the last sampling step lands at t = 0 (alpha_cumprod 0.99915, sigma 0.029), not at sigma 0.

:func:`every_step_schedule` walks a sampler's own sigmas up from the clean latent at sigma 0, reads eps
(on Flux: the velocity) at the level it steps TO, and the sampler then runs the same sigmas from the
top: the model is called at exactly the sigmas the sampler visits. It is Flux's inversion (ComfyUI's
model interface returns the denoised x0 = x - sigma * v, which carries no velocity at sigma 0, where a
current-level convention would make its first call) and SD's alternative to StyleID's, kept because it
reconstructs and transfers the palette better at few steps on the miniature world (README).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import InputError


@dataclass(frozen=True)
class InversionSchedule:
    """Where an inversion walks and where sampling then runs, in sigma space."""
    levels: tuple              # the latent's noise levels, clean first; the walk steps from each to the next
    read_at_target: bool       # eps read at the level stepped to (flow) or at the level stepped from (DDIM)
    sample_sigmas: torch.Tensor  # the sampler's schedule, high to low; sigmas[0] is where the start is placed
    clean_scale: float = 1.0   # the clean latent's factor at levels[0]
    start_scale: float = 1.0   # the latent at levels[-1] -> the start at sample_sigmas[0]

    def calls(self) -> list:
        """The sigmas the model is called at, in inversion order."""
        pairs = zip(self.levels, self.levels[1:])
        return [b if self.read_at_target else a for a, b in pairs]


def styleid_schedule(model_sampling, steps: int) -> InversionSchedule:
    """StyleID's official DDIM pipeline on an eps model's table (t = 0..T-1), as the module says. The DDIM
    timesteps are ``make_ddim_timesteps``' (t = 1 + k c, k < steps, c = T // steps); the inversion's step
    from the top one goes to ``encode_ddim``'s next target (t = 999 when steps divide 1000, else top + c),
    and that latent is the start (the official sampler callback's ``z_enc``)."""
    s = [float(v) for v in model_sampling.sigmas]
    T = len(s)
    if not 2 <= steps < T:
        raise InputError(f"steps is {steps}: StyleID's DDIM pipeline takes 2 to {T - 1} steps (one is skipped)")
    c = T // steps
    ts = [1 + k * c for k in range(steps)]
    targets = list(range(1, T + c, c))
    targets[-1] = T - 1
    nxt = targets[steps]
    levels = tuple(s[t] for t in ts) + ((s[nxt],) if nxt != ts[-1] else ())  # no zero-length last step
    sample = [s[t] for t in reversed(ts[:-1])] + [s[0]]
    return InversionSchedule(
        levels=levels, read_at_target=False, sample_sigmas=torch.tensor(sample, dtype=torch.float32),
        clean_scale=math.sqrt(1.0 + s[ts[0]] ** 2),
        start_scale=math.sqrt((1.0 + s[ts[-2]] ** 2) / (1.0 + s[nxt] ** 2)))


def every_step_schedule(sigmas: torch.Tensor) -> InversionSchedule:
    """Euler inversion over a sampler's ``sigmas`` (high to low, ending in 0), eps read at the level
    stepped to; the sampler runs the same ``sigmas``."""
    sig = [float(v) for v in sigmas]
    if sig[-1] != 0.0 or any(a <= b for a, b in zip(sig, sig[1:])):
        raise InputError("sigmas must decrease strictly and end in 0 (a sampler's schedule)")
    return InversionSchedule(levels=tuple(sig[::-1]), read_at_target=True,
                             sample_sigmas=torch.tensor(sig, dtype=torch.float32))


@dataclass
class InversionResult:
    sigmas: torch.Tensor                     # the sampler's schedule (high to low)
    latent: torch.Tensor                     # the inverted latents placed at sigmas[0], (batch, C, H, W)
    inputs: dict = field(default_factory=dict)  # sigma (float) -> latent fed to the model at that sigma


def invert(eps_fn: Callable[[torch.Tensor, float], torch.Tensor], x0: torch.Tensor, schedule: InversionSchedule,
           callback: Callable[[int, int], None] | None = None) -> InversionResult:
    """Invert clean latents ``x0`` (any batch; one model call per step for the whole batch) along
    ``schedule``; ``eps_fn(x, sigma)`` returns eps for the batch."""
    x = x0 * schedule.clean_scale
    inputs = {}
    levels, calls = schedule.levels, schedule.calls()
    for j, at in enumerate(calls):
        inputs[at] = x
        x = x + (levels[j + 1] - levels[j]) * eps_fn(x, at)
        if callback is not None:
            callback(j + 1, len(calls))
    return InversionResult(schedule.sample_sigmas.clone(), x * schedule.start_scale, inputs)


def adain_latent(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Per-channel AdaIN over the spatial axes, as StyleID's ``adain``: content's normalised latent with
    style's mean and (unbiased) std. A channel with no variation stays at the style's mean."""
    cm, cs = content.mean((-2, -1), keepdim=True), content.std((-2, -1), keepdim=True)
    sm, ss = style.mean((-2, -1), keepdim=True), style.std((-2, -1), keepdim=True)
    return (content - cm) / cs.clamp_min(torch.finfo(cs.dtype).tiny) * ss + sm
