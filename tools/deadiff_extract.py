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

from ..errors import StyleKitError
from ..files import output_target, write_new
from ..models.deadiff import DEADiffWeightsError, extract_deadiff
from ..models.weights_file import load_weights_only


def read_checkpoint(path: Path) -> dict:
    obj = load_weights_only(str(path), DEADiffWeightsError, "DEADiff checkpoint (deadiff_v1.ckpt, tensors only)",
                            "The official deadiff_v1.ckpt holds only tensors and plain containers.", mmap=True)
    if not isinstance(obj, dict):
        raise DEADiffWeightsError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def extract_file(src: Path, dst: Path, force: bool = False) -> tuple[dict, str]:
    """(tensors, path written); the output is checked before the (7.4 GB) checkpoint is read."""
    from safetensors.torch import save_file
    target = output_target(str(dst.parent), dst.name, "", numbered=False, force=force, field="output")
    tensors = extract_deadiff(read_checkpoint(src))
    path = write_new(target, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "source": src.name,
                                                                            "qformer_heads": "12"}))
    return tensors, path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="deadiff_v1.ckpt (or a state_dict .pt re-saved from it)")
    ap.add_argument("output", type=Path, nargs="?", help="output .safetensors (default: next to the input)")
    ap.add_argument("--force", action="store_true", help="replace OUTPUT if it exists (never done otherwise)")
    a = ap.parse_args(argv)
    out = a.output or a.checkpoint.with_suffix(".safetensors")
    try:
        tensors, path = extract_file(a.checkpoint, out, force=a.force)
    except StyleKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"wrote {path} ({len(tensors)} tensors, {size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
