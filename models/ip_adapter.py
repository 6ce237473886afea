"""IP-Adapter style adapters as users have them: image projections and per-layer image K/V weights.

Formats read (h94/IP-Adapter, InstantX CSGO: the adapters StyleStudio builds on):

* IP-Adapter, plain: ``image_proj.proj`` (Linear, CLIP ``image_embeds`` -> tokens x context) and
  ``image_proj.norm`` (LayerNorm); 4 tokens.
* IP-Adapter "plus": a Perceiver Resampler over the CLIP vision tower's penultimate hidden states:
  ``image_proj.latents``, ``proj_in``, ``proj_out``, ``norm_out`` and ``layers.{i}.0`` (attention:
  norm1, norm2, to_q, to_kv, to_out) / ``layers.{i}.1`` (LayerNorm, Linear, GELU, Linear); 16 tokens.
* CSGO's style branch (``csgo_4_32.bin``): ``style_image_proj`` (a Resampler with 32 queries) and the
  ``ip_adapter`` weights of the up blocks, where CSGO trained its style branch. The content branch
  (``content_image_proj``, down-block weights) and ControlNet weights in the file are not used.

Every format stores ``ip_adapter.{n}.to_k_ip.weight`` / ``to_v_ip.weight`` for the n-th attention
processor of a diffusers UNet (``unet.attn_processors`` order: down blocks, up blocks, mid block; each
transformer's attn1 then attn2), so cross-attention layer j in that order has n = 2j + 1.
:func:`processor_order` derives the order from the model itself.

``.safetensors`` files hold flat ``image_proj.* / ip_adapter.*`` keys; ``.bin`` files a dict of those
two dicts, read with ``torch.load(weights_only=True)`` (no arbitrary objects are unpickled).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention.families import IP_ADAPTER
from ..attention.layers import ModelLayers, UnsupportedModelError
from ..errors import WeightFileError
from .weights_file import floating, load_into, load_tensor_dict, read_safetensors, require_finite

DIM_HEAD = 64  # the Resampler's head width in every published IP-Adapter / CSGO file
EMBEDS_WIDTH = {768: "CLIP ViT-L/14", 1024: "CLIP ViT-H/14", 1280: "CLIP ViT-bigG/14"}
HIDDEN_WIDTH = {1024: "CLIP ViT-L/14", 1280: "CLIP ViT-H/14", 1664: "CLIP ViT-bigG/14"}
CONTEXT_WIDTH = {768: "SD1.5", 1024: "SD2", 2048: "SDXL"}


class AdapterWeightsError(WeightFileError):
    pass


def _named(width: int, table: dict) -> str:
    return f"{width} wide ({table[width]})" if width in table else f"{width} wide"


class ImageProjection(nn.Module):
    """IP-Adapter's plain projection: one CLIP image embedding -> ``tokens`` context tokens."""

    def __init__(self, embed_dim: int, context_dim: int, tokens: int):
        super().__init__()
        self.tokens, self.context_dim = tokens, context_dim
        self.proj = nn.Linear(embed_dim, tokens * context_dim)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(embeds).reshape(-1, self.tokens, self.context_dim))


class PerceiverAttention(nn.Module):
    """Learned queries attend to [image features; queries]; official parameter names."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        inner = heads * DIM_HEAD
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        split = lambda t: t.view(b, t.shape[1], self.heads, DIM_HEAD).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q).float(), split(k).float(), split(v).float()).to(q.dtype)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class Resampler(nn.Module):
    """IP-Adapter "plus" / CSGO image projection: a Perceiver Resampler over CLIP hidden states."""

    def __init__(self, dim: int, depth: int, heads: int, queries: int, embed_dim: int, output_dim: int,
                 ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(1, queries, dim))
        self.proj_in = nn.Linear(embed_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads),
                           nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                                         nn.Linear(dim * ff_mult, dim, bias=False))])
            for _ in range(depth))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(hidden)
        latents = self.latents.expand(hidden.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


def _resampler_from(sd: dict, name: str) -> Resampler:
    """The Resampler the weights describe; sizes that cannot build one are refused, naming the tensor."""
    try:
        _, queries, dim = sd["latents"].shape
        depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
        inner, hidden = sd["layers.0.0.to_q.weight"].shape[0], sd["layers.0.1.1.weight"].shape[0]
        widths = {"latents": dim, "layers.0.0.to_q": inner, "layers.0.1.1": hidden,
                  "proj_in": sd["proj_in.weight"].shape[1], "proj_out": sd["proj_out.weight"].shape[0]}
    except (KeyError, ValueError) as e:
        raise AdapterWeightsError(f"{name}: not an IP-Adapter plus Resampler ({e}); expected latents (1, queries, "
                                  "width), proj_in, proj_out and layers.*") from None
    bad = [k for k, w in widths.items() if w <= 0]
    if inner % DIM_HEAD:
        bad.append("layers.0.0.to_q (not a multiple of 64)")
    if dim and hidden % dim:
        bad.append("layers.0.1.1 (not a multiple of the width)")
    if bad or depth == 0 or queries == 0:
        raise AdapterWeightsError(f"{name}: the Resampler's sizes cannot build one: {bad or 'no layers or queries'}")
    return Resampler(dim, depth, inner // DIM_HEAD, queries, widths["proj_in"], widths["proj_out"], hidden // dim)


@dataclass(frozen=True, eq=False)
class StyleAdapter:
    """A loaded adapter: its image projection and its image K/V weights by processor number."""

    name: str
    kind: str                       # "plain" | "plus"
    projection: nn.Module
    attn2: dict                     # processor number n -> (W_k (inner, context), W_v)
    source: str = "IP-Adapter"      # or "CSGO style branch"
    blocks: tuple = ("input", "middle", "output")  # where the adapter's image branch was trained

    def __deepcopy__(self, memo):  # weights travel through ComfyUI's option copies by reference
        return self

    @property
    def feature(self) -> str:
        """Which CLIP vision output the projection reads."""
        return "image_embeds" if self.kind == "plain" else "penultimate_hidden_states"

    @property
    def feature_width(self) -> int:
        p = self.projection
        return (p.proj if self.kind == "plain" else p.proj_in).in_features

    @property
    def context_dim(self) -> int:
        return next(iter(self.attn2.values()))[0].shape[1]

    @property
    def tokens(self) -> int:
        p = self.projection
        return p.tokens if self.kind == "plain" else p.latents.shape[1]

    def describe(self) -> str:
        what = "image embeddings" if self.kind == "plain" else "penultimate hidden states"
        return (f"{self.name}: {self.source} ({'plain projection' if self.kind == 'plain' else 'Resampler'}, "
                f"{self.tokens} tokens) with image K/V for {len(self.attn2)} cross-attention layers and "
                f"{_named(self.context_dim, CONTEXT_WIDTH)} context; reads CLIP vision {what} "
                f"{_named(self.feature_width, EMBEDS_WIDTH if self.kind == 'plain' else HIDDEN_WIDTH)}")

    def check_features(self, features: torch.Tensor) -> None:
        width = features.shape[-1]
        if width != self.feature_width:
            table = EMBEDS_WIDTH if self.kind == "plain" else HIDDEN_WIDTH
            raise UnsupportedModelError(
                f"{self.name} expects CLIP vision {self.feature.replace('_', ' ')} "
                f"{_named(self.feature_width, table)}; the CLIP vision model gives {_named(width, table)}. "
                f"Load the CLIP vision model this adapter was trained with.")

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """CLIP features (N, D) or (N, T, D) -> context tokens (N, tokens, context)."""
        self.check_features(features)
        p = next(self.projection.parameters())
        with torch.no_grad():
            return self.projection(features.to(p.device, p.dtype)).float()

    def bind(self, layers: ModelLayers) -> dict:
        """3-part block key -> (W_k, W_v) for this UNet, after checking the pairing; errors name both sides."""
        layers.require(IP_ADAPTER, f"{self.source} (a UNet adapter; on Flux.1 use core Redux with StyleModelApply)")
        order = processor_order(layers)
        model = (f"the model is {layers.family.upper()}-shaped ({len(order)} cross-attention layers, "
                 f"{_named(layers.layers[0].context_dim, CONTEXT_WIDTH)} context)")
        if self.context_dim != layers.layers[0].context_dim:
            raise UnsupportedModelError(f"{self.describe()}; {model}. Use an adapter made for this model family.")
        wanted = {2 * j + 1: key for j, key in enumerate(order) if key[0] in self.blocks}
        missing = sorted(set(wanted) - set(self.attn2))
        extra = sorted(n for n in self.attn2 if n > 2 * len(order))
        if missing or extra or (self.source == "IP-Adapter" and len(self.attn2) != len(order)):
            raise UnsupportedModelError(
                f"{self.describe()}; {model}: processor numbers missing {missing[:6]}, beyond the model {extra[:6]}. "
                f"The adapter was made for a UNet with a different block layout.")
        out = {}
        for n, key in wanted.items():
            wk, wv = self.attn2[n]
            channels = layers.by_key(key).channels
            if wk.shape[0] != channels:
                raise UnsupportedModelError(f"{self.name}: ip_adapter.{n}.to_k_ip projects to {wk.shape[0]} channels "
                                            f"but attn2 at {key} is {channels} wide; {model}")
            out[key] = (wk, wv)
        return out


def processor_order(layers: ModelLayers) -> list[tuple]:
    """Cross-attention keys in diffusers' ``attn_processors`` order: input, output, then middle blocks."""
    rank = {"input": 0, "output": 1, "middle": 2}
    return sorted(layers.keys, key=lambda k: (rank[k[0]], k[1], k[2]))


WHAT = "IP-Adapter (image_proj + ip_adapter) or CSGO (style_image_proj + ip_adapter) weights"
PROJECTIONS = ("image_proj", "style_image_proj")
MAX_BYTES = 4 * 2 ** 30  # what an adapter file may declare
_IP_KV = re.compile(r"ip_adapter\.\d+\.to_[kv]_ip\.weight")


def _kept(name: str) -> bool:
    """The tensors an adapter file's loader reads: the image projection and the image K/V per layer."""
    return name.split(".", 1)[0] in PROJECTIONS or bool(_IP_KV.fullmatch(name))


def _grouped(flat: dict) -> dict:
    groups: dict = {}
    for k, v in flat.items():
        head, _, rest = k.partition(".")
        groups.setdefault(head, {})[rest] = v
    return groups


def _tensor_groups(groups: dict, name: str) -> dict:
    for head, group in groups.items():
        if not isinstance(group, dict) or not all(isinstance(t, torch.Tensor) for t in group.values()):
            raise AdapterWeightsError(f"{name}: {head!r} is a {type(group).__name__}, not a dict of tensors; expected {WHAT}")
    return groups


def _read(path: str) -> dict:
    name = os.path.basename(path)
    if path.endswith(".safetensors"):
        def structure(tensors, _meta):  # names and shapes on meta tensors, before a byte of them is read
            _from_groups(_grouped(tensors), name)
        flat, _ = read_safetensors(path, WHAT, "", AdapterWeightsError, keep=_kept, max_bytes=MAX_BYTES,
                                   dtypes=floating, structure=structure)  # CSGO's other groups stay unread
        groups = _grouped(flat)
    else:
        groups = load_tensor_dict(path, AdapterWeightsError, WHAT, "Convert it to .safetensors.", max_bytes=MAX_BYTES,
                                  structure=lambda meta: _from_groups(_tensor_groups(meta, name), name))
    for head, group in groups.items():  # dicts of tensors: the structure check saw to it
        require_finite({f"{head}.{k}": t for k, t in group.items()}, path, AdapterWeightsError)
    return groups


def load_adapter(path: str) -> StyleAdapter:
    """Read an IP-Adapter (plain / plus, SD1.5 / SDXL) or CSGO file; see the module docstring."""
    return _from_groups(_read(path), os.path.basename(path))


def _from_groups(groups: dict, name: str) -> StyleAdapter:
    """The adapter the file's groups form; every name and shape checked, errors naming the file ``name``."""
    if "style_image_proj" in groups:
        proj_sd, source, blocks = groups["style_image_proj"], "CSGO style branch", ("output",)
    elif "image_proj" in groups:
        proj_sd, source, blocks = groups["image_proj"], "IP-Adapter", ("input", "middle", "output")
    else:
        raise AdapterWeightsError(
            f"{name}: no image projection (top-level keys {sorted(groups)[:6]}); expected IP-Adapter's "
            "image_proj + ip_adapter or CSGO's style_image_proj + ip_adapter")
    if "ip_adapter" not in groups:
        raise AdapterWeightsError(f"{name}: no ip_adapter weights (top-level keys {sorted(groups)[:6]})")
    if "latents" in proj_sd and "proj_in.weight" in proj_sd:
        kind, projection = "plus", _resampler_from(proj_sd, name)
    elif "proj.weight" in proj_sd and "norm.weight" in proj_sd:
        context, (out, feature) = proj_sd["norm.weight"].shape[0], proj_sd["proj.weight"].shape
        kind = "plain"
        if context == 0 or out == 0 or feature == 0 or out % context:
            raise AdapterWeightsError(f"{name}: image_proj.proj.weight {(out, feature)} is not (tokens x {context}, "
                                      f"features) for norm.weight ({context},): not an IP-Adapter projection")
        projection = ImageProjection(feature, context, out // context)
    else:
        raise AdapterWeightsError(
            f"{name}: unsupported image projection (keys {sorted(proj_sd)[:5]}); StyleKit reads IP-Adapter plain "
            "(proj, norm) and plus (Resampler: latents, proj_in, layers.*) projections, and CSGO's style branch")
    load_into(projection, proj_sd, name, f"a {kind} IP-Adapter image projection", AdapterWeightsError)
    attn2 = {}
    for k, v in groups["ip_adapter"].items():
        n, _, rest = k.partition(".")
        if rest in ("to_k_ip.weight", "to_v_ip.weight") and n.isdigit():
            attn2.setdefault(int(n), {})[rest] = v.float()
    incomplete = [n for n, d in attn2.items() if len(d) != 2]
    if not attn2 or incomplete:
        raise AdapterWeightsError(f"{name}: ip_adapter needs to_k_ip and to_v_ip per layer; "
                                  f"{'none found' if not attn2 else f'incomplete at {sorted(incomplete)[:5]}'}")
    pairs = {n: (d["to_k_ip.weight"], d["to_v_ip.weight"]) for n, d in sorted(attn2.items())}
    context = (projection.norm if kind == "plain" else projection.norm_out).normalized_shape[0]
    for n, (wk, wv) in pairs.items():  # the image tokens are `context` wide: every projection must read that
        if wk.ndim != 2 or wk.shape != wv.shape or wk.shape[1] != context:
            raise AdapterWeightsError(f"{name}: ip_adapter.{n}.to_k_ip {tuple(wk.shape)} / to_v_ip {tuple(wv.shape)} "
                                      f"do not read the image projection's {context}-wide tokens")
    return StyleAdapter(name, kind, projection.float().eval().requires_grad_(False), pairs, source, blocks)

