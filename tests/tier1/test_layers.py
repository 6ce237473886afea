import pytest

from stylekit.attention.layers import UnsupportedModelError, model_layers


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
    # a family's named sets are its registry entry's (here DEADiff's content split on SD1.5)
    assert model_layers(sd15_unet).select("deadiff_content") == [
        ("input", 7, 0), ("input", 8, 0), ("middle", 0, 0), ("output", 3, 0), ("output", 4, 0)]
    with pytest.raises(UnsupportedModelError, match="not defined for a sdxl"):
        model_layers(sdxl_unet).select("no_such_set")
    with pytest.raises(UnsupportedModelError, match="supports SD1.5 models; the model given is SDXL"):
        model_layers(sdxl_unet).require("catversion", "X")


def test_non_unet_is_refused():
    import torch
    with pytest.raises(UnsupportedModelError, match="Linear"):
        model_layers(torch.nn.Linear(2, 2))


def test_every_registry_entry_is_complete():
    """Each family names only known methods, and a method with a default block set has it on every family it runs on."""
    from stylekit.attention import families as fam
    assert set(fam.FAMILIES) == {"sd15", "sdxl", "flux", "flux2", "krea2", "qwen_image"}
    for f in fam.FAMILIES.values():
        assert f.methods <= set(fam.METHODS), f.name
        if fam.FEATURE_FUSION in f.methods:
            assert fam.FEATURE_FUSION in f.layer_sets, f.name
        if fam.DEADIFF in f.methods:
            assert {"deadiff_style", "deadiff_content"} <= set(f.layer_sets), f.name
        if f.is_dit:
            assert f.detect is not None and f.read is not None and f.patch >= 1
        else:  # a UNet's named sets lie inside its layout
            for name, blocks in f.layer_sets.items():
                assert set(blocks) <= f.layout, (f.name, name)


def test_a_new_family_is_one_entry(monkeypatch):
    """A DiT family added to the registry is recognised, read and gated with no other change."""
    import torch

    from stylekit.attention import families as fam

    class Toy(torch.nn.Module):
        width = 32

    entry = fam.Family("toy", "Toy DiT", "dit", frozenset({fam.TEACHER}), detect=lambda dm: isinstance(dm, Toy),
                       read=lambda dm: [fam.LayerInfo(("double", i, 0), dm.width, 2, 16) for i in range(3)], patch=2)
    monkeypatch.setitem(fam.FAMILIES, "toy", entry)
    layers = model_layers(Toy())
    assert layers.family == "toy" and layers.is_dit and layers.spec is entry
    assert layers.select("double") == [("double", i, 0) for i in range(3)]
    layers.require(fam.TEACHER, "Teacher")
    with pytest.raises(UnsupportedModelError, match=r"supports SD1.5 / SDXL / Flux.1 / Flux.2 / Krea 2 / Qwen-Image models; the model given is Toy DiT"):
        layers.require(fam.FEATURE_FUSION, "Feature Fusion")
