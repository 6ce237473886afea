import pytest

from stylekit.attention.layers import UnsupportedModelError, model_layers, register_layer_set


def test_sd15_layout(sd15_unet):
    ml = model_layers(sd15_unet)
    assert ml.family == "sd15"
    assert ml.select("middle") == [("middle", 0, 0)]
    assert len(ml.select("input")) == 6 and len(ml.select("output")) == 9
    # channels follow the diffusers block widths (32, 32, 64) at input 1, 4, 7
    assert [ml.by_key(("input", i, 0)).channels for i in (1, 4, 7)] == [32, 32, 64]
    assert all(l.context_dim == 64 for l in ml.layers)


def test_sdxl_layout_has_depth(sdxl_unet):
    ml = model_layers(sdxl_unet)
    assert ml.family == "sdxl"
    assert ml.select([("input", 7)]) == [("input", 7, 0), ("input", 7, 1)]
    with pytest.raises(UnsupportedModelError, match="carry no attention"):
        ml.select([("input", 1)])


def test_named_sets_and_family_errors(sd15_unet, sdxl_unet):
    register_layer_set("sd15", "test_set", [("output", 6), ("output", 11)])
    assert model_layers(sd15_unet).select("test_set") == [("output", 6, 0), ("output", 11, 0)]
    with pytest.raises(UnsupportedModelError, match="not defined for a sdxl"):
        model_layers(sdxl_unet).select("test_set")
    with pytest.raises(UnsupportedModelError, match="supports SD1.5 models; the model given is SDXL"):
        model_layers(sdxl_unet).require("sd15", method="X")


def test_non_unet_is_refused():
    import torch
    with pytest.raises(UnsupportedModelError, match="Linear"):
        model_layers(torch.nn.Linear(2, 2))
