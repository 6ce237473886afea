"""Image tokens appended to cross-attention keys/values in one softmax (DEADiff's injection).

On an attn2 layer with text keys/values k, v (already projected) and image tokens c (B or 1, T, D):

    K = [k ; w * c W_k^T]     V = [v ; w * c W_v^T]      out = softmax(q K^T / sqrt(d)) V

with the layer's bias-free image projections W_k, W_v (``i_to_k`` / ``i_to_v``) and ``w`` the
contribution's effective weight (``img_weight`` x per-block weight). Chunks of the batch labelled
unconditional (``cond_or_uncond`` 1) get zero image tokens, whose keys and values are 0: they still
take softmax mass, exactly as in the official code. The concatenated K/V are passed down the router
chain, so the attention itself stays ComfyUI's fused kernel (or whatever sits below).
Projected tokens are cached per layer, device and dtype: the image tokens are constant for a run.
When ComfyUI moves the patch (``.to(device)``) the contribution is rebuilt on moved tensors with an
empty cache.
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from .router import Contribution, block_key, movable


def expand_rows(t: torch.Tensor, rows: int, what: str) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    if t.shape[0] == 1:
        return t.expand(rows, *t.shape[1:])
    raise InputError(f"{what}: {t.shape[0]} sets of image tokens for a batch of {rows}; give 1 or {rows}")


@movable("tokens", "projections")
def image_kv_contribution(tokens: dict, projections: dict, weight: float = 1.0, sigma_start=math.inf,
                          sigma_end=0.0, block_weights=None, name: str = "image_kv") -> Contribution:
    """``tokens``: 3-part key -> image tokens (B or 1, T, D) for that layer (zeros for an off branch).
    ``projections``: 3-part key -> (W_k (inner, D), W_v (inner, D))."""
    cache = {}

    def projected(key, device, dtype):
        hit = cache.get((key, device, dtype))
        if hit is None:
            wk, wv = projections[key]
            c = tokens[key].to(device=device, dtype=dtype)
            hit = (c @ wk.to(device=device, dtype=dtype).T, c @ wv.to(device=device, dtype=dtype).T)
            cache[(key, device, dtype)] = hit
        return hit

    def apply(q, k, v, extra, call_next, w):
        key = block_key(extra)
        ik, iv = projected(key, q.device, q.dtype)
        labels = extra.get("cond_or_uncond") or [0]
        rows = q.shape[0] // len(labels)
        parts_k, parts_v = [], []
        for label in labels:
            if label == 1:  # unconditional: zero image tokens
                parts_k.append(ik.new_zeros(rows, *ik.shape[1:]))
                parts_v.append(iv.new_zeros(rows, *iv.shape[1:]))
            else:
                parts_k.append(expand_rows(ik, rows, name))
                parts_v.append(expand_rows(iv, rows, name))
        K = torch.cat([k, w * torch.cat(parts_k)], dim=1)
        V = torch.cat([v, w * torch.cat(parts_v)], dim=1)
        return call_next(q, K, V, extra)

    return Contribution(name, apply, weight=weight, sigma_start=sigma_start, sigma_end=sigma_end,
                        block_weights=dict(block_weights or {}), info={"tokens": len(tokens)})
