"""The workflow tools never raise on bad input: the validator reports, the converter refuses, the client
prints one line and exits with its documented code."""
import asyncio
import copy
import json
import random
import threading
from pathlib import Path

import pytest

from stylekit.tools.client import main as client_main
from stylekit.tools.dev.ui_workflow import api_to_ui
from stylekit.tools.workflow_check import known_specs
from stylekit.tools.workflow_check import WorkflowError, check_api, check_file, check_ui

ROOT = Path(__file__).resolve().parents[2]
SPECS = known_specs(ROOT)
API = json.loads((ROOT / "example_workflows" / "api" / "patch_map.json").read_text())
UI = json.loads((ROOT / "example_workflows" / "patch_map.json").read_text())


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid JSON"), ("", "not valid JSON"), ("[1, 2]", "not a list"), ('"text"', "not a str"),
    ('{"1": 5}', "node 1: is a int"), ('{"1": {"inputs": {}}}', "node 1: has no class_type"),
    ('{"1": {"class_type": "StyleKitPatchMap", "inputs": [1]}}', "inputs is a list"),
    ('{"1": {"class_type": "SaveImage", "inputs": {}}, "1": {"class_type": "SaveImage", "inputs": {}}}', "appears twice"),
    ('{"nodes": "x", "links": []}', "a 'nodes' list and a 'links' list"),
    ('{"nodes": [{"id": "a", "type": "SaveImage"}], "links": []}', "integer id"),
    ('{"nodes": [{"id": 1, "type": "SaveImage"}, {"id": 1, "type": "SaveImage"}], "links": []}', "used twice"),
    ('{"nodes": [], "links": [[1, 2]]}', r"is not \[id, from"),
    ('{"nodes": [{"id": 1, "type": "SaveImage", "inputs": [5]}], "links": []}', "inputs is not a list"),
])
def test_validator_reports_malformed_files(tmp_path, text, match):
    path = tmp_path / "wf.json"
    path.write_text(text)
    errs = check_file(path, SPECS)
    assert errs and any(pytest.importorskip("re").search(match, e) for e in errs), errs


def test_validator_reports_missing_and_unreadable_files(tmp_path):
    assert check_file(tmp_path / "nope.json", SPECS) == ["nope.json: not found"]
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    assert "cannot be read" in check_file(tmp_path / "bin.json", SPECS)[0]


def test_cycles_are_errors_in_both_formats_and_the_converter_refuses_them():
    api = copy.deepcopy(API)
    model_src = next(nid for nid, n in api.items() if n["class_type"] == "CheckpointLoaderSimple")
    sink = next(nid for nid, n in api.items() if n["class_type"] == "SaveImage")
    api[model_src]["inputs"]["ckpt_name"] = [sink, 0]  # the loader now depends on the saver: a cycle
    assert any("form a cycle" in e for e in check_api(api, SPECS))
    with pytest.raises(WorkflowError, match="cycle"):
        api_to_ui(api, SPECS)
    ui = copy.deepcopy(UI)
    first, last = ui["links"][0], ui["links"][-1]
    ui["links"].append([999, last[3], 0, first[1], 0, "*"])
    assert any("form a cycle" in e for e in check_ui(ui, SPECS))


def test_links_to_missing_nodes_and_unknown_types_are_reported():
    api = copy.deepcopy(API)
    nid = next(iter(api))
    api["77"] = {"class_type": "StyleKitPatchMap", "inputs": {"model": ["404", 0]}}
    assert any("links to missing node 404" in e for e in check_api(api, SPECS))
    with pytest.raises(WorkflowError, match="unknown node type"):
        api_to_ui(dict(api, **{"78": {"class_type": "Nope", "inputs": {}}}), SPECS)
    assert nid in api


def mutations(workflow, n, seed):
    """Deterministic random damage: delete, retype or replace values anywhere in the JSON tree."""
    rng = random.Random(seed)
    junk = [None, 0, -1, 1.5, "", "x", [], {}, [1], ["1", 99], True, float("nan")]
    for _ in range(n):
        wf = copy.deepcopy(workflow)
        for _ in range(rng.randint(1, 3)):
            node, key = wf, None
            path = []
            while isinstance(node, (dict, list)) and node and rng.random() < 0.75:
                key = rng.choice(list(node.keys()) if isinstance(node, dict) else range(len(node)))
                path.append((node, key))
                node = node[key]
            if path:
                parent, key = path[-1]
                if isinstance(parent, dict) and rng.random() < 0.3:
                    del parent[key]
                else:
                    parent[key] = rng.choice(junk)
        yield wf


@pytest.mark.parametrize("name", ["api", "ui"])
def test_validator_never_raises_on_damaged_workflows(name):
    workflow, check = (API, check_api) if name == "api" else (UI, check_ui)
    for wf in mutations(workflow, 300, seed=1 if name == "api" else 2):
        assert isinstance(check(wf, SPECS), list)
        if name == "api":  # the converter converts a valid graph or refuses with WorkflowError
            try:
                assert api_to_ui(wf, SPECS)["nodes"]
            except WorkflowError:
                pass


# ------------------------------------------------------------------------------------------ client
def run_client(*args):
    return client_main([str(a) for a in args])


def test_client_exit_codes_for_bad_input(tmp_path, capsys):
    good = ROOT / "example_workflows" / "api" / "patch_map.json"
    (tmp_path / "bad.json").write_text("{oops")
    cases = [
        ([tmp_path / "missing.json"], "not found"),
        ([tmp_path / "bad.json"], "not valid JSON"),
        ([ROOT / "example_workflows" / "patch_map.json"], "UI-format"),
        ([good, "--server", "127.0.0.1:8188"], "expected an address"),
        ([good, "--server", "http://host:port"], "port is not a number"),
        ([good, "--server", "http://[::1"], "not an address"),
        ([tmp_path], "is not a file"),
        ([good, "--set", "noequals"], "NODE_ID.INPUT=VALUE"),
        ([good, "--set", "99.x=1"], "NODE_ID.INPUT=VALUE"),
    ]
    for args, match in cases:
        assert run_client(*args) == 5, args
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err, (args, err)


def test_client_set_on_a_node_without_inputs(tmp_path, capsys):
    (tmp_path / "wf.json").write_text(json.dumps({"1": {"class_type": "X"}}))
    assert run_client(tmp_path / "wf.json", "--set", "1.a=2") == 5
    assert "has no inputs" in capsys.readouterr().err


@pytest.fixture
def fake_server(free_port):
    """A loopback HTTP server answering what a misconfigured or foreign service might (bounded: it
    serves until the test ends)."""
    from aiohttp import web
    replies = {}

    async def prompt(request):
        kind = replies["prompt"]
        if kind == "html":
            return web.Response(text="<html>not comfy</html>", content_type="text/html")
        if kind == "list":
            return web.json_response([1, 2])
        if kind == "odd refusal":  # a 400 whose node_errors is not ComfyUI's mapping
            return web.json_response({"error": "bad", "node_errors": ["x"]}, status=400)
        return web.json_response({"error": {"type": "invalid_prompt", "message": "bad"}, "node_errors": {}}, status=400)

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await asyncio.sleep(5)
        return sock
    app = web.Application()
    app.router.add_post("/prompt", prompt)
    app.router.add_get("/ws", ws)
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", replies
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.mark.parametrize("reply,code,match", [("html", 6, "not JSON"), ("list", 6, "not an object"),
                                              ("odd refusal", 6, "node_errors"), ("refusal", 2, "invalid_prompt")])
def test_client_on_malformed_or_refusing_servers(fake_server, capsys, reply, code, match):
    url, replies = fake_server
    replies["prompt"] = reply
    good = ROOT / "example_workflows" / "api" / "patch_map.json"
    assert run_client(good, "--server", url, "--timeout", "20") == code
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_client_on_an_unreachable_server(capsys, free_port):
    good = ROOT / "example_workflows" / "api" / "patch_map.json"
    assert run_client(good, "--server", f"http://127.0.0.1:{free_port()}", "--timeout", "5") == 4
    assert "could not talk to ComfyUI" in capsys.readouterr().err


def test_tools_do_not_block_on_a_fifo(tmp_path):
    """The client and the UI converter read a workflow only from a regular file: a FIFO would block forever.
    Run in a child process with a time limit, so a regression fails instead of hanging the suite."""
    import os
    import subprocess
    import sys
    fifo = tmp_path / "wf.json"
    os.mkfifo(fifo)
    for tool in ("client", "dev.ui_workflow"):
        args = [str(fifo)] if tool == "client" else [str(fifo), str(tmp_path / "out.json")]
        p = subprocess.run([sys.executable, "-m", f"stylekit.tools.{tool}", *args], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode != 0 and "is not a file" in p.stderr and "Traceback" not in p.stderr, (tool, p.stderr)
