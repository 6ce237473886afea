"""Decoupled image cross-attention (IP-Adapter) with StyleStudio's cross-modal AdaIN.

On an attn2 layer with text keys/values k, v and image tokens c of this sample's branch:

    T = Attn(q, k, v)                       (the rest of the router chain: text attention)
    I = Attn(q, c W_k^T, c W_v^T)           (the adapter's image branch, the host's fused attention)
    add:     out = T + w * I                                   (IP-Adapter, InstantStyle, CSGO)
    adain:   out = lerp(T, AdaIN(T, I), w)                     (StyleStudio; w = 1 is the paper's)
    AdaIN(T, I) = (T - mean(T)) / std(T) * std(I) + mean(I)    per sample and channel, over tokens

Statistics follow the official processor: heads merged (per channel of the layer's inner width),
unbiased std, no epsilon (StyleKit clamps std(T) at 1e-6: a constant T gives mean(I), not NaN).

Which tokens a row gets depends on its chunk (``cond_or_uncond``): conditional chunks get the style
image's tokens, unconditional chunks ``uncond_tokens`` (the projection of zero features, as the
official code does, or a negative style image's tokens: StyleStudio's style-based CFG). Rows of a
teacher sample (``transformer_options[TEACHER_CHUNKS]``, see :mod:`.teacher`) get no image branch.
An optional mask (1 or B, H, W) limits the change to a region, resized to each block's grid
(:mod:`.masks`: area-averaged).
Projected tokens are cached per layer, device and dtype: the image tokens are constant for a run.
When ComfyUI moves the patch (``.to(device)``) the contribution is rebuilt on moved tensors with an
empty cache.
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from .functional import host_attention
from .image_kv import expand_rows
from .masks import blend, mask_tokens
from .options import TEACHER_CHUNKS
from .router import Contribution, block_key, movable

FUSIONS = ("cross-modal AdaIN", "add")


def std_mean_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unbiased std and mean over the token axis (two-pass; ``torch.std_mean`` over a middle axis is ~8x
    slower on CPU)."""
    m = x.mean(1, keepdim=True)
    d = x - m
    return (d.square().sum(1, keepdim=True) / (x.shape[1] - 1)).sqrt(), m


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, N, C) content re-normalised to the style's per-sample, per-channel mean/std over N tokens.

    Written as one multiply-add over the large tensor: content * (s_s / s_c) + (m_s - m_c * s_s / s_c).
    """
    sc, mc = std_mean_tokens(content)
    ss, ms = std_mean_tokens(style)
    scale = ss / sc.clamp_min(eps)
    return torch.addcmul(ms - mc * scale, content, scale)


def block_grid(extra: dict, tokens: int) -> tuple[int, int]:
    """(h, w) of this block's token grid: ComfyUI's ``activations_shape``, else from the latent's aspect."""
    shape = extra.get("activations_shape")
    if shape is not None and shape[-1] * shape[-2] == tokens:
        return int(shape[-2]), int(shape[-1])
    H, W = extra["original_shape"][-2:]
    s = math.sqrt(H * W / tokens)
    return round(H / s), round(W / s)


@movable("cond_tokens", "uncond_tokens", "projections", "mask")
def adapter_contribution(cond_tokens: torch.Tensor, uncond_tokens: torch.Tensor, projections: dict,
                         fusion: str = "cross-modal AdaIN", weight: float = 1.0, sigma_start=math.inf,
                         sigma_end=0.0, block_weights=None, mask: torch.Tensor | None = None,
                         name: str = "style_adapter") -> Contribution:
    """``cond_tokens`` / ``uncond_tokens``: (1 or B, T, D) context tokens; ``projections``: 3-part
    key -> (W_k, W_v); ``mask``: (1 or B, H, W) in [0, 1] or None."""
    if fusion not in FUSIONS:
        raise InputError(f"unknown fusion {fusion!r}; choose from {list(FUSIONS)}")
    if cond_tokens.shape[1:] != uncond_tokens.shape[1:]:
        raise InputError(f"unconditional image tokens {tuple(uncond_tokens.shape)} do not match the style "
                         f"tokens {tuple(cond_tokens.shape)}")
    cache = {}

    def projected(key, labels, rows, device, dtype):
        """Image K/V for a batch laid out as ``labels`` chunks of ``rows`` (cached: constant per run)."""
        hit = cache.get((key, labels, rows, device, dtype))
        if hit is None:
            wk, wv = (w.to(device=device, dtype=dtype) for w in projections[key])
            tokens = [(uncond_tokens if lab == 1 else cond_tokens).to(device=device, dtype=dtype) for lab in labels]
            c = torch.cat([expand_rows(t, rows, name) for t in tokens])
            hit = cache[(key, labels, rows, device, dtype)] = (c @ wk.T, c @ wv.T)
        return hit

    def region(extra, tokens, device, dtype):
        h, w = block_grid(extra, tokens)
        hit = cache.get(("mask", h, w, device, dtype))
        if hit is None:
            hit = cache[("mask", h, w, device, dtype)] = mask_tokens(mask, (h, w)).to(device, dtype)
        return hit

    def apply(q, k, v, extra, call_next, w):
        t = call_next(q, k, v, extra)
        labels = list(extra.get("cond_or_uncond") or [0])
        styled = extra.get(TEACHER_CHUNKS, len(labels))  # teacher chunks (after these) get no image branch
        rows = q.shape[0] // len(labels)
        n = rows * styled
        key = block_key(extra)
        ik, iv = projected(key, tuple(labels[:styled]), rows, q.device, q.dtype)
        i = host_attention(q[:n], ik, iv, extra)
        ts = t[:n]
        if fusion == "add":
            fused = torch.add(ts, i, alpha=w)
        else:
            a = adain(ts, i)
            fused = a if w == 1 else torch.lerp(ts, a, w)
        if mask is not None:
            m = torch.cat([expand_rows(region(extra, q.shape[1], q.device, q.dtype), rows, f"{name} mask")] * styled)
            fused = blend(ts, fused, m)
        return fused if n == t.shape[0] else torch.cat([fused, t[n:]])

    return Contribution(name, apply, weight=weight, sigma_start=sigma_start, sigma_end=sigma_end,
                        block_weights=dict(block_weights or {}),
                        info={"fusion": fusion, "tokens": cond_tokens.shape[1], "masked": mask is not None})
