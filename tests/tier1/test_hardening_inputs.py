"""Inputs checked at the node boundary (nodes/checks.py): what is converted, what is refused, and why."""
import math

import pytest
import torch

from stylekit.errors import InputError
from stylekit.nodes import checks, specs


def test_image_channels_are_converted_as_the_tooltips_say():
    rgb = torch.rand(2, 16, 12, 3)
    assert torch.equal(checks.images(rgb), rgb)
    rgba = torch.cat([rgb, torch.zeros(2, 16, 12, 1)], -1)
    assert torch.equal(checks.images(rgba), rgb)  # alpha ignored
    gray = rgb[..., :1]
    assert torch.equal(checks.images(gray), gray.expand(2, 16, 12, 3))  # used as RGB
    assert "alpha" in specs.IMAGE_TOOLTIP and "grayscale" in specs.IMAGE_TOOLTIP


@pytest.mark.parametrize("image,match", [
    (torch.rand(0, 16, 16, 3), "empty batch"), (torch.rand(1, 1, 1, 3), "at least 8 px"),
    (torch.rand(1, 16, 16, 2), "2 channels"), (torch.rand(16, 16, 3), r"\(B, H, W, C\)"),
    (torch.full((1, 16, 16, 3), math.nan), "NaN"), (torch.full((1, 16, 16, 3), math.inf), "NaN or infinite"),
    ("not an image", "expected an IMAGE")])
def test_bad_images_are_refused(image, match):
    with pytest.raises(InputError, match=match):
        checks.images(image, "image")


def test_masks():
    assert checks.mask(torch.ones(8, 8)).shape == (1, 8, 8)  # one (H, W) mask
    for bad, match in [(torch.ones(0, 8, 8), "empty"), (torch.full((1, 8, 8), 1.5), "from 1.5 to 1.5; a MASK holds 0..1"),
                       (torch.full((1, 8, 8), -0.5), "-0.5 to -0.5"), (torch.full((1, 8, 8), math.nan), "NaN"),
                       (torch.ones(1, 1, 8, 8), r"\(B, H, W\)")]:
        with pytest.raises(InputError, match=match):
            checks.mask(bad)
    assert checks.mask_for(torch.ones(1, 8, 8), 3).shape[0] == 1  # one mask for all images
    assert checks.mask_for(torch.ones(3, 8, 8), 3).shape[0] == 3  # one per image
    with pytest.raises(InputError, match="2 masks for 3 images"):
        checks.mask_for(torch.ones(2, 8, 8), 3)


def test_numbers_strings_conditioning_latents():
    assert checks.number(0.5, "w", {"min": 0, "max": 1}) == 0.5
    for bad, match in [(math.nan, "finite"), (math.inf, "finite"), (2.0, "between 0 and 1"), ("1", "not a number"),
                       (True, "not a number")]:
        with pytest.raises(InputError, match=match):
            checks.number(bad, "w", {"min": 0, "max": 1})
    with pytest.raises(InputError, match="NUL"):
        checks.text("a\x00b", "base_word")
    with pytest.raises(InputError, match="empty"):
        checks.conditioning([], "conditioning")
    with pytest.raises(InputError, match="empty tensor"):
        checks.conditioning([[torch.zeros(1, 0, 8), {}]], "conditioning")
    for bad in ([[torch.full((1, 2, 8), math.nan), {}]], [[torch.zeros(1, 2, 8), {"pooled_output": torch.full((1, 8), math.inf)}]],
                [[torch.zeros(1, 2, 8), {"guidance": math.nan}]]):  # no silent non-finite image
        with pytest.raises(InputError, match="NaN or infinite|finite number"):
            checks.conditioning(bad, "conditioning")
    assert checks.conditioning([[torch.zeros(1, 2, 8), {"guidance": 3.5, "pooled_output": torch.zeros(1, 8)}]], "c")
    with pytest.raises(InputError, match="empty batch"):
        checks.latent({"samples": torch.zeros(0, 4, 8, 8)}, "latent")
    with pytest.raises(InputError, match="NaN"):
        checks.latent({"samples": torch.full((1, 4, 8, 8), math.nan)}, "latent")


def test_block_weights_must_name_blocks_the_model_has():
    from stylekit.attention.layers import model_layers, parse_block_weights
    from tiny_models import tiny_sd15_unet
    layers = model_layers(tiny_sd15_unet(seed=0))
    assert parse_block_weights("output 6=0.5, input 1.0=0", layers) == {("output", 6): 0.5, ("input", 1, 0): 0.0}
    with pytest.raises(InputError, match=r"names output 40, middle 0\.3.*its attention blocks are: input 1, input 2"):
        parse_block_weights("output 40=1, middle 0.3=1", layers)
    with pytest.raises(InputError, match="not a finite number"):
        parse_block_weights("output 6=nan", layers)
    with pytest.raises(InputError, match="beyond"):  # 1e30 passed and sampled non-finite images
        parse_block_weights("output 6=1e30", layers)
    assert parse_block_weights("output 6=-2.5", layers) == {("output", 6): -2.5}
    with pytest.raises(InputError, match="cannot read 'output six=1'"):
        parse_block_weights("output six=1", layers)


def test_the_boundary_decorator_checks_by_declared_type():
    class Node:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"image": ("IMAGE", {}), "weight": ("FLOAT", {"min": 0.0, "max": 1.0}),
                                 "mode": (["a", "b"], {})}, "optional": {"mask": ("MASK", {})}}

        @checks.boundary
        def run(self, image, weight, mode, mask=None):
            return image, mask

    image, mask = Node().run(torch.rand(1, 8, 8, 4), 0.5, "a", torch.ones(8, 8))
    assert image.shape == (1, 8, 8, 3) and mask.shape == (1, 8, 8)
    for kwargs, match in [(dict(weight=math.nan), "weight is nan"), (dict(mode="c"), "choose one of"),
                          (dict(image=torch.rand(0, 8, 8, 3)), "image is an empty batch")]:
        with pytest.raises(InputError, match=match):
            Node().run(**dict(dict(image=torch.rand(1, 8, 8, 3), weight=0.5, mode="a"), **kwargs))


def test_typed_lists_are_bounded_and_sets_have_no_repeats():
    from stylekit.nodes.comfy_glue import MAX_LIST_TEXT, number_list
    assert number_list("9, 10; 11", int, "layers", unique=True) == [9, 10, 11]
    assert number_list("1, 1, 0.5", float, "mix_weights") == [1.0, 1.0, 0.5]  # weights may repeat
    with pytest.raises(InputError, match="names 10 twice"):
        number_list("9, 10, 10", int, "layers", unique=True)
    with pytest.raises(InputError, match="characters long"):  # refused before splitting a megabyte of repeats
        number_list("9, " * (MAX_LIST_TEXT // 3 + 1), int, "layers")
    with pytest.raises(InputError, match="at most 4"):
        number_list("1, 2, 3, 4, 5", int, "layers", max_items=4)


BAD_AT_VALIDATION = {  # field -> (a bad value, words of its message), for every node that validates the field
    "filename": ("../escape", "is a path"),
    "layers": ("9, 9", "twice"),
    "mix_weights": ("1, x", "cannot read"),
    "block_weights": ("output 5=1e30", "beyond"),
    "folder": ("/etc", "path on the server"),
    "data_folder": ("/etc", "path on the server"),
    "store_blocks": ("auto (no such set)", "not one of"),
}


def test_cheap_checks_refuse_at_validation_and_pass_links_and_good_values():
    """Each node's VALIDATE_INPUTS (what ComfyUI runs before any node executes) refuses a bad value of each
    field it names, passes a linked field (None) and the node's own defaults, and names only text or combo
    inputs the node declares (ComfyUI leaves those fields' checks to it, and checks nothing in text fields)."""
    import inspect

    from stylekit.nodes import NODE_CLASS_MAPPINGS
    tried = 0
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        validate = getattr(cls, "VALIDATE_INPUTS", None)
        if validate is None:
            continue
        declared = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
        fields = [n for n in inspect.getfullargspec(validate).args if n != "cls"]
        assert fields, node_id
        for name in fields:
            typ, opts = declared[name][0], declared[name][1]
            assert typ == "STRING" or isinstance(typ, list), (node_id, name, typ)
            bad, words = BAD_AT_VALIDATION[name]
            msg = validate(**{name: bad})
            assert isinstance(msg, str) and words in msg, (node_id, name, msg)
            assert validate(**{name: None}) is True
            assert validate(**{name: opts.get("default", "x")}) is True, (node_id, name)
            tried += 1
    assert tried >= 11


def test_batches_beyond_a_nodes_bound_are_refused_by_name():
    images = torch.zeros(17, 8, 8, 3)
    assert checks.at_most(images, 17, "image", "x") is images
    with pytest.raises(InputError, match="image holds 17 images; this node takes at most 16 \\(each adds tokens\\)"):
        checks.at_most(images, 16, "image", "each adds tokens")
