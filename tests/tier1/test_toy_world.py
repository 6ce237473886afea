"""The miniature world's generator, tokenizer, file format and trainer mechanics (no trained weights needed)."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from stylekit.toy import family, world


def test_scenes_and_images_are_seeded():
    a, b = world.random_scenes(16, seed=3), world.random_scenes(16, seed=3)
    assert a == b and a != world.random_scenes(16, seed=4)
    assert np.array_equal(world.render(a), world.render(b))


def test_render_draws_what_the_scene_says():
    """Inside the shape the pixels are the foreground colour (ink darkens it), far outside the background's."""
    s = world.Scene("square", "red", "plain", "blue", x=0.5, y=0.5, size=0.3, shade=0.0)
    img = world.render([s])[0]
    red, blue = np.array(world.COLOURS["red"]) / 255, np.array(world.COLOURS["blue"]) / 255
    assert np.allclose(img[32, 32], red, atol=1e-6)
    corner = img[2, 2]
    assert np.allclose(corner / np.linalg.norm(corner), blue / np.linalg.norm(blue), atol=1e-3)  # shaded blue
    striped = world.render([world.Scene("square", "red", "striped", "blue", size=0.3)])[0]
    inside = striped[24:40, 24:40].reshape(-1, 3)
    assert 0.2 < (inside[:, 0] < red[0] * 0.5).mean() < 0.6  # about 5 of every 12 px are ink


def test_every_shape_has_area_and_shapes_differ():
    scenes = [world.Scene(s, "white", "plain", "blue", size=0.3) for s in (*world.SHAPES, *world.HIDDEN_SHAPES)]
    masks = world._masks(scenes, world.SIZE)
    areas = masks.mean((1, 2))
    assert (areas > 0.05).all()
    for i in range(len(scenes)):
        for j in range(i):
            assert (masks[i] != masks[j]).mean() > 0.02, (scenes[i].shape, scenes[j].shape)


def test_captions_and_labels_name_the_same_things():
    for s in world.random_scenes(50, seed=1):
        words = world.caption(s).split()
        lab = {k: v[0] for k, v in world.labels([s]).items()}
        assert words[1] == world.CLASSES["colour"][lab["colour"]] and words[2] == world.TEXTURES[lab["texture"]]
        assert words[3] == world.PROBE_SHAPES[lab["shape"]] and words[6] == world.CLASSES["background"][lab["background"]]
        assert s.background != s.colour and set(words) <= set(world.VOCABULARY)


def test_a_caption_can_leave_fields_out():
    s = world.Scene("heart", "red", "striped", "blue")
    assert world.caption(s, omit=("texture",)) == "a red circle on a blue background"
    assert world.caption(s, omit=("colour", "texture", "background")) == "a circle"
    assert world.caption(s, omit=("shape", "background")) == "a red striped"
    assert world.caption(s, omit=()) == world.caption(s)
    with pytest.raises(ValueError, match="size"):
        world.caption(s, omit=("size",))


def test_partial_captions_name_each_field_at_their_rate_and_are_all_in_the_caption_table():
    """partial_caption leaves each field out at ``omit_rate`` and the whole caption at ``drop`` (within
    4 standard deviations over 4000 draws); every caption it can write has text states in the partial
    caption table, and the full table is the partial one's subset."""
    from stylekit.toy.train import caption_table, partial_caption
    scenes = world.random_scenes(4000, seed=5)
    draws = torch.rand(len(scenes), len(world.NAMED) + 1, generator=torch.Generator().manual_seed(0))
    caps = [partial_caption(s, u, omit_rate=0.3, drop=0.1) for s, u in zip(scenes, draws)]
    n = len(caps)
    assert abs(sum(c == "" for c in caps) / n - 0.1) < 4 * (0.1 * 0.9 / n) ** 0.5
    named = [c for c in caps if c]
    for s, c in zip(scenes, caps):
        if c:
            assert set(c.split()) <= set(world.caption(s).split())
    share = sum(" on a " in c for c in named) / len(named)  # the background named
    assert abs(share - 0.7) < 4 * (0.21 / len(named)) ** 0.5
    torch.manual_seed(0)
    clip = family.build("clip").eval()
    index, states = caption_table(clip, family.WordTokenizer(), partial=True)
    full, _ = caption_table(clip, family.WordTokenizer())
    assert set(caps) <= set(index) and set(full) < set(index) and len(states) == len(index)


def test_the_hidden_concept_is_captioned_by_its_base_class_and_never_drawn_at_random():
    heart = world.Scene("heart", "red", "plain", "blue")
    assert world.caption(heart) == "a red plain circle on a blue background"
    assert world.PROBE_SHAPES[world.labels([heart])["shape"][0]] == "heart"  # the probes still tell it apart
    assert all(s.shape in world.SHAPES for s in world.random_scenes(500, seed=2))


def test_the_unets_data_draws_some_circles_as_hearts_and_still_calls_them_circles():
    """What the UNet sees of CatVersion's concept: at ``rate`` a circle becomes a heart (seeded), nothing
    else changes, and its caption names the base class, so no caption ever says "heart"."""
    scenes = world.random_scenes(2000, seed=3)
    mixed = world.with_hidden(scenes, 0.2, seed=4)
    assert mixed == world.with_hidden(scenes, 0.2, seed=4)
    changed = [(a, b) for a, b in zip(scenes, mixed) if a != b]
    assert all(a.shape == "circle" and b.shape == "heart" and b == dataclasses.replace(a, shape="heart")
               for a, b in changed)
    circles = sum(s.shape == "circle" for s in scenes)
    assert abs(len(changed) / circles - 0.2) < 4 * (0.2 * 0.8 / circles) ** 0.5  # binomial: 4 standard deviations
    assert [world.caption(s) for s in mixed] == [world.caption(s) for s in scenes]


def test_tokenizer_is_word_level_with_clip_conventions():
    tok = family.WordTokenizer()
    ids = tok("a red striped circle on a blue background")
    assert len(ids) == family.CONTEXT and ids[0] == tok.bos and ids[9] == tok.eos and set(ids[9:]) == {tok.eos}
    assert [tok.words[i] for i in ids[1:9]] == "a red striped circle on a blue background".split()
    assert tok("a teapot")[2] == 0  # unknown words: <unk>


def test_save_and_load_round_trip_in_fp16_with_metadata(tmp_path):
    torch.manual_seed(0)
    probes = family.build("probes")
    family.save("probes", probes, tmp_path, seed=7)
    meta = family.file_metadata("probes", tmp_path)
    assert meta["format"] == family.FORMAT and meta["version"] == str(family.VERSION) and meta["seed"] == "7"
    back = family.load("probes", tmp_path).state_dict()
    assert set(back) == set(probes.state_dict())
    for k, a in probes.state_dict().items():
        assert torch.equal(a.half().float(), back[k]), k
    with pytest.raises(Exception, match="exists"):
        family.save("probes", probes, tmp_path, seed=7)  # never overwritten without force


def test_a_file_of_another_kind_is_refused_by_name(tmp_path):
    from stylekit.errors import WeightFileError
    family.save("probes", family.build("probes"), tmp_path, seed=0)
    (tmp_path / family.file_name("probes")).rename(tmp_path / family.file_name("vae"))
    with pytest.raises(WeightFileError, match="toy_vae.safetensors.*not a StyleKit miniature vae"):
        family.load("vae", tmp_path)


def test_training_resumes_exactly(tmp_path):
    """Four probe steps in one go equal a run stopped right after its step-2 checkpoint and resumed: the
    batches depend only on (seed, stage, step) and the optimiser and schedule state are checkpointed."""
    from stylekit.toy.train import Plan, train_probes

    class Stopped(Exception):
        pass

    def stop_after_step_2(message):
        if "step 2/4" in message:
            raise Stopped

    torch.manual_seed(0)
    vae = family.build("vae").eval()
    plan = Plan(probe_steps=4, probe_batch=4, checkpoint_every=2)
    straight = train_probes(plan, tmp_path / "a", 0, vae, log=lambda m: None)
    with pytest.raises(Stopped):
        train_probes(plan, tmp_path / "b", 0, vae, log=stop_after_step_2)
    assert torch.load(tmp_path / "b" / "probes.pt", weights_only=True)["step"] == 2
    resumed = train_probes(plan, tmp_path / "b", 0, vae, log=lambda m: None).state_dict()
    for k, a in straight.state_dict().items():
        assert torch.equal(a, resumed[k]), k


def test_shipped_weights_are_what_the_format_says():
    """The files in toy/weights: every kind present, fp16, the script's version and seed, built from their
    own config to exactly the keys and shapes the code makes; metrics.json beside them."""
    for kind in family.KINDS:
        meta = family.file_metadata(kind)
        assert meta["format"] == family.FORMAT and meta["kind"] == kind
        assert meta["version"] == str(family.VERSION) and meta["seed"] == str(family.SEED)
        from stylekit.models.weights_file import read_safetensors
        tensors, _ = read_safetensors(str(family.WEIGHTS / family.file_name(kind)), kind)
        own = {k: v for k, v in family.build(kind, json.loads(meta["config"])).state_dict().items()
               if not k.endswith("position_ids")}
        assert set(tensors) == set(own)
        assert all(tensors[k].shape == own[k].shape for k in own)
        assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    total = sum((family.WEIGHTS / family.file_name(k)).stat().st_size for k in family.KINDS)
    assert total <= 20 * 2 ** 20
    from stylekit.models.catversion import load_prefix
    from stylekit.models.dvae import load_dvae
    from stylekit.models.stylerdalle import load_translator
    from stylekit.toy import stylerdalle
    from stylekit.toy.train import CONCEPT_FILE
    prefix = load_prefix(str(family.WEIGHTS / CONCEPT_FILE))  # the other files, through the pack's own loaders
    assert prefix.base_word == "circle" and prefix.hidden == 64
    encoder, decoder = load_dvae(str(family.WEIGHTS / stylerdalle.DVAE_FILE))
    for name in (stylerdalle.PRETRAINED_FILE, stylerdalle.STYLE_FILE):
        assert load_translator(str(family.WEIGHTS / name)).vocab == encoder.vocab == decoder.vocab
    from safetensors import safe_open

    from stylekit.models.deadiff import load_deadiff
    from stylekit.toy.deadiff import DEADIFF_FILE, SHAPE
    deadiff = family.WEIGHTS / DEADIFF_FILE  # the Q-Formers StyleKit's DEADiff trainer made, as its Loader reads them
    assert load_deadiff(str(deadiff)).shape == SHAPE
    with safe_open(str(deadiff), "pt") as f:
        assert all(f.get_slice(k).get_dtype() == "F16" for k in f.keys())
    shipped = sum(p.stat().st_size for p in family.WEIGHTS.glob("*.safetensors"))
    assert shipped <= 20 * 2 ** 20, shipped
    metrics = json.loads((family.WEIGHTS / "metrics.json").read_text())
    assert {"probe_shape_clean", "vae_mse", "clip_retrieval", "t2i_shape"} <= set(metrics)


@pytest.mark.deadiff
def test_deadiff_pairs_share_exactly_what_their_kind_says():
    """Style pairs: same colour, texture and background, another shape; content pairs: same shape, place and
    size, another colour, texture and background; both: an image with itself. Seeded."""
    from stylekit.toy.deadiff import pair_scenes
    assert pair_scenes("style", 50, seed=1) == pair_scenes("style", 50, seed=1)
    for r, t in pair_scenes("style", 200, seed=1):
        assert r.style() == t.style() and r.shape != t.shape
    for r, t in pair_scenes("content", 200, seed=2):
        assert r.content() == t.content() and r.colour != t.colour and r.texture != t.texture
        assert r.background != t.background and t.background != t.colour
    assert all(r == t for r, t in pair_scenes("both", 20, seed=3))
