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


def _input_folder(tmp_path):
    import folder_paths
    folder = tmp_path / "input"
    folder.mkdir(exist_ok=True)
    folder_paths.set_input_directory(str(folder))
    return folder


def test_build_pairs_then_train_then_apply_in_comfyui(comfy_nodes, tmp_path):
    """The DEADiff training path in a real ComfyUI: Build Pairs draws with ComfyUI's own sampler into the input
    folder, Train fine-tunes a loaded DEADiff on them (ComfyUI's CLIP, CLIP vision, VAE) and writes into
    models/deadiff, the Loader lists and reads the result, and Apply samples with it; the model given to the
    nodes samples bit-identically afterwards."""
    import folder_paths
    from comfy_host import comfy_clip_tiny, comfy_clip_vision_tiny, comfy_sd15_random, comfy_vae_tiny, write_tiny_deadiff
    from stylekit.models.deadiff_data import read_pairs
    from stylekit.nodes.deadiff import StyleKitDEADiffApply, StyleKitDEADiffEncode, StyleKitDEADiffLoader
    from stylekit.nodes.deadiff_train import StyleKitDEADiffBuildPairs, StyleKitDEADiffTrain
    inputs = _input_folder(tmp_path)
    models = tmp_path / "deadiff"
    folder_paths.add_model_folder_path("deadiff", str(models), is_default=True)
    model, (clip, _), vae = comfy_sd15_random(), comfy_clip_tiny(), comfy_vae_tiny()
    write_tiny_deadiff(model, models, "start.safetensors")
    g = torch.Generator().manual_seed(1)
    cond, neg = [[torch.randn(1, 77, 64, generator=g), {}]], [[torch.randn(1, 77, 64, generator=g), {}]]
    before = ksample(model, cond, neg)
    with torch.inference_mode():
        out = StyleKitDEADiffBuildPairs().build(model, clip, vae, "a cat\na ship\na tree", "ink\npixel art", TEMPLATE,
                                                2, 2, "", 64, 64, 2, 4.0, 0, "pairs")
    assert out["result"] == ("pairs",)
    pairs = read_pairs(str(inputs / "pairs"))
    assert {p.kind for p in pairs} == {"style", "content", "both"}
    start = StyleKitDEADiffLoader().load("start.safetensors")[0]
    cv = comfy_clip_vision_tiny(tmp_path)
    with torch.inference_mode():
        trained, curve = StyleKitDEADiffTrain().train(model, clip, cv, vae, "pairs", 2, 1e-3, 1, 2, 0, "trained",
                                                      deadiff=start)["result"]
    assert "trained.safetensors" in StyleKitDEADiffLoader.INPUT_TYPES()["required"]["deadiff_name"][0]
    loaded = StyleKitDEADiffLoader().load("trained.safetensors")[0]
    assert loaded.split is not None and not [p for p in models.iterdir() if "state" in p.name]
    tokens = StyleKitDEADiffEncode().encode(loaded, cv, torch.rand(1, 64, 64, 3), "style", "", None)[0]
    patched = StyleKitDEADiffApply().apply(model, tokens, 1.0, "official", True, 0.0, 1.0, "")[0]
    assert torch.isfinite(ksample(patched, cond, neg)).all()
    assert torch.equal(ksample(model, cond, neg), before)


TEMPLATE = "a {subject}, {style}"


def test_train_on_sdxl_builds_its_y_and_keeps_its_split(comfy_nodes, tmp_path):
    """DEADiff Train on ComfyUI's SDXL (a tiny UNet with SDXL's blocks and its 2816-wide y): the node builds y
    from each caption's pooled text and the target's size as the samplers do (without it the SDXL UNet
    refuses to run), and the file records StyleKit's SDXL split, which Apply then uses."""
    import folder_paths
    from comfy_host import comfy_clip_tiny, comfy_clip_vision_tiny, comfy_sdxl_random, comfy_vae_tiny, write_tiny_deadiff
    from stylekit.attention.layers import model_layers
    from stylekit.models.deadiff_inject import SDXL_CONTENT_BLOCKS, SDXL_STYLE_BLOCKS
    from stylekit.nodes.deadiff import StyleKitDEADiffApply, StyleKitDEADiffEncode, StyleKitDEADiffLoader
    from stylekit.nodes.deadiff_train import StyleKitDEADiffTrain
    from stylekit.toy.deadiff import write_pair_folder
    inputs = _input_folder(tmp_path)
    write_pair_folder(inputs / "pairs", per_kind=2, seed=0)
    models = tmp_path / "deadiff"
    folder_paths.add_model_folder_path("deadiff", str(models), is_default=True)
    model, (clip, _), vae = comfy_sdxl_random(), comfy_clip_tiny(), comfy_vae_tiny()

    class Pooled1280:
        """The tiny CLIP (64 wide) with its pooled output padded to OpenCLIP-bigG's 1280, as SDXL's y expects."""
        def tokenize(self, text):
            return clip.tokenize(text)

        def encode_from_tokens(self, tokens, return_pooled=False):
            cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
            pooled = torch.nn.functional.pad(pooled, (0, 1280 - pooled.shape[-1]))
            return (cond, pooled) if return_pooled else cond
    write_tiny_deadiff(model, models, "start_xl.safetensors")
    start = StyleKitDEADiffLoader().load("start_xl.safetensors")[0]
    cv = comfy_clip_vision_tiny(tmp_path)
    with torch.inference_mode():
        StyleKitDEADiffTrain().train(model, Pooled1280(), cv, vae, "pairs", 2, 1e-3, 1, 2, 0, "trained_xl", deadiff=start)
    loaded = StyleKitDEADiffLoader().load("trained_xl.safetensors")[0]
    assert loaded.split == {"style": SDXL_STYLE_BLOCKS, "content": SDXL_CONTENT_BLOCKS}
    tokens = StyleKitDEADiffEncode().encode(loaded, cv, torch.rand(1, 64, 64, 3), "style", "", None)[0]
    patched = StyleKitDEADiffApply().apply(model, tokens, 1.0, "official", False, 0.0, 1.0, "")[0]
    routers = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(routers) == set(model_layers(model).select(SDXL_STYLE_BLOCKS))


def test_captions_of_several_chunks_batch_with_short_ones(comfy_nodes, tmp_path):
    """ComfyUI's CLIP encodes a caption over 75 tokens as several 77-token chunks: Train's encoders repeat each
    context to a common length, as ComfyUI batches conditionings of different lengths, instead of failing."""
    from comfy_host import comfy_clip_tiny, comfy_clip_vision_tiny, comfy_sd15_random, comfy_vae_tiny
    from stylekit.nodes.deadiff_train import host_encoders
    model, (clip, _), vae = comfy_sd15_random(), comfy_clip_tiny(), comfy_vae_tiny()
    enc = host_encoders(model, clip, comfy_clip_vision_tiny(tmp_path), vae, torch.device("cpu"))
    long = " ".join(["castle"] * 100)
    with torch.inference_mode():
        context, extra = enc.captions(["a cat", long], torch.zeros(2, 4, 8, 8))
        short = enc.captions(["a cat"], torch.zeros(1, 4, 8, 8))[0]
    assert context.shape[:2] == (2, 154) and extra is None
    assert torch.equal(context[0], short[0].repeat(2, 1))
