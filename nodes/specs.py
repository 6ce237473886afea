"""Input declarations the nodes share: one definition for each widget that recurs, in ComfyUI's V1 form
(``(TYPE, {options})``), so every node spells a recurring input the same way."""
from __future__ import annotations

IMAGE_TOOLTIP = " RGBA images are used without their alpha channel, grayscale ones as RGB."
MASK_TOOLTIP = " Values 0..1; one mask for all images or one per image."
PATCHED_MODEL = "The patched model (a clone; the input model is untouched)."
LOSS_CURVE = "Loss per step (grey) and its running mean (blue)."
SEED_MAX = 2 ** 31 - 1


class Choices(list):
    """A combo's visible choices, with hidden ``aliases`` (an old name -> its current one): a saved workflow or
    API prompt holding an old name still validates (the node's ``VALIDATE_INPUTS`` names the input, so
    ComfyUI leaves the check to :meth:`accepts`) and runs as the current name, which the node boundary
    substitutes; no user sees the old name as a choice."""

    def __init__(self, choices, aliases: dict | None = None):
        super().__init__(choices)
        self.aliases = dict(aliases or {})

    def accepts(self, value) -> bool:
        return value in self or value in self.aliases

    def resolve(self, value):
        return self.aliases.get(value, value)


SHOWN_WITH = "stylekit_shown_with"  # an input option the pack's web extension (web/js/shown_with.js) reads


def shown_with(widget: str, value: str, declaration: tuple) -> tuple:
    """A widget input (INT, FLOAT, STRING or BOOLEAN; nodes/v3.py refuses the option elsewhere) that acts only
    while the combo ``widget`` holds ``value`` (a preset's ``custom``): its tooltip says so, and the frontend
    draws it only then (``web/js/shown_with.js``). Its value is still saved and sent, so saved workflows and
    API prompts keep their widget order."""
    kind, options = declaration
    return kind, {**options, "tooltip": f"{widget} {value} only: {options['tooltip']}", SHOWN_WITH: {widget: value}}


def shown_with_rules(declarations: dict) -> dict:
    """``{input: {widget: value}}`` for the inputs among ``declarations`` (name -> declaration) made by
    :func:`shown_with`."""
    return {name: decl[1][SHOWN_WITH] for name, decl in declarations.items()
            if len(decl) > 1 and SHOWN_WITH in (decl[1] or {})}


def hidden_inputs(declarations: dict, values: dict, linked=frozenset()) -> list[str]:
    """The inputs among ``declarations`` that web/js/shown_with.js hides while the node's widgets hold
    ``values`` (name -> value) and the inputs in ``linked`` are fed by links: those whose shown_with rule
    does not hold. A linked input stays shown; a rule on a linked widget holds (its value comes at run time)."""
    return [name for name, when in shown_with_rules(declarations).items() if name not in linked
            and any(k not in linked and values.get(k) != v for k, v in when.items())]


def image(tooltip: str, at_most: int | None = None, max_side: int | None = None) -> tuple:
    """An IMAGE input; ``at_most``: the batch the node takes, ``max_side``: the longest side it takes (its
    checks, ``checks.at_most`` and ``checks.image_sides``, use the same numbers), stated in the tooltip."""
    limit = f" At most {at_most} images." if at_most else ""
    if max_side:
        limit += f" Sides of at most {max_side} px (scale larger images down first)."
    return ("IMAGE", {"tooltip": tooltip + limit + IMAGE_TOOLTIP})


def mask(tooltip: str) -> tuple:
    return ("MASK", {"tooltip": tooltip + MASK_TOOLTIP})


def region_mask(tooltip: str) -> dict:
    """The optional ``mask`` and ``invert_mask`` of a node whose effect a MASK can limit."""
    return {"mask": mask(tooltip),
            "invert_mask": ("BOOLEAN", {"default": False, "tooltip": "Use 1 - mask: style everything but the white region."})}


def percent_window(what: str) -> dict:
    """``start_percent`` / ``end_percent``: the fraction of sampling during which ``what`` acts."""
    return {"start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": f"{what} starts at this fraction of sampling."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": f"{what} ends at this fraction of sampling."})}


def block_weights(tooltip: str) -> tuple:
    return ("STRING", {"default": "", "tooltip": tooltip})


def seed(tooltip: str, maximum: int = SEED_MAX) -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": maximum, "tooltip": tooltip})


def output_name(folder: str, default: str) -> tuple:
    """The ``filename`` a node writes under ComfyUI's ``models/<folder>``."""
    return ("STRING", {"default": default, "tooltip": f"Saved as models/{folder}/<filename>.safetensors "
                                                      "(numbered, never overwritten)."})


def optimiser_steps(default: int) -> tuple:
    """A trainer's step count."""
    return ("INT", {"default": default, "min": 1, "max": 1_000_000, "tooltip": "Optimiser steps."})
