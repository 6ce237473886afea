"""Self-attention feature store for inversion-based style transfer (MagicStyle / StyleID).

The store records, on chosen layers at chosen sigmas while the references are inverted (content and
style in one batch: row 0 content, row 1 style), the normed hidden states that enter attn1, and
serves them back during sampling. q, k and v are the layer's projections of those states, so one
tensor per image and layer stands for all three (a third of storing q, k, v of both images); the
fusion projects them with the layer's own to_q / to_k / to_v when it reads them.
Memory policy: which layers, which steps, dtype (fp16 default), device (keep or offload to CPU), or
``recompute``: keep only the model inputs of the inversion and recompute the features at each
sampling step (memory for one step instead of all).
"""
from __future__ import annotations

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
    recording: bool = False
    current: dict = field(default_factory=dict)      # recompute mode: this step's features
    checked_schedule: object = field(default=None, repr=False)  # the last sampler schedule check_sampler passed

    def __deepcopy__(self, memo):  # shared by every clone of a patched model, never copied
        return self

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

    def lookup(self, key, sigma):
        table = self.current if self.policy.mode == "recompute" else self.features
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
        """Move the features in place (the store is shared by the inversion and every patched clone),
        unless the policy keeps them on a device of its own (offload to the CPU). The sampler schedule last
        checked is let go: it stays on the device it ran on."""
        self.checked_schedule = None
        if self.policy.device is None:
            for table in (self.features, self.current):
                for k, t in table.items():
                    table[k] = {n: x.to(device) for n, x in t.items()} if isinstance(t, dict) else t.to(device)
        return self

    def size_bytes(self) -> int:
        tensors = []
        for t in list(self.features.values()) + list(self.current.values()):
            tensors.extend(t.values() if isinstance(t, dict) else [t])
        return sum(t.numel() * t.element_size() for t in tensors)

    def free(self):
        self.features.clear()
        self.current.clear()
        self.checked_schedule = None
