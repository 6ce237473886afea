"""StyleKit Patch Map: shows which blocks of a MODEL carry which StyleKit contributions."""
from ..attention.patch_map import render_patch_map, summarize
from .checks import boundary
from .images import pil_to_image


class StyleKitPatchMap:
    CATEGORY = "StyleKit"
    DESCRIPTION = ("Draws a map of the model's attention layers and the StyleKit contributions (and "
                   "other packs' replace patches) on each, with their weights and sigma windows.")
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("map", "summary")
    OUTPUT_TOOLTIPS = ("One row per attention layer; attn1 and attn2 columns coloured by contribution.",
                       "The same information as text.")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "Any SD1.5/SDXL MODEL, patched or not."})}}

    @boundary
    def run(self, model):
        return (pil_to_image(render_patch_map(model)), summarize(model))
