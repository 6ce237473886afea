"""StylerDALLE in the miniature world: a dVAE trained here, then a translator through StyleKit's own
pre-training (token super-resolution) and REINFORCE trainers, the reward from the miniature CLIP.

The world's 64 px images are squashed to the pack's 128 px (16x16 tokens) and 256 px (32x32 tokens)
like any user image. The style is one texture word: the reward is the CLIP cosine between the decoded
image (area-resized to 64 px) and the content's caption with its texture word replaced by the style's,
the miniature of "{style} of {caption}".
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.dvae import DVAEDecoder, DVAEEncoder, map_pixels
from ..models.stylerdalle import StylerDALLETranslator
from ..models.stylerdalle_pipeline import square_pixels, training_tokens
from ..models.stylerdalle_train import PretrainSettings, StyleSettings, pretrain, train_style
from . import world
from .family import WordTokenizer, image_embeds, images_tensor, text_embeds

STYLE = "dotted"
DVAE_FILE, PRETRAINED_FILE, STYLE_FILE = ("toy_dvae.safetensors", "toy_stylerdalle_pretrained.safetensors",
                                          f"toy_stylerdalle_{STYLE}.safetensors")
DVAE = {"n_hid": 16, "blocks_per_group": 1, "vocab": 128}
TRANSLATOR = {"hidden": 64, "heads": 4, "decoder_blocks": 2, "encoder_layers": 2}


def train_dvae(steps: int, seed: int, stage_cls, work: Path, log=print):
    """Gumbel-softmax dVAE on world images at 128 px: MSE of the decoder's mean in the dVAE's pixel range
    plus a small KL to the uniform prior; hard (straight-through) samples in the second half."""
    torch.manual_seed(seed)
    enc, dec = DVAEEncoder(**DVAE), DVAEDecoder(**DVAE, n_init=32)
    both = torch.nn.ModuleDict({"encoder": enc, "decoder": dec})
    from .train import batch_seed

    def step(i):
        scenes = world.random_scenes(16, batch_seed(seed, "stylerdalle", i))
        x = square_pixels(images_tensor(scenes), 128)
        logits = enc(map_pixels(x))
        g = torch.Generator().manual_seed(i)
        gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=g).clamp(1e-9, 1 - 1e-9)))
        soft = ((logits + gumbel) / 1.0).softmax(1)
        if i >= steps // 2:
            hard = F.one_hot(soft.argmax(1), DVAE["vocab"]).permute(0, 3, 1, 2).float()
            soft = hard + soft - soft.detach()
        out = torch.sigmoid(dec(soft)[:, :3])
        q = logits.log_softmax(1)
        kl = (q.exp() * (q + torch.log(torch.tensor(float(DVAE["vocab"]))))).sum(1).mean()
        return F.mse_loss(out, map_pixels(x)) + 1e-3 * kl

    stage_cls("dvae", both.parameters(), 2e-3, steps, work, seed, log=log).run(step, {"model": both}, 100)
    return enc.eval().requires_grad_(False), dec.eval().requires_grad_(False)


def content_set(n: int, seed: int):
    return world.random_scenes(n, seed)


def styled_caption(scene) -> str:
    return world.caption(dataclasses.replace(scene, texture=STYLE))


def clip_reward(clip_model):
    """reward(images (B, 3, 256, 256) in [0, 1], captions) -> (B,) CLIP cosines (the miniature CLIP)."""
    tok = WordTokenizer()

    def reward(images, captions):
        small = F.interpolate(images.float(), size=(world.SIZE, world.SIZE), mode="area").permute(0, 2, 3, 1)
        with torch.no_grad():
            img = F.normalize(image_embeds(clip_model, small), dim=-1)
            txt = F.normalize(text_embeds(clip_model, tok.batch(captions)), dim=-1)
        return (img * txt).sum(-1)
    return reward


def train_translators(encoder, decoder, clip_model, seed: int, pre_steps: int, rl_steps: int, log=print):
    """(pre-trained translator, translator after REINFORCE towards STYLE)."""
    torch.manual_seed(seed)
    net = StylerDALLETranslator(input_dim=decoder.n_init, vocab=decoder.vocab, **TRANSLATOR)
    scenes = content_set(512, seed + 11)
    t16, t32 = training_tokens(encoder, images_tensor(scenes))
    pre, nll = pretrain(net, decoder, t16, t32, PretrainSettings(steps=pre_steps, lr=1e-3, batch=16, warmup=50, seed=seed),
                        callback=lambda s, n: s % 100 == 0 and log(f"[stylerdalle pretrain] step {s}/{n}"))
    log(f"[stylerdalle pretrain] NLL {nll[0]:.3f} -> {_tail_mean(nll):.3f}")
    rl_scenes = scenes[:128]
    styled, _, rewards, _ = train_style(pre, decoder, t16[:128], clip_reward(clip_model),
                                        [styled_caption(s) for s in rl_scenes],
                                        StyleSettings(steps=rl_steps, lr=3e-5, batch=8, seed=seed),
                                        callback=lambda s, n: s % 50 == 0 and log(f"[stylerdalle RL] step {s}/{n}"))
    log(f"[stylerdalle RL] reward {_tail_mean(rewards[:20]):.4f} -> {_tail_mean(rewards):.4f}")
    return pre, styled


def _tail_mean(values: list, n: int = 20) -> float:
    tail = values[-n:]
    return sum(tail) / len(tail)
