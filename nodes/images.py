"""Conversions between ComfyUI IMAGE tensors ([B, H, W, C] floats in 0..1) and PIL."""
from __future__ import annotations

import numpy as np
import torch


def pil_to_image(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]


def loss_curve(losses: list[float], width: int = 512, height: int = 256, label: str = "loss") -> torch.Tensor:
    """An IMAGE plotting per-step values (grey) and their running mean over ~5% of the steps (blue)."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    pad = 24
    if losses:
        y = np.asarray(losses, dtype=np.float64)
        k = max(1, len(y) // 20)
        smooth = np.convolve(y, np.ones(k) / k, mode="valid")
        lo, hi = float(y.min()), float(y.max())
        span = hi - lo or 1.0

        def pts(v, offset):
            n = max(len(y) - 1, 1)
            return [(pad + (i + offset) / n * (width - 2 * pad), height - pad - (float(s) - lo) / span * (height - 2 * pad))
                    for i, s in enumerate(v)]
        if len(y) > 1:
            d.line(pts(y, 0), fill=(190, 190, 190), width=1)
            d.line(pts(smooth, (k - 1) / 2), fill=(30, 90, 200), width=2)
        d.text((pad, 4), f"{label}: first {y[0]:.4f}  last-{k} mean {smooth[-1]:.4f}  min {lo:.4f}  ({len(y)} steps)", fill="black")
    d.rectangle([pad, pad, width - pad, height - pad], outline=(0, 0, 0))
    return pil_to_image(img)
