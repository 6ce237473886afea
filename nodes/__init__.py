"""Node registry: every StyleKit node class, keyed by its id (all ids start with ``StyleKit``)."""
from .patch_map import StyleKitPatchMap

NODE_CLASS_MAPPINGS = {
    "StyleKitPatchMap": StyleKitPatchMap,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "StyleKitPatchMap": "StyleKit Patch Map",
}
