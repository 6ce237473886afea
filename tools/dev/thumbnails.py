"""Draw the thumbnail ComfyUI's template browser shows beside each example workflow:
example_workflows/<name>.jpg, a small picture of the graph (its nodes where the workflow places them,
coloured by pack, and its links).

    python tools/dev/thumbnails.py        (needs Pillow, which ComfyUI and the dev venv have)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[2]
SIZE = (320, 200)
COLOURS = {"StyleKit": (242, 165, 65), "core": (108, 196, 224)}


def draw(workflow: dict):
    from PIL import Image, ImageDraw
    nodes = workflow["nodes"]
    x0 = min(n["pos"][0] for n in nodes)
    y0 = min(n["pos"][1] for n in nodes)
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes)
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes)
    pad = 10
    scale = min((SIZE[0] - 2 * pad) / (x1 - x0), (SIZE[1] - 2 * pad) / (y1 - y0))

    def box(n):
        x, y = (n["pos"][0] - x0) * scale + pad, (n["pos"][1] - y0) * scale + pad
        return x, y, x + n["size"][0] * scale, y + n["size"][1] * scale

    img = Image.new("RGB", SIZE, (31, 36, 48))
    d = ImageDraw.Draw(img)
    by_id = {n["id"]: n for n in nodes}
    for _, a, _, b, _, _ in workflow["links"]:
        ax0, ay0, ax1, ay1 = box(by_id[a])
        bx0, by0, bx1, by1 = box(by_id[b])
        d.line([(ax1, (ay0 + ay1) / 2), (bx0, (by0 + by1) / 2)], fill=(150, 150, 160), width=1)
    for n in nodes:
        colour = COLOURS["StyleKit" if n["type"].startswith("StyleKit") else "core"]
        x, y, xe, ye = box(n)
        d.rectangle([x, y, xe, ye], fill=(52, 58, 72), outline=colour, width=2)
        d.rectangle([x, y, xe, y + 6], fill=colour)
        label = n["type"].removeprefix("StyleKit")
        d.text((x + 3, y + 8), label[: max(1, int((xe - x) / 6))], fill=(232, 232, 232))
    return img


def main(argv=None) -> int:
    import argparse
    argparse.ArgumentParser(
        prog="thumbnails", description="Draw example_workflows/<name>.jpg, the template browser's picture of each "
        "example workflow's graph (the pictures are replaced).").parse_args(argv)
    folder = PACK / "example_workflows"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/, where _pack.py is
    from _pack import pack_module
    files = pack_module("files")
    for path in sorted(folder.glob("*.json")):
        image = draw(json.loads(path.read_text()))
        target = files.output_target(str(folder), path.with_suffix(".jpg").name, "", numbered=False, force=True)
        files.write_new(target, lambda tmp, image=image: image.save(tmp, format="JPEG", quality=70, optimize=True))
    print(f"drew {len(list(folder.glob('*.json')))} thumbnails in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
