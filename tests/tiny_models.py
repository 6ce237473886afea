"""Test fixtures: tiny randomly initialised models in the published layouts (diffusers UNets with SD1.5's and SDXL's
block layouts, Flux, CLIP towers, a DEADiff encoder, IP-Adapters, dVAE and translator). Importable from every tier
(tests/ is on sys.path through its conftest); never part of the pack."""
from __future__ import annotations

import torch


def tiny_sd15_unet(seed: int = 0, channels=(32, 32, 64, 64), context_dim: int = 64, heads: int = 8):
    """SD1.5 layout (attention in input 1,2,4,5,7,8 / middle / output 3..11), tiny widths."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=context_dim, attention_head_dim=heads, norm_num_groups=32,
    ).eval()


def tiny_sdxl_unet(seed: int = 0, channels=(32, 32, 64), context_dim: int = 64, depths=(1, 2, 2), **config):
    """SDXL layout (attention in input 4,5,7,8 / middle / output 0..5), tiny widths, depth > 1; ``config``:
    further UNet2DConditionModel arguments (SDXL's text_time conditioning)."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=list(depths), cross_attention_dim=context_dim,
        attention_head_dim=4, norm_num_groups=32, use_linear_projection=True, **config,
    ).eval()


def tiny_deadiff_state_dict(layers, seed: int = 0, hidden: int = 32, n_layers: int = 2, intermediate: int = 64,
                            vocab: int = 30523, positions: int = 32, queries: int = 16, vision: int = 48,
                            proj_hidden: int = 64) -> dict:
    """Random DEADiff weights under the official key names (``deadiff_v1.ckpt``'s DEADiff part), sized
    for ``layers`` (a :class:`ModelLayers`): Q-Formers of ``n_layers`` BERT layers, 4 heads."""
    from stylekit.models.deadiff import attn2_name
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=0.1: torch.randn(*s, generator=g) * scale  # noqa: E731
    sd = {}
    for b in ("style", "content"):
        p = f"{b}_blip.Qformer.bert."
        sd[p + "embeddings.word_embeddings.weight"] = r(vocab, hidden)
        sd[p + "embeddings.position_embeddings.weight"] = r(positions, hidden)
        sd[p + "embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)  # present in the official file
        sd[p + "embeddings.LayerNorm.weight"], sd[p + "embeddings.LayerNorm.bias"] = 1 + r(hidden), r(hidden)
        for i in range(n_layers):
            lp = f"{p}encoder.layer.{i}."
            for att, kdim in (("attention", hidden), ("crossattention", vision)):
                for w, d in (("query", hidden), ("key", kdim), ("value", kdim)):
                    sd[f"{lp}{att}.self.{w}.weight"], sd[f"{lp}{att}.self.{w}.bias"] = r(hidden, d), r(hidden)
                sd[f"{lp}{att}.output.dense.weight"], sd[f"{lp}{att}.output.dense.bias"] = r(hidden, hidden), r(hidden)
                sd[f"{lp}{att}.output.LayerNorm.weight"], sd[f"{lp}{att}.output.LayerNorm.bias"] = 1 + r(hidden), r(hidden)
            for ff in ("", "_query"):
                sd[f"{lp}intermediate{ff}.dense.weight"] = r(intermediate, hidden)
                sd[f"{lp}intermediate{ff}.dense.bias"] = r(intermediate)
                sd[f"{lp}output{ff}.dense.weight"], sd[f"{lp}output{ff}.dense.bias"] = r(hidden, intermediate), r(hidden)
                sd[f"{lp}output{ff}.LayerNorm.weight"], sd[f"{lp}output{ff}.LayerNorm.bias"] = 1 + r(hidden), r(hidden)
        sd[f"{b}_blip.query_tokens"] = r(1, queries, hidden, scale=1.0)
        sd[f"{b}_blip.ln_vision.weight"], sd[f"{b}_blip.ln_vision.bias"] = 1 + r(vision), r(vision)
        q = f"{b}_proj_layer."
        sd[q + "dense1.weight"], sd[q + "dense1.bias"] = r(proj_hidden, hidden), r(proj_hidden)
        sd[q + "dense2.weight"], sd[q + "dense2.bias"] = r(hidden, proj_hidden), r(hidden)
        sd[q + "LayerNorm.weight"], sd[q + "LayerNorm.bias"] = 1 + r(hidden), r(hidden)
    for info in layers.layers:
        base = attn2_name(info.key)
        sd[base + ".i_to_k.weight"] = r(info.channels, hidden, scale=0.3)
        sd[base + ".i_to_v.weight"] = r(info.channels, hidden, scale=0.3)
    return sd


def tiny_clip_vision(width: int = 48, seed: int = 0):
    """A transformers CLIPVisionModel at 224 px with patch 32 and 3 layers (stands in for ViT-L/14)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_attention_heads=4,
                           num_hidden_layers=3, image_size=224, patch_size=32, hidden_act="quick_gelu")
    return CLIPVisionModel(cfg).eval()


def tiny_bridge_clip_vision(width: int = 48, seed: int = 0):
    """ComfyUI-shaped CLIP_VISION (BridgeClipVision) over ``tiny_clip_vision``'s weights."""
    from stylekit.bridge.vision import BridgeClipVision
    return BridgeClipVision(tiny_clip_vision(width, seed))


def tiny_bridge_vae(width: int = 16, seed: int = 0):
    """ComfyUI-shaped VAE (BridgeVAE) over a diffusers AutoencoderKL with 4 latent channels, tiny widths."""
    from diffusers import AutoencoderKL

    from stylekit.bridge.vae import BridgeVAE
    torch.manual_seed(seed)
    return BridgeVAE(AutoencoderKL(block_out_channels=(width,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                                   up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8,
                                   latent_channels=4, sample_size=32).eval())


def tiny_clip_text(width: int = 64, layers: int = 4, vocab: int = 1000, seed: int = 0):
    """A transformers CLIPTextModel with CLIP-L's structure (quick_gelu, causal, 77 positions), tiny widths."""
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_attention_heads=4,
                         num_hidden_layers=layers, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    return CLIPTextModel(cfg).eval()


def tiny_bridge_clip(width: int = 64, layers: int = 4, seed: int = 0):
    """ComfyUI-shaped CLIP (BridgeCLIP) over ``tiny_clip_text``'s weights."""
    from stylekit.bridge.clip_text import BridgeCLIP, clip_text_from_transformers
    return BridgeCLIP(clip_text_from_transformers(tiny_clip_text(width, layers, seed=seed)))


def tiny_ip_adapter(layers, kind: str = "plain", feature_width: int = 48, tokens: int = 4, seed: int = 0,
                    csgo: bool = False, dim: int = 32, depth: int = 2, heads: int = 1) -> dict:
    """Random adapter weights in the published nested layout (what ``torch.load`` gives for a .bin):
    IP-Adapter ``{"image_proj": …, "ip_adapter": …}`` sized for ``layers`` (a :class:`ModelLayers`), or
    with ``csgo`` CSGO's ``{"content_image_proj", "style_image_proj", "ip_adapter"}`` whose ip_adapter
    covers the down and up blocks (no mid block). ``kind`` plain: 4-token Linear + LayerNorm over image
    embeds; plus: Resampler (64-wide heads) over hidden states."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=0.2: torch.randn(*s, generator=g) * scale  # noqa: E731
    ctx = layers.layers[0].context_dim

    def plain(n_tokens):
        return {"proj.weight": r(n_tokens * ctx, feature_width), "proj.bias": r(n_tokens * ctx),
                "norm.weight": 1 + r(ctx), "norm.bias": r(ctx)}

    def plus(n_tokens):
        inner = 64 * heads
        sd = {"latents": r(1, n_tokens, dim, scale=1.0), "proj_in.weight": r(dim, feature_width), "proj_in.bias": r(dim),
              "proj_out.weight": r(ctx, dim), "proj_out.bias": r(ctx), "norm_out.weight": 1 + r(ctx), "norm_out.bias": r(ctx)}
        for i in range(depth):
            p = f"layers.{i}."
            for n in ("norm1", "norm2"):
                sd[f"{p}0.{n}.weight"], sd[f"{p}0.{n}.bias"] = 1 + r(dim), r(dim)
            sd[p + "0.to_q.weight"], sd[p + "0.to_kv.weight"] = r(inner, dim), r(2 * inner, dim)
            sd[p + "0.to_out.weight"] = r(dim, inner)
            sd[p + "1.0.weight"], sd[p + "1.0.bias"] = 1 + r(dim), r(dim)
            sd[p + "1.1.weight"], sd[p + "1.3.weight"] = r(4 * dim, dim), r(dim, 4 * dim)
        return sd

    rank = {"input": 0, "output": 1, "middle": 2}  # diffusers' attn_processors order
    order = sorted(layers.layers, key=lambda l: (rank[l.key[0]], l.key[1], l.key[2]))
    ip = {}
    for j, info in enumerate(order):
        if csgo and info.key[0] == "middle":
            continue
        ip[f"{2 * j + 1}.to_k_ip.weight"] = r(info.channels, ctx, scale=0.5)
        ip[f"{2 * j + 1}.to_v_ip.weight"] = r(info.channels, ctx, scale=0.5)
    proj = plain(tokens) if kind == "plain" else plus(tokens)
    if csgo:
        return {"content_image_proj": plain(4), "style_image_proj": proj, "ip_adapter": ip}
    return {"image_proj": proj, "ip_adapter": ip}


def flat_state_dict(nested: dict) -> dict:
    """``{"image_proj": {"proj.weight": …}}`` -> ``{"image_proj.proj.weight": …}`` (the .safetensors layout)."""
    return {f"{head}.{k}": v.contiguous() for head, sd in nested.items() for k, v in sd.items()}


def tiny_dvae(seed: int = 0, vocab: int = 64):
    """A tiny randomly initialised DALL-E dVAE (hidden 8, one block per group): (encoder, decoder)."""
    from stylekit.models.dvae import DVAEDecoder, DVAEEncoder
    torch.manual_seed(seed)
    return (DVAEEncoder(n_hid=8, blocks_per_group=1, vocab=vocab).eval(),
            DVAEDecoder(n_hid=8, blocks_per_group=1, vocab=vocab, n_init=8).eval())


def tiny_translator(seed: int = 0, vocab: int = 64):
    """A tiny StylerDALLE translator (hidden 32, 4 heads, 2 decoder blocks) for ``tiny_dvae``."""
    from stylekit.models.stylerdalle import StylerDALLETranslator
    torch.manual_seed(seed)
    return StylerDALLETranslator(input_dim=8, hidden=32, heads=4, decoder_blocks=2, vocab=vocab).eval()


def write_official_dvae_pickles(encoder, decoder, folder) -> None:
    """``encoder.pkl`` / ``decoder.pkl`` as the official files are made: whole modules pickled by torch,
    of classes named ``dall_e.encoder.Encoder``, ``EncoderBlock``, ``dall_e.utils.Conv2d``, ... (made
    here for the occasion and removed again, so nothing of the dall-e package is needed)."""
    import os
    import sys
    import types
    from torch import nn
    names = ("dall_e", "dall_e.encoder", "dall_e.decoder", "dall_e.utils")
    mods = {n: types.ModuleType(n) for n in names}

    def cls(module, name):
        c = type(name, (nn.Module,), {"__module__": module, "__qualname__": name})
        setattr(mods[module], name, c)
        return c
    conv = cls("dall_e.utils", "Conv2d")
    kinds = {"encoder": (cls("dall_e.encoder", "EncoderBlock"), cls("dall_e.encoder", "Encoder")),
             "decoder": (cls("dall_e.decoder", "DecoderBlock"), cls("dall_e.decoder", "Decoder"))}

    def rebuild(module, block, top):
        if isinstance(module, (nn.MaxPool2d, nn.Upsample, nn.ReLU, nn.Identity)):
            return module
        new = {"Conv": conv, "Block": block, "DVAEEncoder": top, "DVAEDecoder": top}.get(type(module).__name__)
        out = nn.Sequential() if new is None else new()
        if new is not None:  # official attr fields ride along in the instance dict
            out.device, out.requires_grad = torch.device("cpu"), False
        for name, p in module._parameters.items():
            out.register_parameter(name, nn.Parameter(p.detach().clone(), requires_grad=False))
        for name, child in module._modules.items():
            out.add_module(name, rebuild(child, block, top))
        return out
    sys.modules.update(mods)
    try:
        for part, model in (("encoder", encoder), ("decoder", decoder)):
            torch.save(rebuild(model, *kinds[part]), os.path.join(str(folder), f"{part}.pkl"))
    finally:
        for n in names:
            sys.modules.pop(n, None)


def tiny_flux(seed: int = 0, double: int = 2, single: int = 2, heads: int = 2, head_dim: int = 16,
              latent_channels: int = 4, context_dim: int = 32, pooled_dim: int = 16, guidance: bool = True):
    """Flux.1 layout (double then single joint-attention blocks, 3-axis RoPE, guidance embedding), tiny widths.

    The latent has ``latent_channels`` channels (Flux.1: 16) packed 2x2 into tokens."""
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    axes = (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=latent_channels * 4, num_layers=double, num_single_layers=single,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=context_dim,
        pooled_projection_dim=pooled_dim, guidance_embeds=guidance, axes_dims_rope=axes,
    ).eval()


def tiny_flux2(seed: int = 0, double: int = 2, single: int = 2, heads: int = 2, head_dim: int = 16,
               channels: int = 8, context_dim: int = 32, guidance: bool = True):
    """Flux.2 layout (Flux.1's double blocks, fused single-stream blocks, shared modulation, 4-axis RoPE at theta
    2000), tiny widths. The latent is already packed: ``channels`` per token (Flux.2: 128), one token per pixel;
    ``guidance=False`` is Klein's distilled layout."""
    from diffusers import Flux2Transformer2DModel
    torch.manual_seed(seed)
    axes = (head_dim // 4,) * 4
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=channels, num_layers=double, num_single_layers=single, attention_head_dim=head_dim,
        num_attention_heads=heads, joint_attention_dim=context_dim, timestep_guidance_channels=32, mlp_ratio=2.0,
        axes_dims_rope=axes, guidance_embeds=guidance).eval()


def tiny_krea2(seed: int = 0, layers: int = 3, heads: int = 4, kv_heads: int = 2, head_dim: int = 16,
               channels: int = 16, text_layers: int = 2, text_dim: int = 32):
    """Krea 2 layout (one stream of single blocks, grouped-query attention, sigmoid-gated output, text fusion over
    stacked text-encoder layers, 3-axis RoPE), tiny widths; 2x2 patches of a ``channels``-channel latent."""
    from diffusers import Krea2Transformer2DModel
    torch.manual_seed(seed)
    model = Krea2Transformer2DModel(
        in_channels=channels * 4, num_layers=layers, attention_head_dim=head_dim, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=2 * heads * head_dim, timestep_embed_dim=32,
        text_hidden_dim=text_dim, num_text_layers=text_layers, text_num_attention_heads=2, text_num_key_value_heads=2,
        text_intermediate_size=2 * text_dim, num_layerwise_text_blocks=1, num_refiner_text_blocks=1,
        axes_dims_rope=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8))
    with torch.no_grad():  # the published init zeroes the norms' and modulation tables' offsets; give them weight
        for name, p in model.named_parameters():
            if name.endswith("scale_shift_table") or "norm" in name:
                p.normal_(0, 0.1)
    return model.eval()


def tiny_qwen_image(seed: int = 0, layers: int = 2, heads: int = 2, head_dim: int = 16, channels: int = 16,
                    context_dim: int = 32):
    """Qwen-Image layout (double-stream blocks, text first, 3-axis complex RoPE centred on the image), tiny widths;
    2x2 patches of a ``channels``-channel latent."""
    from diffusers import QwenImageTransformer2DModel
    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(
        patch_size=2, in_channels=channels * 4, out_channels=channels, num_layers=layers, attention_head_dim=head_dim,
        num_attention_heads=heads, joint_attention_dim=context_dim, axes_dims_rope=(head_dim // 4, 3 * head_dim // 8,
                                                                                     3 * head_dim // 8)).eval()
