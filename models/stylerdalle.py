"""StylerDALLE's non-autoregressive token translator (zipengxuc/StylerDALLE ``StylerDALLEModel``).

16x16 dVAE tokens of the 128 px content image, embedded by the dVAE decoder's first 1x1 conv
(128 wide), become a 32x32 grid of 8192-way log-probabilities for the 256 px stylised image:

    e   = relu(linear_proj(embed(tokens)))                       (B, 256, hidden)
    y   = nat_enc(e + pos16)                                     4 self-attention layers
    x   = upsample(e) to 32x32                                   (the official index pattern, below)
    x   = nat_dec(x, pos32, y): per block  self-attention (diagonal masked)
                                           position attention: q, k = pos32, v = x (diagonal masked)
                                           cross-attention to y
    out = log_softmax(outNet(ln_final(x)))                       (B, 1024, vocab)

Each attention layer is ``x + attn(norm1(q), k, v)`` then ``x + mlp(norm2(x))`` (pre-norm on the
query only), bias-free q/k/v projections, ReLU MLPs of width 2 x hidden, learned 2-D positions
(``cat(col_embed[c], row_embed[r])``). Parameter names follow the official modules, so a state dict
trained with the official code loads here.

Official quirks kept: the 16 -> 32 upsample is ``repeat_interleave`` on rows, a reshape, and
``repeat_interleave`` again, which puts source token (r // 2, c % 16) at output (r, c) — rows doubled,
columns tiled twice; and ``F.dropout(p=0.5)`` on the decoder output even at inference. StyleKit's
default is deterministic (no dropout); ``official_dropout=True`` restores it.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightFileError
from .weights_file import load_into, load_tensor_dict, positive_int, read_safetensors, require_finite

GRID_IN, GRID_OUT = 16, 32


class StylerDALLEWeightsError(WeightFileError):
    pass


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def _attend(q, k, v, heads: int, mask_diagonal: bool):
    b, n, c = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, c // heads).transpose(1, 2)  # noqa: E731
    mask = None
    if mask_diagonal:
        mask = torch.zeros(n, k.shape[1], device=q.device, dtype=q.dtype)
        mask.fill_diagonal_(float("-inf"))
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, c)


class KVAttention(nn.Module):
    """Official ``MultiHeadAttention``: queries, one fused key/value projection (encoder layers)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        kv = self.to_keys_values(x).reshape(b, n, 2, c)
        return self.project(_attend(self.to_queries(x), kv[:, :, 0], kv[:, :, 1], self.heads, False))


class QKVAttention(nn.Module):
    """Official ``MultiHeadAttentionQKV``: separate query, key and value inputs (decoder layers)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys = nn.Linear(dim, dim, bias=False)
        self.to_values = nn.Linear(dim, dim, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, q, k, v, mask_diagonal: bool):
        return self.project(_attend(self.to_queries(q), self.to_keys(k), self.to_values(v), self.heads, mask_diagonal))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), KVAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), QKVAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x, q, k, v, mask_diagonal: bool):
        x = x + self.attn(self.norm1(q), k, v, mask_diagonal)
        return x + self.mlp(self.norm2(x))


class Positions(nn.Module):
    """Learned 2-D positions: token (r, c) of an L x L grid gets cat(col_embed[c], row_embed[r])."""

    def __init__(self, half: int, length: int):
        super().__init__()
        self.row_embed, self.col_embed = nn.Embedding(length, half), nn.Embedding(length, half)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self):
        n = self.row_embed.num_embeddings
        r, c = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        dev = self.row_embed.weight.device
        return torch.cat([self.col_embed(c.reshape(-1).to(dev)), self.row_embed(r.reshape(-1).to(dev))], -1)[None]


class NATEncoder(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int = 4):
        super().__init__()
        self.pos_embedding = Positions(dim // 2, GRID_IN)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads) for _ in range(layers))

    def forward(self, x):
        x = x + self.pos_embedding()
        for layer in self.layers:
            x = layer(x)
        return x


class NATDecoderStack(nn.Module):
    """Official ``TransformerPos``: per block a self, a position and a cross attention layer."""

    def __init__(self, dim: int, heads: int, blocks: int):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads) for _ in range(3 * blocks))

    def forward(self, x, pos, enc):
        for i, layer in enumerate(self.layers):
            if i % 3 == 0:
                x = layer(x, x, x, x, True)
            elif i % 3 == 1:
                x = layer(x, pos, pos, x, True)
            else:
                x = layer(x, x, enc, enc, False)
        return x


class NATDecoder(nn.Module):
    def __init__(self, dim: int, heads: int, blocks: int):
        super().__init__()
        self.transformer = NATDecoderStack(dim, heads, blocks)
        self.ln_final = nn.LayerNorm(dim)
        self.pos_embedding = Positions(dim // 2, GRID_OUT)

    def forward(self, x, enc):
        pos = self.pos_embedding().expand(x.shape[0], -1, -1)
        return self.ln_final(self.transformer(x, pos, enc))


def official_upsample(x: torch.Tensor) -> torch.Tensor:
    """(B, 256, C) on the 16x16 grid -> (B, 1024, C): output (r, c) takes source (r // 2, c % 16)."""
    r = torch.arange(GRID_OUT, device=x.device).repeat_interleave(GRID_OUT) // 2
    c = torch.arange(GRID_OUT, device=x.device).repeat(GRID_OUT) % GRID_IN
    return x[:, r * GRID_IN + c]


class StylerDALLETranslator(nn.Module):
    def __init__(self, input_dim: int = 128, hidden: int = 512, heads: int = 8, decoder_blocks: int = 4,
                 vocab: int = 8192, encoder_layers: int = 4):
        super().__init__()
        self.heads = heads
        self.linear_proj = nn.Linear(input_dim, hidden)
        self.nat_enc = NATEncoder(hidden, heads, encoder_layers)
        self.nat_dec = NATDecoder(hidden, heads, decoder_blocks)
        self.outNet = nn.Linear(hidden, vocab)

    @property
    def vocab(self) -> int:
        return self.outNet.out_features

    @property
    def input_dim(self) -> int:
        return self.linear_proj.in_features

    def forward(self, encodings: torch.Tensor, official_dropout: bool = False) -> torch.Tensor:
        """(B, 256, input_dim) embedded 16x16 tokens -> (B, 1024, vocab) log-probabilities."""
        if encodings.shape[1:] != (GRID_IN * GRID_IN, self.input_dim):
            raise InputError(f"expected embedded tokens (B, {GRID_IN * GRID_IN}, {self.input_dim}); got "
                             f"{tuple(encodings.shape)}")
        e = F.relu(self.linear_proj(encodings))
        y = self.nat_enc(e)
        x = self.nat_dec(official_upsample(e), y)
        if official_dropout:
            x = F.dropout(x, 0.5, training=True)
        return F.log_softmax(self.outNet(x), dim=-1)


def sample_tokens(log_probs: torch.Tensor, seed: int | None = 0, argmax: bool = False) -> torch.Tensor:
    """(B, 1024, V) log-probs -> (B, 32, 32) ids: one draw per position (or the argmax)."""
    b = log_probs.shape[0]
    if argmax:
        ids = log_probs.argmax(-1)
    else:
        g = None if seed is None else torch.Generator(device=log_probs.device).manual_seed(seed)
        ids = torch.multinomial(log_probs.reshape(-1, log_probs.shape[-1]).float().exp(), 1, generator=g)
    return ids.reshape(b, GRID_OUT, GRID_OUT)


def translator_config(sd: dict) -> dict:
    try:
        hidden = sd["linear_proj.weight"].shape[0]
        n_dec = len({k.split(".")[3] for k in sd if k.startswith("nat_dec.transformer.layers.")})
        n_enc = len({k.split(".")[2] for k in sd if k.startswith("nat_enc.layers.")})
        return dict(input_dim=sd["linear_proj.weight"].shape[1], hidden=hidden, decoder_blocks=n_dec // 3,
                    vocab=sd["outNet.weight"].shape[0], encoder_layers=n_enc)
    except KeyError as e:
        raise StylerDALLEWeightsError(f"not a StylerDALLE translator: key {e} missing") from None


MAX_BYTES = 2 * 2 ** 30  # what a translator file may declare


def _heads(meta: dict, name: str) -> int:
    return positive_int(meta.get("heads", 8), "metadata heads", name, StylerDALLEWeightsError)


def load_translator(path: str, heads: int | None = None) -> StylerDALLETranslator:
    """A translator checkpoint: ours (.safetensors, heads in the metadata) or the official
    ``model.state_dict()`` saved with torch.save (.pt, read with weights_only; 8 heads)."""
    name = os.path.basename(path)
    what = "StylerDALLE translator (StyleKit .safetensors or the official model.state_dict() .pt)"
    if path.endswith(".safetensors"):  # every name and shape checked on meta tensors before one is read
        found = {}

        def structure(tensors, meta):  # the heads are read from the metadata once, here
            found["heads"] = heads or _heads(meta, name)
            load_translator_state(tensors, found["heads"], name)
        sd, _ = read_safetensors(path, what, "", StylerDALLEWeightsError, max_bytes=MAX_BYTES, structure=structure)
        heads = found["heads"]
    else:
        sd = load_tensor_dict(path, StylerDALLEWeightsError, what, "Save model.state_dict() or convert to .safetensors.",
                              max_bytes=MAX_BYTES, structure=lambda meta: load_translator_state(meta, heads or 8, name))
    require_finite(sd, path, StylerDALLEWeightsError)
    return load_translator_state(sd, heads or 8, name)


def load_translator_state(sd: dict, heads: int = 8, name: str = "state dict") -> StylerDALLETranslator:
    """The translator a state dict describes (sizes read from the weights), every key checked."""
    cfg = translator_config(sd)
    if cfg["hidden"] % heads:
        raise StylerDALLEWeightsError(f"{name}: hidden width {cfg['hidden']} is not divisible by {heads} heads")
    model = StylerDALLETranslator(heads=heads, **cfg)
    load_into(model, sd, name, f"a StylerDALLE translator ({cfg})", StylerDALLEWeightsError)
    return model.eval()


def save_translator(model: StylerDALLETranslator, path: str, style: str = "") -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, path,
              metadata={"heads": str(model.heads), "style": style})
