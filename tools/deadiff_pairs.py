"""Draw a DEADiff training set with a Stable Diffusion model, in one process or many.

    python -m stylekit.tools.deadiff_pairs --model SD15_FOLDER --subjects subjects.txt --styles styles.txt \\
        --out pairs/ --per-style 4 --per-subject 4
    accelerate launch --multi_gpu --num_processes 8 -m stylekit.tools.deadiff_pairs ...   (the same arguments)

Each style is drawn over ``--per-style`` subjects (style pairs) and each subject in ``--per-subject``
styles (content pairs), prompts from ``--template``; the images and ``pairs.jsonl`` land in ``--out``, the
layout tools/deadiff_train.py and StyleKit DEADiff Train read. The plan is a function of the lists and
``--seed``: a build run again draws only the images still missing, and the processes of a launch split
the images between them. ``--model miniature`` draws with the world StyleKit trained itself.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/deadiff_pairs.py (any install)
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _pack import run_tool
    sys.exit(run_tool("deadiff_pairs"))

import argparse
import sys

from ..errors import InputError
from . import run_command


def _parser() -> argparse.ArgumentParser:
    from ..models.deadiff_pairs import TEMPLATE
    ap = argparse.ArgumentParser(prog="deadiff_pairs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an SD1.5 diffusers folder, or 'miniature'")
    ap.add_argument("--subjects", required=True, help="a text file, one subject a line")
    ap.add_argument("--styles", required=True, help="a text file, one style a line")
    ap.add_argument("--out", required=True, help="the data folder (made if missing)")
    ap.add_argument("--template", default=TEMPLATE, help=f"each prompt, with {{subject}} and {{style}} (default {TEMPLATE!r})")
    ap.add_argument("--per-style", type=int, default=4)
    ap.add_argument("--per-subject", type=int, default=4)
    ap.add_argument("--negative", default="")
    ap.add_argument("--size", type=int, default=512, help="width and height in pixels")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def _read_list(path: str, field: str) -> list[str]:
    from ..models.deadiff_pairs import word_list
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(4 * 2 ** 20)
    except OSError as e:
        raise InputError(f"{field} {path}: {e.strerror}; give a text file, one entry a line") from None
    return word_list(text, field)


def run(a, log=print) -> int:
    """Build as ``a`` says; returns how many images this process drew."""
    import torch

    from ..bridge.sampling import text_to_image
    from ..models.deadiff_pairs import build_pairs, plan_pairs
    from ..models.deadiff_train import Processes
    plan = plan_pairs(_read_list(a.subjects, "--subjects"), _read_list(a.styles, "--styles"), a.per_style,
                      a.per_subject, a.seed, a.template)  # checked before a model is loaded
    device, processes, main = Processes.launched()
    if a.model == "miniature":
        from ..toy.family import load_world
        w = load_world()
        model, clip, vae = w.model, w.clip, w.vae
    else:
        from ..bridge.folders import load_sd_folder
        model, clip, vae = load_sd_folder(a.model, device)

    def render(prompt, seed):
        return text_to_image(model, clip, vae, prompt, a.negative, seed, a.steps, a.cfg, a.size, a.size)

    def progress(done, total):
        if main and (done == total or done % max(1, total // 20) == 0):
            log(f"drawn {done}/{total} of this process's images")
    drawn = build_pairs(a.out, plan, render, progress, shard=processes.rank, shards=processes.count,
                        write_manifest=False)
    processes.total(torch.zeros(1, device=device))  # every process has finished its images
    if main:
        build_pairs(a.out, plan, render, write_manifest=True)  # all images are there: only the manifest is written
        log(f"{a.out}: {len(plan.cells)} images ({drawn} drawn by this process), {len(plan.lines)} pairs")
    return drawn


def main(argv=None) -> int:
    return run_command(_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
