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


@pytest.mark.parametrize("name", workflows())
def test_the_frontend_loads_the_workflow_as_saved(report, name):
    wf = report["workflows"][name]
    assert wf["missing"] == [], f"node types the frontend does not know: {wf['missing']}"
    assert wf["grown"] == {}, f"nodes the frontend draws larger than saved: {wf['grown']}"
    assert wf["overlaps"] == [], f"overlapping nodes as drawn: {wf['overlaps']}"
    assert wf["errors"] == [], wf["errors"]
