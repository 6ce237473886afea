"""Tier 3: DEADiff nodes with ComfyUI's own CLIP vision model, loader folder and KSampler."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def ksample(model, cond, neg, cfg=4.0):
    import nodes
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    return nodes.KSampler().sample(model, 0, 4, cfg, "ddim", "ddim_uniform", cond, neg, latent)[0]["samples"]


def test_deadiff_in_comfyui(comfy_nodes, tmp_path):
    import folder_paths
    from comfy_host import comfy_clip_vision_tiny, comfy_sd15_random, write_tiny_deadiff
    from stylekit.attention.layers import model_layers
    from tiny_models import tiny_clip_vision
    from stylekit.models.clip_preprocess import deadiff_pixels
    from stylekit.nodes.comfy_glue import vision_hidden_states
    from stylekit.nodes.deadiff import StyleKitDEADiffApply, StyleKitDEADiffEncode, StyleKitDEADiffLoader

    model = comfy_sd15_random()
    write_tiny_deadiff(model, tmp_path / "deadiff", "tiny.safetensors")
    folder_paths.add_model_folder_path("deadiff", str(tmp_path / "deadiff"), is_default=True)
    assert "tiny.safetensors" in StyleKitDEADiffLoader.INPUT_TYPES()["required"]["deadiff_name"][0]
    deadiff = StyleKitDEADiffLoader().load("tiny.safetensors")[0]

    hf = tiny_clip_vision()
    cv = comfy_clip_vision_tiny(tmp_path, hf)
    image = torch.rand(1, 120, 90, 3, generator=torch.Generator().manual_seed(0))
    px = deadiff_pixels(image)
    ref = tiny_clip_vision()  # ComfyUI stores CLIP vision weights in its text-encoder dtype (fp16 on CPU)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(cv.dtype).float())
        torch.testing.assert_close(vision_hidden_states(cv, px), ref(pixel_values=px, output_hidden_states=True).hidden_states[-2],
                                   atol=1e-4, rtol=1e-4)
    tokens = StyleKitDEADiffEncode().encode(deadiff, cv, image, "style", "", None)[0]

    g = torch.Generator().manual_seed(1)
    cond, neg = [[torch.randn(1, 77, 64, generator=g), {}]], [[torch.randn(1, 77, 64, generator=g), {}]]
    before = ksample(model, cond, neg)
    called = set()
    patched = StyleKitDEADiffApply().apply(model, tokens, 1.0, "official", True, 0.0, 1.0, "")[0]
    routers = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    for key, router in list(routers.items()):  # wrap to record that ComfyUI called every installed key
        routers[key] = (lambda r, k: (lambda q, kk, v, e: (called.add(k), r(q, kk, v, e))[1]))(router, key)
    out = ksample(patched, cond, neg)
    assert called == set(model_layers(model).keys)
    assert torch.isfinite(out).all() and (out - before).abs().mean() > 1e-3
    assert torch.equal(ksample(model, cond, neg), before)  # the input model is untouched


def test_extract_node_reads_and_writes_comfyuis_deadiff_folder(comfy_nodes, tmp_path):
    import folder_paths
    from comfy_host import comfy_sd15_random
    from stylekit.attention.layers import model_layers
    from tiny_models import tiny_deadiff_state_dict
    from stylekit.nodes.deadiff import StyleKitDEADiffExtract, StyleKitDEADiffLoader

    folder = tmp_path / "deadiff"
    folder.mkdir()
    folder_paths.add_model_folder_path("deadiff", str(folder), is_default=True)
    sd = tiny_deadiff_state_dict(model_layers(comfy_sd15_random()), seed=1)
    torch.save({"state_dict": sd, "global_step": 1}, folder / "official_tiny.ckpt")
    assert "official_tiny.ckpt" in StyleKitDEADiffExtract.INPUT_TYPES()["required"]["checkpoint"][0]
    out = StyleKitDEADiffExtract().extract("official_tiny.ckpt", "extracted_tiny")
    assert (folder / "extracted_tiny.safetensors").exists() and "extracted_tiny.safetensors" in out["result"][0]
    names = StyleKitDEADiffLoader.INPUT_TYPES()["required"]["deadiff_name"][0]
    assert "extracted_tiny.safetensors" in names and "official_tiny.ckpt" not in names
