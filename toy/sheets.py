"""Contact sheets: columns of IMAGE batches side by side, one row per sample, a title over each column."""
from __future__ import annotations

import torch


def contact_sheet(columns: list[tuple[str, torch.Tensor]], scale: int = 2, title: str = "", labels=None,
                  label_width: int = 250):
    """A PIL image: each column an IMAGE batch (B, H, W, 3 in [0, 1]) of the same B, H and W; ``labels``
    (one string per row) are written to the right of the last column."""
    from PIL import Image, ImageDraw, ImageFont
    rows, h, w = columns[0][1].shape[:3]
    cell_w, cell_h, pad, head = w * scale, h * scale, 4, 14 + (14 if title else 0)
    text_w = label_width if labels else 0
    sheet = Image.new("RGB", (len(columns) * (cell_w + pad) + pad + text_w, head + rows * (cell_h + pad) + pad), (24, 24, 24))
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    if title:
        draw.text((pad, 2), title, fill=(230, 230, 230), font=font)
    for c, (name, images) in enumerate(columns):
        x = pad + c * (cell_w + pad)
        draw.text((x, head - 13), name, fill=(200, 200, 200), font=font)
        arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        for r in range(rows):
            tile = Image.fromarray(arr[r]).resize((cell_w, cell_h), Image.NEAREST)
            sheet.paste(tile, (x, head + pad + r * (cell_h + pad)))
    for r, text in enumerate(labels or []):
        x = pad + len(columns) * (cell_w + pad)
        draw.text((x, head + pad + r * (cell_h + pad) + cell_h // 2 - 6), text, fill=(220, 220, 220), font=font)
    return sheet
