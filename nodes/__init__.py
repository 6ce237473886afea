"""Node registry: every StyleKit node class, keyed by its id (all ids start with ``StyleKit``)."""
from .magicstyle import StyleKitDDIMInvert, StyleKitFeatureFusion
from .patch_map import StyleKitPatchMap

NODE_CLASS_MAPPINGS = {
    "StyleKitPatchMap": StyleKitPatchMap,
    "StyleKitDDIMInvert": StyleKitDDIMInvert,
    "StyleKitFeatureFusion": StyleKitFeatureFusion,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "StyleKitPatchMap": "StyleKit Patch Map",
    "StyleKitDDIMInvert": "StyleKit DDIM Invert",
    "StyleKitFeatureFusion": "StyleKit Feature Fusion",
}
