"""Self-attention feature store for inversion-based style transfer (MagicStyle / StyleID).

The store records, on chosen layers at chosen sigmas while the references are inverted (content and
style in one batch: row 0 content, row 1 style), the normed hidden states that enter attn1, and
serves them back during sampling. q, k and v are the layer's projections of those states, so one
tensor per image and layer stands for all three (a third of storing q, k, v of both images); the
fusion projects them with the layer's own to_q / to_k / to_v when it reads them.
Memory policy: which layers, which steps, dtype (fp16 default), device (keep or offload to CPU), or
``recompute``: keep only the model inputs of the inversion and recompute the features at each
sampling step (memory for one step instead of all).

One store serves every clone of the patched model, and ComfyUI's multi-GPU sampling (0.33.0) calls
those clones from one thread per device at once: what a pass records and whether it is recording
belong to the thread running it, and a device other than the one the features live on reads its own
copy of them (made once, when ComfyUI moves the patches there), so no device moves another's tensors.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch

from ..errors import InputError


@dataclass
class StorePolicy:
    layers: tuple = ()            # 3-part block keys to record
    steps: str = "all"            # "all" | "first:N" (the N noisiest sampling sigmas)
    dtype: torch.dtype = torch.float16
    device: str | None = None     # None: keep where computed; "cpu": offload
    mode: str = "store"           # "store" | "recompute"


class MissingStepError(InputError):
    """A sampler sigma the inversion stored no features for."""


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(1.0, abs(b))


@dataclass
class FeatureStore:
    policy: StorePolicy
    sigmas: list = field(default_factory=list)       # sigmas with features (or inputs to recompute them)
    features: dict = field(default_factory=dict)     # (block key, sigma) -> attn1 input h, (2, N, C)
    copies: dict = field(default_factory=dict, repr=False)  # device -> the features on a second accelerator
    currents: dict = field(default_factory=dict, repr=False)  # recompute mode: thread id -> that thread's step
    _thread: threading.local = field(default_factory=threading.local, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __deepcopy__(self, memo):  # shared by every clone of a patched model, never copied
        return self

    @property
    def recording(self) -> bool:
        """Whether the references are being run in this thread (their pass records, the fusion stands aside)."""
        return getattr(self._thread, "recording", False)

    @recording.setter
    def recording(self, value: bool) -> None:
        self._thread.recording = bool(value)

    @property
    def current(self) -> dict:
        """Recompute mode: this thread's step of features."""
        return self.currents.setdefault(threading.get_ident(), {})

    @property
    def checked_schedule(self):
        """The sampler schedule this thread checked last (each device's thread has its own tensor), or None.
        Held weakly: the store keeps no tensor of the sampler's on any device."""
        ref = getattr(self._thread, "checked_schedule", None)
        return None if ref is None else ref()

    @checked_schedule.setter
    def checked_schedule(self, value) -> None:
        self._thread.checked_schedule = None if value is None else weakref.ref(value)

    def _key(self, sigma: float) -> float | None:
        """The stored step a sampler sigma refers to (float32 vs float64 round-off tolerated)."""
        for s in self.sigmas:
            if _close(float(sigma), s):
                return s
        return None

    def has(self, sigma: float) -> bool:
        return self._key(sigma) is not None

    def wants_step(self, sigma: float, all_sigmas: list[float]) -> bool:
        if self.policy.steps == "all":
            return True
        n = int(self.policy.steps.split(":")[1])
        return any(_close(sigma, s) for s in sorted(all_sigmas, reverse=True)[:n])

    def record(self, key, sigma, h):
        """Keep ``h`` (rows: content, style), the attn1 input of block ``key`` at ``sigma``; on a DiT, a
        dict of the references' image-token q/k/v (see :class:`~stylekit.attention.joint_fusion.DiTRecorder`)."""
        target = self.current if self.policy.mode == "recompute" else self.features

        def keep(t):
            return t.detach().to(dtype=self.policy.dtype, device=self.policy.device or t.device)
        target[(tuple(key), self._key(sigma))] = {n: keep(t) for n, t in h.items()} if isinstance(h, dict) else keep(h)

    def check_sampler(self, sample_sigmas) -> None:
        """The sampler must start at the first stored sigma, where the start latent is placed (ComfyUI's
        samplers pass their schedule to patches as ``sample_sigmas``). Checked once per schedule tensor, not
        at every block: on a GPU reading it is a wait for the device."""
        if sample_sigmas is None or sample_sigmas is self.checked_schedule or len(sample_sigmas) == 0 \
                or not self.sigmas:
            return
        first = float(sample_sigmas[0])
        if not _close(first, self.sigmas[0]):
            raise MissingStepError(
                f"this sampler starts at sigma {first:.4f}; the inversion's start latent is placed at sigma "
                f"{self.sigmas[0]:.4f}, the first of StyleKit DDIM Invert's sigmas. Sample on those sigmas as they "
                "are: a SplitSigmas between them (as in StyleID workflows saved before the start was placed by "
                "the node) skips a second step, so remove it.")
        self.checked_schedule = sample_sigmas

    def lookup(self, key, sigma, device=None):
        """The features of block ``key`` at ``sigma``; with ``device``, the copy on that device if it has one."""
        table = self.current if self.policy.mode == "recompute" else self.copies.get(_device(device), self.features)
        hit = table.get((tuple(key), self._key(sigma)))
        if hit is None:
            have = [round(s, 4) for s in sorted({s for (_, s) in table}, reverse=True)]
            raise MissingStepError(
                f"no stored features for sigma {float(sigma):.4f} at block {tuple(key)}; the inversion stored "
                f"sigmas {have[:8]}{' ...' if len(have) > 8 else ''}. Sample with SamplerCustom on the sigmas output "
                "of StyleKit DDIM Invert, as it is (with convention 'every step', a KSampler with scheduler "
                "ddim_uniform and the same steps fits too).")
        return hit

    def move_to(self, device) -> "FeatureStore":
        """Move the features in place (the store is shared by the inversion and every patched clone), unless
        the policy keeps them on a device of its own (offload to the CPU). While they are on one accelerator,
        a second one (multi-GPU) gets a copy of its own instead, kept until the features go to the CPU. The
        sampler schedule last checked is let go: it stays on the device it ran on."""
        device = _device(device)
        if self.policy.device is not None:
            return self
        with self._lock:
            home = self._home()
            if home is None or home == device:  # already there (ComfyUI calls .to on every model call)
                pass
            elif home.type != "cpu" and device.type != "cpu":  # a second accelerator: a copy of its own, once
                if device not in self.copies:
                    self.copies[device] = _moved(self.features, device)
            else:  # loaded from the CPU or offloaded to it: the features move, the copies go
                self.copies.clear()
                self.checked_schedule = None
                self.features.update(_moved(self.features, device))
            # recompute mode's step: this thread's; on an offload to the CPU, every thread's (sampling is over)
            for table in (list(self.currents.values()) if device.type == "cpu" else [self.current]):
                table.update(_moved(table, device))
        return self

    def _home(self) -> torch.device | None:
        for t in self.features.values():
            return next(iter(t.values())).device if isinstance(t, dict) else t.device
        return None

    def size_bytes(self) -> int:
        tensors = []
        for t in list(self.features.values()) + [t for table in list(self.currents.values()) + list(self.copies.values())
                                                 for t in table.values()]:
            tensors.extend(t.values() if isinstance(t, dict) else [t])
        return sum(t.numel() * t.element_size() for t in tensors)

    def free(self):
        self.features.clear()
        self.currents.clear()
        self.copies.clear()
        self.checked_schedule = None


def _device(device) -> torch.device | None:
    """``device`` with its index resolved ("cuda" -> "cuda:0", the current one), as tensors report theirs."""
    if device is None:
        return None
    device = torch.device(device)
    if device.index is None and device.type not in ("cpu", "meta"):
        device = torch.empty(0, device=device).device
    return device


def _moved(table: dict, device) -> dict:
    return {k: {n: x.to(device) for n, x in t.items()} if isinstance(t, dict) else t.to(device) for k, t in table.items()}
