"""Node registry: every StyleKit node class, keyed by its id (all ids start with ``StyleKit``)."""
from .catversion import (
                         StyleKitCatVersionApply,
                         StyleKitCatVersionLoad,
                         StyleKitCatVersionScore,
                         StyleKitCatVersionTrain,
)
from .deadiff import StyleKitDEADiffApply, StyleKitDEADiffEncode, StyleKitDEADiffExtract, StyleKitDEADiffLoader
from .deadiff_train import StyleKitDEADiffBuildPairs, StyleKitDEADiffTrain
from .magicstyle import StyleKitDDIMInvert, StyleKitFeatureFusion
from .patch_map import StyleKitPatchMap
from .stylerdalle import (
                         StyleKitStylerDALLEConvert,
                         StyleKitStylerDALLELoad,
                         StyleKitStylerDALLEPretrain,
                         StyleKitStylerDALLEStylize,
                         StyleKitStylerDALLETrainStyle,
)
from .stylestudio import StyleKitAdapterLoader, StyleKitStyleAdapter, StyleKitTeacherLayout
from .training_images import StyleKitTrainingImages

NODE_CLASS_MAPPINGS = {
    "StyleKitPatchMap": StyleKitPatchMap,
    "StyleKitDDIMInvert": StyleKitDDIMInvert,
    "StyleKitFeatureFusion": StyleKitFeatureFusion,
    "StyleKitDEADiffExtract": StyleKitDEADiffExtract,
    "StyleKitDEADiffLoader": StyleKitDEADiffLoader,
    "StyleKitDEADiffEncode": StyleKitDEADiffEncode,
    "StyleKitDEADiffApply": StyleKitDEADiffApply,
    "StyleKitDEADiffBuildPairs": StyleKitDEADiffBuildPairs,
    "StyleKitDEADiffTrain": StyleKitDEADiffTrain,
    "StyleKitCatVersionLoad": StyleKitCatVersionLoad,
    "StyleKitCatVersionApply": StyleKitCatVersionApply,
    "StyleKitCatVersionTrain": StyleKitCatVersionTrain,
    "StyleKitCatVersionScore": StyleKitCatVersionScore,
    "StyleKitAdapterLoader": StyleKitAdapterLoader,
    "StyleKitStyleAdapter": StyleKitStyleAdapter,
    "StyleKitTeacherLayout": StyleKitTeacherLayout,
    "StyleKitStylerDALLELoad": StyleKitStylerDALLELoad,
    "StyleKitStylerDALLEStylize": StyleKitStylerDALLEStylize,
    "StyleKitStylerDALLEPretrain": StyleKitStylerDALLEPretrain,
    "StyleKitStylerDALLETrainStyle": StyleKitStylerDALLETrainStyle,
    "StyleKitStylerDALLEConvert": StyleKitStylerDALLEConvert,
    "StyleKitTrainingImages": StyleKitTrainingImages,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "StyleKitPatchMap": "StyleKit Patch Map",
    "StyleKitDDIMInvert": "StyleKit DDIM Invert",
    "StyleKitFeatureFusion": "StyleKit Feature Fusion",
    "StyleKitDEADiffExtract": "StyleKit DEADiff Extract",
    "StyleKitDEADiffLoader": "StyleKit DEADiff Loader",
    "StyleKitDEADiffEncode": "StyleKit DEADiff Encode",
    "StyleKitDEADiffApply": "StyleKit DEADiff Apply",
    "StyleKitDEADiffBuildPairs": "StyleKit DEADiff Build Pairs",
    "StyleKitDEADiffTrain": "StyleKit DEADiff Train",
    "StyleKitCatVersionLoad": "StyleKit CatVersion Load",
    "StyleKitCatVersionApply": "StyleKit CatVersion Apply",
    "StyleKitCatVersionTrain": "StyleKit CatVersion Train",
    "StyleKitCatVersionScore": "StyleKit CatVersion Score",
    "StyleKitAdapterLoader": "StyleKit Adapter Loader",
    "StyleKitStyleAdapter": "StyleKit Style Adapter",
    "StyleKitTeacherLayout": "StyleKit Teacher Layout",
    "StyleKitStylerDALLELoad": "StyleKit StylerDALLE Load",
    "StyleKitStylerDALLEStylize": "StyleKit StylerDALLE Stylize",
    "StyleKitStylerDALLEPretrain": "StyleKit StylerDALLE Pretrain",
    "StyleKitStylerDALLETrainStyle": "StyleKit StylerDALLE Train Style",
    "StyleKitStylerDALLEConvert": "StyleKit StylerDALLE Convert",
    "StyleKitTrainingImages": "StyleKit Training Images",
}
