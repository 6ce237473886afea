"""StyleKit Training Images and the squaring it does (models/square_images.square)."""
import pytest
import torch

from stylekit.errors import StyleKitError
from stylekit.models.square_images import CROP, SQUASH, square
from stylekit.nodes.training_images import EACH, StyleKitTrainingImages


def stripes(h, w, colours):
    """An IMAGE (1, h, w, 3) of vertical stripes of equal width, one per colour."""
    img = torch.empty(1, h, w, 3)
    for i, c in enumerate(colours):
        img[0, :, i * w // len(colours):(i + 1) * w // len(colours)] = torch.tensor(c)
    return img


RED, BLUE, GREEN = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)


def test_center_crop_keeps_the_middle_square_as_the_textual_inversion_loader_does():
    # 96 x 288: three 96 px stripes; the centred square is exactly the blue one
    out = square(stripes(96, 288, [RED, BLUE, GREEN]), 96, CROP)
    assert out.shape == (1, 96, 96, 3) and torch.equal(out, stripes(96, 96, [BLUE]))
    # rows / columns from (h - s) // 2, as textual inversion's loader slices them (odd margins round down)
    tall = torch.arange(11 * 4 * 3, dtype=torch.float32).reshape(1, 11, 4, 3) / 132
    assert torch.equal(square(tall, 4, CROP), tall[:, 3:7])
    wide = torch.arange(4 * 7 * 3, dtype=torch.float32).reshape(1, 4, 7, 3) / 84
    assert torch.equal(square(wide, 4, CROP), wide[:, :, 1:5])


def test_squash_keeps_the_whole_image():
    out = square(stripes(64, 128, [RED, GREEN]), 64, SQUASH)
    assert out.shape == (1, 64, 64, 3)
    # the left half is still red and the right half green (away from the seam the kernel blends)
    assert torch.allclose(out[0, :, :28], torch.tensor(RED).expand(64, 28, 3), atol=1e-6)
    assert torch.allclose(out[0, :, 36:], torch.tensor(GREEN).expand(64, 28, 3), atol=1e-6)
    # center crop of the same image drops half of each colour but keeps both
    cropped = square(stripes(64, 128, [RED, GREEN]), 64, CROP)
    assert torch.equal(cropped, stripes(64, 64, [RED, GREEN]))


def test_resizing_keeps_a_flat_colour_and_the_range():
    flat = torch.full((2, 50, 70, 3), 0.3)
    out = square(flat, 128, CROP)
    assert out.shape == (2, 128, 128, 3)
    # float32 bicubic weights sum to 1 up to a few ulps: the colour survives to float32 round-off
    assert (out - 0.3).abs().max() <= 4 * torch.finfo(torch.float32).eps
    noisy = square(torch.rand(1, 33, 41, 3), 96, SQUASH)  # bicubic overshoots at edges; clamped back
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_an_unknown_fit_is_refused_by_name():
    with pytest.raises(StyleKitError, match="fit is 'crop'; choose one of"):
        square(torch.rand(1, 8, 8, 3), 8, "crop")


def test_a_square_of_the_side_passes_unchanged():
    x = torch.rand(3, 64, 64, 3)
    assert torch.equal(square(x, 64, CROP), x) and torch.equal(square(x, 64, SQUASH), x)


def test_the_node_gathers_every_input_in_order_at_one_size():
    node = StyleKitTrainingImages()
    a, b, c = stripes(64, 64, [RED]), stripes(96, 48, [BLUE]).expand(2, -1, -1, -1), stripes(40, 120, [GREEN])
    (out,) = node.gather(image_1=a, side=64, fit=SQUASH, image_2=b, image_4=c)
    assert out.shape == (4, 64, 64, 3)
    for img, colour in zip(out, (RED, BLUE, BLUE, GREEN)):
        assert torch.allclose(img, torch.tensor(colour).expand(64, 64, 3), atol=1e-6)
    rgba = torch.rand(1, 64, 64, 4)  # the pack's IMAGE boundary: alpha dropped, as in every node
    assert torch.equal(node.gather(image_1=rgba, side=64, fit=CROP)[0], rgba[..., :3])


def test_the_node_refuses_a_side_off_the_vae_grid_and_an_oversized_input_before_work():
    node = StyleKitTrainingImages()
    with pytest.raises(StyleKitError, match="side is 100; give a multiple of 8"):
        node.gather(image_1=torch.rand(1, 64, 64, 3), side=100, fit=CROP)
    with pytest.raises(StyleKitError, match=f"image_3 holds {EACH + 1} images; this node takes at most {EACH}"):
        node.gather(image_1=torch.rand(1, 64, 64, 3), side=64, fit=CROP, image_3=torch.rand(EACH + 1, 8, 8, 3))


def test_stylerdalle_squares_its_photos_with_the_same_function():
    """StylerDALLE's square_pixels is square(..., SQUASH) in (B, C, H, W): one resize for both."""
    from stylekit.models.stylerdalle_pipeline import square_pixels
    x = torch.rand(2, 40, 70, 4)
    assert torch.equal(square_pixels(x, 32), square(x[..., :3], 32, SQUASH).movedim(-1, 1))
