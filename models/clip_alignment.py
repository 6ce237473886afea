"""CLIP alignment scores (CatVersion's evaluation): masked CLIP-I and CLIP-T as mean cosines."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

FILLS = {"black": 0.0, "gray": 0.5, "white": 1.0}


def remove_background(images: torch.Tensor, mask: torch.Tensor | None, fill: str = "black") -> torch.Tensor:
    """IMAGE (B, H, W, 3) with pixels outside ``mask`` (1 = keep) set to ``fill``.

    A single mask applies to every image; a mask of another size is resized (bilinear) to the images.
    """
    if mask is None:
        return images
    m = mask if mask.ndim == 3 else mask[None]
    if m.shape[0] not in (1, images.shape[0]):
        raise InputError(f"{m.shape[0]} masks for {images.shape[0]} images; give one mask, or one per image")
    if m.shape[-2:] != images.shape[1:3]:
        m = F.interpolate(m[:, None].float(), size=images.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
    m = m.to(images).clamp(0, 1)[..., None]
    return images * m + FILLS[fill] * (1 - m)


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over every (row of a, row of b) pair."""
    if a.shape[-1] != b.shape[-1]:
        raise InputError(f"embeddings of width {a.shape[-1]} and {b.shape[-1]} cannot be compared: they come "
                         "from different CLIP models")
    return float((F.normalize(a.double(), dim=-1) @ F.normalize(b.double(), dim=-1).T).mean())
