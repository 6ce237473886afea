"""DEADiff's image preprocessing for CLIP ViT-L/14, reproduced without kornia.

The official code (bytedance/DEADiff, ``get_learned_conditioning``) squashes the image to 224x224
with ``kornia.geometry.resize(..., interpolation="bicubic", align_corners=True, antialias=True)``
and normalises with CLIP's mean/std. ComfyUI's ``clip_vision.encode_image(crop=False)`` squashes with
torch's bicubic antialias filter, half-pixel corners and a round trip through 8-bit values, which is
a different filter; so StyleKit preprocesses here and feeds the pixels to ComfyUI's vision model.

kornia's antialias is a Gaussian blur before a plain interpolation: sigma = max((factor - 1)/2,
0.001) per axis, kernel size max(4 sigma, 3) made odd, reflect padding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _gaussian(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - size // 2
    g = torch.exp(-x.pow(2) / (2 * sigma ** 2))
    return g / g.sum()


def blurred_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size): kornia-style antialiased bicubic resize, align_corners=True."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    fh, fw = h / size[0], w / size[1]
    if max(fh, fw) > 1:  # blur only when shrinking
        sig = (max((fh - 1) / 2, 0.001), max((fw - 1) / 2, 0.001))
        ks = [int(max(4.0 * s, 3)) for s in sig]
        ks = [k if k % 2 else k + 1 for k in ks]
        ks = [1 if n == 1 else k for n, k in zip((h, w), ks)]
        c = x.shape[1]
        kh = _gaussian(ks[0], sig[0], x.device, x.dtype).view(1, 1, -1, 1).expand(c, 1, -1, 1)
        kw = _gaussian(ks[1], sig[1], x.device, x.dtype).view(1, 1, 1, -1).expand(c, 1, 1, -1)
        x = F.pad(x, (ks[1] // 2, ks[1] // 2, ks[0] // 2, ks[0] // 2), mode="reflect")
        x = F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> CLIP's mean/std normalised pixel values."""
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def deadiff_pixels(image: torch.Tensor, size: int = 224) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, 3) in [0, 1] -> CLIP pixel values (B, 3, size, size), as DEADiff makes them."""
    if image.ndim != 4 or image.shape[-1] < 3:
        raise InputError(f"expected an IMAGE batch (B, H, W, 3); got shape {tuple(image.shape)}")
    x = blurred_resize(image[..., :3].movedim(-1, 1).float(), (size, size))
    return normalize(x)


def clip_pixels(image: torch.Tensor, size: int = 224) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, 3) -> CLIP pixel values (B, 3, size, size) the way CLIPImageProcessor and
    ComfyUI's ``encode_image(crop=True)`` make them: shortest side to ``size`` (bicubic, antialiased),
    centre crop, 8-bit values, CLIP mean/std."""
    if image.ndim != 4 or image.shape[-1] < 3:
        raise InputError(f"expected an IMAGE batch (B, H, W, 3); got shape {tuple(image.shape)}")
    x = image[..., :3].movedim(-1, 1).float()
    h, w = x.shape[-2:]
    s = size / min(h, w)
    x = F.interpolate(x, size=(max(size, round(h * s)), max(size, round(w * s))), mode="bicubic",
                      antialias=True, align_corners=False)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = (x[..., top:top + size, left:left + size].clamp(0, 1) * 255).round() / 255  # 8-bit, as both do
    return normalize(x)
