"""DEADiff's paired data from a user's folder: the manifest is read whole and checked before training."""
import json
import os

import pytest
from PIL import Image

from stylekit.errors import InputError
from stylekit.models.deadiff_data import MANIFEST, by_kind, read_pairs

pytestmark = pytest.mark.deadiff


def folder_with(tmp_path, lines, sizes=None):
    """A data folder holding a.png, b.png, c.png (16 px; ``sizes`` overrides one) and a manifest of ``lines``."""
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (sizes or {}).get(name, (16, 16)), "red").save(d / name)
    (d / MANIFEST).write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return d


GOOD = [{"kind": "style", "reference": "a.png", "target": "b.png", "caption": "a cat, watercolor"},
        {"kind": "content", "reference": "b.png", "target": "c.png", "caption": "a cat, ink"},
        {"kind": "both", "target": "a.png", "caption": ""},
        {"kind": "style", "reference": "a.png", "target": "b.png", "caption": "a cat, watercolor"}]


def test_a_good_manifest_gives_its_pairs_once_each(tmp_path):
    d = folder_with(tmp_path, GOOD + [""])
    pairs = read_pairs(str(d))
    assert [p.kind for p in pairs] == ["style", "content", "both"]  # the repeated line counts once
    assert pairs[2].reference == pairs[2].target == os.path.realpath(d / "a.png")
    assert {k: len(v) for k, v in by_kind(pairs).items()} == {"style": 1, "content": 1, "both": 1}


@pytest.mark.parametrize("line,match", [
    ("not json", "line 1 is not JSON"),
    ([1, 2], "line 1 must be an object"),
    ({"kind": "mixed", "reference": "a.png", "target": "b.png"}, "kind 'mixed'; choose one of"),
    ({"kind": "style", "reference": "../outside.png", "target": "b.png"}, "leads outside the folder"),
    ({"kind": "style", "reference": "nope.png", "target": "b.png"}, "'nope.png' does not exist"),
    ({"kind": "style", "reference": "a.png", "target": MANIFEST}, f"{MANIFEST} is not a readable image"),
    ({"kind": "style", "reference": "a.png", "target": "a.png"}, "non-reconstructive"),
    ({"kind": "content", "target": "a.png"}, "reference must be a path"),
    ({"kind": "style", "reference": "a.png", "target": "b.png", "caption": "x" * 1001}, "at most 1000 characters"),
])
def test_a_bad_line_is_refused_naming_it(tmp_path, line, match):
    (tmp_path / "outside.png").write_bytes(b"")
    d = folder_with(tmp_path, [line])
    with pytest.raises(InputError, match=match):
        read_pairs(str(d))


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "secret.png")
    d = folder_with(tmp_path, [{"kind": "style", "reference": "link.png", "target": "b.png"}])
    os.symlink(tmp_path / "secret.png", d / "link.png")
    with pytest.raises(InputError, match="leads outside the folder"):
        read_pairs(str(d))


def test_targets_of_mixed_sizes_are_refused(tmp_path):
    d = folder_with(tmp_path, GOOD[:2], sizes={"c.png": (16, 24)})
    with pytest.raises(InputError, match="line 2: target c.png is 16x24 px, the first target 16x16"):
        read_pairs(str(d))


def test_a_missing_or_empty_manifest_is_refused(tmp_path):
    with pytest.raises(InputError, match=f"no {MANIFEST} in the data folder"):
        read_pairs(str(tmp_path))
    d = folder_with(tmp_path, ["", "  "])
    with pytest.raises(InputError, match="names no pairs"):
        read_pairs(str(d))


def test_an_oversized_image_is_refused_from_its_header(tmp_path):
    d = folder_with(tmp_path, [{"kind": "style", "reference": "huge.png", "target": "b.png"}])
    Image.new("1", (8000, 8000)).save(d / "huge.png")  # 64 MP, a few KB on disk
    with pytest.raises(InputError, match="line 1: reference huge.png is 8000x8000 px, over 50 MP"):
        read_pairs(str(d))
