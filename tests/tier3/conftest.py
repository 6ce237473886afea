"""Tier 3: real ComfyUI (COMFYUI_PATH). Run with ComfyUI's own Python (make test does this).

Makes the repository importable as ``stylekit`` without installing it (ComfyUI itself imports the
folder under its clone name), puts ComfyUI on sys.path and forces CPU before comfy is imported
(unless STYLEKIT_COMFY_DEVICE=gpu, for the real-size benchmark on a GPU).
"""
import asyncio
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")


def pytest_collection_modifyitems(config, items):
    if COMFYUI_PATH:
        return
    skip = pytest.mark.skip(reason="tier 3 needs a ComfyUI checkout: set COMFYUI_PATH (and COMFYUI_PYTHON)")
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(item.path).resolve().is_relative_to(here):  # this folder's tests only, whatever their names
            item.add_marker(skip)


if COMFYUI_PATH:
    if "stylekit" not in sys.modules:
        try:
            import stylekit  # noqa: F401  (installed in this environment)
        except ImportError:
            spec = importlib.util.spec_from_file_location(
                "stylekit", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
            mod = importlib.util.module_from_spec(spec)
            sys.modules["stylekit"] = mod
            spec.loader.exec_module(mod)
    sys.path.insert(0, COMFYUI_PATH)
    import comfy.options  # noqa: E402

    comfy.options.args_parsing = False
    import comfy.cli_args  # noqa: E402

    # the real-size benchmark may run on ComfyUI's GPU (STYLEKIT_COMFY_DEVICE=gpu); tier 3 itself runs on the CPU
    comfy.cli_args.args.cpu = os.environ.get("STYLEKIT_COMFY_DEVICE", "cpu") != "gpu"


@pytest.fixture(scope="session")
def comfy_nodes(tmp_path_factory):
    """ComfyUI's node registry after its own loader imported the pack: (nodes module, ids the pack added)."""
    import folder_paths
    import nodes

    folder_paths.set_output_directory(str(tmp_path_factory.mktemp("comfy_out")))
    asyncio.run(nodes.init_builtin_extra_nodes())
    before = set(nodes.NODE_CLASS_MAPPINGS)
    ok = asyncio.run(nodes.load_custom_node(str(ROOT)))
    assert ok, "ComfyUI's loader failed to import the pack (see the log above)"
    return nodes, set(nodes.NODE_CLASS_MAPPINGS) - before
