"""DEADiff on a model: style tokens to the style layers, content tokens to the content layers.

Layer split (bytedance/DEADiff's, SD1.5): content tokens go to input 7, 8, middle 0, output 3, 4; style
tokens to input 1, 2, 4, 5 and output 5..11. SDXL (StyleKit's, by resolution as the official one): the
content tokens go to the lowest resolution's blocks, input 7, 8, middle 0 and the first two of the decoder's,
output 0, 1; the style tokens to the rest, input 4, 5 and output 2..5. A file trained by StyleKit carries
the split it was trained with (``DEADiffAdapter.split``), and Apply uses that one. A branch that is off
(style-only or content-only) still puts 16 zero tokens on its layers by default, as the official code does
(their zero keys take softmax mass); ``zero_tokens=False`` leaves those layers unpatched instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..attention.image_kv import image_kv_contribution
from ..attention.families import DEADIFF, FAMILIES, SD15, SDXL
from ..attention.layers import UnsupportedModelError, model_layers
from ..attention.router import add_contribution
from ..errors import InputError
from .deadiff import DEADiffAdapter

# each family's split lives in its registry entry (attention/families.py)
STYLE_BLOCKS, CONTENT_BLOCKS = SD15.layer_sets["deadiff_style"], SD15.layer_sets["deadiff_content"]
SDXL_STYLE_BLOCKS, SDXL_CONTENT_BLOCKS = SDXL.layer_sets["deadiff_style"], SDXL.layer_sets["deadiff_content"]
SPLITS = ("official", "one branch on every layer")  # the latter: style tokens (else content) on all 16


@dataclass
class DEADiffTokens:
    """What StyleKit DEADiff Encode returns: each branch's tokens (1, 16, 768) or None, and the adapter."""
    adapter: DEADiffAdapter
    style: torch.Tensor | None = None
    content: torch.Tensor | None = None

    def __deepcopy__(self, memo):
        return self


def mix(tokens: torch.Tensor, weights: list[float] | None) -> torch.Tensor:
    """(N, T, D) tokens of N reference images -> (1, T, D), weighted mean (equal weights by default)."""
    if not weights:
        return tokens.mean(0, keepdim=True)
    if len(weights) != tokens.shape[0]:
        raise InputError(f"{len(weights)} mixing weights for {tokens.shape[0]} images; give one per image")
    w = torch.tensor(weights, dtype=tokens.dtype, device=tokens.device)
    if w.sum().abs() < 1e-8:
        raise InputError("mixing weights sum to 0")
    return (w.view(-1, 1, 1) * tokens).sum(0, keepdim=True) / w.sum()


def check_pairing(adapter: DEADiffAdapter, model) -> None:
    """The adapter's attn2 projections must fit this UNet layer for layer; errors name both sides."""
    layers = model_layers(model)
    layers.require(DEADIFF, "DEADiff")
    have, want = set(adapter.attn2), set(layers.keys)
    if have != want:
        made_for = "SD1.5" if ("input", 1, 0) in have else "SDXL" if ("input", 4, 1) in have else "another model"
        raise UnsupportedModelError(
            f"DEADiff weights carry image projections for {len(have)} attn2 layers (made for {made_for}) but this "
            f"{layers.title} UNet has {len(want)}: missing {sorted(want - have)[:4]}, extra "
            f"{sorted(have - want)[:4]}; use a DEADiff trained for this model family")
    for key in layers.keys:
        wk = adapter.attn2[key][0]
        info = layers.by_key(key)
        if wk.shape[0] != info.channels:
            raise UnsupportedModelError(f"DEADiff i_to_k at {key} projects to {wk.shape[0]} channels; this UNet's "
                                        f"attn2 there is {info.channels} wide (weights for another model size)")
    branch_keys(adapter, layers)  # a trained split must name blocks this model has


def split_blocks(adapter: DEADiffAdapter, family: str) -> dict:
    """{"style": blocks, "content": blocks}: the split ``adapter`` was trained with, else the family's default."""
    if adapter.split is not None:
        return adapter.split
    return {b: FAMILIES[family].layer_sets[f"deadiff_{b}"] for b in ("style", "content")}


def branch_keys(adapter: DEADiffAdapter, layers) -> dict:
    """{"style": layer keys, "content": layer keys} of ``layers`` (a ModelLayers) under the adapter's split."""
    return {b: layers.select(blocks) for b, blocks in split_blocks(adapter, layers.family).items()}


def deadiff_model(model, tokens: DEADiffTokens, img_weight: float = 1.0, split: str = "official",
                  zero_tokens: bool = True, sigma_start=math.inf, sigma_end=0.0, block_weights=None):
    """A clone of ``model`` with DEADiff's image K/V on its cross-attention layers."""
    adapter = tokens.adapter
    check_pairing(adapter, model)
    if tokens.style is None and tokens.content is None:
        raise InputError("no DEADiff tokens: encode a style and/or a content image first")
    if split not in SPLITS:
        raise InputError(f"unknown layer split {split!r}; choose from {list(SPLITS)}")
    layers = model_layers(model)
    some = tokens.style if tokens.style is not None else tokens.content
    zeros = torch.zeros_like(some)
    if split == "official":
        keys = branch_keys(adapter, layers)
        plan = [(keys["style"], tokens.style), (keys["content"], tokens.content)]
    else:
        plan = [(layers.keys, some)]
    per_layer = {}
    for keys, branch in plan:
        for key in keys:
            if branch is not None:
                per_layer[key] = branch
            elif zero_tokens:
                per_layer[key] = zeros
    m = model.clone()
    contribution = image_kv_contribution(per_layer, {k: adapter.attn2[k] for k in per_layer}, img_weight,
                                         sigma_start, sigma_end, block_weights, name="deadiff")
    add_contribution(m, contribution, list(per_layer), "attn2")
    return m
