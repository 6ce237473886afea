"""Extract DEADiff's image encoder and attn2 image projections from ``deadiff_v1.ckpt``.

    python -m stylekit.tools.deadiff_extract deadiff_v1.ckpt ComfyUI/models/deadiff/deadiff_v1.safetensors

The official checkpoint (7.4 GB) holds all of SD1.5 plus the DEADiff parts; the output keeps only
the two Q-Formers, ln_vision, the two projection MLPs and the 32 i_to_k / i_to_v weights, under
their official names. The checkpoint is read with ``torch.load(weights_only=True)``: tensors and
plain containers only, never arbitrary pickled objects.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..models.deadiff import DEADiffWeightsError, extract_deadiff


def read_checkpoint(path: Path) -> dict:
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # old (non-zip) serialisation cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any refusal with the file name and the way out
        raise DEADiffWeightsError(
            f"{path.name} cannot be read as plain tensors (torch.load weights_only=True refused it: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:300]}). StyleKit does not unpickle arbitrary objects. "
            "If you trust the file, re-save only its state_dict in an environment of your choice: "
            "torch.save(torch.load(p, weights_only=False)['state_dict'], 'deadiff_state_dict.pt'), then run this "
            "command on that file.") from e


def extract_file(src: Path, dst: Path) -> dict:
    from safetensors.torch import save_file
    tensors = extract_deadiff(read_checkpoint(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst), metadata={"format": "pt", "source": src.name, "qformer_heads": "12"})
    return tensors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="deadiff_v1.ckpt (or a state_dict .pt re-saved from it)")
    ap.add_argument("output", type=Path, nargs="?", help="output .safetensors (default: next to the input)")
    a = ap.parse_args(argv)
    out = a.output or a.checkpoint.with_suffix(".safetensors")
    try:
        tensors = extract_file(a.checkpoint, out)
    except DEADiffWeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"wrote {out} ({len(tensors)} tensors, {size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
