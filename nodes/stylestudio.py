"""StyleStudio nodes: Adapter Loader (models/ipadapter), Style Adapter (MODEL), Teacher Layout (MODEL; SD and Flux)."""
import torch

from ..attention.adapter_attention import FUSIONS
from ..attention.layers import model_layers, parse_block_weights
from ..models.ip_adapter import load_adapter
from ..models.stylestudio import PRESETS, preset_keys, style_adapter_model, teacher_model
from . import checks, comfy_glue, specs
from .checks import boundary

FOLDER = "ipadapter"
comfy_glue.register_folder(FOLDER, (".safetensors", ".bin"))


MAX_STYLE_IMAGES = 16  # each reference image lengthens every cross-attention by its tokens

class StyleKitAdapterLoader:
    CATEGORY = "StyleKit/StyleStudio"
    DESCRIPTION = ("Loads an IP-Adapter (SD1.5 or SDXL; plain or 'plus') or CSGO's style branch (csgo_4_32.bin) "
                   "from models/ipadapter. .safetensors preferred; .bin files are read as plain tensors only.")
    RETURN_TYPES = ("STYLEKIT_ADAPTER",)
    RETURN_NAMES = ("adapter",)
    OUTPUT_TOOLTIPS = ("Adapter weights; feed StyleKit Style Adapter.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"adapter_name": (comfy_glue.list_files(FOLDER), {
            "tooltip": "IP-Adapter / CSGO file in ComfyUI/models/ipadapter. Pair it with its CLIP vision model: "
                       "SD1.5 and *_vit-h files use ViT-H, ip-adapter_sdxl and CSGO use ViT-bigG."})}}

    @boundary
    def load(self, adapter_name):
        return (load_adapter(comfy_glue.full_path(FOLDER, adapter_name)),)


class StyleKitStyleAdapter:
    CATEGORY = "StyleKit/StyleStudio"
    DESCRIPTION = ("Image-prompt style on the cross-attention layers: the adapter's image attention is added to the "
                   "text attention (IP-Adapter) or, with cross-modal AdaIN (StyleStudio), the text attention is "
                   "re-normalised to the image attention's per-channel mean and std. A negative style image "
                   "(same content, no style) replaces the zero image tokens of the unconditional branch "
                   "(StyleStudio's style-based CFG).")
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = (specs.PATCHED_MODEL,)
    FUNCTION = "apply"
    VALIDATE_INPUTS = checks.validation(block_weights=checks.block_weights_text)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "SD1.5 or SDXL model matching the adapter."}),
            "adapter": ("STYLEKIT_ADAPTER", {"tooltip": "From StyleKit Adapter Loader."}),
            "clip_vision": ("CLIP_VISION", {"tooltip": "The CLIP vision model the adapter was trained with (Load CLIP Vision)."}),
            "image": specs.image("Style reference image(s); several images give one longer set of image tokens.", MAX_STYLE_IMAGES),
            "fusion": (list(FUSIONS), {"default": FUSIONS[0], "tooltip": "cross-modal AdaIN: StyleStudio's fusion (weight 1 = the paper); add: text + weight x image attention (IP-Adapter)."}),
            "preset": (list(PRESETS), {"default": PRESETS[0], "tooltip": "Which cross-attention blocks get the style: all up blocks (StyleStudio), InstantStyle's style block(s), every layer, or custom (the blocks named in block_weights)."}),
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05, "tooltip": "Style strength; 0 leaves the model plain."}),
            **specs.percent_window("The style"),
            "block_weights": specs.block_weights("Per-block multipliers of weight, e.g. 'output 1=1, output 2=0.5' (with preset custom: the blocks to patch)."),
        }, "optional": {
            "negative_style_image": specs.image("Style-based CFG: an image with the reference's content and layout but no style (e.g. made with Canny ControlNet on a photo-real model); its tokens replace the zero image tokens of the unconditional branch, so it acts only where one runs: at CFG above 1 (at CFG 1, as distilled models such as SDXL Turbo or LCM sample, ComfyUI runs none).", MAX_STYLE_IMAGES),
            **specs.region_mask("Where the style acts: 1 (white) = styled, 0 = untouched; resized to every block."),
        }}

    @boundary
    def apply(self, model, adapter, clip_vision, image, fusion, preset, weight, start_percent, end_percent,
              block_weights, negative_style_image=None, mask=None, invert_mask=False):
        hi, lo = comfy_glue.percent_window(model, start_percent, end_percent)
        # the cheap checks first: the pairing, preset and block weights refuse before any image is encoded
        layers = model_layers(model)
        weights = parse_block_weights(block_weights, layers)
        preset_keys(layers, preset, weights, adapter.bind(layers))
        why = "each image adds its tokens to every cross-attention"
        checks.at_most(image, MAX_STYLE_IMAGES, "image", why)
        if negative_style_image is not None:
            checks.at_most(negative_style_image, MAX_STYLE_IMAGES, "negative_style_image", why)
        with torch.no_grad():
            style = comfy_glue.vision_features(clip_vision, image, adapter.feature)
            negative = None if negative_style_image is None else \
                comfy_glue.vision_features(clip_vision, negative_style_image, adapter.feature, "negative_style_image")
        if mask is not None and invert_mask:
            mask = 1 - mask
        return (style_adapter_model(model, adapter, style, negative, fusion, preset, weight, hi, lo, weights, mask),)


class StyleKitTeacherLayout:
    CATEGORY = "StyleKit/StyleStudio"
    DESCRIPTION = ("StyleStudio's teacher model: during the first steps a teacher sample without the style branch "
                   "runs in the same batch, and every self-attention of the stylised sample uses the teacher's "
                   "attention map with its own values, keeping the layout stable. Only the stylised images come "
                   "out. Costs about one extra model pass per step while it acts. SD1.5 / SDXL (with StyleKit "
                   "Style Adapter) and Flux.1 / Flux.2 (joint attention: the image tokens' map; with core Redux, "
                   "connect unstyled_conditioning).")
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the teacher (a clone; the input model is untouched).",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "SD1.5 / SDXL: a model patched by StyleKit Style Adapter. Flux.1 / Flux.2: the model you sample with; the style comes from the conditioning (core Redux / StyleModelApply)."}),
            "teacher_fraction": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.02, "tooltip": "Fraction of the sampling steps the teacher acts for (the paper: 20 of 50 = 0.4); 0 turns it off."}),
        }, "optional": {
            "unstyled_conditioning": ("CONDITIONING", {"tooltip": "Flux with Redux: the prompt's conditioning from before StyleModelApply. The teacher ignores the context tokens Redux appended after it, so it is a sample without the style. Not needed on SD (the Style Adapter skips the teacher itself)."}),
        }}

    @boundary
    def apply(self, model, teacher_fraction, unstyled_conditioning=None):
        fallback = float(comfy_glue.model_sampling(model).percent_to_sigma(teacher_fraction))
        if unstyled_conditioning is not None:
            checks.conditioning_for(model_layers(model), unstyled_conditioning, "unstyled_conditioning")
        prompt_tokens = None if unstyled_conditioning is None else int(unstyled_conditioning[0][0].shape[1])
        return (teacher_model(model, teacher_fraction, fallback, prompt_tokens),)
