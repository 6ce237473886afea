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
import sys

from ..errors import StyleKitError
from ..models.dvae import convert_files


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
