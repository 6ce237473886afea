"""StylerDALLE end to end: images -> dVAE tokens -> translated tokens -> stylised images.

Content images are squashed to 128 px (16x16 tokens); training targets are the same images at
256 px (32x32 tokens); outputs are decoded at 256 px. ComfyUI IMAGE tensors are (B, H, W, 3) in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from .dvae import DVAEDecoder, DVAEEncoder
from .square_images import SQUASH, square
from .stylerdalle import GRID_IN, GRID_OUT, StylerDALLETranslator, sample_tokens
from .stylerdalle_train import embed_tokens

CONTENT_PX, OUTPUT_PX = 8 * GRID_IN, 8 * GRID_OUT


@dataclass(eq=False)
class StylerDALLE:
    """What StyleKit StylerDALLE Load returns: the dVAE halves and one style's translator."""
    encoder: DVAEEncoder
    decoder: DVAEDecoder
    translator: StylerDALLETranslator
    style: str = ""

    def __deepcopy__(self, memo):
        return self

    def check(self) -> None:
        v = (self.encoder.vocab, self.decoder.vocab, self.translator.vocab)
        if len(set(v)) != 1 or self.translator.input_dim != self.decoder.n_init:
            raise InputError(f"dVAE and translator do not fit: vocabularies (encoder, decoder, translator) {v}, "
                             f"translator input {self.translator.input_dim} vs the decoder's first width "
                             f"{self.decoder.n_init}")


def square_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> (B, 3, size, size), squashed with an antialiased bicubic resize."""
    if images.ndim != 4 or images.shape[-1] < 3:
        raise InputError(f"expected an IMAGE batch (B, H, W, 3); got shape {tuple(images.shape)}")
    return square(images[..., :3], size, SQUASH).movedim(-1, 1).float().clamp(0, 1)


def training_tokens(encoder: DVAEEncoder, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(16x16 tokens at 128 px, 32x32 tokens at 256 px) of each image."""
    device = next(encoder.parameters()).device
    with torch.no_grad():
        return (encoder.tokens(square_pixels(images, CONTENT_PX).to(device)),
                encoder.tokens(square_pixels(images, OUTPUT_PX).to(device)))


@torch.no_grad()
def stylize(model: StylerDALLE, images: torch.Tensor, seed: int = 0, argmax: bool = False,
            official_dropout: bool = False, batch: int = 8, callback=None) -> torch.Tensor:
    """IMAGE batch -> stylised IMAGE batch (B, 256, 256, 3). Runs ``batch`` images at a time; image i
    is sampled with seed + i, so its result does not depend on the batching."""
    model.check()
    device = next(model.translator.parameters()).device
    out = []
    for start in range(0, images.shape[0], batch):
        chunk = images[start:start + batch]
        tokens16 = model.encoder.tokens(square_pixels(chunk, CONTENT_PX).to(device))
        log_probs = model.translator(embed_tokens(model.decoder, tokens16), official_dropout=official_dropout)
        ids = torch.cat([sample_tokens(log_probs[j:j + 1], seed + start + j, argmax) for j in range(len(chunk))])
        out.append(model.decoder.decode(ids).movedim(1, -1).float().cpu())
        if callback is not None:
            callback(start + len(chunk), images.shape[0])
    return torch.cat(out)
