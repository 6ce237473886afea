import copy
import json
from pathlib import Path

import pytest

from stylekit.tools.dev.ui_workflow import api_to_ui, workflow_notes
from stylekit.tools.workflow_check import known_specs
from stylekit.tools.workflow_check import (check_api, check_file, check_ui, core_specs, required_comfyui,
                                          version_key)

ROOT = Path(__file__).resolve().parents[2]
SPECS = known_specs(ROOT)  # the oldest supported ComfyUI's core nodes
VERSIONS = list(core_specs(ROOT / "tests" / "data" / "core_nodes"))
UI = sorted((ROOT / "example_workflows").glob("*.json"))
API = sorted((ROOT / "example_workflows" / "api").glob("*.json"))


def test_every_workflow_has_a_twin():
    assert UI and {p.name for p in UI} == {p.name for p in API}


def test_core_specs_cover_both_supported_comfyui_versions():
    assert VERSIONS == ["0.3.64", "0.33.0"]


def runs_on(path, version) -> bool:
    need = required_comfyui(path)
    return need is None or version_key(version) >= version_key(need)


@pytest.mark.parametrize("path,version", [(p, v) for p in UI + API for v in VERSIONS if runs_on(p, v)],
                         ids=lambda x: f"{x.parent.name}/{x.name}" if isinstance(x, Path) else x)
def test_workflow_is_valid(path, version):
    assert check_file(path, known_specs(ROOT, version)) == []


def test_a_workflow_needing_a_newer_comfyui_names_it_and_is_invalid_on_the_older_one():
    """Flux.2 Klein's loader type ("flux2") is not in 0.3.64's CLIPLoader: the workflow is checked from 0.33.0 on,
    and the validator's command line says so instead of listing the older version's complaints."""
    from stylekit.tools.workflow_check import main
    klein = ROOT / "example_workflows" / "api" / "flux2_klein_style_transfer.json"
    assert required_comfyui(klein) == "0.33.0" and required_comfyui(API[0]) is None
    assert any("flux2" in e for e in check_file(klein, known_specs(ROOT, "0.3.64")))
    assert main([str(klein)]) == 1 and main([str(klein), "--comfyui", "0.33.0"]) == 0


@pytest.mark.parametrize("path", API, ids=lambda p: p.name)
def test_ui_twin_is_the_same_graph(path):
    ui = json.loads((ROOT / "example_workflows" / path.name).read_text())
    specs = known_specs(ROOT, required_comfyui(path))  # the oldest ComfyUI the workflow runs on
    assert ui["nodes"] == api_to_ui(json.loads(path.read_text()), specs, workflow_notes()[path.stem])["nodes"]


def test_every_workflow_opens_with_a_note_on_what_to_load_and_what_to_expect():
    """Each UI twin's first node is a Note above the graph (tools/dev/workflow_notes.json, one per workflow and no
    other), saying what to load and what to expect; the validator takes a note and refuses a malformed one."""
    assert set(workflow_notes()) == {p.stem for p in API}
    for path in UI:
        first = json.loads(path.read_text())["nodes"][0]
        text = first["widgets_values"][0]
        assert first["type"] == "Note" and "Load:" in text and "Expect:" in text, path.name
    ui = json.loads(UI[0].read_text())
    ui["nodes"][0]["widgets_values"] = [3]
    assert any("a note holds one text" in e for e in check_ui(ui, SPECS))


@pytest.mark.parametrize("path", UI, ids=lambda p: p.name)
def test_no_two_nodes_overlap_at_the_size_the_frontend_draws_them(path):
    """Every node is at least as large as ComfyUI's frontend draws its type (tools/dev/frontend_sizes.json,
    measured in the browser tier, less the widgets web/js/shown_with.js hides for its values), and no two boxes,
    title bar included, intersect, also with any node's hidden widgets shown (a preset switched to custom)."""
    from stylekit.tools.dev.frontend_check import overlaps
    from stylekit.tools.dev.ui_workflow import WIDGET_ROW, frontend_sizes, hidden_widgets
    nodes = json.loads(path.read_text())["nodes"]
    specs = known_specs(ROOT, required_comfyui(path))
    drawn = frontend_sizes()
    boxes, grown = [], {}
    for n in nodes:
        w, h = drawn.get(n["type"], (0, 0))
        if n["type"] in specs:
            linked = {i["name"] for i in n.get("inputs", []) if i.get("link") is not None}
            hidden = len(hidden_widgets(specs[n["type"]], n["widgets_values"], linked))
            h -= WIDGET_ROW * hidden
            grown[str(n["id"])] = [n["size"][0], n["size"][1] + WIDGET_ROW * hidden]
        assert n["size"][0] >= w and n["size"][1] >= h, (n["id"], n["type"], n["size"], (w, h))
        boxes.append({**n, "id": str(n["id"])})
    assert overlaps(boxes) == []
    for nid, size in grown.items():
        assert overlaps([dict(b, size=size) if b["id"] == nid else b for b in boxes]) == [], (path.name, nid)


@pytest.mark.parametrize("path", UI, ids=lambda p: p.name)
def test_stage_groups_hold_every_node_once_and_keep_clear_of_each_other(path):
    """The graph reads left to right in groups (Inputs, Prepare, StyleKit, Sample and save / Output): every node but
    the note lies, title bar included, inside exactly one group, and no two groups or a group and the note meet."""
    from stylekit.tools.dev.ui_workflow import TITLE
    wf = json.loads(path.read_text())
    boxes = [(g["title"], g["bounding"]) for g in wf["groups"]]
    assert [t for t, _ in boxes][-1] in ("Sample and save", "Output") and "StyleKit" in [t for t, _ in boxes]

    def inside(n, b):
        return (b[0] <= n["pos"][0] and n["pos"][0] + n["size"][0] <= b[0] + b[2]
                and b[1] <= n["pos"][1] - TITLE and n["pos"][1] + n["size"][1] <= b[1] + b[3])
    note = wf["nodes"][0]
    for n in wf["nodes"][1:]:
        assert sum(inside(n, b) for _, b in boxes) == 1, (path.name, n["id"], n["type"])
    rects = [b for _, b in boxes] + [[note["pos"][0], note["pos"][1] - TITLE, note["size"][0], note["size"][1] + TITLE]]
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1], (path.name, a, b)


def test_the_overlap_check_sees_an_overlap():
    from stylekit.tools.dev.frontend_check import overlaps
    a = {"id": "1", "pos": [0, 30], "size": [320, 100]}
    assert overlaps([a, {"id": "2", "pos": [319, 30], "size": [100, 100]}]) == [["1", "2"]]
    assert overlaps([a, {"id": "2", "pos": [0, 150], "size": [100, 100]}]) == [["1", "2"]]  # its title bar
    assert overlaps([a, {"id": "2", "pos": [0, 160], "size": [100, 100]}]) == []
    assert overlaps([a, {"id": "2", "pos": [320, 30], "size": [100, 100]}]) == []


MODEL_FILE = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".pkl", ".sft")


@pytest.mark.parametrize("path", API, ids=lambda p: p.name)
def test_every_model_file_a_workflow_names_has_a_source(path):
    """Each weight file a shipped workflow names is in stylekit.model_sources (README's model table: folder,
    where it is published, size, licence), under the folder of the loader that reads it; the UI twin's
    loader carries the direct downloads as properties.models, the list ComfyUI's frontend offers."""
    from stylekit.model_sources import source_of
    api = json.loads(path.read_text())
    ui = {str(n["id"]): n for n in json.loads((ROOT / "example_workflows" / path.name).read_text())["nodes"]}
    for nid, node in api.items():
        files = [v for v in node["inputs"].values() if isinstance(v, str) and v.endswith(MODEL_FILE)]
        for f in files:
            s = source_of(f)
            assert s is not None, f"{path.name} node {nid} names {f}, which model_sources.py does not list"
            assert node["class_type"] in s.nodes, (f, node["class_type"], s.nodes)
        want = [{"name": s.file, "url": s.url, "directory": s.folder} for s in map(source_of, files) if s.downloadable]
        assert ui[nid]["properties"].get("models", []) == want, (path.name, nid)


@pytest.mark.parametrize("path", API, ids=lambda p: p.name)
def test_a_preset_shows_its_own_values(path):
    """Feature Fusion's numbers apply only under preset custom, which alone shows them; a shipped workflow on a
    named preset holds that preset's values in them, so switching it to custom starts from what ran."""
    from stylekit.attention.feature_fusion import PRESETS
    for nid, node in json.loads(path.read_text()).items():
        i = node["inputs"]
        if node["class_type"] == "StyleKitFeatureFusion" and i["preset"] != "custom":
            p = PRESETS[i["preset"]]
            assert (i["gamma"], i["temperature"], i["content_kv"]) == (p.gamma, p.temperature, p.content_kv), \
                (path.name, nid, i["preset"])


def test_validator_catches_broken_graphs():
    api = json.loads((ROOT / "example_workflows" / "api" / "patch_map.json").read_text())
    bad = copy.deepcopy(api)
    del bad["2"]["inputs"]["model"]
    bad["3"]["inputs"]["images"] = ["2", 5]
    bad["9"] = {"class_type": "NoSuchNode", "inputs": {}}
    errs = check_api(bad, SPECS)
    assert any("required input 'model' is missing" in e for e in errs)
    assert any("output 5" in e for e in errs) and any("unknown node type" in e for e in errs)
    wrong_type = copy.deepcopy(api)
    wrong_type["3"]["inputs"]["images"] = ["1", 0]  # MODEL into IMAGE
    assert any("expects IMAGE but is linked to MODEL" in e for e in check_api(wrong_type, SPECS))
    ui = api_to_ui(api, SPECS)
    ui["links"][0][4] = 3
    ui["nodes"][-1]["widgets_values"] = []
    errs = check_ui(ui, SPECS)
    assert any("does not hold it" in e for e in errs)


def test_range_checks():
    spec = {"X": {"required": {"w": ["FLOAT", {"min": 0.0, "max": 1.0}], "c": ["COMBO", {"choices": ["a", "b"]}]},
                  "optional": {}, "outputs": []}}
    errs = check_api({"1": {"class_type": "X", "inputs": {"w": 1.5, "c": "z"}}}, spec)
    assert any("above its maximum" in e for e in errs) and any("not one of" in e for e in errs)


def test_file_lists_with_only_a_placeholder_are_not_checked():
    spec = {"X": {"required": {"f": ["COMBO", {"choices": ["(new, untrained)"]}]}, "optional": {}, "outputs": []}}
    run = lambda v: check_api({"1": {"class_type": "X", "inputs": {"f": v}}}, spec)  # noqa: E731
    assert run("(new, untrained)") == [] and run("style.safetensors") == []  # no files here to check against
    assert any("not one of" in e for e in run("(typo)"))
    spec["X"]["required"]["f"][1]["choices"].append("a.safetensors")  # files present: checked
    assert any("not one of" in e for e in run("style.safetensors"))


class V3StyleNode:
    """What a V3 node's INPUT_TYPES looks like to the V1 API (KSamplerSelect in ComfyUI 0.33)."""
    RETURN_TYPES = ("SAMPLER",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sampler_name": ("COMBO", {"options": ["euler", "ddim"], "multiselect": False}),
                             "steps": ("INT", {"default": 4, "min": 1})}}


def test_v3_combos_are_read_and_checked():
    from stylekit.tools.workflow_check import spec_from_node_class
    spec = spec_from_node_class(V3StyleNode)
    assert spec["required"]["sampler_name"] == ["COMBO", {"choices": ["euler", "ddim"], "multiselect": False}]
    specs = {"V3StyleNode": spec}
    assert check_api({"1": {"class_type": "V3StyleNode", "inputs": {"sampler_name": "ddim", "steps": 2}}}, specs) == []
    errs = check_api({"1": {"class_type": "V3StyleNode", "inputs": {"sampler_name": "nope", "steps": 2}}}, specs)
    assert errs == ["node 1 (V3StyleNode): sampler_name='nope' is not one of ['euler', 'ddim']"]


def test_v3_core_nodes_have_their_choices_in_the_2026_specs():
    newest = core_specs(ROOT / "tests" / "data" / "core_nodes")["0.33.0"]
    choices = newest["KSamplerSelect"]["required"]["sampler_name"][1]["choices"]
    assert "euler" in choices and "ddim" in choices  # KSamplerSelect is a V3 node in 0.33
    assert newest["SaveImage"]["outputs"] == ["IMAGE"]  # SaveImage gained an output in 2026


def test_ui_outputs_a_newer_comfyui_added_are_optional_but_extra_ones_are_errors():
    ui = json.loads((ROOT / "example_workflows" / "patch_map.json").read_text())
    new = known_specs(ROOT, "0.33.0")
    assert check_ui(ui, new) == []  # SaveImage listed with no outputs: ComfyUI 0.33 adds its IMAGE output
    bad = copy.deepcopy(ui)
    node = next(n for n in bad["nodes"] if n["type"] == "SaveImage")
    node["outputs"] = [{"name": t, "type": t, "links": []} for t in ("IMAGE", "IMAGE")]
    assert any("2 outputs, the node has 1" in e for e in check_ui(bad, new))


@pytest.mark.parametrize("path", UI, ids=lambda p: p.name)
def test_every_template_has_a_small_jpeg_thumbnail(path):
    thumb = path.with_suffix(".jpg")  # ComfyUI's template browser shows <name>.jpg beside <name>.json
    assert thumb.exists(), f"{thumb.name} missing: run python tools/dev/thumbnails.py"
    data = thumb.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and len(data) < 16 * 1024


def test_templates_live_where_comfyui_looks_for_them():
    assert ROOT.joinpath("example_workflows").is_dir() and not ROOT.joinpath("workflows").exists()


def test_the_widgets_a_preset_hides_follow_its_values_and_links():
    """specs.hidden_inputs / ui_workflow.hidden_widgets, the Python twin of web/js/shown_with.js: a ruled widget
    is hidden while its rule fails, shown when the rule holds, when it is fed by a link, or when the widget the
    rule reads is fed by a link (its value comes at run time); a seed's extra control value does not shift the
    names (workflow_check.named_values)."""
    from stylekit.nodes.specs import shown_with
    from stylekit.tools.dev.ui_workflow import hidden_widgets
    from stylekit.tools.workflow_check import named_values
    spec = {"required": {"seed": ["INT", {"default": 0}], "preset": ["COMBO", {"choices": ["A", "custom"]}],
                         "gamma": list(shown_with("preset", "custom", ("FLOAT", {"tooltip": "g"}))),
                         "weight": ["FLOAT", {}]}, "optional": {}, "outputs": []}
    values = [5, "fixed", "A", 0.5, 1.0]
    assert named_values(spec, values) == {"seed": 5, "preset": "A", "gamma": 0.5, "weight": 1.0}
    assert hidden_widgets(spec, values, set()) == ["gamma"]
    assert hidden_widgets(spec, [5, "fixed", "custom", 0.5, 1.0], set()) == []
    assert hidden_widgets(spec, values, {"gamma"}) == []
    assert hidden_widgets(spec, values, {"preset"}) == []
