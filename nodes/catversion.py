"""CatVersion nodes: Load, Apply (CLIP -> CLIP), Train (concept images -> prefix file), Score (CLIP-I/T)."""
import os

import torch

from ..attention.families import CATVERSION
from ..attention.layers import model_layers
from ..errors import InputError
from ..files import write_new
from ..models.catversion import (
    CatVersionPrefix,
    catversion_clip,
    encoder_width,
    load_prefix,
    prefixed_layers,
    save_prefix,
)
from ..models.catversion_train import TrainSettings, train_prefix
from ..models.clip_alignment import FILLS, mean_pairwise_cosine, remove_background
from ..models.magicstyle import host_apply_model
from . import checks, comfy_glue, specs
from .checks import boundary
from .images import loss_curve

FOLDER = "catversion"
MAX_SCORED = 512  # CatVersion Score's batches: each image is compared with every image of the other
MAX_TRAIN_IMAGES = 64  # CatVersion Train: the paper trains on 3-5 images; the pool (and its mirror images) is VAE-encoded at once
MAX_TRAIN_SIDE = 1024  # SD1.5 (the paper: 512 px); the UNet runs with gradients at this size every step
MIN_TRAIN_SIDE = 32  # a 4x4 latent: the UNet halves it three times, to 1x1
comfy_glue.register_folder(FOLDER, (".safetensors", ".bin"))
CATEGORY = "StyleKit/CatVersion"


class StyleKitCatVersionLoad:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads a CatVersion concept prefix from models/catversion: a StyleKit .safetensors (from "
                   "StyleKit CatVersion Train) or the official pytorch_adapter.bin (its adapter_config.json "
                   "beside it is read when present).")
    RETURN_TYPES = ("STYLEKIT_CATVERSION",)
    RETURN_NAMES = ("catversion",)
    OUTPUT_TOOLTIPS = ("The prefix; feed StyleKit CatVersion Apply.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"catversion_name": (comfy_glue.list_files(FOLDER), {
            "tooltip": "A prefix file in ComfyUI/models/catversion (.safetensors, or an official .bin in its own sub-folder)."})}}

    @boundary
    def load(self, catversion_name):
        return (load_prefix(comfy_glue.full_path(FOLDER, catversion_name)),)


class StyleKitCatVersionApply:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Concatenates the concept's learned key and value in front of the keys and values of the "
                   "text encoder's last self-attention layers (9, 10, 11 on SD1.5). As in the paper, encode "
                   "the positive prompt with this CLIP and the negative prompt with the plain one.")
    RETURN_TYPES = ("CLIP",)
    RETURN_NAMES = ("clip",)
    OUTPUT_TOOLTIPS = ("A clone of the CLIP with the prefix (the input CLIP is untouched); use it for the positive prompt.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "SD1.5's CLIP (a CLIP-L text encoder). Use its output for the positive prompt only; the negative keeps the plain CLIP."}),
            "catversion": ("STYLEKIT_CATVERSION", {"tooltip": "From StyleKit CatVersion Load or Train."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.05, "tooltip": "Multiplies the prefix's unnormalised attention weight (adds log(strength) to its logit); 1 = as trained, 0 = plain CLIP."}),
            "official_bias": ("BOOLEAN", {"default": True, "tooltip": "Add +1 to the prefix logit, as the official code does (and trains with). Off: plain concatenation."}),
        }}

    @boundary
    def apply(self, clip, catversion, strength, official_bias):
        return (catversion_clip(clip, catversion, strength, official_bias),)


class StyleKitCatVersionTrain:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Learns a CatVersion prefix from a few concept images: only the prefix trains (AdamW), with "
                   "the plain noise-prediction loss on the caption '<base word>'; the model, CLIP and VAE stay "
                   "frozen and unchanged. Saves the prefix to models/catversion. SD1.5.")
    RETURN_TYPES = ("STYLEKIT_CATVERSION", "IMAGE")
    RETURN_NAMES = ("catversion", "loss_curve")
    OUTPUT_TOOLTIPS = ("The trained prefix (also saved); feed StyleKit CatVersion Apply.", specs.LOSS_CURVE)
    FUNCTION = "train"
    VALIDATE_INPUTS = checks.validation(filename=checks.file_name, layers=checks.layer_list)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": specs.image("A handful of images of the concept (the paper uses 512 px; sides of at least 32 px, multiples of 8).",
                                  MAX_TRAIN_IMAGES, MAX_TRAIN_SIDE),
            "model": ("MODEL", {"tooltip": "The SD1.5 model to train against (frozen)."}),
            "clip": ("CLIP", {"tooltip": "Its CLIP (frozen; the prefix goes into its last layers)."}),
            "vae": ("VAE", {"tooltip": "Its VAE, to encode the images once."}),
            "base_word": ("STRING", {"default": "dog", "tooltip": "The concept's base class word; the training caption is exactly this word."}),
            "steps": ("INT", {"default": 1000, "min": 1, "max": 100000, "tooltip": "Optimiser steps (paper: about 1000)."}),
            "learning_rate": ("FLOAT", {"default": 1e-2, "min": 1e-6, "max": 1.0, "step": 1e-4, "tooltip": "AdamW learning rate (paper: 1e-2)."}),
            "batch_size": ("INT", {"default": 2, "min": 1, "max": 64, "tooltip": "Images per step (paper: 2)."}),
            "hflip": ("BOOLEAN", {"default": True, "tooltip": "Also train on the mirrored images (the paper's augmentation)."}),
            "layers": ("STRING", {"default": "9, 10, 11", "tooltip": "Text-encoder layers that get a prefix (paper: the last three of CLIP-L's 12)."}),
            "seed": specs.seed("Seeds the prefix initialisation, image order, timesteps and noise.", 0xFFFFFFFFFFFFFFFF),
            "filename": specs.output_name("catversion", "catversion_concept"),
        }}

    @boundary
    def train(self, images, model, clip, vae, base_word, steps, learning_rate, batch_size, hflip, layers, seed, filename):
        if not model_layers(model).supports(CATVERSION):
            raise InputError("CatVersion Train supports SD1.5 models (its prefix lives in the CLIP-L encoder SD1.5 conditions on)")
        checks.at_most(images, MAX_TRAIN_IMAGES, "images", "the paper trains on a handful; all are encoded at once")
        checks.image_sides(images, "images", MAX_TRAIN_SIDE, MIN_TRAIN_SIDE, "every step runs the UNet with gradients at that size")
        target = comfy_glue.output_target(FOLDER, filename)  # checked before training, written after
        chosen = checks.layer_list(layers)
        settings = TrainSettings(steps=steps, lr=learning_rate, batch=batch_size, seed=seed)
        # ComfyUI runs nodes under inference_mode: the prefix (and every tensor autograd keeps) is made outside it
        with torch.inference_mode(False), torch.enable_grad():
            prefix = CatVersionPrefix.random(chosen, encoder_width(clip), seed, base_word.strip())
            prefixed_layers(prefix, clip)
            pool = torch.cat([images, images.flip(2)]) if hflip else images
            with torch.no_grad():
                encoded = checks.latent_for(model, comfy_glue.vae_encode(vae, pool.clone()), "vae's latents")
                latents = comfy_glue.latent_in(model, encoded).float().clone()
            unet, text = comfy_glue.trainable(model), comfy_glue.trainable_clip(catversion_clip(clip, prefix, trainable=True))
            device = comfy_glue.load(unet)
            prefix.to(device)
            tokens = text.tokenize(prefix.base_word)
            sigmas = comfy_glue.model_sampling(unet).sigmas.detach().clone().float()

            def encode():
                return text.encode_from_tokens(tokens).to(device)

            def denoise(x, sigma, context):
                comfy_glue.load(unet)
                return host_apply_model(unet, x, sigma, context, {})

            losses = train_prefix(prefix, encode, denoise, latents.to(device), sigmas, settings,
                                  comfy_glue.progress(steps), comfy_glue.interrupted)
        prefix.cpu()
        path = write_new(target, lambda tmp: save_prefix(prefix, tmp))
        prefix.source = os.path.basename(path)
        return {"ui": {"text": [f"saved {path}"]}, "result": (prefix, loss_curve(losses))}


class StyleKitCatVersionScore:
    CATEGORY = CATEGORY
    DESCRIPTION = ("CatVersion's evaluation: masked CLIP image alignment (mean cosine of CLIP image embeddings "
                   "over every reference/generated pair, backgrounds removed by the masks) and CLIP-T (mean "
                   "cosine between the generated images and the prompt).")
    RETURN_TYPES = ("FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("clip_i", "clip_t", "report")
    OUTPUT_TOOLTIPS = ("Masked CLIP-I, -1..1 (higher: closer to the references).",
                       "CLIP-T, -1..1; NaN when no CLIP/prompt is given.",
                       "Both scores in one line.")
    FUNCTION = "score"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "The CLIP image tower to score with (the paper: ViT-L/14)."}),
            "reference": specs.image("The concept's reference images.", MAX_SCORED),
            "generated": specs.image("The generated images to score.", MAX_SCORED),
            "background": (list(FILLS), {"default": "black", "tooltip": "What replaces pixels outside the masks."}),
        }, "optional": {
            "reference_mask": specs.mask("Where the score looks: 1 (white) = the references' foreground, 0 = background (filled)."),
            "generated_mask": specs.mask("Where the score looks: 1 (white) = the generated images' foreground, 0 = background (filled)."),
            "clip": ("CLIP", {"tooltip": "For CLIP-T: the text tower of the same CLIP as clip_vision (with its projection, e.g. clip-vit-large-patch14 via Load CLIP)."}),
            "prompt": ("STRING", {"default": "", "tooltip": "The prompt the images were generated from, for CLIP-T."}),
        }}

    @boundary
    def score(self, clip_vision, reference, generated, background, reference_mask=None, generated_mask=None,
              clip=None, prompt=""):
        if reference_mask is not None:
            checks.mask_for(reference_mask, reference.shape[0], "reference_mask")
        if generated_mask is not None:
            checks.mask_for(generated_mask, generated.shape[0], "generated_mask")
        for images, field in ((reference, "reference"), (generated, "generated")):
            checks.at_most(images, MAX_SCORED, field, "each is compared with every image of the other batch")
        with torch.no_grad():
            ref = comfy_glue.image_embeds(clip_vision, remove_background(reference, reference_mask, background), "reference")
            gen = comfy_glue.image_embeds(clip_vision, remove_background(generated, generated_mask, background), "generated")
            clip_i = mean_pairwise_cosine(ref, gen)
            clip_t = float("nan")
            if clip is not None and prompt.strip():
                clip_t = mean_pairwise_cosine(gen, comfy_glue.text_embeds(clip, prompt))
        report = (f"CLIP-I (masked, {len(ref)} ref x {len(gen)} gen): {clip_i:.4f}; "
                  + (f"CLIP-T: {clip_t:.4f}" if clip_t == clip_t else "CLIP-T: not computed (no clip or prompt)"))
        return {"ui": {"text": [report]}, "result": (clip_i, clip_t, report)}
