"""Imports run one way. The core, ``attention`` then ``models``, sits under the two hosts, ``bridge``
(diffusers) and ``nodes`` (ComfyUI), which never import each other; the miniature world (``toy``) runs on
both hosts; command lines (``tools``) and the pack's entry points (``demo.py``, ``__init__.py``) are on
top. Read from the source, so a back edge fails here before it becomes an import cycle."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RANK = {"errors": 0, "model_sources": 0, "files": 1, "attention": 2, "models": 3, "bridge": 4, "nodes": 4, "toy": 5, "tools": 6,
        "demo": 7, "__init__": 7}
SKIP = {"tests", "web", "docs", "example_workflows", "out", "toy_work", "build"}


def modules(root: Path):
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] not in SKIP and not rel.parts[0].startswith("."):
            yield rel


def layer(parts) -> str:
    """A folder's modules belong to the folder; a root module (``errors.py``) is a layer of its own."""
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def imported(root: Path, rel: Path):
    """(line, target parts) of each relative import of ``rel``, resolved from the pack's root."""
    package = list(rel.parts[:-1])
    for node in ast.walk(ast.parse((root / rel).read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[:len(package) - (node.level - 1)]
            names = [node.module.split(".")] if node.module else [[a.name] for a in node.names]
            for name in names:
                yield node.lineno, base + name


def back_edges(root: Path) -> list:
    edges = []
    for rel in modules(root):
        src = layer(rel.parts)
        for line, target in imported(root, rel):
            dst = target[0] if (root / target[0]).is_dir() else target[0].removesuffix(".py")
            if dst == src or dst not in RANK:
                continue
            if RANK[dst] > RANK[src] or (RANK[dst] == RANK[src] and dst != src):
                edges.append(f"{rel}:{line} ({src}) imports {'.'.join(target)} ({dst})")
    return edges


def test_every_module_has_a_layer():
    unknown = {layer(rel.parts) for rel in modules(ROOT)} - set(RANK)
    assert not unknown, f"modules outside the known layers: {sorted(unknown)}; give them a rank here"


def test_no_import_runs_back_up_or_across_the_hosts():
    edges = back_edges(ROOT)
    assert not edges, "imports that run back up or across the hosts:\n" + "\n".join(edges)


def test_the_check_finds_back_and_cross_edges(tmp_path):
    files = {"attention/router.py": "from ..nodes.comfy_glue import load\nfrom .layers import keys\n",
             "attention/layers.py": "from ..errors import InputError\n",
             "bridge/patcher.py": "from ..nodes import comfy_glue\nfrom ..models.magicstyle import x\n",
             "models/magicstyle.py": "from ..attention.router import add\n",
             "nodes/comfy_glue.py": "from ..bridge.patcher import BridgePatcher\n", "errors.py": ""}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert sorted(back_edges(tmp_path)) == [
        "attention/router.py:1 (attention) imports nodes.comfy_glue (nodes)",
        "bridge/patcher.py:1 (bridge) imports nodes (nodes)",
        "nodes/comfy_glue.py:1 (nodes) imports bridge.patcher (bridge)"]


def test_stylekit_options_keys_are_named_in_one_place():
    """Every key StyleKit puts in ComfyUI's transformer_options is a constant of attention/options.py: no
    other module spells one (as a subscript, a get/pop/setdefault key or a keyword argument)."""
    spelled = []
    for rel in modules(ROOT):
        if rel.as_posix() == "attention/options.py":
            continue
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            keys = []
            if isinstance(node, ast.Subscript):
                keys = [node.slice]
            elif isinstance(node, ast.Call):
                if isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop", "setdefault") and node.args:
                    keys = [node.args[0]]
                spelled += [(str(rel), kw.arg) for kw in node.keywords if (kw.arg or "").startswith("stylekit_")]
            spelled += [(str(rel), k.value) for k in keys
                        if isinstance(k, ast.Constant) and isinstance(k.value, str) and k.value.startswith("stylekit_")]
    assert not spelled, spelled
