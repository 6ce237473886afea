"""Models from folders in the diffusers / transformers layouts, as the bridge's ComfyUI-shaped objects.

For the command-line tools that run without ComfyUI (DEADiff training under ``accelerate launch``):

- :func:`load_sd_folder`: a Stable Diffusion 1.5 or SDXL folder (``unet/``, ``text_encoder/``, ``tokenizer/``,
  ``vae/``, and SDXL's ``text_encoder_2/``, ``tokenizer_2/``, as ``save_pretrained`` writes them) -> (MODEL-shaped :class:`BridgePatcher`, CLIP-shaped
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
SDXL_PARTS = ("text_encoder_2", "tokenizer_2")  # beside SD_PARTS in an SDXL folder


def _folder(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise InputError(f"{what}: {path} is not a folder")
    return path


def load_sd_folder(folder: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, clip, vae) from a diffusers Stable Diffusion 1.5 or SDXL folder (SDXL: with ``text_encoder_2``
    and ``tokenizer_2``; its clip a :class:`BridgeSDXLCLIP`); the scheduler's beta range when it has one."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    _folder(folder, "model")
    missing = [p for p in SD_PARTS if not os.path.isdir(os.path.join(folder, p))]
    if missing:
        raise InputError(f"model folder {folder} has no {', '.join(missing)} subfolder(s): give a Stable Diffusion "
                         "folder in the diffusers layout (save_pretrained's), or 'miniature'")
    sdxl = any(os.path.isdir(os.path.join(folder, p)) for p in SDXL_PARTS)
    missing = [p for p in SDXL_PARTS if sdxl and not os.path.isdir(os.path.join(folder, p))]
    if missing:
        raise InputError(f"model folder {folder} has no {', '.join(missing)} subfolder: an SDXL folder in the diffusers "
                         f"layout has both {' and '.join(SDXL_PARTS)}")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    for m in (unet, text, vae):
        m.to(device, dtype).eval().requires_grad_(False)
    if sdxl:
        from transformers import CLIPTextModelWithProjection
        text_g = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2", local_files_only=True)
        tokenizer_g = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2", local_files_only=True)
        clip = BridgeSDXLCLIP(text, tokenizer, text_g.to(device, dtype).eval().requires_grad_(False), tokenizer_g)
    else:
        length = tokenizer.model_max_length

        def tokenize(caption: str) -> list[int]:
            return tokenizer(caption, padding="max_length", max_length=length, truncation=True).input_ids
        clip = BridgeCLIP(clip_text_from_transformers(text).to(device, dtype), length=length, tokenizer=tokenize)
    return BridgePatcher(unet, _schedule(folder).to(device)), clip, BridgeVAE(vae)


def _schedule(folder: str) -> DiscreteSchedule:
    """The scheduler config's beta range when the folder has one, SD's otherwise."""
    import json
    config = os.path.join(folder, "scheduler", "scheduler_config.json")
    if not os.path.isfile(config):
        return DiscreteSchedule()
    with open(config, encoding="utf-8") as f:
        cfg = json.load(f)
    return DiscreteSchedule(cfg.get("beta_start", 0.00085), cfg.get("beta_end", 0.012), cfg.get("num_train_timesteps", 1000))


class BridgeSDXLCLIP:
    """SDXL's two text encoders (CLIP-L, OpenCLIP-bigG with its projection; transformers' layout) with ComfyUI's
    CLIP surface: ``tokenize(text)`` and ``encode_from_tokens(tokens, return_pooled)``. The context is both
    encoders' penultimate hidden states side by side (768 + 1280 wide for SDXL), the pooled output bigG's
    projected end token, as diffusers' SDXL pipeline and ComfyUI's SDXL CLIP encode a prompt."""

    def __init__(self, text_l, tokenizer_l, text_g, tokenizer_g):
        self.text_l, self.tokenizer_l, self.text_g, self.tokenizer_g = text_l, tokenizer_l, text_g, tokenizer_g

    def tokenize(self, text: str) -> dict:
        def ids(tok):
            return tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        return {"l": ids(self.tokenizer_l), "g": ids(self.tokenizer_g)}

    def encode_from_tokens(self, tokens: dict, return_pooled: bool = False):
        device = next(self.text_l.parameters()).device
        with torch.no_grad():
            out_l = self.text_l(torch.tensor([tokens["l"]], device=device), output_hidden_states=True)
            out_g = self.text_g(torch.tensor([tokens["g"]], device=device), output_hidden_states=True)
        context = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1).float()
        return (context, out_g.text_embeds.float()) if return_pooled else context


def load_clip_vision_folder(folder: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """CLIP_VISION-shaped tower from a transformers CLIPVisionModel(WithProjection) folder."""
    from transformers import CLIPVisionModelWithProjection
    _folder(folder, "clip vision")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise InputError(f"clip vision folder {folder} has no config.json: give a transformers CLIP vision folder "
                         "(ViT-L/14 for DEADiff)")
    tower = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True)
    return BridgeClipVision(tower.to(device, dtype).eval().requires_grad_(False))
