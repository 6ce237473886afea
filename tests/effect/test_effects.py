"""Effect tier: each method's paper claim, in miniature, on the world StyleKit trained itself.

The probes (small classifiers trained on the world, >= 95 % on held-out images) judge every sample. Each
test measures the method ON and OFF on the same seeds: the claim must reach its target (stylekit.toy.
effects.TARGETS: beyond what chance reaches at this sample count, or a paired difference of two standard
deviations) with the method on, and the same figure must miss it with the method off, so no test passes
whatever the code does. Claims the CPU-trained miniature does not reach yet are strict xfails that name
the measured figure: they start failing (and must be turned into plain tests) the day the claim holds.
"""
import pytest
import torch

from stylekit.toy import effects, world
from stylekit.toy.family import images_tensor, load_world

pytestmark = pytest.mark.effect


def met(name, value):
    return effects.judged(name, value)["met"]


def on_not_off(claim, on, off, context):
    """The claim is met by the figure with the method on and missed by the same figure with it off (same seeds)."""
    assert met(claim, on), context
    assert not met(claim, off), context


def not_yet(reason):
    return pytest.mark.xfail(strict=True, reason=f"not reached by the CPU-trained miniature yet: {reason}")


@pytest.fixture(scope="module")
def toy():
    return load_world()


def test_probes_read_held_out_world_images(toy):
    """Probe accuracy on 256 unseen world images (hearts included), clean and through the VAE: >= 95 %."""
    scenes = world.random_scenes(256, seed=4242, shapes=world.PROBE_SHAPES)
    clean = images_tensor(scenes)
    for images in (clean, toy.to_image(toy.to_latent(clean))):
        read = toy.probes.read(images)
        for head, truth in world.labels(scenes).items():
            acc = float((read[head] == torch.from_numpy(truth)).float().mean())
            assert acc >= 0.95, (head, acc)


@pytest.fixture(scope="module")
def t2i(toy):
    return (effects.text_to_image(toy, effects.N_PROMPTS, seed=11),
            effects.text_to_image(toy, effects.N_PROMPTS, seed=11, conditioned=False))


@pytest.mark.parametrize("head", ["shape", "colour", "texture", "background"])
def test_text_to_image_follows_the_prompt(t2i, head):
    """The UNet draws what the caption names; with the empty prompt (same noise) only chance agrees."""
    on, off = t2i
    on_not_off(f"t2i_{head}", on[head], off[head], (on, off))


@pytest.fixture(scope="module")
def inverted(toy):
    # StyleID's published 50 steps: its skipped top step costs the round trip more at fewer (README); both
    # presets fuse the same inversions, as two Feature Fusion nodes fed by one DDIM Invert
    return effects.invert_pairs(toy, n=effects.N_PAIRS, seed=5, steps=50)


@pytest.fixture(scope="module", params=["StyleID", "MagicStyle"])
def fusion(request, toy, inverted):
    figures, _ = effects.feature_fusion(toy, inverted, preset=request.param)
    return request.param, figures


def test_inversion_then_plain_sampling_gives_the_content_back(fusion):
    """DDIM inversion and plain sampling from the inverted latent: the content's shape, texture and colour
    come back, and nothing of the style image does."""
    preset, f = fusion
    for what in ("shape", "texture", "colour"):
        assert met(f"inversion_{what}", f[f"inversion_{what}"]), (preset, f)
    for what in ("texture", "colour", "background"):
        assert not met(f"fusion_{what}_from_style", f[f"off_{what}_from_style"]), (preset, f)


def test_feature_fusion_keeps_the_content_shape(fusion):
    preset, f = fusion
    assert met("fusion_shape_from_content", f["fusion_shape_from_content"]), (preset, f)


FUSION_NOT_YET = {
    ("StyleID", "texture"): "texture from the style 0.17 vs 0.52 needed (the content's texture stays in 0.625; with "
                            "gamma 0 on all 16 attention layers it still stays: the miniature's texture runs through "
                            "its convolutions and skips, not its self-attention)",
    ("MagicStyle", "texture"): "texture from the style 0.08 vs 0.52 needed (the content's texture stays in 0.83)",
    ("MagicStyle", "colour"): "foreground colour from the style 0.375 vs 0.45 needed (StyleID: 0.92)",
}


@pytest.mark.parametrize("what", ["texture", "colour", "background"])
def test_feature_fusion_takes_the_style(request, fusion, what):
    """StyleID / MagicStyle: the style image's palette and texture reach the result; with fusion off (the
    same inverted latent sampled plainly) they do not."""
    preset, f = fusion
    if (preset, what) in FUSION_NOT_YET:
        request.applymarker(not_yet(FUSION_NOT_YET[preset, what]))
    on_not_off(f"fusion_{what}_from_style", f[f"fusion_{what}_from_style"], f[f"off_{what}_from_style"], (preset, f))


@pytest.fixture(scope="module")
def adapter_run(toy):
    figures, _ = effects.style_adapter(toy, n=effects.N_PAIRS, seed=3)
    return figures


@not_yet("prompt colour kept 0.21 with AdaIN vs 0.42 with add (a difference of +0.29 needed): in the miniature the "
         "channel statistics AdaIN borrows from the image branch carry the reference's colour")
def test_cross_modal_adain_keeps_the_prompts_colour_better_than_add(adapter_run):
    """StyleStudio's text-alignment claim: at the same style weight, cross-modal AdaIN keeps the colour the
    prompt names more often than the plain IP-Adapter sum."""
    f = adapter_run
    assert met("adain_over_add_colour_from_prompt", f["adain_over_add_colour_from_prompt"]), f


def test_cross_modal_adain_still_takes_the_references_texture(adapter_run):
    """The prompt names no texture: with cross-modal AdaIN the reference's texture reaches the sample; with no
    adapter (the same seeds) only chance agrees."""
    f = adapter_run
    on_not_off("adain_texture_from_reference", f["adain_texture_from_reference"], f["none_texture_from_reference"], f)


def test_a_negative_style_image_removes_its_texture(adapter_run):
    """Style-based CFG: the negative style image shows what is not wanted, the reference's texture (on its
    shape and layout, in other colours). With zero negative tokens that texture reaches the samples beyond
    chance; with the negative it no longer does (the guidance no longer amplifies it)."""
    f = adapter_run
    assert met("no_negative_texture_shown", f["no_negative_texture_shown"]), f
    assert met("negative_texture_shown", f["negative_texture_shown"]), f
    assert f["negative_texture_drop"] > 0, f


def test_the_teacher_keeps_the_unstylised_layout(adapter_run):
    """The teacher model: the stylised sample's shape position stays closer to the unstylised sample's
    (the gap shrinks by at least a quarter; without the teacher the gain is 0 by definition)."""
    f = adapter_run
    assert met("teacher_layout_gain", f["teacher_layout_gain"]), f
    assert f["teacher_layout_gap"] < f["no_teacher_layout_gap"], f


@pytest.fixture(scope="module")
def catversion_run(toy):
    figures, _ = effects.catversion(toy, n=effects.N_PAIRS, seed=7)
    return figures


@pytest.mark.parametrize("which", ["train", pytest.param("edit", marks=not_yet(
    "hearts in 0.04 of the prefixed samples of edited captions (other colour, texture, background; none without "
    "the prefix) vs 0.357 needed: the prefix, trained on one caption, carries the whole scene; at strength 0.3-0.7 "
    "the edits stay at 0.00-0.04, and trained on hearts over varied backgrounds (captioned 'a circle' or 'a red "
    "striped circle') the prefix loses the concept itself (0.00 / 0.125 on its caption, as without it)"))])
def test_catversion_prefix_brings_the_concept(catversion_run, which):
    """The prefix trained on hearts captioned 'circle' makes the caption draw hearts far more often than
    the plain text encoder (the UNet saw one circle in five drawn as a heart, always captioned 'circle'), on
    the training caption and on captions with other colours and textures."""
    f = catversion_run
    on_not_off("catversion_concept", f[f"prefix_{which}_concept"], f[f"plain_{which}_concept"], f)


@not_yet("the edit's colour holds in 0.25 of the prefixed samples (0.92 with the plain CLIP) vs 0.445 needed; "
         "0.17-0.25 at strength 0.3-0.7")
def test_catversion_edits_keep_their_colour(catversion_run):
    f = catversion_run
    assert met("catversion_edit_colour_kept", f["prefix_edit_colour_kept"]), f


@not_yet("masked CLIP-I 0.965 with the prefix vs 0.975 without: the miniature CLIP never read a caption that tells a "
         "heart from a circle, so its image embedding has no reason to separate them")
def test_masked_clip_i_ranks_the_concept_above_its_base_class(catversion_run):
    f = catversion_run
    assert f["prefix_masked_clip_i"] > f["plain_masked_clip_i"], f


@pytest.fixture(scope="module")
def dalle_run(toy):
    figures, _ = effects.stylerdalle(toy, n=effects.N_PAIRS, seed=13)
    return figures


@not_yet("'dotted' read in 0.21 of the translated images after 150 REINFORCE steps at lr 3e-5 (0.125 before): the "
         "reward rises (0.741 -> 0.761), and after 500 steps (0.744 -> 0.778) the dots are still read in 0.21: the reward "
         "climbs by what else the caption names, though on clean world images it tells dots apart (0.90 dotted, 0.54-0.68 "
         "the others); at lr 1e-4 the probes read 0.67 dotted only because the translator collapsed to speckle while the "
         "reward fell (0.74 -> 0.58)")
def test_stylerdalle_rl_moves_the_texture(dalle_run):
    """After REINFORCE towards one texture word (reward: the miniature CLIP), the translated images carry
    that texture far more often than the pre-trained translator's."""
    f = dalle_run
    on_not_off("stylerdalle_style_texture", f["after_style_texture"], f["before_style_texture"], f)


def test_stylerdalle_keeps_the_shape(dalle_run):
    f = dalle_run
    assert met("stylerdalle_shape_kept", f["after_shape_kept"]), f


@pytest.fixture(scope="module")
def deadiff_run(toy):
    # two IP-Adapter weights (not the default four): the sweep only has to bracket DEADiff's texture agreement
    # (0.33 and 0.58 of the reference's texture at 0.25 and 1; DEADiff's 0.50 matches the upper end)
    figures, _ = effects.deadiff(toy, toy.deadiff(), n=effects.N_PAIRS, seed=17, ip_weights=(0.25, 1.0))
    return figures


@not_yet("the reference's texture in 0.50 of the samples with DEADiff's style tokens (0.17 with none) vs 0.515 "
         "needed: 4000 steps of StyleKit's DEADiff trainer at lr 3e-3 (17 min); the IP-Adapter (2000 steps) reaches "
         "0.58 at weight 1. Before: 2000 steps at lr 1e-3 reached 0.21; 6000 steps at 3e-3 stay at 0.50")
def test_deadiff_takes_the_references_texture(deadiff_run):
    """DEADiff's style tokens (the reference through the style Q-Former, on the style layers) bring the
    reference's texture; with no tokens (the same seeds) only chance agrees."""
    f = deadiff_run
    on_not_off("deadiff_texture_from_reference", f["deadiff_texture_from_reference"], f["none_texture_from_reference"], f)


def test_deadiff_keeps_the_prompts_shape(deadiff_run):
    """The prompt decides the shape: DEADiff injects style tokens only on the layers that carry style."""
    f = deadiff_run
    assert met("deadiff_shape_from_prompt", f["deadiff_shape_from_prompt"]), f


@not_yet("DEADiff keeps the prompt's shape in 0.67 of the samples (0.46 with no tokens), the IP-Adapter at the "
         "weight matching its texture agreement (1: texture 0.58) in 0.50: +0.17, +0.29 needed; and DEADiff's texture "
         "(0.50) is still under its own target (6000 steps at 3e-3: texture 0.50, shape 0.50, +0.00)")
def test_deadiff_keeps_the_prompts_shape_better_than_the_ip_adapter_at_matched_texture(deadiff_run):
    """The paper's headline trade-off: at matched texture agreement (a texture that really moved), DEADiff
    keeps the prompt's shape more often than the plain IP-Adapter."""
    f = deadiff_run
    assert met("deadiff_texture_from_reference", f["deadiff_texture_from_reference"]), f
    assert met("deadiff_over_ip_shape_from_prompt", f["deadiff_over_ip_shape_from_prompt"]), f
