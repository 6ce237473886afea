"""A diffusers ``AutoencoderKL`` with the surface of ComfyUI's ``VAE``: ``encode`` and ``decode`` on
IMAGE tensors (B, H, W, 3) in [0, 1].

The bridge's latents are the model's own (its ``process_latent_in`` is the identity), so ``encode``
returns the scaled posterior mean and ``decode`` undoes the scale: a LATENT made here samples on the
bridge exactly as a ComfyUI LATENT does after ComfyUI's ``process_latent_in``.
"""
from __future__ import annotations

import torch


class BridgeVAE:
    def __init__(self, autoencoder):
        self.first_stage = autoencoder

    @property
    def device(self) -> torch.device:
        return next(self.first_stage.parameters()).device

    def encode(self, pixel_samples: torch.Tensor) -> torch.Tensor:
        """IMAGE (B, H, W, 3) -> latents (B, 4, H/8, W/8): the posterior mean times the scaling factor."""
        vae = self.first_stage
        x = pixel_samples[..., :3].movedim(-1, 1).to(self.device, vae.dtype) * 2 - 1
        with torch.no_grad():
            return vae.encode(x).latent_dist.mean.float() * vae.config.scaling_factor

    def decode(self, samples_in: torch.Tensor) -> torch.Tensor:
        """Latents -> IMAGE (B, H, W, 3) in [0, 1]."""
        vae = self.first_stage
        with torch.no_grad():
            x = vae.decode(samples_in.to(self.device, vae.dtype) / vae.config.scaling_factor).sample.float()
        return ((x.clamp(-1, 1) + 1) / 2).movedim(1, -1)
