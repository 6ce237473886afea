"""StylerDALLE through its nodes without ComfyUI: convert (node-free function and CLI), load, stylise,
pre-train and train a style with a tiny CLIP pair, on tiny dVAE / translator files."""
import pytest
import torch

from tiny_models import (tiny_bridge_clip, tiny_bridge_clip_vision, tiny_dvae, tiny_translator,
                                  write_official_dvae_pickles)
from stylekit.models.stylerdalle import save_translator
from stylekit.nodes.stylerdalle import (NEW, StyleKitStylerDALLELoad, StyleKitStylerDALLEPretrain,
                                        StyleKitStylerDALLEStylize, StyleKitStylerDALLETrainStyle)
from stylekit.models.dvae import convert_files
from stylekit.tools.dalle_convert import main as convert_main


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside ComfyUI the nodes save next to the working directory
    enc, dec = tiny_dvae(seed=1)
    write_official_dvae_pickles(enc, dec, tmp_path)
    assert convert_main([str(tmp_path / "encoder.pkl"), str(tmp_path / "decoder.pkl"), str(tmp_path / "dvae.safetensors")]) == 0
    save_translator(tiny_translator(seed=2), str(tmp_path / "tiny.safetensors"))
    return tmp_path


def images(n, seed=0, size=(90, 120)):
    return torch.rand(n, *size, 3, generator=torch.Generator().manual_seed(seed))


def test_convert_refuses_swapped_parts(files):
    with pytest.raises(ValueError, match="holds the dVAE decoder, given as the encoder"):
        convert_files(str(files / "decoder.pkl"), str(files / "encoder.pkl"), str(files / "x.safetensors"))
    assert convert_main([str(files / "missing.pkl"), str(files / "decoder.pkl"), str(files / "y.safetensors")]) == 2


def test_stylize_is_seeded_and_independent_of_batching(files):
    model = StyleKitStylerDALLELoad().load(str(files / "dvae.safetensors"), str(files / "tiny.safetensors"))[0]
    x = images(3)
    out = StyleKitStylerDALLEStylize().run(model, x, 5, "sample", False, 8)[0]
    assert out.shape == (3, 256, 256, 3) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.equal(out, StyleKitStylerDALLEStylize().run(model, x, 5, "sample", False, 1)[0])
    assert torch.equal(out[1:2], StyleKitStylerDALLEStylize().run(model, x[1:2], 6, "sample", False, 8)[0])
    assert not torch.equal(out, StyleKitStylerDALLEStylize().run(model, x, 6, "sample", False, 8)[0])
    argmax = StyleKitStylerDALLEStylize().run(model, x, 0, "argmax", False, 8)[0]
    assert torch.equal(argmax, StyleKitStylerDALLEStylize().run(model, x, 99, "argmax", False, 8)[0])


def test_new_translator_is_paper_sized_for_the_dvae(files):
    model = StyleKitStylerDALLELoad().load(str(files / "dvae.safetensors"), NEW)[0]
    t = model.translator
    assert (t.input_dim, t.vocab, t.linear_proj.out_features, t.heads, len(t.nat_dec.transformer.layers)) == (8, 64, 512, 8, 12)


def test_a_new_translator_starts_from_the_same_weights_every_run(files):
    """A workflow that pre-trains from (new, untrained) gives the same translator on every run (its Pretrain seed
    alone cannot make it so: the weights are made in Load), and Load leaves the global RNG where it was."""
    def new():
        return StyleKitStylerDALLELoad().load(str(files / "dvae.safetensors"), NEW)[0].translator.state_dict()
    torch.manual_seed(123)
    a = new()
    after_a = torch.rand(1)
    torch.manual_seed(123)
    b = new()
    assert torch.equal(torch.rand(1), after_a)
    torch.manual_seed(7)
    c = new()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)


def test_pretrain_then_train_style_nodes(files):
    model = StyleKitStylerDALLELoad().load(str(files / "dvae.safetensors"), str(files / "tiny.safetensors"))[0]
    before = {k: v.clone() for k, v in model.translator.state_dict().items()}
    out = StyleKitStylerDALLEPretrain().train(model, 3, 1e-3, 2, 1, 0, "pre", images(2))
    pre, curve = out["result"]
    assert curve.shape[-1] == 3 and (files / "pre.safetensors").exists() and "saved" in out["ui"]["text"][0]
    assert all(torch.equal(before[k], v) for k, v in model.translator.state_dict().items())  # input untouched
    changed = {k for k, v in pre.translator.state_dict().items() if not torch.equal(before[k], v)}
    assert "linear_proj.weight" in changed and "outNet.weight" in changed  # stage 1 trains everything

    cv, clip = tiny_bridge_clip_vision(width=48), tiny_bridge_clip(width=48)  # one CLIP space, 48 wide
    res = StyleKitStylerDALLETrainStyle().train(pre, images(2, 3), cv, clip, "an oil painting", "a cat\na dog",
                                                2, 1e-3, 2, False, 0, "oil")
    styled, rewards = res["result"]
    assert styled.style == "an oil painting" and (files / "oil.safetensors").exists() and rewards.shape[-1] == 3
    changed = {k for k, v in styled.translator.state_dict().items() if not torch.equal(pre.translator.state_dict()[k], v)}
    assert changed and all(k.startswith(("nat_dec.", "outNet.")) for k in changed)
    with pytest.raises(ValueError, match="3 captions for 2 images"):
        StyleKitStylerDALLETrainStyle().train(pre, images(2), cv, clip, "x", "a\nb\nc", 1, 1e-3, 2, False, 0, "z")
    with pytest.raises(ValueError, match="64 wide, image embeddings 48"):
        StyleKitStylerDALLETrainStyle().train(pre, images(2), cv, tiny_bridge_clip(width=64), "x", "a", 1, 1e-3, 2, False, 0, "z")


def test_pretrain_reads_a_folder_inside_the_input_folder_only(files, tmp_path_factory):
    from PIL import Image
    # outside ComfyUI the current folder (the fixture's, files) stands for ComfyUI's input folder
    (files / "photos").mkdir()
    for i in range(2):
        Image.new("RGB", (70 + i, 50), (i * 100, 50, 200)).save(files / "photos" / f"p{i}.png")
    model = StyleKitStylerDALLELoad().load(str(files / "dvae.safetensors"), str(files / "tiny.safetensors"))[0]
    out = StyleKitStylerDALLEPretrain().train(model, 1, 1e-3, 2, 0, 0, "folder", None, "photos")
    assert out["result"][1].shape[-1] == 3
    outside = tmp_path_factory.mktemp("elsewhere")
    (files / "link").symlink_to(outside)
    for folder, match in ((str(files / "photos"), "a path on the server"), ("../photos", "leads out"),
                          ("link", "leads out"), ("nothing_here", "input/nothing_here is not a folder")):
        with pytest.raises(ValueError, match=match) as err:
            StyleKitStylerDALLEPretrain().train(model, 1, 1e-3, 2, 0, 0, "folder", None, folder)
        assert str(files) not in str(err.value) and str(outside) not in str(err.value)  # no server paths
    (files / "big").mkdir()
    Image.new("1", (8000, 8000)).save(files / "big" / "huge.png")  # 64 MP, a few KB on disk
    with pytest.raises(ValueError, match="8000x8000 px"):
        StyleKitStylerDALLEPretrain().train(model, 1, 1e-3, 2, 0, 0, "folder", None, "big")
    with pytest.raises(ValueError, match="give photos"):
        StyleKitStylerDALLEPretrain().train(model, 1, 1e-3, 2, 0, 0, "none")
