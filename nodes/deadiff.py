"""DEADiff nodes: Extract (official checkpoint -> safetensors, once), Loader (extracted safetensors),
Encode (CLIP_VISION + IMAGE -> tokens), Apply (MODEL)."""
from pathlib import Path

import torch

from ..attention.layers import model_layers, parse_block_weights
from ..errors import InputError
from ..models.clip_preprocess import deadiff_pixels
from ..models.deadiff import BRANCHES, load_deadiff
from ..models.deadiff_inject import SPLITS, DEADiffTokens, deadiff_model, mix
from . import checks, comfy_glue, specs
from .checks import boundary

FOLDER = "deadiff"
MAX_IMAGES = 64  # DEADiff Encode's batch: all are encoded at once
comfy_glue.register_folder(FOLDER, (".safetensors", ".ckpt", ".pt"))


class StyleKitDEADiffExtract:
    CATEGORY = "StyleKit/DEADiff"
    DESCRIPTION = ("One-time step: extracts DEADiff's image encoder (two Q-Formers and their projections) and the "
                   "attn2 image projections from the official deadiff_v1.ckpt (7.4 GB, put it in models/deadiff) "
                   "into a small models/deadiff/<filename>.safetensors that StyleKit DEADiff Loader reads. Only "
                   "tensors are read from the checkpoint, never pickled objects.")
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    OUTPUT_TOOLTIPS = ("What was written: the file, its tensor count and size.",)
    FUNCTION = "extract"
    VALIDATE_INPUTS = checks.validation(filename=checks.file_name)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "checkpoint": (comfy_glue.list_files(FOLDER, (".ckpt", ".pt")), {
                "tooltip": "The official deadiff_v1.ckpt in ComfyUI/models/deadiff."}),
            "filename": specs.output_name("deadiff", "deadiff_v1"),
        }}

    @boundary
    def extract(self, checkpoint, filename):
        from ..models.deadiff import extract_file
        target = comfy_glue.output_target(FOLDER, filename)  # checked before the long read
        tensors, path = extract_file(Path(comfy_glue.full_path(FOLDER, checkpoint)), target,
                                     progress=comfy_glue.progress(1))
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        report = f"wrote {path} ({len(tensors)} tensors, {size / 2**20:.1f} MiB)"
        return {"ui": {"text": [report]}, "result": (report,)}


class StyleKitDEADiffLoader:
    CATEGORY = "StyleKit/DEADiff"
    DESCRIPTION = ("Loads DEADiff's image encoder (two Q-Formers + projections) and its attn2 image projections "
                   "from models/deadiff. Make the file once from the official deadiff_v1.ckpt with StyleKit "
                   "DEADiff Extract (or tools/deadiff_extract.py).")
    RETURN_TYPES = ("STYLEKIT_DEADIFF",)
    RETURN_NAMES = ("deadiff",)
    OUTPUT_TOOLTIPS = ("DEADiff weights; feed StyleKit DEADiff Encode.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"deadiff_name": (comfy_glue.list_files(FOLDER, (".safetensors",)), {
            "tooltip": "Extracted DEADiff weights (.safetensors) in ComfyUI/models/deadiff."})}}

    @boundary
    def load(self, deadiff_name):
        return (load_deadiff(comfy_glue.full_path(FOLDER, deadiff_name)),)


class StyleKitDEADiffEncode:
    CATEGORY = "StyleKit/DEADiff"
    DESCRIPTION = ("Encodes reference images into DEADiff's 16 style and/or content tokens: CLIP ViT-L/14 "
                   "penultimate features of the image squashed to 224 px (the official preprocessing), then the "
                   "Q-Former instructed with 'style' or 'content'. Several images are mixed by weight.")
    RETURN_TYPES = ("STYLEKIT_DEADIFF_TOKENS",)
    RETURN_NAMES = ("tokens",)
    OUTPUT_TOOLTIPS = ("Style/content tokens; feed StyleKit DEADiff Apply (or another Encode's add_to).",)
    FUNCTION = "encode"
    VALIDATE_INPUTS = checks.validation(mix_weights=checks.weight_list)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "deadiff": ("STYLEKIT_DEADIFF", {"tooltip": "From StyleKit DEADiff Loader."}),
            "clip_vision": ("CLIP_VISION", {"tooltip": "CLIP ViT-L/14 vision model (Load CLIP Vision), as DEADiff was trained with."}),
            "image": specs.image("Reference image(s); a batch is mixed into one set of tokens.", MAX_IMAGES),
            "mode": (["style", "content", "both"], {"default": "style", "tooltip": "Which Q-Former branch(es) to run on these images."}),
            "mix_weights": ("STRING", {"default": "", "tooltip": "One weight per image of the batch, e.g. '1, 0.5'; empty = equal."}),
        }, "optional": {
            "add_to": ("STYLEKIT_DEADIFF_TOKENS", {"tooltip": "Tokens to extend, e.g. style from another image; the branch(es) encoded here replace theirs."}),
        }}

    @boundary
    def encode(self, deadiff, clip_vision, image, mode, mix_weights, add_to=None):
        weights = comfy_glue.number_list(mix_weights, float, "mix_weights")
        if add_to is not None and add_to.adapter is not deadiff:
            raise InputError("add_to tokens come from a different DEADiff model than this Encode's")
        if weights and len(weights) != image.shape[0]:  # refused before CLIP vision runs
            raise InputError(f"mix_weights gives {len(weights)} weights for {image.shape[0]} images; give one per image")
        checks.at_most(image, MAX_IMAGES, "image", "all are encoded at once and mixed into one set of tokens")
        with torch.no_grad():
            hidden = comfy_glue.vision_hidden_states(clip_vision, deadiff_pixels(image))
        device = next(deadiff.parameters()).device
        out = DEADiffTokens(deadiff) if add_to is None else DEADiffTokens(deadiff, add_to.style, add_to.content)
        for branch in BRANCHES if mode == "both" else (mode,):
            setattr(out, branch, mix(deadiff.encode(hidden.to(device), branch), weights).cpu())
        return (out,)


class StyleKitDEADiffApply:
    CATEGORY = "StyleKit/DEADiff"
    DESCRIPTION = ("DEADiff's mutually exclusive injection: image tokens are appended after the text tokens in "
                   "every cross-attention's keys/values (one softmax); style tokens on input 1,2,4,5 and output "
                   "5-11, content tokens on input 7,8, middle, output 3,4 (SD1.5; a DEADiff trained by StyleKit "
                   "uses the split it was trained with, SDXL's included); zero tokens in the unconditional branch. "
                   "SD1.5, SDXL.")
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = (specs.PATCHED_MODEL,)
    FUNCTION = "apply"
    VALIDATE_INPUTS = checks.validation(block_weights=checks.block_weights_text)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model the DEADiff was made for: SD1.5 (the official weights) or SDXL (one trained with StyleKit DEADiff Train)."}),
            "tokens": ("STYLEKIT_DEADIFF_TOKENS", {"tooltip": "From StyleKit DEADiff Encode."}),
            "img_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05, "tooltip": "Scales the image keys and values (official img_weight); 0 turns the injection off."}),
            "layer_split": (list(SPLITS), {"default": "official", "tooltip": "official: style and content tokens on their own layers (the split the file was trained with, else DEADiff's SD1.5 split); one branch on every layer: the style tokens (else content) on all of them."}),
            "zero_tokens": ("BOOLEAN", {"default": True, "tooltip": "Layers of a branch you did not encode get 16 zero tokens (official behaviour; they take softmax mass). Off: those layers stay plain."}),
            **specs.percent_window("Injection"),
            "block_weights": specs.block_weights("Per-block multipliers of img_weight, e.g. 'output 5=0.5, input 1=0'."),
        }}

    @boundary
    def apply(self, model, tokens, img_weight, layer_split, zero_tokens, start_percent, end_percent, block_weights):
        hi, lo = comfy_glue.percent_window(model, start_percent, end_percent)
        return (deadiff_model(model, tokens, img_weight, layer_split, zero_tokens, hi, lo,
                              parse_block_weights(block_weights, model_layers(model))),)
