"""CatVersion prefixes: one learned key and value per chosen CLIP text-encoder layer.

The official file (adapter-transformers prefix tuning, ``flat``) holds one fp32 vector per concept,
laid out ``view(prefix_length=1, layers * 2, heads, dim_head)``: value ``((2j + kv) * heads + head) *
dim_head + d`` is channel ``head * dim_head + d`` of the key (kv 0) or value (kv 1) of the j-th
prefixed layer. For SD1.5's CLIP-L that is 3 layers (9, 10, 11) x 2 x 768 = 4608 values.

Applying a prefix is an object patch on ``clip.clone()`` around each chosen layer's self-attention
(``clip_l.transformer.text_model.encoder.layers.{i}.self_attn``), so the input CLIP is untouched.
"""
from __future__ import annotations

import os

import torch

from ..attention.layers import UnsupportedModelError
from ..attention.prefix import prefix_attention, strength_bias
from ..errors import InputError, WeightFileError
from ..files import shown
from .weights_file import load_tensor_dict, positive_int, read_json_config, read_safetensors, require_finite

ENCODER = "clip_l.transformer.text_model.encoder"
FORMAT = "stylekit-catversion"
OFFICIAL_WHAT = "CatVersion prefix (official pytorch_adapter.bin, adapter-transformers prefix tuning)"


class CatVersionWeightsError(WeightFileError):
    pass


OUR_KEY = "catversion.control_trans"
MAX_BYTES = 64 * 2 ** 20  # what a prefix file may declare: one of 12 layers at width 2048 is 10 MB


class CatVersionPrefix(torch.nn.Module):
    """Prefix keys and values, ``(layers, hidden)`` each, in the encoder's post-projection space.

    ``layers``: encoder layer indices, or None for "the last n layers of whichever encoder it meets"
    (what an official file means: it does not name its layers).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, layers=None, base_word: str = "",
                 source: str = ""):
        super().__init__()
        if keys.shape != values.shape or keys.ndim != 2:
            raise InputError(f"prefix keys {tuple(keys.shape)} and values {tuple(values.shape)} must both be (layers, hidden)")
        if layers is not None and len(layers) != keys.shape[0]:
            raise InputError(f"{keys.shape[0]} prefix layers but the layer list names {len(layers)}: {list(layers)}")
        self.keys = torch.nn.Parameter(keys.detach().float().clone(), requires_grad=False)  # the trainer turns it on
        self.values = torch.nn.Parameter(values.detach().float().clone(), requires_grad=False)
        self.layers = None if layers is None else [int(i) for i in layers]
        self.base_word = base_word
        self.source = source

    @property
    def n_layers(self) -> int:
        return self.keys.shape[0]

    @property
    def hidden(self) -> int:
        return self.keys.shape[1]

    @classmethod
    def random(cls, layers, hidden: int, seed: int = 0, base_word: str = "") -> "CatVersionPrefix":
        """A fresh prefix, initialised like the official one (standard normal)."""
        g = torch.Generator().manual_seed(seed)
        kv = torch.randn(len(layers), 2, hidden, generator=g)
        return cls(kv[:, 0], kv[:, 1], layers, base_word, source="new")

    @classmethod
    def from_flat(cls, flat: torch.Tensor, hidden: int, layers=None, base_word: str = "", source: str = ""):
        """Parse the official flat vector (see the module docstring)."""
        flat = flat.reshape(-1)
        if flat.numel() % (2 * hidden):
            raise CatVersionWeightsError(f"{source or 'prefix'}: {flat.numel()} values is not layers x 2 x {hidden} "
                             f"(CatVersion on a CLIP-L text encoder stores 3 x 2 x 768 = 4608)")
        kv = flat.view(-1, 2, hidden)
        return cls(kv[:, 0], kv[:, 1], layers, base_word, source)

    def flat(self) -> torch.Tensor:
        return torch.stack([self.keys.detach(), self.values.detach()], dim=1).reshape(-1).cpu()

    def __deepcopy__(self, memo):  # travels through ComfyUI's option copies by reference
        return self


# --- files --------------------------------------------------------------------------------------

def _official_flat(sd: dict, path: str) -> torch.Tensor:
    """The one prefix vector of an official state dict, whichever of its aliased names it sits under."""
    flat = {k: v for k, v in sd.items() if k.endswith("control_trans")}
    if flat:
        first = next(iter(flat.values()))
        for k, v in flat.items():
            if v.shape != first.shape or not torch.equal(v, first):
                raise CatVersionWeightsError(f"{shown(path)}: the control_trans tensors differ ({next(iter(flat))} vs {k}); "
                                 "the file holds more than one prefix, which CatVersion never writes")
        return first
    # Unflattened (reparameterised) prefix tuning: wte -> Linear -> tanh -> Linear.
    heads = {k[: -len("control_trans.0.weight")] for k in sd if k.endswith("control_trans.0.weight")}
    if heads:
        p = sorted(heads)[0]
        try:
            emb = sd[p + "wte.weight"]
            h = torch.tanh(emb.float() @ sd[p + "control_trans.0.weight"].float().T + sd[p + "control_trans.0.bias"].float())
            return (h @ sd[p + "control_trans.2.weight"].float().T + sd[p + "control_trans.2.bias"].float()).reshape(-1)
        except KeyError as e:
            raise CatVersionWeightsError(f"{shown(path)}: reparameterised prefix without {e.args[0]!r}") from None
    raise CatVersionWeightsError(f"{shown(path)}: no key ending in 'control_trans' (found {sorted(sd)[:6]}...); expected an "
                     "adapter-transformers prefix-tuning file (CatVersion's pytorch_adapter.bin)")


def load_official(path: str) -> CatVersionPrefix:
    """CatVersion's ``pytorch_adapter.bin``; sizes from the ``adapter_config.json`` beside it, else CLIP-L."""
    sd = load_tensor_dict(path, CatVersionWeightsError, OFFICIAL_WHAT, max_bytes=MAX_BYTES)
    sd = require_finite(sd, path, CatVersionWeightsError)
    hidden = 768
    cfg_path = os.path.join(os.path.dirname(path), "adapter_config.json")
    if os.path.exists(cfg_path):
        what = "adapter-transformers adapter_config.json"
        cfg = read_json_config(cfg_path, what, CatVersionWeightsError)
        hidden = positive_int(cfg.get("hidden_size", hidden), "hidden_size", cfg_path, CatVersionWeightsError)
        inner = cfg.get("config", {})
        if not isinstance(inner, dict):
            raise CatVersionWeightsError(f"{cfg_path}: 'config' is a {type(inner).__name__}, not an object; expected {what}")
        length = positive_int(inner.get("prefix_length", 1), "config.prefix_length", cfg_path, CatVersionWeightsError)
        if length != 1:
            raise CatVersionWeightsError(f"{cfg_path}: prefix_length {length}; CatVersion (and this loader) use 1")
    return CatVersionPrefix.from_flat(_official_flat(sd, path).float(), hidden, None, source=os.path.basename(path))


def save_prefix(prefix: CatVersionPrefix, path: str) -> None:
    """Our file: the official flat layout under one key, base-class word and layers in the metadata."""
    from safetensors.torch import save_file
    meta = {"format": FORMAT, "hidden": str(prefix.hidden), "base_word": prefix.base_word,
            "layers": "" if prefix.layers is None else ",".join(map(str, prefix.layers))}
    save_file({OUR_KEY: prefix.flat().contiguous()}, path, metadata=meta)


def load_ours(path: str) -> CatVersionPrefix:
    sd, meta = read_safetensors(path, "a StyleKit CatVersion file (StyleKit CatVersion Train writes them)",
                                f"Its one tensor is {OUR_KEY!r}.", CatVersionWeightsError, names=lambda k: k == OUR_KEY,
                                max_bytes=MAX_BYTES)
    if OUR_KEY not in sd:
        raise CatVersionWeightsError(f"{shown(path)}: no {OUR_KEY!r} tensor (found {list(sd)[:6]}); expected a StyleKit "
                                     "CatVersion file (StyleKit CatVersion Train writes them)")
    flat = require_finite(sd, path, CatVersionWeightsError)[OUR_KEY]
    name = os.path.basename(path)
    layers = _integers(meta.get("layers", ""), "metadata layers", name) or None
    hidden = positive_int(meta.get("hidden", 768), "metadata hidden", name, CatVersionWeightsError)
    return CatVersionPrefix.from_flat(flat.float(), hidden, layers, meta.get("base_word", ""), name)


def _integers(text: str, field: str, source: str) -> list[int]:
    try:
        numbers = [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        numbers = [-1]
    if any(n < 0 for n in numbers):
        raise CatVersionWeightsError(f"{source}: {field} is {text!r}, not comma-separated layer numbers (0 or more)")
    return numbers


def load_prefix(path: str) -> CatVersionPrefix:
    if path.endswith(".safetensors"):
        return load_ours(path)
    if path.endswith((".bin", ".pt", ".pth")):
        return load_official(path)
    raise CatVersionWeightsError(f"{shown(path)}: expected .safetensors (StyleKit) or .bin (official pytorch_adapter.bin)")


# --- applying -----------------------------------------------------------------------------------

class PrefixedSelfAttention(torch.nn.Module):
    """A CLIP self-attention whose keys/values start with one prefix vector each.

    Shares the wrapped layer's projections and registers them under the same names, so the host sees
    the same weights at the same paths (LoRA and weight patches still apply). The prefix sits in a
    tuple, not as a submodule: the host's loader does not move or patch it.
    """

    def __init__(self, attn: torch.nn.Module, prefix: CatVersionPrefix, index: int, bias: float):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
        self.heads = attn.heads
        self._prefix = (prefix, index, bias)

    def forward(self, x, mask=None, optimized_attention=None):
        prefix, j, bias = self._prefix
        pk = prefix.keys[j:j + 1].to(x.device, x.dtype)
        pv = prefix.values[j:j + 1].to(x.device, x.dtype)
        out = prefix_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), pk, pv, self.heads, mask, bias,
                               optimized_attention)
        return self.out_proj(out)


class OutOfPlaceClipLayer(torch.nn.Module):
    """A CLIP encoder layer whose residual adds are out of place (for training through it).

    ComfyUI's layer adds in place (``x += ...``), which autograd refuses once x needs a gradient (the
    layer norm saved it). Same children under the same names; ``self_attn`` may be a prefixed one.
    """

    def __init__(self, layer: torch.nn.Module, self_attn: torch.nn.Module):
        super().__init__()
        self.layer_norm1, self.layer_norm2, self.mlp = layer.layer_norm1, layer.layer_norm2, layer.mlp
        self.self_attn = self_attn

    def forward(self, x, mask=None, optimized_attention=None):
        x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
        return x + self.mlp(self.layer_norm2(x))


def encoder_layers(clip):
    try:
        return clip.patcher.get_model_object(ENCODER + ".layers")
    except AttributeError:
        raise UnsupportedModelError(
            "CatVersion patches a CLIP-L text encoder (SD1.5's CLIP; object path "
            f"{ENCODER}); this CLIP has none. Load an SD1.5 checkpoint's CLIP.") from None


def encoder_width(clip) -> int:
    """The width of the text encoder's attention (what a prefix for it must have)."""
    return encoder_layers(clip)[0].self_attn.q_proj.weight.shape[0]


def prefixed_layers(prefix: CatVersionPrefix, clip) -> list[int]:
    """The encoder layers ``prefix`` applies to, after checking it fits this encoder."""
    layers = encoder_layers(clip)
    n = len(layers)
    chosen = prefix.layers if prefix.layers is not None else list(range(n - prefix.n_layers, n))
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise InputError(f"CatVersion prefix {prefix.source!r} names layers {bad}; this text encoder has {n}")
    hidden = encoder_width(clip)
    if hidden != prefix.hidden:
        raise InputError(f"CatVersion prefix {prefix.source!r} is {prefix.hidden} wide; this text encoder's "
                         f"attention is {hidden} (CatVersion prefixes are made for CLIP-L, 768)")
    return chosen


def own_self_attn(clip, i: int) -> torch.nn.Module:
    """Layer ``i``'s self-attention as *this* CLIP has it: its own object patch if it has one, else the
    unpatched module. The clones of a CLIP share one encoder, and ComfyUI sets the loaded clone's object
    patches on it in place (keeping the originals in a backup all clones share), so walking the live
    module would find another clone's patch (after CatVersion Train, say) and call it this CLIP's."""
    layer, attn = f"{ENCODER}.layers.{i}", f"{ENCODER}.layers.{i}.self_attn"
    patcher = clip.patcher
    if attn in patcher.object_patches or attn in getattr(patcher, "object_patches_backup", {}):
        return patcher.get_model_object(attn)
    return patcher.get_model_object(layer).self_attn


def catversion_clip(clip, prefix: CatVersionPrefix, strength: float = 1.0, official_bias: bool = True,
                    trainable: bool = False):
    """A clone of ``clip`` whose chosen self-attentions attend to the prefix. Strength 0: plain clone.

    ``trainable``: patch whole layers from the first prefixed one on with ``OutOfPlaceClipLayer`` so
    gradients can flow back to the prefix (same numbers; for the trainer).
    """
    out = clip.clone()
    if strength == 0:
        return out
    bias = strength_bias(strength, official_bias)
    chosen = prefixed_layers(prefix, clip)
    attns = {}
    for j, i in enumerate(chosen):
        attn = own_self_attn(clip, i)
        if isinstance(attn, PrefixedSelfAttention):
            raise InputError(f"this CLIP already has a CatVersion prefix on layer {i}; apply one prefix per CLIP")
        attns[i] = PrefixedSelfAttention(attn, prefix, j, bias)
    if not trainable:
        for i, attn in attns.items():
            out.patcher.add_object_patch(f"{ENCODER}.layers.{i}.self_attn", attn)
        return out
    for i in range(min(chosen), len(encoder_layers(clip))):
        layer = clip.patcher.get_model_object(f"{ENCODER}.layers.{i}")
        out.patcher.add_object_patch(f"{ENCODER}.layers.{i}", OutOfPlaceClipLayer(layer, attns[i] if i in attns else own_self_attn(clip, i)))
    return out


__all__ = ["CatVersionPrefix", "PrefixedSelfAttention", "catversion_clip", "load_prefix", "load_official",
           "load_ours", "save_prefix", "prefixed_layers", "encoder_width"]
