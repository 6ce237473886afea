"""MagicStyle / StyleID orchestration, host-agnostic (ComfyUI ModelPatcher or BridgePatcher).

1. :func:`invert_pair` inverts the content and style latents in ONE batched pass along an
   :class:`~.inversion.InversionSchedule` (SD: StyleID's official DDIM pipeline; Flux: the flow's Euler
   inversion; see :mod:`.inversion`) and fills a
   :class:`FeatureStore` with the attn1 inputs of the chosen layers (or, in ``recompute`` mode, keeps
   only the model inputs per sigma).
2. :func:`fusion_model` returns a clone of the model whose chosen attn1 layers run Feature Fusion
   Attention against the store; in ``recompute`` mode a model wrapper first re-runs the references
   at the current sigma to refresh the features (memory for one step).
3. :func:`start_latent`: the content's inverted latent, optionally AdaIN-ed to the style's, placed at
   the sampler's first sigma.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..attention.options import TEACHER_CHUNKS
from ..attention.feature_fusion import (
    FusionSettings,
    feature_fusion_contribution,
    recording_patch,
)
from ..attention.families import FEATURE_FUSION
from ..attention.joint import add_joint_contribution
from ..attention.joint_fusion import DiTRecorder, ReferencesDone, joint_fusion_contribution
from ..attention.layers import UnsupportedModelError, attention_modules, model_layers
from ..attention.router import (
    add_contribution,
    as_device,
    move_to,
    moved_patch,
    patch_models,
)
from ..errors import InputError
from .feature_store import FeatureStore, StorePolicy, _close
from .inversion import InversionResult, InversionSchedule, adain_latent, invert


def host_apply_model(model, x, sigma, context, transformer_options, extra_conds=None):
    """Denoised x0 (``BaseModel.apply_model`` of either host), running the patches in ``transformer_options``.

    ``extra_conds``: further model inputs by name (SDXL's ``y``), batched like ``x``.
    """
    extra = extra_conds or {}
    return model.model.apply_model(x, sigma, c_crossattn=context, transformer_options=transformer_options, **extra)


@dataclass
class Inversion:
    """What the DDIM Invert node hands to Feature Fusion (a STYLEKIT_INVERSION)."""
    result: InversionResult      # rows: 0 content, 1 style
    store: FeatureStore
    context: torch.Tensor        # the conditioning the references were inverted with, (2, T, C)
    extra_conds: dict = None     # further model inputs (SDXL: y), batch 2
    family: str = ""             # the registry family of the model it was made with: "sd15", "flux", ...
    widths: dict = None          # stored layer -> its attention width in that model
    grid: tuple = None           # DiT: the image-token rows and columns (a MASK is resized to them)

    def __deepcopy__(self, memo):
        return self


def _recorder(model, store, dit: bool):
    m = model.clone()
    if dit:  # the joint-attention hook of DiT blocks: q, k, v before RoPE
        m.set_model_patch(DiTRecorder(store), "attn1_patch")
    else:
        m.set_model_attn1_patch(recording_patch(store))
    return m


def invert_pair(model, content: torch.Tensor, style: torch.Tensor, context: torch.Tensor,
                schedule: InversionSchedule, policy: StorePolicy, progress=None, extra_conds=None) -> Inversion:
    """Invert content and style (each (1, C, H, W), model space) in one batch of 2.

    ``extra_conds``: model inputs besides the context, by name (SDXL's ``y``: pooled prompt + sizes).
    """
    if content.shape != style.shape:
        raise InputError(f"content latent {tuple(content.shape)} and style latent {tuple(style.shape)} differ in "
                         "size: resize both images to the same size before encoding")
    return invert_batch(model, torch.cat([content, style]), context, schedule, policy, progress, extra_conds)


def invert_batch(model, x0: torch.Tensor, context: torch.Tensor, schedule: InversionSchedule, policy: StorePolicy,
                 progress=None, extra_conds=None) -> Inversion:
    """Invert the latents ``x0`` (N, C, H, W) in one batch, recording their features (rows in order) at
    the sigmas the sampler will visit."""
    n = x0.shape[0]
    layers = model_layers(model)
    layers.require(FEATURE_FUSION, "Inversion with a feature store")
    if layers.is_dit and n != 2:
        raise InputError(f"a DiT inversion records one content and one style image (batch 2), got {n}")
    policy.layers = tuple(policy.layers) or tuple(layers.select("all"))
    store = FeatureStore(policy, sigmas=[float(s) for s in schedule.sample_sigmas[:-1]])
    rec = _recorder(model, store, layers.is_dit)
    ctx = context.expand(n, -1, -1) if context.shape[0] == 1 else context
    extra = {k: v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in (extra_conds or {}).items()}
    all_sigmas = store.sigmas

    def eps_fn(x, sigma):
        sig = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
        to = dict(rec.model_options["transformer_options"], sigmas=sig, cond_or_uncond=[0])
        store.recording = (policy.mode == "store" and store.has(sigma)  # not the step the sampler skips
                           and store.wants_step(sigma, all_sigmas))
        try:
            with torch.no_grad():
                x0_hat = host_apply_model(rec, x, sig, ctx, to, extra)
        finally:
            store.recording = False
        return (x - x0_hat) / sigma

    result = invert(eps_fn, x0, schedule, callback=progress)
    widths = {k: layers.by_key(k).channels for k in policy.layers}
    patch = layers.spec.patch
    grid = (x0.shape[-2] // patch, x0.shape[-1] // patch) if layers.is_dit else None
    return Inversion(result, store, ctx, extra, layers.family, widths, grid)


def check_inversion_fits(inv: Inversion, model) -> None:
    """The model must be the one the inversion was made with (family and widths of the stored layers)."""
    layers = model_layers(model)
    theirs = f"{inv.family} model" if inv.family else "model"
    if inv.family and layers.family != inv.family:
        raise UnsupportedModelError(f"the inversion was made with an {theirs}; this model is {layers.family}. "
                                    "Feature Fusion needs the model the references were inverted with")
    have = {k: layers.by_key(k).channels for k in (inv.widths or {}) if k in layers.keys}
    differ = [f"{k[0]} {k[1]}: {inv.widths[k]} vs {have.get(k, 'absent')}" for k in (inv.widths or {})
              if have.get(k) != inv.widths[k]]
    if differ:
        raise UnsupportedModelError(f"the inversion's layers do not fit this model (inverted vs this model: "
                                    f"{', '.join(differ[:4])}); invert the references with this model")


def start_latent(inv: Inversion, adain: bool = True) -> torch.Tensor:
    content, style = inv.result.latent[0:1], inv.result.latent[1:2]
    return adain_latent(content, style) if adain else content.clone()


def fusion_model(model, inv: Inversion, settings: FusionSettings, weight: float = 1.0, mask=None,
                 sigma_start=math.inf, sigma_end=0.0, block_weights=None):
    """A clone of ``model`` whose recorded layers fuse content and style features in attn1 (SD) or in
    joint attention (Flux); ``block_weights`` multiplies ``weight`` per block key (2- or 3-part)."""
    store = inv.store
    keys = list(store.policy.layers)
    check_inversion_fits(inv, model)
    layers = model_layers(model)
    dit = layers.is_dit
    hooks = layers.spec.hooks if dit else None  # refused up front what the blocks' hooks cannot do (see JointRouter)
    blended = weight != 1.0 or mask is not None or any(w != 1.0 for w in (block_weights or {}).values())
    if hooks and not hooks.output_hook and blended:
        raise UnsupportedModelError(f"Feature Fusion on {layers.title} runs at weight 1, with no MASK and no block "
                                    "weights: its blocks have no attention output hook, which blending the fused and "
                                    "plain attention needs")
    if hooks and not hooks.returned_mask:
        if settings.content_kv not in (0.0, 1.0):
            raise UnsupportedModelError(f"Feature Fusion on {layers.title} takes content_kv 0 (StyleID) or 1 "
                                        "(MagicStyle): another mass needs an attention mask, which its blocks ignore")
        if settings.content_kv > 0 and "attention_mask" in (inv.extra_conds or {}):
            raise UnsupportedModelError(f"this {layers.title} prompt carries a text mask, built for the block's own "
                                        "keys: the content's keys beside the style's (content_kv above 0) do not fit "
                                        "it; use content_kv 0 (StyleID)")
    m = _recorder(model, store, dit) if store.policy.mode == "recompute" else model.clone()
    if dit:
        add_joint_contribution(m, joint_fusion_contribution(store, settings, weight, mask, inv.grid, sigma_start,
                                                            sigma_end, block_weights=block_weights), keys)
    else:
        modules = attention_modules(model, "attn1")
        add_contribution(m, feature_fusion_contribution(store, settings, {k: modules[k] for k in keys}, weight, mask,
                                                        sigma_start, sigma_end, block_weights=block_weights),
                         keys, "attn1")
    if store.policy.mode == "recompute":
        m.set_model_unet_function_wrapper(RecomputeWrapper(
            store, inv.result.inputs, inv.context, inv.extra_conds or {},
            m.model_options["transformer_options"], m.model_options.get("model_function_wrapper")))
    return m


class RecomputeWrapper:
    """``model_function_wrapper`` of recompute mode: before each UNet call, re-run the references at
    the current sigma (their inverted latents ``inputs``) so the store holds this step's features.

    ``.to(device)`` (ComfyUI loading or offloading the model) returns a wrapper on moved copies of the
    reference inputs and moves the shared store."""

    def __init__(self, store, inputs: dict, context, extra_conds: dict, transformer_options: dict, inner=None):
        self.store, self.inputs, self.context, self.extra_conds = store, inputs, context, extra_conds
        self.transformer_options, self.inner = transformer_options, inner

    def to(self, device_or_dtype):
        device = as_device(device_or_dtype)
        inner = moved_patch(self.inner, device_or_dtype)
        if device is None:
            return self if inner is self.inner else RecomputeWrapper(
                self.store, self.inputs, self.context, self.extra_conds, self.transformer_options, inner)
        self.store.move_to(device)
        return RecomputeWrapper(self.store, move_to(self.inputs, device), self.context.to(device),
                                move_to(self.extra_conds, device), self.transformer_options, inner)

    def models(self) -> list:
        return patch_models(self.inner)

    def __call__(self, apply_model, args):
        store = self.store
        sigma = float(args["timestep"].reshape(-1)[0])
        to = dict(args["c"].get("transformer_options", self.transformer_options))
        to.pop(TEACHER_CHUNKS, None)  # the references run alone, with no teacher rows beside them
        x_ref = _nearest(self.inputs, sigma)
        dev = args["input"].device
        sig = torch.full((2,), sigma, device=dev, dtype=x_ref.dtype)
        extra = {k: v.to(dev) for k, v in self.extra_conds.items()}
        store.current.clear()
        store.recording = True
        try:
            with torch.no_grad():
                apply_model(x_ref.to(dev), sig, c_crossattn=self.context.to(dev),
                            transformer_options=dict(to, sigmas=sig, cond_or_uncond=[0]), **extra)
        except ReferencesDone:  # a DiT recorder stops the pass after the last stored block
            pass
        finally:
            store.recording = False
        if self.inner is not None:
            return self.inner(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])


def _nearest(inputs: dict, sigma: float):
    for s, x in inputs.items():
        if _close(sigma, s):
            return x
    raise InputError(f"no inversion step at sigma {sigma:.4f}; inverted sigmas: {sorted(inputs, reverse=True)[:8]}")
