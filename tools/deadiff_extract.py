"""Extract DEADiff's image encoder and attn2 image projections from ``deadiff_v1.ckpt``.

    python tools/deadiff_extract.py deadiff_v1.ckpt ComfyUI/models/deadiff/deadiff_v1.safetensors

(from the pack's folder, with ComfyUI's Python or the dev venv's; ``python -m stylekit.tools.deadiff_extract``
in the dev venv; or the StyleKit DEADiff Extract node inside ComfyUI).

The official checkpoint (7.4 GB) holds all of SD1.5 plus the DEADiff parts; the output keeps only
the two Q-Formers, ln_vision, the two projection MLPs and the 32 i_to_k / i_to_v weights, under
their official names. The checkpoint is read with ``torch.load(weights_only=True)``: tensors and
plain containers only, never arbitrary pickled objects.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/deadiff_extract.py (any install)
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _pack import run_tool
    sys.exit(run_tool("deadiff_extract"))

import argparse
import sys
from pathlib import Path

from ..errors import StyleKitError
from ..models.deadiff import extract_file


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="deadiff_extract",
        description="Extract DEADiff's image encoder (two Q-Formers, their projections) and the attn2 image "
                    "projections from the official deadiff_v1.ckpt into a small .safetensors file that StyleKit "
                    "DEADiff Loader reads. Only tensors are read from the checkpoint, never pickled objects.")
    ap.add_argument("checkpoint", type=Path, help="the official deadiff_v1.ckpt (7.4 GB)")
    ap.add_argument("output", type=Path, nargs="?",
                    help="the .safetensors to write, e.g. ComfyUI/models/deadiff/deadiff_v1.safetensors "
                         "(default: beside the checkpoint); its folder is made if missing")
    ap.add_argument("--force", action="store_true", help="replace OUTPUT if it exists (never done otherwise)")
    a = ap.parse_args(argv)
    out = a.output or a.checkpoint.with_suffix(".safetensors")

    def progress(done, total):
        if done == total or done % max(1, total // 10) == 0:
            print(f"extracting: {done}/{total} tensors", file=sys.stderr)
    try:
        tensors, path = extract_file(a.checkpoint, out, force=a.force, progress=progress)
    except StyleKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"wrote {path} ({len(tensors)} tensors, {size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
