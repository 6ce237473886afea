"""StyleKit: reference-style transfer and personalisation nodes for ComfyUI.

ComfyUI imports this folder as a package under whatever name it was cloned as, so everything here
is imported relatively. Nothing heavy is imported and no weights are loaded at import time.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"  # web/docs/<NodeId>.md: the help page ComfyUI's frontend shows for each node

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
