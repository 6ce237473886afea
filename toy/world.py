"""The miniature world: seeded procedural 64 px images whose content and style are known exactly.

Every image holds one foreground shape (its **content**: which shape, where, how large) filled with a
colour and a texture, on a background of another colour with a soft shading (its **style**: palette and
texture). A :class:`Scene` is the truth for one image; :func:`render` draws a batch of them and
:func:`caption` names one from the small vocabulary ``"a red striped circle on a blue background"``.

Textures are coarse on purpose (periods of 8-12 px): the miniature VAE downsamples by 4, so a texture
finer than that would not survive the latent.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLOURS = {"red": (215, 45, 40), "green": (45, 165, 65), "blue": (45, 85, 215),
           "yellow": (235, 205, 45), "purple": (145, 60, 185), "white": (235, 235, 230)}
TEXTURES = ("plain", "striped", "dotted", "checked")
# a concept the captions never name (CatVersion's miniature): drawn by render(), captioned by its base class
HIDDEN_SHAPES = {"heart": "circle"}
PROBE_SHAPES = (*SHAPES, *HIDDEN_SHAPES)  # the probes tell the concept from its base class
VOCABULARY = ("a", "on", "background", "in", *SHAPES, *COLOURS, *TEXTURES)
_RGB = np.array(list(COLOURS.values()), dtype=np.float32) / 255.0


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    texture: str
    background: str
    x: float = 0.5           # centre, as a fraction of the image
    y: float = 0.5
    size: float = 0.3        # outer radius, as a fraction of the image
    phase: float = 0.0       # texture offset in pixels
    shade: float = 0.0       # direction of the background's shading, radians

    def content(self) -> tuple:
        return self.shape, self.x, self.y, self.size

    def style(self) -> tuple:
        return self.colour, self.texture, self.background


NAMED = ("colour", "texture", "shape", "background")  # what a caption can name, in its word order


def caption(scene: Scene, omit=()) -> str:
    """The caption naming the scene, ``"a red striped circle on a blue background"``; the fields in
    ``omit`` (of :data:`NAMED`) are left out, as real captions leave out most of what an image shows:
    ``omit=("texture",)`` gives ``"a red circle on a blue background"``."""
    unknown = set(omit) - set(NAMED)
    if unknown:
        raise ValueError(f"a caption names {NAMED}; cannot omit {sorted(unknown)}")
    words = ["a"] + [HIDDEN_SHAPES.get(scene.shape, scene.shape) if f == "shape" else getattr(scene, f)
                     for f in NAMED[:3] if f not in omit]
    if "background" not in omit:
        words += ["on", "a", scene.background, "background"]
    return " ".join(words)


def random_scenes(n: int, seed: int, shapes=SHAPES, **fixed) -> list[Scene]:
    """``n`` scenes drawn uniformly (background never the foreground's colour); ``fixed`` pins fields."""
    rng = np.random.default_rng(seed)
    colours = list(COLOURS)
    out = []
    for _ in range(n):
        fg = fixed.get("colour", colours[rng.integers(len(colours))])
        bg = fixed.get("background") or colours[rng.integers(len(colours))]
        while bg == fg:
            bg = colours[rng.integers(len(colours))]
        size = float(rng.uniform(0.22, 0.34))
        out.append(Scene(
            shape=fixed.get("shape", shapes[rng.integers(len(shapes))]), colour=fg,
            texture=fixed.get("texture", TEXTURES[rng.integers(len(TEXTURES))]), background=bg,
            x=fixed.get("x", float(rng.uniform(size, 1 - size))), y=fixed.get("y", float(rng.uniform(size, 1 - size))),
            size=fixed.get("size", size), phase=float(rng.uniform(0, 12)), shade=float(rng.uniform(0, 2 * np.pi))))
    return out



def with_hidden(scenes: list[Scene], rate: float, seed: int) -> list[Scene]:
    """``scenes`` in which each base-class shape (a circle) is, at ``rate``, the concept its captions never
    name (a heart, still captioned "circle"): what the UNet sees of CatVersion's concept."""
    base = {b: concept for concept, b in HIDDEN_SHAPES.items()}
    draw = np.random.default_rng(seed).random(len(scenes))
    return [replace(s, shape=base[s.shape]) if s.shape in base and u < rate else s for s, u in zip(scenes, draw)]

def _masks(scenes: list[Scene], grid: int) -> np.ndarray:
    """(N, grid, grid) float coverage of each scene's shape, sampled at pixel centres."""
    c = (np.arange(grid, dtype=np.float32) + 0.5) / grid
    gx, gy = c[None, None, :], c[None, :, None]
    x = np.array([s.x for s in scenes], np.float32)[:, None, None]
    y = np.array([s.y for s in scenes], np.float32)[:, None, None]
    r = np.array([s.size for s in scenes], np.float32)[:, None, None]
    dx, dy = (gx - x) / r, (gy - y) / r                   # unit radius, y down
    rad, ang = np.hypot(dx, dy), np.arctan2(-dy, dx)
    kinds = {
        "circle": rad <= 1.0,
        "square": np.maximum(abs(dx), abs(dy)) <= 0.82,
        "triangle": (dy <= 0.7) & (abs(dx) <= 0.95 * (dy + 1.0) / 1.7),  # apex up
        "star": rad <= 0.5 + 0.5 * np.abs(np.cos(2.5 * (ang - np.pi / 2))) ** 2.2,
        "ring": (rad <= 1.0) & (rad >= 0.55),
        "cross": ((abs(dx) <= 0.32) & (abs(dy) <= 1.0)) | ((abs(dy) <= 0.32) & (abs(dx) <= 1.0)),
        "heart": ((dx - 0.42) ** 2 + (dy + 0.3) ** 2 <= 0.27) | ((dx + 0.42) ** 2 + (dy + 0.3) ** 2 <= 0.27)
                 | ((dy >= -0.3) & (dy <= 1.0 - 1.05 * abs(dx)) & (abs(dx) <= 0.95)),
    }
    names = np.array([s.shape for s in scenes])
    unknown = set(names) - set(kinds)
    if unknown:
        raise ValueError(f"unknown shape(s) {sorted(unknown)}; the world draws {sorted(kinds)}")
    out = np.zeros((len(scenes), grid, grid), np.float32)
    for name, m in kinds.items():
        pick = names == name
        if pick.any():
            out[pick] = m[pick]
    return out


def _patterns(scenes: list[Scene]) -> np.ndarray:
    """(N, SIZE, SIZE) texture pattern in [0, 1] (1 = the darker ink) for each scene's texture."""
    c = np.arange(SIZE, dtype=np.float32) + 0.5
    gx, gy = c[None, None, :], c[None, :, None]
    ph = np.array([s.phase for s in scenes], np.float32)[:, None, None]
    u, v = gx + ph, gy + ph
    stripes = ((u + v) % 12.0) < 5.0
    dots = np.hypot((u % 10.0) - 5.0, (v % 10.0) - 5.0) <= 2.6
    checks = ((u // 8.0) + (v // 8.0)) % 2 == 0
    table = np.stack([np.zeros_like(stripes), stripes, dots, checks]).astype(np.float32)  # TEXTURES' order
    which = np.array([TEXTURES.index(s.texture) for s in scenes])
    return table[which, np.arange(len(scenes))]


def render(scenes: list[Scene]) -> np.ndarray:
    """(N, 64, 64, 3) float32 images in [0, 1] (ComfyUI's IMAGE layout), anti-aliased 2x."""
    n = len(scenes)
    mask = _masks(scenes, SIZE * 2).reshape(n, SIZE, 2, SIZE, 2).mean((2, 4))[..., None]
    idx = {name: i for i, name in enumerate(COLOURS)}
    fg = _RGB[[idx[s.colour] for s in scenes]][:, None, None, :]
    bg = _RGB[[idx[s.background] for s in scenes]][:, None, None, :]
    c = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE - 0.5
    d = np.array([s.shade for s in scenes], np.float32)[:, None, None]
    shading = 0.88 + 0.24 * (np.cos(d) * c[None, None, :] + np.sin(d) * c[None, :, None])  # 0.76..1.0
    ink = _patterns(scenes)[..., None]
    front = fg * (1.0 - 0.62 * ink)
    back = bg * shading[..., None]
    return np.clip(mask * front + (1.0 - mask) * back, 0.0, 1.0).astype(np.float32)


def labels(scenes: list[Scene]) -> dict[str, np.ndarray]:
    """Class indices of what the probes read: shape (the hidden concept too), colour (foreground), texture,
    background."""
    colours = list(COLOURS)
    return {"shape": np.array([PROBE_SHAPES.index(s.shape) for s in scenes]),
            "colour": np.array([colours.index(s.colour) for s in scenes]),
            "texture": np.array([TEXTURES.index(s.texture) for s in scenes]),
            "background": np.array([colours.index(s.background) for s in scenes])}


CLASSES = {"shape": PROBE_SHAPES, "colour": tuple(COLOURS), "texture": TEXTURES, "background": tuple(COLOURS)}
