"""DEADiff's image encoder (two instructed Q-Formers + projections) and its attn2 image K/V weights.

Architecture (bytedance/DEADiff): per branch ("style", "content") a BLIP-2 Q-Former
(BERT-base, cross-attention to the image in every layer, 16 learned queries) instructed with one
word, over ``LayerNorm(penultimate CLIP ViT-L/14 hidden states)``; the 16 query outputs go through a
residual MLP ``x + W2 QuickGELU(W1 LN(x))``. The Q-Former itself is transformers'
``InstructBlipQFormerModel``: it is the LAVIS Q-Former (queries without positions, instruction text
with word + absolute positions, one LayerNorm over the concatenation, cross-attention and a separate
feed-forward for the query positions only), so only the key names differ; ``_QFORMER_RENAMES`` maps them.

Weights keep the official key names (``style_blip.Qformer.bert.…``, ``style_proj_layer.…``,
``model.diffusion_model.….attn2.i_to_k.weight``), so a file extracted from ``deadiff_v1.ckpt`` with
:func:`extract_deadiff` is read by :func:`load_deadiff` without renaming on disk.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightFileError
from ..files import OutputTarget, output_target, shown, write_new
from .weights_file import (as_meta, declared_within, floating, load_weights_only, positive_int, read_safetensors,
                           require_finite)

BRANCHES = ("style", "content")
# bert-base-uncased ids of "[CLS] <word> [SEP]"; LAVIS adds [DEC] as id 30522 (unused here)
INSTRUCTION_IDS = {"style": (101, 2806, 102), "content": (101, 4180, 102)}
ARCHITECTURE = ("DEADiff image encoder: 2 BLIP-2 Q-Formers (BERT-base, 12 layers, 768 wide, 16 queries) "
                "over CLIP ViT-L/14 (1024-wide) features, 2 projection MLPs, and i_to_k/i_to_v on the 16 "
                "attn2 layers of an SD1.5 UNet")
_QFORMER_RENAMES = [(".attention.self.", ".attention.attention."),
                    (".crossattention.self.", ".crossattention.attention."),
                    ("embeddings.LayerNorm.", "embeddings.layernorm.")]
_ATTN2 = re.compile(r"^model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\.?(\d*)\.1\."
                    r"transformer_blocks\.(\d+)\.attn2\.(i_to_k|i_to_v)\.weight$")


class DEADiffWeightsError(WeightFileError):
    pass


class ProjLayer(nn.Module):
    """x + Dropout(dense2(QuickGELU(dense1(LayerNorm(x))))), official names."""

    def __init__(self, dim: int, hidden: int, eps: float = 1e-12, dropout: float = 0.1):
        super().__init__()
        self.dense1, self.dense2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        h = self.dense1(self.LayerNorm(x))
        return x + self.dropout(self.dense2(h * torch.sigmoid(1.702 * h)))


@dataclass(frozen=True)
class QFormerShape:
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    vocab: int = 30523
    positions: int = 512
    queries: int = 16
    vision: int = 1024
    proj_hidden: int = 3072


class QFormerBranch(nn.Module):
    """One instructed Q-Former with its ln_vision, query tokens and projection layer."""

    def __init__(self, shape: QFormerShape):
        super().__init__()
        from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel
        cfg = InstructBlipQFormerConfig(
            vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
            max_position_embeddings=shape.positions, cross_attention_frequency=1,
            encoder_hidden_size=shape.vision, layer_norm_eps=1e-12)
        self.qformer = InstructBlipQFormerModel(cfg)
        self.query_tokens = nn.Parameter(torch.zeros(1, shape.queries, shape.hidden))
        self.ln_vision = nn.LayerNorm(shape.vision)
        self.proj = ProjLayer(shape.hidden, shape.proj_hidden)

    def forward(self, vision_hidden: torch.Tensor, instruction: tuple[int, ...]) -> torch.Tensor:
        """(B, N, vision) penultimate CLIP states -> (B, queries, hidden) tokens for the UNet."""
        b = vision_hidden.shape[0]
        image = self.ln_vision(vision_hidden)
        ids = torch.tensor([instruction], device=image.device).expand(b, -1)
        queries = self.query_tokens.expand(b, -1, -1)
        mask = torch.ones(b, queries.shape[1] + ids.shape[1], dtype=torch.long, device=image.device)
        out = self.qformer(input_ids=ids, attention_mask=mask, query_embeds=queries, encoder_hidden_states=image,
                           encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long, device=image.device))
        return self.proj(out.last_hidden_state[:, :queries.shape[1]])


_BLOCK_NAMES = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}


def attn2_name(key: tuple) -> str:
    """(("input", 1, 0)) -> ``model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2`` (official prefix)."""
    name, bid, depth = key
    block = "middle_block" if name == "middle" else f"{name}_blocks.{bid}"
    return f"model.diffusion_model.{block}.1.transformer_blocks.{depth}.attn2"


def attn2_key(official: str) -> tuple[tuple, str] | None:
    """``model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.i_to_k.weight`` ->
    (("input", 1, 0), "i_to_k")."""
    m = _ATTN2.match(official)
    if m is None:
        return None
    part, bid, depth, which = m.groups()
    return (_BLOCK_NAMES[part], int(bid or 0), int(depth)), which


class DEADiffAdapter(nn.Module):
    """Both branches plus the per-layer image K/V projections (as plain tensors keyed by block)."""

    def __init__(self, shape: QFormerShape, attn2: dict):
        super().__init__()
        self.shape = shape
        self.branches = nn.ModuleDict({b: QFormerBranch(shape) for b in BRANCHES})
        self.attn2 = attn2  # 3-part key -> (i_to_k weight (inner, hidden), i_to_v weight)
        # which blocks take the style tokens and which the content tokens ({"style": [(name, index), ...],
        # "content": [...]}), as trained; None: the model family's default (models/deadiff_inject.py)
        self.split: dict | None = None

    def _apply(self, fn, *args, **kwargs):
        """``.to()`` / ``.cpu()`` / ``.float()`` move the attn2 projections with the Q-Formers (they are kept in a
        plain dict, keyed by block); a parameter stays the same object, as nn.Module moves its own."""
        super()._apply(fn, *args, **kwargs)
        for key, pair in self.attn2.items():
            moved = []
            for t in pair:
                if isinstance(t, nn.Parameter):
                    t.data = fn(t.data)
                    moved.append(t)
                else:
                    moved.append(fn(t))
            self.attn2[key] = tuple(moved)
        return self

    @torch.no_grad()
    def encode(self, vision_hidden: torch.Tensor, branch: str) -> torch.Tensor:
        if vision_hidden.shape[-1] != self.shape.vision:
            raise DEADiffWeightsError(
                f"the CLIP vision model gives {vision_hidden.shape[-1]}-wide features, DEADiff needs CLIP ViT-L/14 "
                f"({self.shape.vision}-wide): load clip_vision ViT-L/14 (e.g. clip_vision_vit_l.safetensors), "
                "not ViT-H / bigG")
        return self.branches[branch](vision_hidden, INSTRUCTION_IDS[branch])


def _is_buffer(official: str) -> bool:
    return official.endswith("embeddings.position_ids")  # stored in the official file, not a weight


# (official prefix, our module's prefix) of every encoder tensor: read by the loader, inverted by the writer
_PREFIXES = [pair for b in BRANCHES for pair in ((f"{b}_blip.Qformer.bert.", f"branches.{b}.qformer."),
                                                 (f"{b}_blip.query_tokens", f"branches.{b}.query_tokens"),
                                                 (f"{b}_blip.ln_vision.", f"branches.{b}.ln_vision."),
                                                 (f"{b}_proj_layer.", f"branches.{b}.proj."))]


def _module_name(official: str) -> str | None:
    """Our module's name for an official encoder tensor; None for anything else (SD, buffers)."""
    if _is_buffer(official):
        return None
    for src, dst in _PREFIXES:
        if official.startswith(src):
            name = dst + official[len(src):]
            for a, c in _QFORMER_RENAMES:
                name = name.replace(a, c)
            return name
    return None


def shape_from_state_dict(sd: dict, heads: int = 12) -> QFormerShape:
    """Infer sizes from the style branch's tensors (heads are not in the weights: metadata or 12)."""
    p = "style_blip."
    need = [p + "query_tokens", p + "ln_vision.weight", p + "Qformer.bert.embeddings.word_embeddings.weight",
            p + "Qformer.bert.embeddings.position_embeddings.weight",
            p + "Qformer.bert.encoder.layer.0.intermediate.dense.weight", "style_proj_layer.dense1.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise DEADiffWeightsError(f"not DEADiff weights: missing {missing}. Expected {ARCHITECTURE}")
    layers = {int(m.group(1)) for k in sd for m in [re.match(r"style_blip\.Qformer\.bert\.encoder\.layer\.(\d+)\.", k)] if m}
    q = sd[p + "query_tokens"]
    if q.shape[-1] % heads:
        raise DEADiffWeightsError(f"Q-Former width {q.shape[-1]} is not divisible by {heads} heads "
                                  "(the file's qformer_heads metadata)")
    return QFormerShape(hidden=q.shape[-1], layers=max(layers) + 1, heads=heads,
                        intermediate=sd[need[4]].shape[0], vocab=sd[need[2]].shape[0], positions=sd[need[3]].shape[0],
                        queries=q.shape[1], vision=sd[need[1]].shape[0], proj_hidden=sd[need[5]].shape[0])


def adapter_from_state_dict(sd: dict, heads: int = 12, source: str = "state dict") -> DEADiffAdapter:
    """Build and fill a :class:`DEADiffAdapter`; every key and shape is checked, errors name them."""
    shape = shape_from_state_dict(sd, heads)
    attn2, encoder = {}, {}
    for k, t in sd.items():
        hit = attn2_key(k)
        if hit:
            attn2.setdefault(hit[0], {})[hit[1]] = t
        elif not _is_buffer(k):
            encoder[k] = t
    bad = [key for key, kv in attn2.items() if set(kv) != {"i_to_k", "i_to_v"}]
    if not attn2 or bad:
        raise DEADiffWeightsError(f"{source}: attn2 image projections incomplete (blocks {bad or 'none found'}); "
                                  f"expected i_to_k and i_to_v on every attn2 layer. Expected {ARCHITECTURE}")
    for key, kv in attn2.items():
        for which, t in kv.items():
            if t.ndim != 2 or t.shape[1] != shape.hidden:
                raise DEADiffWeightsError(f"{source}: {key} attn2.{which} has shape {tuple(t.shape)}; expected "
                                          f"(inner dim, {shape.hidden})")
    adapter = DEADiffAdapter(shape, {k: (kv["i_to_k"], kv["i_to_v"]) for k, kv in sorted(attn2.items())})
    mine = adapter.state_dict()
    mapped, unknown = {}, []
    for k, t in encoder.items():
        name = _module_name(k)
        if name is None or name not in mine:
            unknown.append(k)
        elif tuple(mine[name].shape) != tuple(t.shape):
            raise DEADiffWeightsError(f"{source}: {k} has shape {tuple(t.shape)}, expected {tuple(mine[name].shape)} "
                                      f"for {ARCHITECTURE}")
        else:
            mapped[name] = t
    missing = sorted(set(mine) - set(mapped))
    if missing:
        raise DEADiffWeightsError(f"{source}: {len(missing)} DEADiff tensors missing, e.g. {missing[:4]} "
                                  f"(have {len(sd)} tensors). Extract the file again from deadiff_v1.ckpt "
                                  "with StyleKit DEADiff Extract (or tools/deadiff_extract.py).")
    if unknown:
        raise DEADiffWeightsError(f"{source}: unexpected tensors {unknown[:4]}{' ...' if len(unknown) > 4 else ''}; "
                                  f"expected only {ARCHITECTURE}")
    adapter.load_state_dict(mapped)
    return adapter.eval()


MAX_BYTES = 4 * 2 ** 30  # what an extracted DEADiff file may declare (its two Q-Formers at fp32 stay well under it)


def extract_deadiff(official_sd: dict, progress=None) -> dict:
    """The non-SD part of ``deadiff_v1.ckpt``'s state dict: Q-Formers, ln_vision, projections, i_to_k/v.
    ``progress(done, total)`` is called as the kept tensors are copied out of the checkpoint."""
    sd = official_sd.get("state_dict", official_sd)
    if not isinstance(sd, dict):
        raise DEADiffWeightsError(f"the checkpoint's state_dict is a {type(sd).__name__}, not a dict of tensors")
    keep = [k for k, v in sd.items() if isinstance(v, torch.Tensor) and (_module_name(k) or attn2_key(k))]
    declared_within((sd[k] for k in keep), MAX_BYTES, "DEADiff's image encoder", DEADiffWeightsError,
                    "the checkpoint's DEADiff part")
    with torch.device("meta"):  # every name and shape, on meta tensors, before a byte is copied or a module built
        adapter_from_state_dict(as_meta({k: sd[k] for k in keep}), heads=1, source="extracted tensors")
    out = {}
    for i, k in enumerate(keep):
        out[k] = sd[k].detach().contiguous()
        if progress is not None:
            progress(i + 1, len(keep))
    return out


def load_deadiff(path: str | Path) -> DEADiffAdapter:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise DEADiffWeightsError(
            f"{path.name}: StyleKit reads DEADiff weights as .safetensors. Extract them once from the official "
            f"checkpoint with the StyleKit DEADiff Extract node, or: python tools/deadiff_extract.py {path.name} "
            "models/deadiff/deadiff_v1.safetensors")
    def heads(meta):
        return positive_int(meta.get("qformer_heads", 12), "metadata qformer_heads", path.name, DEADiffWeightsError)

    def structure(tensors, meta):  # every name and shape, on meta tensors, before a byte of them is read
        adapter_from_state_dict(tensors, heads=heads(meta), source=path.name)

    sd, meta = read_safetensors(str(path), f"DEADiff weights extracted by StyleKit ({ARCHITECTURE})",
                                "Extract them again with StyleKit DEADiff Extract.", DEADiffWeightsError,
                                names=lambda k: bool(_module_name(k) or attn2_key(k) or _is_buffer(k)), max_bytes=MAX_BYTES,
                                dtypes=lambda k, dtype: _is_buffer(k) or floating(k, dtype), structure=structure)
    require_finite(sd, path, DEADiffWeightsError)
    split = layer_split(meta.get("layer_split"), path.name)  # checked before the adapter is built
    adapter = adapter_from_state_dict(sd, heads=heads(meta), source=path.name)
    adapter.split = split
    return adapter


def layer_split(text: str | None, source: str) -> dict | None:
    """The ``layer_split`` metadata of a DEADiff file (JSON: {"style": [[block, index], ...], "content": [...]},
    blocks input / middle / output), or None when the file has none (an extracted official file)."""
    if text is None:
        return None
    try:
        raw = json.loads(text)
        split = {b: [(str(name), int(index)) for name, index in raw[b]] for b in BRANCHES}
    except (ValueError, TypeError, KeyError) as e:
        raise DEADiffWeightsError(f"{source}: metadata layer_split is not a style/content block list ({e}); "
                                  "write the file again with StyleKit DEADiff Train") from None
    problem = split_problem(split)
    if problem:
        raise DEADiffWeightsError(f"{source}: metadata layer_split {problem}; write the file again with StyleKit "
                                  "DEADiff Train")
    return split


def split_problem(split: dict) -> str | None:
    """What is wrong with a layer split ({"style": blocks, "content": blocks}, blocks (input|middle|output,
    index)), or None: a branch missing, a block of no UNet part, a block in both branches."""
    if set(split) != set(BRANCHES):
        return f"gives {sorted(split)}, not the style and the content blocks"
    bad = [k for b in BRANCHES for k in split[b] if k[0] not in ("input", "middle", "output")]
    if bad:
        return f"names {bad}, blocks of no UNet part (input, middle, output)"
    both = set(split["style"]) & set(split["content"])
    return f"gives {sorted(both)} to both branches" if both else None


def read_checkpoint(path: Path) -> dict:
    obj = load_weights_only(str(path), DEADiffWeightsError, "DEADiff checkpoint (deadiff_v1.ckpt, tensors only)",
                            "The official deadiff_v1.ckpt holds only tensors and plain containers.", mmap=True)
    if not isinstance(obj, dict):
        raise DEADiffWeightsError(f"{shown(path)} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def official_state_dict(adapter: DEADiffAdapter, dtype: torch.dtype | None = None) -> dict:
    """The adapter's tensors under the official key names (what :func:`load_deadiff` reads back): the
    inverse of :func:`_module_name` for the encoder, :func:`attn2_name` for the image K/V; floating-point
    tensors in ``dtype`` when given."""
    out = {}
    for name, t in adapter.state_dict().items():
        src, dst = next((src, dst) for src, dst in _PREFIXES if name.startswith(dst))
        official = src + name[len(dst):]
        for a, c in _QFORMER_RENAMES:
            official = official.replace(c, a)
        if _module_name(official) != name:
            raise DEADiffWeightsError(f"{name} has no official name (got {official})")
        out[official] = t.detach()
    for key, (wk, wv) in adapter.attn2.items():
        out[f"{attn2_name(key)}.i_to_k.weight"] = wk.detach()
        out[f"{attn2_name(key)}.i_to_v.weight"] = wv.detach()
    cast = (lambda t: t.to(dtype) if dtype is not None and t.is_floating_point() else t)
    return {k: cast(t).contiguous() for k, t in out.items()}


def save_deadiff(adapter: DEADiffAdapter, target: OutputTarget, source: str = "StyleKit DEADiff training",
                 dtype: torch.dtype | None = None) -> str:
    """Write ``adapter`` in the extracted-file format through :func:`~stylekit.files.write_new` (never
    half-written, never overwriting unless the target says so), in ``dtype`` when given; returns the path."""
    from safetensors.torch import save_file
    tensors = official_state_dict(adapter, dtype)
    meta = {"format": "pt", "source": source, "qformer_heads": str(adapter.shape.heads)}
    if adapter.split is not None:
        meta["layer_split"] = json.dumps({b: [list(k) for k in adapter.split[b]] for b in BRANCHES})
    return write_new(target, lambda tmp: save_file(tensors, tmp, metadata=meta))


def extract_file(src: Path, dst, force: bool = False, progress=None) -> tuple[dict, str]:
    """(tensors, path written). ``dst``: a path (refused if it exists, unless ``force``) or an
    OutputTarget; checked before the (7.4 GB) checkpoint is read. ``progress(done, total)`` follows the
    copy of the tensors kept."""
    from safetensors.torch import save_file
    target = dst if isinstance(dst, OutputTarget) else output_target(str(dst.parent), dst.name, "", numbered=False,
                                                                      force=force, field="output")
    tensors = extract_deadiff(read_checkpoint(src), progress)
    path = write_new(target, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "source": src.name,
                                                                            "qformer_heads": "12"}))
    return tensors, path
