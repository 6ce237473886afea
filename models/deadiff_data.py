"""DEADiff's paired data from a folder the user already has: a manifest of (reference, target) pairs.

``pairs.jsonl`` in the folder, one JSON object a line::

    {"kind": "style", "reference": "a/ref.png", "target": "a/tgt.png", "caption": "a castle, watercolor"}

``kind``: ``style`` (reference and target share only their style), ``content`` (only their content) or
``both`` (the target is its own reference; ``reference`` may be omitted). Paths are relative to the
folder and stay inside it. The whole manifest is checked before any image is decoded or any training
starts: kinds, paths, files that are images (their headers read, not their pixels), one target size for
all pairs (they are batched), bounded counts and caption lengths; an identical line given twice counts
once. Every refusal names the manifest line and the fix.

:func:`manifest_loaders` turns the pairs into the trainer's loaders: each step draws its global batch of a
kind from a generator seeded by (seed, kind, step), so a resumed or sharded run reads the same pairs, and
each shard decodes and encodes only its own rows, through the host's :class:`PairEncoders`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import InputError
from ..files import open_image, shown
from .seeding import derived_seed

MANIFEST = "pairs.jsonl"
KINDS = ("style", "content", "both")
MAX_PAIRS = 1_000_000
MAX_CAPTION = 1000            # characters
MAX_MANIFEST_BYTES = 512 * 2 ** 20


@dataclass(frozen=True)
class Pair:
    kind: str
    reference: str    # absolute path of the reference image
    target: str       # absolute path of the target image
    caption: str


def _inside(folder: str, rel, line: int, field: str) -> str:
    if not isinstance(rel, str) or not rel.strip():
        raise InputError(f"{MANIFEST} line {line}: {field} must be a path relative to the folder")
    path = os.path.realpath(os.path.join(folder, rel))
    if os.path.commonpath([path, folder]) != folder:
        raise InputError(f"{MANIFEST} line {line}: {field} {rel!r} leads outside the folder; keep the images in it")
    if not os.path.isfile(path):
        raise InputError(f"{MANIFEST} line {line}: {field} {rel!r} does not exist in the folder")
    return path


def image_size(path: str, line: int, field: str) -> tuple[int, int]:
    """(width, height) from the image's header (files.open_image: bounded, nothing decoded)."""
    with open_image(path, f"{MANIFEST} line {line}: {field} {os.path.basename(path)}") as im:
        return im.size


def read_pairs(folder: str) -> list[Pair]:
    """The pairs ``folder``'s manifest names, each checked (see the module docstring)."""
    folder = os.path.realpath(folder)
    if not os.path.isdir(folder):
        raise InputError(f"the data folder {shown(folder)} does not exist; give the folder that holds {MANIFEST}")
    manifest = os.path.join(folder, MANIFEST)
    if not os.path.isfile(manifest):
        raise InputError(f"no {MANIFEST} in the data folder; write one line per pair (see the README, DEADiff training)")
    if os.path.getsize(manifest) > MAX_MANIFEST_BYTES:
        raise InputError(f"{MANIFEST} is over {MAX_MANIFEST_BYTES // 2 ** 20} MB; split the data set")
    pairs, seen, size = [], set(), None
    with open(manifest, encoding="utf-8", errors="strict") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                entry = json.loads(text)
            except ValueError as e:
                raise InputError(f"{MANIFEST} line {n} is not JSON ({e})") from None
            if not isinstance(entry, dict):
                raise InputError(f"{MANIFEST} line {n} must be an object with kind, reference, target, caption")
            kind = entry.get("kind")
            if kind not in KINDS:
                raise InputError(f"{MANIFEST} line {n}: kind {kind!r}; choose one of {list(KINDS)}")
            caption = entry.get("caption", "")
            if not isinstance(caption, str) or len(caption) > MAX_CAPTION:
                raise InputError(f"{MANIFEST} line {n}: caption must be text of at most {MAX_CAPTION} characters")
            target = _inside(folder, entry.get("target"), n, "target")
            reference = target if kind == "both" and entry.get("reference") is None else \
                _inside(folder, entry.get("reference"), n, "reference")
            if kind != "both" and reference == target:
                raise InputError(f"{MANIFEST} line {n}: a {kind} pair's reference is its own target; DEADiff's "
                                 "training is non-reconstructive (use kind both for that)")
            pair = Pair(kind, reference, target, caption)
            if pair in seen:
                continue
            wh = image_size(target, n, "target")
            image_size(reference, n, "reference")
            if size is None:
                size = wh
            elif wh != size:
                raise InputError(f"{MANIFEST} line {n}: target {os.path.basename(target)} is {wh[0]}x{wh[1]} px, the "
                                 f"first target {size[0]}x{size[1]}; targets are batched, so give them one size")
            seen.add(pair)
            pairs.append(pair)
            if len(pairs) > MAX_PAIRS:
                raise InputError(f"{MANIFEST} names more than {MAX_PAIRS:,} pairs; split the data set")
    if not pairs:
        raise InputError(f"{MANIFEST} names no pairs")
    return pairs


def by_kind(pairs: list[Pair]) -> dict[str, list[Pair]]:
    out: dict[str, list[Pair]] = {}
    for p in pairs:
        out.setdefault(p.kind, []).append(p)
    return out


@dataclass(frozen=True)
class PairEncoders:
    """How a host turns pairs into a :class:`~stylekit.models.deadiff_train.PairBatch` (all frozen, no grad)."""
    references: Callable[[list], torch.Tensor]   # images, each (H, W, 3) in [0, 1] -> (B, N, vision) CLIP states
    latents: Callable[[torch.Tensor], torch.Tensor]  # targets (B, H, W, 3) in [0, 1] -> (B, C, h, w) model latents
    # B captions and their targets' latents -> ((B, T, D) text conditioning, further model inputs or None (SDXL: y))
    captions: Callable[[list, torch.Tensor], tuple]


def manifest_digest(folder: str) -> str:
    """A short digest of the folder's manifest (which pairs, which captions): a training run's data identity."""
    import hashlib
    with open(os.path.join(folder, MANIFEST), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def read_image(path: str) -> torch.Tensor:
    """An image file as (H, W, 3) float32 in [0, 1] (RGB; through files.open_image's bounds)."""
    with open_image(path, os.path.basename(path)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)


def step_rows(count: int, batch: int, seed: int, kind: str, step: int) -> torch.Tensor:
    """Indices of the ``batch`` pairs (of ``count`` of a kind) that step ``step`` trains on, drawn with
    replacement from a generator seeded by (seed, kind, step): the same on every process and after a resume."""
    g = torch.Generator().manual_seed(derived_seed("deadiff rows", seed, kind, step))
    return torch.randint(count, (batch,), generator=g)


def shard_rows(batch: int, shard: int, shards: int) -> slice:
    """The rows of shard ``shard`` of ``shards`` equal parts of a global batch of ``batch``."""
    if batch % shards:
        raise InputError(f"a batch of {batch} does not split into {shards} equal parts (processes x accumulate); "
                         "give a batch that is a multiple of them")
    n = batch // shards
    return slice(shard * n, (shard + 1) * n)


def manifest_loaders(pairs: list[Pair], encoders: PairEncoders, batch: int, seed: int) -> dict:
    """kind -> ``loader(step, shard, shards)`` for :func:`~stylekit.models.deadiff_train.train_deadiff`: the
    shard's rows of the step's global ``batch`` of that kind; style and content pairs condition on the
    target's caption, ``both`` on the empty caption (the official trainer's)."""
    from .deadiff_train import PairBatch

    def make(kind, of_kind):
        def loader(step, shard=0, shards=1):
            rows = step_rows(len(of_kind), batch, seed, kind, step)[shard_rows(batch, shard, shards)]
            chosen = [of_kind[int(i)] for i in rows]
            with torch.no_grad():
                latents = encoders.latents(torch.stack([read_image(p.target) for p in chosen]))
                context, extra = encoders.captions(["" if kind == "both" else p.caption for p in chosen], latents)
                return PairBatch(kind, encoders.references([read_image(p.reference) for p in chosen]), latents,
                                 context, extra)
        return loader
    return {kind: make(kind, of_kind) for kind, of_kind in by_kind(pairs).items()}
