"""StyleKit demo: every method end to end through the diffusers bridge, on the miniature world.

    python -m stylekit.demo --out out

Nothing is downloaded. Every run uses the MINIATURE WORLD the project trains itself (64 px procedural
images, ``stylekit.toy``; ``make toy`` retrains it): each method writes a contact sheet and its effect
figures, read by the world's probes, as ``value`` / ``target`` / ``met``; the router demo shows two
contributions composed on the miniature UNet. Writes PNGs and out/report.json.
"""
from __future__ import annotations

import argparse
import functools
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
from .bridge import sample_euler_cfg
from .models.schedules import ddim_uniform_sigmas

NOTE = ("Every run uses the miniature world StyleKit trained itself (64 px procedural shapes and textures; make toy "
        "retrains it): its images show what each method does to a trained model, judged by the world's probes.")


class Demo:
    def __init__(self, out: Path, seed: int):
        self.out, self.seed = out, seed
        model = self.toy.model
        self.report = {"note": NOTE, "device": "cpu", "torch": torch.__version__, "python": platform.python_version(),
                       "model": {"family": model_layers(model).family, "attention_layers": len(model_layers(model).keys),
                                 "unet_parameters": sum(p.numel() for p in model.unet.parameters())},
                       "runs": {}, "effects": {}}

    @functools.cached_property
    def toy(self):
        """The trained miniature world (loaded once, on first use)."""
        from .toy.family import load_world
        return load_world()

    @functools.lru_cache(maxsize=1)  # noqa: B019 (one Demo per run)
    def inverted(self, n: int, steps: int):
        """The content / style pairs inverted once, shared by the StyleID and MagicStyle demos."""
        from .toy import effects
        return effects.invert_pairs(self.toy, n, seed=self.seed, steps=steps)

    def run(self, name, fn):
        fresh = reset_peak_rss()
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        entry = {"seconds": round(seconds, 4)}
        if "effects" in result:
            self.report["effects"][name] = result.pop("effects")
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


def _figures(figures: dict) -> dict:
    from .toy.effects import CLAIM_OF, TARGETS, judged
    return {k: judged(k, v) if CLAIM_OF.get(k, k) in TARGETS else {"value": v} for k, v in figures.items()}


def demo_text_to_image(d: Demo, n: int = 8):
    """The miniature world's text-to-image: random prompts, 20 steps, CFG 5; the probes read each sample."""
    from .toy import effects, world
    from .toy.family import images_tensor
    from .toy.sheets import contact_sheet
    figures, scenes, images = effects.text_to_image(d.toy, n, seed=d.seed, return_images=True)
    sheet = contact_sheet([("the prompt, drawn", images_tensor(scenes)), ("sampled", images)],
                          labels=[world.caption(s) for s in scenes], title="miniature world: text to image")
    return {"sheet": sheet, "report": {"prompts": n},
            "effects": _figures({f"t2i_{k}": v for k, v in figures.items()})}


def demo_router(d: Demo, steps: int = 20):
    """Two contributions composed on one set of blocks (the router every method's patch goes through), on the
    miniature UNet: one prompt sampled plainly and with both."""
    from .toy import world
    from .toy.sheets import contact_sheet
    toy = d.toy
    m = toy.model.clone()
    keys = model_layers(m).select("output")
    add_contribution(m, Contribution("sharpen_q", lambda q, k, v, e, nxt, w: nxt(q * (1 + w), k, v, e), weight=0.5), keys, "attn1")
    add_contribution(m, Contribution("mix_v", lambda q, k, v, e, nxt, w: nxt(q, k, v.roll(1, dims=1) * w + v * (1 - w), e),
                                     weight=0.3, sigma_start=m.model_sampling.percent_to_sigma(0.0),
                                     sigma_end=m.model_sampling.percent_to_sigma(0.5)), keys, "attn1")
    caption = world.caption(world.random_scenes(1, d.seed)[0])
    cond, uncond = toy.encode(caption), toy.encode("")
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(d.seed))
    sigmas = ddim_uniform_sigmas(toy.model.model_sampling, steps)
    with torch.no_grad():
        plain, patched = (sample_euler_cfg(x, noise, sigmas, cond, uncond, 5.0) for x in (toy.model, m))
    sheet = contact_sheet([("plain", toy.to_image(plain)), ("two contributions", toy.to_image(patched))], labels=[caption],
                          title="miniature world: the router")
    return {"sheet": sheet, "patch_map": render_patch_map(m),
            "report": {"summary": summarize(m).splitlines()[0],
                       "mean_abs_change_vs_plain": round(float((patched - plain).abs().mean()), 4)}}


def demo_styleid(d: Demo, preset="StyleID", n: int = 4, steps: int = 50):
    """MagicStyle/StyleID on the miniature world: invert a content and a style image, then sample with
    Feature Fusion; the last column is the content's inversion sampled with no fusion. Both presets start
    from the same inversions (one DDIM Invert feeding two Feature Fusion nodes, as in a graph)."""
    from .toy import effects
    from .toy.family import images_tensor
    from .toy.sheets import contact_sheet
    inverted = d.inverted(n, steps)  # StyleID's 50; the first demo to ask pays for it
    figures, run = effects.feature_fusion(d.toy, inverted, preset=preset)
    sheet = contact_sheet([("content", images_tensor(run.content)), ("style", images_tensor(run.style)),
                           (preset, run.result), ("no fusion", run.reconstruction)],
                          title=f"miniature world: Feature Fusion, {preset} preset")
    return {"sheet": sheet, "effects": _figures(figures),
            "report": {"pairs": n, "preset": preset, "steps": steps}}


def demo_deadiff(d: Demo, n: int = 4):
    """DEADiff on the miniature world: Q-Formers trained by StyleKit's DEADiff trainer (make toy). The prompt
    names a shape only ("a circle"), the reference shows another shape, colour and texture; DEADiff's style tokens against the plain
    IP-Adapter at the weight whose texture agreement matches DEADiff's."""
    from .toy import effects, world
    from .toy.family import images_tensor
    from .toy.sheets import contact_sheet
    # the IP-Adapter at 0.25 and 1, as the effect test sweeps it (enough to bracket DEADiff's texture agreement)
    figures, im = effects.deadiff(d.toy, d.toy.deadiff(), n, seed=d.seed, ip_weights=(0.25, 1.0))
    match = f"ip_{figures['ip_matched_weight']:g}"
    sheet = contact_sheet([("prompt, drawn", images_tensor(im["prompts"])), ("reference", images_tensor(im["references"])),
                           ("no tokens", im["none"]), ("DEADiff", im["deadiff"]), (f"IP-A {match[3:]}", im[match])],
                          labels=[world.caption(s, omit=effects.DEADIFF_PROMPT_OMITS) for s in im["prompts"]],
                          title="miniature world: DEADiff vs IP-Adapter")
    return {"sheet": sheet, "effects": _figures(figures), "report": {"pairs": n}}


def demo_catversion(d: Demo, n: int = 4):
    """CatVersion on the miniature world: a prefix trained (make toy, StyleKit's own trainer) on hearts
    captioned "circle"; samples of the training caption and of edited captions, with and without it."""
    from .toy import effects, world
    from .toy.sheets import contact_sheet
    figures, im = effects.catversion(d.toy, n, seed=d.seed)
    sheet = contact_sheet([("concept", im["references"][:n]), ("plain CLIP", im["plain_train"]),
                           ("prefix", im["prefix_train"]), ("edit, plain", im["plain_edit"]), ("edit, prefix", im["prefix_edit"])],
                          labels=[world.caption(s) for s in im["edits"]], title="miniature world: CatVersion (heart, captioned 'circle')")
    return {"sheet": sheet, "effects": _figures(figures), "report": {"samples": n}}


def demo_stylestudio(d: Demo, n: int = 4):
    """StyleStudio on the miniature world's IP-Adapter: the prompt names shape, colour and background but no
    texture, the reference shows another shape, colour and texture; add vs cross-modal AdaIN, the teacher, and a negative style image."""
    from .toy import effects, world
    from .toy.family import images_tensor
    from .toy.sheets import contact_sheet
    figures, im = effects.style_adapter(d.toy, n, seed=d.seed)
    sheet = contact_sheet([("prompt, drawn", images_tensor(im["prompts"])), ("reference", images_tensor(im["references"])),
                           ("no adapter", im["none"]), ("add", im["add"]), ("AdaIN", im["adain"]),
                           ("AdaIN+teacher", im["teacher"]), ("negative", images_tensor(im["negatives"])),
                           ("AdaIN+neg.", im["negative"])],
                          labels=[world.caption(s, omit=effects.STYLESTUDIO_PROMPT_OMITS) for s in im["prompts"]],
                          title="miniature world: StyleStudio")
    return {"sheet": sheet, "effects": _figures(figures), "report": {"pairs": n}}


def demo_stylerdalle(d: Demo, n: int = 4):
    """StylerDALLE on the miniature world: content images through the pre-trained translator and through
    the one trained with REINFORCE towards the texture word (make toy, StyleKit's own trainers)."""
    from .toy import effects
    from .toy.sheets import contact_sheet
    from .toy.stylerdalle import STYLE
    figures, im = effects.stylerdalle(d.toy, n, seed=d.seed)
    sheet = contact_sheet([("content", im["content"]), ("pre-trained", im["before"]), (f"RL: {STYLE}", im["after"])],
                          title=f"miniature world: StylerDALLE towards '{STYLE}'")
    return {"sheet": sheet, "effects": _figures(figures), "report": {"samples": n, "style": STYLE}}


DEMOS = {"text_to_image": demo_text_to_image, "router": demo_router, "styleid": demo_styleid,
         "magicstyle": lambda d: demo_styleid(d, "MagicStyle"), "deadiff": demo_deadiff,
         "catversion": demo_catversion, "stylestudio": demo_stylestudio,
         "stylerdalle": demo_stylerdalle}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", choices=sorted(DEMOS), help="run only these demos")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(NOTE)
    d = Demo(a.out, a.seed)
    for name in a.only or DEMOS:
        d.run(name, lambda fn=DEMOS[name]: fn(d))
    from .toy.family import WEIGHTS
    d.report["miniature_world"] = {"weights": str(WEIGHTS), "metrics": json.loads((WEIGHTS / "metrics.json").read_text())}
    (a.out / "report.json").write_text(json.dumps(d.report, indent=2) + "\n")
    print(f"report: {a.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
