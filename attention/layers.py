"""Which attention layers a model has, under ComfyUI's block keys, derived from the model itself.

UNets (SD1.5 / SDXL): keys are ``(block_name, block_id, depth_index)``: ``block_name`` in
input|middle|output, ``block_id`` the index in ComfyUI's ``input_blocks`` / ``output_blocks`` (middle
is 0) and ``depth_index`` the transformer block inside that SpatialTransformer (ComfyUI's
``block_index``).

DiTs (Flux): keys are ``("double" | "single", block_index, 0)``, ComfyUI's ``block_type`` and
``block_index``; one joint attention per block.

Which family a model is, and everything that differs per family, is in :mod:`.families` (one entry per
family). This module reads ComfyUI's networks (``UNetModel``, the DiT entries' readers) by duck typing
and imports no host. Another host registers readers for its own networks (:func:`register_unet_reader`,
:func:`register_dit_reader`): the diffusers bridge does so for ``UNet2DConditionModel`` and
``FluxTransformer2DModel`` in :mod:`stylekit.bridge.layers`, mapping them onto ComfyUI's keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError, UnsupportedModelError  # noqa: F401  (re-exported: the methods raise it from here)
from .families import (  # noqa: F401  (LayerInfo, has_joint_hooks: re-exported)
    DIT_GROUPS,
    FAMILIES,
    UNET_GROUPS,
    Family,
    LayerInfo,
    comfy_dit_family,
    has_joint_hooks,
    supporting,
    title,
    unet_family,
)


@dataclass(frozen=True)
class ModelLayers:
    family: str                    # a registry name ("sd15", "sdxl", "flux", ...) or "unknown"
    layers: tuple[LayerInfo, ...]

    @property
    def spec(self) -> Family | None:
        """The family's registry entry (None for an unknown UNet layout)."""
        return FAMILIES.get(self.family)

    @property
    def is_dit(self) -> bool:
        return bool(self.layers) and self.layers[0].key[0] in DIT_GROUPS

    @property
    def groups(self) -> tuple:
        return DIT_GROUPS if self.is_dit else UNET_GROUPS

    @property
    def keys(self) -> list[tuple]:
        return [l.key for l in self.layers]

    @property
    def title(self) -> str:
        return title(self.family)

    def by_key(self, key) -> LayerInfo:
        for l in self.layers:
            if l.key == tuple(key):
                return l
        raise KeyError(key)

    def blocks(self) -> list[tuple]:
        seen = []
        for l in self.layers:
            if l.key[:2] not in seen:
                seen.append(l.key[:2])
        return seen

    def select(self, spec) -> list[tuple]:
        """Keys of a named set or of explicit blocks.

        ``spec`` is a name (all, a group: input, middle, output on a UNet, double, single on a DiT,
        or a set the family's entry names, e.g. a method's default) or an iterable of 2-part / 3-part keys.
        """
        if isinstance(spec, str):
            if spec == "all" or spec in self.groups:
                return [k for k in self.keys if spec == "all" or k[0] == spec]
            sets = self.spec.layer_sets if self.spec else {}
            if spec not in sets:
                raise UnsupportedModelError(
                    f"layer set {spec!r} is not defined for a {self.family} model; "
                    f"available: all, {', '.join(self.groups)}, {', '.join(sorted(sets)) or '(none)'}")
            spec = sets[spec]
        if callable(spec):
            return list(spec(self))
        wanted = [tuple(s) for s in spec]
        out = [k for k in self.keys if k in wanted or k[:2] in wanted]
        missing = [w for w in wanted if not any(k == w or k[:2] == w for k in self.keys)]
        if missing:
            raise UnsupportedModelError(f"blocks {missing} carry no attention in this {self.family} model; "
                                        f"blocks with attention: {self.blocks()}")
        return out

    def supports(self, method: str) -> bool:
        return self.spec is not None and method in self.spec.methods

    def require(self, method: str, label: str = "this method") -> None:
        """Refuse a model whose family ``method`` does not run on, naming the families it does run on."""
        if not self.supports(method):
            where = f"{len(self.layers)} {'DiT' if self.is_dit else 'UNet'} attention blocks"
            raise UnsupportedModelError(
                f"{label} supports {' / '.join(f.title for f in supporting(method))} models; the model given is "
                f"{self.title} ({where})")


def _attn_info(key, tblock) -> LayerInfo:
    a1, a2 = tblock.attn1, tblock.attn2
    heads = getattr(a1, "heads")
    channels = a1.to_q.out_features
    context_dim = a2.to_k.in_features if a2 is not None else channels
    return LayerInfo(tuple(key), channels, heads, context_dim)


def _comfy_blocks(dm):
    """(key, transformer block) pairs of a ComfyUI UNetModel, in ComfyUI's block numbering."""
    groups = [("input", list(dm.input_blocks)), ("middle", [dm.middle_block]), ("output", list(dm.output_blocks))]
    for name, blocks in groups:
        for bid, block in enumerate(blocks):
            for module in block:
                for i, tb in enumerate(getattr(module, "transformer_blocks", None) or []):
                    yield (name, bid, i), tb


def diffusion_model_of(model):
    """The network inside a ModelPatcher or BaseModel (either host's), or a bare network."""
    for path in ("model.diffusion_model", "diffusion_model"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return model


# UNet layouts: (test on the diffusion model, reader -> (key, transformer block) pairs under ComfyUI's keys).
UNET_READERS = [(lambda dm: hasattr(dm, "input_blocks") and hasattr(dm, "output_blocks"), _comfy_blocks)]


# Other hosts' DiT networks: (family name, test on the network, reader -> [LayerInfo]); ComfyUI's are the
# registry entries' own ``detect`` / ``read``.
DIT_READERS: list = []


def register_dit_reader(family: str, test, read) -> None:
    """Another host's DiT network of registry family ``family``: ``test(dm)`` recognises it, ``read(dm)`` lists its layers."""
    if family not in FAMILIES:
        raise ValueError(f"{family!r} is not a registry family ({', '.join(FAMILIES)})")
    if not any(t is test for _, t, _ in DIT_READERS):
        DIT_READERS.append((family, test, read))


def register_unet_reader(test, read) -> None:
    """Another host's UNet: ``test(dm)`` recognises it, ``read(dm)`` yields (ComfyUI key, transformer block)."""
    if not any(t is test for t, _ in UNET_READERS):
        UNET_READERS.append((test, read))


def _dit_layers(dm):
    entry = comfy_dit_family(dm)
    if entry is not None:
        return entry.name, entry.read(dm)
    for family, test, read in DIT_READERS:
        if test(dm):
            return family, read(dm)
    return None


def _transformer_blocks(model) -> list[tuple]:
    dm = diffusion_model_of(model)
    for test, read in UNET_READERS:
        if test(dm):
            return list(read(dm))
    raise UnsupportedModelError(
        f"StyleKit patches {' / '.join(f.title for f in FAMILIES.values())} models; got {type(dm).__name__}, which is "
        "none of them (neither ComfyUI's or diffusers' UNet blocks nor a DiT family's blocks)")


def model_layers(model) -> ModelLayers:
    dit = _dit_layers(diffusion_model_of(model))
    if dit is not None:
        return ModelLayers(dit[0], tuple(dit[1]))
    blocks = _transformer_blocks(model)
    if not blocks:
        raise UnsupportedModelError(f"{type(diffusion_model_of(model)).__name__} has no transformer attention "
                                    "blocks to patch")
    layers = [_attn_info(key, tb) for key, tb in blocks]
    return ModelLayers(unet_family({l.key[:2] for l in layers}), tuple(layers))


def attention_modules(model, attn: str = "attn1") -> dict:
    """3-part key -> the model's own attention module (with to_q / to_k / to_v), for either host.

    Read-only use: a patch may call its projections on reference features; nothing is assigned.
    """
    return {key: getattr(tb, attn) for key, tb in _transformer_blocks(model) if getattr(tb, attn, None) is not None}


MAX_BLOCK_WEIGHT = 10.0  # a block multiplier beyond this turns outputs non-finite, not stronger


def parse_block_weights(text: str, layers: "ModelLayers | None" = None) -> dict:
    """``"output 5=0.5, input 1.0=0"`` -> {("output", 5): 0.5, ("input", 1, 0): 0.0} (2- or 3-part keys);
    on a DiT ``"double 3=0.5, single 10=0"``.

    With ``layers`` (the model's), a block the model lacks is refused with the valid names."""
    out = {}
    for item in filter(None, (p.strip() for p in (text or "").replace(";", ",").split(","))):
        try:
            where, value = item.split("=")
            name, ids = where.split()
            parts = tuple(int(x) for x in ids.split("."))
            if name not in UNET_GROUPS + DIT_GROUPS or len(parts) not in (1, 2):
                raise ValueError
            weight = float(value)
        except ValueError:
            raise InputError(f"block_weights: cannot read {item!r}; write e.g. 'output 5=0.5' or 'input 7.0=0' "
                             "(on Flux: 'double 3=0.5' or 'single 10=0')") from None
        if not math.isfinite(weight):
            raise InputError(f"block_weights: {item!r} is not a finite number")
        if abs(weight) > MAX_BLOCK_WEIGHT:
            raise InputError(f"block_weights: {item!r} is beyond +-{MAX_BLOCK_WEIGHT:g}, where attention outputs "
                             "overflow instead of styling; the node's own weight goes to 3 at most")
        out[(name, *parts)] = weight
    if layers is not None:
        blocks = {k[:2] for k in layers.keys}
        unknown = [k for k in out if (k[:2] not in blocks) or (len(k) == 3 and k not in layers.keys)]
        if unknown:
            order = UNET_GROUPS + DIT_GROUPS
            valid = ", ".join(f"{n} {i}" for n, i in sorted(blocks, key=lambda b: (order.index(b[0]), b[1])))
            named = ", ".join(f"{k[0]} {'.'.join(map(str, k[1:]))}" for k in unknown)
            raise InputError(f"block_weights names {named}, which this {layers.family} model does not have; "
                             f"its attention blocks are: {valid}")
    return out
