"""Draw the thumbnail ComfyUI's template browser shows beside each example workflow:
example_workflows/<name>.jpg. A workflow whose method the miniature world shows gets what it makes:
cells of that method's ``make demo`` contact sheet (e.g. content | style | result, one row, with the
sheet's column titles); the others (Flux: there is no miniature Flux) a small picture of the graph (its
nodes where the workflow places them, coloured by pack, and its links).

    make demo && python tools/dev/thumbnails.py [--sheets out]     (needs Pillow)
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


# workflow -> (make demo's sheet, its columns to show); the sheets' layout is toy/sheets.contact_sheet's
RESULTS = {
    "styleid_reproduction": ("styleid", (0, 1, 2)), "magicstyle_portrait": ("magicstyle", (0, 1, 2)),
    "deadiff_style_transfer": ("deadiff", (0, 1, 3)), "deadiff_style_and_content": ("deadiff", (0, 1, 3)),
    "stylestudio_adain_sd15": ("stylestudio", (0, 1, 4)), "stylestudio_sdxl": ("stylestudio", (0, 1, 4)),
    "stylestudio_negative_style_image": ("stylestudio", (0, 6, 7)),
    "catversion_generate": ("catversion", (0, 1, 2)), "catversion_train": ("catversion", (0, 2)),
    "catversion_score": ("catversion", (0, 2)), "stylerdalle_stylize": ("stylerdalle", (0, 2)),
    "stylerdalle_train_style": ("stylerdalle", (0, 1, 2)),
}
PICTURES = {"patch_map": "router_patch_map.png"}  # workflow -> a picture make demo draws whole (shrunk to 360 wide)
CELL, PAD, HEAD = 128, 4, 28  # a sheet's cell (64 px x 2), gap, and title + column-title height


def from_sheet(sheet, columns):
    """One row of a contact sheet: the chosen columns' titles and first cells, side by side."""
    from PIL import Image
    out = Image.new("RGB", (len(columns) * (CELL + PAD) + PAD, HEAD - 14 + PAD + CELL + PAD), (24, 24, 24))
    for i, c in enumerate(columns):
        x = PAD + c * (CELL + PAD)
        out.paste(sheet.crop((x, 14, x + CELL, HEAD + PAD + CELL)), (PAD + i * (CELL + PAD), 0))
    return out


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(
        prog="thumbnails", description="Draw example_workflows/<name>.jpg, the template browser's picture of each "
        "example workflow (the pictures are replaced).")
    ap.add_argument("--sheets", type=Path, default=PACK / "out", help="make demo's output folder (its *_sheet.png)")
    a = ap.parse_args(argv)
    folder = PACK / "example_workflows"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/, where _pack.py is
    from _pack import pack_module
    files = pack_module("files")
    from PIL import Image
    for path in sorted(folder.glob("*.json")):
        sheet, columns = RESULTS.get(path.stem, (None, None))
        made = a.sheets / (f"{sheet}_sheet.png" if sheet else PICTURES.get(path.stem, ""))
        if (sheet or path.stem in PICTURES) and not made.is_file():
            raise SystemExit(f"error: {made} is missing; run make demo first (or give --sheets)")
        if sheet:
            image = from_sheet(Image.open(made).convert("RGB"), columns)
        elif path.stem in PICTURES:
            image = Image.open(made).convert("RGB")
            image = image.resize((360, round(image.height * 360 / image.width)), Image.LANCZOS)
        else:
            image = draw(json.loads(path.read_text()))
        target = files.output_target(str(folder), path.with_suffix(".jpg").name, "", numbered=False, force=True)
        files.write_new(target, lambda tmp, image=image: image.save(tmp, format="JPEG", quality=70, optimize=True))
    print(f"drew {len(list(folder.glob('*.json')))} thumbnails in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
