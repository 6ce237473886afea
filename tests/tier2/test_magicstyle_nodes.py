import torch

from stylekit.bridge import sample_euler_cfg
from stylekit.nodes.magicstyle import StyleKitDDIMInvert, StyleKitFeatureFusion
from stylekit.nodes.patch_map import StyleKitPatchMap


def test_nodes_chain_on_the_bridge(sd15, roundoff):
    g = torch.Generator().manual_seed(0)
    content, style = ({"samples": torch.randn(1, 4, 16, 16, generator=g)} for _ in range(2))
    cond = [[torch.randn(1, 77, 64, generator=g), {}]]
    inv, inverted, sigmas = StyleKitDDIMInvert().invert(sd15, content, style, cond, 4, "output 6-11 (StyleID)",
                                                        "fp16", "cpu", "store")
    # StyleID's schedule: 4 DDIM timesteps less the skipped top one, then t = 0
    assert inverted["samples"].shape == (2, 4, 16, 16) and len(sigmas) == 4
    assert float(sigmas[-1]) == float(sd15.model_sampling.sigmas[0])
    assert all(t.device.type == "cpu" and t.dtype == torch.float16 for t in inv.store.features.values())
    model, start, _ = StyleKitFeatureFusion().apply(sd15, inv, "StyleID", 0.75, 1.5, 0.0, 1.0, True, 0.0, 1.0,
                                                 mask=torch.zeros(1, 64, 64))
    summary = StyleKitPatchMap().run(model)[1]
    assert "output 6.0 attn1: feature_fusion w=1" in summary and "feature_record" not in summary  # store mode
    inverted_ones = StyleKitFeatureFusion().apply(sd15, inv, "StyleID", 0.75, 1.5, 0.0, 1.0, True, 0.0, 1.0,
                                                  mask=torch.ones(1, 64, 64), invert_mask=True)[0]
    everywhere = StyleKitFeatureFusion().apply(sd15, inv, "StyleID", 0.75, 1.5, 0.0, 1.0, True, 0.0, 1.0,
                                               mask=torch.ones(1, 64, 64))[0]
    unmasked = StyleKitFeatureFusion().apply(sd15, inv, "StyleID", 0.75, 1.5, 0.0, 1.0, True, 0.0, 1.0)[0]
    x = start["samples"]
    with torch.no_grad():  # MASK marks where the fusion acts: all 0 (or all 1, inverted) is the plain model
        out = sample_euler_cfg(model, None, sigmas, cond[0][0], start=x)
        plain = sample_euler_cfg(sd15, None, sigmas, cond[0][0], start=x)
        inv_out = sample_euler_cfg(inverted_ones, None, sigmas, cond[0][0], start=x)
        full = sample_euler_cfg(everywhere, None, sigmas, cond[0][0], start=x)
        fused = sample_euler_cfg(unmasked, None, sigmas, cond[0][0], start=x)
    tol = roundoff(plain, sd15, len(sigmas) - 1)
    torch.testing.assert_close(out, plain, atol=tol, rtol=0)
    torch.testing.assert_close(inv_out, plain, atol=tol, rtol=0)
    torch.testing.assert_close(full, fused, atol=tol, rtol=0)  # all 1: fused everywhere, as with no mask
    assert (fused - plain).abs().mean() > 20 * tol  # so the comparisons above can tell fused from plain
    assert sd15.model_options == {"transformer_options": {}}


def test_an_inversion_refuses_another_model_and_another_latent_size(sd15, sdxl):
    import pytest

    from stylekit.errors import InputError, UnsupportedModelError
    g = torch.Generator().manual_seed(0)
    content, style = ({"samples": torch.randn(1, 4, 16, 16, generator=g)} for _ in range(2))
    cond = [[torch.randn(1, 77, 64, generator=g), {}]]
    inv, _, sigmas = StyleKitDDIMInvert().invert(sd15, content, style, cond, 2, "output 6-11 (StyleID)", "fp32",
                                                 "cpu", "store")
    with pytest.raises(UnsupportedModelError, match="made with an sd15 model; this model is sdxl"):
        StyleKitFeatureFusion().apply(sdxl, inv, "StyleID", 0.75, 1.5, 0.0, 1.0, True, 0.0, 1.0)
    model, start, _ = StyleKitFeatureFusion().apply(sd15, inv, "StyleID", 0.75, 1.5, 0.0, 1.0, True, 0.0, 1.0)
    with pytest.raises(InputError, match="stored 64 tokens at block .* this sampling has 256"):
        with torch.no_grad():
            sample_euler_cfg(model, torch.randn(1, 4, 32, 32, generator=g), sigmas, cond[0][0])
    with pytest.raises(InputError, match="2 masks for 1 inverted content image"):
        StyleKitFeatureFusion().apply(sd15, inv, "StyleID", 0.75, 1.5, 0.0, 1.0, True, 0.0, 1.0, mask=torch.ones(2, 8, 8))


def test_the_auto_block_set_fits_each_family(sd15, sdxl):
    """auto stores StyleID's output 6-11 on SD1.5 and SDXL's finest decoder attention level, output 3-5 (SDXL
    has no attention in output 6-11, so a fixed SD1.5 set refused every SDXL model); auto's old name, kept
    for saved workflows, chooses the same."""
    from stylekit.attention.layers import model_layers
    from stylekit.nodes.magicstyle import AUTO_BLOCKS
    g = torch.Generator().manual_seed(0)
    content, style = ({"samples": torch.randn(1, 4, 16, 16, generator=g)} for _ in range(2))
    cond = [[torch.randn(1, 77, 64, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
    for model, blocks in ((sd15, {("output", i) for i in range(6, 12)}), (sdxl, {("output", i) for i in (3, 4, 5)})):
        for name in (AUTO_BLOCKS, "auto (SD: output 6-11, Flux: late double)"):
            inv = StyleKitDDIMInvert().invert(model, content, style, cond, 2, name, "fp16", "cpu", "store")[0]
            stored = {key for key, _ in inv.store.features}
            assert {k[:2] for k in stored} == blocks
            assert stored == {k for k in model_layers(model).keys if k[:2] in blocks}  # every layer of them
    old = "auto (SD: output 6-11, Flux: late double)"
    choices = StyleKitDDIMInvert.INPUT_TYPES()["required"]["store_blocks"][0]
    assert old not in choices and AUTO_BLOCKS in choices  # a hidden alias, no visible choice
    assert StyleKitDDIMInvert.VALIDATE_INPUTS(store_blocks=old) is True
    assert StyleKitDDIMInvert.VALIDATE_INPUTS(store_blocks=AUTO_BLOCKS) is True
    assert "not one of" in StyleKitDDIMInvert.VALIDATE_INPUTS(store_blocks="auto (something else)")


def test_the_every_step_convention_samples_all_of_ddim_uniform(sd15):
    from stylekit.models.schedules import ddim_uniform_sigmas
    from stylekit.nodes.magicstyle import EVERY_STEP
    g = torch.Generator().manual_seed(0)
    content, style = ({"samples": torch.randn(1, 4, 16, 16, generator=g)} for _ in range(2))
    cond = [[torch.randn(1, 77, 64, generator=g), {}]]
    inv, inverted, sigmas = StyleKitDDIMInvert().invert(sd15, content, style, cond, 4, "output 6-11 (StyleID)",
                                                        "fp32", "cpu", "store", convention=EVERY_STEP)
    assert torch.equal(sigmas, ddim_uniform_sigmas(sd15.model_sampling, 4))  # every step, ending in 0
    assert {s for _, s in inv.store.features} == {float(s) for s in sigmas[:-1]}
    official = StyleKitDDIMInvert().invert(sd15, content, style, cond, 4, "output 6-11 (StyleID)", "fp32", "cpu",
                                           "store")[1]
    assert (official["samples"] - inverted["samples"]).abs().max() > 1e-2  # a different start


def test_invert_refuses_latents_and_prompts_of_another_family_by_name(sd15, sdxl):
    """A 16-channel (Flux) latent on SD1.5, or an SDXL-wide prompt on SD1.5, is refused naming both sides
    before the model runs (it ended in a raw conv / matmul error)."""
    import pytest
    from stylekit.errors import InputError
    g = torch.Generator().manual_seed(0)
    sd_latent = {"samples": torch.randn(1, 4, 16, 16, generator=g)}
    flux_latent = {"samples": torch.randn(1, 16, 16, 16, generator=g)}
    cond = [[torch.randn(1, 77, 64, generator=g), {}]]
    wide = [[torch.randn(1, 77, 80, generator=g), {}]]
    node = StyleKitDDIMInvert()
    with pytest.raises(InputError, match="style has 16-channel latents; this model works on 4-channel"):
        node.invert(sd15, sd_latent, flux_latent, cond, 2, "output 6-11 (StyleID)", "fp16", "cpu", "store")
    with pytest.raises(InputError, match="conditioning entry 0 is 80 wide; this sd15 model's cross-attention takes 64"):
        node.invert(sd15, sd_latent, sd_latent, wide, 2, "output 6-11 (StyleID)", "fp16", "cpu", "store")
