"""Rotary position embeddings in the layout ComfyUI's Flux blocks pass to attention patches.

``pe`` is ``(batch or 1, 1, tokens, dim_head / 2, 2, 2)``: for each pair of channels (2i, 2i+1) the
2x2 rotation ``[[cos, -sin], [sin, cos]]`` of that token's angle. :func:`embed_ids` builds it from
position ids ``(batch, tokens, axes)`` (Flux: axis 0 unused, 1 row, 2 column), one frequency band per
axis; :func:`apply_rope` rotates ``(batch, heads, tokens, dim_head)`` queries or keys.

Inside ComfyUI the host's own ``apply_rope1`` is used instead (:func:`host_rope`), so its kernels
apply; this module is the plain reference for the bridge and the tests.
"""
from __future__ import annotations

import sys

import torch


def rope(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """Rotation matrices ``(..., tokens, dim/2, 2, 2)`` for positions ``pos`` (..., tokens)."""
    if dim % 2:
        raise ValueError(f"a rotary axis needs an even width, got {dim}")
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / theta ** scale
    angles = pos.to(torch.float64)[..., None] * omega
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([cos, -sin, sin, cos], dim=-1).reshape(*angles.shape, 2, 2).float()


def embed_ids(ids: torch.Tensor, axes_dim, theta: float) -> torch.Tensor:
    """``pe`` for position ids ``(batch, tokens, len(axes_dim))``: the axes' bands side by side."""
    return torch.cat([rope(ids[..., i], d, theta) for i, d in enumerate(axes_dim)], dim=-3).unsqueeze(1)


def apply_rope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """``x`` (batch, heads, tokens, dim_head) rotated pairwise by ``pe`` (tokens must match)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]
    return out.reshape(x.shape).type_as(x)


def host_rope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """The host's rotary function (ComfyUI's ``apply_rope1``, whatever kernel it picks) or ours."""
    flux_math = sys.modules.get("comfy.ldm.flux.math")
    fn = getattr(flux_math, "apply_rope1", None)
    return fn(x, pe) if fn is not None else apply_rope(x, pe)


def token_slice(pe: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """The rotations of tokens ``start:end``."""
    return pe[:, :, start:end]
