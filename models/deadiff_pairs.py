"""DEADiff's paired data made by the host model itself, as the paper made its own: prompts from a subject
list and a style list (``"a {subject}, {style}"``), each style rendered over several subjects (style pairs:
same style, other content) and each subject in several styles (content pairs: same content, other style).

:func:`plan_pairs` decides everything from the lists and a seed (which cells of the subject x style grid
are drawn, each cell's noise seed, file names, the pairs); :func:`build_pairs` renders the cells whose
image is not in the folder yet (so an interrupted build resumes and a cell is never drawn twice), writes
each image and then ``pairs.jsonl`` through :mod:`stylekit.files` (nothing half-written, nothing
overwritten), in the layout :mod:`stylekit.models.deadiff_data` reads. The renderer is the host's: a
function (prompt, seed) -> IMAGE, so the same plan is drawn by ComfyUI's sampler in the node and by the
bridge in the command line, one process or many (``shard``).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import InputError
from .deadiff_data import MANIFEST
from .seeding import derived_seed

TEMPLATE = "a {subject}, {style}"
MAX_WORDS = 1000      # entries of a list
MAX_CELLS = 100_000   # images a plan may render


@dataclass(frozen=True)
class Cell:
    subject: str
    style: str
    prompt: str
    seed: int
    file: str


@dataclass(frozen=True)
class PairPlan:
    cells: tuple[Cell, ...]
    lines: tuple[dict, ...]   # the manifest's lines, in order

    def manifest(self) -> str:
        return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in self.lines)


def word_list(text: str, field: str) -> list[str]:
    """One entry a line (or comma-separated on one line), blanks dropped, duplicates once, order kept."""
    parts = [p.strip() for p in re.split(r"[\n,]" if "\n" not in text.strip() else r"\n", text)]
    words = list(dict.fromkeys(p for p in parts if p))
    if len(words) < 2:
        raise InputError(f"{field}: give at least two entries, one a line")
    if len(words) > MAX_WORDS:
        raise InputError(f"{field}: {len(words)} entries, at most {MAX_WORDS}; split the data set")
    return words


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "x"


def plan_pairs(subjects: list[str], styles: list[str], per_style: int, per_subject: int, seed: int,
               template: str = TEMPLATE) -> PairPlan:
    """Each style over ``per_style`` subjects and each subject in ``per_subject`` styles (drawn from ``seed``);
    style pairs are the ordered pairs of a style's cells, content pairs those of a subject's, and every cell
    is also a ``both`` pair with itself."""
    if "{subject}" not in template or "{style}" not in template:
        raise InputError("template must contain {subject} and {style}, e.g. 'a {subject}, {style}'")
    if not 2 <= per_style <= len(subjects) or not 2 <= per_subject <= len(styles):
        raise InputError(f"per_style must be 2..{len(subjects)} (the subjects) and per_subject 2..{len(styles)} "
                         "(the styles): a pair needs two images")
    rng = np.random.default_rng(seed)
    chosen = set()
    for st in styles:
        chosen.update((subjects[i], st) for i in rng.choice(len(subjects), per_style, replace=False))
    for su in subjects:
        chosen.update((su, styles[i]) for i in rng.choice(len(styles), per_subject, replace=False))
    if len(chosen) > MAX_CELLS:
        raise InputError(f"the plan renders {len(chosen)} images, at most {MAX_CELLS}; shorten the lists")
    order = {s: i for i, s in enumerate(subjects)}, {s: i for i, s in enumerate(styles)}
    cells = []
    for su, st in sorted(chosen, key=lambda c: (order[0][c[0]], order[1][c[1]])):
        cs = derived_seed("deadiff pair", seed, su, st)
        cells.append(Cell(su, st, template.format(subject=su, style=st), cs,
                          f"{_slug(su)}__{_slug(st)}__{cs:x}.png"))
    lines = []
    for kind, key in (("style", lambda c: c.style), ("content", lambda c: c.subject)):
        groups: dict[str, list[Cell]] = {}
        for c in cells:
            groups.setdefault(key(c), []).append(c)
        for group in groups.values():
            for ref in group:
                for tgt in group:
                    if ref is not tgt:
                        lines.append({"kind": kind, "reference": ref.file, "target": tgt.file, "caption": tgt.prompt})
    lines += [{"kind": "both", "target": c.file, "caption": c.prompt} for c in cells]
    return PairPlan(tuple(cells), tuple(lines))


def _write_png(image: torch.Tensor, tmp: str) -> None:
    from PIL import Image
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    Image.fromarray(pixels).save(tmp, format="PNG")


def build_pairs(folder: str, plan: PairPlan, render: Callable[[str, int], torch.Tensor], progress=None,
                interrupted=None, shard: int = 0, shards: int = 1, write_manifest: bool = True) -> int:
    """Render the plan's missing images into ``folder`` (this shard's cells: every ``shards``-th from
    ``shard``), then write ``pairs.jsonl`` (an existing one must be this plan's). Returns how many images
    were rendered now. ``render(prompt, seed)`` -> IMAGE (1, H, W, 3) in [0, 1]."""
    from ..files import output_target, write_new
    os.makedirs(folder, exist_ok=True)
    manifest = os.path.join(folder, MANIFEST)
    if os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            if f.read() != plan.manifest():
                raise InputError(f"{MANIFEST} in {os.path.basename(folder)} was written for other lists or another "
                                 "seed; give a new folder (nothing there is replaced)")
    mine = plan.cells[shard::shards]
    done = 0
    for i, cell in enumerate(mine):
        if interrupted is not None:
            interrupted()
        if not os.path.exists(os.path.join(folder, cell.file)):
            image = render(cell.prompt, cell.seed)
            target = output_target(folder, cell.file, ".png", numbered=False, field="image")
            write_new(target, lambda tmp, im=image[0]: _write_png(im, tmp))
            done += 1
        if progress is not None:
            progress(i + 1, len(mine))
    if write_manifest and not os.path.exists(manifest):
        missing = [c.file for c in plan.cells if not os.path.exists(os.path.join(folder, c.file))]
        if missing:
            raise InputError(f"{len(missing)} of the plan's images are not in the folder yet (e.g. {missing[0]}); "
                             "run the build again to finish them")
        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(plan.manifest())
        write_new(output_target(folder, MANIFEST, "", numbered=False, field="manifest"), write)
    return done
