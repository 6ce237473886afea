"""Prefix attention (CatVersion): learned key/value vectors placed before a layer's own keys/values.

Every query position may attend to the prefix, whatever the causal mask says about the other
positions. The official code adds a constant to the prefix logit (its mask concatenates ones in front
of the additive causal mask, so the logit gets +1.0); ``bias`` is that constant. Both the bias and the
host's mask become one additive mask, so the call stays on fused attention.
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from .functional import sdpa_attention

OFFICIAL_BIAS = 1.0


def prefix_mask(mask: torch.Tensor | None, n_query: int, n_prefix: int, bias: float,
                dtype: torch.dtype, device) -> torch.Tensor:
    """The additive mask over ``[prefix, tokens]``: ``bias`` on the prefix columns, ``mask`` after."""
    base = torch.zeros(n_query, n_query, dtype=dtype, device=device) if mask is None else mask.to(dtype)
    col = torch.full((*base.shape[:-1], n_prefix), bias, dtype=dtype, device=device)
    return torch.cat([col, base], dim=-1)


def prefix_attention(q, k, v, prefix_k: torch.Tensor, prefix_v: torch.Tensor, heads: int,
                     mask: torch.Tensor | None = None, bias: float = OFFICIAL_BIAS, attention=None):
    """Attention of ``q`` over ``[prefix_k, k]`` / ``[prefix_v, v]``.

    q, k, v: ``(batch, tokens, heads * dim_head)`` (heads not split); prefix_k/v: ``(P, heads * dim_head)``,
    the same for every sample. ``mask``: the host's additive mask over the tokens, ``(N, N)`` or
    ``(batch, 1, N, N)``. ``attention(q, k, v, heads, mask)`` is the host's attention function
    (ComfyUI's ``optimized_attention``); fused SDPA when None.
    """
    b, n, _ = q.shape
    pk = prefix_k.to(k.dtype).unsqueeze(0).expand(b, -1, -1)
    pv = prefix_v.to(v.dtype).unsqueeze(0).expand(b, -1, -1)
    full = prefix_mask(mask, n, prefix_k.shape[0], bias, q.dtype, q.device)
    return (attention or sdpa_attention)(q, torch.cat([pk, k], 1), torch.cat([pv, v], 1), heads, full)


def strength_bias(strength: float, official_bias: bool = True) -> float:
    """The prefix logit offset for a strength: log(strength) scales the prefix's unnormalised weight.

    strength 1 is the trained behaviour; 0 would be -inf (callers leave the encoder unpatched instead).
    """
    if strength <= 0:
        raise InputError("strength must be > 0 (at 0 leave the CLIP unpatched)")
    return (OFFICIAL_BIAS if official_bias else 0.0) + math.log(strength)
