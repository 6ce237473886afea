"""MagicStyle / StyleID nodes: DDIM Invert (content + style, one pass) and Feature Fusion."""
import torch

from ..attention.feature_fusion import PRESETS, STYLEID_BLOCKS, FusionSettings
from ..attention.layers import model_layers
from ..models.feature_store import StorePolicy
from ..models.magicstyle import ddim_uniform_sigmas, fusion_model, invert_pair, start_latent
from . import checks, comfy_glue
from .checks import MASK_TOOLTIP, boundary

BLOCK_SETS = {"output 6-11 (StyleID)": STYLEID_BLOCKS, "output (all decoder)": "output", "all": "all"}


class StyleKitDDIMInvert:
    CATEGORY = "StyleKit/MagicStyle"
    DESCRIPTION = ("DDIM-inverts a content and a style latent in one batched pass with the model's own "
                   "schedule (ddim_uniform), recording the self-attention inputs for Feature Fusion. SD1.5 and SDXL.")
    RETURN_TYPES = ("STYLEKIT_INVERSION", "LATENT", "SIGMAS")
    RETURN_NAMES = ("inversion", "inverted", "sigmas")
    OUTPUT_TOOLTIPS = ("Inverted trajectories and stored features; feed StyleKit Feature Fusion.",
                       "The inverted latents (batch of 2: content, style).",
                       "The exact sigmas inverted over: sample with SamplerCustom on these.")
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD1.5/SDXL model to invert with (the one you sample with). StyleID and MagicStyle were published on SD1.5."}),
            "content": ("LATENT", {"tooltip": "VAE-encoded content image (first of the batch is used)."}),
            "style": ("LATENT", {"tooltip": "VAE-encoded style image, same size as the content."}),
            "conditioning": ("CONDITIONING", {"tooltip": "Prompt used while inverting; StyleID uses an empty prompt."}),
            "steps": ("INT", {"default": 50, "min": 2, "max": 1000, "tooltip": "DDIM steps; the sampler must use the same (use the sigmas output)."}),
            "store_blocks": (list(BLOCK_SETS), {"default": "output 6-11 (StyleID)", "tooltip": "Self-attention layers whose inputs are stored (q/k/v are their projections) and fused."}),
            "store_dtype": (["fp16", "fp32"], {"default": "fp16", "tooltip": "Precision of stored features (fp16 halves memory)."}),
            "store_device": (["model device", "cpu"], {"default": "model device", "tooltip": "Keep features on the GPU or offload them to CPU memory."}),
            "mode": (["store", "recompute"], {"default": "store", "tooltip": "store: keep features of every step; recompute: keep only latents and recompute features each step (one step of memory, ~2x compute)."}),
        }}

    @boundary
    def invert(self, model, content, style, conditioning, steps, store_blocks, store_dtype, store_device, mode):
        layers = model_layers(model)
        layers.require("sd15", "sdxl", method="StyleKit DDIM Invert")
        device = comfy_glue.load(model)
        c = comfy_glue.latent_in(model, content["samples"][:1].to(device))
        s = comfy_glue.latent_in(model, style["samples"][:1].to(device))
        ctx, extra = comfy_glue.model_conds(model, conditioning, c, device)
        policy = StorePolicy(layers=tuple(layers.select(BLOCK_SETS[store_blocks])),
                             dtype=torch.float16 if store_dtype == "fp16" else torch.float32,
                             device="cpu" if store_device == "cpu" else None, mode=mode)
        sigmas = ddim_uniform_sigmas(comfy_glue.model_sampling(model), steps)
        inv = invert_pair(model, c, s, ctx, sigmas.to(device), policy, progress=comfy_glue.progress(steps),
                          extra_conds=extra)
        return (inv, {"samples": comfy_glue.latent_out(model, inv.result.latent).cpu()}, sigmas)


class StyleKitFeatureFusion:
    CATEGORY = "StyleKit/MagicStyle"
    DESCRIPTION = ("Feature Fusion Attention on the inverted layers: q' = gamma*q_content + (1-gamma)*q, "
                   "K/V from the style (plus the content's at mass content_kv), logits x temperature. "
                   "StyleID: gamma 0.75, T 1.5, style K/V only. MagicStyle (our reading of the paper): "
                   "gamma 0.75, T 1.0, content and style K/V at equal mass.")
    RETURN_TYPES = ("MODEL", "LATENT")
    RETURN_NAMES = ("model", "start_latent")
    OUTPUT_TOOLTIPS = ("The patched model (a clone; the input model is untouched).",
                       "Start latent: the content's inverted latent, AdaIN-ed to the style's if enabled. "
                       "Sample it with SamplerCustom, add_noise off, on the inversion's sigmas.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model the references were inverted with."}),
            "inversion": ("STYLEKIT_INVERSION", {"tooltip": "From StyleKit DDIM Invert."}),
            "preset": (list(PRESETS) + ["custom"], {"default": "StyleID", "tooltip": "StyleID or MagicStyle settings; custom uses the three values below."}),
            "gamma": ("FLOAT", {"default": 0.75, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "custom only: query preservation (weight of the content's query)."}),
            "temperature": ("FLOAT", {"default": 1.5, "min": 0.1, "max": 5.0, "step": 0.05, "tooltip": "custom only: multiplies attention logits (>1 sharpens)."}),
            "content_kv": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip": "custom only: attention mass of the content's own keys/values beside the style's (0 = style only)."}),
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Blend of fused and plain self-attention output."}),
            "adain_start": ("BOOLEAN", {"default": True, "tooltip": "Start from the content latent AdaIN-ed (per channel) to the style latent."}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fusion starts at this fraction of sampling."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fusion ends at this fraction of sampling."}),
        }, "optional": {
            "mask": ("MASK", {"tooltip": "Where the fusion acts: 1 (white) = styled, 0 = plain self-attention (e.g. black over a face to keep it)." + MASK_TOOLTIP}),
            "invert_mask": ("BOOLEAN", {"default": False, "tooltip": "Use 1 - mask: style everything but the white region."}),
        }}

    @boundary
    def apply(self, model, inversion, preset, gamma, temperature, content_kv, weight, adain_start,
              start_percent, end_percent, mask=None, invert_mask=False):
        settings = PRESETS[preset] if preset in PRESETS else FusionSettings(gamma, temperature, content_kv)
        hi, lo = comfy_glue.percent_window(model, start_percent, end_percent)
        if mask is not None:  # one content image was inverted: one mask
            mask = checks.mask_for(mask, 1, what="inverted content image")[0]
            mask = 1 - mask if invert_mask else mask
        m = fusion_model(model, inversion, settings, weight, mask, hi, lo)
        x = start_latent(inversion, adain_start)
        return (m, {"samples": comfy_glue.latent_out(model, x).cpu()})
