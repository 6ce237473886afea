"""The browser tier: every shipped workflow loaded into ComfyUI's own frontend in a headless Chromium.

    python -m stylekit.tools.dev.frontend_check --comfyui ~/ComfyUI [--chromium /usr/lib/chromium/chromium] [--out out/browser]

Starts the ComfyUI at ``--comfyui`` (its own Python: ``<comfyui>/.venv/bin/python``, else ``python3``) on a
free local port with a throw-away base directory whose custom_nodes/ holds this pack, opens its frontend in
Chromium (Debian's package, driven by playwright from pip; never a downloaded browser build), loads each
example_workflows/*.json as a user would (``app.loadGraphData``), and writes ``<out>/<name>.png`` and
``<out>/report.json``: per workflow the node types the frontend does not know, the nodes the frontend drew
larger than the file says (their size as drawn), the pairs of nodes whose boxes (title bar included)
overlap, the browser's console errors other than failed resource loads (the workflows name model
files that are not installed) and while the page starts (the pack's extensions loading), and for each
node with ``specs.shown_with`` inputs its hidden widgets as loaded and after choosing each rule's value and
then the saved one again, and as a new node of each such type has them (web/js/shown_with.js at work).
``--sizes FILE`` also writes each node type's smallest size as the frontend computes it, which
tools/dev/ui_workflow.py lays workflows out with. Exit 1 when any workflow has a missing node or an overlap.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/dev/frontend_check.py (any install)
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/, where _pack.py is
    from _pack import run_tool
    sys.exit(run_tool("dev.frontend_check"))

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PACK = Path(__file__).resolve().parents[2]
TITLE = 30  # LiteGraph's NODE_TITLE_HEIGHT: a node's box starts this far above its pos
# console errors of a frontend with no network or no model files, not of the workflow: a model file the
# workflow names is not installed (a failed load), and 1.27's missing-models list cannot fetch its download size
OFFLINE = ("Failed to load resource", "Error fetching file size: TypeError: Failed to fetch")
# what frontend 1.49.6 logs while it starts, with no custom node installed at all
STARTUP = ("ComfyApp graph accessed before initialization",)

# a node as the page reports it: its size, the frontend's smallest size for it, its hidden widgets, its values
_VIEW = """n => ({size: Array.from(n.size), min: Array.from(n.computeSize()),
                 hidden: (n.widgets || []).filter(w => w.hidden).map(w => w.name),
                 values: Object.fromEntries((n.widgets || []).map(w => [w.name, w.value]))})"""

_MEASURE = """async ([wf, rules]) => {
    await window.app.loadGraphData(wf);
    try { await window.app.extensionManager.command.execute("Comfy.Canvas.FitView"); } catch (e) {}
    await new Promise(r => setTimeout(r, 500));
    const LG = window.LiteGraph;
    const view = """ + _VIEW + """;
    const choose = (n, name, value) => {  // as the combo's menu does: the value, then the widget's callback
        const w = n.widgets.find(w => w.name === name);
        if (w.setValue) w.setValue(value, {node: n, canvas: window.app.canvas}); else { w.value = value; w.callback?.(value); }
    };
    const nodes = window.app.graph.nodes.map(n => ({id: String(n.id), type: n.type, pos: Array.from(n.pos),
        known: !!LG.registered_node_types[n.type], ...view(n)}));
    for (const node of nodes) {  // each shown_with value chosen in turn, then the saved value again
        const n = window.app.graph.getNodeById(Number(node.id)) || window.app.graph.getNodeById(node.id);
        node.chosen = [];
        const pairs = new Set((rules[node.type] || []).flatMap(r => Object.entries(r.when).map(e => JSON.stringify(e))));
        for (const [name, value] of [...pairs].map(p => JSON.parse(p))) {
            const saved = n.widgets.find(w => w.name === name).value;
            choose(n, name, value);
            node.chosen.push({name, value, ...view(n)});
            choose(n, name, saved);
            node.chosen.push({name, value: saved, ...view(n)});
        }
    }
    return {frontend: window.__COMFYUI_FRONTEND_VERSION__ || null, title: LG.NODE_TITLE_HEIGHT, nodes};
}"""


_FRESH = """async (rules) => {  // each ruled type dragged in new; then its watched widgets fed by links; then reloaded
    const app = window.app, LG = window.LiteGraph, out = {};
    const view = """ + _VIEW + """;
    for (const [type, list] of Object.entries(rules)) {
        await app.loadGraphData({last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {},
                                 extra: {}, version: 0.4});
        const n = LG.createNode(type);
        app.graph.add(n);
        const fresh = view(n);
        for (const name of new Set(list.flatMap(r => Object.keys(r.when)))) {
            const p = LG.createNode("PrimitiveNode");
            p.pos = [n.pos[0] - 300, n.pos[1]];
            app.graph.add(p);
            p.connect(0, n, n.inputs.findIndex(i => i.widget?.name === name));
        }
        const linked = view(n);
        await app.loadGraphData(app.graph.serialize());
        out[type] = {fresh, linked, reloaded: view(app.graph.getNodeById(n.id))};
    }
    return out;
}"""


def shown_with_rules() -> dict:
    """Each node type's inputs declared with specs.shown_with: {type: [{"name", "when"}]} (what web/js/shown_with.js
    reads from /object_info)."""
    from ...nodes import NODE_CLASS_MAPPINGS
    from ...nodes.specs import shown_with_rules as rules_of
    return {node_id: [{"name": name, "when": when} for name, when in rules.items()]
            for node_id, cls in NODE_CLASS_MAPPINGS.items()
            if (rules := rules_of({n: d for section in cls.INPUT_TYPES().values() for n, d in section.items()}))}


def overlaps(nodes: list, title: float = TITLE) -> list:
    """Pairs of node ids whose boxes (pos, size, the title bar above pos) intersect."""
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - title, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in nodes]
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]:
                out.append(sorted([a[0], b[0]]))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(comfyui: Path, base: Path, port: int, log):
    python = next((str(p) for p in (comfyui / ".venv/bin/python", comfyui / "venv/bin/python") if p.exists()), "python3")
    (base / "custom_nodes").mkdir(parents=True)
    os.symlink(PACK, base / "custom_nodes" / "ComfyUI-StyleKit")
    proc = subprocess.Popen([python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
                             str(base), "--disable-auto-launch"], cwd=comfyui, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info/StyleKitPatchMap", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"error: ComfyUI exited ({proc.returncode}); see {log.name}")
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"error: ComfyUI did not answer within 4 minutes; see {log.name}")


def check(comfyui: Path, chromium: str, out: Path) -> dict:
    """Load every example workflow in the frontend; the report (see the module docstring)."""
    from playwright.sync_api import sync_playwright
    out.mkdir(parents=True, exist_ok=True)
    report = {"workflows": {}}
    with tempfile.TemporaryDirectory() as tmp, open(out / "comfyui.log", "w") as log:
        port = _free_port()
        server = _server(comfyui, Path(tmp) / "base", port, log)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
                page = browser.new_page(viewport={"width": 1920, "height": 1080})
                errors = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(f"http://127.0.0.1:{port}", wait_until="networkidle", timeout=180_000)
                page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=180_000)
                page.wait_for_timeout(2000)
                page.keyboard.press("Escape")  # the template browser a first visit opens
                report["startup_errors"] = [e for e in errors if not any(m in e for m in OFFLINE + STARTUP)]
                rules = shown_with_rules()
                for path in sorted((PACK / "example_workflows").glob("*.json")):
                    errors.clear()
                    got = page.evaluate(_MEASURE, [json.loads(path.read_text()), rules])
                    for toast in page.locator(".p-toast-close-button").all():  # "missing models" notices
                        toast.click()
                    page.screenshot(path=str(out / f"{path.stem}.png"))
                    saved = {str(n["id"]): n for n in json.loads(path.read_text())["nodes"]}
                    report["frontend"] = got["frontend"]
                    report["workflows"][path.stem] = {
                        "missing": sorted({n["type"] for n in got["nodes"] if not n["known"]}),
                        "grown": {n["id"]: n["size"] for n in got["nodes"]
                                  if n["size"] != saved.get(n["id"], {}).get("size")},
                        "overlaps": overlaps(got["nodes"], got["title"]),
                        "geometry": [{k: n[k] for k in ("id", "pos", "size")} for n in got["nodes"]],
                        "title": got["title"],
                        "errors": [e for e in errors if not any(m in e for m in OFFLINE)],
                        "sizes": {n["type"]: n["min"] for n in got["nodes"]},
                        "widgets": {n["id"]: {k: n[k] for k in ("type", "size", "min", "hidden", "values", "chosen")}
                                    for n in got["nodes"] if n["type"] in rules},
                    }
                report["fresh"] = page.evaluate(_FRESH, rules)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=60)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def smallest_sizes(report: dict) -> dict:
    """Each node type's smallest size with every widget shown (the largest the frontend computed for it in any
    workflow, plus a row for each widget web/js/shown_with.js hid there), rounded up."""
    from .ui_workflow import WIDGET_ROW
    sizes: dict = {}
    for wf in report["workflows"].values():
        hidden = {n["type"]: len(n["hidden"]) for n in wf["widgets"].values()}  # by type, the last node, as sizes
        for typ, (w, h) in wf["sizes"].items():
            h += WIDGET_ROW * hidden.get(typ, 0)
            old = sizes.get(typ, [0, 0])
            sizes[typ] = [max(old[0], -(-w // 1)), max(old[1], -(-h // 1))]
    return {"frontend": report.get("frontend"), "sizes": {k: [int(v[0]), int(v[1])] for k, v in sorted(sizes.items())}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="frontend_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout with its frontend package")
    ap.add_argument("--chromium", default="/usr/lib/chromium/chromium", help="the Chromium executable (Debian's)")
    ap.add_argument("--out", type=Path, default=PACK / "out" / "browser", help="screenshots and report.json")
    ap.add_argument("--sizes", type=Path, help="also write the node types' smallest sizes (JSON) here")
    a = ap.parse_args(argv)
    report = check(a.comfyui.resolve(), a.chromium, a.out)
    if a.sizes:
        a.sizes.write_text(json.dumps(smallest_sizes(report), indent=1) + "\n")
    bad = {k: {f: v[f] for f in ("missing", "overlaps", "errors") if v[f]} for k, v in report["workflows"].items()}
    bad = {k: v for k, v in bad.items() if v}
    print(json.dumps(bad, indent=1) if bad else f"{len(report['workflows'])} workflows load clean in frontend "
                                                 f"{report.get('frontend')}; screenshots in {a.out}")
    return 1 if any(v.get("missing") or v.get("overlaps") for v in bad.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
