"""Full-size SD1.5 / SDXL models with random weights inside a real ComfyUI, for the real-size benchmark
(``make bench-real``): the UNets at their published sizes, CLIP vision ViT-L / ViT-H, CLIP-L text, and
DEADiff / IP-Adapter / CSGO weights at the sizes of the published files. Random weights change no
shape and no FLOP, so times and memory are those of the real models; images are not meaningful.
"""
import os
import resource
import time
from contextlib import contextmanager

import torch
from comfy_host import seed_weights

_COMMON = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, use_spatial_transformer=True,
               legacy=False, use_temporal_attention=False, use_temporal_resblock=False)
# ComfyUI's own model_detection entries for the two families (comfy/model_detection.py, SD15 and SDXL)
SD15_FULL = dict(_COMMON, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], num_heads=8, num_head_channels=-1,
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], context_dim=768,
                 use_linear_in_transformer=False, adm_in_channels=None)
SDXL_FULL = dict(_COMMON, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], num_heads=-1, num_head_channels=64,
                 transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048,
                 use_linear_in_transformer=True, adm_in_channels=2816, num_classes="sequential")
FAMILIES = {  # unet config, pixel size, context width, pooled width (SDXL's y), CLIP vision for the adapter
    "sd15": dict(unet=SD15_FULL, pixels=512, context=768, pooled=None, vision="h"),
    "sdxl": dict(unet=SDXL_FULL, pixels=1024, context=2048, pooled=1280, vision="h"),
}


def device_and_dtype():
    """ComfyUI's own choice: its torch device, fp16 on a GPU and fp32 on the CPU (as for an fp16 checkpoint)."""
    import comfy.model_management as mm
    dev = mm.get_torch_device()
    return dev, (torch.float16 if dev.type == "cuda" else torch.float32)


def full_unet(family: str, seed: int = 0):
    """A ComfyUI ModelPatcher around the full-size UNet of ``family`` (ComfyUI's model classes), random weights."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    dev, dtype = device_and_dtype()
    cfg = dict(FAMILIES[family]["unet"])
    mc = (comfy.supported_models.SD15 if family == "sd15" else comfy.supported_models.SDXL)(cfg)
    mc.set_inference_dtype(dtype, None)
    cls = comfy.model_base.BaseModel if family == "sd15" else comfy.model_base.SDXL
    model = cls(mc, device=torch.device("cpu"))
    seed_weights(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=mm.unet_offload_device())


def clip_vision(kind: str = "h", seed: int = 1):
    """ComfyUI's ClipVisionModel at the published size (``l``: ViT-L/14 for DEADiff, ``h``: ViT-H/14)."""
    import comfy.clip_vision
    name = {"l": "clip_vision_config_vitl.json", "h": "clip_vision_config_h.json"}[kind]
    cv = comfy.clip_vision.ClipVisionModel(os.path.join(os.path.dirname(comfy.clip_vision.__file__), name))
    seed_weights(cv.model, seed)
    return cv


def clip_text(seed: int = 2):
    """ComfyUI's SD1.5 CLIP (CLIP-L text, 12 layers at 768, real tokenizer) with random weights."""
    import comfy.sd
    import comfy.sd1_clip

    class Target:
        params, clip, tokenizer = {}, comfy.sd1_clip.SD1ClipModel, comfy.sd1_clip.SD1Tokenizer
    clip = comfy.sd.CLIP(Target)
    seed_weights(clip.cond_stage_model, seed)
    return clip


def deadiff(model, seed: int = 3):
    """DEADiff weights at the published size (BLIP-2 Q-Formers: 12 BERT layers at 768, 16 queries, ViT-L)."""
    from stylekit.attention.layers import model_layers
    from tiny_models import tiny_deadiff_state_dict
    from stylekit.models.deadiff import adapter_from_state_dict
    sd = tiny_deadiff_state_dict(model_layers(model), seed=seed, hidden=768, n_layers=12, intermediate=3072,
                                 positions=512, queries=16, vision=1024, proj_hidden=3072)
    return adapter_from_state_dict(sd, heads=12, source="random DEADiff at the published size")


def adapter(model, csgo: bool = False, seed: int = 4):
    """ip-adapter-plus(_sdxl_vit-h) at the published size (Resampler: 16 tokens, depth 4, ViT-H hidden states),
    or with ``csgo`` CSGO's layout (style Resampler + content projection, image K/V on down and up blocks)."""
    from safetensors.torch import save_file
    from stylekit.attention.layers import model_layers
    from tiny_models import flat_state_dict, tiny_ip_adapter
    from stylekit.models.ip_adapter import load_adapter
    layers = model_layers(model)
    width = 768 if layers.family == "sd15" else 1280
    nested = tiny_ip_adapter(layers, "plus", feature_width=1280, tokens=16, seed=seed, csgo=csgo, dim=width,
                             depth=4, heads=width // 64)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:  # through the loader users run, from the flat .safetensors layout
        path = os.path.join(tmp, ("csgo_4_32" if csgo else "ip-adapter-plus") + ".safetensors")
        save_file(flat_state_dict(nested), path)
        return load_adapter(path)


def conditioning(family: str, batch: int, seed: int):
    """A CONDITIONING of ``batch`` rows at the family's context width (SDXL: with its pooled output)."""
    f = FAMILIES[family]
    g = torch.Generator().manual_seed(seed)
    extra = {} if f["pooled"] is None else {"pooled_output": torch.randn(batch, f["pooled"], generator=g)}
    return [[torch.randn(batch, 77, f["context"], generator=g), extra]]


def pixels(family: str) -> int:
    """The family's size, or STYLEKIT_BENCH_PIXELS for a quick smoke run of the harness (not the benchmark)."""
    return int(os.environ.get("STYLEKIT_BENCH_PIXELS", FAMILIES[family]["pixels"]))


def latent(family: str, batch: int) -> torch.Tensor:
    side = pixels(family) // 8
    return torch.zeros(batch, 4, side, side)


def image(family: str, seed: int, side: int | None = None) -> torch.Tensor:
    side = side or pixels(family)
    return torch.rand(1, side, side, 3, generator=torch.Generator().manual_seed(seed))


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def ksampler(model, latent_image, positive, negative, steps: int, cfg: float, seed: int = 0):
    """What KSampler runs (nodes.common_ksampler without the preview): comfy.sample.sample, euler / normal."""
    import comfy.sample
    noise = comfy.sample.prepare_noise(latent_image, seed)
    out = comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent_image,
                              disable_pbar=True, seed=seed)
    sync()
    return out


def sampler_custom(model, latent_image, positive, negative, sigmas, cfg: float, seed: int = 0):
    """What SamplerCustom runs with add_noise off (the Feature Fusion workflows): euler on ``sigmas``."""
    import comfy.sample
    import comfy.samplers
    out = comfy.sample.sample_custom(model, torch.zeros_like(latent_image), cfg, comfy.samplers.sampler_object("euler"),
                                     sigmas, positive, negative, latent_image, disable_pbar=True, seed=seed)
    sync()
    return out


@contextmanager
def peak_memory(out: dict):
    """Peak process RSS (MB; the high-water mark reset first where Linux allows, else the process's peak)
    and, on a GPU, peak CUDA memory allocated (MB) over the block, written into ``out``."""
    from stylekit.demo import peak_rss_kb, reset_peak_rss
    reset_peak_rss()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    yield out
    sync()
    kb = peak_rss_kb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["peak_rss_mb"] = round(kb / 1024, 0)
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 0)


def seconds(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def profile(fn, path, rows: int = 30) -> None:
    """torch.profiler over one call of ``fn``: the top ops by self time (CUDA time on a GPU) into ``path``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    cuda = torch.cuda.is_available()
    with torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as p:
        fn()
    events = p.key_averages()
    table = None
    for key in (["self_device_time_total", "self_cuda_time_total"] if cuda else []) + ["self_cpu_time_total"]:
        try:
            table = events.table(sort_by=key, row_limit=rows)
            break
        except (AttributeError, KeyError, ValueError):
            continue
    path.parent.mkdir(exist_ok=True)
    path.write_text(table or str(events))
