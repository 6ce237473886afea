"""Run an API-format workflow on a ComfyUI server and save its images.

    python -m stylekit.tools.client example_workflows/api/patch_map.json --server http://127.0.0.1:8188 --out out/
    python -m stylekit.tools.client wf.json --set 1.ckpt_name=my_model.safetensors --set 5.seed=7

Follows progress over ComfyUI's websocket, downloads every image the outputs list through /view and
exits 0. Exit 2: the server refused the graph (ComfyUI's validation errors are printed); 3: it failed
while running; 4: the server could not be reached or timed out.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path


class WorkflowRejected(RuntimeError):
    pass


class WorkflowFailed(RuntimeError):
    pass


def format_rejection(body: dict) -> str:
    lines = []
    err = body.get("error", {})
    if isinstance(err, dict):
        lines.append(f"{err.get('type', 'error')}: {err.get('message', '')} {err.get('details', '')}".rstrip())
    else:
        lines.append(str(err))
    for nid, ne in (body.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            name = (e.get("extra_info") or {}).get("input_name")
            lines.append(f"  node {nid} ({ne.get('class_type', '?')}){' input ' + name if name else ''}: "
                         f"{e.get('message', '')}: {e.get('details', '')}")
    return "\n".join(lines)


def apply_overrides(workflow: dict, sets: list[str]) -> dict:
    for s in sets or []:
        target, _, raw = s.partition("=")
        nid, _, name = target.partition(".")
        if nid not in workflow or not name:
            raise SystemExit(f"--set {s!r}: expected NODE_ID.INPUT=VALUE with a node id in the workflow")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        workflow[nid]["inputs"][name] = value
    return workflow


async def run_workflow(workflow: dict, server: str, out_dir: Path, timeout: float = 600.0, log=print) -> list[Path]:
    import aiohttp

    client_id = uuid.uuid4().hex
    ws_url = server.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + f"/ws?clientId={client_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.ws_connect(ws_url) as ws:  # connect first so no message is missed
            async with session.post(f"{server.rstrip('/')}/prompt", json={"prompt": workflow, "client_id": client_id}) as r:
                body = await r.json(content_type=None)
                if r.status != 200 or "prompt_id" not in body:
                    raise WorkflowRejected(format_rejection(body))
            prompt_id = body["prompt_id"]
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary previews
                m = json.loads(msg.data)
                data = m.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if m["type"] == "progress":
                    log(f"node {data.get('node')}: {data['value']}/{data['max']}")
                elif m["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
                elif m["type"] == "execution_error":
                    raise WorkflowFailed(f"node {data.get('node_id')} ({data.get('node_type')}): "
                                         f"{data.get('exception_type')}: {data.get('exception_message')}")
        async with session.get(f"{server.rstrip('/')}/history/{prompt_id}") as r:
            history = (await r.json())[prompt_id]
        saved = []
        for nid, output in history.get("outputs", {}).items():
            for im in output.get("images", []):
                params = {"filename": im["filename"], "subfolder": im.get("subfolder", ""), "type": im.get("type", "output")}
                async with session.get(f"{server.rstrip('/')}/view", params=params) as r:
                    r.raise_for_status()
                    path = out_dir / f"{nid}_{Path(im['filename']).name}"
                    path.write_bytes(await r.read())
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
    workflow = apply_overrides(json.loads(a.workflow.read_text()), a.set)
    if "nodes" in workflow:
        print(f"{a.workflow} is a UI-format workflow; use its API-format twin (example_workflows/api/) or "
              "ComfyUI's 'Export (API)'", file=sys.stderr)
        return 2
    try:
        saved = asyncio.run(run_workflow(workflow, a.server, a.out, a.timeout))
    except WorkflowRejected as e:
        print(f"ComfyUI refused the workflow:\n{e}", file=sys.stderr)
        return 2
    except WorkflowFailed as e:
        print(f"the workflow failed: {e}", file=sys.stderr)
        return 3
    except (OSError, asyncio.TimeoutError) as e:
        print(f"could not talk to ComfyUI at {a.server}: {e!r}", file=sys.stderr)
        return 4
    print(f"{len(saved)} image(s) saved under {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
