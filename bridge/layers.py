"""The diffusers networks' attention layers under ComfyUI's keys, registered with :mod:`stylekit.attention.layers`.

diffusers' ``down_blocks.{level}.attentions.{j}.transformer_blocks.{depth}`` is ComfyUI's
``("input", 1 + (per_level + 1) * level + j, depth)``: ComfyUI counts each level's downsampler as a
block of its own (``per_level`` = resnets per level); ``up_blocks`` map the same way onto ``output``
without the leading stem, and ``mid_block`` is ``("middle", 0, depth)``. Flux's ``transformer_blocks``
and ``single_transformer_blocks`` are ComfyUI's ``double`` and ``single`` blocks, and so are Flux.2's;
Krea 2's ``transformer_blocks`` are its ``single`` blocks, Qwen-Image's its ``double`` blocks.
"""
from __future__ import annotations

from ..attention.layers import LayerInfo, register_dit_reader, register_unet_reader


def diffusers_key(block: str, level: int, j: int, depth: int, per_level: int) -> tuple:
    """ComfyUI's key of diffusers' ``{block}.{level}.attentions.{j}.transformer_blocks.{depth}``."""
    if block == "mid_block":
        return ("middle", 0, depth)
    if block == "down_blocks":
        return ("input", 1 + (per_level + 1) * level + j, depth)
    if block == "up_blocks":
        return ("output", (per_level + 1) * level + j, depth)
    raise ValueError(f"unexpected UNet block {block!r}")


def layers_per_block(unet) -> int:
    per_level = unet.config.layers_per_block
    return per_level if isinstance(per_level, int) else per_level[0]


def processor_key(name: str, per_level: int) -> tuple[str, tuple]:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor`` -> ("attn2", ("input", 4, 0))."""
    p = name.split(".")
    attn, depth = p[-2], int(p[-3])
    if p[0] == "mid_block":  # mid_block.attentions.0...
        return attn, diffusers_key(p[0], 0, int(p[2]), depth, per_level)
    return attn, diffusers_key(p[0], int(p[1]), int(p[3]), depth, per_level)


def is_unet(dm) -> bool:
    return hasattr(dm, "down_blocks") and hasattr(dm, "up_blocks") and hasattr(dm, "mid_block")


def unet_blocks(unet):
    """(key, transformer block) pairs of a diffusers UNet2DConditionModel under ComfyUI's keys."""
    per_level = layers_per_block(unet)
    for name, blocks in (("down_blocks", unet.down_blocks), ("mid_block", [unet.mid_block]), ("up_blocks", unet.up_blocks)):
        for i, block in enumerate(blocks):
            for j, att in enumerate(getattr(block, "attentions", None) or []):
                for t, tb in enumerate(att.transformer_blocks):
                    yield diffusers_key(name, i, j, t, per_level), tb


def is_flux(dm) -> bool:
    return type(dm).__name__ == "FluxTransformer2DModel"


def flux_layers(dm) -> list[LayerInfo]:
    """diffusers' ``FluxTransformer2DModel``: one joint attention per double and single block."""
    return [LayerInfo((kind, i, 0), b.attn.inner_dim, b.attn.heads, dm.context_embedder.in_features)
            for kind, blocks in (("double", dm.transformer_blocks), ("single", dm.single_transformer_blocks))
            for i, b in enumerate(blocks)]


def is_flux2(dm) -> bool:
    return type(dm).__name__ == "Flux2Transformer2DModel"


def is_krea2(dm) -> bool:
    return type(dm).__name__ == "Krea2Transformer2DModel"


def krea2_layers(dm) -> list[LayerInfo]:
    """diffusers' ``Krea2Transformer2DModel``: one stream of single blocks (grouped-query attention); the prompt
    is its text encoder's stacked layers, ComfyUI's ``text_layers * text_dim`` wide."""
    text = dm.config.num_text_layers * dm.config.text_hidden_dim
    return [LayerInfo(("single", i, 0), b.attn.to_q.out_features, b.attn.num_heads, text)
            for i, b in enumerate(dm.transformer_blocks)]


def is_qwen_image(dm) -> bool:
    return type(dm).__name__ == "QwenImageTransformer2DModel" and hasattr(dm, "pos_embed")  # ComfyUI's: pe_embedder


def qwen_image_layers(dm) -> list[LayerInfo]:
    """diffusers' ``QwenImageTransformer2DModel``: one joint attention per double-stream block, text first."""
    text = dm.txt_in.in_features
    return [LayerInfo(("double", i, 0), b.attn.inner_dim, b.attn.heads, text) for i, b in enumerate(dm.transformer_blocks)]


register_unet_reader(is_unet, unet_blocks)
register_dit_reader("flux", is_flux, flux_layers)
register_dit_reader("flux2", is_flux2, flux_layers)  # Flux.1's double and single blocks, fused projections aside
register_dit_reader("krea2", is_krea2, krea2_layers)
register_dit_reader("qwen_image", is_qwen_image, qwen_image_layers)
