"""Tier 3: MagicStyle / StyleID nodes on real ComfyUI models, SD1.5 and SDXL layouts."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def sdxl_conditioning(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, 64, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]


def test_sdxl_inversion_feeds_y_and_fusion_samples_with_core_sampler(comfy_nodes):
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as cs
    from comfy_host import comfy_sdxl_random
    from stylekit.attention.layers import model_layers
    from stylekit.nodes.magicstyle import StyleKitDDIMInvert, StyleKitFeatureFusion

    model = comfy_sdxl_random()
    assert model_layers(model).family == "sdxl"
    g = torch.Generator().manual_seed(1)
    content, style = ({"samples": torch.randn(1, 4, 16, 16, generator=g)} for _ in range(2))
    cond = sdxl_conditioning()
    inv, inverted, sigmas = StyleKitDDIMInvert().invert(model, content, style, cond, 4, "output (all decoder)",
                                                        "fp32", "cpu", "store")
    keys = model_layers(model).select("output")
    assert len(inv.store.features) == len(keys) * 4 and torch.isfinite(inverted["samples"]).all()
    # y reached the UNet: a different pooled prompt changes the inversion
    inv2 = StyleKitDDIMInvert().invert(model, content, style, sdxl_conditioning(1), 4, "output (all decoder)",
                                       "fp32", "cpu", "store")[0]
    assert (inv2.result.latent - inv.result.latent).abs().max() > 1e-4
    fused, start, _ = StyleKitFeatureFusion().apply(model, inv, "StyleID", 0.75, 1.5, 0.0, 1.0, True, 0.0, 1.0)
    sampler = comfy.samplers.sampler_object("euler")
    out = cs.SamplerCustom().sample(fused, False, 0, 1.0, cond, cond, sampler, sigmas, start)[0]
    plain = cs.SamplerCustom().sample(model, False, 0, 1.0, cond, cond, sampler, sigmas, start)[0]
    assert torch.isfinite(out["samples"]).all()
    assert (out["samples"] - plain["samples"]).abs().mean() > 1e-4
