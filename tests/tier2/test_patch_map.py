from stylekit.attention.layers import model_layers
from stylekit.attention.router import Contribution, add_contribution
from stylekit.nodes.patch_map import StyleKitPatchMap


def test_patch_map_lists_contributions_weights_and_foreign(sd15):
    m = sd15.clone()
    m.set_model_patch_replace(lambda q, k, v, e: q, "attn2", "input", 1)
    add_contribution(m, Contribution("alpha", lambda q, k, v, e, n, w: n(q, k, v, e), weight=0.5,
                                     block_weights={("output", 6): 2.0}), model_layers(m).select("output"), "attn1")
    add_contribution(m, Contribution("beta", lambda q, k, v, e, n, w: n(q, k, v, e)), [("input", 1, 0)], "attn2")
    image, summary = StyleKitPatchMap().run(m)
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    lines = summary.splitlines()
    assert "sd15 layout, 16 attention layers, 10 patched" in lines[0]
    assert any("output 6.0 attn1: alpha w=1" in l for l in lines)
    assert any("output 7.0 attn1: alpha w=0.5" in l for l in lines)
    assert any("input 1.0 attn2: beta" in l and "over a foreign patch" in l for l in lines)


def test_patch_map_of_unpatched_model(sd15):
    image, summary = StyleKitPatchMap().run(sd15)
    assert summary.splitlines()[0].endswith("0 patched") and len(summary.splitlines()) == 1
