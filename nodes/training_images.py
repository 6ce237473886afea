"""StyleKit Training Images: a few images of any sizes as one square batch for a trainer."""
import torch

from ..models.square_images import FITS, SQUASH, square
from . import checks, specs
from .checks import InputError, boundary

INPUTS = 6  # image_1 .. image_6: the papers' handful (CatVersion: 3-5), no batching node needed
EACH = 10  # images an input may hold (a multi-frame file): 60 in all, within CatVersion Train's 64


class StyleKitTrainingImages:
    CATEGORY = "StyleKit"
    DESCRIPTION = ("Gathers a few images of any sizes and shapes into one square batch for StyleKit's trainers "
                   "(CatVersion Train, StylerDALLE Pretrain / Train Style), squared as their data loaders do: the "
                   "whole image resized to the side (or its largest centred square first).")
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("Every image of every input, in input order, as one batch of side x side images.",)
    FUNCTION = "gather"

    @classmethod
    def INPUT_TYPES(cls):
        one = "An image (or a batch: each of its images)."
        return {"required": {
            "image_1": specs.image(one, EACH),
            "side": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 8, "tooltip": "Each image's side after squaring (CatVersion trains at 512 px; StylerDALLE squashes to 256 px itself). A multiple of 8, the VAE's factor."}),
            "fit": (list(FITS), {"default": SQUASH, "tooltip": "squash: the whole image, its aspect ratio lost, as CatVersion's and StylerDALLE's loaders do; center crop: the largest centred square of each image (the textual-inversion loader's option), its sides lost."}),
        }, "optional": {f"image_{i}": specs.image(one, EACH) for i in range(2, INPUTS + 1)}}

    @boundary
    def gather(self, image_1, side, fit, image_2=None, image_3=None, image_4=None, image_5=None, image_6=None):
        if side % 8:  # here, not in VALIDATE_INPUTS: that would take ComfyUI's own min/max check of side away
            raise InputError(f"side is {side}; give a multiple of 8 (the VAE's factor), e.g. {side - side % 8}")
        given = [(f"image_{i}", x) for i, x in enumerate((image_1, image_2, image_3, image_4, image_5, image_6), 1)
                 if x is not None]
        for name, images in given:
            checks.at_most(images, EACH, name, f"{INPUTS * EACH} in all, the batch a trainer encodes at once")
        return (torch.cat([square(images, side, fit) for _, images in given]),)
