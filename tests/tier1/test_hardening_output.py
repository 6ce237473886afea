"""Every file StyleKit writes goes through stylekit.files: names checked before any work, nothing
written outside the folder, nothing overwritten, nothing half-written."""
import os

import pytest
import torch

from stylekit.errors import OutputFileError, StyleKitError
from stylekit.files import MAX_NAME, output_target, write_new

BAD_NAMES = {
    "../../escape": "is a path", "/tmp/absolute": "is a path", "sub/dir": "is a path", "..\\win": "is a path",
    "C:evil": "is a path", "..": "is a path", "nul\x00byte": "control characters", "tab\tname": "control characters",
    "": "is empty", "   ": "is empty", "x" * 300: "characters long",
}


@pytest.mark.parametrize("name", sorted(BAD_NAMES), ids=lambda n: repr(n[:20]))
def test_bad_names_are_refused_before_work(tmp_path, name):
    with pytest.raises(OutputFileError, match=BAD_NAMES[name]):
        output_target(str(tmp_path / "models"), name, ".safetensors")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_extension_added_and_folder_made(tmp_path):
    t = output_target(str(tmp_path / "models" / "catversion"), "my_style", ".safetensors")
    assert t.path == os.path.join(os.path.realpath(tmp_path / "models" / "catversion"), "my_style.safetensors")
    assert output_target(str(tmp_path), "a.safetensors", ".safetensors").name == "a.safetensors"


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    folder, outside = tmp_path / "models", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    os.symlink(outside / "target.safetensors", folder / "link.safetensors")
    with pytest.raises(OutputFileError, match="outside the folder"):
        output_target(str(folder), "link", ".safetensors")


def test_unwritable_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(OutputFileError, match="not writable"):
            output_target(str(folder), "x", ".safetensors")
    finally:
        folder.chmod(0o700)


def test_nodes_number_taken_names_and_never_overwrite(tmp_path):
    (tmp_path / "style.safetensors").write_bytes(b"keep me")
    t = output_target(str(tmp_path), "style", ".safetensors")
    first = write_new(t, lambda tmp: open(tmp, "wb").write(b"one"))
    second = write_new(t, lambda tmp: open(tmp, "wb").write(b"two"))
    assert os.path.basename(first) == "style_00001.safetensors" and os.path.basename(second) == "style_00002.safetensors"
    assert (tmp_path / "style.safetensors").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["style.safetensors", "style_00001.safetensors",
                                                          "style_00002.safetensors"]


def test_tools_refuse_existing_outputs_unless_forced(tmp_path):
    (tmp_path / "out.safetensors").write_bytes(b"old")
    with pytest.raises(OutputFileError, match="exists.*--force"):
        output_target(str(tmp_path), "out.safetensors", ".safetensors", numbered=False)
    t = output_target(str(tmp_path), "out.safetensors", ".safetensors", numbered=False, force=True)
    write_new(t, lambda tmp: open(tmp, "wb").write(b"new"))
    assert (tmp_path / "out.safetensors").read_bytes() == b"new"


def test_a_failed_or_interrupted_write_leaves_nothing(tmp_path):
    t = output_target(str(tmp_path), "x", ".safetensors")

    def dies(tmp):
        open(tmp, "wb").write(b"half")
        raise KeyboardInterrupt  # ComfyUI's interrupt, or the disk filling up
    with pytest.raises(KeyboardInterrupt):
        write_new(t, dies)
    assert list(tmp_path.iterdir()) == []


def test_long_but_legal_name(tmp_path):
    name = "x" * (MAX_NAME - len(".safetensors"))
    assert output_target(str(tmp_path), name, ".safetensors").name == name + ".safetensors"


# --------------------------------------------------------------------------- the nodes and tools
def test_converter_cli_refuses_to_overwrite_an_input(tmp_path, capsys):
    from tiny_models import tiny_dvae, write_official_dvae_pickles
    from stylekit.tools.dalle_convert import main
    write_official_dvae_pickles(*tiny_dvae(seed=1), str(tmp_path))
    enc, dec = str(tmp_path / "encoder.pkl"), str(tmp_path / "decoder.pkl")  # dalle_convert enc.pkl dec.pkl enc.pkl
    before = open(enc, "rb").read()
    assert main([enc, dec, enc]) == 2
    assert "exists" in capsys.readouterr().err and open(enc, "rb").read() == before
    assert main([enc, dec, str(tmp_path / "new" / "dvae.safetensors")]) == 0  # the output folder is made
    assert main([enc, dec, str(tmp_path / "new" / "dvae.safetensors")]) == 2  # and never overwritten
    assert main([enc, dec, str(tmp_path / "new" / "dvae.safetensors"), "--force"]) == 0


def test_extractor_cli_checks_its_output_before_reading(tmp_path, capsys):
    from stylekit.tools.deadiff_extract import main
    (tmp_path / "out.safetensors").write_bytes(b"old")
    assert main([str(tmp_path / "missing.ckpt"), str(tmp_path / "out.safetensors")]) == 2
    assert "exists" in capsys.readouterr().err  # refused on the output, before looking at the checkpoint
    assert main([str(tmp_path / "missing.ckpt"), str(tmp_path / "fresh.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "fresh.safetensors").exists()


@pytest.mark.parametrize("name", ["../../escape", "/tmp/stylekit_abs", "nul\x00byte", "x" * 300])
def test_training_nodes_refuse_the_filename_before_training(sd15, monkeypatch, tmp_path, name):
    """A bad filename is refused before the work that would otherwise be lost (here training is made to
    fail loudly if it starts)."""
    from stylekit.bridge.clip_text import BridgeCLIP  # noqa: F401  (the bridge hosts the nodes)
    from tiny_models import tiny_bridge_clip, tiny_dvae, tiny_translator
    from stylekit.models.stylerdalle_pipeline import StylerDALLE
    from stylekit.nodes import catversion, stylerdalle
    monkeypatch.chdir(tmp_path)

    def no_training(*a, **k):
        raise AssertionError("training started before the filename was checked")
    monkeypatch.setattr(catversion, "train_prefix", no_training)
    monkeypatch.setattr(stylerdalle, "pretrain", no_training)
    monkeypatch.setattr(stylerdalle, "train_style", no_training)
    images = torch.rand(1, 64, 64, 3)
    clip = tiny_bridge_clip()
    with pytest.raises(StyleKitError, match="filename"):
        catversion.StyleKitCatVersionTrain().train(images, sd15, clip, None, "dog", 2, 1e-2, 1, False, "1, 2, 3", 0, name)
    enc, dec = tiny_dvae(seed=1)
    model = StylerDALLE(enc, dec, tiny_translator(seed=2))
    with pytest.raises(StyleKitError, match="filename"):
        stylerdalle.StyleKitStylerDALLEPretrain().train(model, 2, 1e-3, 1, 1, 0, name, images=images)
    with pytest.raises(StyleKitError, match="filename"):
        stylerdalle.StyleKitStylerDALLETrainStyle().train(model, images, None, None, "oil", "", 2, 1e-6, 1, False, 0, name)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_processes_new_file_mode(tmp_path, umask):
    """safetensors creates its files 0600; the pack's files get 0666 less the umask, as ComfyUI's outputs do
    (another account serving the same ComfyUI reads them where the umask allows)."""
    from safetensors.torch import save_file
    old = os.umask(umask)
    try:
        path = write_new(output_target(str(tmp_path), "m", ".safetensors"), lambda tmp: save_file({"x": torch.zeros(1)}, tmp))
    finally:
        os.umask(old)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~umask)
