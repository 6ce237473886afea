"""Node inputs checked at the boundary, before any heavy work, by their declared ComfyUI type.

:func:`boundary` wraps a node's FUNCTION: every argument is checked against its ``INPUT_TYPES``
declaration and the node receives the checked value. Refusals are :class:`InputError` naming the
input and the fix.

* INT / FLOAT: finite and within the declared min..max (ComfyUI's own validation lets NaN through).
* STRING: a string without NUL characters.
* IMAGE: a (B, H, W, C) batch of at least one image, sides of at least :data:`MIN_SIDE` px, finite
  pixels; C = 3 as is, C = 4 (RGBA) with its alpha channel ignored, C = 1 (grayscale) used as RGB.
* MASK: (B, H, W) or one (H, W) mask, at least one, values finite and within 0..1.
* LATENT: ``{"samples": (B, C, H, W)}``, at least one, finite.
* CONDITIONING: a non-empty list of ``[tensor (B, T, C), dict]``, finite, with finite tensors and numbers
  in the dict (``pooled_output``, ``guidance``, ...).
"""
from __future__ import annotations

import functools
import inspect
import math

import torch

from ..errors import InputError, StyleKitError
from .comfy_glue import FileList
from .specs import Choices

MIN_SIDE = 8


def number(value, name: str, opts: dict):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} is {value!r}, not a number")
    if not math.isfinite(value):
        raise InputError(f"{name} is {value}; give a finite number")
    lo, hi = opts.get("min"), opts.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InputError(f"{name} is {value}; it must be between {lo} and {hi}")
    return value


def text(value, name: str):
    if not isinstance(value, str):
        raise InputError(f"{name} is a {type(value).__name__}, not text")
    if "\x00" in value:
        raise InputError(f"{name} holds a NUL character; remove it")
    return value


def images(value, name: str = "image") -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim != 4:
        raise InputError(f"{name}: expected an IMAGE batch (B, H, W, C), got "
                         f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
    b, h, w, c = value.shape
    if b == 0:
        raise InputError(f"{name} is an empty batch; connect at least one image")
    if c not in (1, 3, 4):
        raise InputError(f"{name} has {c} channels; expected RGB (3), RGBA (4) or grayscale (1)")
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{name} is {w}x{h} px; each side must be at least {MIN_SIDE} px (upscale it first)")
    if not torch.isfinite(value).all():
        raise InputError(f"{name} holds NaN or infinite pixel values; check the node that made it")
    if c == 1:
        return value.expand(b, h, w, 3)
    return value[..., :3] if c == 4 else value


def mask(value, name: str = "mask") -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in (2, 3):
        raise InputError(f"{name}: expected a MASK (B, H, W) or (H, W), got "
                         f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
    m = value if value.ndim == 3 else value.unsqueeze(0)
    if m.shape[0] == 0 or min(m.shape[1:]) == 0:
        raise InputError(f"{name} is empty ({tuple(value.shape)}); connect a mask")
    if not torch.isfinite(m).all():
        raise InputError(f"{name} holds NaN or infinite values")
    lo, hi = float(m.min()), float(m.max())
    if lo < 0 or hi > 1:
        raise InputError(f"{name} values run from {lo:g} to {hi:g}; a MASK holds 0..1 (normalise or clamp it)")
    return m


def mask_for(m: torch.Tensor, count: int, name: str = "mask", what: str = "image") -> torch.Tensor:
    """The batch rule: one mask for all (``count``) images or one per image; anything else refused."""
    if m.shape[0] not in (1, count):
        raise InputError(f"{name} has {m.shape[0]} masks for {count} {what}{'s' if count != 1 else ''}; "
                         f"give one mask for all or one per {what}")
    return m


def latent(value, name: str = "latent") -> dict:
    samples = value.get("samples") if isinstance(value, dict) else None
    # (B, C, 1, H, W): an image through a video VAE (Wan 2.1's, which Krea 2 reads), one frame
    if not isinstance(samples, torch.Tensor) or not (samples.ndim == 4 or (samples.ndim == 5 and samples.shape[2] == 1)):
        raise InputError(f"{name}: expected a LATENT with samples (B, C, H, W), or (B, C, 1, H, W) from a video VAE")
    if samples.shape[0] == 0:
        raise InputError(f"{name} is an empty batch")
    if not torch.isfinite(samples).all():
        raise InputError(f"{name} holds NaN or infinite values")
    return value


def conditioning(value, name: str = "conditioning") -> list:
    if not isinstance(value, list) or not value:
        raise InputError(f"{name} is empty; connect a CLIP Text Encode (or another CONDITIONING)")
    for entry in value:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], torch.Tensor)
                and entry[0].ndim == 3 and isinstance(entry[1], dict)):
            raise InputError(f"{name} is not a CONDITIONING ([tensor (B, T, C), options] entries)")
        if entry[0].shape[0] == 0 or entry[0].shape[1] == 0:
            raise InputError(f"{name} holds an empty tensor {tuple(entry[0].shape)}")
        if not torch.isfinite(entry[0]).all():
            raise InputError(f"{name} holds NaN or infinite values; check the node that made it")
        for key, extra in entry[1].items():  # pooled_output, guidance, ... : what the model reads besides the prompt
            if isinstance(extra, torch.Tensor) and extra.is_floating_point() and not torch.isfinite(extra).all():
                raise InputError(f"{name}: its {key} holds NaN or infinite values; check the node that made it")
            if isinstance(extra, float) and not math.isfinite(extra):
                raise InputError(f"{name}: its {key} is {extra}; give a finite number")
    return value


CHECKS = {"IMAGE": images, "MASK": mask, "LATENT": latent, "CONDITIONING": conditioning}


def check_input(typ, opts: dict, value, name: str):
    if typ in ("INT", "FLOAT"):
        return number(value, name, opts)
    if typ == "STRING":
        return text(value, name)
    if isinstance(typ, (list, tuple)):  # a combo: a fixed choice, or a model file (see comfy_glue.FileList)
        text(value, name)
        if isinstance(typ, Choices):  # an old name runs as its current one
            value = typ.resolve(value)
        if not isinstance(typ, FileList) and value not in typ:
            raise InputError(f"{name} is {value!r}; choose one of {list(typ)}")
        return value
    check = CHECKS.get(typ)
    return value if check is None else check(value, name)


def boundary(method):
    """Decorator for a node's FUNCTION: each argument checked by its declared type (module docstring)."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        spec = type(self).INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        bound = signature.bind(self, *args, **kwargs)
        for name, value in list(bound.arguments.items()):
            if name in declared and value is not None:
                decl = declared[name]
                bound.arguments[name] = check_input(decl[0], decl[1] if len(decl) > 1 else {}, value, name)
        return method(*bound.args, **bound.kwargs)
    return run


def validation(**fields):
    """A node's ``VALIDATE_INPUTS`` from checks that need no tensor: ``field=check`` where ``check(value)``
    raises :class:`InputError` (or any StyleKitError) for a bad value. ComfyUI runs it when it validates a
    prompt, before any node executes, and leaves only these fields' checks to it; a field fed by a link
    arrives as None and is checked when the node runs (the boundary checks everything again there).
    Give only fields ComfyUI does not check itself (text fields), so none of its checks is lost."""
    def VALIDATE_INPUTS(cls, **values):
        for name, check in fields.items():
            value = values.get(name)
            if value is None:
                continue
            try:
                check(value)
            except StyleKitError as e:
                return str(e)
        return True
    names = [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    names += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for n in fields]
    VALIDATE_INPUTS.__signature__ = inspect.Signature(names)
    return classmethod(VALIDATE_INPUTS)


def file_name(value) -> None:
    """An output ``filename``: a plain name (nodes write .safetensors into their model folder)."""
    from ..files import plain_name
    plain_name(value, ".safetensors", "filename")


def block_weights_text(value) -> None:
    """``block_weights`` readable and within bounds (which blocks the model has is checked when it runs)."""
    from ..attention.layers import parse_block_weights
    parse_block_weights(value)


def layer_list(value) -> list[int]:
    """CatVersion's ``layers``: at least one, at most 64, each once."""
    from .comfy_glue import number_list
    chosen = number_list(value, int, "layers", max_items=64, unique=True)
    if not chosen:
        raise InputError("layers is empty; name the text-encoder layers that get a prefix, e.g. '9, 10, 11'")
    return chosen


def weight_list(value) -> None:
    from .comfy_glue import number_list
    number_list(value, float, "mix_weights")


def input_subfolder(value) -> None:
    if value.strip():
        from .comfy_glue import input_folder
        input_folder(value, "folder")


def input_subfolder_name(value) -> None:
    """A folder a node will make inside ComfyUI's input folder: its name (it need not exist yet)."""
    from .comfy_glue import input_folder
    if not value.strip():
        raise InputError("data_folder is empty; name a folder inside ComfyUI's input folder, e.g. 'deadiff_pairs'")
    input_folder(value, "data_folder", exists=False)


def choice_problem(field: str, choices, value) -> str | None:
    """Why ``value`` is no choice of combo ``field`` (a list, or :class:`Choices` with its hidden aliases
    accepted), or None."""
    if choices.accepts(value) if isinstance(choices, Choices) else value in choices:
        return None
    shown = list(choices) if len(choices) <= 20 else f"the {len(choices)} choices in its list"
    return f"{field} {value!r} is not one of {shown}: pick one in the node (a file must be in its models folder)"


def one_of(choices: Choices, field: str):
    """A combo's check when its node validates it itself (:func:`choice_problem`)."""
    def check(value) -> None:
        problem = choice_problem(field, choices, value)
        if problem:
            raise InputError(problem)
    return check


def at_most(images: torch.Tensor, limit: int, field: str, why: str) -> torch.Tensor:
    """Refuse a batch of more than ``limit`` images in ``field`` (what the method does with each: ``why``)."""
    if images.shape[0] > limit:
        raise InputError(f"{field} holds {images.shape[0]} images; this node takes at most {limit} ({why})")
    return images


def image_sides(images: torch.Tensor, field: str, most: int, least: int, why: str) -> torch.Tensor:
    """Refuse IMAGE (B, H, W, C) in ``field`` with a side over ``most`` px (what the method does at that size:
    ``why``) or under ``least`` px."""
    h, w = images.shape[1], images.shape[2]
    if max(h, w) > most:
        raise InputError(f"{field} is {w}x{h} px; this node takes sides of at most {most} px ({why}): "
                         "scale the images down first (e.g. ImageScale)")
    if min(h, w) < least:
        raise InputError(f"{field} is {w}x{h} px; this node takes sides of at least {least} px: scale the images up "
                         "or crop a larger region")
    return images


def latent_for(model, samples: torch.Tensor, field: str) -> torch.Tensor:
    """Latents (B, C, H, W) of ``field`` whose channels are the model's (an SD latent on Flux, or the
    reverse, is refused naming both instead of failing inside the network)."""
    from ..attention.layers import model_layers
    from .comfy_glue import latent_channels
    want, got = latent_channels(model), samples.shape[1]
    if got != want:
        raise InputError(f"{field} has {got}-channel latents; this model works on {want}-channel ones: encode the "
                         "image with this model's VAE")
    layers = model_layers(model)
    video = layers.spec is not None and layers.spec.video_latents
    if (samples.ndim == 5) != video:
        shape = "one-frame video latents (B, C, 1, H, W)" if video else "image latents (B, C, H, W)"
        raise InputError(f"{field} is {samples.ndim}-dimensional; this {layers.title} model works on {shape}: encode "
                         "the image with this model's VAE")
    return samples


def conditioning_for(layers, value: list, field: str) -> list:
    """A CONDITIONING whose width is the one the model reads (``layers``: the model's; SD1.5 768, SDXL 2048,
    Flux.1 4096): a prompt encoded for another family is refused naming both widths."""
    if not layers.layers:
        return value
    want = layers.layers[0].context_dim
    for i, (tensor, _) in enumerate(value):
        if tensor.shape[-1] != want:
            where = "text input" if layers.is_dit else "cross-attention"
            raise InputError(f"{field} entry {i} is {tensor.shape[-1]} wide; this {layers.family} model's {where} takes "
                             f"{want}: encode the prompt with this model's text encoder")
    return value
