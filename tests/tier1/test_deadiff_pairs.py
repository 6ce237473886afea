"""The DEADiff pair plan: which cells of the subject x style grid are drawn and how they pair (no model)."""
import pytest

from stylekit.errors import InputError
from stylekit.models.deadiff_pairs import plan_pairs, word_list

pytestmark = pytest.mark.deadiff

SUBJECTS = ["a cat", "a castle", "a bowl of fruit", "a ship", "a tree"]
STYLES = ["ink wash", "pixel art", "oil painting", "watercolor"]


def test_style_pairs_share_only_the_style_and_content_pairs_only_the_subject():
    plan = plan_pairs(SUBJECTS, STYLES, per_style=3, per_subject=2, seed=4)
    cell = {c.file: c for c in plan.cells}
    assert len(cell) == len(plan.cells)  # one file per cell
    for st in STYLES:
        assert sum(c.style == st for c in plan.cells) >= 3
    for su in SUBJECTS:
        assert sum(c.subject == su for c in plan.cells) >= 2
    kinds = {"style": 0, "content": 0, "both": 0}
    for line in plan.lines:
        kinds[line["kind"]] += 1
        tgt = cell[line["target"]]
        assert line["caption"] == tgt.prompt == f"a {tgt.subject}, {tgt.style}"
        if line["kind"] == "both":
            assert "reference" not in line
            continue
        ref = cell[line["reference"]]
        assert ref is not tgt
        if line["kind"] == "style":
            assert ref.style == tgt.style and ref.subject != tgt.subject
        else:
            assert ref.subject == tgt.subject and ref.style != tgt.style
    # every ordered pair within a style's (a subject's) cells, each cell once with itself
    assert kinds["style"] == sum(n * (n - 1) for n in (sum(c.style == st for c in plan.cells) for st in STYLES))
    assert kinds["content"] == sum(n * (n - 1) for n in (sum(c.subject == s for c in plan.cells) for s in SUBJECTS))
    assert kinds["both"] == len(plan.cells)


def test_the_plan_is_a_function_of_the_lists_and_the_seed():
    a, b = plan_pairs(SUBJECTS, STYLES, 3, 2, seed=4), plan_pairs(SUBJECTS, STYLES, 3, 2, seed=4)
    assert a == b and a.manifest() == b.manifest()
    other = plan_pairs(SUBJECTS, STYLES, 3, 2, seed=5)
    assert {(c.subject, c.style) for c in other.cells} != {(c.subject, c.style) for c in a.cells} or \
        [c.seed for c in other.cells] != [c.seed for c in a.cells]
    full = plan_pairs(SUBJECTS, STYLES, len(SUBJECTS), len(STYLES), seed=0)
    assert len(full.cells) == len(SUBJECTS) * len(STYLES)  # every cell at most once


def test_word_lists_and_bad_plans_are_refused_with_the_field():
    assert word_list("a cat\na ship\n\na cat\n", "subjects") == ["a cat", "a ship"]
    assert word_list("ink, pixel art", "styles") == ["ink", "pixel art"]
    with pytest.raises(InputError, match="subjects: give at least two entries"):
        word_list("a cat", "subjects")
    with pytest.raises(InputError, match="template must contain"):
        plan_pairs(SUBJECTS, STYLES, 2, 2, 0, template="a {subject}")
    with pytest.raises(InputError, match="per_style must be 2..5"):
        plan_pairs(SUBJECTS, STYLES, 6, 2, 0)


def test_shards_draw_every_image_once_and_the_manifest_waits_for_all(tmp_path):
    """Two shards (two processes of a launch) split the cells; the manifest is refused while images are
    missing and then written once; a second build draws nothing. The renderer is a stand-in: each cell's
    image is a flat colour from its seed, so the file tells which cell drew it."""
    import numpy as np
    from PIL import Image

    from stylekit.models.deadiff_data import read_pairs
    from stylekit.models.deadiff_pairs import build_pairs
    import torch
    plan = plan_pairs(SUBJECTS, STYLES, 2, 2, seed=1)
    calls = []

    def render(prompt, seed):
        calls.append((prompt, seed))
        return torch.full((1, 8, 8, 3), (seed % 251) / 255.0)
    folder = str(tmp_path / "pairs")
    assert build_pairs(folder, plan, render, shard=0, shards=2, write_manifest=False) == len(plan.cells[0::2])
    with pytest.raises(InputError, match="of the plan's images are not in the folder yet"):
        build_pairs(folder, plan, lambda p, s: pytest.fail("shard 0 must not draw shard 1's images"), shard=0,
                    shards=2, write_manifest=True)
    assert build_pairs(folder, plan, render, shard=1, shards=2) == len(plan.cells[1::2])
    assert sorted(calls) == sorted((c.prompt, c.seed) for c in plan.cells)  # each cell drawn exactly once
    for c in plan.cells:
        assert np.asarray(Image.open(tmp_path / "pairs" / c.file))[0, 0, 0] == c.seed % 251
    assert build_pairs(folder, plan, lambda p, s: pytest.fail("nothing is missing")) == 0
    assert len(read_pairs(folder)) == len(plan.lines)
