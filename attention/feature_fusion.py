"""Feature Fusion Attention (MagicStyle) and its StyleID preset, as attn1 router contributions.

For a self-attention call with current q, k, v and the stored attn1 inputs of the content (h_c) and
the style (h_s) at the same block and sigma, projected with the layer's own weights
(q_c = to_q(h_c), k_c = to_k(h_c), v_c = to_v(h_c), k_s = to_k(h_s), v_s = to_v(h_s)):

    q' = gamma * q_c + (1 - gamma) * q
    K  = [k_s ; k_c]   V = [v_s ; v_c]          (the content half only when content_kv > 0)
    logits = temperature * q' K^T / sqrt(d)  + log(content_kv) on the content keys
    fused = softmax(logits) V
    out = weight * fused + (1 - weight) * plain  where MASK = 1; plain where MASK = 0 (as in every StyleKit node,
                                                 a MASK marks where the method acts)

``plain`` is the block's ordinary self-attention (the rest of the router chain). The fused attention
runs on the host's attention function (its backend and overrides); the temperature scales q' first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputError
from .families import FEATURE_FUSION, SD15, SDXL
from .functional import host_attention, sdpa_attention
from .masks import blend, mask_tokens
from .router import Contribution, as_device, block_key, current_sigma, movable

STYLEID_BLOCKS = SD15.layer_sets[FEATURE_FUSION]  # StyleID's own: SD1.5's output 6-11 (the registry says why)
SDXL_STYLEID_BLOCKS = SDXL.layer_sets[FEATURE_FUSION]


@dataclass(frozen=True)
class FusionSettings:
    gamma: float = 0.75           # query preservation: weight of the content's query
    temperature: float = 1.5      # multiplies the attention logits
    content_kv: float = 0.0       # mass of the content's own keys/values beside the style's (0: style only)


PRESETS = {
    # StyleID (Chung et al., CVPR 2024), as its official code: style K/V only, q blended, T 1.5.
    "StyleID": FusionSettings(gamma=0.75, temperature=1.5, content_kv=0.0),
    # Our documented reading of MagicStyle's FFA (no public code): content Q/K/V fused with style K/V,
    # i.e. the content's keys/values join the style's at equal mass; same query blend; no sharpening.
    "MagicStyle": FusionSettings(gamma=0.75, temperature=1.0, content_kv=1.0),
}


def fuse(q, q_c, k_c, v_c, k_s, v_s, heads: int, s: FusionSettings, attention=None):
    """The fused attention output for current queries ``q`` (batch B) and one reference pair (batch 1).

    ``attention(q, k, v, mask)`` is the host's attention (:func:`.functional.host_attention` for the
    block); fused SDPA when None. The temperature scales the queries, which scales every logit.
    """
    b = q.shape[0]
    q_mix = s.gamma * q_c.to(q.dtype).expand(b, -1, -1) + (1.0 - s.gamma) * q if s.gamma else q
    k, v = k_s.to(q.dtype), v_s.to(q.dtype)
    mask = None
    if s.content_kv > 0:
        k = torch.cat([k, k_c.to(q.dtype)], dim=1)
        v = torch.cat([v, v_c.to(q.dtype)], dim=1)
        if s.content_kv != 1.0:  # at equal mass (MagicStyle) the bias is 0: no mask, so fused attention stays
            mask = torch.zeros(1, 1, 1, k.shape[1], dtype=q.dtype, device=q.device)  # on its fastest kernel
            mask[..., k_s.shape[1]:] = math.log(s.content_kv)
    if s.temperature != 1.0:
        q_mix = q_mix * s.temperature
    if attention is None:
        return sdpa_attention(q_mix, k.expand(b, -1, -1), v.expand(b, -1, -1), heads, mask=mask)
    return attention(q_mix, k.expand(b, -1, -1), v.expand(b, -1, -1), mask)


@movable("store", "mask")
def feature_fusion_contribution(store, settings: FusionSettings, projections: dict, weight: float = 1.0,
                                mask=None, sigma_start=math.inf, sigma_end=0.0, name="feature_fusion", block_weights=None) -> Contribution:
    """attn1 contribution reading the content (row 0) and style (row 1) states from ``store``.

    ``projections`` maps each 3-part key to that layer's attention module (``attention_modules``);
    its to_q / to_k / to_v turn the stored states into the reference q, k, v.
    """

    def apply(q, k, v, extra, call_next, w):
        if store.recording:  # the references themselves are being run (recompute mode)
            return call_next(q, k, v, extra)
        key = block_key(extra)
        store.check_sampler(extra.get("sample_sigmas"))
        h = store.lookup(key, current_sigma(extra), q.device).to(device=q.device, dtype=q.dtype)
        if h.shape[1] != q.shape[1]:
            raise InputError(f"Feature Fusion: the inversion stored {h.shape[1]} tokens at block {key}, this sampling has "
                             f"{q.shape[1]}: sample a latent of the inverted size (Feature Fusion's start_latent)")
        attn = projections[key]
        h_c, h_s = h[0:1], h[1:2]
        k_c = v_c = None
        if settings.content_kv > 0:
            k_c, v_c = attn.to_k(h_c), attn.to_v(h_c)
        fused = fuse(q, attn.to_q(h_c), k_c, v_c, attn.to_k(h_s), attn.to_v(h_s), extra["n_heads"], settings,
                     lambda q_, k_, v_, m_: host_attention(q_, k_, v_, extra, m_))
        if w == 1.0 and mask is None:
            return fused
        plain = call_next(q, k, v, extra)
        out = w * fused + (1.0 - w) * plain
        if mask is not None:
            out = blend(plain, out, mask_tokens(mask.to(q.device), extra["activations_shape"][-2:]).to(q.dtype))
        return out

    return Contribution(name, apply, weight=weight, sigma_start=sigma_start, sigma_end=sigma_end,
                        block_weights=dict(block_weights or {}), info={"store": store, "settings": settings})


class FeatureRecorder:
    """An ``attn1_patch`` (ComfyUI's pre-projection hook) that records the attn1 input into ``store``.

    It changes nothing; it records only while ``store.recording`` is set and only on the store's layers.
    ``.to(device)`` moves the (shared) store with the model.
    """

    def __init__(self, store):
        self.store = store
        self.layers = set(store.policy.layers)

    def __call__(self, n, context, value, extra):
        if self.store.recording:
            key = block_key(extra)
            if key in self.layers:
                self.store.record(key, current_sigma(extra), n)
        return n, context, value

    def to(self, device_or_dtype):
        device = as_device(device_or_dtype)
        if device is not None:
            self.store.move_to(device)
        return self


def recording_patch(store) -> FeatureRecorder:
    return FeatureRecorder(store)
