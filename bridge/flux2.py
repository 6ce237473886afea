"""A ModelPatcher-shaped host around a diffusers ``Flux2Transformer2DModel`` (Flux.2 dev / Klein).

Flux.2 keeps Flux.1's hook contract (ComfyUI 0.33.0 runs it through the same ``comfy/ldm/flux`` blocks):
the double-stream blocks' attention is Flux.1's, and the single-stream blocks fuse the q/k/v and MLP
projections (``to_qkv_mlp_proj``) and the two output projections (``to_out``); the hooks see q, k, v
after QK-norm and before RoPE either way (:func:`~.flux.hooked_attention`). What differs from Flux.1 is
outside attention: the latent is already packed (one token per latent pixel, ``patch_size`` 1), the
position ids have four axes (text ``(0, 0, 0, l)``, image ``(0, row, column, 0)``, as ComfyUI's Flux.2 and
diffusers' pipeline build them), RoPE's theta is the model's ``rope_theta``, and there is no pooled
vector; the guidance-distilled models take ``guidance``, Klein's distilled ones none.
"""
from __future__ import annotations

import torch

from ..attention.rope import embed_ids
from .flux import FluxBridgePatcher, JointProcessor, hooked_attention, hooks_of
from .installed import parameter_dtype, processors_installed


def flux2_ids(tokens: int, h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(text ids (tokens, 4), image ids (h*w, 4)): text ``(0, 0, 0, l)``, image ``(0, row, column, 0)``."""
    txt = torch.zeros(tokens, 4, device=device)
    txt[:, 3] = torch.arange(tokens, device=device)
    img = torch.zeros(h, w, 4, device=device)
    img[..., 1] = torch.arange(h, device=device)[:, None]
    img[..., 2] = torch.arange(w, device=device)[None, :]
    return txt, img.reshape(h * w, 4)


class ParallelProcessor:
    """Replaces diffusers' Flux2ParallelSelfAttnProcessor (a single-stream block's fused attention and MLP)
    for one block during a :class:`Flux2BridgePatcher` call."""

    def __init__(self, state: dict, index: int, total: int):
        self.state, self.index, self.total = state, index, total

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None):
        if not any(hooks_of(self.state)):
            from diffusers.models.transformers.transformer_flux2 import Flux2ParallelSelfAttnProcessor
            return Flux2ParallelSelfAttnProcessor()(attn, hidden_states, attention_mask, image_rotary_emb)
        h = attn.to_qkv_mlp_proj(hidden_states)
        qkv, mlp = torch.split(h, [3 * attn.inner_dim, h.shape[-1] - 3 * attn.inner_dim], dim=-1)
        q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in qkv.chunk(3, dim=-1))
        q, k = attn.norm_q(q), attn.norm_k(k)
        out = hooked_attention(self.state, "single", self.index, self.total, q, k, v, attn.heads,
                               attention_mask, image_rotary_emb)
        return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1))


class Flux2BridgePatcher(FluxBridgePatcher):
    """The subset of ComfyUI's ModelPatcher StyleKit uses, over a diffusers ``Flux2Transformer2DModel``.

    ``apply_model(x, sigma, context, transformer_options, guidance=)`` takes the packed latent (B, C, H, W)
    (C = the transformer's ``in_channels``) and the text context, and returns the denoised x0 under the flow
    schedule, like ComfyUI's ``BaseModel.apply_model`` for Flux.2. Its inputs come from a CONDITIONING as
    Flux.1's do (``guidance`` 3.5 unless given, ComfyUI's default; a pooled vector is not taken). ComfyUI
    left-pads Flux.2's text to 512 tokens; the bridge runs the context as given.
    """

    def _processors(self, state):
        from diffusers.models.transformers.transformer_flux2 import Flux2AttnProcessor
        t = self.unet
        procs = {f"transformer_blocks.{i}.attn.processor":
                 JointProcessor(state, "double", i, len(t.transformer_blocks), plain=Flux2AttnProcessor)
                 for i in range(len(t.transformer_blocks))}
        procs.update({f"single_transformer_blocks.{i}.attn.processor":
                      ParallelProcessor(state, i, len(t.single_transformer_blocks))
                      for i in range(len(t.single_transformer_blocks))})
        return procs

    def _latent_channels(self) -> int:
        return int(self.unet.config.in_channels)  # one token per latent pixel

    def _run(self, x, sigma, context, to: dict, guidance=None, **unused):
        t = self.unet
        to.setdefault("sigmas", sigma)
        b, c, h, w = x.shape
        txt_ids, img_ids = flux2_ids(context.shape[1], h, w, x.device)
        pe = embed_ids(torch.cat([txt_ids, img_ids])[None], t.config.axes_dims_rope, t.config.rope_theta)
        state = {"transformer_options": to, "pe": pe, "txt_len": context.shape[1]}
        with processors_installed(t, self._processors(state)):
            dtype = parameter_dtype(t)
            if not t.config.guidance_embeds:
                guidance = None
            elif guidance is None:
                guidance = torch.full((b,), 3.5, device=x.device)
            v = t(hidden_states=x.flatten(2).transpose(1, 2).to(dtype), encoder_hidden_states=context.to(dtype),
                  timestep=self.model_sampling.timestep(sigma).to(dtype), img_ids=img_ids, txt_ids=txt_ids,
                  guidance=None if guidance is None else guidance.to(dtype)).sample
        v = v.float().transpose(1, 2).reshape(b, c, h, w)
        return self.model_sampling.calculate_denoised(sigma, v, x)
