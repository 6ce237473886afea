"""StyleKit DEADiff Build Pairs on the miniature world (outside ComfyUI the input folder is the current one;
ComfyUI's sampler, which the node draws with, is stood in for by the bridge's, as the command line draws):
the pairs it writes share what the manifest says they share, as the probes read the images, and a build
resumes, never redraws and never replaces. Tier 3 runs the node with ComfyUI's own sampler."""
import json

import pytest
import torch

from stylekit.errors import InputError
from stylekit.models.deadiff_data import read_image, read_pairs
from stylekit.nodes.deadiff_train import StyleKitDEADiffBuildPairs
from stylekit.toy.effects import beyond_chance
from stylekit.toy.family import load_world

pytestmark = pytest.mark.deadiff

SUBJECTS = "circle\nsquare\nstar\ncross"
STYLES = "red striped\ngreen dotted\nblue checked\npurple plain"
TEMPLATE = "a {style} {subject} on a white background"


def build(w, folder="pairs", seed=0, subjects=SUBJECTS):
    return StyleKitDEADiffBuildPairs().build(w.model, w.clip, w.vae, subjects, STYLES, TEMPLATE, 3, 3, "", 64, 64, 20,
                                             5.0, seed, folder)


@pytest.fixture(scope="module", autouse=True)
def bridge_sampler():
    from stylekit.bridge.sampling import text_to_image
    from stylekit.nodes import comfy_glue
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(comfy_glue, "text_to_image", text_to_image)
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory, bridge_sampler):
    """(the input folder, the node's output): one build, which the tests copy before they change anything."""
    import os
    root = tmp_path_factory.mktemp("input")
    here = os.getcwd()
    os.chdir(root)
    try:
        return root, build(load_world())
    finally:
        os.chdir(here)


def test_built_pairs_share_what_their_kind_says(built, monkeypatch):
    """Style pairs: the probes read the same texture in reference and target far beyond chance (1/4) and
    mostly different shapes; content pairs: the same shape beyond chance (1/7). The manifest passes the
    trainer's own checks. Two builds (seeds 0 and 1) are pooled: one build's 48 content pairs come from its
    16 images, so one unlucky draw of a few images sways them all (seed 0 alone: 0.25 of content pairs
    share their shape with the current miniature UNet, seeds 1-3: 0.58, 0.48, 0.72)."""
    root, out = built
    w = load_world()
    assert out["result"] == ("pairs",)
    monkeypatch.chdir(root)
    build(w, folder="pairs_1", seed=1)
    pairs = read_pairs(str(root / "pairs")) + read_pairs(str(root / "pairs_1"))
    images = {}

    def read(path):
        if path not in images:
            images[path] = w.probes.read(read_image(path)[None])
        return images[path]
    agree = {"style": {"texture": [], "shape": []}, "content": {"texture": [], "shape": []}}
    for p in pairs:
        if p.kind == "both":
            continue
        a, b = read(p.reference), read(p.target)
        for head in ("texture", "shape"):
            agree[p.kind][head].append(float(torch.equal(a[head], b[head])))
    mean = {k: {h: sum(v) / len(v) for h, v in heads.items()} for k, heads in agree.items()}
    n_style, n_content = len(agree["style"]["texture"]), len(agree["content"]["shape"])
    assert mean["style"]["texture"] >= beyond_chance(1 / 4, n_style), mean
    assert mean["content"]["shape"] >= beyond_chance(1 / 7, n_content), mean
    assert mean["style"]["shape"] < mean["content"]["shape"] and mean["content"]["texture"] < mean["style"]["texture"], mean


def test_a_build_resumes_draws_only_what_is_missing_and_refuses_another_plan(built, tmp_path, monkeypatch):
    import shutil
    shutil.copytree(built[0] / "pairs", tmp_path / "pairs")
    monkeypatch.chdir(tmp_path)
    w = load_world()
    folder = tmp_path / "pairs"
    manifest = (folder / "pairs.jsonl").read_text()
    first = json.loads(manifest.splitlines()[0])["target"]
    before = (folder / first).read_bytes()
    (folder / first).unlink()
    (folder / "pairs.jsonl").unlink()
    report = build(w)["ui"]["text"][0]
    assert "(1 drawn now)" in report, report
    assert (folder / first).read_bytes() == before  # the same cell seed draws the same image
    assert (folder / "pairs.jsonl").read_text() == manifest
    with pytest.raises(InputError, match="was written for other lists or another seed; give a new folder"):
        build(w, seed=1)
    assert (folder / "pairs.jsonl").read_text() == manifest
    with pytest.raises(InputError, match="data_folder .* leads out of ComfyUI's input folder"):
        build(w, folder="../elsewhere")
    with pytest.raises(InputError, match="subjects: give at least two entries"):
        build(w, folder="other", subjects="circle")
    assert not (tmp_path / "other").exists()  # refused before the folder is made
