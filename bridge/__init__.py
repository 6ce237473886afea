"""The diffusers bridge: runs StyleKit's router objects inside a diffusers ``UNet2DConditionModel``.

``BridgePatcher`` offers the part of ComfyUI's ModelPatcher that StyleKit's builders use (clone,
model_options, set_model_patch_replace, set_model_unet_function_wrapper, get_model_object), so the
same ``attention/`` and ``models/`` code patches a ComfyUI model and a diffusers model. It is how CI
runs each method end to end without ComfyUI, and a Python API in its own right. ``BridgeVAE`` and
``BridgeClipVision`` give a diffusers VAE and a transformers CLIP vision tower ComfyUI's VAE and
CLIP_VISION method names, and ``clip_text.BridgeCLIP`` does the same for the text encoder. The DiT
families have their own patchers over diffusers' transformers, each keeping its ComfyUI family's hook
contract: ``flux.FluxBridgePatcher``, ``flux2.Flux2BridgePatcher``, ``krea2.Krea2BridgePatcher`` and
``qwen_image.QwenImageBridgePatcher``.
"""
from .schedule import DiscreteSchedule
from .patcher import BridgePatcher
from .sampling import calc_cond_batch, sample_euler, sample_euler_cfg
from .vae import BridgeVAE
from .vision import BridgeClipVision

__all__ = ["BridgeClipVision", "BridgePatcher", "BridgeVAE", "DiscreteSchedule", "calc_cond_batch", "sample_euler",
           "sample_euler_cfg"]
