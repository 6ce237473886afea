"""The one mask resize and the one masked blend every method uses (attention/masks.py)."""
import torch

from stylekit.attention.masks import blend, mask_tokens


def test_a_token_weighs_the_share_of_its_cell_the_mask_covers():
    mask = torch.zeros(64, 64)
    mask[:, :24] = 1  # 24 of 64 columns: at 8 tokens across, 3 tokens covered, none cut
    mask[5, 40:48] = 1  # one pixel row inside token (0, 5): 8 of its 64 pixels
    w = mask_tokens(mask, (8, 8)).reshape(8, 8)
    want = torch.zeros(8, 8)
    want[:, :3] = 1
    want[0, 5] = 8 / 64
    torch.testing.assert_close(w, want)
    # the mean weight is the mask's coverage whatever the grid (area averaging keeps mass)
    for hw in ((8, 8), (16, 16), (4, 2)):
        torch.testing.assert_close(mask_tokens(mask, hw).mean(), mask.mean())


def test_batched_masks_keep_their_rows_and_an_hw_mask_is_one_row():
    masks = torch.stack([torch.ones(16, 16), torch.zeros(16, 16)])
    w = mask_tokens(masks, (4, 4))
    assert w.shape == (2, 16, 1) and bool((w[0] == 1).all()) and bool((w[1] == 0).all())
    assert mask_tokens(torch.ones(16, 16), (4, 4)).shape == (1, 16, 1)


def test_blend_keeps_plain_at_zero_and_the_change_at_one():
    g = torch.Generator().manual_seed(0)
    plain, changed = torch.randn(2, 16, 8, generator=g), torch.randn(2, 16, 8, generator=g)
    w = mask_tokens(torch.stack([torch.ones(8, 8), torch.zeros(8, 8)]), (4, 4))
    out = blend(plain, changed, w)
    torch.testing.assert_close(out[0], changed[0])  # plain + (changed - plain): one rounding away
    assert torch.equal(out[1], plain[1])
    torch.testing.assert_close(blend(plain, changed, 0.25), 0.75 * plain + 0.25 * changed)
