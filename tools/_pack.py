"""For the scripts in tools/ run by path (``python tools/x.py``): the pack imported from its folder under
a private name, whatever the folder is called, as ComfyUI imports it (everything inside is relative)."""
import importlib.util
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]


def load_pack():
    name = "_stylekit_pack"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PACK / "__init__.py", submodule_search_locations=[str(PACK)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pack_module(name: str):
    """A module of the pack (``"files"``, ``"tools.workflow_check"``), imported inside it."""
    import importlib
    return importlib.import_module(f"{load_pack().__name__}.{name}")


def run_tool(name: str) -> int:
    """``python tools/<name>.py ...`` from a pack folder (a ComfyUI install with ComfyUI's Python, or a
    clone): run ``tools.<name>.main`` inside the pack as if it were ``python -m stylekit.tools.<name>``."""
    return pack_module(f"tools.{name}").main()
