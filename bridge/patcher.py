"""A ModelPatcher-shaped host around a diffusers ``UNet2DConditionModel``."""
from __future__ import annotations

import copy

import torch

from ..errors import InputError
from .installed import attention_layers, parameter_dtype, processors_installed
from .layers import layers_per_block, processor_key
from .processor import RouterAttnProcessor
from .schedule import DiscreteSchedule


class Cond:
    """ComfyUI's ``CONDRegular`` shape: one model input under ``.cond``."""

    def __init__(self, cond: torch.Tensor):
        self.cond = cond


class LatentFormat:
    """The part of ComfyUI's ``latent_format`` the pack reads: how many channels the network's latents have."""

    def __init__(self, latent_channels: int):
        self.latent_channels = latent_channels


def sdxl_time_ids(ids, batch: int) -> torch.Tensor:
    """SDXL's six size ids (height, width, crop_h, crop_w, target_height, target_width), one row per sample."""
    return torch.tensor([float(v) for v in ids]).expand(batch, 6).clone()


class BridgeModel:
    """ComfyUI's ``BaseModel`` surface (``patcher.model``) over the bridge's network: ``apply_model`` with
    explicit ``transformer_options`` (none: no patches), ``model_sampling``, ``process_latent_in/out``
    (identity: the bridge's VAE returns latents already scaled), ``extra_conds`` (the inputs the
    network takes besides the noisy latent, as ``Cond``s) and ``latent_format.latent_channels``. Clones of
    a patcher share it, as in ComfyUI."""

    def __init__(self, patcher: "BridgePatcher"):
        self._run, self._conds = patcher._run, patcher._extra_conds
        self.model_sampling, self.diffusion_model = patcher.model_sampling, patcher.unet
        self._latent_channels = patcher._latent_channels

    @property
    def latent_format(self) -> LatentFormat:
        return LatentFormat(self._latent_channels())  # read when asked: a bare test network has no config

    def apply_model(self, x, t, c_crossattn=None, transformer_options=None, **kwargs):
        """Denoised x0 at sigma ``t`` (ComfyUI's argument name), running the patches in ``transformer_options``."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in ("c_concat", "control")}
        return self._run(x, t, c_crossattn, dict(transformer_options or {}), **kwargs)

    def process_latent_in(self, latent):
        return latent

    def process_latent_out(self, latent):
        return latent

    def extra_conds(self, cross_attn=None, **kwargs) -> dict:
        return {"c_crossattn": Cond(cross_attn), **self._conds(kwargs)}


class BridgePatcher:
    """The subset of ComfyUI's ModelPatcher that StyleKit uses, over a diffusers UNet.

    ``clone()`` shares the UNet and deep-copies ``model_options`` like ComfyUI does; patches live in
    ``model_options['transformer_options']['patches_replace']`` under ComfyUI's block keys. The UNet's
    own attention processors are swapped in only for the duration of a call and restored after, so
    the wrapped UNet is never left modified.
    """

    def __init__(self, unet, model_sampling: DiscreteSchedule | None = None):
        self.unet = unet
        self.model_sampling = model_sampling or DiscreteSchedule()
        self.model_options = {"transformer_options": {}}
        self._keys = None
        self.model = BridgeModel(self)

    # --- ModelPatcher surface -------------------------------------------------------------------
    def clone(self) -> "BridgePatcher":
        n = type(self).__new__(type(self))
        n.unet, n.model_sampling, n._keys, n.model = self.unet, self.model_sampling, self._keys, self.model
        n.model_options = copy.deepcopy(self.model_options)
        return n

    @property
    def load_device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def diffusion_model(self):
        return self.unet

    def get_model_object(self, name: str):
        if name == "model_sampling":
            return self.model_sampling
        if name == "diffusion_model":
            return self.unet
        raise AttributeError(name)

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        to = self.model_options["transformer_options"].copy()
        pr = dict(to.get("patches_replace", {}))
        table = dict(pr.get(name, {}))
        key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        table[key] = patch
        pr[name] = table
        to["patches_replace"] = pr
        self.model_options["transformer_options"] = to

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_patch(self, patch, name):
        to = self.model_options["transformer_options"].copy()
        patches = dict(to.get("patches", {}))
        patches[name] = patches.get(name, []) + [patch]
        to["patches"] = patches
        self.model_options["transformer_options"] = to

    def set_model_attn1_patch(self, patch):
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch):
        self.set_model_patch(patch, "attn2_patch")

    def set_model_unet_function_wrapper(self, fn):
        self.model_options["model_function_wrapper"] = fn

    def set_model_sampler_cfg_function(self, fn, disable_cfg1_optimization=False):
        self.model_options["sampler_cfg_function"] = fn
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    # --- running the UNet -----------------------------------------------------------------------
    def _processors(self, state):
        per_level = layers_per_block(self.unet)
        return {name: RouterAttnProcessor(state, *processor_key(name, per_level))
                for name in attention_layers(self.unet)}

    def apply_model(self, x, sigma, context, transformer_options=None, **extra):
        """The denoised x0 for ``x = x0 + sigma*eps``, running the patches in ``transformer_options`` (this
        patcher's own when None). ``patcher.model.apply_model`` is the same with ComfyUI's argument names."""
        to = transformer_options if transformer_options is not None else self.model_options["transformer_options"]
        return self._run(x, sigma, context, dict(to), **extra)

    def _sdxl_conditioned(self) -> bool:
        """An SDXL UNet: besides the context it takes the pooled text and six size ids (diffusers' text_time)."""
        return getattr(getattr(self.unet, "config", None), "addition_embed_type", None) == "text_time"

    def _extra_conds(self, options: dict) -> dict:
        """A diffusers SD1.5 UNet takes the prompt's context only; an SDXL one also the pooled text
        (``pooled_output``) and the size ids ComfyUI's SDXL builds ``y`` from, in its order: height, width,
        crop_h, crop_w, target_height, target_width (diffusers' original size, crop corner, target size)."""
        pooled = options.get("pooled_output")
        if not self._sdxl_conditioned() or pooled is None:
            return {}
        h, w = options.get("height", 1024), options.get("width", 1024)
        ids = [h, w, options.get("crop_h", 0), options.get("crop_w", 0), options.get("target_height", h),
               options.get("target_width", w)]
        return {"text_embeds": Cond(pooled), "time_ids": Cond(sdxl_time_ids(ids, pooled.shape[0]))}

    def _latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def _run(self, x, sigma, context, to: dict, text_embeds=None, time_ids=None, **unused):
        added, dtype = None, parameter_dtype(self.unet)
        if self._sdxl_conditioned():
            if text_embeds is None or time_ids is None:
                raise InputError("this SDXL UNet needs the pooled text (text_embeds) and the size ids (time_ids) "
                                 "besides the context: encode the prompt with the SDXL text encoders")
            added = {"text_embeds": text_embeds.to(x.device, dtype), "time_ids": time_ids.to(x.device)}
        to.setdefault("sigmas", sigma)
        to["original_shape"] = list(x.shape)
        to.setdefault("transformer_index", 0)
        state = {"transformer_options": to}
        ms = self.model_sampling
        with processors_installed(self.unet, self._processors(state)):
            eps = self.unet(ms.calculate_input(sigma, x).to(dtype), ms.timestep(sigma).float(),
                            encoder_hidden_states=context.to(dtype), added_cond_kwargs=added).sample
        return ms.calculate_denoised(sigma, eps.float(), x)

    def eps(self, x, sigma, context, transformer_options=None):
        x0 = self.apply_model(x, sigma, context, transformer_options)
        return (x - x0) / sigma.view(-1, *[1] * (x.ndim - 1))
