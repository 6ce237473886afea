"""DEADiff in the miniature world: paired data the world knows exactly, and a DEADiff trained on it with
StyleKit's own trainer (:mod:`stylekit.models.deadiff_train`).

Pairs, as the paper builds them: a **style** pair shares only palette and texture (the target is another
shape elsewhere, same foreground colour, texture and background), a **content** pair only the shape
and its layout (another colour, texture and background), and **both** is an image with itself. The
references are read as DEADiff reads them: the penultimate hidden states of the (miniature) CLIP vision
tower. The trainer sees the target's caption with what the reference brings left out (a style pair's
names only the shape, a content pair's only the style: :data:`CAPTION_OMITS`) and the empty caption for
both.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..models.deadiff import QFormerShape
from ..models.deadiff_data import PairEncoders, shard_rows
from ..models.deadiff_train import DEADiffTrainSettings, PairBatch, fresh_adapter, train_deadiff
from . import world
from .family import ToyWorld, images_tensor

DEADIFF_FILE = "toy_deadiff.safetensors"
# Q-Formers at the miniature's widths: tokens as wide as the UNet's text context (64), reading the 64-wide
# CLIP vision states; a BERT vocabulary cut just above the two instruction words' ids ("style" 2806,
# "content" 4180), which is all the instruction embedding table is ever asked for.
SHAPE = QFormerShape(hidden=64, layers=2, heads=4, intermediate=128, vocab=4181, positions=8, queries=8, vision=64,
                     proj_hidden=128)


# What the target's caption leaves out, so the reference's tokens must carry it: a style pair's caption names
# only the content (the shape: "a circle"), a content pair's only the style ("a red striped on a blue
# background"). A caption naming everything would leave the tokens nothing to learn.
CAPTION_OMITS = {"style": ("colour", "texture", "background"), "content": ("shape",)}


def pair_scenes(kind: str, n: int, seed: int) -> list[tuple]:
    """``n`` (reference, target) scene pairs of ``kind`` (style / content / both), drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for a, b in zip(world.random_scenes(n, seed), world.random_scenes(n, seed + 7_000_003)):
        if kind == "both":
            out.append((a, a))
        elif kind == "style":  # same palette and texture; another shape at another place
            shape = world.SHAPES[(world.SHAPES.index(a.shape) + 1 + rng.integers(len(world.SHAPES) - 1)) % len(world.SHAPES)]
            out.append((a, dataclasses.replace(b, shape=shape, colour=a.colour, texture=a.texture, background=a.background)))
        else:  # content: same shape and layout; everything the style is made of changes
            colours = [c for c in world.COLOURS if c != a.colour]
            colour = colours[rng.integers(len(colours))]
            backgrounds = [c for c in world.COLOURS if c not in (colour, a.background)]
            textures = [t for t in world.TEXTURES if t != a.texture]
            out.append((a, dataclasses.replace(a, colour=colour, texture=textures[rng.integers(len(textures))],
                                               background=backgrounds[rng.integers(len(backgrounds))])))
    return out


def vision_states(w: ToyWorld, images: torch.Tensor) -> torch.Tensor:
    """Penultimate hidden states (B, 1 + patches, 64) of the miniature CLIP vision tower, as DEADiff reads
    CLIP ViT-L/14's."""
    with torch.no_grad():
        out = w.clip_model.vision_model(pixel_values=images.permute(0, 3, 1, 2) * 2 - 1, output_hidden_states=True)
    return out.hidden_states[-2]


def encoders(w: ToyWorld):
    """The miniature world as a DEADiff training host (the CLI's ``--model miniature``): references read by
    its CLIP vision tower at 64 px (area-resized), targets through its VAE, captions through its CLIP."""
    import torch.nn.functional as F

    def at_64(image):
        small = F.interpolate(image.permute(2, 0, 1)[None], size=(world.SIZE, world.SIZE), mode="area")
        return small.permute(0, 2, 3, 1)
    return PairEncoders(references=lambda images: vision_states(w, torch.cat([at_64(i) for i in images])),
                        latents=lambda targets: w.to_latent(torch.cat([at_64(t) for t in targets])),
                        captions=lambda texts, latents: (torch.cat([w.encode(t) for t in texts]), None))


def loaders(w: ToyWorld, batch: int, seed: int) -> dict:
    """kind -> ``batch(step, shard, shards)``: a shard of a seeded ``batch`` of that kind for each step (so a
    run is reproducible, whichever way it is sharded)."""
    empty = w.encode("")

    def make(kind, salt):
        def at(step, shard=0, shards=1):
            pairs = pair_scenes(kind, batch, seed * 1_000_003 + salt * 100_003 + step)[shard_rows(batch, shard, shards)]
            refs, targets = [r for r, _ in pairs], [t for _, t in pairs]
            context = empty.expand(len(pairs), -1, -1) if kind == "both" else \
                torch.cat([w.encode(world.caption(t, omit=CAPTION_OMITS[kind])) for t in targets])
            return PairBatch(kind, vision_states(w, images_tensor(refs)), w.to_latent(images_tensor(targets)), context)
        return at
    return {kind: make(kind, i + 1) for i, kind in enumerate(("style", "content", "both"))}


def train(w: ToyWorld, steps: int, seed: int = 0, batch: int = 16, lr: float = 1e-3, progress=None,
          reconstructive: bool = False, checkpoint: str | None = None, checkpoint_every: int = 100):
    """A DEADiff for the miniature UNet, from scratch. ``reconstructive``: the paper's ablation, every
    pair an image with itself (the both loader only). ``checkpoint``: resumed from when present."""
    adapter = fresh_adapter(w.model, SHAPE, seed=seed)
    data = loaders(w, batch, seed)
    if reconstructive:
        data = {"both": data["both"]}
    settings = DEADiffTrainSettings(steps=steps, lr=lr, warmup=max(1, steps // 20), seed=seed)
    losses = train_deadiff(w.model, adapter, data, w.model.model_sampling.sigmas, settings, progress=progress,
                           checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    return adapter, losses


def write_pair_folder(folder, per_kind: int, seed: int = 0) -> str:
    """A DEADiff data folder as a user writes one (PNGs and ``pairs.jsonl``, README: DEADiff training) with
    ``per_kind`` pairs of each kind from the world; returns the folder."""
    import json
    from pathlib import Path

    from PIL import Image
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for kind in ("style", "content", "both"):
        for i, (ref, tgt) in enumerate(pair_scenes(kind, per_kind, seed + len(lines))):
            names = {}
            for role, scene in (("reference", ref), ("target", tgt)):
                names[role] = f"{kind}_{i:04d}_{role}.png"
                Image.fromarray((world.render([scene])[0] * 255).round().astype(np.uint8)).save(root / names[role])
            lines.append({"kind": kind, "reference": names["reference"], "target": names["target"],
                          "caption": world.caption(tgt, omit=CAPTION_OMITS.get(kind, ()))})
    (root / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return str(root)
