"""The few ComfyUI services nodes need, imported lazily so nodes also run on the diffusers bridge.

Nodes call the host objects by ComfyUI's own method names (``model.model.apply_model``,
``vae.encode``, ``clip_vision.encode_image``); the bridge's objects answer the same names
(:mod:`stylekit.bridge`). The one question asked here is ComfyUI's own: whether its model management
owns an object and must load it (:func:`managed`).
"""
from __future__ import annotations

import math
import sys

import torch

from ..errors import InputError, UnsupportedModelError


MAX_LIST_TEXT = 4096  # characters of a typed list: far beyond any real one, refused before it is split


def number_list(text: str, cast=float, field: str = "list", max_items: int = 256, unique: bool = False) -> list:
    """'1, 0.5' (or ';'-separated) -> [1.0, 0.5]; blanks skipped; anything else refused naming ``field``.

    At most ``max_items`` numbers (and :data:`MAX_LIST_TEXT` characters, checked first); with ``unique``
    a number given twice is refused (a set of layers, not a sequence of weights)."""
    if len(text) > MAX_LIST_TEXT:
        raise InputError(f"{field} is {len(text)} characters long; a list here is a few numbers, e.g. '1, 0.5'")
    out = []
    for item in (x.strip() for x in text.replace(";", ",").split(",")):
        if not item:
            continue
        try:
            value = cast(item)
        except ValueError:
            raise InputError(f"{field}: cannot read {item[:40]!r} as a {'whole ' if cast is int else ''}number; "
                             "write e.g. '1, 0.5'") from None
        if not math.isfinite(value):
            raise InputError(f"{field}: {item!r} is not a finite number")
        if unique and value in out:
            raise InputError(f"{field} names {item} twice; give each once")
        out.append(value)
    if len(out) > max_items:
        raise InputError(f"{field} lists {len(out)} numbers; at most {max_items}")
    return out


class FileList(list):
    """The choices of a model-file combo (what ComfyUI's folder holds): ComfyUI checks the choice; the
    node boundary does not, as outside ComfyUI a path is given directly."""


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


def managed(patcher) -> bool:
    """Whether ComfyUI's model management owns ``patcher`` (a ModelPatcher): such a model is loaded
    before use and hands its weights over in inference mode. Objects of any other host run where they are."""
    mp = sys.modules.get("comfy.model_patcher")
    return mp is not None and isinstance(patcher, mp.ModelPatcher)


def load(model) -> torch.device:
    """Load ``model`` (with its weight patches, e.g. LoRA) on its device; returns that device."""
    if managed(model):
        import comfy.model_management
        comfy.model_management.load_models_gpu([model])
    return model.load_device


def compute_device() -> torch.device:
    """ComfyUI's torch device (its GPU when it has one); the CPU outside ComfyUI."""
    try:
        import comfy.model_management
    except ImportError:
        return torch.device("cpu")
    return comfy.model_management.get_torch_device()


def latent_in(model, samples: torch.Tensor) -> torch.Tensor:
    return model.model.process_latent_in(samples)


def latent_out(model, x: torch.Tensor) -> torch.Tensor:
    return model.model.process_latent_out(x)


def latent_channels(model) -> int:
    """How many channels the model's latents have (SD1.5 / SDXL 4, Flux.1 16), from its latent format."""
    return int(model.model.latent_format.latent_channels)


def model_sampling(model):
    return model.get_model_object("model_sampling")


def percent_window(model, start: float, end: float) -> tuple[float, float]:
    ms = model_sampling(model)
    if end < start:
        raise InputError(f"end_percent {end} is before start_percent {start}")
    return float(ms.percent_to_sigma(start)), float(ms.percent_to_sigma(end))


def model_conds(model, conditioning, latent: torch.Tensor, device) -> tuple[torch.Tensor, dict]:
    """The first CONDITIONING entry as the model consumes it: (context (1, T, C), extra inputs).

    The extra inputs come from the model's own ``extra_conds`` (SDXL: ``y`` from the pooled output and
    the size embedding; Flux: ``y`` and ``guidance``; Qwen-Image: the text's ``attention_mask``), exactly as
    its samplers build them.
    """
    ctx, opts = conditioning[0][0][:1].to(device), conditioning[0][1]
    params = dict(opts, cross_attn=ctx, device=device, noise=latent, prompt_type="positive")
    params.setdefault("width", latent.shape[-1] * 8)
    params.setdefault("height", latent.shape[-2] * 8)
    conds = model.model.extra_conds(**params)
    known = ("y", "guidance", "attention_mask")  # SDXL's and Flux's inputs; Qwen-Image's text mask
    unknown = sorted(set(conds) - {"c_crossattn", *known})
    if unknown:
        raise UnsupportedModelError(f"this model needs {unknown} besides the prompt (an inpainting or edit model?); "
                                    "StyleKit inversion supports plain text-to-image models")
    extra = {n: conds[n].cond[:1].to(device) for n in known if n in conds}
    return conds["c_crossattn"].cond[:1].to(device), extra


class StartNoise:
    """A NOISE (SamplerCustomAdvanced's input) that makes the sampler start exactly at ``x_start``, a latent
    at ``sigma`` in model space (an inverted latent): the sampler scales noise and latent with the model's
    own ``noise_scaling`` (flow models: sigma * noise + (1 - sigma) * latent, which ignores the latent at
    sigma 1), so the noise returned is ``x_start`` solved out of that linear map for the given latent."""

    seed = 0

    def __init__(self, model, x_start: torch.Tensor, sigma: float):
        self.model, self.x_start, self.sigma = model, x_start.detach().cpu(), float(sigma)

    def generate_noise(self, input_latent):
        samples = input_latent["samples"]
        if tuple(samples.shape[-2:]) != tuple(self.x_start.shape[-2:]):
            raise InputError(f"start_noise is for a {tuple(self.x_start.shape[-2:])} latent, the sampler's latent_image "
                             f"is {tuple(samples.shape[-2:])}: give it the content latent that was inverted")
        ms = model_sampling(self.model)
        sigma = torch.tensor(self.sigma)
        latent = latent_in(self.model, samples.float().cpu())
        max_denoise = math.isclose(float(ms.sigma_max), self.sigma, rel_tol=1e-05) or self.sigma > float(ms.sigma_max)
        offset = ms.noise_scaling(sigma, torch.zeros_like(latent), latent, max_denoise)
        scale = ms.noise_scaling(sigma, torch.ones_like(latent), torch.zeros_like(latent), max_denoise)
        return ((self.x_start - offset) / scale).expand(samples.shape[0], *self.x_start.shape[1:]).contiguous()


def register_folder(name: str, extensions=(".safetensors",)) -> None:
    """Register ComfyUI's ``models/<name>`` folder (no-op outside ComfyUI)."""
    try:
        import folder_paths
    except ImportError:
        return
    import os
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], set(extensions))


def list_files(name: str, extensions: tuple = ()) -> FileList:
    """The files of ComfyUI's ``models/<name>`` (those ending in ``extensions`` if given)."""
    try:
        import folder_paths
    except ImportError:
        return FileList()
    return FileList(f for f in folder_paths.get_filename_list(name) if not extensions or f.endswith(extensions))


def full_path(name: str, filename: str) -> str:
    try:
        import folder_paths
    except ImportError:
        return filename
    path = folder_paths.get_full_path(name, filename)
    if path is None:
        raise InputError(f"{filename} is not in ComfyUI's models/{name} folder")
    return path


def vision_hidden_states(clip_vision, pixels: torch.Tensor) -> torch.Tensor:
    """Penultimate hidden states of a CLIP vision tower for preprocessed ``pixels`` (B, 3, 224, 224).

    A CLIP_VISION's own preprocessing is bypassed: its tower is called on ``pixels`` as they are.
    """
    load(clip_vision.patcher)
    out = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device).float(), intermediate_output=-2)
    return out[1].float()


def input_folder(name: str, field: str = "folder", make: bool = False, exists: bool = True) -> tuple[str, str]:
    """A folder inside ComfyUI's input directory (outside ComfyUI: the current folder), named relative to it:
    returns (its real path, its name as messages show it, ``input/<name>``). A name that is absolute or
    leads out of the input directory (``..``, a symlink) is refused; messages never show server paths.
    ``make``: a missing folder is made (a node that writes there); ``exists=False``: only the name is checked
    (validation of a folder a node will make)."""
    import os
    try:
        import folder_paths
        base = folder_paths.get_input_directory()
    except ImportError:
        base = os.getcwd()
    rel = name.strip().replace("\\", "/").strip("/")
    shown = f"input/{rel}"
    if any(ord(ch) < 32 for ch in rel):
        raise InputError(f"{field} holds control characters; give a plain folder name, e.g. 'photos'")
    if os.path.isabs(name.strip()) or rel.startswith("~") or ":" in rel:
        raise InputError(f"{field} is a path on the server; give a folder inside ComfyUI's input folder, e.g. 'photos'")
    root = os.path.realpath(base)
    path = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([path, root]) != root:
        raise InputError(f"{field} {rel!r} leads out of ComfyUI's input folder; give a folder inside it, e.g. 'photos'")
    if make and not os.path.exists(path):
        try:
            os.makedirs(path)
        except OSError as e:
            raise InputError(f"{field}: {shown[:80]} cannot be made ({e.strerror}); give a short plain folder name") from None
    if not exists and not os.path.exists(path):
        return path, shown
    if not os.path.isdir(path):
        raise InputError(f"{field}: {shown} is not a folder; make it inside ComfyUI's input folder and put the photos there")
    return path, shown


def output_target(name: str, filename: str, extension: str = ".safetensors", field: str = "filename"):
    """Where a node will write ``filename``: ComfyUI's ``models/<name>`` (outside ComfyUI, the current
    folder), checked now, before the node's work (see :mod:`stylekit.files`); a taken name is numbered."""
    import os

    from ..files import output_target as target
    try:
        import folder_paths
        folder = folder_paths.get_folder_paths(name)[0]
    except ImportError:
        folder = os.getcwd()
    return target(folder, filename, extension, numbered=True, field=field)


def ordinary(w: torch.Tensor) -> torch.Tensor:
    """Identity weight wrapper that always hands autograd an ordinary tensor.

    ComfyUI's cast usually passes a wrapper a fresh copy of the weight, made outside inference mode;
    the dynamic patcher (comfy-aimdo on CUDA) may pass the stored tensor itself, an inference tensor
    autograd cannot save. That one is copied here (outside inference mode: the trainers run there).
    """
    return w.clone() if w.is_inference() else w


def trainable(patcher):
    """A clone whose weights reach autograd as ordinary tensors (ComfyUI loads them in inference mode).

    Every weight gets the identity wrapper :func:`ordinary`, which also makes ComfyUI cast through
    its wrapper path (as its own LoRA trainer does). Models outside ComfyUI's management are ordinary already.
    """
    if not managed(patcher):
        return patcher
    m = patcher.clone()
    for name, mod in m.model.named_modules():
        if hasattr(mod, "weight_function"):
            for attr in ("weight", "bias"):
                if getattr(mod, attr, None) is not None:
                    m.add_weight_wrapper(f"{name}.{attr}", ordinary)
    return m


def trainable_clip(clip):
    if not managed(clip.patcher):
        return clip
    c = clip.clone()
    c.patcher = trainable(c.patcher)
    return c


def vae_encode(vae, images: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> latents (before the model's ``process_latent_in``)."""
    return vae.encode(images[..., :3])


def text_embeds(clip, text: str) -> torch.Tensor:
    """The pooled (projected, where the encoder has a projection) embedding of ``text``."""
    return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)[1].float()


CLIP_CHUNK = 16  # images preprocessed and encoded at once: CLIP's 224 px batch stays small whatever B is
MAX_ASPECT = 16  # CLIP resizes the shortest side to 224: a 1:16 image is 224 x 3584 on the way, a 1:12500 strip 2 GB


def vision_features(clip_vision, images: torch.Tensor, feature: str = "image_embeds", field: str = "image") -> torch.Tensor:
    """``image_embeds`` or ``penultimate_hidden_states`` of CLIP vision for IMAGE (B, H, W, C), by the
    CLIP_VISION's own ``encode_image`` (ComfyUI's: shortest side to 224, centre crop), :data:`CLIP_CHUNK`
    images at a time; an image longer than :data:`MAX_ASPECT` times its width (or the reverse) is refused
    naming ``field``, as its resize alone would cost memory out of proportion."""
    h, w = images.shape[1:3]
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise InputError(f"{field} is {w}x{h} px; CLIP vision takes images up to {MAX_ASPECT}:1 (crop it first)")
    return torch.cat([clip_vision.encode_image(images[i:i + CLIP_CHUNK, ..., :3], crop=True)[feature].float()
                      for i in range(0, images.shape[0], CLIP_CHUNK)])


def image_embeds(clip_vision, images: torch.Tensor, field: str = "images") -> torch.Tensor:
    """CLIP image embeddings (projected where the model has a projection)."""
    return vision_features(clip_vision, images, "image_embeds", field)


def text_to_image(model, clip, vae, prompt: str, negative: str, seed: int, steps: int, cfg: float, width: int,
                  height: int) -> torch.Tensor:
    """IMAGE (1, H, W, 3) of ``prompt``: ComfyUI's own sampler (euler, normal schedule, its seeded noise), as a
    KSampler would draw it. Outside ComfyUI there is none (the bridge draws with its own, from a shell)."""
    try:
        import comfy.sample
    except ImportError:
        raise InputError("drawing images needs ComfyUI's sampler; outside ComfyUI draw DEADiff pairs with "
                         "python -m stylekit.tools.deadiff_pairs") from None

    def encode(text):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]
    latent = torch.zeros(1, latent_channels(model), height // 8, width // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", encode(prompt), encode(negative), latent,
                                  denoise=1.0, disable_pbar=True, seed=seed)
    return vae.decode(samples)[..., :3]
