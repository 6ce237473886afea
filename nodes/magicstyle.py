"""MagicStyle / StyleID nodes: Invert (content + style, one pass) and Feature Fusion, on SD1.5 / SDXL / Flux.1 / Flux.2."""
import torch

from ..attention.families import FEATURE_FUSION, late_double
from ..attention.feature_fusion import PRESETS, STYLEID_BLOCKS, FusionSettings
from ..attention.layers import UnsupportedModelError, model_layers, parse_block_weights
from ..models.feature_store import StorePolicy
from ..models.inversion import every_step_schedule, styleid_schedule
from ..models.magicstyle import (
    fusion_model,
    invert_pair,
    start_latent,
)
from ..models.schedules import ddim_uniform_sigmas, simple_sigmas
from . import checks, comfy_glue, specs
from .checks import boundary


def family_default_blocks(layers):
    """The family's Feature Fusion default from its registry entry: StyleID's output 6-11 on SD1.5, the finest
    decoder attention level (output 3-5) on SDXL, the late double blocks on Flux."""
    return layers.select(FEATURE_FUSION)


AUTO_BLOCKS = "auto (SD1.5: output 6-11, SDXL: output 3-5, Flux: late double)"
BLOCK_SETS = {  # name -> (UNet blocks, DiT blocks); None: not for that kind of model
    AUTO_BLOCKS: (family_default_blocks, family_default_blocks),
    "output 6-11 (StyleID)": (STYLEID_BLOCKS, None),
    "output (all decoder)": ("output", None),
    "late double (Flux)": (None, late_double),
    "double (Flux)": (None, "double"),
    "single (Flux)": (None, "single"),
    "all": ("all", "all"),
}
# store_blocks as the widget offers it; auto's old name (before SDXL had its own default) stays accepted
STORE_BLOCKS = specs.Choices(BLOCK_SETS, {"auto (SD: output 6-11, Flux: late double)": AUTO_BLOCKS})
MODES = {"auto (SD: store, Flux: recompute)": ("store", "recompute"), "store": ("store", "store"),
         "recompute": ("recompute", "recompute")}


def blocks_for(layers, name: str) -> list:
    spec = BLOCK_SETS[name][1 if layers.is_dit else 0]
    if spec is None:
        fits = [n for n, v in BLOCK_SETS.items() if v[1 if layers.is_dit else 0] is not None]
        raise UnsupportedModelError(f"store_blocks {name!r} is not for a {layers.title} model; "
                                    f"choose one of: {', '.join(fits)}")
    blocks = spec(layers) if callable(spec) else layers.select(spec)
    if not blocks:  # e.g. the double blocks of a DiT with single blocks only (Krea 2)
        raise UnsupportedModelError(f"store_blocks {name!r} names no attention block of this {layers.title} model; "
                                    f"its blocks: {', '.join(sorted({k[0] for k in layers.keys}))}")
    return blocks


STYLEID_DDIM = "StyleID (official DDIM, skips the top step)"
EVERY_STEP = "every step (eps at the next sigma)"
CONVENTIONS = (STYLEID_DDIM, EVERY_STEP)


def inversion_schedule(model, layers, steps: int, convention: str = STYLEID_DDIM):
    """SD: StyleID's official DDIM pipeline (its own timesteps: ComfyUI's ``ddim_uniform`` ones when the steps
    divide 1000), or every step of ``ddim_uniform``; flow models (Flux): the flow's Euler inversion over the
    ``simple`` scheduler (Flux's usual)."""
    ms = comfy_glue.model_sampling(model)
    if layers.spec.flow:
        return every_step_schedule(simple_sigmas(ms, steps))
    if convention == EVERY_STEP:
        return every_step_schedule(ddim_uniform_sigmas(ms, steps))
    return styleid_schedule(ms, steps)


class StyleKitDDIMInvert:
    CATEGORY = "StyleKit/MagicStyle"
    DESCRIPTION = ("Inverts a content and a style latent in one batched pass, recording the self-attention "
                   "features for Feature Fusion. SD: StyleID's official DDIM pipeline (eps read at the current "
                   "timestep from t = 1 up to t = 999; sampling skips the top timestep and ends at t = 0), or "
                   "every step of ddim_uniform (convention). "
                   "Flux: the flow's Euler inversion on the simple scheduler, with the conditioning's guidance. "
                   "SD1.5, SDXL, Flux.1, Flux.2 (dev / Klein), Krea 2 and Qwen-Image.")
    RETURN_TYPES = ("STYLEKIT_INVERSION", "LATENT", "SIGMAS")
    RETURN_NAMES = ("inversion", "inverted", "sigmas")
    OUTPUT_TOOLTIPS = ("Inverted trajectories and stored features; feed StyleKit Feature Fusion.",
                       "The inverted latents (batch of 2: content, style), placed at the first of the sigmas output: "
                       "sample them on those sigmas with add_noise off.",
                       "The exact schedule to sample, as it is (no SplitSigmas). SD, StyleID: the DDIM timesteps "
                       "without the top one (StyleID skips it), ending at t = 0; every step: ddim_uniform's sigmas; "
                       "Flux: the simple sigmas inverted over.")
    FUNCTION = "invert"
    VALIDATE_INPUTS = checks.validation(store_blocks=checks.one_of(STORE_BLOCKS, "store_blocks"))

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to invert with (the one you sample with): SD1.5, SDXL, Flux.1 (dev / schnell), Flux.2 (dev / Klein), Krea 2 or Qwen-Image. StyleID and MagicStyle were published on SD1.5; Flux is StyleKit's port to joint attention."}),
            "content": ("LATENT", {"tooltip": "VAE-encoded content image (first of the batch is used)."}),
            "style": ("LATENT", {"tooltip": "VAE-encoded style image, same size as the content."}),
            "conditioning": ("CONDITIONING", {"tooltip": "Prompt used while inverting; StyleID uses an empty prompt. On Flux-dev, FluxGuidance's value is used (1.0 inverts most faithfully)."}),
            "steps": ("INT", {"default": 50, "min": 2, "max": 1000, "tooltip": "Inversion steps (StyleID: 50). Sample on the sigmas output as it is: with StyleID's convention it has one step fewer (the top timestep is skipped). Flux-dev is usually sampled in 20-30."}),
            "store_blocks": (STORE_BLOCKS, {"default": AUTO_BLOCKS, "tooltip": "Attention layers whose features are stored and fused. SD: self-attention inputs (q/k/v are their projections); Flux: the image tokens' q/k/v of joint attention. auto: StyleID's output 6-11 on SD1.5, the finest decoder attention level (output 3-5) on SDXL, late double blocks on Flux. The '(Flux)' sets are for Flux only, the 'output' sets for SD only (output 6-11 exists on SD1.5 only)."}),
            "store_dtype": (["fp16", "fp32"], {"default": "fp16", "tooltip": "Precision of stored features (fp16 halves memory)."}),
            "store_device": (["model device", "cpu"], {"default": "model device", "tooltip": "Keep features on the GPU or offload them to CPU memory."}),
            "mode": (list(MODES), {"default": "auto (SD: store, Flux: recompute)", "tooltip": "store: keep features of every step; recompute: keep only latents and recompute features each step (one step of memory; each step also runs the two references). Flux stores are large (13 blocks x 28 steps at 1024 px: 46 GB), hence recompute there by default."}),
        }, "optional": {
            "convention": (list(CONVENTIONS), {"default": STYLEID_DDIM, "tooltip": "SD only. StyleID's official pipeline: eps read at each timestep from t = 1 up to t = 999, sampling skips the top timestep and ends at t = 0 (reproduces the official code). every step: eps read at the next sigma from sigma 0, sampling runs every step to 0 (reconstructs and keeps the palette better at few steps; README). Flux always uses the flow's Euler inversion, which is the second kind."}),
        }}

    @boundary
    def invert(self, model, content, style, conditioning, steps, store_blocks, store_dtype, store_device, mode,
               convention=STYLEID_DDIM):
        layers = model_layers(model)
        layers.require(FEATURE_FUSION, "StyleKit DDIM Invert")
        blocks = blocks_for(layers, store_blocks)
        checks.latent_for(model, content["samples"], "content")
        checks.latent_for(model, style["samples"], "style")
        checks.conditioning_for(layers, conditioning, "conditioning")
        device = comfy_glue.load(model)
        c = comfy_glue.latent_in(model, content["samples"][:1].to(device))
        s = comfy_glue.latent_in(model, style["samples"][:1].to(device))
        ctx, extra = comfy_glue.model_conds(model, conditioning, c, device)
        policy = StorePolicy(layers=tuple(blocks), dtype=torch.float16 if store_dtype == "fp16" else torch.float32,
                             device="cpu" if store_device == "cpu" else None, mode=MODES[mode][int(layers.is_dit)])
        schedule = inversion_schedule(model, layers, steps, convention)
        inv = invert_pair(model, c, s, ctx, schedule, policy, progress=comfy_glue.progress(len(schedule.calls())),
                          extra_conds=extra)
        return (inv, {"samples": comfy_glue.latent_out(model, inv.result.latent).cpu()}, schedule.sample_sigmas)


def preset_values() -> str:
    """Each preset's gamma / temperature / content_kv, as its tooltip states them."""
    return "; ".join(f"{name}: gamma {p.gamma:g}, temperature {p.temperature:g}, content_kv {p.content_kv:g}"
                     for name, p in PRESETS.items())


class StyleKitFeatureFusion:
    CATEGORY = "StyleKit/MagicStyle"
    DESCRIPTION = ("Feature Fusion Attention on the inverted layers: q' = gamma*q_content + (1-gamma)*q, "
                   "K/V from the style (plus the content's at mass content_kv), logits x temperature. "
                   "StyleID: gamma 0.75, T 1.5, style K/V only. MagicStyle (our reading of the paper): "
                   "gamma 0.75, T 1.0, content and style K/V at equal mass. On Flux.1 / Flux.2 the same acts on the "
                   "image tokens of joint attention (the references' keys at their own RoPE positions); the text "
                   "tokens, the image tokens' reading of the prompt and an edit's reference latents stay as they were.")
    RETURN_TYPES = ("MODEL", "LATENT", "NOISE")
    RETURN_NAMES = ("model", "start_latent", "start_noise")
    OUTPUT_TOOLTIPS = (specs.PATCHED_MODEL,
                       "Start latent: the content's inverted latent, AdaIN-ed to the style's if enabled, placed at "
                       "the inversion's first sigma. SD: sample it with SamplerCustom, add_noise off, on the "
                       "inversion's sigmas as they are.",
                       "The same start as a NOISE for SamplerCustomAdvanced (its latent_image: the content latent), "
                       "on the inversion's sigmas. Flux needs this one: a flow sampler's add_noise-off start "
                       "multiplies the latent by 1 - sigma, which is 0 at Flux's first sigma.")
    FUNCTION = "apply"
    VALIDATE_INPUTS = checks.validation(block_weights=checks.block_weights_text)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model the references were inverted with (SD1.5, SDXL, Flux.1, Flux.2, Krea 2 or Qwen-Image; on Qwen-Image at weight 1 with no mask)."}),
            "inversion": ("STYLEKIT_INVERSION", {"tooltip": "From StyleKit DDIM Invert."}),
            "preset": (list(PRESETS) + ["custom"], {"default": "StyleID", "tooltip": f"{preset_values()}; custom shows and uses the three values below (a preset hides and ignores them)."}),
            "gamma": specs.shown_with("preset", "custom", ("FLOAT", {"default": 0.75, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "query preservation (weight of the content's query)."})),
            "temperature": specs.shown_with("preset", "custom", ("FLOAT", {"default": 1.5, "min": 0.1, "max": 5.0, "step": 0.05, "tooltip": "multiplies attention logits (>1 sharpens)."})),
            "content_kv": specs.shown_with("preset", "custom", ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip": "attention mass of the content's own keys/values beside the style's (0 = style only)."})),
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Blend of fused and plain self-attention output."}),
            "adain_start": ("BOOLEAN", {"default": True, "tooltip": "Start from the content latent AdaIN-ed (per channel) to the style latent."}),
            **specs.percent_window("Fusion"),
        }, "optional": {
            **specs.region_mask("Where the fusion acts: 1 (white) = styled, 0 = plain self-attention (e.g. black over a face to keep it)."),
            "block_weights": specs.block_weights("Per-block multipliers of weight among the inverted blocks, e.g. 'output 9=0.5' (SD) or 'double 10=0, single 3=0.5' (Flux); empty: all 1."),
        }}

    @boundary
    def apply(self, model, inversion, preset, gamma, temperature, content_kv, weight, adain_start,
              start_percent, end_percent, mask=None, invert_mask=False, block_weights=""):
        settings = PRESETS[preset] if preset in PRESETS else FusionSettings(gamma, temperature, content_kv)
        hi, lo = comfy_glue.percent_window(model, start_percent, end_percent)
        if mask is not None:  # one content image was inverted: one mask
            mask = checks.mask_for(mask, 1, what="inverted content image")[0]
            mask = 1 - mask if invert_mask else mask
        weights = parse_block_weights(block_weights, model_layers(model))
        m = fusion_model(model, inversion, settings, weight, mask, hi, lo, weights)
        x = start_latent(inversion, adain_start)
        noise = comfy_glue.StartNoise(model, x, float(inversion.result.sigmas[0]))
        return (m, {"samples": comfy_glue.latent_out(model, x).cpu()}, noise)
