"""A ModelPatcher-shaped host around a diffusers ``Krea2Transformer2DModel`` (Krea 2).

Krea 2 is one stream of single blocks over ``[text | image]`` tokens. Its attention has grouped-query
heads (fewer key/value heads than query heads) and a sigmoid output gate. ComfyUI's Krea 2 blocks
(``comfy/ldm/krea2/model.py``, 0.33.0) call the hooks with q at the query heads and k, v at their own
heads, after QK-norm and before RoPE; they repeat k and v to the query heads after the hooks and RoPE,
and call ``attn1_output_patch`` before the gate and the output projection. :class:`Krea2Processor`
does the same around diffusers' projections (:func:`~.flux.hooked_attention`).

Outside attention it follows ComfyUI's Krea 2: the prompt arrives as the text encoder's stacked layers
flattened to ``(B, tokens, text_layers * text_dim)`` (diffusers takes them unflattened), the latent is a
one-frame video latent ``(B, 16, 1, H, W)`` or an image latent, packed in 2x2 patches, and the position
ids are text ``(0, 0, 0)``, image ``(0, row, column)``.
"""
from __future__ import annotations

import torch

from ..attention.rope import embed_ids
from .flux import FluxBridgePatcher, hooked_attention, hooks_of, padded, patchify
from .installed import attention_layers, parameter_dtype, processors_installed


def krea2_ids(tokens: int, h: int, w: int, device=None) -> torch.Tensor:
    """The ``(tokens + h*w, 3)`` position ids of the joint sequence: text at the origin, image ``(0, row, column)``."""
    img = torch.zeros(h, w, 3, device=device)
    img[..., 1] = torch.arange(h, device=device)[:, None]
    img[..., 2] = torch.arange(w, device=device)[None, :]
    return torch.cat([torch.zeros(tokens, 3, device=device), img.reshape(h * w, 3)])


class Krea2Processor:
    """Replaces diffusers' Krea2AttnProcessor for one block during a :class:`Krea2BridgePatcher` call."""

    def __init__(self, state: dict, index: int, total: int):
        self.state, self.index, self.total = state, index, total

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None):
        if not any(hooks_of(self.state)):
            from diffusers.models.transformers.transformer_krea2 import Krea2AttnProcessor
            return Krea2AttnProcessor()(attn, hidden_states, attention_mask, image_rotary_emb)
        q = attn.to_q(hidden_states).unflatten(-1, (attn.num_heads, attn.head_dim))
        k = attn.to_k(hidden_states).unflatten(-1, (attn.num_kv_heads, attn.head_dim))
        v = attn.to_v(hidden_states).unflatten(-1, (attn.num_kv_heads, attn.head_dim))
        gate = attn.to_gate(hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        out = hooked_attention(self.state, "single", self.index, self.total, q, k, v, attn.num_heads,
                               attention_mask, image_rotary_emb)
        return attn.to_out[0](out * torch.sigmoid(gate))


class Krea2BridgePatcher(FluxBridgePatcher):
    """The subset of ComfyUI's ModelPatcher StyleKit uses, over a diffusers ``Krea2Transformer2DModel``.

    ``apply_model(x, sigma, context, transformer_options)`` takes the latent (B, C, 1, H, W) or (B, C, H, W)
    and the stacked text layers (B, tokens, text_layers * text_dim), and returns the denoised x0 under the
    flow schedule in the latent's own shape, like ComfyUI's ``BaseModel.apply_model`` for Krea 2. It takes no
    guidance and no pooled vector.
    """

    def _processors(self, state):
        """The main blocks' attention calls the hooks; the text-fusion blocks' runs as diffusers' (ComfyUI's
        Krea 2 calls no hook there: its hooks run only where ``block_index`` is set)."""
        from diffusers.models.transformers.transformer_krea2 import Krea2AttnProcessor
        blocks = self.unet.transformer_blocks
        procs = {name: Krea2AttnProcessor() for name in attention_layers(self.unet)}
        procs.update({f"transformer_blocks.{i}.attn.processor": Krea2Processor(state, i, len(blocks))
                      for i in range(len(blocks))})
        return procs

    def _extra_conds(self, options: dict) -> dict:
        return {}

    def _run(self, x, sigma, context, to: dict, **unused):
        t = self.unet
        to.setdefault("sigmas", sigma)
        xp, restore = padded(x, "Krea 2")
        ids = krea2_ids(context.shape[1], xp.shape[2] // 2, xp.shape[3] // 2, x.device)
        state = {"transformer_options": to, "pe": embed_ids(ids[None], t.config.axes_dims_rope, t.config.rope_theta),
                 "txt_len": context.shape[1]}
        with processors_installed(t, self._processors(state)):
            dtype = parameter_dtype(t)
            text = context.unflatten(-1, (t.config.num_text_layers, t.config.text_hidden_dim)).to(dtype)
            v = t(hidden_states=patchify(xp).to(dtype), encoder_hidden_states=text,
                  timestep=self.model_sampling.timestep(sigma).to(dtype), position_ids=ids).sample
        return self.model_sampling.calculate_denoised(sigma, restore(v), x)
