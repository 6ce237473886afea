"""Write the core node specs of a real ComfyUI checkout (run with that ComfyUI's own Python).

    COMFYUI_PATH=/path/to/ComfyUI python tools/dev/dump_core_specs.py tests/data/core_nodes

writes ``tests/data/core_nodes/<ComfyUI version>.json``. The workflow checker validates the shipped
workflows against every committed version, and the UI converter builds from the oldest, so CI checks
workflows that use core nodes without ComfyUI; tier 3 checks the file of the running version still
matches the real nodes. V1 nodes and V3 nodes (combos as ``{"options": [...]}``) are both read.
"""
import asyncio
import json
import os
import sys
from pathlib import Path

CORE_NODES = ["CheckpointLoaderSimple", "SaveImage", "PreviewAny", "CLIPTextEncode", "LoadImage", "VAEEncode",
              "VAEDecode", "SamplerCustom", "KSamplerSelect", "ImageScale", "SplitSigmas", "CLIPVisionLoader",
              "KSampler", "EmptyLatentImage", "InvertMask", "CLIPLoader", "ControlNetLoader",
              "ControlNetApplyAdvanced", "Canny",
              # Flux graphs
              "UNETLoader", "DualCLIPLoader", "VAELoader", "FluxGuidance", "SamplerCustomAdvanced", "BasicGuider",
              "BasicScheduler", "RandomNoise", "EmptySD3LatentImage", "CLIPVisionEncode", "StyleModelLoader",
              "StyleModelApply",
              # Flux.2 and Qwen-Image graphs
              "CFGGuider", "ModelSamplingAuraFlow"]
KEEP = ("default", "min", "max", "control_after_generate")
COMBOS_KEPT = ("KSamplerSelect", "ImageScale", "KSampler", "CLIPLoader", "DualCLIPLoader", "BasicScheduler",
               "CLIPVisionEncode", "StyleModelApply")  # choices that do not depend on model files


def dump(comfyui_path: str) -> tuple[str, dict]:
    """(ComfyUI's version, {node id: spec}) read from the checkout at ``comfyui_path``."""
    sys.path.insert(0, comfyui_path)
    import comfy.options
    comfy.options.args_parsing = False
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfyui_version

    import nodes

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/, where _pack.py is
    from _pack import pack_module
    spec_from_node_class = pack_module("tools.workflow_check").spec_from_node_class
    asyncio.run(nodes.init_builtin_extra_nodes())
    out = {}
    for ct in CORE_NODES:
        s = spec_from_node_class(nodes.NODE_CLASS_MAPPINGS[ct])
        for sec in ("required", "optional"):
            for n, d in s[sec].items():
                keep = {k: v for k, v in d[1].items() if k in KEEP}
                if d[0] == "COMBO" and ct in COMBOS_KEPT:
                    keep["choices"] = d[1]["choices"]
                s[sec][n] = [d[0] or "*", keep]
        out[ct] = s
    return comfyui_version.__version__, out


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(
        prog="dump_core_specs", usage="COMFYUI_PATH=/path/to/ComfyUI %(prog)s OUT_DIR",
        description="Write OUT_DIR/<ComfyUI version>.json, the specs of the core nodes StyleKit's workflows use, "
        "read from the ComfyUI checkout at COMFYUI_PATH (run with that ComfyUI's own Python).")
    ap.add_argument("out_dir", help="e.g. tests/data/core_nodes")
    a = ap.parse_args(argv)
    if "COMFYUI_PATH" not in os.environ:
        ap.error("set COMFYUI_PATH to a ComfyUI checkout")
    version, specs = dump(os.environ["COMFYUI_PATH"])
    from _pack import pack_module
    files = pack_module("files")
    target = files.output_target(a.out_dir, f"{version}.json", "", numbered=False, force=True)
    text = json.dumps(specs, indent=None).replace('}, "', '},\n "') + "\n"
    path = files.write_new(target, lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {path} ({len(specs)} core nodes of ComfyUI {version})")


if __name__ == "__main__":
    main()
