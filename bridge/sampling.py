"""ComfyUI-shaped sampling for the bridge: cond/uncond batching and the Euler (DDIM eta 0) step."""
from __future__ import annotations

from typing import Callable

import torch


def calc_cond_batch(patcher, conds: list, x: torch.Tensor, sigma: torch.Tensor, split: bool = False):
    """Denoised x0 for each entry of ``conds`` (0 = cond, 1 = uncond order as in ComfyUI).

    ``conds`` is a list of context tensors (batch like ``x``) in the order [cond, uncond], or of dicts
    of model inputs (``c_crossattn`` and, for Flux, ``y`` and ``guidance``), each batched like ``x``. Batched
    like ComfyUI (one call, chunks in ``cond_or_uncond`` order) or, with ``split``, one call each,
    as ComfyUI does when memory is low.
    """
    mo = patcher.model_options
    labels = list(range(len(conds)))
    groups = [[i] for i in labels] if split else [labels]
    out = [None] * len(conds)
    for group in groups:
        to = dict(mo["transformer_options"])
        to["cond_or_uncond"] = group[:]
        xin = torch.cat([x] * len(group))
        sig = torch.cat([sigma] * len(group))
        parts = [conds[i] if isinstance(conds[i], dict) else {"c_crossattn": conds[i]} for i in group]
        to["sigmas"] = sig
        c = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        c["transformer_options"] = to

        def apply(input_x, timestep, c_crossattn, transformer_options, **kw):
            return patcher.apply_model(input_x, timestep, c_crossattn, transformer_options, **kw)

        if "model_function_wrapper" in mo:
            res = mo["model_function_wrapper"](
                lambda input_x, timestep, **c_: apply(input_x, timestep, **c_),
                {"input": xin, "timestep": sig, "c": c, "cond_or_uncond": group[:]})
        else:
            res = apply(xin, sig, **c)
        for i, chunk in zip(group, res.chunk(len(group))):
            out[i] = chunk
    return out


def sample_euler(denoise: Callable, x: torch.Tensor, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
    """k-diffusion Euler: x += (sigma_next - sigma) * eps, eps = (x - x0)/sigma. DDIM with eta 0."""
    for i in range(len(sigmas) - 1):
        s = sigmas[i].expand(x.shape[0])
        x0 = denoise(x, s)
        eps = (x - x0) / sigmas[i]
        x = x + eps * (sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback(i, x)
    return x


def sample_euler_cfg(patcher, noise, sigmas, cond, uncond=None, cfg: float = 1.0, split: bool = False, start=None):
    """Sample from ``noise * sigmas[0]`` (or from ``start``, the latent at ``sigmas[0]`` itself: a flow
    model's ``sigma * noise``, an inverted latent) with classifier-free guidance, ComfyUI's cfg semantics.

    As in ComfyUI, cfg == 1 skips the unconditional pass unless the patcher's model_options set
    ``disable_cfg1_optimization``.
    """
    patcher = patcher.clone()  # ComfyUI's samplers hand the schedule to patches as ``sample_sigmas``
    patcher.model_options["transformer_options"]["sample_sigmas"] = sigmas
    mo = patcher.model_options
    use_uncond = uncond is not None and (cfg != 1.0 or mo.get("disable_cfg1_optimization", False))

    def denoise(x, s):
        conds = [cond, uncond] if use_uncond else [cond]
        res = calc_cond_batch(patcher, conds, x, s, split=split)
        if not use_uncond:
            return res[0]
        return res[1] + (res[0] - res[1]) * cfg

    return sample_euler(denoise, noise * sigmas[0] if start is None else start, sigmas)


def text_to_image(patcher, clip, vae, prompt: str, negative: str, seed: int, steps: int, cfg: float, width: int,
                  height: int) -> torch.Tensor:
    """IMAGE (1, H, W, 3) of ``prompt`` on the bridge: noise from ``seed`` (CPU generator), ``steps`` Euler steps
    on the DDIM-uniform schedule, classifier-free guidance against ``negative``, the VAE's decode."""
    from ..models.schedules import ddim_uniform_sigmas
    factor = 2 ** (len(vae.first_stage.config.block_out_channels) - 1)
    channels = vae.first_stage.config.latent_channels
    device = next(patcher.unet.parameters()).device
    noise = torch.randn(1, channels, height // factor, width // factor, generator=torch.Generator().manual_seed(seed))

    def encode(text):  # the model's inputs for a prompt, as ComfyUI's samplers build them (SDXL: pooled text, sizes)
        context, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        conds = patcher.model.extra_conds(cross_attn=context, pooled_output=pooled, width=width, height=height,
                                          target_width=width, target_height=height)
        return {k: c.cond.to(device) for k, c in conds.items()}
    with torch.no_grad():
        cond, uncond = encode(prompt), encode(negative)
        sigmas = ddim_uniform_sigmas(patcher.model_sampling, steps).to(device)
        latent = sample_euler_cfg(patcher, noise.to(device), sigmas, cond, uncond, cfg)
    return vae.decode(latent)
