"""Region masks for contributions: one resize, one blend, for every method that takes a MASK.

A MASK (H, W) or (B, H, W) in [0, 1] becomes one weight per image token at a block's grid by **area
averaging**: a token's weight is the share of its cell the mask covers. A hard mask edge so gives the
tokens it cuts a partial weight, and a region narrower than one token at a coarse block (1/64 of the
image in SDXL's middle) still counts in proportion, where a bilinear sample could miss it or give it
full weight depending on where the sample points fall.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_tokens(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """MASK (H, W) or (B, H, W) -> token weights (B, h*w, 1) (B = 1 for an (H, W) mask), area-averaged."""
    m = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    return F.interpolate(m, size=tuple(hw), mode="area").reshape(m.shape[0], -1, 1)


def blend(plain: torch.Tensor, changed: torch.Tensor, weight) -> torch.Tensor:
    """``plain + weight * (changed - plain)``: weight 1 keeps the change, 0 the plain output; ``weight`` is a
    number or token weights broadcasting over ``plain`` (from :func:`mask_tokens`)."""
    return plain + weight * (changed - plain)
