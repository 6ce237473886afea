"""The browser tier (``make test-browser COMFYUI_PATH=...``; on request, never in CI): every shipped workflow
loaded into ComfyUI's own frontend in headless Chromium (Debian's package, driven by playwright from pip),
with the frontend's own view of it: no node type it does not know, no node it had to draw larger than the
file says, no two nodes overlapping as drawn, no console error other than the model files that are not
installed. Screenshots and report.json land in out/browser/."""
import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

COMFYUI = os.environ.get("COMFYUI_PATH")
CHROMIUM = os.environ.get("STYLEKIT_CHROMIUM", "/usr/lib/chromium/chromium")


@pytest.fixture(scope="module")
def report():
    if not COMFYUI:
        pytest.skip("the browser tier needs a ComfyUI checkout: set COMFYUI_PATH")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"the browser tier needs Chromium ({CHROMIUM}): apt install chromium, or set STYLEKIT_CHROMIUM")
    pytest.importorskip("playwright", reason="the browser tier needs playwright from pip (never `playwright install`)")
    from stylekit.tools.dev.frontend_check import PACK, check
    return check(Path(COMFYUI).resolve(), CHROMIUM, PACK / "out" / "browser")


def workflows():
    from stylekit.tools.dev.frontend_check import PACK
    return sorted(p.stem for p in (PACK / "example_workflows").glob("*.json"))


def test_the_frontend_starts_with_the_pack_and_logs_no_error(report):
    """The pack's web extensions load once each: a web folder registered twice (WEB_DIRECTORY and pyproject's
    [tool.comfy] web) serves every script twice, and the second registration is a console error."""
    assert report["startup_errors"] == []


@pytest.mark.parametrize("name", workflows())
def test_the_frontend_loads_the_workflow_as_saved(report, name):
    wf = report["workflows"][name]
    assert wf["missing"] == [], f"node types the frontend does not know: {wf['missing']}"
    assert wf["grown"] == {}, f"nodes the frontend draws larger than saved: {wf['grown']}"
    assert wf["overlaps"] == [], f"overlapping nodes as drawn: {wf['overlaps']}"
    assert wf["errors"] == [], wf["errors"]


def test_inputs_a_preset_ignores_are_drawn_only_under_custom(report):
    """web/js/shown_with.js in the real frontend: on every node with specs.shown_with inputs (Feature Fusion's
    gamma / temperature / content_kv), a widget is hidden exactly while its rule does not hold; choosing the
    rule's value (preset custom) shows it and fits the node to it, choosing the saved value again hides it."""
    from stylekit.nodes import NODE_CLASS_MAPPINGS
    from stylekit.nodes.specs import hidden_inputs
    from stylekit.tools.dev.frontend_check import overlaps, shown_with_rules
    assert shown_with_rules(), "no node declares a shown_with input"

    def expected_hidden(typ, values):
        declared = {n: d for section in NODE_CLASS_MAPPINGS[typ].INPUT_TYPES().values() for n, d in section.items()}
        return sorted(hidden_inputs(declared, values))

    seen = 0
    for name, wf in report["workflows"].items():
        for node_id, node in wf["widgets"].items():
            where = (name, node_id)
            assert sorted(node["hidden"]) == expected_hidden(node["type"], node["values"]), where
            assert node["chosen"], where
            for state in node["chosen"]:
                assert sorted(state["hidden"]) == expected_hidden(node["type"], state["values"]), (where, state)
                assert state["size"][1] >= state["min"][1], (where, state)  # no shown widget cut off
            for chosen, saved in zip(node["chosen"][::2], node["chosen"][1::2]):
                if saved["value"] != chosen["value"]:  # shown, then hidden: the node grows, then shrinks back
                    assert chosen["size"][1] > saved["size"][1], (where, chosen, saved)
                assert saved["size"] == node["size"], (where, "not back to its loaded size", saved)
                grown = [dict(n, size=chosen["size"]) if n["id"] == node_id else n for n in wf["geometry"]]
                assert overlaps(grown, wf["title"]) == [], (where, "grown into its neighbour", chosen["value"])
            seen += 1
    assert seen, "no shipped workflow has a node with shown_with inputs"
    for typ, seen in report["fresh"].items():
        fresh, linked, reloaded = seen["fresh"], seen["linked"], seen["reloaded"]
        # a node dragged in new: its defaults decide, and it fits them
        assert sorted(fresh["hidden"]) == expected_hidden(typ, fresh["values"]), typ
        assert fresh["size"][1] == fresh["min"][1], (typ, fresh)
        # the preset fed by a link: its value comes at run time, so every value it may use is shown
        assert linked["hidden"] == [] and linked["size"][1] > fresh["size"][1], (typ, linked)
        # saved and loaded again: configure() keeps the saved size and the widgets stay shown
        assert reloaded["hidden"] == [] and reloaded["size"] == linked["size"], (typ, reloaded)
