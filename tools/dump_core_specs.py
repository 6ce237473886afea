"""Write tests/data/core_nodes.json from a real ComfyUI checkout (run with ComfyUI's own Python).

    COMFYUI_PATH=/path/to/ComfyUI python -m stylekit.tools.dump_core_specs > tests/data/core_nodes.json

The workflow checker and the UI converter read these specs, so CI can validate workflows that use
core nodes without ComfyUI; tier 3 checks the file still matches the real nodes.
"""
import asyncio
import json
import os
import sys

CORE_NODES = ["CheckpointLoaderSimple", "SaveImage", "PreviewAny", "CLIPTextEncode", "LoadImage", "VAEEncode",
              "VAEDecode", "SamplerCustom", "KSamplerSelect", "ImageScale", "SplitSigmas", "CLIPVisionLoader",
              "KSampler", "EmptyLatentImage", "ImageBatch", "InvertMask", "CLIPLoader", "ControlNetLoader",
              "ControlNetApplyAdvanced", "Canny"]
KEEP = ("default", "min", "max", "control_after_generate")
COMBOS_KEPT = ("KSamplerSelect", "ImageScale", "KSampler", "CLIPLoader")  # choices that do not depend on model files


def main():
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
    import comfy.options
    comfy.options.args_parsing = False
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import nodes

    from .workflow_check import spec_from_node_class
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
    print(json.dumps(out, indent=None).replace('}, "', '},\n "'))


if __name__ == "__main__":
    main()
