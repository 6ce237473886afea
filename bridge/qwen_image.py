"""A ModelPatcher-shaped host around a diffusers ``QwenImageTransformer2DModel`` (Qwen-Image).

It runs the hooks with the contract of ComfyUI's Qwen-Image blocks (``comfy/ldm/qwen_image/model.py``,
0.33.0), which differs from Flux's (see ``QWEN_IMAGE.hooks`` in :mod:`stylekit.attention.families`):
``attn1_patch`` gets the joint ``[text | image]`` q, k, v after QK-norm and before RoPE, with
``attn_mask`` the text mask; a returned ``pe`` is used and RoPE is applied after the hooks whatever comes
back; a returned mask is ignored; there is no ``attn1_output_patch``. The network's blocks run through
ComfyUI's ``dit`` block replace (``("double_block", i)``, the ``original_block`` callable taking
``{"img", "txt", "vec", "pe", "transformer_options"}``), which is why the bridge runs the network's own
modules in diffusers' order itself (:meth:`QwenImageBridgePatcher._forward`) instead of calling its
``forward``; with nothing patched the result is diffusers' bit for bit.

The latent is a one-frame video latent ``(B, 16, 1, H, W)`` (or an image latent) in 2x2 patches, as
ComfyUI's Qwen-Image takes it; RoPE is diffusers' (``pos_embed``), handed to the hooks in ComfyUI's
rotation layout.
"""
from __future__ import annotations

import torch

from ..attention.functional import split_sdpa_attention as split_attention
from ..attention.rope import apply_rope, token_slice
from ..errors import InputError
from .flux import FluxBridgePatcher, hook_options, hooks_of, padded, patchify, run_attn1_patches
from .installed import parameter_dtype, processors_installed


def comfy_pe(img_freqs: torch.Tensor, txt_freqs: torch.Tensor) -> torch.Tensor:
    """diffusers' complex rotations (tokens, dim_head / 2) of the text then the image tokens as ComfyUI's ``pe``
    ``(1, 1, tokens, dim_head / 2, 2, 2)``: each pair's ``[[cos, -sin], [sin, cos]]``."""
    f = torch.cat([txt_freqs, img_freqs])
    cos, sin = f.real.float(), f.imag.float()
    return torch.stack([cos, -sin, sin, cos], dim=-1).reshape(*f.shape, 2, 2)[None, None]


def rotated(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """``x`` rotated by ``pe`` as ComfyUI's ``apply_rope1`` does: a longer ``pe`` is cut to ``x``'s tokens (the
    router hands back one identity rotation for q and a k with extra keys)."""
    if pe.shape[2] not in (1, x.shape[2]) and x.shape[2] != 1:
        pe = token_slice(pe, 0, x.shape[2])
    return apply_rope(x, pe)


def diffusers_rotary(pe: torch.Tensor, text: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`comfy_pe`'s inverse: (image, text) complex rotations from ComfyUI's ``pe`` (exact: the same floats)."""
    f = torch.complex(pe[0, 0, :, :, 0, 0].contiguous(), pe[0, 0, :, :, 1, 0].contiguous())
    return f[text:], f[:text]


class QwenProcessor:
    """Replaces diffusers' QwenDoubleStreamAttnProcessor2_0 for one block during a bridge call."""

    def __init__(self, state: dict, index: int, total: int):
        self.state, self.index, self.total = state, index, total

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None):
        pre, _ = hooks_of(self.state)
        if not pre:
            from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0
            return QwenDoubleStreamAttnProcessor2_0()(attn, hidden_states, encoder_hidden_states,
                                                      encoder_hidden_states_mask, attention_mask, image_rotary_emb)
        head_dim = attn.inner_dim // attn.heads

        def heads(t):
            return t.unflatten(-1, (-1, head_dim)).transpose(1, 2)  # (B, heads, tokens, dim): ComfyUI's layout
        e, t0 = encoder_hidden_states, encoder_hidden_states.shape[1]
        q = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(e))), attn.norm_q(heads(attn.to_q(hidden_states)))], dim=2)
        k = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(e))), attn.norm_k(heads(attn.to_k(hidden_states)))], dim=2)
        v = torch.cat([heads(attn.add_v_proj(e)), heads(attn.to_v(hidden_states))], dim=2)
        extra = hook_options(self.state["transformer_options"], t0, q.shape[2])
        # a returned attn_mask is ignored, as ComfyUI's Qwen-Image blocks ignore it
        q, k, v, pe, _, changed = run_attn1_patches(pre, q, k, v, self.state["pe"], encoder_hidden_states_mask, extra)
        keep = None  # the text mask over the joint keys, as diffusers' processor builds it
        if encoder_hidden_states_mask is not None:
            keep = torch.cat([encoder_hidden_states_mask.bool(), encoder_hidden_states_mask.new_ones(
                hidden_states.shape[:2], dtype=torch.bool)], dim=1)[:, None, None]
        if changed:  # RoPE always, after the hooks, by the pe they returned
            mask = None if keep is None else torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(
                ~keep, float("-inf"))
            out = split_attention(rotated(q, pe), rotated(k, pe), v, attn.heads, mask)
        else:  # diffusers' own rotation and attention call: bit-identical to the unpatched block
            from diffusers.models.attention_dispatch import dispatch_attention_fn
            from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen
            img_freqs, txt_freqs = image_rotary_emb
            freqs = torch.cat([txt_freqs, img_freqs])
            qd, kd, vd = (x.transpose(1, 2) for x in (q, k, v))
            qd, kd = (apply_rotary_emb_qwen(x, freqs, use_real=False) for x in (qd, kd))
            out = dispatch_attention_fn(qd, kd, vd, attn_mask=keep).flatten(2, 3).to(qd.dtype)
        img = attn.to_out[0](out[:, t0:].contiguous())
        if len(attn.to_out) > 1:
            img = attn.to_out[1](img)
        return img, attn.to_add_out(out[:, :t0].contiguous())


class QwenImageBridgePatcher(FluxBridgePatcher):
    """The subset of ComfyUI's ModelPatcher StyleKit uses, over a diffusers ``QwenImageTransformer2DModel``.

    ``apply_model(x, sigma, context, transformer_options)`` takes the latent (B, 16, 1, H, W) or (B, 16, H, W)
    and the text encoder's hidden states, and returns the denoised x0 under the flow schedule in the latent's
    own shape, like ComfyUI's ``BaseModel.apply_model`` for Qwen-Image.
    """

    def _processors(self, state):
        blocks = self.unet.transformer_blocks
        return {f"transformer_blocks.{i}.attn.processor": QwenProcessor(state, i, len(blocks)) for i in range(len(blocks))}

    def _latent_channels(self) -> int:
        return int(self.unet.config.in_channels) // 4

    def _extra_conds(self, options: dict) -> dict:
        return {}

    def _run(self, x, sigma, context, to: dict, **unused):
        t = self.unet
        if getattr(t.config, "zero_cond_t", False):
            raise InputError("this Qwen-Image transformer has zero_cond_t (an edit model's reference modulation), "
                             "which the diffusers bridge does not run; use it in ComfyUI")
        to.setdefault("sigmas", sigma)
        xp, restore = padded(x, "Qwen-Image")
        dtype = parameter_dtype(t)
        v = self._forward(patchify(xp).to(dtype), context.to(dtype), self.model_sampling.timestep(sigma).to(dtype),
                          (xp.shape[2] // 2, xp.shape[3] // 2), to)
        return self.model_sampling.calculate_denoised(sigma, restore(v), x)

    def _forward(self, tokens, context, timestep, grid, to: dict):
        """diffusers' ``QwenImageTransformer2DModel.forward`` (no text mask, no ControlNet, no guidance embedding:
        diffusers' pipeline passes none), each block run through ComfyUI's ``dit`` block replace where one is set."""
        t = self.unet
        img = t.img_in(tokens)
        txt = t.txt_in(t.txt_norm(context))
        temb = t.time_text_embed(timestep, img, None)
        rotary = t.pos_embed([[(1, *grid)]] * tokens.shape[0], max_txt_seq_len=txt.shape[1], device=img.device)
        state = {"transformer_options": to, "pe": comfy_pe(*rotary)}  # args["pe"], as ComfyUI hands a block replace
        replace = to.get("patches_replace", {}).get("dit", {})
        to.update(total_blocks=len(t.transformer_blocks), block_type="double")
        with processors_installed(t, self._processors(state)):
            for i, block in enumerate(t.transformer_blocks):
                to["block_index"] = i

                def original(args, block=block, pe=state["pe"]):
                    state.update(transformer_options=args["transformer_options"], pe=args["pe"])
                    rot = rotary if args["pe"] is pe else diffusers_rotary(args["pe"], args["txt"].shape[1])
                    try:
                        out_txt, out_img = block(hidden_states=args["img"], encoder_hidden_states=args["txt"],
                                                 encoder_hidden_states_mask=None, temb=args["vec"],
                                                 image_rotary_emb=rot, joint_attention_kwargs=None)
                    finally:
                        state.update(transformer_options=to, pe=pe)
                    return {"txt": out_txt, "img": out_img}
                args = {"img": img, "txt": txt, "vec": temb, "pe": state["pe"], "transformer_options": to}
                out = replace[("double_block", i)](args, {"original_block": original}) if ("double_block", i) in replace \
                    else original(args)
                img, txt = out["img"], out["txt"]
        return t.proj_out(t.norm_out(img, temb))
