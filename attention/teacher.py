"""StyleStudio's teacher model for layout stability, as a UNet function wrapper plus an attn1 contribution.

For the first steps of sampling, every call of the UNet runs twice as many rows: the stylised sample
and a teacher sample of the same latent with no style branch. The batch becomes
``[chunks..., teacher chunks...]`` (ComfyUI's chunk convention: ``cond_or_uncond`` doubled), the
wrapper records how many chunks are the stylised ones in ``transformer_options[TEACHER_CHUNKS]``,
and returns only the stylised half, so the sampler never sees the teacher.

In every self-attention the stylised rows then use the teacher's attention map with their own values:
``softmax(Q_t K_t^T / sqrt(d)) V_s`` is plain attention over ``(Q_t, K_t, V_s)``, so the router passes
the teacher's queries and keys down the chain and the attention stays fused.
The style adapter (:mod:`.adapter_attention`) skips the teacher rows.

ComfyUI's sampler owns one latent per image, so the teacher pass at each step starts from the
stylised sample's current latent (at the first step that is the same noise, as in the paper); the
official code instead keeps a second latent that the pipeline steps on its own.

The teacher acts while ``sigma > sample_sigmas[N]`` with ``N = round(fraction * steps)`` from the
sampler's ``sample_sigmas`` (ComfyUI puts them in ``transformer_options``); without them, while
``sigma >= fallback_sigma`` (the model's ``percent_to_sigma(fraction)``).
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .options import TEACHER_CHUNKS
from .router import Contribution, moved_patch, patch_models


def teacher_layout_contribution(name: str = "teacher_layout") -> Contribution:
    def apply(q, k, v, extra, call_next, w):
        styled = extra.get(TEACHER_CHUNKS)
        if styled is None:
            return call_next(q, k, v, extra)
        n = q.shape[0] // len(extra["cond_or_uncond"]) * styled
        return call_next(torch.cat([q[n:], q[n:]]), torch.cat([k[n:], k[n:]]), v, extra)

    return Contribution(name, apply)


def duplicate_rows(obj, rows: int):
    """Every tensor with ``rows`` rows in a (nested) dict/list/tuple, concatenated with itself."""
    if isinstance(obj, torch.Tensor):
        return torch.cat([obj, obj]) if obj.ndim and obj.shape[0] == rows else obj
    if isinstance(obj, dict):
        return {k: duplicate_rows(v, rows) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(duplicate_rows(v, rows) for v in obj)
    return obj


class TeacherWrapper:
    """``model_function_wrapper``: runs the teacher rows beside the stylised ones during its steps."""

    def __init__(self, fraction: float, fallback_sigma: float, previous=None):
        if not 0 <= fraction <= 1:
            raise InputError(f"teacher fraction must be in [0, 1], got {fraction}")
        self.fraction, self.fallback_sigma, self.previous = fraction, fallback_sigma, previous

    def active(self, sigma: float, transformer_options: dict) -> bool:
        if self.fraction == 0:
            return False
        sigmas = transformer_options.get("sample_sigmas")
        if sigmas is None:
            return sigma >= self.fallback_sigma
        steps = len(sigmas) - 1
        n = round(self.fraction * steps)
        return n > 0 and sigma > float(sigmas[min(n, steps)])

    def to(self, device_or_dtype):  # holds no tensors; a wrapped previous wrapper may
        previous = moved_patch(self.previous, device_or_dtype)
        return self if previous is self.previous else TeacherWrapper(self.fraction, self.fallback_sigma, previous)

    def models(self) -> list:
        return patch_models(self.previous)

    def _call(self, apply_model, args):
        if self.previous is not None:
            return self.previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    def __call__(self, apply_model, args):
        x, t, c = args["input"], args["timestep"], args["c"]
        to = c.get("transformer_options", {})
        labels = list(args.get("cond_or_uncond") or to.get("cond_or_uncond") or [0])
        if not self.active(float(t.reshape(-1)[0]), to):
            return self._call(apply_model, args)
        rows = x.shape[0]
        c2 = {k: duplicate_rows(v, rows) for k, v in c.items() if k != "transformer_options"}
        to2 = dict(to, cond_or_uncond=labels * 2)
        to2[TEACHER_CHUNKS] = len(labels)
        if "uuids" in to:
            to2["uuids"] = list(to["uuids"]) * 2
        c2["transformer_options"] = to2
        out = self._call(apply_model, {"input": torch.cat([x, x]), "timestep": torch.cat([t, t]), "c": c2,
                                       "cond_or_uncond": labels * 2})
        return out[:rows]
