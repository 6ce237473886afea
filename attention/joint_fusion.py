"""Feature Fusion Attention (StyleID / MagicStyle) on DiT joint attention, image tokens only.

The references' image-token q, k, v of a block (recorded before RoPE while they were inverted:
content q_c, k_c, v_c and style k_s, v_s) enter the block's joint attention as follows, with R the
rotation of the image positions (the references have the same size as the sample, so each reference
key sits at the position of its own image token):

    image queries   q' = T * (gamma * R q_c + (1 - gamma) * R q_img)
    keys, values    [k_txt ; R k_s ; R k_c]   [v_txt ; v_s ; v_c]    (the content part when content_kv > 0,
                                                                  its logits + log(content_kv))
    text queries    plain joint attention, as unpatched (the method leaves the prompt's tokens alone)
    reference latents (Flux.1 Kontext, Flux.2: the last tokens) keep their rows plain, and their keys stay
                    in the image queries' key set after the references' (an edit still reads its input)

so the image tokens keep reading the prompt (the text keys) while their own keys and values are the
style's (StyleID) or the style's and content's (MagicStyle), and the temperature T scales the image
queries' logits. The host computes the main call (all queries over the new keys); the text rows are
then replaced by their plain attention, computed through the host's attention on the text queries
only. A weight below 1 or a MASK blends ``plain + mask * weight * (fused - plain)`` on the image
tokens, which needs the plain attention of every row (one more attention call).
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from .feature_fusion import FeatureRecorder, FusionSettings
from .joint import JointContribution, JointQKV, dit_key, token_ranges
from .masks import blend, mask_tokens
from .router import current_sigma, movable


class ReferencesDone(Exception):
    """Raised by a recorder once the last stored block has been recorded in a recompute pass: the rest of
    the references' forward pass would compute nothing that is used (caught by the recompute wrapper)."""


def fused_call(call: JointQKV, refs: dict, s: FusionSettings) -> JointQKV:
    """The joint call whose image rows run Feature Fusion (text and reference-latent rows are fixed up by
    the caller; the reference latents' keys stay, after the references' features).

    ``refs``: ``q_c``, ``k_s``, ``v_s`` (and ``k_c``, ``v_c`` when ``s.content_kv > 0``), each
    ``(1, heads, image tokens, dim_head)``, before RoPE.
    """
    q, k, v = call.q, call.k, call.v
    b, t0 = q.shape[0], call.txt
    r0, r1 = call.ref_latents
    dtype = q.dtype

    def ref(name, rotate=True):
        x = refs[name].to(device=q.device, dtype=dtype)
        return (call.rotate_img(x) if rotate else x).expand(b, -1, -1, -1)

    q_img = q[:, :, t0:call.img[1]]
    if s.gamma:
        q_img = s.gamma * ref("q_c") + (1.0 - s.gamma) * q_img
    if s.temperature != 1.0:
        q_img = q_img * s.temperature
    keys, values = [k[:, :, :t0], ref("k_s")], [v[:, :, :t0], ref("v_s", rotate=False)]
    if s.content_kv > 0:
        keys.append(ref("k_c"))
        values.append(ref("v_c", rotate=False))
    keys.append(k[:, :, r0:r1])
    values.append(v[:, :, r0:r1])
    k2, v2 = torch.cat(keys, dim=2), torch.cat(values, dim=2)
    mask = None
    n_s = refs["k_s"].shape[2]
    if call.mask is not None or (s.content_kv > 0 and s.content_kv != 1.0):
        parts = []
        lq = q.shape[2]
        if call.mask is not None:  # the block's own mask still applies to the text keys
            m = call.mask.to(dtype)
            parts.append(m[..., :t0].expand(*m.shape[:-2], lq, t0) if m.shape[-2] == 1 else m[..., :t0])
            lead = parts[0].shape[:-1]
        else:
            parts.append(torch.zeros(1, 1, lq, t0, dtype=dtype, device=q.device))
            lead = (1, 1, lq)
        parts.append(torch.zeros(*lead, n_s, dtype=dtype, device=q.device))
        if s.content_kv > 0:
            parts.append(torch.full((*lead, refs["k_c"].shape[2]), math.log(s.content_kv), dtype=dtype, device=q.device))
        if r1 > r0:  # the reference latents' keys: the block's own mask, else none
            parts.append(parts[0].new_zeros(*lead, r1 - r0) if call.mask is None else
                         (m[..., r0:r1].expand(*m.shape[:-2], lq, r1 - r0) if m.shape[-2] == 1 else m[..., r0:r1]))
        mask = torch.cat(parts, dim=-1)
    return call.replace(q=torch.cat([q[:, :, :t0], q_img, q[:, :, r0:r1]], dim=2), k=k2, v=v2, mask=mask)


def fuse_joint(call: JointQKV, refs: dict, s: FusionSettings, weight: float = 1.0, token_weights=None) -> JointQKV:
    """The main call for the host, with the output fix-up registered on ``call`` (see the module doc)."""
    main = fused_call(call, refs, s)
    t0, t1 = call.img
    if weight == 1.0 and token_weights is None:
        call.keep_plain()  # over the block's own keys; registered on the options the main call shares
        return main
    plain = call.attention(call.q, call.k, call.v, call.mask)

    def blended(attn):
        out = plain.to(attn.dtype).clone()
        m = weight if token_weights is None else weight * token_weights.to(device=attn.device, dtype=attn.dtype)
        out[:, t0:t1] = blend(plain[:, t0:t1], attn[:, t0:t1], m)
        return out
    main.after(blended)
    return main


@movable("store", "mask")
def joint_fusion_contribution(store, settings: FusionSettings, weight: float = 1.0, mask=None, grid=None,
                              sigma_start=math.inf, sigma_end=0.0, name="feature_fusion", block_weights=None) -> JointContribution:
    """DiT contribution reading the references' features of the block from ``store`` (see :class:`DiTRecorder`).

    ``mask`` (H, W) with ``grid`` (the image-token rows and columns) spares where it is 0.
    """

    def apply(call: JointQKV, call_next, w):
        if store.recording:  # the references themselves are being run (recompute mode)
            return call_next(call)
        key = dit_key(call.extra)
        store.check_sampler(call.extra.get("sample_sigmas"))
        refs = store.lookup(key, current_sigma(call.extra), call.q.device)
        n_img = call.img[1] - call.img[0]
        if refs["k_s"].shape[2] != n_img:
            raise InputError(f"Feature Fusion: the inversion stored {refs['k_s'].shape[2]} image tokens at block "
                             f"{key[0]} {key[1]}, this sampling has {n_img}: sample a latent of the inverted size")
        tokens = None if mask is None else mask_tokens(mask.to(call.q.device), grid)
        return call_next(fuse_joint(call, refs, settings, w, tokens))

    return JointContribution(name, apply, weight=weight, sigma_start=sigma_start, sigma_end=sigma_end,
                        block_weights=dict(block_weights or {}), info={"store": store, "settings": settings})


class DiTRecorder(FeatureRecorder):
    """An ``attn1_patch`` that records the references' image-token q, k, v (before RoPE) into ``store``
    while ``store.recording`` is set, on the store's blocks; rows: 0 content, 1 style. Changes nothing.

    In recompute mode it records only in the references' own pass at each step, which it ends after the
    last stored block (:class:`ReferencesDone`): the rest of that pass would compute nothing used."""

    def __init__(self, store):
        super().__init__(store)
        self.last = tuple(store.policy.layers[-1]) if store.policy.layers else None  # in the model's block order

    def __call__(self, q, k, v, pe=None, attn_mask=None, extra_options=None):
        if self.store.recording:
            key = dit_key(extra_options)
            if key in self.layers:
                t0, t1, _ = token_ranges(extra_options)
                self.store.record(key, current_sigma(extra_options), {
                    "q_c": q[0:1, :, t0:t1], "k_c": k[0:1, :, t0:t1], "v_c": v[0:1, :, t0:t1],
                    "k_s": k[1:2, :, t0:t1], "v_s": v[1:2, :, t0:t1]})
                if self.store.policy.mode == "recompute" and key == self.last:
                    raise ReferencesDone
        return {}

    def __deepcopy__(self, memo):
        return self
