"""A transformers CLIP vision tower with the surface of ComfyUI's ``ClipVisionModel``.

Nodes read CLIP vision two ways, both ComfyUI's: ``encode_image(image, crop=True)`` (its own
preprocessing; an output indexed by ``image_embeds`` / ``penultimate_hidden_states`` /
``last_hidden_state``), and ``model(pixel_values=..., intermediate_output=-2)`` on pixels a method
preprocessed itself (DEADiff), answering ``(last, intermediate, projected)``. This wrapper answers both
for a transformers ``CLIPVisionModel`` / ``CLIPVisionModelWithProjection``, so the nodes never ask
which host they run on.
"""
from __future__ import annotations

import torch

from ..models.clip_preprocess import clip_pixels


class _Tower:
    """ComfyUI's call convention over the transformers model."""

    def __init__(self, hf):
        self.hf = hf

    def __call__(self, pixel_values: torch.Tensor, intermediate_output: int | None = None):
        out = self.hf(pixel_values=pixel_values, output_hidden_states=True)
        inner = out.hidden_states[intermediate_output] if intermediate_output is not None else None
        projected = out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output
        return out.last_hidden_state, inner, projected


class BridgeClipVision:
    """ComfyUI's CLIP_VISION surface (``encode_image``, ``model``, ``patcher``, ``load_device``).

    ``preprocess`` turns IMAGE (B, H, W, 3) into the tower's pixel values: by default ComfyUI's
    ``encode_image(crop=True)`` preprocessing (:func:`~stylekit.models.clip_preprocess.clip_pixels`).
    """

    def __init__(self, hf_model, preprocess=clip_pixels):
        self.model = _Tower(hf_model)
        self.preprocess = preprocess
        self.patcher = self  # nothing for ComfyUI's model management to load: the tower runs where it is

    @property
    def load_device(self) -> torch.device:
        return next(self.model.hf.parameters()).device

    def encode_image(self, image: torch.Tensor, crop: bool = True) -> dict:
        pixels = self.preprocess(image[..., :3]).to(self.load_device)
        with torch.no_grad():
            last, penultimate, projected = self.model(pixel_values=pixels, intermediate_output=-2)
        return {"last_hidden_state": last, "penultimate_hidden_states": penultimate, "image_embeds": projected}
