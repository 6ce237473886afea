"""The DALL-E discrete VAE (openai/DALL-E): encoder to 8192-way tokens at 1/8 size, decoder back.

Same parameter names as the official modules (``blocks.input.w``, ``blocks.group_1.block_1.res_path.
conv_1.w``, ``blocks.output.conv.b`` ...), so a state dict converted from the official pickles loads
as is. Sizes (hidden width, blocks per group, vocabulary, decoder's first width) are read from the
weights. Pixels are mapped into the dVAE's range with x * 0.8 + 0.1 and back with (x - 0.1) / 0.8.

The official ``encoder.pkl`` / ``decoder.pkl`` are whole pickled modules. :func:`convert_dalle_pickle`
reads them with ``torch.load(weights_only=True)``, allowing only the dVAE's own classes (as inert
stand-ins: nothing of the ``dall-e`` package is imported or run) and the torch layers they contain;
any other object in the file is refused with its name.
"""
from __future__ import annotations

import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightFileError
from ..files import OutputTarget, output_target, shown, write_new
from .weights_file import load_into, load_weights_only, read_safetensors, require_finite

LOGIT_LAPLACE_EPS = 0.1
DVAE_CLASSES = ("dall_e.encoder.Encoder", "dall_e.encoder.EncoderBlock", "dall_e.decoder.Decoder",
                "dall_e.decoder.DecoderBlock", "dall_e.utils.Conv2d")
TORCH_LAYERS = (nn.Sequential, nn.ReLU, nn.MaxPool2d, nn.Upsample, nn.Identity)


class DVAEWeightsError(WeightFileError):
    pass


def map_pixels(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> the dVAE's input range [0.1, 0.9]."""
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS), 0, 1)


class Conv(nn.Module):
    """The official Conv2d: parameters ``w`` (out, in, k, k) and ``b``, 'same' padding."""

    def __init__(self, n_in: int, n_out: int, kw: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_out, n_in, kw, kw) / (n_in * kw * kw) ** 0.5)
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return F.conv2d(x, self.w, self.b, padding=(self.w.shape[-1] - 1) // 2)


class Block(nn.Module):
    """id_path(x) + res_path(x) / n_layers^2; kernels (3, 3, 3, 1) in the encoder, (1, 3, 3, 3) in the decoder."""

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple):
        super().__init__()
        hid = n_out // 4
        self.post_gain = 1 / n_layers ** 2
        self.id_path = Conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [n_in, hid, hid, hid, n_out]
        self.res_path = nn.Sequential()
        for i, k in enumerate(kernels):
            self.res_path.add_module(f"relu_{i + 1}", nn.ReLU())
            self.res_path.add_module(f"conv_{i + 1}", Conv(widths[i], widths[i + 1], k))

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)


def _blocks(first: Conv, widths: list, blocks_per_group: int, kernels: tuple, between: tuple, last: Conv):
    """The official layout: ``input``, ``group_1..4`` (blocks, then ``between`` after groups 1-3), ``output``."""
    blocks = nn.Sequential()
    blocks.add_module("input", first)
    for g in range(4):
        group = nn.Sequential()
        for i in range(blocks_per_group):
            group.add_module(f"block_{i + 1}", Block(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                                                     4 * blocks_per_group, kernels))
        if g < 3:
            group.add_module(between[0], between[1]())
        blocks.add_module(f"group_{g + 1}", group)
    blocks.add_module("output", nn.Sequential())
    blocks.output.add_module("relu", nn.ReLU())
    blocks.output.add_module("conv", last)
    return blocks


class DVAEEncoder(nn.Module):
    def __init__(self, n_hid: int = 256, blocks_per_group: int = 2, vocab: int = 8192, channels: int = 3):
        super().__init__()
        self.blocks = _blocks(Conv(channels, n_hid, 7), [n_hid, n_hid, 2 * n_hid, 4 * n_hid, 8 * n_hid],
                              blocks_per_group, (3, 3, 3, 1), ("pool", lambda: nn.MaxPool2d(2)),
                              Conv(8 * n_hid, vocab, 1))

    @property
    def vocab(self) -> int:
        return self.blocks.output.conv.w.shape[0]

    def forward(self, x):
        return self.blocks(x)

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, H/8, W/8) token ids (argmax of the logits)."""
        return self(map_pixels(pixels.float())).argmax(1)


class DVAEDecoder(nn.Module):
    def __init__(self, n_hid: int = 256, blocks_per_group: int = 2, vocab: int = 8192, n_init: int = 128,
                 channels: int = 3):
        super().__init__()
        self.blocks = _blocks(Conv(vocab, n_init, 1), [n_init, 8 * n_hid, 4 * n_hid, 2 * n_hid, n_hid],
                              blocks_per_group, (1, 3, 3, 3),
                              ("upsample", lambda: nn.Upsample(scale_factor=2, mode="nearest")),
                              Conv(n_hid, 2 * channels, 1))

    @property
    def vocab(self) -> int:
        return self.blocks.input.w.shape[1]

    @property
    def n_init(self) -> int:
        return self.blocks.input.w.shape[0]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, n_init, h, w): the first 1x1 conv on one-hot tokens, as a lookup."""
        w = self.blocks.input.w[:, :, 0, 0]  # (n_init, vocab)
        return (F.embedding(tokens, w.T) + self.blocks.input.b).permute(0, 3, 1, 2)

    def forward(self, one_hot):
        return self.blocks(one_hot)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, 3, 8h, 8w) pixels in [0, 1]."""
        x = self.embed(tokens)
        for name, module in self.blocks.named_children():
            if name != "input":
                x = module(x)
        return unmap_pixels(torch.sigmoid(x[:, :3]))


def _config(sd: dict, part: str) -> dict:
    try:
        groups = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.group_1\.block_(\d+)\.", k))}
        if part == "encoder":
            return dict(n_hid=sd["blocks.input.w"].shape[0], blocks_per_group=len(groups),
                        vocab=sd["blocks.output.conv.w"].shape[0], channels=sd["blocks.input.w"].shape[1])
        return dict(n_hid=sd["blocks.output.conv.w"].shape[1], blocks_per_group=len(groups),
                    vocab=sd["blocks.input.w"].shape[1], n_init=sd["blocks.input.w"].shape[0],
                    channels=sd["blocks.output.conv.w"].shape[0] // 2)
    except KeyError as e:
        raise DVAEWeightsError(f"not a DALL-E dVAE {part}: key {e} missing") from None


def dvae_from_state_dict(sd: dict, part: str, name: str = "weights") -> nn.Module:
    """Build the encoder or decoder the weights describe and load them (every key checked)."""
    if part not in ("encoder", "decoder"):
        raise DVAEWeightsError(f"part must be 'encoder' or 'decoder', got {part!r}")
    cfg = _config(sd, part)
    model = (DVAEEncoder if part == "encoder" else DVAEDecoder)(**cfg)
    load_into(model, sd, name, f"a DALL-E dVAE {part} ({cfg})", DVAEWeightsError)
    return model.eval().requires_grad_(False)


def load_dvae(path: str) -> tuple[DVAEEncoder | None, DVAEDecoder | None]:
    """A StyleKit dVAE file (safetensors, keys ``encoder.*`` and/or ``decoder.*``); every name and shape
    checked on the header (meta tensors) before a tensor is read."""
    name = os.path.basename(path)
    sd, _ = read_safetensors(path, "a StyleKit dVAE file (.safetensors with encoder.* / decoder.* tensors)",
                             "Convert the official encoder.pkl / decoder.pkl with StyleKit StylerDALLE Convert.",
                             DVAEWeightsError, names=lambda k: k.startswith(("encoder.", "decoder.")),
                             max_bytes=2 ** 30,  # the official dVAE: about 0.4 GB in fp32
                             structure=lambda tensors, _meta: _dvae_parts(tensors, name))
    require_finite(sd, path, DVAEWeightsError)
    return _dvae_parts(sd, name)


def _dvae_parts(sd: dict, name: str) -> tuple[DVAEEncoder | None, DVAEDecoder | None]:
    parts = {p: {k[len(p) + 1:]: v for k, v in sd.items() if k.startswith(p + ".")} for p in ("encoder", "decoder")}
    if not any(parts.values()):
        raise DVAEWeightsError(f"{name}: no encoder.* or decoder.* keys; convert the official "
                               "encoder.pkl / decoder.pkl with `python -m stylekit.tools.dalle_convert`")
    return tuple(dvae_from_state_dict(parts[p], p, name) if parts[p] else None for p in ("encoder", "decoder"))


def _stand_in(qualified: str) -> type:
    module, _, name = qualified.rpartition(".")
    return type(name, (nn.Module,), {"__module__": module, "__qualname__": name})


MAX_PICKLE_BYTES = 1 * 2 ** 30  # the official encoder.pkl is 97 MB, decoder.pkl 213 MB


def convert_dalle_pickle(path: str) -> tuple[str, dict]:
    """Official ``encoder.pkl`` / ``decoder.pkl`` -> ("encoder" | "decoder", state dict), unpickling
    only the dVAE's own classes and the torch layers they hold."""
    stand_ins = [_stand_in(q) for q in DVAE_CLASSES]
    allowed = f"Allowed: {', '.join(DVAE_CLASSES)} and torch's {', '.join(c.__name__ for c in TORCH_LAYERS)}."
    obj = load_weights_only(path, DVAEWeightsError, "DALL-E dVAE pickle (openai/DALL-E encoder.pkl or decoder.pkl)",
                            allowed, safe_globals=[*stand_ins, *TORCH_LAYERS], max_bytes=MAX_PICKLE_BYTES)
    kind = type(obj).__module__ + "." + type(obj).__qualname__
    if kind not in ("dall_e.encoder.Encoder", "dall_e.decoder.Decoder"):
        raise DVAEWeightsError(f"{shown(path)} holds a {kind}, not a DALL-E dVAE Encoder or Decoder")
    part = "encoder" if kind.endswith("Encoder") else "decoder"
    sd = require_finite({k: v.detach().float().contiguous() for k, v in obj.state_dict().items()}, path,
                        DVAEWeightsError)
    dvae_from_state_dict(sd, part, os.path.basename(path))  # the names and shapes really form a dVAE
    return part, sd


def convert_files(encoder_pkl: str, decoder_pkl: str, out, force: bool = False) -> str:
    """Convert and write ``out``: an :class:`~stylekit.files.OutputTarget` (the node's, checked before)
    or a path, which must not exist (an input included) unless ``force``."""
    from safetensors.torch import save_file
    if not isinstance(out, OutputTarget):
        out = output_target(os.path.dirname(os.path.abspath(out)), os.path.basename(out), "",
                            numbered=False, force=force, field="output")
    merged = {}
    for path, want in ((encoder_pkl, "encoder"), (decoder_pkl, "decoder")):
        part, sd = convert_dalle_pickle(path)
        if part != want:
            raise DVAEWeightsError(f"{shown(path)} holds the dVAE {part}, given as the {want}")
        merged.update({f"{part}.{k}": v for k, v in sd.items()})
    enc = dvae_from_state_dict({k[8:]: v for k, v in merged.items() if k.startswith("encoder.")}, "encoder")
    dec = dvae_from_state_dict({k[8:]: v for k, v in merged.items() if k.startswith("decoder.")}, "decoder")
    if enc.vocab != dec.vocab:
        raise DVAEWeightsError(f"encoder vocabulary {enc.vocab} != decoder vocabulary {dec.vocab}")
    path = write_new(out, lambda tmp: save_file(
        merged, tmp, metadata={"source": "DALL-E dVAE (openai/DALL-E encoder.pkl, decoder.pkl)"}))
    n = sum(v.numel() for v in merged.values())
    return f"wrote {shown(path)}: dVAE encoder + decoder, vocabulary {enc.vocab}, {n / 1e6:.1f} M parameters"
