"""Train DEADiff's Q-Formers on paired data, non-reconstructively, in one process or many.

    python -m stylekit.tools.deadiff_train --data pairs/ --model SD15_FOLDER --clip-vision VIT_L_FOLDER \\
        --out ComfyUI/models/deadiff/my_style.safetensors --steps 20000 --batch 32
    accelerate launch --multi_gpu --num_processes 8 -m stylekit.tools.deadiff_train ...   (the same arguments)

``--data``: a folder with ``pairs.jsonl`` (README, DEADiff training). ``--model``: a Stable Diffusion 1.5
or SDXL folder in the diffusers layout (SDXL's pooled text and size ids built as its pipeline builds
them, the sizes the targets' own), or ``miniature`` (the world StyleKit trained itself; ``--clip-vision`` not
needed). ``--batch`` is the global batch: it is cut into (processes x ``--accumulate``) equal shards, so
the same arguments train the same model on 1 or N processes (see stylekit.models.deadiff_train).
``--checkpoint`` is written every ``--checkpoint-every`` steps and resumed from when present: an
interrupted run (Ctrl-C, a killed worker) loses at most that many steps. The result is written once, at
the end, in the file format StyleKit DEADiff Loader reads; an existing file is never replaced without
``--force``. Runs without accelerate installed as a single process. ``--logdir``: the loss of every step
as TensorBoard events (the main process writes them, at the global step, so a resumed run continues the
curve).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/deadiff_train.py (any install)
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _pack import run_tool
    sys.exit(run_tool("deadiff_train"))

import argparse
import os
import sys

import torch

from ..errors import InputError
from . import run_command


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="deadiff_train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder holding pairs.jsonl and the images it names")
    ap.add_argument("--model", required=True, help="an SD1.5 or SDXL diffusers folder, or 'miniature'")
    ap.add_argument("--clip-vision", help="a transformers CLIP ViT-L/14 vision folder (not for 'miniature')")
    ap.add_argument("--out", required=True, help="the .safetensors to write (its folder is made if missing)")
    ap.add_argument("--init", help="a DEADiff .safetensors to fine-tune (default: fresh Q-Formers, queries random)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8, help="the global batch (all processes together)")
    ap.add_argument("--accumulate", type=int, default=1, help="shards each process runs in turn per step")
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (official 1e-4)")
    ap.add_argument("--warmup", type=int, default=10_000, help="linear warm-up steps (official 10k)")
    ap.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                    help="the frozen model's dtype (fp16 / bf16 on a GPU halve its memory); what trains stays fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", help="resumable training state (default: OUT with .ckpt.pt)")
    ap.add_argument("--checkpoint-every", type=int, default=500)
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists (never done otherwise)")
    ap.add_argument("--logdir", help="also write the loss of every step as TensorBoard events here "
                                     "(needs the tensorboard package; view with: tensorboard --logdir LOGDIR)")
    return ap


def _host(a, device):
    """(model, encoders, shape of fresh Q-Formers) for --model."""
    from ..models.clip_preprocess import deadiff_pixels
    from ..models.deadiff import QFormerShape
    from ..models.deadiff_data import PairEncoders
    dtype = PRECISIONS[a.precision]
    if a.model == "miniature":
        if dtype != torch.float32:
            raise InputError("--precision: the miniature world runs in fp32; give --precision fp32")
        from ..toy.deadiff import SHAPE, encoders
        from ..toy.family import load_world
        w = load_world()
        return w.model, encoders(w), SHAPE
    from ..bridge.folders import load_clip_vision_folder, load_sd_folder
    if not a.clip_vision:
        raise InputError("--clip-vision is needed with a model folder: DEADiff reads CLIP ViT-L/14's penultimate states")
    model, clip, vae = load_sd_folder(a.model, device, dtype)
    vision = load_clip_vision_folder(a.clip_vision, device, dtype)
    scale = 2 ** (len(vae.first_stage.config.block_out_channels) - 1)  # pixels per latent

    def references(images):
        return torch.cat([vision.model(pixel_values=deadiff_pixels(i[None]).to(device, dtype), intermediate_output=-2)[1]
                          for i in images]).float()

    def captions(texts, latents):
        """The model's inputs for the captions, built by the host's extra_conds as ComfyUI's samplers build them
        (SDXL: the pooled text and size ids, the targets' own size, uncropped, as target size too)."""
        encoded = [clip.encode_from_tokens(clip.tokenize(c), return_pooled=True) for c in texts]
        height, width = (side * scale for side in latents.shape[-2:])
        conds = model.model.extra_conds(cross_attn=torch.cat([c for c, _ in encoded]).float(),
                                        pooled_output=torch.cat([p for _, p in encoded]), width=width, height=height,
                                        target_width=width, target_height=height)
        extra = {k: c.cond for k, c in conds.items() if k != "c_crossattn"}
        return conds["c_crossattn"].cond, extra or None
    return model, PairEncoders(references=references, latents=lambda t: vae.encode(t.to(device)), captions=captions), \
        QFormerShape(vision=vision.model.hf.config.hidden_size)


def tensorboard(logdir: str):
    """A TensorBoard SummaryWriter on ``logdir``, refused with the fix when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise InputError("--logdir: TensorBoard logging needs the tensorboard package; pip install tensorboard, "
                         "or leave --logdir out (the loss is printed either way)") from e
    return SummaryWriter(os.path.abspath(logdir))


def run(a, log=print) -> str | None:
    """Train as ``a`` says; returns the written file's path (the main process) or None (the others)."""
    from ..files import output_target, write_new
    from ..models.deadiff import load_deadiff, save_deadiff
    from ..models.deadiff_data import manifest_digest, manifest_loaders, read_pairs
    from ..models.deadiff_train import DEADiffTrainSettings, Processes, start_adapter, train_deadiff, weights_digest
    device, processes, main = Processes.launched()
    out = os.path.abspath(a.out)
    target = output_target(os.path.dirname(out), os.path.basename(out), ".safetensors", numbered=False,
                           force=a.force, field="--out")  # checked before anything heavy
    settings = DEADiffTrainSettings(steps=a.steps, lr=a.lr, warmup=a.warmup, seed=a.seed, accumulate=a.accumulate)
    pairs = read_pairs(a.data)  # every line checked before a model is loaded
    if a.batch < 1 or a.batch % (processes.count * a.accumulate):
        raise InputError(f"--batch {a.batch} does not split into {processes.count} processes x {a.accumulate} "
                         "shards; give a multiple of them")
    writer = tensorboard(a.logdir) if a.logdir and main else None  # refused before a model is loaded
    model, encoders, shape = _host(a, device)
    given = load_deadiff(a.init) if a.init else None
    adapter = start_adapter(model, shape, a.seed, given, name=f"--init {os.path.basename(a.init or '')}")
    adapter.to(device)
    loaders = manifest_loaders(pairs, encoders, a.batch, a.seed)
    sigmas = model.model_sampling.sigmas.detach().float().cpu()

    recent: list = []

    def on_loss(done, loss):  # the global batch's loss, every 5 % of the run: the mean since the last line
        recent.append(loss)
        if writer is not None:
            writer.add_scalar("deadiff/loss", loss, done)
        if main and (done == a.steps or done % max(1, a.steps // 20) == 0):
            log(f"step {done}/{a.steps}  loss {sum(recent) / len(recent):.4f}")
            recent.clear()
    checkpoint = a.checkpoint or os.path.splitext(out)[0] + ".ckpt.pt"
    run_id = f"{manifest_digest(a.data)} {weights_digest(adapter)} {a.model}"
    try:
        losses = train_deadiff(model, adapter, loaders, sigmas, settings, checkpoint=checkpoint,
                               checkpoint_every=a.checkpoint_every, processes=processes, on_loss=on_loss, run_id=run_id)
    finally:
        if writer is not None:
            writer.close()
    if not main:
        return None
    adapter.cpu()
    path = save_deadiff(adapter, target, source=f"StyleKit DEADiff training, {a.steps} steps, seed {a.seed}")
    os.remove(checkpoint)  # the run is done: its state would only resume into the finished model
    log(f"wrote {path}  (loss {losses[0]:.4f} -> {sum(losses[-10:]) / len(losses[-10:]):.4f})")
    return path


def main(argv=None) -> int:
    return run_command(_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
