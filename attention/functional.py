"""Plain attention math shared by every StyleKit contribution (no ComfyUI import).

Tensors follow ComfyUI's replace-patch convention: q, k, v are ``(batch, tokens, heads * dim_head)``
with heads not yet split.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from .options import DEFAULT_ATTENTION


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def sdpa_attention(q, k, v, heads: int, mask: torch.Tensor | None = None, scale: float | None = None):
    """Fused attention on unsplit heads: the same reshape and call as diffusers' AttnProcessor2_0.

    ``mask`` is additive (or boolean) and broadcastable to ``(batch, heads, q_tokens, k_tokens)``;
    ``scale`` multiplies the logits (default 1/sqrt(dim_head)).
    """
    out = F.scaled_dot_product_attention(
        split_heads(q, heads), split_heads(k, heads), split_heads(v, heads),
        attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale,
    )
    return merge_heads(out).to(q.dtype)


def split_sdpa_attention(q, k, v, heads: int | None = None, mask=None):
    """Fused attention on split heads ``(batch, heads, tokens, dim_head)`` -> ``(batch, tokens, heads * dim_head)``."""
    return merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).to(q.dtype)


def host_attention(q, k, v, extra_options: dict, mask: torch.Tensor | None = None, skip_reshape: bool = False):
    """The host's own attention for a block, on unsplit heads; every attention StyleKit computes or
    passes on goes through here, so the user's backend and overrides apply to patched blocks too.

    * diffusers bridge: the function named in ``extra_options[DEFAULT_ATTENTION]`` (:mod:`.options`);
    * ComfyUI: the active ``optimized_attention`` (``optimized_attention_masked`` with a mask) with the
      block's options as ``transformer_options`` (``extra_options`` is ComfyUI's copy of them), so an
      ``optimized_attention_override`` (``ModelPatcher.set_model_optimized_attention``, other packs'
      kernels) sees the call;
    * otherwise fused SDPA.

    ``mask`` is additive and broadcastable to ``(batch, heads, q_tokens, k_tokens)``. Logit scales other
    than 1/sqrt(dim_head) are applied to ``q`` by the caller: not every host takes a scale.
    ``skip_reshape``: q, k, v come with heads split, ``(batch, heads, tokens, dim_head)`` (DiT blocks);
    the result is ``(batch, tokens, heads * dim_head)`` either way, as ComfyUI returns it.
    """
    fn = extra_options.get(DEFAULT_ATTENTION)
    heads = q.shape[1] if skip_reshape else extra_options["n_heads"]
    if fn is not None:
        return fn(q, k, v, heads, mask)
    comfy_attention = sys.modules.get("comfy.ldm.modules.attention")
    if comfy_attention is not None:
        fn = comfy_attention.optimized_attention if mask is None else comfy_attention.optimized_attention_masked
        extra = {"skip_reshape": True} if skip_reshape else {}
        return fn(q, k, v, heads, mask=mask, attn_precision=extra_options.get("attn_precision"),
                  transformer_options=extra_options, **extra)
    if skip_reshape:
        return split_sdpa_attention(q, k, v, heads, mask)
    return sdpa_attention(q, k, v, heads, mask)
