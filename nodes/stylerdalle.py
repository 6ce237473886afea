"""StylerDALLE nodes: Load, Stylize (IMAGE -> IMAGE), Pretrain, Train Style, Convert (official dVAE pickles)."""
import os

import torch

from ..errors import InputError
from ..files import open_image, write_new
from ..models.dvae import load_dvae
from ..models.seeding import cpu_seeded
from ..models.stylerdalle import StylerDALLETranslator, load_translator, save_translator
from ..models.stylerdalle_pipeline import OUTPUT_PX, StylerDALLE, square_pixels, stylize, training_tokens
from ..models.stylerdalle_train import PretrainSettings, StyleSettings, pretrain, train_style
from . import checks, comfy_glue, specs
from .checks import boundary
from .images import loss_curve, pil_to_image

DVAE_FOLDER, TRANSLATOR_FOLDER = "dalle", "stylerdalle"
comfy_glue.register_folder(DVAE_FOLDER, (".safetensors", ".pkl"))
comfy_glue.register_folder(TRANSLATOR_FOLDER, (".safetensors", ".pt"))
CATEGORY = "StyleKit/StylerDALLE"
NEW = "(new, untrained)"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _files(folder, ext):
    return comfy_glue.list_files(folder, (ext,) if ext else ())


def _callback(total):
    bar = comfy_glue.progress(total)

    def cb(j, n):
        comfy_glue.interrupted()
        if bar is not None:
            bar(j, n)
    return cb


MAX_FOLDER_IMAGES = 512  # 256 px RGB float: 0.4 GB at most


def folder_images(folder: str) -> torch.Tensor:
    """Every image file in ``folder`` (a folder in ComfyUI's input folder) squashed to 256 px, as one IMAGE
    batch; a folder of more than :data:`MAX_FOLDER_IMAGES` images, or a photo over files.MAX_IMAGE_PIXELS,
    is refused before the images are decoded."""
    path, shown = comfy_glue.input_folder(folder, "folder")
    names = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTS))
    if not names:
        raise InputError(f"no images ({', '.join(IMAGE_EXTS)}) in {shown}")
    if len(names) > MAX_FOLDER_IMAGES:
        raise InputError(f"{shown} holds {len(names)} images; pre-training takes at most {MAX_FOLDER_IMAGES}")
    out = []
    for n in names:
        with open_image(os.path.join(path, n), f"{shown}/{n}") as im:
            out.append(square_pixels(pil_to_image(im), OUTPUT_PX).movedim(1, -1))
    return torch.cat(out)


class StyleKitStylerDALLELoad:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads the DALL-E dVAE (models/dalle, converted with StyleKit StylerDALLE Convert) and a style "
                   "translator (models/stylerdalle: StyleKit's .safetensors or an official state-dict .pt). No "
                   "translator weights are published: train one with Pretrain, then Train Style.")
    RETURN_TYPES = ("STYLEKIT_STYLERDALLE",)
    RETURN_NAMES = ("stylerdalle",)
    OUTPUT_TOOLTIPS = ("dVAE + translator; feed Stylize, Pretrain or Train Style.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dvae_name": (_files(DVAE_FOLDER, ".safetensors"), {"tooltip": "The converted dVAE (.safetensors with encoder and decoder) in ComfyUI/models/dalle."}),
            "translator_name": (comfy_glue.FileList([NEW] + _files(TRANSLATOR_FOLDER, "")), {"tooltip": f"A trained translator in ComfyUI/models/stylerdalle, or {NEW} to start pre-training (hidden 512, 8 heads, 4 decoder blocks; initialised from seed 0, the same every run)."}),
        }}

    @boundary
    def load(self, dvae_name, translator_name):
        encoder, decoder = load_dvae(comfy_glue.full_path(DVAE_FOLDER, dvae_name))
        if encoder is None or decoder is None:
            raise InputError(f"{dvae_name} lacks the dVAE {'encoder' if encoder is None else 'decoder'}; StylerDALLE "
                             "needs both (convert encoder.pkl and decoder.pkl together)")
        if translator_name == NEW:
            with cpu_seeded(0):  # the same initial weights every run; the global RNG untouched
                translator = StylerDALLETranslator(input_dim=decoder.n_init, vocab=decoder.vocab).eval()
            style = ""
        else:
            path = comfy_glue.full_path(TRANSLATOR_FOLDER, translator_name)
            translator, style = load_translator(path), os.path.splitext(translator_name)[0]
        device = comfy_glue.compute_device()  # standalone models: on ComfyUI's GPU when it has one
        model = StylerDALLE(encoder.to(device), decoder.to(device), translator.to(device), style)
        model.check()
        return (model,)


class StyleKitStylerDALLEStylize:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Stylises images as token translation: each image at 128 px -> 16x16 dVAE tokens -> the "
                   "style's translator -> 32x32 tokens sampled per position -> a 256 px image.")
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("Stylised images, 256x256.",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "stylerdalle": ("STYLEKIT_STYLERDALLE", {"tooltip": "From StyleKit StylerDALLE Load (or a Train node)."}),
            "images": specs.image("Content images (any size; squashed to 128 px)."),
            "seed": specs.seed("Sampling seed; image i of the batch uses seed + i."),
            "sampling": (["sample", "argmax"], {"default": "sample", "tooltip": "sample: one draw per token (the paper); argmax: the most likely token."}),
            "official_dropout": ("BOOLEAN", {"default": False, "tooltip": "The official code keeps a p=0.5 dropout on the decoder output at inference; on reproduces that (random), off is deterministic."}),
            "batch_size": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": "Images translated at once (memory vs speed); results do not depend on it."}),
        }}

    @boundary
    def run(self, stylerdalle, images, seed, sampling, official_dropout, batch_size):
        return (stylize(stylerdalle, images, seed, sampling == "argmax", official_dropout, batch_size,
                        _callback(images.shape[0])),)


class StyleKitStylerDALLEPretrain:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Stage 1: token super-resolution. The translator learns to predict the 32x32 tokens of each "
                   "photo at 256 px from its 16x16 tokens at 128 px (NLL; AdamW, linear warm-up then decay). "
                   "Saves to models/stylerdalle.")
    RETURN_TYPES = ("STYLEKIT_STYLERDALLE", "IMAGE")
    RETURN_NAMES = ("stylerdalle", "loss_curve")
    OUTPUT_TOOLTIPS = ("The pre-trained translator with the same dVAE.", "NLL per step.")
    FUNCTION = "train"
    VALIDATE_INPUTS = checks.validation(filename=checks.file_name, folder=checks.input_subfolder)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "stylerdalle": ("STYLEKIT_STYLERDALLE", {"tooltip": f"From StyleKit StylerDALLE Load (translator {NEW}, or one to continue)."}),
            "steps": specs.optimiser_steps(1000),
            "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-2, "step": 1e-5, "tooltip": "AdamW peak learning rate (official 1e-4)."}),
            "batch_size": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Photos per step (official 32)."}),
            "warmup_steps": ("INT", {"default": 100, "min": 0, "max": 100000, "tooltip": "Linear warm-up steps, then linear decay to 0 (official 5000 over 25 COCO epochs)."}),
            "seed": specs.seed("Seeds the batch order."),
            "filename": specs.output_name("stylerdalle", "stylerdalle_pretrained"),
        }, "optional": {
            "images": specs.image("Photos to pre-train on."),
            "folder": ("STRING", {"default": "", "tooltip": "Or/and a folder of photos (png/jpg/webp) inside ComfyUI's input folder, e.g. 'photos' for input/photos; read and squashed to 256 px (at most 512 photos)."}),
        }}

    @boundary
    def train(self, stylerdalle, steps, learning_rate, batch_size, warmup_steps, seed, filename, images=None, folder=""):
        target = comfy_glue.output_target(TRANSLATOR_FOLDER, filename)  # checked before training
        pool = [x for x in (images, folder_images(folder) if folder.strip() else None) if x is not None]
        if not pool:
            raise InputError("give photos: an IMAGE batch and/or a folder")
        t16, t32 = training_tokens(stylerdalle.encoder, torch.cat([square_pixels(p, OUTPUT_PX).movedim(1, -1) for p in pool]))
        net, losses = pretrain(stylerdalle.translator, stylerdalle.decoder, t16, t32,
                               PretrainSettings(steps, learning_rate, batch_size, warmup_steps, seed), _callback(steps))
        path = write_new(target, lambda tmp: save_translator(net, tmp))
        return {"ui": {"text": [f"saved {path}"]},
                "result": (StylerDALLE(stylerdalle.encoder, stylerdalle.decoder, net), loss_curve(losses, label="NLL"))}


class StyleKitStylerDALLETrainStyle:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Stage 2: one style by REINFORCE. The translator samples tokens, the dVAE decodes them, and "
                   "the reward is the CLIP cosine between the image and '{style} of {caption}' (running-mean "
                   "baseline); only the decoder blocks and the output head learn (Adam, gradient clip 3). "
                   "Needs a CLIP vision model and the text tower of the same CLIP, with its projection (e.g. "
                   "clip-vit-large-patch14 through Load CLIP Vision and Load CLIP): SD1.5 checkpoints lack it.")
    RETURN_TYPES = ("STYLEKIT_STYLERDALLE", "IMAGE")
    RETURN_NAMES = ("stylerdalle", "reward_curve")
    OUTPUT_TOOLTIPS = ("The style's translator with the same dVAE.", "Mean CLIP reward per step.")
    FUNCTION = "train"
    VALIDATE_INPUTS = checks.validation(filename=checks.file_name)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "stylerdalle": ("STYLEKIT_STYLERDALLE", {"tooltip": "A pre-trained translator (StyleKit StylerDALLE Pretrain or Load)."}),
            "images": specs.image("Content photos to stylise while training."),
            "clip_vision": ("CLIP_VISION", {"tooltip": "CLIP vision model for the reward (the official code uses CLIP ViT-B/32)."}),
            "clip": ("CLIP", {"tooltip": "The text tower of the same CLIP as clip_vision, with its text projection (Load CLIP)."}),
            "style": ("STRING", {"default": "an oil painting", "tooltip": "The style text; the reward prompt is '{style} of {caption}'."}),
            "captions": ("STRING", {"default": "a photo", "multiline": True, "tooltip": "One caption per image (one line each), or one line for all."}),
            "steps": specs.optimiser_steps(500),
            "learning_rate": ("FLOAT", {"default": 1e-6, "min": 1e-9, "max": 1e-2, "step": 1e-7, "tooltip": "Adam learning rate (official 1e-6)."}),
            "batch_size": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Images per step (official 16)."}),
            "official_dropout": ("BOOLEAN", {"default": True, "tooltip": "Keep the official p=0.5 dropout on the decoder output while training (the official model trains with it)."}),
            "seed": specs.seed("Seeds batch order and token sampling."),
            "filename": specs.output_name("stylerdalle", "stylerdalle_style"),
        }}

    @boundary
    def train(self, stylerdalle, images, clip_vision, clip, style, captions, steps, learning_rate, batch_size,
              official_dropout, seed, filename):
        target = comfy_glue.output_target(TRANSLATOR_FOLDER, filename)  # checked before training
        lines = [c.strip() for c in captions.splitlines() if c.strip()] or ["a photo"]
        if len(lines) not in (1, images.shape[0]):
            raise InputError(f"{len(lines)} captions for {images.shape[0]} images; give one per image or one for all")
        lines = lines * images.shape[0] if len(lines) == 1 else lines
        texts = {c: torch.nn.functional.normalize(comfy_glue.text_embeds(clip, f"{style.strip()} of {c}"), dim=-1)
                 for c in set(lines)}

        def reward(decoded, caps):
            img = torch.nn.functional.normalize(comfy_glue.image_embeds(clip_vision, decoded.movedim(1, -1)), dim=-1)
            txt = torch.cat([texts[c] for c in caps]).to(img.device)
            if txt.shape[-1] != img.shape[-1]:
                raise InputError(f"CLIP text embeddings are {txt.shape[-1]} wide, image embeddings {img.shape[-1]}: "
                                 "give the text tower of the same CLIP, with its projection")
            return (img * txt).sum(-1)
        t16, _ = training_tokens(stylerdalle.encoder, images)
        net, _, rewards, baseline = train_style(stylerdalle.translator, stylerdalle.decoder, t16, reward, lines,
                                                StyleSettings(steps, learning_rate, batch_size, 3.0, official_dropout, seed),
                                                _callback(steps))
        path = write_new(target, lambda tmp: save_translator(net, tmp, style=style))
        return {"ui": {"text": [f"saved {path}; final baseline {baseline:.4f}"]},
                "result": (StylerDALLE(stylerdalle.encoder, stylerdalle.decoder, net, style),
                           loss_curve(rewards, label="reward"))}


class StyleKitStylerDALLEConvert:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Converts the official DALL-E dVAE pickles (encoder.pkl, decoder.pkl in models/dalle) into one "
                   "safetensors file, unpickling only the dVAE's own classes; any other object is refused. Same as "
                   "tools/dalle_convert.py.")
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    OUTPUT_TOOLTIPS = ("Where the file was written and what it holds.",)
    FUNCTION = "convert"
    VALIDATE_INPUTS = checks.validation(filename=checks.file_name)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        pickles = _files(DVAE_FOLDER, ".pkl")
        return {"required": {
            "encoder_pickle": (pickles, {"tooltip": "The official encoder.pkl in ComfyUI/models/dalle."}),
            "decoder_pickle": (pickles, {"tooltip": "The official decoder.pkl in ComfyUI/models/dalle."}),
            "filename": specs.output_name("dalle", "dalle_dvae"),
        }}

    @boundary
    def convert(self, encoder_pickle, decoder_pickle, filename):
        from ..models.dvae import convert_files
        target = comfy_glue.output_target(DVAE_FOLDER, filename)
        report = convert_files(comfy_glue.full_path(DVAE_FOLDER, encoder_pickle),
                               comfy_glue.full_path(DVAE_FOLDER, decoder_pickle), target)
        return {"ui": {"text": [report]}, "result": (report,)}
