"""Models from folders in the diffusers / transformers layouts, as the bridge's ComfyUI-shaped objects.

For the command-line tools that run without ComfyUI (DEADiff training under ``accelerate launch``):

- :func:`load_sd_folder`: a Stable Diffusion folder (``unet/``, ``text_encoder/``, ``tokenizer/``, ``vae/``,
  as ``save_pretrained`` writes them) -> (MODEL-shaped :class:`BridgePatcher`, CLIP-shaped
  :class:`BridgeCLIP`, VAE-shaped :class:`BridgeVAE`), frozen, on ``device``.
- :func:`load_clip_vision_folder`: a transformers CLIP vision folder -> CLIP_VISION-shaped
  :class:`BridgeClipVision`.

Nothing is downloaded: every path is local, and a missing part is refused naming it.
"""
from __future__ import annotations

import os

import torch

from ..errors import InputError
from .clip_text import BridgeCLIP, clip_text_from_transformers
from .patcher import BridgePatcher
from .schedule import DiscreteSchedule
from .vae import BridgeVAE
from .vision import BridgeClipVision

SD_PARTS = ("unet", "text_encoder", "tokenizer", "vae")


def _folder(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise InputError(f"{what}: {path} is not a folder")
    return path


def load_sd_folder(folder: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, clip, vae) from a diffusers Stable Diffusion folder; the scheduler's beta range when it has one."""
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    _folder(folder, "model")
    missing = [p for p in SD_PARTS if not os.path.isdir(os.path.join(folder, p))]
    if missing:
        raise InputError(f"model folder {folder} has no {', '.join(missing)} subfolder(s): give a Stable Diffusion "
                         "folder in the diffusers layout (save_pretrained's), or 'miniature'")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    for m in (unet, text, vae):
        m.to(device, dtype).eval().requires_grad_(False)
    schedule = DiscreteSchedule()
    config = os.path.join(folder, "scheduler", "scheduler_config.json")
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            cfg = json.load(f)
        schedule = DiscreteSchedule(cfg.get("beta_start", 0.00085), cfg.get("beta_end", 0.012),
                                    cfg.get("num_train_timesteps", 1000))
    length = tokenizer.model_max_length

    def tokenize(caption: str) -> list[int]:
        return tokenizer(caption, padding="max_length", max_length=length, truncation=True).input_ids
    clip = BridgeCLIP(clip_text_from_transformers(text).to(device, dtype), length=length, tokenizer=tokenize)
    return BridgePatcher(unet, schedule.to(device)), clip, BridgeVAE(vae)


def load_clip_vision_folder(folder: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """CLIP_VISION-shaped tower from a transformers CLIPVisionModel(WithProjection) folder."""
    from transformers import CLIPVisionModelWithProjection
    _folder(folder, "clip vision")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise InputError(f"clip vision folder {folder} has no config.json: give a transformers CLIP vision folder "
                         "(ViT-L/14 for DEADiff)")
    tower = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True)
    return BridgeClipVision(tower.to(device, dtype).eval().requires_grad_(False))
