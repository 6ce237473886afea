"""Tiny randomly initialised diffusers UNets with SD1.5's and SDXL's block layouts (tests, demo)."""
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


def tiny_sdxl_unet(seed: int = 0, channels=(32, 32, 64), context_dim: int = 64, depths=(1, 2, 2)):
    """SDXL layout (attention in input 4,5,7,8 / middle / output 0..5), tiny widths, depth > 1."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=list(depths), cross_attention_dim=context_dim,
        attention_head_dim=4, norm_num_groups=32, use_linear_projection=True,
    ).eval()
