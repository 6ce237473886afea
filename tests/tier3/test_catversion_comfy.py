"""Tier 3: CatVersion on ComfyUI's own CLIP (SD1ClipModel, real tokenizer), VAE and UNet."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

TEXT = "a photo of a teapot"


def comfy_encode(clip, text=TEXT):
    import nodes
    return nodes.CLIPTextEncode().encode(clip, text)[0][0][0]


def test_apply_on_comfyui_clip_matches_the_bridge(comfy_nodes):
    from comfy_host import comfy_clip_tiny
    from stylekit.bridge.clip_text import BridgeCLIP, clip_text_from_transformers
    from stylekit.models.catversion import CatVersionPrefix, catversion_clip
    from stylekit.nodes.catversion import StyleKitCatVersionApply

    clip, hf = comfy_clip_tiny()
    prefix = CatVersionPrefix.random([9, 10, 11], 64, seed=3)
    before = comfy_encode(clip)
    patched = StyleKitCatVersionApply().apply(clip, prefix, 1.0, True)[0]
    got = comfy_encode(patched)
    # the bridge's encoder (checked against transformers and an explicit softmax in tier 2) on ComfyUI's token ids
    bridge = catversion_clip(BridgeCLIP(clip_text_from_transformers(hf)), prefix)
    ids = torch.tensor([[t for t, _ in clip.tokenize(TEXT)["l"][0]]])
    with torch.no_grad():
        want = bridge.encode_from_tokens({"l": ids})
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (got - before).abs().max() > 1e-3
    assert torch.equal(comfy_encode(clip), before)  # the input CLIP is untouched
    assert torch.equal(comfy_encode(StyleKitCatVersionApply().apply(clip, prefix, 0.0, True)[0]), before)
    # LoRA-style weight keys still reach the wrapped projections: same module paths as before
    names = dict(patched.patcher.model.named_modules())
    assert "clip_l.transformer.text_model.encoder.layers.9.self_attn.q_proj" in names


def test_train_under_inference_mode_leaves_everything_frozen(comfy_nodes, tmp_path):
    """ComfyUI runs nodes (and builds models) under torch.inference_mode(); training must still work."""
    import folder_paths
    from comfy_host import comfy_clip_tiny, comfy_sd15_random, comfy_vae_tiny
    from stylekit.models.catversion import CatVersionPrefix, load_prefix
    from stylekit.nodes.catversion import StyleKitCatVersionTrain

    folder_paths.add_model_folder_path("catversion", str(tmp_path / "cv"), is_default=True)
    with torch.inference_mode():
        model, (clip, _), vae = comfy_sd15_random(), comfy_clip_tiny(), comfy_vae_tiny()
        assert next(model.model.parameters()).is_inference()
        unet_before = {k: v.clone() for k, v in model.model.state_dict().items()}
        clip_before = {k: v.clone() for k, v in clip.cond_stage_model.state_dict().items()}
        # ComfyUI 0.33 starts every CLIP patcher with a manual_cast_dtype object patch; 0.3.64 with none
        patches_before = (dict(model.weight_wrapper_patches), dict(clip.patcher.object_patches))
        images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
        out = StyleKitCatVersionTrain().train(images, model, clip, vae, "teapot", 4, 1e-2, 2, True, "9, 10, 11", 0,
                                              "teapot")
    prefix, curve = out["result"]
    assert curve.shape[-1] == 3
    saved = load_prefix(str(tmp_path / "cv" / "teapot.safetensors"))
    assert saved.layers == [9, 10, 11] and torch.equal(saved.keys, prefix.keys.detach())
    assert not torch.equal(saved.keys, CatVersionPrefix.random([9, 10, 11], 64, seed=0).keys)
    for k, v in model.model.state_dict().items():
        assert torch.equal(v, unet_before[k]), k
    for k, v in clip.cond_stage_model.state_dict().items():
        assert torch.equal(v, clip_before[k]), k
    assert (model.weight_wrapper_patches, clip.patcher.object_patches) == patches_before  # inputs not patched
    assert not any("self_attn" in k or "layers" in k for k in clip.patcher.object_patches)


def test_a_loaded_clone_does_not_make_the_shared_clip_look_prefixed(comfy_nodes):
    """ComfyUI sets the loaded clone's object patches on the encoder all clones share. After the trainer's
    clone (whole layers patched) or an Apply clone ran, the plain CLIP still takes a prefix, with the same
    result as before any clone ran; a CLIP that has one of its own is still refused."""
    import pytest
    from comfy_host import comfy_clip_tiny
    from stylekit.errors import InputError
    from stylekit.models.catversion import CatVersionPrefix, catversion_clip
    from stylekit.nodes.catversion import StyleKitCatVersionApply

    clip, _ = comfy_clip_tiny()
    prefix = CatVersionPrefix.random([9, 10, 11], 64, seed=3)
    want = comfy_encode(catversion_clip(clip, prefix))
    for trainable in (True, False):
        with torch.inference_mode():
            comfy_encode(catversion_clip(clip, prefix, trainable=trainable))  # its patches are now live
        again = StyleKitCatVersionApply().apply(clip, prefix, 1.0, True)[0]  # refused here before the fix
        assert torch.equal(comfy_encode(again), want)
        with pytest.raises(InputError, match="already has a CatVersion prefix"):
            catversion_clip(again, prefix)
