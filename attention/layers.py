"""Which attention layers a model has, under ComfyUI's block keys, derived from the model itself.

UNets (SD1.5 / SDXL): keys are ``(block_name, block_id, depth_index)``: ``block_name`` in
input|middle|output, ``block_id`` the index in ComfyUI's ``input_blocks`` / ``output_blocks`` (middle
is 0) and ``depth_index`` the transformer block inside that SpatialTransformer (ComfyUI's
``block_index``).

DiTs (Flux): keys are ``("double" | "single", block_index, 0)``, ComfyUI's ``block_type`` and
``block_index``; one joint attention per block. A further DiT family is one more entry in ``DIT_FAMILIES``.

This module reads ComfyUI's networks (``UNetModel``, ``Flux``) by duck typing and imports no host.
Another host registers readers for its own networks (:func:`register_unet_reader`,
:func:`register_dit_reader`): the diffusers bridge does so for ``UNet2DConditionModel`` and
``FluxTransformer2DModel`` in :mod:`stylekit.bridge.layers`, mapping them onto ComfyUI's keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError, UnsupportedModelError  # noqa: F401  (re-exported: the methods raise it from here)

SD15_LAYOUT = {("input", i) for i in (1, 2, 4, 5, 7, 8)} | {("middle", 0)} | {("output", i) for i in range(3, 12)}
SDXL_LAYOUT = {("input", i) for i in (4, 5, 7, 8)} | {("middle", 0)} | {("output", i) for i in range(0, 6)}




@dataclass(frozen=True)
class LayerInfo:
    key: tuple
    channels: int      # query dim of the block's attention (inner dim)
    heads: int
    context_dim: int   # width of the text context it reads (UNet: attn2's; DiT: the text input's)


UNET_GROUPS = ("input", "middle", "output")
DIT_GROUPS = ("double", "single")


@dataclass(frozen=True)
class ModelLayers:
    family: str                    # "sd15" | "sdxl" (by block layout) | "flux" | "unknown"
    layers: tuple[LayerInfo, ...]

    @property
    def is_dit(self) -> bool:
        return bool(self.layers) and self.layers[0].key[0] in DIT_GROUPS

    @property
    def groups(self) -> tuple:
        return DIT_GROUPS if self.is_dit else UNET_GROUPS

    @property
    def keys(self) -> list[tuple]:
        return [l.key for l in self.layers]

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
        or a method's set registered in LAYER_SETS for this family) or an iterable of 2-part / 3-part keys.
        """
        if isinstance(spec, str):
            if spec == "all" or spec in self.groups:
                return [k for k in self.keys if spec == "all" or k[0] == spec]
            sets = LAYER_SETS.get(self.family, {})
            if spec not in sets:
                raise UnsupportedModelError(
                    f"layer set {spec!r} is not defined for a {self.family} model; "
                    f"available: all, {', '.join(self.groups)}, {', '.join(sorted(sets)) or '(none)'}")
            spec = sets[spec]
        wanted = [tuple(s) for s in spec]
        out = [k for k in self.keys if k in wanted or k[:2] in wanted]
        missing = [w for w in wanted if not any(k == w or k[:2] == w for k in self.keys)]
        if missing:
            raise UnsupportedModelError(f"blocks {missing} carry no attention in this {self.family} model; "
                                        f"blocks with attention: {self.blocks()}")
        return out

    def require(self, *families: str, method: str = "this method") -> None:
        if self.family not in families:
            where = f"{len(self.layers)} {'DiT' if self.is_dit else 'UNet'} attention blocks"
            raise UnsupportedModelError(
                f"{method} supports {' / '.join(FAMILY_NAMES.get(f, f) for f in families)} models; the model given is "
                f"{FAMILY_NAMES.get(self.family, 'of an unknown layout')} ({where})")


FAMILY_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL", "flux": "Flux.1"}

# Named layer sets per family; methods register theirs here.
LAYER_SETS: dict[str, dict[str, list[tuple]]] = {"sd15": {}, "sdxl": {}, "flux": {}}


def register_layer_set(family: str, name: str, blocks: list[tuple]) -> None:
    LAYER_SETS.setdefault(family, {})[name] = [tuple(b) for b in blocks]


def _family(blocks: set) -> str:
    if blocks == SD15_LAYOUT:
        return "sd15"
    if blocks == SDXL_LAYOUT:
        return "sdxl"
    return "unknown"


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


def has_joint_hooks(block) -> bool:
    """Whether a ComfyUI DiT block calls ``attn1_patch`` (ComfyUI 0.16.4, March 2026, added it to Flux)."""
    import inspect
    try:
        cls = block if isinstance(block, type) else type(block)
        return "attn1_patch" in inspect.getsource(cls.forward)
    except (OSError, TypeError):  # no source to read (a compiled install): trust it
        return True


def _comfy_flux(dm) -> list[LayerInfo]:
    """ComfyUI's ``comfy.ldm.flux.model.Flux`` (Flux.1 dev / schnell and their fine-tunes)."""
    if not has_joint_hooks(dm.double_blocks[0]):
        raise UnsupportedModelError("this ComfyUI's Flux blocks have no attention hooks (attn1_patch), which StyleKit's "
                                    "Flux support patches through: update ComfyUI to 0.16.4 (March 2026) or later")
    text = dm.txt_in.in_features  # the text encoder's width, the context every joint attention reads
    return [LayerInfo((kind, i, 0), b.hidden_size, b.num_heads, text)
            for kind, blocks in (("double", dm.double_blocks), ("single", dm.single_blocks)) for i, b in enumerate(blocks)]


# DiT families: (family, test on the diffusion model, reader -> [LayerInfo]). Flux.2, Qwen-Image, ... go here
# once their blocks call the same joint-attention hooks with the same q/k/v layout.
DIT_FAMILIES = [
    ("flux", lambda dm: hasattr(dm, "double_blocks") and hasattr(dm, "single_blocks") and hasattr(dm, "img_in")
     and type(dm).__name__ == "Flux", _comfy_flux),
]

# UNet layouts: (test on the diffusion model, reader -> (key, transformer block) pairs under ComfyUI's keys).
UNET_READERS = [(lambda dm: hasattr(dm, "input_blocks") and hasattr(dm, "output_blocks"), _comfy_blocks)]


def register_dit_reader(family: str, test, read) -> None:
    """Another host's DiT network: ``test(dm)`` recognises it, ``read(dm)`` lists its layers."""
    if not any(t is test for _, t, _ in DIT_FAMILIES):
        DIT_FAMILIES.append((family, test, read))


def register_unet_reader(test, read) -> None:
    """Another host's UNet: ``test(dm)`` recognises it, ``read(dm)`` yields (ComfyUI key, transformer block)."""
    if not any(t is test for t, _ in UNET_READERS):
        UNET_READERS.append((test, read))


def _dit_layers(dm):
    for family, test, read in DIT_FAMILIES:
        if test(dm):
            return family, read(dm)
    return None


def _transformer_blocks(model) -> list[tuple]:
    dm = diffusion_model_of(model)
    for test, read in UNET_READERS:
        if test(dm):
            return list(read(dm))
    raise UnsupportedModelError(
        f"StyleKit patches SD1.5 / SDXL UNets and Flux.1 DiTs; got {type(dm).__name__}, which is none of them "
        "(neither ComfyUI's or diffusers' UNet blocks nor Flux's double/single blocks)")


def model_layers(model) -> ModelLayers:
    dit = _dit_layers(diffusion_model_of(model))
    if dit is not None:
        return ModelLayers(dit[0], tuple(dit[1]))
    blocks = _transformer_blocks(model)
    if not blocks:
        raise UnsupportedModelError(f"{type(diffusion_model_of(model)).__name__} has no transformer attention "
                                    "blocks to patch")
    layers = [_attn_info(key, tb) for key, tb in blocks]
    return ModelLayers(_family({l.key[:2] for l in layers}), tuple(layers))


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
