"""A ModelPatcher-shaped host around a diffusers ``FluxTransformer2DModel`` (the DiT twin of
:class:`~.patcher.BridgePatcher`).

Its attention processor calls ComfyUI's joint-attention hooks the way ComfyUI's Flux blocks do
(``comfy/ldm/flux/layers.py``): every ``attn1_patch`` gets ``(q, k, v, pe=, attn_mask=,
extra_options=)`` with q, k, v ``(batch, heads, txt + img, dim_head)`` after QK-norm and before RoPE,
``pe`` in ComfyUI's rotation layout, and ``extra_options`` holding ``block_type``, ``block_index``,
``total_blocks`` and ``img_slice``; then RoPE and attention; then every ``attn1_output_patch``.
A block with no hook, or whose hooks change nothing, runs diffusers' own FluxAttnProcessor code, so
an idle patch is bit-identical to the unpatched transformer. The transformer's processors are
swapped in for one call and restored after; the model is never left modified.
"""
from __future__ import annotations

import torch

from ..attention.functional import split_sdpa_attention as split_attention
from ..attention.options import DEFAULT_ATTENTION
from ..attention.rope import apply_rope, embed_ids
from ..errors import InputError
from .installed import parameter_dtype, processors_installed
from .patcher import BridgePatcher, Cond
from .schedule import FlowSchedule


def patchify(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latent -> (B, H/2 * W/2, C * 4) tokens, ComfyUI's and diffusers' packing."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpatchify(t: torch.Tensor, shape) -> torch.Tensor:
    b, c, h, w = shape
    return t.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def one_frame(x: torch.Tensor, family: str) -> torch.Tensor:
    """The (B, C, H, W) frame of an image latent or a one-frame video latent (B, C, 1, H, W); more frames are refused."""
    if x.ndim == 5 and x.shape[2] != 1:
        raise InputError(f"this {family} bridge takes one-frame latents (B, C, 1, H, W); got {x.shape[2]} frames")
    return x[:, :, 0] if x.ndim == 5 else x


def padded(x: torch.Tensor, family: str):
    """(``x``'s frame padded circularly to whole 2x2 patches, as ComfyUI's DiTs pad odd sides; ``restore``):
    ``restore(tokens)`` unpacks the network's output tokens, crops them to the frame and gives them ``x``'s shape
    (a one-frame video latent stays one)."""
    frame = one_frame(x, family)
    h, w = frame.shape[-2:]
    xp = torch.nn.functional.pad(frame, (0, w % 2, 0, h % 2), mode="circular")

    def restore(tokens: torch.Tensor) -> torch.Tensor:
        v = unpatchify(tokens.float(), xp.shape)[..., :h, :w]
        return v.unsqueeze(2) if x.ndim == 5 else v
    return xp, restore


def image_ids(h: int, w: int, device=None) -> torch.Tensor:
    """Flux's image position ids for an (h, w) token grid: (h*w, 3) = [0, row, column]."""
    ids = torch.zeros(h, w, 3, device=device)
    ids[..., 1] = torch.arange(h, device=device)[:, None]
    ids[..., 2] = torch.arange(w, device=device)[None, :]
    return ids.reshape(h * w, 3)


def hooks_of(state: dict) -> tuple[list, list]:
    """The call's ``attn1_patch`` and ``attn1_output_patch`` lists (either may be empty)."""
    patches = state["transformer_options"].get("patches", {})
    return patches.get("attn1_patch", []), patches.get("attn1_output_patch", [])


def hook_options(to: dict, txt: int, tokens: int, **fields) -> dict:
    """The ``extra_options`` ComfyUI's DiT blocks hand their hooks: the call's transformer_options without the
    patch tables, the image slice after ``txt`` text tokens, the block's ``fields``, and the attention function."""
    extra = {n: x for n, x in to.items() if n not in ("patches", "patches_replace")}
    extra.update(img_slice=[txt, tokens], **fields, **{DEFAULT_ATTENTION: split_attention})
    return extra


def run_attn1_patches(pre: list, q, k, v, pe, mask, extra: dict):
    """Every ``attn1_patch`` in turn, each taking what the last returned: (q, k, v, pe, mask, whether any changed
    something). The caller decides what a returned mask means (Qwen-Image's blocks ignore it)."""
    changed = False
    for p in pre:
        out = p(q, k, v, pe=pe, attn_mask=mask, extra_options=extra)
        changed = changed or bool(out)
        q, k, v, pe, mask = (out.get(n, d) for n, d in (("q", q), ("k", k), ("v", v), ("pe", pe), ("attn_mask", mask)))
    return q, k, v, pe, mask, changed


def hooked_attention(state: dict, block_type: str, index: int, total: int, q, k, v, heads: int, mask, rotary):
    """One joint attention the way ComfyUI's Flux (and Krea 2) blocks run it, from diffusers' q, k, v ``(B, tokens,
    heads, dim_head)`` after QK-norm (text rows first; k and v at fewer heads under grouped-query attention): every
    ``attn1_patch``, then RoPE, the key/value heads repeated to the query heads, and attention, then every
    ``attn1_output_patch``; returns ``(B, tokens, heads * dim_head)``. When the patches change nothing, the
    rotation and attention are diffusers' own calls on ``rotary`` (bit-identical to the unpatched block)."""
    pre, post = hooks_of(state)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, tokens, dim): ComfyUI's layout
    extra = hook_options(state["transformer_options"], state["txt_len"], q.shape[2], block_type=block_type,
                         block_index=index, total_blocks=total)
    q, k, v, pe, mask, changed = run_attn1_patches(pre, q, k, v, state["pe"], mask, extra)
    groups = q.shape[1] // k.shape[1]  # grouped-query attention (Krea 2): k, v repeated to q's heads after RoPE
    if changed:
        if pe is not None:
            q, k = apply_rope(q, pe), apply_rope(k, pe)
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = split_attention(q, k, v, heads, mask)
    else:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb
        qd, kd, vd = (t.transpose(1, 2) for t in (q, k, v))
        qd = apply_rotary_emb(qd, rotary, sequence_dim=1)
        kd = apply_rotary_emb(kd, rotary, sequence_dim=1)
        if groups > 1:
            kd, vd = kd.repeat_interleave(groups, dim=2), vd.repeat_interleave(groups, dim=2)
        out = dispatch_attention_fn(qd, kd, vd, attn_mask=mask).flatten(2, 3).to(qd.dtype)
    for p in post:
        out = p(out, extra)
    return out


class JointProcessor:
    """Replaces diffusers' FluxAttnProcessor for one block during a :class:`FluxBridgePatcher` call (and,
    with ``plain`` = Flux2AttnProcessor, Flux.2's double-stream attention: the same projections and norms)."""

    def __init__(self, state: dict, block_type: str, index: int, total: int, plain=None):
        self.state, self.block_type, self.index, self.total = state, block_type, index, total
        self.plain = plain

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if not any(hooks_of(self.state)):
            if self.plain is None:
                from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
                self.plain = FluxAttnProcessor
            return self.plain()(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

        def heads(t):
            return t.unflatten(-1, (-1, attn.head_dim))
        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        q, k = attn.norm_q(q), attn.norm_k(k)
        double = encoder_hidden_states is not None
        if double:
            e = encoder_hidden_states
            eq, ek, ev = heads(attn.add_q_proj(e)), heads(attn.add_k_proj(e)), heads(attn.add_v_proj(e))
            q, k, v = (torch.cat([a, b], dim=1) for a, b in ((attn.norm_added_q(eq), q), (attn.norm_added_k(ek), k), (ev, v)))
        out = hooked_attention(self.state, self.block_type, self.index, self.total, q, k, v, attn.heads,
                               attention_mask, image_rotary_emb)
        if not double:
            return out
        t0 = encoder_hidden_states.shape[1]
        txt, img = out[:, :t0], out[:, t0:]
        img = attn.to_out[1](attn.to_out[0](img.contiguous()))
        return img, attn.to_add_out(txt.contiguous())


class FluxBridgePatcher(BridgePatcher):
    """The subset of ComfyUI's ModelPatcher StyleKit uses, over a diffusers ``FluxTransformer2DModel``.

    ``apply_model(x, sigma, context, transformer_options, y=, guidance=)`` takes the latent
    (B, C, H, W), the T5 context, the pooled CLIP vector ``y`` and Flux-dev's ``guidance``, and returns
    the denoised x0 under the flow schedule, like ComfyUI's ``BaseModel.apply_model`` for Flux.
    """

    def __init__(self, transformer, model_sampling: FlowSchedule | None = None):
        super().__init__(transformer, model_sampling or FlowSchedule())

    def _processors(self, state):
        t = self.unet
        procs = {}
        for kind, blocks, prefix in (("double", t.transformer_blocks, "transformer_blocks"),
                                     ("single", t.single_transformer_blocks, "single_transformer_blocks")):
            for i in range(len(blocks)):
                procs[f"{prefix}.{i}.attn.processor"] = JointProcessor(state, kind, i, len(blocks))
        return procs

    def _latent_channels(self) -> int:
        return int(self.unet.config.in_channels) // 4  # the transformer takes 2x2 patches of the latent

    def _extra_conds(self, options: dict) -> dict:
        """Flux takes the pooled CLIP vector (``y``) and Flux-dev's ``guidance`` (3.5 unless given), as
        ComfyUI's Flux model builds them from a CONDITIONING's options."""
        conds = {"guidance": Cond(torch.tensor([float(options.get("guidance", 3.5))]))}
        if options.get("pooled_output") is not None:
            conds["y"] = Cond(options["pooled_output"])
        return conds

    def _run(self, x, sigma, context, to: dict, y=None, guidance=None, **unused):
        t = self.unet
        to.setdefault("sigmas", sigma)
        b, c, h, w = x.shape
        xp = torch.nn.functional.pad(x, (0, w % 2, 0, h % 2), mode="circular")  # odd sides: as ComfyUI's Flux pads
        img_ids = image_ids(xp.shape[2] // 2, xp.shape[3] // 2, x.device)
        txt_ids = torch.zeros(context.shape[1], 3, device=x.device)
        pe = embed_ids(torch.cat([txt_ids, img_ids])[None], t.config.axes_dims_rope, 10000)
        state = {"transformer_options": to, "pe": pe, "txt_len": context.shape[1]}
        with processors_installed(t, self._processors(state)):
            dtype = parameter_dtype(t)
            if y is None:
                y = torch.zeros(b, t.config.pooled_projection_dim, device=x.device)
            if not t.config.guidance_embeds:
                guidance = None  # schnell takes none (ComfyUI's Flux ignores it there too)
            elif guidance is None:
                guidance = torch.full((b,), 3.5, device=x.device)
            v = t(hidden_states=patchify(xp).to(dtype), encoder_hidden_states=context.to(dtype),
                  pooled_projections=y.to(dtype), timestep=self.model_sampling.timestep(sigma).to(dtype),
                  img_ids=img_ids, txt_ids=txt_ids, guidance=None if guidance is None else guidance.to(dtype)).sample
        v = unpatchify(v.float(), xp.shape)[..., :h, :w]
        return self.model_sampling.calculate_denoised(sigma, v, x)
