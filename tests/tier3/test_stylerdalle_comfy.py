"""Tier 3: StylerDALLE's converter and loader on ComfyUI's model folders; training under ComfyUI's
inference mode with ComfyUI's own CLIP vision and CLIP text models."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def test_convert_load_train_stylize_in_comfyui(comfy_nodes, tmp_path):
    import folder_paths
    from comfy_host import comfy_clip_tiny, comfy_clip_vision_tiny
    from tiny_models import tiny_dvae, tiny_translator, write_official_dvae_pickles
    from stylekit.models.stylerdalle import save_translator
    from stylekit.nodes.stylerdalle import (StyleKitStylerDALLEConvert, StyleKitStylerDALLELoad, StyleKitStylerDALLEStylize,
                                            StyleKitStylerDALLETrainStyle)
    (tmp_path / "dalle").mkdir()
    (tmp_path / "stylerdalle").mkdir()
    write_official_dvae_pickles(*tiny_dvae(seed=1), tmp_path / "dalle")
    save_translator(tiny_translator(seed=2), str(tmp_path / "stylerdalle" / "tiny.safetensors"))
    folder_paths.add_model_folder_path("dalle", str(tmp_path / "dalle"), is_default=True)
    folder_paths.add_model_folder_path("stylerdalle", str(tmp_path / "stylerdalle"), is_default=True)
    spec = StyleKitStylerDALLEConvert.INPUT_TYPES()["required"]
    assert {"encoder.pkl", "decoder.pkl"} <= set(spec["encoder_pickle"][0])
    images = torch.rand(2, 100, 80, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        report = StyleKitStylerDALLEConvert().convert("encoder.pkl", "decoder.pkl", "dvae")["result"][0]
        assert "vocabulary 64" in report and (tmp_path / "dalle" / "dvae.safetensors").exists()
        assert "dvae.safetensors" in StyleKitStylerDALLELoad.INPUT_TYPES()["required"]["dvae_name"][0]
        model = StyleKitStylerDALLELoad().load("dvae.safetensors", "tiny.safetensors")[0]
        cv, clip = comfy_clip_vision_tiny(tmp_path), comfy_clip_tiny(width=48)[0]
        out = StyleKitStylerDALLETrainStyle().train(model, images, cv, clip, "an oil painting", "a photo", 2, 1e-3, 2,
                                                    True, 0, "oil")
        styled = out["result"][0]
        result = StyleKitStylerDALLEStylize().run(styled, images, 0, "sample", False, 8)[0]
    assert (tmp_path / "stylerdalle" / "oil.safetensors").exists()
    assert result.shape == (2, 256, 256, 3) and torch.isfinite(result).all()
    changed = [k for k, v in styled.translator.state_dict().items() if not torch.equal(v, model.translator.state_dict()[k])]
    assert changed and all(k.startswith(("nat_dec.", "outNet.")) for k in changed)
