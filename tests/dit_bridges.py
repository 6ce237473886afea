"""The 2026 DiT families on the diffusers bridge, as tier 2 builds them: a tiny transformer in diffusers' layout,
its bridge patcher, and latents and prompts in the shapes ComfyUI hands that family (importable from every tier)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DitCase:
    """One family: ``build(seed)`` -> diffusers transformer; ``patcher`` its bridge class; the latent's shape
    after the batch (one-frame video latents for Krea 2 and Qwen-Image); the prompt's width; extra conditioning."""
    family: str
    build: object
    patcher: object
    latent: tuple
    context: int
    extra: tuple = ()


def _flux2(seed):
    from tiny_models import tiny_flux2
    return tiny_flux2(seed=seed, channels=8, context_dim=32)


def _krea2(seed):
    from tiny_models import tiny_krea2
    return tiny_krea2(seed=seed, channels=16, text_layers=2, text_dim=32)


def _qwen(seed):
    from tiny_models import tiny_qwen_image
    return tiny_qwen_image(seed=seed, layers=3, channels=16, context_dim=32)


def _patcher(module: str, name: str):
    def make(transformer):
        import importlib
        return getattr(importlib.import_module(f"stylekit.bridge.{module}"), name)(transformer)
    return make


CASES = {
    "flux2": DitCase("flux2", _flux2, _patcher("flux2", "Flux2BridgePatcher"), (8, 8, 8), 32,
                     (("guidance", torch.tensor([3.5])),)),
    "krea2": DitCase("krea2", _krea2, _patcher("krea2", "Krea2BridgePatcher"), (16, 1, 8, 8), 64),
    "qwen_image": DitCase("qwen_image", _qwen, _patcher("qwen_image", "QwenImageBridgePatcher"), (16, 1, 8, 8), 32),
}


def case_data(case: DitCase, seed: int = 0) -> dict:
    """Content and style latents and a prompt and a negative prompt (with the family's extra inputs)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    extra = dict(case.extra)
    return {"content": r(1, *case.latent), "style": r(1, *case.latent),
            "cond": {"c_crossattn": r(1, 6, case.context), **extra},
            "uncond": {"c_crossattn": r(1, 6, case.context), **extra}}


def invert(model, data, steps, mode="store", layers=None):
    """Flow inversion of the content and the style on ``steps`` simple sigmas, storing (or recomputing) ``layers``
    (every block unless given)."""
    from stylekit.attention.layers import model_layers
    from stylekit.models.feature_store import StorePolicy
    from stylekit.models.inversion import every_step_schedule
    from stylekit.models.magicstyle import invert_pair
    from stylekit.models.schedules import simple_sigmas
    sig = simple_sigmas(model.model_sampling, steps)
    cond = data["cond"]
    policy = StorePolicy(layers=tuple(layers or model_layers(model).keys), dtype=torch.float32, mode=mode)
    return invert_pair(model, data["content"], data["style"], cond["c_crossattn"], every_step_schedule(sig), policy,
                       extra_conds={k: v for k, v in cond.items() if k != "c_crossattn"} or None), sig


def sample(model, sig, data, start, uncond=False, cfg=1.0):
    from stylekit.bridge.sampling import sample_euler_cfg
    with torch.no_grad():
        return sample_euler_cfg(model, None, sig, data["cond"], data["uncond"] if uncond else None, cfg, start=start)


def text_rows_after(transformer, block, run, text: int, double: bool) -> torch.Tensor:
    """The text rows ``block`` (a module of ``transformer``) hands on during ``run()``: a double-stream block's
    text stream, or a single-stream block's first ``text`` rows (the one call that ``run`` makes of it)."""
    seen = []
    hook = block.register_forward_hook(lambda m, a, out: seen.append(out[0] if double else out[:, :text]))
    try:
        with torch.no_grad():
            run()
    finally:
        hook.remove()
    assert len(seen) == 1
    return seen[0]
