"""The model families StyleKit patches: one entry per family, everything family-specific in one place.

An entry says how to recognise the family's network (ComfyUI's, by duck typing; another host registers
readers for its own classes under the same family name, see :mod:`.layers`), how its attention blocks
are addressed, which hooks its blocks must call (feature detection: a ComfyUI without them is refused
with what to update), how a latent maps onto image tokens, which sampling its inversion runs, which
StyleKit methods run on it and each method's default blocks.

Adding a family is one :class:`Family` entry in :data:`FAMILIES` plus its tests.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable

from ..errors import UnsupportedModelError

# StyleKit's methods, as entries name them in ``methods``
FEATURE_FUSION, TEACHER, IP_ADAPTER, DEADIFF, CATVERSION = "feature_fusion", "teacher", "ip_adapter", "deadiff", "catversion"
METHODS = (FEATURE_FUSION, TEACHER, IP_ADAPTER, DEADIFF, CATVERSION)


@dataclass(frozen=True)
class LayerInfo:
    key: tuple
    channels: int      # query dim of the block's attention (inner dim)
    heads: int
    context_dim: int   # width of the text context it reads (UNet: attn2's; DiT: the text input's)


@dataclass(frozen=True)
class JointHooks:
    """What a DiT family's blocks do around ``attn1_patch`` (the hook contract; see :mod:`.joint`)."""
    output_hook: bool = True      # they call ``attn1_output_patch`` after the attention (fix-ups can run)
    returned_mask: bool = True    # they use the ``attn_mask`` a patch returns (else they built theirs before)
    rope_always: bool = False     # they rotate q and k with the returned ``pe`` whatever it is (None is refused)


FLUX_HOOKS = JointHooks()


@dataclass(frozen=True)
class Family:
    """One model family. UNets are told apart by ``layout``; DiTs by ``detect`` on the diffusion model."""
    name: str                       # the id stored in files and inversions: "sd15", "flux", ...
    title: str                      # what messages call it: "SD1.5", "Flux.1", ...
    kind: str                       # "unet": keys (input|middle|output, block, depth); "dit": (double|single, block, 0)
    methods: frozenset              # the StyleKit methods that run on it (METHODS)
    layer_sets: dict = field(default_factory=dict)  # named block sets: list of 2-part keys, or f(ModelLayers) -> keys
    layout: frozenset = frozenset()  # UNet: the (group, block id) pairs that carry attention
    detect: Callable | None = None   # DiT: ComfyUI diffusion model -> bool
    read: Callable | None = None     # DiT: ComfyUI diffusion model -> [LayerInfo]
    patch: int = 1                   # DiT: latent pixels per image token side
    flow: bool = False               # inversion on the flow's Euler steps (else StyleID's DDIM)
    hooks: JointHooks = FLUX_HOOKS   # DiT: the hook contract of its blocks
    video_latents: bool = False      # its latents are one-frame video latents (B, C, 1, H, W): the Wan 2.1 VAE's

    @property
    def is_dit(self) -> bool:
        return self.kind == "dit"

    @property
    def groups(self) -> tuple:
        return DIT_GROUPS if self.is_dit else UNET_GROUPS


UNET_GROUPS = ("input", "middle", "output")
DIT_GROUPS = ("double", "single")


# --- SD1.5 and SDXL ---------------------------------------------------------------------------------------
def _blocks(*groups) -> list:
    return [(g, i) for g, ids in groups for i in ids]


SD15 = Family(
    "sd15", "SD1.5", "unet", frozenset(METHODS),
    layout=frozenset(_blocks(("input", (1, 2, 4, 5, 7, 8)), ("middle", (0,)), ("output", range(3, 12)))),
    layer_sets={
        # StyleID: the decoder's two finest attention levels
        FEATURE_FUSION: _blocks(("output", range(6, 12))),
        # DEADiff's official split: style tokens on the fine layers, content on the coarse
        "deadiff_style": _blocks(("input", (1, 2, 4, 5)), ("output", range(5, 12))),
        "deadiff_content": _blocks(("input", (7, 8)), ("middle", (0,)), ("output", (3, 4))),
        "instantstyle_style": _blocks(("output", (3, 4, 5))),
    })

SDXL = Family(
    "sdxl", "SDXL", "unet", frozenset({FEATURE_FUSION, TEACHER, IP_ADAPTER, DEADIFF}),
    layout=frozenset(_blocks(("input", (4, 5, 7, 8)), ("middle", (0,)), ("output", range(0, 6)))),
    layer_sets={
        # the decoder has attention at two levels: output 0-2 (30 layers, 1280 channels) and 3-5, the finest
        # (6 layers, 640 channels; 4096 tokens at 1024 px, as SD1.5's finest at 512 px)
        FEATURE_FUSION: _blocks(("output", (3, 4, 5))),
        "deadiff_style": _blocks(("input", (4, 5)), ("output", range(2, 6))),
        "deadiff_content": _blocks(("input", (7, 8)), ("middle", (0,)), ("output", (0, 1))),
        "instantstyle_style": _blocks(("output", (1,))),
    })


# --- Flux.1 (ComfyUI's comfy.ldm.flux.model.Flux) ----------------------------------------------------------
def has_joint_hooks(block) -> bool:
    """Whether a ComfyUI DiT block calls ``attn1_patch`` (ComfyUI 0.16.4, March 2026, added it to Flux)."""
    return _calls_attn1_patch(block if isinstance(block, type) else type(block))


@functools.lru_cache(maxsize=None)
def _calls_attn1_patch(cls) -> bool:
    """Read once per class: every model_layers call on a DiT asks, and reading the source is file I/O."""
    try:
        return "attn1_patch" in inspect.getsource(cls.forward)
    except (OSError, TypeError):  # no source to read (a compiled install): trust it
        return True


def comfy_flux_layers(dm) -> list[LayerInfo]:
    """ComfyUI's ``Flux`` network: one joint attention per double and single block."""
    if not has_joint_hooks(dm.double_blocks[0]):
        raise UnsupportedModelError("this ComfyUI's Flux blocks have no attention hooks (attn1_patch), which StyleKit's "
                                    "Flux support patches through: update ComfyUI to 0.16.4 (March 2026) or later")
    text = dm.txt_in.in_features  # the text encoder's width, the context every joint attention reads
    return [LayerInfo((kind, i, 0), b.hidden_size, b.num_heads, text)
            for kind, blocks in (("double", dm.double_blocks), ("single", dm.single_blocks)) for i, b in enumerate(blocks)]


def _comfy_flux(dm) -> bool:
    return type(dm).__name__ == "Flux" and hasattr(dm, "double_blocks") and hasattr(dm, "single_blocks") and hasattr(dm, "img_in")


def is_comfy_flux2(dm) -> bool:
    """Flux.2 (dev, Klein): ComfyUI's same ``Flux`` class with one modulation shared by all blocks."""
    return _comfy_flux(dm) and bool(getattr(getattr(dm, "params", None), "global_modulation", False))


def is_comfy_flux1(dm) -> bool:
    return _comfy_flux(dm) and not is_comfy_flux2(dm)


def late(group: str):
    """A DiT's Feature Fusion default: the ``group``'s blocks from a third of their depth on (Flux.1: double
    6-18, 13 blocks), so that recompute mode holds one step of features in under 2 GB at 1024 px (fp16); which
    blocks carry style on a DiT is an empirical question (issue 15), so every set is offered."""
    def blocks(layers) -> list:
        chosen = layers.select(group)
        return chosen[len(chosen) // 3:]
    return blocks


late_double = late("double")  # Flux.1, Flux.2, Qwen-Image
late_single = late("single")  # Krea 2: single-stream blocks only


FLUX1 = Family(
    "flux", "Flux.1", "dit", frozenset({FEATURE_FUSION, TEACHER}),
    layer_sets={FEATURE_FUSION: late_double},
    detect=is_comfy_flux1, read=comfy_flux_layers, patch=2, flow=True)


# Flux.2 (dev, Klein 4B / 9B): Flux.1's blocks and hooks (ComfyUI 0.33.0; none on 0.3.64, which has no Flux.2),
# latents already packed (one token per latent pixel: 2x2 patches of the 32-channel latent are its 128
# channels), the text left-padded to 512 tokens and reference latents (its edits) after the image's tokens
FLUX2 = Family(
    "flux2", "Flux.2", "dit", frozenset({FEATURE_FUSION, TEACHER}),
    layer_sets={FEATURE_FUSION: late_double},
    detect=is_comfy_flux2, read=comfy_flux_layers, patch=1, flow=True)


# --- Krea 2 (ComfyUI's comfy.ldm.krea2.model.SingleStreamDiT; 0.33.0) -------------------------------------
def is_comfy_krea2(dm) -> bool:
    return type(dm).__name__ == "SingleStreamDiT" and hasattr(dm, "txtfusion") and hasattr(dm, "blocks")


def comfy_krea2_layers(dm) -> list[LayerInfo]:
    """Krea 2's blocks, all single-stream: one joint attention each, with fewer key/value heads than query
    heads (grouped-query attention: its hooks see k and v before they are repeated to the query heads).
    Its prompt arrives as the text encoder's stacked layers (txtlayers x txtdim wide)."""
    if not has_joint_hooks(dm.blocks[0].attn):
        raise UnsupportedModelError("this ComfyUI's Krea 2 blocks have no attention hooks (attn1_patch): update ComfyUI")
    text = dm.txtlayers * dm.txtdim
    return [LayerInfo(("single", i, 0), b.attn.wq.out_features, b.attn.heads, text) for i, b in enumerate(dm.blocks)]


# Krea 2: one stream of single blocks (no block replace), grouped-query attention, 2x2 patches of a 16-channel
# latent, the prompt's tokens first and an edit's reference latents last, RoPE after the hook
KREA2 = Family(
    "krea2", "Krea 2", "dit", frozenset({FEATURE_FUSION, TEACHER}),
    layer_sets={FEATURE_FUSION: late_single},
    detect=is_comfy_krea2, read=comfy_krea2_layers, patch=2, flow=True, video_latents=True)


# --- Qwen-Image (ComfyUI's comfy.ldm.qwen_image.model.QwenImageTransformer2DModel; hooks in 0.33.0) ---------
def is_comfy_qwen_image(dm) -> bool:  # diffusers' class has the same name (ComfyUI's is a port: pos_embed there)
    return type(dm).__name__ == "QwenImageTransformer2DModel" and hasattr(dm, "pe_embedder")


def comfy_qwen_layers(dm) -> list[LayerInfo]:
    """Qwen-Image's double-stream blocks: one joint attention each, text tokens first."""
    if not has_joint_hooks(dm.transformer_blocks[0].attn):
        raise UnsupportedModelError("this ComfyUI's Qwen-Image blocks have no attention hooks (attn1_patch), which "
                                    "StyleKit patches through: update ComfyUI (0.33.0, August 2026, has them)")
    text = dm.txt_in.in_features
    return [LayerInfo(("double", i, 0), b.attn.inner_dim, b.attn.heads, text) for i, b in enumerate(dm.transformer_blocks)]


# Qwen-Image: double blocks only; its blocks call attn1_patch but no output patch, build their mask before
# the patch (a returned one is ignored) and rotate q and k after it whatever pe comes back; 2x2 patches of
# the Wan 2.1 VAE's one-frame latents; an edit's reference latents after the image's tokens
QWEN_IMAGE = Family(
    "qwen_image", "Qwen-Image", "dit", frozenset({FEATURE_FUSION, TEACHER}),
    layer_sets={FEATURE_FUSION: late_double},
    detect=is_comfy_qwen_image, read=comfy_qwen_layers, patch=2, flow=True,
    hooks=JointHooks(output_hook=False, returned_mask=False, rope_always=True), video_latents=True)


FAMILIES: dict[str, Family] = {f.name: f for f in (SD15, SDXL, FLUX1, FLUX2, KREA2, QWEN_IMAGE)}


def title(name: str) -> str:
    return FAMILIES[name].title if name in FAMILIES else "of an unknown layout"


def supporting(method: str) -> list[Family]:
    """The families ``method`` runs on, in registry order."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: {METHODS}")
    return [f for f in FAMILIES.values() if method in f.methods]


def unet_family(blocks: set) -> str:
    """The UNet family whose attention layout is exactly ``blocks`` ((group, block id) pairs), else "unknown"."""
    return next((f.name for f in FAMILIES.values() if not f.is_dit and f.layout == frozenset(blocks)), "unknown")


def comfy_dit_family(dm) -> Family | None:
    """The DiT family of a ComfyUI diffusion model, or None."""
    return next((f for f in FAMILIES.values() if f.is_dit and f.detect is not None and f.detect(dm)), None)
