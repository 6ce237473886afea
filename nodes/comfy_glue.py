"""The few ComfyUI services nodes need, imported lazily so nodes also run on the diffusers bridge."""
from __future__ import annotations

import torch


def progress(total: int):
    """A callback(j, n) driving ComfyUI's progress bar (a no-op outside ComfyUI)."""
    try:
        import comfy.utils
    except ImportError:
        return None
    bar = comfy.utils.ProgressBar(total)
    return lambda j, n: bar.update_absolute(j, n)


def interrupted() -> None:
    try:
        import comfy.model_management
    except ImportError:
        return
    comfy.model_management.throw_exception_if_processing_interrupted()


def load(model) -> torch.device:
    """Load ``model`` (with its weight patches, e.g. LoRA) on its device; returns that device."""
    if hasattr(model, "unet"):  # BridgePatcher
        return next(model.unet.parameters()).device
    import comfy.model_management
    comfy.model_management.load_models_gpu([model])
    return model.load_device


def latent_in(model, samples: torch.Tensor) -> torch.Tensor:
    return model.model.process_latent_in(samples) if hasattr(model, "model") else samples


def latent_out(model, x: torch.Tensor) -> torch.Tensor:
    return model.model.process_latent_out(x) if hasattr(model, "model") else x


def model_sampling(model):
    return model.get_model_object("model_sampling")


def percent_window(model, start: float, end: float) -> tuple[float, float]:
    ms = model_sampling(model)
    if end < start:
        raise ValueError(f"end_percent {end} is before start_percent {start}")
    return float(ms.percent_to_sigma(start)), float(ms.percent_to_sigma(end))
