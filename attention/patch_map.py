"""What StyleKit put on a model: a table of blocks -> contributions, as text and as a picture."""
from __future__ import annotations

import math

from .joint import joint_router
from .layers import model_layers
from .router import installed_patch, is_router


def _columns(layers) -> tuple:
    return ("joint",) if layers.is_dit else ("attn1", "attn2")


def _joint_rows(model, layers) -> list[dict]:
    """DiT: one row per block a StyleKit joint-attention contribution acts on (attn "joint")."""
    router = joint_router(model.model_options)
    rows = []
    for key in layers.keys:
        found = [(c.name, c.weight_for(key), c.sigma_start, c.sigma_end) for c, keys in (router.entries if router else ())
                 if key in keys]
        if found:
            rows.append(dict(key=key, attn="joint", kind="stylekit", foreign_base=False, contributions=found))
    return rows


def describe_patches(model) -> list[dict]:
    """One row per (attention layer, attn1|attn2) that carries a replace patch; on a DiT, per block that
    carries a StyleKit joint-attention contribution (attn "joint").

    Each row: key, attn, kind ("stylekit" | "foreign"), contributions [(name, effective weight,
    sigma_start, sigma_end)], and whether a foreign function sits under the StyleKit router.
    """
    layers = model_layers(model)
    if layers.is_dit:
        return _joint_rows(model, layers)
    rows = []
    for key in layers.keys:
        for attn in ("attn1", "attn2"):
            patch = installed_patch(model.model_options, attn, key)
            if patch is None:
                continue
            if is_router(patch):
                rows.append(dict(key=key, attn=attn, kind="stylekit", foreign_base=patch.base is not None,
                                 contributions=[(c.name, c.weight_for(key), c.sigma_start, c.sigma_end)
                                                for c in patch.contributions]))
            else:
                rows.append(dict(key=key, attn=attn, kind="foreign", foreign_base=False, contributions=[]))
    return rows


def _fmt_sigma(s: float) -> str:
    return "inf" if math.isinf(s) or s > 1e8 else f"{s:.3g}"


def summarize(model) -> str:
    layers = model_layers(model)
    rows = describe_patches(model)
    lines = [f"StyleKit patch map: {layers.family} layout, {len(layers.keys)} attention layers, "
             f"{len(rows)} patched"]
    for r in rows:
        name, bid, idx = r["key"]
        where = f"{name} {bid}.{idx} {r['attn']}"
        if r["kind"] == "foreign":
            lines.append(f"  {where}: foreign replace patch (not StyleKit)")
            continue
        parts = [f"{n} w={w:g} sigma[{_fmt_sigma(e)}..{_fmt_sigma(s)}]" for n, w, s, e in r["contributions"]]
        base = " over a foreign patch" if r["foreign_base"] else ""
        lines.append(f"  {where}: " + "; ".join(parts) + base)
    for name, fns in sorted(model.model_options.get("transformer_options", {}).get("patches", {}).items()):
        names = ", ".join(getattr(f, "__name__", type(f).__name__) for f in fns)
        lines.append(f"  {name} (every block): {names}")
    return "\n".join(lines)


PALETTE = [(230, 97, 1), (94, 60, 153), (27, 158, 119), (217, 95, 2), (117, 112, 179), (231, 41, 138)]


def render_patch_map(model, cell: int = 22):
    """A PIL image: one row per attention layer, columns attn1 | attn2, coloured by contribution."""
    from PIL import Image, ImageDraw

    layers = model_layers(model)
    rows = {(tuple(r["key"]), r["attn"]): r for r in describe_patches(model)}
    names = sorted({c[0] for r in rows.values() for c in r["contributions"]})
    colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    label_w, col_w = 120, 200
    columns = _columns(layers)
    height = cell * (len(layers.keys) + 2) + cell * max(1, len(names)) + 8
    img = Image.new("RGB", (label_w + len(columns) * col_w, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((4, 4), f"{layers.family} layout", fill=(0, 0, 0))
    for j, attn in enumerate(columns):
        d.text((label_w + j * col_w + 4, 4), attn, fill=(0, 0, 0))
    for i, key in enumerate(layers.keys):
        y = cell * (i + 1)
        d.text((4, y + 5), f"{key[0]} {key[1]}" if layers.is_dit else f"{key[0]} {key[1]}.{key[2]}", fill=(0, 0, 0))
        for j, attn in enumerate(columns):
            x0 = label_w + j * col_w
            d.rectangle([x0, y, x0 + col_w - 2, y + cell - 2], outline=(200, 200, 200))
            r = rows.get((key, attn))
            if r is None:
                continue
            if r["kind"] == "foreign":
                d.rectangle([x0 + 1, y + 1, x0 + col_w - 3, y + cell - 3], fill=(160, 160, 160))
                d.text((x0 + 4, y + 5), "foreign", fill=(0, 0, 0))
                continue
            n = len(r["contributions"])
            seg = (col_w - 4) // max(n, 1)
            for m, (cname, w, _, _) in enumerate(r["contributions"]):
                xs = x0 + 1 + m * seg
                d.rectangle([xs, y + 1, xs + seg - 1, y + cell - 3], fill=colour[cname])
                d.text((xs + 3, y + 5), f"{w:g}", fill=(255, 255, 255))
    y = cell * (len(layers.keys) + 1) + 8
    for m, n in enumerate(names):
        d.rectangle([4, y + m * cell, 4 + cell - 6, y + m * cell + cell - 6], fill=colour[n])
        d.text((cell + 4, y + m * cell + 3), n, fill=(0, 0, 0))
    return img
