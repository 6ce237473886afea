"""Conversions between ComfyUI IMAGE tensors ([B, H, W, C] floats in 0..1) and PIL."""
from __future__ import annotations

import numpy as np
import torch


def pil_to_image(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]
