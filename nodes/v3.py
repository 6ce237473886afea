"""The pack's nodes as ComfyUI V3 nodes (``comfy_api``'s ``io.ComfyNode``), registered by ``comfy_entrypoint``.

Each node keeps one declaration, the class in its method's module (``INPUT_TYPES``, ``RETURN_TYPES``, ...,
built from :mod:`.specs`), and one body (its ``FUNCTION``), which tiers 1-2 and the bridge call without
ComfyUI. This module reads that declaration once into a V3 ``io.Schema`` and wraps the body as ``execute``,
so ComfyUI runs every node through its V3 path while node ids, input names, order, defaults, bounds and
tooltips stay exactly what saved workflows and API prompts hold (tier 3 compares both views per node).

The API is pinned to ``comfy_api.v0_0_2``: the newest version both supported releases (0.3.64, 0.33.0)
ship. None of them marks a version with ``io`` as stable (``v0_0_1``, the stable one, has no schema API);
``v0_0_2`` re-exports ``latest``'s ``io`` in both, which is what core's own V3 nodes use.

Only ComfyUI imports this module (``comfy_api`` exists nowhere else).
"""
from __future__ import annotations

import inspect

from comfy_api.v0_0_2 import ComfyExtension, io

from . import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .checks import choice_problem
from .specs import SHOWN_WITH

# V1 option key -> V3 keyword, per widget type; any other key is refused (it would be dropped silently)
_WIDGETS = {
    "INT": (io.Int, {"default", "min", "max", "step", "tooltip"}),
    "FLOAT": (io.Float, {"default", "min", "max", "step", "tooltip"}),
    "STRING": (io.String, {"default", "multiline", "tooltip"}),
    "BOOLEAN": (io.Boolean, {"default", "tooltip"}),
}
_SOCKETS = {"MODEL": io.Model, "CLIP": io.Clip, "VAE": io.Vae, "CLIP_VISION": io.ClipVision, "IMAGE": io.Image,
            "MASK": io.Mask, "LATENT": io.Latent, "CONDITIONING": io.Conditioning, "SIGMAS": io.Sigmas}


def _socket(io_type: str):
    """The io type of a link-only input or output: ComfyUI's own where it has one, else the pack's custom type."""
    return _SOCKETS.get(io_type) or io.Custom(io_type)


def _refuse_unknown(node_id: str, name: str, options: dict, allowed: set) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"{node_id}.{name}: option(s) {sorted(unknown)} have no V3 translation here; add them to "
                        f"nodes/v3.py")


def v3_input(node_id: str, name: str, declaration: tuple, optional: bool):
    """One V1 input declaration ``(TYPE or choices, {options})`` as the equivalent V3 input."""
    kind, options = declaration[0], dict(declaration[1]) if len(declaration) > 1 else {}
    if isinstance(kind, list):  # a combo: its visible choices (a Choices' hidden aliases stay with its node's check)
        _refuse_unknown(node_id, name, options, {"default", "tooltip"})
        return io.Combo.Input(name, options=list(kind), optional=optional, **options)
    if kind in _WIDGETS:
        widget, allowed = _WIDGETS[kind]
        shown_with = options.pop(SHOWN_WITH, None)
        _refuse_unknown(node_id, name, options, allowed)
        made = widget.Input(name, optional=optional, **options)
        if shown_with:  # for web/js/shown_with.js; 0.3.64's widget inputs take no extra_dict argument, both keep one
            made.extra_dict[SHOWN_WITH] = shown_with
        return made
    _refuse_unknown(node_id, name, options, {"tooltip"})
    return _socket(kind).Input(name, optional=optional, **options)


def schema_of(node_id: str, cls) -> io.Schema:
    """The V3 schema of a node class's V1 declaration: same id, inputs in the same order, same outputs."""
    declared = cls.INPUT_TYPES()
    if set(declared) - {"required", "optional"}:
        raise TypeError(f"{node_id}: input sections {sorted(set(declared) - {'required', 'optional'})} have no "
                        f"V3 translation here")
    inputs = [v3_input(node_id, name, decl, section == "optional")
              for section in ("required", "optional") for name, decl in declared.get(section, {}).items()]
    names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    tips = getattr(cls, "OUTPUT_TOOLTIPS", (None,) * len(cls.RETURN_TYPES))
    outputs = [_socket(t).Output(display_name=n, tooltip=tip) for t, n, tip in zip(cls.RETURN_TYPES, names, tips)]
    return io.Schema(node_id=node_id, display_name=NODE_DISPLAY_NAME_MAPPINGS[node_id], category=cls.CATEGORY,
                     description=cls.DESCRIPTION, inputs=inputs, outputs=outputs,
                     is_output_node=bool(getattr(cls, "OUTPUT_NODE", False)))


def node_output(result) -> io.NodeOutput:
    """A node body's return value (a tuple, or ``{"ui": ..., "result": ...}``) as V3's NodeOutput."""
    if isinstance(result, dict):
        return io.NodeOutput(*result.get("result", ()), ui=result.get("ui"))
    return io.NodeOutput(*result)


def combos_of(declared: dict) -> dict:
    """name -> choices of every combo in an ``INPUT_TYPES()`` result."""
    return {name: decl[0] for section in declared.values() for name, decl in section.items() if isinstance(decl[0], list)}


def v3_node(node_id: str, cls) -> type:
    """An ``io.ComfyNode`` for ``cls``: its schema, its body as ``execute``, and ``validate_inputs``: every combo's
    choice (0.3.64 does not check a V3 combo itself; with this, both releases refuse a stale or mistyped choice
    at validation, as they did the V1 lists) and then the class's own ``VALIDATE_INPUTS``. ComfyUI leaves
    exactly the inputs ``validate_inputs`` names to it, so it names the combos and the class's checked fields."""
    schema_of(node_id, cls)  # a declaration V3 cannot express fails here, at registration

    def define_schema(_):  # read afresh on every call, as V1's INPUT_TYPES: file choices follow the folders
        return schema_of(node_id, cls)

    def execute(_, **inputs):
        node = cls()
        return node_output(getattr(node, cls.FUNCTION)(**inputs))

    body = {"__doc__": cls.__doc__, "__module__": __name__, "define_schema": classmethod(define_schema),
            "execute": classmethod(execute), "BODY": cls}
    check = getattr(cls, "VALIDATE_INPUTS", None)
    checked = list(inspect.signature(check).parameters) if check is not None else []
    combos = list(combos_of(cls.INPUT_TYPES()))
    names = checked + [n for n in combos if n not in checked]
    if names:
        def validate_inputs(_, **values):
            choices = combos_of(cls.INPUT_TYPES())  # read afresh, once: file choices follow the folders
            for name in combos:
                problem = None if values.get(name) is None else choice_problem(name, choices[name], values[name])
                if problem:
                    return problem
            return check(**{k: values.get(k) for k in checked}) if check is not None else True
        validate_inputs.__signature__ = inspect.Signature(
            [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for n in names])
        body["validate_inputs"] = classmethod(validate_inputs)
    return type(cls.__name__, (io.ComfyNode,), body)


class StyleKitExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [v3_node(node_id, cls) for node_id, cls in NODE_CLASS_MAPPINGS.items()]


async def comfy_entrypoint() -> StyleKitExtension:
    return StyleKitExtension()
