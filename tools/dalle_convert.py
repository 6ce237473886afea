"""Convert the official DALL-E dVAE pickles into one safetensors file StyleKit loads.

    python tools/dalle_convert.py encoder.pkl decoder.pkl ComfyUI/models/dalle/dalle_dvae.safetensors

(from the pack's folder, with ComfyUI's Python or the dev venv's; or the StylerDALLE Convert node).

Only the dVAE's own classes and the torch layers they hold are unpickled (see models/dvae.py); any
other object in a file stops the conversion with its name.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/dalle_convert.py (any install)
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _pack import run_tool
    sys.exit(run_tool("dalle_convert"))

import argparse
import os
import sys

from ..errors import StyleKitError
from ..files import OutputTarget, output_target, write_new
from ..models.dvae import DVAEWeightsError, convert_dalle_pickle, dvae_from_state_dict


def convert_files(encoder_pkl: str, decoder_pkl: str, out, force: bool = False) -> str:
    """Convert and write ``out``: an :class:`~stylekit.files.OutputTarget` (the node's, checked before)
    or a path, which must not exist (an input included) unless ``force``."""
    from safetensors.torch import save_file
    if not isinstance(out, OutputTarget):
        out = output_target(os.path.dirname(os.path.abspath(out)), os.path.basename(out), "",
                            numbered=False, force=force, field="output")
    merged = {}
    for path, want in ((encoder_pkl, "encoder"), (decoder_pkl, "decoder")):
        part, sd = convert_dalle_pickle(path)
        if part != want:
            raise DVAEWeightsError(f"{path} holds the dVAE {part}, given as the {want}")
        merged.update({f"{part}.{k}": v for k, v in sd.items()})
    enc = dvae_from_state_dict({k[8:]: v for k, v in merged.items() if k.startswith("encoder.")}, "encoder")
    dec = dvae_from_state_dict({k[8:]: v for k, v in merged.items() if k.startswith("decoder.")}, "decoder")
    if enc.vocab != dec.vocab:
        raise DVAEWeightsError(f"encoder vocabulary {enc.vocab} != decoder vocabulary {dec.vocab}")
    path = write_new(out, lambda tmp: save_file(
        merged, tmp, metadata={"source": "DALL-E dVAE (openai/DALL-E encoder.pkl, decoder.pkl)"}))
    n = sum(v.numel() for v in merged.values())
    return f"wrote {path}: dVAE encoder + decoder, vocabulary {enc.vocab}, {n / 1e6:.1f} M parameters"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="dalle_convert",
        description="Convert the official DALL-E dVAE pickles (openai/DALL-E encoder.pkl and decoder.pkl) into "
                    "one .safetensors file that StyleKit StylerDALLE Load reads. Only the dVAE's own classes "
                    "and the torch layers they hold are unpickled; any other object stops the conversion.")
    ap.add_argument("encoder_pkl", help="the official encoder.pkl")
    ap.add_argument("decoder_pkl", help="the official decoder.pkl")
    ap.add_argument("out", help="the .safetensors to write, e.g. ComfyUI/models/dalle/dalle_dvae.safetensors; "
                                "its folder is made if missing")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists (never done otherwise)")
    a = ap.parse_args(argv)
    try:
        print(convert_files(a.encoder_pkl, a.decoder_pkl, a.out, force=a.force))
    except StyleKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
