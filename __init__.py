"""StyleKit: reference-style transfer and personalisation nodes for ComfyUI.

ComfyUI imports this folder as a package under whatever name it was cloned as, so everything here
is imported relatively. Nothing heavy is imported and no weights are loaded at import time. The nodes
register as ComfyUI V3 nodes through ``comfy_entrypoint`` (:mod:`.nodes.v3`); their classes, which run
without ComfyUI, are in :mod:`.nodes` (``NODE_CLASS_MAPPINGS``).
"""

WEB_DIRECTORY = "./web"  # web/docs/<NodeId>.md: the help page ComfyUI's frontend shows for each node


async def comfy_entrypoint():
    """ComfyUI's V3 loader calls this (comfy_api is imported only here, inside ComfyUI)."""
    from .nodes.v3 import comfy_entrypoint as entry
    return await entry()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
