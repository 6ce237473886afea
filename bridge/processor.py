"""Attention processor that makes a diffusers UNet call StyleKit routers with ComfyUI block keys."""
from __future__ import annotations

from ..attention.functional import sdpa_attention
from ..attention.options import DEFAULT_ATTENTION


class RouterAttnProcessor:
    """Replaces diffusers' AttnProcessor2_0 for one attention layer of a ``BridgePatcher`` call.

    With no patch on its key it computes exactly what AttnProcessor2_0 computes (same projections,
    same fused SDPA call), so an empty router is bit-identical to the unpatched UNet.
    """

    def __init__(self, host_state: dict, attn_name: str, key: tuple):
        self.state = host_state  # shared, per call: {"transformer_options": ...}
        self.attn_name = attn_name
        self.key = tuple(key)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if attention_mask is not None or attn.spatial_norm is not None or attn.group_norm is not None \
                or attn.residual_connection or attn.norm_cross:
            raise NotImplementedError("the StyleKit bridge supports the plain SD/SDXL transformer attention only")
        to = self.state["transformer_options"]
        patches = to.get("patches", {}).get(f"{self.attn_name}_patch", [])
        table = to.get("patches_replace", {}).get(self.attn_name, {})
        patch = table.get(self.key, table.get(self.key[:2]))
        extra = self._extra(to, attn, hidden_states) if patches or patch is not None else None
        n = hidden_states
        context = value = n if encoder_hidden_states is None else encoder_hidden_states
        for p in patches:  # ComfyUI's attn1_patch / attn2_patch: (n, context, value) before the projections
            n, context, value = p(n, context, value, extra)
        q = attn.to_q(n)
        k = attn.to_k(context)
        v = attn.to_v(value)
        if patch is None:
            out = sdpa_attention(q, k, v, attn.heads)
        else:
            out = patch(q, k, v, extra)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        return out / attn.rescale_output_factor

    def _extra(self, to, attn, hidden_states) -> dict:
        """ComfyUI's ``extra_options`` for this block."""
        extra = {k_: v_ for k_, v_ in to.items() if k_ not in ("patches", "patches_replace")}
        extra.update(block=self.key[:2], block_index=self.key[2], n_heads=attn.heads,
                     dim_head=attn.to_q.out_features // attn.heads, attn_precision=None,
                     **{DEFAULT_ATTENTION: sdpa_attention})
        if "original_shape" in to:  # latent (b, c, H, W): recover this block's (h, w) from its token count
            b, _, H, W = to["original_shape"]
            s = round((H * W / hidden_states.shape[1]) ** 0.5)
            extra["activations_shape"] = [b, attn.to_out[0].out_features, H // s, W // s]
        return extra
