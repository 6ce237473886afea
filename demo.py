"""StyleKit demo: every method end to end through the diffusers bridge.

    python -m stylekit.demo --out out

The default model is a tiny RANDOMLY INITIALISED SD1.5-layout UNet (and VAE): nothing is downloaded,
so the images are noise-like patterns, not art. What the demo shows is that each method runs end to
end, how long it takes and how much memory it needs. Writes PNGs and out/report.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from .attention.layers import model_layers
from .attention.patch_map import render_patch_map, summarize
from .attention.router import Contribution, add_contribution
from .bridge import BridgePatcher, sample_euler_cfg
from .bridge.tiny import tiny_sd15_unet

NOTE = "The default model is a tiny randomly initialised SD1.5-layout UNet/VAE: images are not meaningful art."


def tiny_vae(seed=0):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8,
                         sample_size=128).eval()


def to_pil(vae, latent):
    from PIL import Image
    with torch.no_grad():
        img = vae.decode(latent / 0.18215).sample
    arr = ((img[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


class Demo:
    def __init__(self, out: Path, steps: int, seed: int):
        self.out, self.steps, self.seed = out, steps, seed
        self.model = BridgePatcher(tiny_sd15_unet(seed=seed))
        self.vae = tiny_vae(seed)
        g = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(1, 4, 16, 16, generator=g)
        self.cond = torch.randn(1, 77, 64, generator=g)
        self.uncond = torch.zeros_like(self.cond)
        self.report = {"note": NOTE, "device": "cpu", "torch": torch.__version__, "python": platform.python_version(),
                       "model": {"family": model_layers(self.model).family, "attention_layers": len(model_layers(self.model).keys),
                                 "unet_parameters": sum(p.numel() for p in self.model.unet.parameters())},
                       "steps": steps, "runs": {}}

    def sample(self, model):
        with torch.no_grad():
            return sample_euler_cfg(model, self.noise, model.model_sampling.ddim_sigmas(self.steps),
                                    self.cond, self.uncond, cfg=5.0)

    def run(self, name, fn):
        fresh = reset_peak_rss()
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        entry = {"seconds": round(seconds, 4), "random_weights": True}
        if fresh:  # the high-water mark was reset before this method: its own peak
            entry["peak_rss_mb"] = round(peak_rss_kb() / 1024, 1)
        else:  # no per-method reset on this system: say what the number is
            entry["process_peak_rss_mb_so_far"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        entry.update(result.pop("report", {}))
        for key, image in result.items():
            path = self.out / f"{name}_{key}.png"
            image.save(path)
            entry.setdefault("images", []).append(path.name)
        self.report["runs"][name] = entry
        print(f"{name:>14}: {seconds:7.3f} s  {', '.join(entry.get('images', []))}")


def reset_peak_rss() -> bool:
    """Reset the process's resident-memory high-water mark (Linux: /proc/self/clear_refs 5), so the
    next reading is one method's own peak; False where the system has no such reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return peak_rss_kb() is not None
    except OSError:
        return False


def peak_rss_kb() -> int | None:
    """VmHWM of /proc/self/status: the peak resident memory since start or the last reset."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def demo_plain(d: Demo):
    return {"image": to_pil(d.vae, d.sample(d.model))}


def demo_router(d: Demo):
    """Two contributions composed on one set of blocks: the router mechanism every method uses."""
    m = d.model.clone()
    keys = model_layers(m).select("output")
    add_contribution(m, Contribution("sharpen_q", lambda q, k, v, e, nxt, w: nxt(q * (1 + w), k, v, e), weight=0.5), keys, "attn1")
    add_contribution(m, Contribution("mix_v", lambda q, k, v, e, nxt, w: nxt(q, k, v.roll(1, dims=1) * w + v * (1 - w), e),
                                     weight=0.3, sigma_start=m.model_sampling.percent_to_sigma(0.0),
                                     sigma_end=m.model_sampling.percent_to_sigma(0.5)), keys, "attn1")
    latent = d.sample(m)
    return {"image": to_pil(d.vae, latent), "patch_map": render_patch_map(m),
            "report": {"summary": summarize(m).splitlines()[0],
                       "mean_abs_change_vs_plain": round(float((latent - d.sample(d.model)).abs().mean()), 4)}}


def demo_styleid(d: Demo, preset="StyleID"):
    """MagicStyle/StyleID: invert a content and a style latent, then sample with Feature Fusion."""
    from .attention.feature_fusion import PRESETS, STYLEID_BLOCKS
    from .models.feature_store import StorePolicy
    from .models.magicstyle import ddim_uniform_sigmas, fusion_model, invert_pair, start_latent
    g = torch.Generator().manual_seed(d.seed + 1)
    content, style = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g) * 0.5 + 0.5
    sig = ddim_uniform_sigmas(d.model.model_sampling, d.steps)
    with torch.no_grad():
        t0 = time.perf_counter()
        inv = invert_pair(d.model, content, style, d.uncond, sig,
                          StorePolicy(layers=tuple(model_layers(d.model).select(STYLEID_BLOCKS))))
        t_inv = time.perf_counter() - t0
        x = sample_euler_cfg(fusion_model(d.model, inv, PRESETS[preset]), start_latent(inv) / sig[0], sig, d.uncond)
    return {"content": to_pil(d.vae, content), "style": to_pil(d.vae, style), "image": to_pil(d.vae, x),
            "report": {"inversion_seconds": round(t_inv, 4), "store_bytes": inv.store.size_bytes(), "preset": preset}}


def demo_deadiff(d: Demo):
    """DEADiff: a random reference image -> style tokens (tiny random Q-Former) -> injected on attn2."""
    from .bridge.tiny import tiny_clip_vision, tiny_deadiff_state_dict
    from .models.clip_preprocess import deadiff_pixels
    from .models.deadiff import adapter_from_state_dict
    from .models.deadiff_inject import DEADiffTokens, deadiff_model
    from .nodes.comfy_glue import vision_hidden_states
    adapter = adapter_from_state_dict(tiny_deadiff_state_dict(model_layers(d.model), seed=d.seed), heads=4)
    image = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(d.seed + 2))
    with torch.no_grad():
        t0 = time.perf_counter()
        style = adapter.encode(vision_hidden_states(tiny_clip_vision(seed=d.seed), deadiff_pixels(image)), "style")
        t_enc = time.perf_counter() - t0
    latent = d.sample(deadiff_model(d.model, DEADiffTokens(adapter, style=style)))
    return {"image": to_pil(d.vae, latent),
            "report": {"encode_seconds": round(t_enc, 4), "tokens": list(style.shape),
                       "mean_abs_change_vs_plain": round(float((latent - d.sample(d.model)).abs().mean()), 4)}}


def demo_catversion(d: Demo):
    """CatVersion: train a prefix (20 steps) on two random 'concept' images, then sample with it."""
    from .bridge.tiny import tiny_bridge_clip
    from .models.catversion import CatVersionPrefix, catversion_clip
    from .models.catversion_train import TrainSettings, train_prefix
    from .models.magicstyle import host_apply_model
    from .nodes.comfy_glue import vae_encode
    clip = tiny_bridge_clip(seed=d.seed)
    images = torch.rand(2, 128, 128, 3, generator=torch.Generator().manual_seed(d.seed + 3))
    with torch.no_grad():
        latents = vae_encode(d.vae, torch.cat([images, images.flip(2)]))
    prefix = CatVersionPrefix.random([2, 3], 64, seed=d.seed, base_word="teapot")
    text = catversion_clip(clip, prefix, trainable=True)
    tokens = text.tokenize("teapot")
    t0 = time.perf_counter()
    losses = train_prefix(prefix, lambda: text.encode_from_tokens(tokens),
                          lambda x, s, c: host_apply_model(d.model, x, s, c, {}), latents, d.model.model_sampling.sigmas,
                          TrainSettings(steps=20, seed=d.seed))
    t_train = time.perf_counter() - t0
    with torch.no_grad():
        cond = catversion_clip(clip, prefix).encode_from_tokens(clip.tokenize("a teapot on a beach"))
        uncond = clip.encode_from_tokens(clip.tokenize(""))  # the paper: the negative keeps the plain CLIP
        latent = sample_euler_cfg(d.model, d.noise, d.model.model_sampling.ddim_sigmas(d.steps), cond, uncond, cfg=5.0)
    return {"image": to_pil(d.vae, latent),
            "report": {"train_seconds": round(t_train, 4), "train_steps": len(losses),
                       "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)]}}


def demo_stylestudio(d: Demo):
    """StyleStudio: a random IP-Adapter-layout file + a random reference -> cross-modal AdaIN, then the
    teacher model for the first 40% of steps."""
    import tempfile

    from .bridge.tiny import tiny_clip_vision, tiny_ip_adapter
    from .models.ip_adapter import load_adapter
    from .models.stylestudio import style_adapter_model, teacher_model
    from .nodes.comfy_glue import vision_features
    with tempfile.TemporaryDirectory() as tmp:  # written and read back in the published .bin layout
        torch.save(tiny_ip_adapter(model_layers(d.model), "plain", feature_width=48, seed=d.seed), f"{tmp}/ip.bin")
        adapter = load_adapter(f"{tmp}/ip.bin")
    image = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(d.seed + 4))
    feats = vision_features(tiny_clip_vision(seed=d.seed), image, adapter.feature)
    styled = style_adapter_model(d.model, adapter, feats, fusion="cross-modal AdaIN", preset="all")
    t0 = time.perf_counter()
    latent = d.sample(styled)
    t_styled = time.perf_counter() - t0
    t0 = time.perf_counter()
    taught = d.sample(teacher_model(styled, 0.4, 0.0))
    t_teacher = time.perf_counter() - t0
    return {"image": to_pil(d.vae, latent), "teacher": to_pil(d.vae, taught),
            "report": {"adapter": adapter.describe(), "sample_seconds": round(t_styled, 4),
                       "with_teacher_seconds": round(t_teacher, 4),
                       "mean_abs_change_vs_plain": round(float((latent - d.sample(d.model)).abs().mean()), 4)}}


def demo_stylerdalle(d: Demo):
    """StylerDALLE: a tiny random dVAE and translator, 10 pre-training steps on random photos, then
    stylise one image (128 px in, 256 px out)."""
    from .bridge.tiny import tiny_dvae, tiny_translator
    from .models.stylerdalle_pipeline import StylerDALLE, stylize, training_tokens
    from .models.stylerdalle_train import PretrainSettings, pretrain
    encoder, decoder = tiny_dvae(seed=d.seed)
    photos = torch.rand(4, 256, 256, 3, generator=torch.Generator().manual_seed(d.seed + 5))
    t16, t32 = training_tokens(encoder, photos)
    t0 = time.perf_counter()
    net, losses = pretrain(tiny_translator(seed=d.seed), decoder, t16, t32, PretrainSettings(steps=10, lr=3e-3, batch=4, warmup=2))
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = stylize(StylerDALLE(encoder, decoder, net), photos[:1], seed=d.seed)
    t_stylize = time.perf_counter() - t0
    from PIL import Image
    image = Image.fromarray((out[0].numpy() * 255).round().astype("uint8"))
    return {"image": image, "report": {"pretrain_seconds": round(t_train, 4), "nll_first_last": [round(losses[0], 4), round(losses[-1], 4)],
                                       "stylize_seconds": round(t_stylize, 4)}}


DEMOS = {"plain": demo_plain, "router": demo_router, "styleid": demo_styleid,
         "magicstyle": lambda d: demo_styleid(d, "MagicStyle"), "deadiff": demo_deadiff,
         "catversion": demo_catversion, "stylestudio": demo_stylestudio,
         "stylerdalle": demo_stylerdalle}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", choices=sorted(DEMOS), help="run only these demos")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(NOTE)
    d = Demo(a.out, a.steps, a.seed)
    for name in a.only or DEMOS:
        d.run(name, lambda fn=DEMOS[name]: fn(d))
    (a.out / "report.json").write_text(json.dumps(d.report, indent=2) + "\n")
    print(f"report: {a.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
