import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stylekit.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_node_definition(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert node_id.startswith("StyleKit") and node_id in NODE_DISPLAY_NAME_MAPPINGS
    assert NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("StyleKit ")
    assert cls.CATEGORY.startswith("StyleKit") and cls.DESCRIPTION
    assert callable(getattr(cls(), cls.FUNCTION))
    it = cls.INPUT_TYPES()
    assert set(it) <= {"required", "optional", "hidden"}
    for section in ("required", "optional"):
        for name, decl in it.get(section, {}).items():
            opts = decl[1] if len(decl) > 1 else {}
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if decl[0] in ("INT", "FLOAT") and "default" in opts:
                assert opts.get("min", -float("inf")) <= opts["default"] <= opts.get("max", float("inf"))
    assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)


def test_requirements_match_pyproject_and_exclude_torch():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert deps == reqs
    assert not any(re.match(r"torch\b", d) for d in deps)


def test_import_is_light_and_relative():
    code = ("import sys, stylekit, stylekit.nodes, stylekit.bridge; heavy = [m for m in ('comfy', 'diffusers', 'transformers', 'safetensors') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for py in ROOT.glob("**/*.py"):
        parts = py.relative_to(ROOT).parts
        if "tests" in parts or any(p.startswith(".") for p in parts):  # hidden: .venv, local checkouts
            continue
        src = py.read_text()
        assert not re.search(r"^\s*(from|import) stylekit\b", src, re.M), f"{py} imports the pack by name"
        if parts != ("nodes", "v3.py"):  # the V3 registration: only ComfyUI imports it (comfy_entrypoint)
            assert not re.search(r"^(from|import) comfy", src, re.M), f"{py} imports comfy at module level"


def test_client_formats_comfyui_rejections_and_overrides():
    from stylekit.tools.client import apply_overrides, format_rejection
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": ""},
            "node_errors": {"2": {"class_type": "StyleKitPatchMap", "errors": [
                {"message": "Required input is missing", "details": "model", "extra_info": {"input_name": "model"}}]}}}
    text = format_rejection(body)
    assert "prompt_outputs_failed_validation" in text and "node 2 (StyleKitPatchMap) input model" in text
    wf = apply_overrides({"1": {"inputs": {"a": 1}}}, ["1.a=5", "1.b=hello"])
    assert wf["1"]["inputs"] == {"a": 5, "b": "hello"}
    from stylekit.tools.client import BadInput
    with pytest.raises(BadInput):
        apply_overrides({"1": {"inputs": {}}}, ["9.a=1"])


def test_every_node_has_a_help_page_that_matches_its_definition():
    """web/docs/<NodeId>.md is what ComfyUI's frontend shows in its node help panel; the pages are made
    from the node definitions by tools/dev/node_docs.py and must not drift from them."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("node_docs", ROOT / "tools" / "dev" / "node_docs.py")
    node_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(node_docs)
    import stylekit
    want = node_docs.pages(stylekit)
    assert set(want) == {f"{nid}.md" for nid in NODE_CLASS_MAPPINGS}
    for name, text in want.items():
        path = ROOT / "web" / "docs" / name
        assert path.exists() and path.read_text() == text, f"{name} is stale: run python tools/dev/node_docs.py"
    assert stylekit.WEB_DIRECTORY == "./web"
    readme = (ROOT / "README.md").read_text()
    assert node_docs.with_table(readme, node_docs.readme_table(stylekit)) == readme, \
        "README.md's node table is stale: run python tools/dev/node_docs.py"
    assert node_docs.with_table(readme, node_docs.models_table(stylekit), node_docs.MODELS_BEGIN,
                                node_docs.MODELS_END) == readme, \
        "README.md's model table is stale: run python tools/dev/node_docs.py"
    for nid in NODE_CLASS_MAPPINGS:  # one row per node, the table made from the definitions
        assert readme.count(f"(`{nid}`) |") == 1, nid


def test_registry_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = meta["tool"]["comfy"]
    assert comfy["requires-comfyui"].startswith(">=") and comfy["Icon"].endswith("web/icon.svg")
    # ComfyUI registers a web folder for WEB_DIRECTORY (under the folder's name, where the help pages are looked
    # up) and again for [tool.comfy] web (under the project name): every script would load twice
    assert "web" not in comfy, "[tool.comfy] web registers web/ a second time beside WEB_DIRECTORY"
    assert (ROOT / "web" / "icon.svg").stat().st_size < 4096
    assert "Operating System :: OS Independent" in meta["project"]["classifiers"]
    ignored = (ROOT / ".comfyignore").read_text().split()
    assert "tests/" in ignored and ".ci/" in ignored


def test_tier3_registers_its_model_folders_first():
    """Every tier-3 model folder goes first in ComfyUI's search path (is_default=True), so a user's
    real files in ComfyUI's models/ never replace the tiny ones a test wrote."""
    calls = [line for py in (ROOT / "tests" / "tier3").glob("*.py") for line in py.read_text().splitlines()
             if "add_model_folder_path(" in line and "# where ComfyUI's own" not in line]
    assert calls and all("is_default=True" in line for line in calls), [c for c in calls if "is_default" not in c]


def test_every_tool_the_readme_shows_starts_from_a_pack_folder_outside_the_venv(tmp_path):
    """Each `python tools/<x>.py` command in the README answers --help when run by path from a copy of
    the pack named as users clone it, as from a ComfyUI install (the pack is not installed there)."""
    import shutil
    readme = (ROOT / "README.md").read_text()
    scripts = sorted(set(re.findall(r"^python (tools/\w+\.py)", readme, re.M)))
    assert {"tools/client.py", "tools/dalle_convert.py", "tools/deadiff_extract.py"} <= set(scripts)
    pack = tmp_path / "custom_nodes" / "ComfyUI-StyleKit"
    shutil.copytree(ROOT, pack, ignore=shutil.ignore_patterns(".venv", ".git", "tests", "out", "*.egg-info"))
    for script in scripts:
        run = subprocess.run([sys.executable, str(pack / script), "--help"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=120)
        assert run.returncode == 0, (script, run.stderr[-2000:])
        assert run.stdout.startswith("usage:") and "`" not in run.stdout, (script, run.stdout)


def test_every_mask_input_says_the_one_meaning():
    """MASK means one thing in every node: 1 (white) marks where the node acts."""
    masks = [(nid, name, decl[1]["tooltip"]) for nid, cls in NODE_CLASS_MAPPINGS.items()
             for section in ("required", "optional") for name, decl in cls.INPUT_TYPES().get(section, {}).items()
             if decl[0] == "MASK"]
    assert len(masks) >= 4 and all("1 (white)" in tip for _, _, tip in masks), masks


def test_no_input_declaration_is_written_twice_across_node_modules():
    """A widget that recurs (a percent window, a mask, a seed, an output name) comes from nodes/specs.py:
    no input with the same name, type and options (tooltip aside; two options or more, as a lone default
    is no boilerplate) is declared in two node modules. Before specs.py the percent windows were."""
    import ast
    from pathlib import Path

    import stylekit.nodes
    folder = Path(stylekit.nodes.__file__).parent
    seen: dict = {}
    for path in sorted(folder.glob("*.py")):
        if path.name in ("specs.py", "__init__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Dict):
                continue
            for k, v in zip(node.keys, node.values):
                if not (isinstance(k, ast.Constant) and isinstance(v, ast.Tuple) and len(v.elts) == 2
                        and isinstance(v.elts[1], ast.Dict)):
                    continue
                opts = {ast.unparse(a): ast.unparse(b) for a, b in zip(v.elts[1].keys, v.elts[1].values)
                        if ast.unparse(a) != "'tooltip'"}
                if len(opts) < 2:  # a bare type with a tooltip is not boilerplate
                    continue
                sig = (k.value, ast.unparse(v.elts[0]), tuple(sorted(opts.items())))
                seen.setdefault(sig, set()).add(path.name)
    twice = {sig: files for sig, files in seen.items() if len(files) > 1}
    assert not twice, twice


def test_an_installed_pack_carries_every_file_comfyui_serves_or_reads():
    """pip install (the Registry's, or ComfyUI-Manager's from a wheel) keeps only pyproject's package-data
    beside the code: every file under web/ (the frontend extension, help pages, icon), every example workflow
    and thumbnail, and the data the developer tools read must match one of its patterns."""
    from fnmatch import fnmatch
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["stylekit"]
    data = [p.relative_to(ROOT).as_posix() for folder in ("web", "example_workflows", "tools/dev")
            for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert any(f.endswith(".js") for f in data)
    assert [f for f in data if not any(fnmatch(f, p) for p in patterns)] == []
