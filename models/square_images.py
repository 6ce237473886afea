"""Squaring a training set: images of any size as one batch of side x side images, as trainers' loaders do."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

SQUASH, CROP = "squash", "center crop"
FITS = (SQUASH, CROP)


def square(images: torch.Tensor, side: int, fit: str = SQUASH) -> torch.Tensor:
    """IMAGE (B, H, W, C) as (B, side, side, C). ``squash``: the whole image resized to the square, as the
    loaders of CatVersion (textual inversion's ``personalized.py``, ``center_crop`` off) and StylerDALLE do;
    ``center crop``: first the largest centred square, rows and columns from (H - s) // 2 with s = min(H, W)
    (that loader's optional ``center_crop``). Resized bicubically with antialiasing, clamped to 0..1; a
    square of ``side`` already is returned as it is."""
    if fit not in FITS:
        raise InputError(f"fit is {fit!r}; choose one of {list(FITS)}")
    if fit == CROP:
        h, w = images.shape[1:3]
        s = min(h, w)
        images = images[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if tuple(images.shape[1:3]) == (side, side):
        return images
    x = F.interpolate(images.movedim(-1, 1).float(), size=(side, side), mode="bicubic", antialias=True,
                      align_corners=False)
    return x.clamp(0, 1).movedim(1, -1)
