"""Build the UI-format twin of an API-format workflow (what ComfyUI's template browser loads).

    python -m stylekit.tools.dev.ui_workflow example_workflows/api/NAME.json example_workflows/NAME.json [--force]

A Note at the top left says what to load and what to expect (tools/dev/workflow_notes.json, one per workflow),
and groups name the stages left to right: Inputs, Prepare, StyleKit, Sample and save (or Output).
Nodes keep their API ids; they are laid out in columns by graph depth, each node at the size ComfyUI's
frontend draws it (``frontend_sizes.json``, measured by tools/dev/frontend_check.py; a type not measured
yet is estimated from its slots and widgets), columns as wide as their widest node, so no two overlap
(tests/tier1/test_workflows.py checks the geometry; the browser tier checks it as drawn). A loader node naming a file that
``stylekit.model_sources`` lists as a direct download carries it as ``properties.models`` (name, url,
directory), which ComfyUI's frontend offers to download when the file is missing. Node definitions come from
StyleKit's classes and the core-node specs of the oldest ComfyUI in tests/data/core_nodes/ (a newer
ComfyUI adds the outputs it gave a node since, so the template loads in every supported version), or of the
oldest the workflow runs on where ``workflow_check.REQUIRES`` names one (Flux.2, Qwen-Image: 0.33.0).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/dev/ui_workflow.py (any install)
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/, where _pack.py is
    from _pack import run_tool
    sys.exit(run_tool("dev.ui_workflow"))

import json
from functools import lru_cache
from pathlib import Path

from ...model_sources import models_property
from ...nodes.specs import hidden_inputs
from ..workflow_check import (WorkflowError, _inputs, _is_link, check_api, known_specs, load_workflow,
                              named_values, required_comfyui, widget_names)


TITLE, GAP, MIN_WIDTH = 30, 40, 320  # the frontend's title bar above a node's pos; space between nodes; width
WIDGET_ROW = 24  # the height LiteGraph lays a widget out in (NODE_WIDGET_HEIGHT 20, 4 between)


@lru_cache(maxsize=1)
def frontend_sizes() -> dict:
    return json.loads((Path(__file__).parent / "frontend_sizes.json").read_text())["sizes"]


def node_size(typ: str, slots: int, widgets: int, multiline: int, hidden: int = 0) -> list:
    """[width, height] of a node as the frontend draws it: its measured smallest size with every widget shown
    (a type not measured yet: 20 px a slot row, 24 a widget, 60 more a multiline text box, LiteGraph's sizes),
    less the ``hidden`` widgets web/js/shown_with.js hides, at least MIN_WIDTH wide."""
    w, h = frontend_sizes().get(typ, (0, 6 + 20 * slots + WIDGET_ROW * widgets + 60 * multiline))
    return [max(MIN_WIDTH, int(w)), int(h) - WIDGET_ROW * hidden]


def hidden_widgets(spec: dict, widgets_values: list, linked: set) -> list[str]:
    """The widgets web/js/shown_with.js hides on a node holding these values (one fed by a link it shows)."""
    declared = {name: decl for name, decl, _ in widget_names(spec)}
    return hidden_inputs(declared, named_values(spec, widgets_values), linked)


@lru_cache(maxsize=1)
def workflow_notes() -> dict:
    return json.loads((Path(__file__).parent / "workflow_notes.json").read_text())["notes"]


NOTE_WIDTH, NOTE_LINE = 640, 22  # a note's width; the height of one of its lines as the frontend draws it


def note_node(text: str, nid: int) -> dict:
    """The frontend's Note node holding ``text`` (what to load, what to expect), sized to show every line."""
    lines = sum(1 + len(line) // 90 for line in text.split("\n"))  # about 90 characters a line at NOTE_WIDTH
    width, height = node_size("Note", 0, 1, 0)  # the frontend's smallest Note
    size = [max(width, NOTE_WIDTH), max(height, 20 + NOTE_LINE * lines)]
    return {"id": nid, "type": "Note", "pos": [GAP, GAP + TITLE], "size": size,
            "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [text], "title": "About this workflow", "color": "#432", "bgcolor": "#653"}


GROUP_HEAD, GROUP_PAD = 40, 12  # a group's title bar above its nodes' title bars; its margin around them
STAGE_COLOURS = {"Inputs": "#3f789e", "Prepare": "#8A8", "StyleKit": "#b58b2a", "Sample and save": "#a1309b",
                 "Output": "#a1309b"}


def stage_groups(types: dict, spans: dict, top: float) -> list:
    """Groups over runs of columns by stage, left to right: the StyleKit columns (a StyleKit node other than a
    loader), the inputs (column 0) and the preparation before them, the sampling and saving (or the output) after
    them. ``types``: column -> node types; ``spans``: column -> (left, right, bottom) of its nodes; ``top``: the
    columns' first node's pos."""
    cols = sorted(types)
    kit = [c for c in cols if any(t.startswith("StyleKit") and not t.endswith(("Load", "Loader")) for t in types[c])]
    sampled = any("Sampler" in t for c in cols if kit and c > kit[-1] for t in types[c])

    def stage(c):
        if kit and kit[0] <= c <= kit[-1]:
            return "StyleKit"
        if not kit or c < kit[0]:
            return "Inputs" if c == cols[0] else "Prepare"
        return "Sample and save" if sampled else "Output"
    groups = []
    for c in cols:
        name = stage(c)
        if groups and groups[-1][0] == name:
            groups[-1][2] = c
        else:
            groups.append([name, c, c])
    out = []
    for name, first, last in groups:
        left, right = spans[first][0] - GROUP_PAD, spans[last][1] + GROUP_PAD
        y = top - TITLE - GROUP_HEAD
        bottom = max(spans[c][2] for c in range(first, last + 1)) + GROUP_PAD  # depths are consecutive
        out.append({"title": name, "bounding": [left, y, right - left, bottom - y], "color": STAGE_COLOURS[name],
                    "font_size": 24, "flags": {}})
    return out


def api_to_ui(api: dict, specs: dict, note: str | None = None) -> dict:
    """The UI-format twin of a valid API-format graph, with ``note`` (tools/dev/workflow_notes.json) as a Note
    above it; an invalid graph (a cycle, unknown nodes, broken links, non-numeric ids: anything
    :func:`check_api` reports) raises WorkflowError."""
    errs = check_api(api, specs)
    errs += [f"node id {nid!r} is not a number" for nid in api if not str(nid).isdigit()] if not errs else []
    if errs:
        raise WorkflowError("cannot convert an invalid workflow: " + "; ".join(errs[:5]))
    ids = {nid: int(nid) for nid in api}
    depth = {}

    def d(nid):
        if nid not in depth:
            srcs = [v[0] for v in api[nid].get("inputs", {}).values() if _is_link(v)]
            depth[nid] = 1 + max((d(s) for s in srcs), default=-1)
        return depth[nid]

    nodes, links, row = [], [], {}
    out_links = {nid: {} for nid in api}
    lid = 0
    pending = []
    for nid in sorted(api, key=lambda n: (d(n), ids[n])):
        spec = specs[api[nid]["class_type"]]
        inputs = []
        for name, decl, _ in _inputs(spec):
            v = api[nid].get("inputs", {}).get(name)
            is_link = _is_link(v)
            if decl[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") and not is_link:
                continue
            if v is None and decl[0] not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                inputs.append({"name": name, "type": decl[0], "link": None})
                continue
            lid += 1
            src, slot = v
            typ = specs[api[src]["class_type"]]["outputs"][slot]
            entry = {"name": name, "type": decl[0] if decl[0] != "COMBO" else typ, "link": lid}
            if decl[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                entry["widget"] = {"name": name}
            inputs.append(entry)
            pending.append([lid, ids[src], slot, ids[nid], len(inputs) - 1, typ])
            out_links[src].setdefault(slot, []).append(lid)
        values = []
        for name, decl, n in widget_names(spec):
            opts = decl[1] if len(decl) > 1 else {}
            v = api[nid].get("inputs", {}).get(name, opts.get("default", (opts.get("choices") or [None])[0]))  # a combo: its first
            values.append(None if isinstance(v, list) else v)
            if n == 2:
                values.append("fixed")
        col = d(nid)
        row.setdefault(col, []).append(len(nodes))
        slots = max(len(inputs), len(spec["outputs"]))
        multiline = sum(1 for _, decl, _ in widget_names(spec) if len(decl) > 1 and decl[1].get("multiline"))
        linked = {i["name"] for i in inputs if i.get("link") is not None}
        hidden = hidden_widgets(spec, values, linked)
        size = node_size(api[nid]["class_type"], slots, len(values), multiline, len(hidden))
        properties = {"Node name for S&R": api[nid]["class_type"]}
        models = models_property(v for v in values if isinstance(v, str))
        if models:  # what the frontend offers to download when the file is missing
            properties["models"] = models
        nodes.append({"id": ids[nid], "type": api[nid]["class_type"], "pos": [0, 0],
                      "size": size, "flags": {}, "order": len(nodes), "mode": 0, "inputs": inputs,
                      "outputs": [], "properties": properties, "widgets_values": values,
                      "_room": WIDGET_ROW * len(hidden)})  # kept free below it: its hidden widgets, once shown
        meta = api[nid].get("_meta")
        if isinstance(meta, dict) and isinstance(meta.get("title"), str):
            nodes[-1]["title"] = meta["title"]
    top = GAP + TITLE + GROUP_HEAD
    if note is not None:  # the note first, above the graph's columns
        nodes.insert(0, note_node(note, max(ids.values()) + 1))
        top += nodes[0]["size"][1] + TITLE + GAP
        row = {col: [i + 1 for i in members] for col, members in row.items()}
        for i, n in enumerate(nodes):
            n["order"] = i
    x, spans = GAP, {}
    for col in sorted(row):  # columns left to right, each as wide as its widest node; rows stacked by height
        y = top
        for i in row[col]:
            nodes[i]["pos"] = [x, y]
            y += nodes[i]["size"][1] + nodes[i].pop("_room") + TITLE + GAP
        width = max(nodes[i]["size"][0] for i in row[col])
        spans[col] = (x, x + width, y - TITLE - GAP)
        x += width + GAP
    groups = stage_groups({col: [nodes[i]["type"] for i in members] for col, members in row.items()}, spans, top)
    for node in nodes:
        if node["type"] == "Note":
            continue
        spec = specs[node["type"]]
        node["outputs"] = [{"name": t, "type": t, "links": out_links[str(node["id"])].get(i, [])}
                           for i, t in enumerate(spec["outputs"])]
    links = pending
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": lid, "nodes": nodes, "links": links,
            "groups": groups, "config": {}, "extra": {}, "version": 0.4}


def main(argv=None):
    import argparse

    from ...errors import StyleKitError
    from ...files import output_target, write_new
    ap = argparse.ArgumentParser(description="Build the UI-format twin of an API-format workflow.")
    ap.add_argument("api", type=Path, help="API-format workflow JSON")
    ap.add_argument("ui", type=Path, help="UI-format file to write")
    ap.add_argument("--force", action="store_true", help="replace UI if it exists (never done otherwise)")
    a = ap.parse_args(argv)
    src, dst = a.api, a.ui
    specs = known_specs(Path(__file__).resolve().parents[2], required_comfyui(src))
    try:
        api = load_workflow(src)
    except ValueError as e:
        raise SystemExit(f"error: {src} {e}") from None
    try:
        ui = api_to_ui(api, specs, workflow_notes().get(src.stem))
        target = output_target(str(dst.parent), dst.name, "", numbered=False, force=a.force, field="ui")
    except StyleKitError as e:
        raise SystemExit(f"error: {src}: {e}") from None
    write_new(target, lambda tmp: Path(tmp).write_text(json.dumps(ui, indent=1) + "\n"))


if __name__ == "__main__":
    main()
