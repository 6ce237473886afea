"""Write the help page of every StyleKit node: web/docs/<NodeId>.md, which ComfyUI's frontend shows
in its node help panel (the pack's WEB_DIRECTORY is web/).

    python tools/node_docs.py            (from the pack's folder, with ComfyUI's or the dev venv's Python)

Each page is made from the node's own definition (description, inputs with their types, defaults,
ranges and tooltips, outputs with theirs), so the pages cannot drift from the nodes: a test compares
them with what this script writes.
"""
from __future__ import annotations

from pathlib import Path

PACK = Path(__file__).resolve().parents[1]


def _input_line(name: str, decl: tuple, required: bool) -> str:
    typ, opts = decl[0], dict(decl[1]) if len(decl) > 1 else {}
    if isinstance(typ, (list, tuple)):
        files = [c for c in typ if not (c.startswith("(") and c.endswith(")"))]
        shown = ", ".join(f"`{c}`" for c in typ[:8]) + (", ..." if len(typ) > 8 else "")
        kind = f"one of {shown}" if files else "a file from its model folder" + "".join(f" or `{c}`" for c in typ)
    else:
        kind = f"`{typ}`"
    facts = []
    if "default" in opts and opts["default"] != "":
        facts.append(f"default `{opts['default']}`")
    if "min" in opts and "max" in opts:
        facts.append(f"{opts['min']} to {opts['max']}")
    if not required:
        facts.append("optional")
    head = f"- **{name}** ({kind}{'; ' + ', '.join(facts) if facts else ''})"
    return f"{head}: {opts.get('tooltip', '')}".rstrip(": ")


def node_page(node_id: str, cls, display_name: str) -> str:
    lines = [f"# {display_name}", "", cls.DESCRIPTION.strip(), "", f"Category: {cls.CATEGORY}", "", "## Inputs", ""]
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, decl in spec.get(section, {}).items():
            lines.append(_input_line(name, decl, section == "required"))
    lines += ["", "## Outputs", ""]
    names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    tips = getattr(cls, "OUTPUT_TOOLTIPS", ("",) * len(cls.RETURN_TYPES))
    for name, typ, tip in zip(names, cls.RETURN_TYPES, tips):
        lines.append(f"- **{name}** (`{typ}`): {tip}".rstrip(": "))
    if not cls.RETURN_TYPES:
        lines.append("None: the node saves or shows its result.")
    lines += ["", f"Node id: `{node_id}`. More in the StyleKit README.", ""]
    return "\n".join(lines)


def pages(pack=None) -> dict[str, str]:
    """{file name: page} for every node the pack registers. A page describes the node, not the files
    this machine has: model-folder lists are read as empty while the pages are made."""
    if pack is None:
        from _pack import load_pack  # run as a script: tools/ is on the path
        pack = load_pack()
    nodes = pack.nodes
    listed = nodes.comfy_glue.list_files
    nodes.comfy_glue.list_files = lambda name, extensions=(): []
    try:
        return {f"{nid}.md": node_page(nid, cls, nodes.NODE_DISPLAY_NAME_MAPPINGS[nid])
                for nid, cls in nodes.NODE_CLASS_MAPPINGS.items()}
    finally:
        nodes.comfy_glue.list_files = listed


def main(argv=None) -> int:
    import argparse
    argparse.ArgumentParser(
        prog="node_docs", description="Write web/docs/<NodeId>.md, the help page of every StyleKit node, from the "
        "node definitions (the pages are replaced; a test checks they match).").parse_args(argv)
    out = PACK / "web" / "docs"
    out.mkdir(parents=True, exist_ok=True)
    written = pages()
    from _pack import pack_module  # run as a script: tools/ is on the path
    files = pack_module("files")
    for name, text in written.items():  # regenerated pages replace the old ones
        target = files.output_target(str(out), name, "", numbered=False, force=True)
        files.write_new(target, lambda tmp, text=text: Path(tmp).write_text(text))
    print(f"wrote {len(written)} node help pages to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
