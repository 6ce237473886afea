"""Run an API-format workflow on a ComfyUI server and save its images.

    python -m stylekit.tools.client example_workflows/api/patch_map.json --server http://127.0.0.1:8188 --out out/
    python -m stylekit.tools.client wf.json --set 1.ckpt_name=my_model.safetensors --set 5.seed=7

Follows progress over ComfyUI's websocket, downloads every image the outputs list through /view and
exits 0. Otherwise it prints one line (plus ComfyUI's own validation errors) and exits with:

    2  the server refused the graph (ComfyUI's validation errors are printed)
    3  the workflow failed while running
    4  the server could not be reached, or timed out
    5  bad input: the workflow file is missing, not JSON, not an API-format graph; a bad --set; a bad URL
    6  the server's reply was not what ComfyUI sends (another service on that address?)
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/client.py (any install)
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _pack import run_tool
    sys.exit(run_tool("client"))

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path

from ..errors import StyleKitError
from ..files import output_target, write_new


class WorkflowRejected(RuntimeError):
    pass


class WorkflowFailed(RuntimeError):
    pass


class BadInput(ValueError):
    pass


class MalformedReply(RuntimeError):
    pass


EXIT = {WorkflowRejected: 2, WorkflowFailed: 3, BadInput: 5, MalformedReply: 6}


def format_rejection(body: dict) -> str:
    """ComfyUI's validation errors as lines; a reply not shaped as ComfyUI's raises MalformedReply."""
    lines = []
    err = body.get("error", {})
    if isinstance(err, dict):
        lines.append(f"{err.get('type', 'error')}: {err.get('message', '')} {err.get('details', '')}".rstrip())
    else:
        lines.append(str(err))
    node_errors = body.get("node_errors") or {}
    if not isinstance(node_errors, dict) or not all(isinstance(ne, dict) and isinstance(ne.get("errors", []), list)
                                                    and all(isinstance(e, dict) for e in ne.get("errors", []))
                                                    for ne in node_errors.values()):
        raise MalformedReply("the server refused the workflow with node_errors not shaped as ComfyUI's")
    for nid, ne in node_errors.items():
        for e in ne.get("errors", []):
            name = (e.get("extra_info") or {}).get("input_name")
            lines.append(f"  node {nid} ({ne.get('class_type', '?')}){' input ' + name if name else ''}: "
                         f"{e.get('message', '')}: {e.get('details', '')}")
    return "\n".join(lines)


def apply_overrides(workflow: dict, sets: list[str]) -> dict:
    for s in sets or []:
        target, eq, raw = s.partition("=")
        nid, _, name = target.partition(".")
        if not eq or nid not in workflow or not name:
            raise BadInput(f"--set {s!r}: expected NODE_ID.INPUT=VALUE with a node id in the workflow")
        inputs = workflow[nid].get("inputs") if isinstance(workflow[nid], dict) else None
        if not isinstance(inputs, dict):
            raise BadInput(f"--set {s!r}: node {nid} has no inputs to set")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        inputs[name] = value
    return workflow


def check_server(server: str) -> str:
    from urllib.parse import urlparse
    try:
        url = urlparse(server)
        host = url.hostname
    except ValueError as e:  # e.g. an unclosed IPv6 bracket: http://[::1
        raise BadInput(f"--server {server!r}: not an address ({e}); expected one like http://127.0.0.1:8188") from None
    if url.scheme not in ("http", "https") or not host:
        raise BadInput(f"--server {server!r}: expected an address like http://127.0.0.1:8188")
    try:
        url.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise BadInput(f"--server {server!r}: the port is not a number") from None
    return server.rstrip("/")


def read_workflow(path: Path) -> dict:
    from .workflow_check import api_structure_errors, is_ui_format, load_workflow
    try:
        workflow = load_workflow(path)
    except ValueError as e:
        raise BadInput(f"{path} {e}") from None
    if is_ui_format(workflow):
        raise BadInput(f"{path} is a UI-format workflow; use its API-format twin (example_workflows/api/) or "
                       "ComfyUI's 'Export (API)'")
    errs = api_structure_errors(workflow)
    if errs:
        raise BadInput(f"{path}: {errs[0]}")
    return workflow


async def _json(response):
    try:
        body = await response.json(content_type=None)
    except (ValueError, UnicodeDecodeError):
        raise MalformedReply(f"{response.url} answered {response.status} with something that is not JSON") from None
    if not isinstance(body, dict):
        raise MalformedReply(f"{response.url} answered with a JSON {type(body).__name__}, not an object")
    return body


async def run_workflow(workflow: dict, server: str, out_dir: Path, timeout: float = 600.0, log=print) -> list[Path]:
    import aiohttp

    client_id = uuid.uuid4().hex
    ws_url = server.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + f"/ws?clientId={client_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.ws_connect(ws_url) as ws:  # connect first so no message is missed
            async with session.post(f"{server.rstrip('/')}/prompt", json={"prompt": workflow, "client_id": client_id}) as r:
                body = await _json(r)
                if r.status != 200 or "prompt_id" not in body:
                    raise WorkflowRejected(format_rejection(body))
            prompt_id = body["prompt_id"]
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary previews
                try:
                    m = json.loads(msg.data)
                except ValueError:
                    raise MalformedReply("the server's websocket sent a message that is not JSON") from None
                data = m.get("data") if isinstance(m, dict) else None
                if not isinstance(data, dict):
                    continue  # not a message about a prompt
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if m.get("type") == "progress":
                    log(f"node {data.get('node')}: {data.get('value')}/{data.get('max')}")
                elif m.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
                elif m.get("type") == "execution_error":
                    raise WorkflowFailed(f"node {data.get('node_id')} ({data.get('node_type')}): "
                                         f"{data.get('exception_type')}: {data.get('exception_message')}")
        async with session.get(f"{server.rstrip('/')}/history/{prompt_id}") as r:
            history = (await _json(r)).get(prompt_id)
        outputs = history.get("outputs") if isinstance(history, dict) else None
        if not isinstance(outputs, dict):
            raise MalformedReply(f"the server's history has no outputs for prompt {prompt_id}")
        saved = []
        for nid, output in outputs.items():
            images = output.get("images", []) if isinstance(output, dict) else None
            if not isinstance(images, list) or not all(isinstance(im, dict) and isinstance(im.get("filename"), str)
                                                       for im in images):
                raise MalformedReply(f"the server's outputs of node {nid} do not list images by filename")
            for im in images:
                params = {"filename": im["filename"], "subfolder": im.get("subfolder", ""), "type": im.get("type", "output")}
                async with session.get(f"{server.rstrip('/')}/view", params=params) as r:
                    r.raise_for_status()
                    data = await r.read()
                target = output_target(str(out_dir), f"{nid}_{Path(im['filename']).name}", "", field="image name")
                path = Path(write_new(target, lambda tmp, data=data: Path(tmp).write_bytes(data)))
                saved.append(path)
                log(f"saved {path}")
            for text in output.get("text", []):
                log(f"node {nid} text: {text}")
        return saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="stylekit-run", description=__doc__.split("\n\n")[0])
    ap.add_argument("workflow", type=Path, help="API-format workflow JSON (ComfyUI: Export (API))")
    ap.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI server address")
    ap.add_argument("--out", type=Path, default=Path("out"), help="folder for the returned images")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", help="override an input")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up")
    a = ap.parse_args(argv)
    import aiohttp
    try:
        server = check_server(a.server)
        workflow = apply_overrides(read_workflow(a.workflow), a.set)
        saved = asyncio.run(run_workflow(workflow, server, a.out, a.timeout))
    except WorkflowRejected as e:
        print(f"ComfyUI refused the workflow:\n{e}", file=sys.stderr)
        return 2
    except (WorkflowFailed, BadInput, MalformedReply, StyleKitError) as e:
        what = {WorkflowFailed: "the workflow failed", MalformedReply: "unexpected reply from the server"}
        print(f"{what.get(type(e), 'error')}: {e}", file=sys.stderr)
        return EXIT.get(type(e), 5)
    except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as e:
        print(f"could not talk to ComfyUI at {a.server}: {e!r}", file=sys.stderr)
        return 4
    print(f"{len(saved)} image(s) saved under {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
