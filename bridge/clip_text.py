"""A CLIP text encoder shaped like ComfyUI's, and a CLIP-object host around it.

The modules carry ComfyUI's attribute names and call convention (``self_attn(x, mask,
optimized_attention)`` with an additive causal mask), so StyleKit's object patches on
``clip_l.transformer.text_model.encoder.layers.{i}.self_attn`` run here exactly as inside ComfyUI.
Weights load from a transformers ``CLIPTextModel`` state dict; a test checks the output against
transformers' own forward.
"""
from __future__ import annotations

import torch
from torch import nn

from ..attention.functional import sdpa_attention


class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, mask=None, optimized_attention=None):
        out = (optimized_attention or sdpa_attention)(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, mask)
        return self.out_proj(out)


class _MLP(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, inner), nn.Linear(inner, dim)

    def forward(self, x):
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))  # quick_gelu, as CLIP-L


class _Layer(nn.Module):
    def __init__(self, dim, heads, inner):
        super().__init__()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn, self.mlp = _Attention(dim, heads), _MLP(dim, inner)

    def forward(self, x, mask, optimized_attention=None):
        x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, vocab, positions, dim):
        super().__init__()
        self.token_embedding, self.position_embedding = nn.Embedding(vocab, dim), nn.Embedding(positions, dim)


class _Encoder(nn.Module):
    def __init__(self, n, dim, heads, inner):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(dim, heads, inner) for _ in range(n))


class ClipTextModel(nn.Module):
    """``text_model`` of a CLIP text tower; forward(tokens) -> (last hidden states, pooled at the eos)."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.eos_token_id = c.eos_token_id
        self.embeddings = _Embeddings(c.vocab_size, c.max_position_embeddings, c.hidden_size)
        self.encoder = _Encoder(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size)

    def forward(self, tokens: torch.Tensor):
        n = tokens.shape[1]
        x = self.embeddings.token_embedding(tokens) + self.embeddings.position_embedding.weight[:n]
        mask = torch.full((n, n), -torch.finfo(x.dtype).max, dtype=x.dtype, device=x.device).triu_(1)
        for layer in self.encoder.layers:
            x = layer(x, mask)
        x = self.final_layer_norm(x)
        eos = (tokens == self.eos_token_id).int().argmax(dim=-1)
        return x, x[torch.arange(x.shape[0]), eos]


def clip_text_from_transformers(hf_model) -> ClipTextModel:
    """Copy a transformers ``CLIPTextModel``'s weights into the ComfyUI-shaped encoder."""
    m = ClipTextModel(hf_model.config)
    sd = {k.removeprefix("text_model."): v for k, v in hf_model.state_dict().items()}  # prefix varies by version
    sd.pop("embeddings.position_ids", None)
    m.load_state_dict(sd, strict=True)
    return m.eval()


def _get(obj, path):
    for p in path.split("."):
        obj = getattr(obj, p)
    return obj


def _set(obj, path, value):
    *head, last = path.split(".")
    obj = _get(obj, ".".join(head)) if head else obj
    old = getattr(obj, last)
    setattr(obj, last, value)
    return old


class ClipPatcher:
    """ModelPatcher's object-patch surface over a module tree (``add_object_patch``, ``get_model_object``)."""

    def __init__(self, model):
        self.model = model
        self.object_patches = {}

    def clone(self):
        n = ClipPatcher(self.model)
        n.object_patches = self.object_patches.copy()
        return n

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def get_model_object(self, name):
        return self.object_patches[name] if name in self.object_patches else _get(self.model, name)


class BridgeCLIP:
    """ComfyUI's CLIP surface (clone, tokenize, encode_from_tokens, patcher) over ``ClipTextModel``.

    The object patches are set for the duration of an encode and restored after, as ComfyUI's
    patcher does on load/unload, so the shared encoder is never left modified. ``tokenize`` uses
    ``tokenizer`` (text -> ``length`` ids, e.g. the miniature world's word tokenizer) or, without one, a
    toy word-hash tokenizer (no vocabulary is downloaded): bos, one id per word, eos, padded to 77.
    """

    def __init__(self, text_model: ClipTextModel, length: int = 77, tokenizer=None):
        root = nn.Module()
        root.clip_l = nn.Module()
        root.clip_l.transformer = nn.Module()
        root.clip_l.transformer.text_model = text_model
        self.patcher = ClipPatcher(root)
        self.length, self.tokenizer = length, tokenizer

    def clone(self):
        n = BridgeCLIP.__new__(BridgeCLIP)
        n.patcher, n.length, n.tokenizer = self.patcher.clone(), self.length, self.tokenizer
        return n

    @property
    def text_model(self):
        return self.patcher.model.clip_l.transformer.text_model

    def tokenize(self, text: str):
        if self.tokenizer is not None:
            return {"l": torch.tensor([self.tokenizer(text)])}
        vocab, eos = self.text_model.embeddings.token_embedding.num_embeddings, self.text_model.eos_token_id
        ids = [vocab - 2] + [3 + sum(ord(ch) * 31 ** i for i, ch in enumerate(w)) % (vocab - 6) for w in text.split()]
        ids = (ids + [eos] * self.length)[: self.length]
        return {"l": torch.tensor([ids])}

    def encode_from_tokens(self, tokens, return_pooled=False):
        olds = {k: _set(self.patcher.model, k, v) for k, v in self.patcher.object_patches.items()}
        try:
            cond, pooled = self.text_model(tokens["l"].to(self.text_model.embeddings.token_embedding.weight.device))
        finally:
            for k, v in olds.items():
                _set(self.patcher.model, k, v)
        return (cond, pooled) if return_pooled else cond
