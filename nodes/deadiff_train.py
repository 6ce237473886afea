"""DEADiff training nodes: Build Pairs (the host model draws a paired data set, as the paper's) and Train
(the single-GPU path of the non-reconstructive training; tools/deadiff_pairs.py and tools/deadiff_train.py
are the same code from a shell, under accelerate launch)."""
import math
import os

import torch

from ..errors import InputError
from ..models.clip_preprocess import deadiff_pixels
from ..models.deadiff import QFormerShape, save_deadiff
from ..models.deadiff_data import PairEncoders, manifest_digest, manifest_loaders, read_pairs
from ..models.deadiff_pairs import TEMPLATE, build_pairs, plan_pairs, word_list
from ..models.deadiff_train import DEADiffTrainSettings, start_adapter, train_deadiff, weights_digest
from . import checks, comfy_glue, specs
from .checks import boundary
from .deadiff import FOLDER
from .images import loss_curve

STATE = ".deadiff-train-state"  # the resumable state beside the output (no loader lists it); removed when done


def host_encoders(model, clip, clip_vision, vae, device) -> PairEncoders:
    """ComfyUI's CLIP_VISION (penultimate states of the 224 px squash, as DEADiff Encode), VAE (into the
    model's latent space) and CLIP (the caption's conditioning, and the further inputs the model builds from
    it, as its samplers do: SDXL's y from the pooled text and the target's size) as the trainer's encoders."""
    def references(images):
        return torch.cat([comfy_glue.vision_hidden_states(clip_vision, deadiff_pixels(i[None])) for i in images]).to(device)

    def latents(targets):
        return comfy_glue.latent_in(model, comfy_glue.vae_encode(vae, targets)).float().to(device)

    def captions(texts, targets):
        contexts, extras = [], []
        for text in texts:
            cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
            context, extra = comfy_glue.model_conds(model, [[cond, {"pooled_output": pooled}]], targets[:1], device)
            contexts.append(context.float())
            extras.append(extra)
        # a caption over 75 tokens is several chunks of 77: repeated to a common length, as ComfyUI batches conds
        length = math.lcm(*(c.shape[1] for c in contexts))
        extra = {k: torch.cat([e[k] for e in extras]).float() for k in extras[0]} or None
        return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in contexts]), extra
    return PairEncoders(references, latents, captions)


class StyleKitDEADiffTrain:
    CATEGORY = "StyleKit/DEADiff"
    DESCRIPTION = ("Trains DEADiff's Q-Formers non-reconstructively on pairs from a folder in ComfyUI's input "
                   "folder (pairs.jsonl: style pairs share only the style, content pairs only the content; see "
                   "the README, DEADiff training): both Q-Formers, their queries and projections and every attn2 "
                   "image K/V train; the model, CLIP, CLIP vision and VAE stay frozen. Starts from a DEADiff you "
                   "give (fine-tune) or from scratch. Saves to models/deadiff with the layer split it trained (SDXL: "
                   "StyleKit's, see the README); an interrupted run resumes where its last checkpoint was. SD1.5, SDXL.")
    RETURN_TYPES = ("STYLEKIT_DEADIFF", "IMAGE")
    RETURN_NAMES = ("deadiff", "loss_curve")
    OUTPUT_TOOLTIPS = ("The trained DEADiff (also saved); feed StyleKit DEADiff Encode.", specs.LOSS_CURVE)
    FUNCTION = "train"
    VALIDATE_INPUTS = checks.validation(filename=checks.file_name, data_folder=checks.input_subfolder_name)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD1.5 or SDXL model to train against (frozen)."}),
            "clip": ("CLIP", {"tooltip": "Its CLIP, to encode the captions (frozen)."}),
            "clip_vision": ("CLIP_VISION", {"tooltip": "CLIP ViT-L/14 vision (Load CLIP Vision), as DEADiff reads references."}),
            "vae": ("VAE", {"tooltip": "Its VAE, to encode the targets (frozen)."}),
            "data_folder": ("STRING", {"default": "deadiff_pairs", "tooltip": "A folder inside ComfyUI's input folder holding pairs.jsonl and its images."}),
            "steps": specs.optimiser_steps(1000),
            "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-1, "step": 1e-5, "tooltip": "AdamW learning rate (official: 1e-4)."}),
            "warmup": ("INT", {"default": 100, "min": 0, "max": 100_000, "tooltip": "Linear warm-up steps (official: 10000, for a long run)."}),
            "batch_size": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip": "Pairs per step."}),
            "seed": specs.seed("Seeds a fresh start, the pairs each step draws, the drops, noise levels and noise."),
            "filename": specs.output_name("deadiff", "deadiff_trained"),
        }, "optional": {
            "deadiff": ("STYLEKIT_DEADIFF", {"tooltip": "Fine-tune this DEADiff (StyleKit DEADiff Loader); without it the Q-Formers start fresh."}),
        }}

    @boundary
    def train(self, model, clip, clip_vision, vae, data_folder, steps, learning_rate, warmup, batch_size, seed, filename,
              deadiff=None):
        target = comfy_glue.output_target(FOLDER, filename)  # checked before training, written after
        folder, shown = comfy_glue.input_folder(data_folder, "data_folder")
        try:
            pairs = read_pairs(folder)  # every line checked before a tensor is made
        except InputError as e:
            raise InputError(f"data_folder {shown}: {e}") from None
        settings = DEADiffTrainSettings(steps=steps, lr=learning_rate, warmup=warmup, seed=seed)
        state = os.path.join(target.folder, os.path.splitext(target.name)[0] + STATE)
        # ComfyUI runs nodes under inference_mode: the adapter (and every tensor autograd keeps) is made outside it
        with torch.inference_mode(False), torch.enable_grad():
            shape = QFormerShape(vision=comfy_glue.vision_hidden_states(clip_vision, torch.zeros(1, 3, 224, 224)).shape[-1])
            # a DEADiff to fine-tune is checked (refused before the UNet loads) and copied; fresh Q-Formers start
            # from the loaded UNet's text K/V
            adapter = None if deadiff is None else start_adapter(model, shape, seed, deadiff)
            unet = comfy_glue.trainable(model)
            device = comfy_glue.load(unet)
            if adapter is None:
                adapter = start_adapter(unet, shape, seed)
            adapter.to(device)
            loaders = manifest_loaders(pairs, host_encoders(unet, clip, clip_vision, vae, device), batch_size, seed)
            sigmas = comfy_glue.model_sampling(unet).sigmas.detach().float().cpu()
            run_id = f"{manifest_digest(folder)} {weights_digest(adapter)}"
            losses = train_deadiff(unet, adapter, loaders, sigmas, settings, comfy_glue.progress(steps),
                                   comfy_glue.interrupted, checkpoint=state, checkpoint_every=max(1, min(500, steps // 10)),
                                   run_id=run_id)
        adapter.cpu()
        path = save_deadiff(adapter, target, source=f"StyleKit DEADiff Train, {steps} steps, seed {seed}")
        os.remove(state)
        return {"ui": {"text": [f"saved {path}"]}, "result": (adapter, loss_curve(losses))}


class StyleKitDEADiffBuildPairs:
    CATEGORY = "StyleKit/DEADiff"
    DESCRIPTION = ("Draws a DEADiff training set with the model itself, as the paper built its own: every style "
                   "over several subjects (style pairs: same style, other content) and every subject in several "
                   "styles (content pairs), prompts from the template. Writes the images and pairs.jsonl into a "
                   "folder in ComfyUI's input folder, for StyleKit DEADiff Train. Queued again, it draws only the "
                   "images still missing.")
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("data_folder",)
    OUTPUT_TOOLTIPS = ("The folder's name, for StyleKit DEADiff Train's data_folder.",)
    FUNCTION = "build"
    VALIDATE_INPUTS = checks.validation(data_folder=checks.input_subfolder_name)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model that draws the images."}),
            "clip": ("CLIP", {"tooltip": "Its CLIP, for the prompts."}),
            "vae": ("VAE", {"tooltip": "Its VAE, to decode the images."}),
            "subjects": ("STRING", {"multiline": True, "default": "a cat\na castle\na bowl of fruit\na portrait of a woman",
                                    "tooltip": "One subject a line."}),
            "styles": ("STRING", {"multiline": True, "default": "watercolor painting\nink wash\npixel art\noil painting",
                                  "tooltip": "One style a line."}),
            "template": ("STRING", {"default": TEMPLATE, "tooltip": "The prompt of each image, with {subject} and {style}."}),
            "per_style": ("INT", {"default": 3, "min": 2, "max": 1000, "tooltip": "Subjects each style is drawn over (style pairs)."}),
            "per_subject": ("INT", {"default": 3, "min": 2, "max": 1000, "tooltip": "Styles each subject is drawn in (content pairs)."}),
            "negative": ("STRING", {"default": "", "tooltip": "Negative prompt of every image."}),
            "width": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": "Image width."}),
            "height": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": "Image height."}),
            "steps": ("INT", {"default": 25, "min": 1, "max": 200, "tooltip": "Sampling steps (euler)."}),
            "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "Classifier-free guidance."}),
            "seed": specs.seed("Seeds which subjects and styles meet and every image's noise."),
            "data_folder": ("STRING", {"default": "deadiff_pairs", "tooltip": "A folder inside ComfyUI's input folder (made if missing)."}),
        }}

    @boundary
    def build(self, model, clip, vae, subjects, styles, template, per_style, per_subject, negative, width, height, steps,
              cfg, seed, data_folder):
        checks.input_subfolder_name(data_folder)
        plan = plan_pairs(word_list(subjects, "subjects"), word_list(styles, "styles"), per_style, per_subject, seed,
                          template)  # everything checked before the first image
        folder, shown = comfy_glue.input_folder(data_folder, "data_folder", make=True)

        def render(prompt, cell_seed):
            return comfy_glue.text_to_image(model, clip, vae, prompt, negative, cell_seed, steps, cfg, width, height)
        drawn = build_pairs(folder, plan, render, comfy_glue.progress(len(plan.cells)), comfy_glue.interrupted)
        report = (f"{shown}: {len(plan.cells)} images ({drawn} drawn now), {len(plan.lines)} pairs in pairs.jsonl")
        return {"ui": {"text": [report]}, "result": (data_folder,)}
