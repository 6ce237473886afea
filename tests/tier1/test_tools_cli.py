"""Every command line in tools/ answers --help and writes nothing; the workflow checker's exit codes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = sorted(p for p in [*(ROOT / "tools").glob("*.py"), *(ROOT / "tools" / "dev").glob("*.py")]
               if not p.name.startswith("_"))


def snapshot():
    watched = [*(ROOT / "web" / "docs").glob("*"), *(ROOT / "example_workflows").rglob("*")]
    return {p: p.stat().st_mtime_ns for p in watched if p.is_file()}


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.name)
def test_help_runs_and_writes_nothing(tool, tmp_path):
    before = snapshot()
    run = subprocess.run([sys.executable, str(tool), "--help"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("usage:"), run.stdout[:200]
    assert snapshot() == before and not list(tmp_path.iterdir())


def test_workflow_check_exit_codes(tmp_path):
    tool = ROOT / "tools" / "workflow_check.py"
    good = ROOT / "example_workflows" / "api" / "styleid_reproduction.json"
    bad = tmp_path / "bad.json"
    wf = json.loads(good.read_text())
    wf["12"]["inputs"]["sigmas"] = ["9", 0]  # an inversion where SIGMAS belong
    bad.write_text(json.dumps(wf))
    ok = subprocess.run([sys.executable, str(tool), str(good)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "valid" in ok.stdout, ok.stdout + ok.stderr
    no = subprocess.run([sys.executable, str(tool), str(good), str(bad)], capture_output=True, text=True, timeout=120)
    assert no.returncode == 1 and "bad.json" in no.stdout and "sigmas" in no.stdout, no.stdout + no.stderr
