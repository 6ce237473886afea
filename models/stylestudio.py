"""StyleStudio on a model: the style adapter's attn2 contribution and the teacher model, each on a clone.

Block presets (ComfyUI block names):
* ``StyleStudio: all up blocks`` — every output block (the paper injects style in all SDXL up blocks);
* ``InstantStyle: style blocks`` — SDXL ``up_blocks.0.attentions.1`` = output 1; SD1.5
  ``up_blocks.1`` = output 3, 4, 5 (InstantStyle's SD1.5 example, marked experimental there);
* ``all`` — every layer the adapter has weights for (CSGO's style branch: the up blocks only);
* ``custom`` — only the blocks named in ``block_weights``, at those weights.
"""
from __future__ import annotations

import math

import torch

from ..attention.adapter_attention import adapter_contribution
from ..attention.joint import add_joint_contribution, joint_contributions
from ..attention.families import TEACHER
from ..attention.joint_teacher import joint_teacher_contribution
from ..attention.layers import UnsupportedModelError, model_layers
from ..attention.router import add_contribution, installed_patch
from ..attention.teacher import TeacherWrapper, teacher_layout_contribution
from ..errors import InputError
from .ip_adapter import StyleAdapter

PRESETS = ("StyleStudio: all up blocks", "InstantStyle: style blocks", "all", "custom")


def preset_keys(layers, preset: str, block_weights: dict, available) -> list[tuple]:
    """The attn2 keys a preset patches, among those the adapter has weights for."""
    if preset == "StyleStudio: all up blocks":
        keys = layers.select("output")
    elif preset == "InstantStyle: style blocks":
        keys = layers.select("instantstyle_style")
    elif preset == "all":
        keys = layers.keys
    elif preset == "custom":
        if not block_weights:
            raise InputError("preset 'custom' patches the blocks named in block_weights, e.g. 'output 1=1.0'; "
                             "none were given")
        keys = layers.select(list(block_weights))
    else:
        raise InputError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    chosen = [k for k in keys if k in available]
    if not chosen:
        raise InputError(f"preset {preset!r} selects no layer this adapter has weights for "
                         f"(it has {sorted({k[:2] for k in available})})")
    return chosen


def image_tokens(adapter: StyleAdapter, features: torch.Tensor) -> torch.Tensor:
    """Features of N images -> (1, N * tokens, context): several references are one longer token set."""
    t = adapter.encode(features)
    return t.reshape(1, -1, t.shape[-1])


def style_adapter_model(model, adapter: StyleAdapter, style_features: torch.Tensor,
                        negative_features: torch.Tensor | None = None, fusion: str = "cross-modal AdaIN",
                        preset: str = PRESETS[0], weight: float = 1.0, sigma_start=math.inf, sigma_end=0.0,
                        block_weights=None, mask: torch.Tensor | None = None):
    """A clone of ``model`` with the adapter's image branch on the preset's cross-attention layers.

    ``negative_features`` (style-based CFG) replace the zero features whose tokens the unconditional
    branch gets otherwise; one negative image serves every style image.
    """
    layers = model_layers(model)
    projections = adapter.bind(layers)  # pairing errors before any sampling
    block_weights = dict(block_weights or {})
    keys = preset_keys(layers, preset, block_weights, projections)
    cond = image_tokens(adapter, style_features)
    if negative_features is None:
        uncond = image_tokens(adapter, torch.zeros_like(style_features))
    else:
        neg = adapter.encode(negative_features)
        if neg.shape[0] not in (1, style_features.shape[0]):
            raise InputError(f"{neg.shape[0]} negative style images for {style_features.shape[0]} style images; "
                             "give one, or one per style image")
        uncond = neg.expand(style_features.shape[0], -1, -1).reshape(1, -1, neg.shape[-1])
    if mask is not None:
        mask = mask if mask.ndim == 3 else mask[None]
    m = model.clone()
    contribution = adapter_contribution(cond, uncond, {k: projections[k] for k in keys}, fusion, weight,
                                        sigma_start, sigma_end, block_weights, mask, name="style_adapter")
    add_contribution(m, contribution, keys, "attn2")
    return m


def teacher_model(model, fraction: float, fallback_sigma: float, prompt_tokens: int | None = None):
    """A clone whose first ``fraction`` of steps runs a teacher sample beside the stylised one.

    On a DiT (Flux) the teacher acts in joint attention (:mod:`..attention.joint_teacher`); ``prompt_tokens``
    is the prompt's context length before style tokens (Redux), which the teacher must not see."""
    layers = model_layers(model)
    layers.require(TEACHER, "StyleKit Teacher Layout")
    if prompt_tokens is not None and layers.is_dit and not layers.spec.hooks.returned_mask:
        raise UnsupportedModelError(f"on {layers.title} the teacher cannot hide style tokens from its map (the blocks "
                                    "ignore an attention mask a patch returns): leave unstyled_conditioning unconnected")
    m = model.clone()
    previous = m.model_options.get("model_function_wrapper")
    if isinstance(previous, TeacherWrapper):  # a second Teacher Layout node re-sets the fraction
        previous = previous.previous
    m.set_model_unet_function_wrapper(TeacherWrapper(fraction, fallback_sigma, previous))
    if layers.is_dit:
        if not any(c.name == "teacher_layout" for c in joint_contributions(m.model_options)):
            add_joint_contribution(m, joint_teacher_contribution(prompt_tokens), layers.keys)
        return m
    first = installed_patch(m.model_options, "attn1", layers.keys[0])
    if not any(c.name == "teacher_layout" for c in getattr(first, "contributions", ())):
        add_contribution(m, teacher_layout_contribution(), layers.keys, "attn1")
    return m
