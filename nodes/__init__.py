"""Node registry: every StyleKit node class, keyed by its id (all ids start with ``StyleKit``)."""
from .deadiff import StyleKitDEADiffApply, StyleKitDEADiffEncode, StyleKitDEADiffLoader
from .magicstyle import StyleKitDDIMInvert, StyleKitFeatureFusion
from .patch_map import StyleKitPatchMap

NODE_CLASS_MAPPINGS = {
    "StyleKitPatchMap": StyleKitPatchMap,
    "StyleKitDDIMInvert": StyleKitDDIMInvert,
    "StyleKitFeatureFusion": StyleKitFeatureFusion,
    "StyleKitDEADiffLoader": StyleKitDEADiffLoader,
    "StyleKitDEADiffEncode": StyleKitDEADiffEncode,
    "StyleKitDEADiffApply": StyleKitDEADiffApply,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "StyleKitPatchMap": "StyleKit Patch Map",
    "StyleKitDDIMInvert": "StyleKit DDIM Invert",
    "StyleKitFeatureFusion": "StyleKit Feature Fusion",
    "StyleKitDEADiffLoader": "StyleKit DEADiff Loader",
    "StyleKitDEADiffEncode": "StyleKit DEADiff Encode",
    "StyleKitDEADiffApply": "StyleKit DEADiff Apply",
}
