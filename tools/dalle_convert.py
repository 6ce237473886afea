"""Convert the official DALL-E dVAE pickles into one safetensors file StyleKit loads.

    python -m stylekit.tools.dalle_convert encoder.pkl decoder.pkl ComfyUI/models/dalle/dalle_dvae.safetensors

Only the dVAE's own classes and the torch layers they hold are unpickled (see models/dvae.py); any
other object in a file stops the conversion with its name.
"""
from __future__ import annotations

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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("encoder_pkl")
    ap.add_argument("decoder_pkl")
    ap.add_argument("out")
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
