"""Write the help page of every StyleKit node: web/docs/<NodeId>.md, which ComfyUI's frontend shows
in its node help panel (the pack's WEB_DIRECTORY is web/), and the README's node table.

    python tools/dev/node_docs.py            (from the pack's folder, with ComfyUI's or the dev venv's Python)

Each page is made from the node's own definition (description, inputs with their types, defaults,
ranges and tooltips, outputs with theirs), so the pages and the table cannot drift from the nodes: a
test compares them with what this script writes.
"""
from __future__ import annotations

import importlib
from pathlib import Path

PACK = Path(__file__).resolve().parents[2]


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


def _sources(pack) -> tuple:
    return importlib.import_module(f"{pack.__name__}.model_sources").SOURCES


def _nodes(pack):
    """The pack's node registry (its package no longer imports it: ComfyUI registers the nodes as V3 nodes)."""
    return importlib.import_module(f"{pack.__name__}.nodes")


def where_from(s, link: bool = False) -> str:
    """Where a weight comes from: its address (``link``: as a Markdown link named by its repository) and the
    one step it takes (converting, training, the name to save it as), if any."""
    where = s.url
    if link and where.startswith("https://"):
        where = f"[{where.removeprefix('https://').split('/resolve/')[0]}]({where})"
    how = "; ".join(x for x in (s.made, s.saved_as) if x)
    if where == "—":  # published nowhere: made by the user with StyleKit
        return how or where
    return where + (f" ({how})" if how else "")


def source_line(s) -> str:
    """One weight file in a help page: its folder, where it comes from, size and licence."""
    return f"- `{s.file}` in `models/{s.folder}`: {where_from(s)}; {s.size}; licence: {s.licence}".replace("; —", "")


def node_page(node_id: str, cls, display_name: str, sources=()) -> str:
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
    if sources:
        lines += ["", "## Weights (the files the example workflows use)", "", *map(source_line, sources)]
    lines += ["", f"Node id: `{node_id}`. More in the StyleKit README.", ""]
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- node table: made by tools/dev/node_docs.py -->", "<!-- end of node table -->"
MODELS_BEGIN, MODELS_END = "<!-- model table: made by tools/dev/node_docs.py -->", "<!-- end of model table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _first_sentence(text: str, at_least: int = 60) -> str:
    """The description's first sentence (and the next ones while it is shorter than ``at_least``)."""
    text, end = " ".join(text.split()), 0
    while end < at_least:
        found = text.find(". ", end)
        if found < 0:
            return text
        end = found + 1
    return text[:end]


def table_row(node_id: str, cls, display_name: str) -> str:
    spec = cls.INPUT_TYPES()
    inputs = [f"{n}" for n in spec.get("required", {})] + [f"{n} (optional)" for n in spec.get("optional", {})]
    names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    outputs = [f"{n} `{t}`" if n != t else f"`{t}`" for n, t in zip(names, cls.RETURN_TYPES)] or ["(saves or shows)"]
    cells = (f"{display_name} (`{node_id}`)", ", ".join(inputs), ", ".join(outputs), _first_sentence(cls.DESCRIPTION))
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def readme_table(pack=None) -> str:
    """The README's node table, one row per registered node, from the node definitions (the first
    sentence of its description; its help page says the rest)."""
    pack = pack or _load()
    nodes = _nodes(pack)
    rows = [table_row(nid, cls, nodes.NODE_DISPLAY_NAME_MAPPINGS[nid]) for nid, cls in nodes.NODE_CLASS_MAPPINGS.items()]
    return "\n".join([README_BEGIN, "| node | inputs | outputs | what it does |", "|---|---|---|---|", *rows, README_END])


def models_table(pack=None) -> str:
    """The README's model table: every weight a node or shipped workflow reads (stylekit.model_sources)."""
    rows = []
    for s in _sources(pack or _load()):
        cells = (f"`{s.file}`", f"`models/{s.folder}`", where_from(s, link=True), s.size, s.licence, ", ".join(s.nodes))
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join([MODELS_BEGIN, "| file | folder | where it comes from | size | licence | read by |",
                      "|---|---|---|---|---|---|", *rows, MODELS_END])


def with_table(readme: str, table: str, begin: str = README_BEGIN, end: str = README_END) -> str:
    """``readme`` with the text between the table's markers (``begin`` ... ``end``) replaced by ``table``."""
    head, sep, rest = readme.partition(begin)
    _, sep2, tail = rest.partition(end)
    if not sep or not sep2:
        raise SystemExit(f"README.md has no table markers ({begin} ... {end})")
    return head + table + tail


def _on_path():
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/, where _pack.py is


def _load():
    _on_path()
    from _pack import load_pack
    return load_pack()


def pages(pack=None) -> dict[str, str]:
    """{file name: page} for every node the pack registers. A page describes the node, not the files
    this machine has: model-folder lists are read as empty while the pages are made."""
    pack = pack or _load()
    nodes = _nodes(pack)
    listed = nodes.comfy_glue.list_files
    nodes.comfy_glue.list_files = lambda name, extensions=(): []
    try:
        sources = _sources(pack)
        return {f"{nid}.md": node_page(nid, cls, nodes.NODE_DISPLAY_NAME_MAPPINGS[nid],
                                       [s for s in sources if nid in s.nodes])
                for nid, cls in nodes.NODE_CLASS_MAPPINGS.items()}
    finally:
        nodes.comfy_glue.list_files = listed


def main(argv=None) -> int:
    import argparse
    argparse.ArgumentParser(
        prog="node_docs", description="Write web/docs/<NodeId>.md, the help page of every StyleKit node, and the "
        "README's node and model tables, from the node definitions and stylekit.model_sources (all are replaced; a "
        "test checks they match).").parse_args(argv)
    out = PACK / "web" / "docs"
    out.mkdir(parents=True, exist_ok=True)
    pack = _load()
    written = pages(pack)
    from _pack import pack_module  # _load put tools/ on the path
    files = pack_module("files")
    for name, text in written.items():  # regenerated pages replace the old ones
        target = files.output_target(str(out), name, "", numbered=False, force=True)
        files.write_new(target, lambda tmp, text=text: Path(tmp).write_text(text))
    readme = PACK / "README.md"
    text = with_table(readme.read_text(), readme_table(pack))
    text = with_table(text, models_table(pack), MODELS_BEGIN, MODELS_END)
    files.write_new(files.output_target(str(PACK), "README.md", "", numbered=False, force=True),
                    lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {len(written)} node help pages to {out} and the node and model tables in {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
