"""The miniature model family, in the published layouts, and the one way to save and load it.

- ``clip``: a transformers ``CLIPModel`` (text tower + vision tower + projections, the key layout of
  openai/clip-vit-large-patch14) with a word-level tokenizer over the world's vocabulary.
- ``vae``: a diffusers ``AutoencoderKL`` (4 latent channels, downsampling 4: 64 px -> 16x16).
- ``unet``: a diffusers ``UNet2DConditionModel`` in SD1.5's block layout (attention in input 1, 2, 4,
  5, 7, 8, middle 0, output 3..11), eps prediction on SD's scaled-linear schedule.
- ``probes``: :class:`Probes`, the judges.

Each file is fp16 safetensors whose metadata holds ``format`` (``stylekit-toy``), ``version``,
``seed``, ``kind`` and the ``config`` the module is built from, so a file carries its own shape.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightFileError
from ..models.weights_file import load_into, read_safetensors, require_finite
from . import world

FORMAT = "stylekit-toy"
VERSION = 1
SEED = 0
WEIGHTS = Path(__file__).resolve().parent / "weights"
KINDS = ("clip", "vae", "unet", "probes", "ip_adapter")
CONTEXT = 77


class WordTokenizer:
    """Word-level tokenizer over the world's vocabulary: bos, one id per word, eos, padded with eos to
    77 (CLIP's convention). Unknown words map to ``<unk>`` (id 0)."""

    def __init__(self, words=world.VOCABULARY):
        self.words = ("<unk>", *words, "<bos>", "<eos>")
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.bos, self.eos = len(self.words) - 2, len(self.words) - 1

    def __len__(self):
        return len(self.words)

    def __call__(self, text: str) -> list[int]:
        ids = [self.bos] + [self.ids.get(w, 0) for w in text.lower().split()][: CONTEXT - 2] + [self.eos]
        return ids + [self.eos] * (CONTEXT - len(ids))

    def batch(self, texts) -> torch.Tensor:
        return torch.tensor([self(t) for t in texts])


def clip_config(tok: WordTokenizer | None = None) -> dict:
    tok = tok or WordTokenizer()
    return {"text_config": {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128,
                            "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": CONTEXT,
                            "hidden_act": "quick_gelu", "bos_token_id": tok.bos, "eos_token_id": tok.eos,
                            "pad_token_id": tok.eos, "projection_dim": 64},
            "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                              "num_attention_heads": 4, "image_size": world.SIZE, "patch_size": 8,
                              "hidden_act": "quick_gelu", "projection_dim": 64},
            "projection_dim": 64}


def vae_config() -> dict:
    return {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [16, 32, 32],
            "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
            "layers_per_block": 1, "norm_num_groups": 8, "sample_size": world.SIZE, "scaling_factor": 1.0}


def unet_config() -> dict:
    """SD1.5's block layout at miniature widths; one attention head at 16x16 and two at 8x8 (at head
    widths of 4, as 8 heads would give, the CPU's attention kernels take twice as long per step)."""
    return {"sample_size": world.SIZE // 4, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": [32, 32, 64, 64],
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "cross_attention_dim": 64, "attention_head_dim": [1, 2, 4, 4], "norm_num_groups": 8}


def ip_adapter_config(unet=None) -> dict:
    """A plain IP-Adapter for the miniature UNet: 4 tokens from the CLIP image embedding, image K/V for
    each cross-attention layer, numbered as its processor in diffusers' ``attn_processors`` order."""
    unet = unet or build("unet")
    layers = {str(n): unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
              for n, name in enumerate(unet.attn_processors) if name.endswith("attn2.processor")}
    return {"embed_dim": 64, "context_dim": 64, "tokens": 4, "layers": layers}


class IPAdapter(nn.Module):
    """The published plain IP-Adapter layout: ``image_proj.{proj,norm}`` and ``ip_adapter.{n}.to_{k,v}_ip``
    (what :func:`stylekit.models.ip_adapter.load_adapter` reads)."""

    def __init__(self, embed_dim: int, context_dim: int, tokens: int, layers: dict):
        super().__init__()
        from ..models.ip_adapter import ImageProjection
        self.image_proj = ImageProjection(embed_dim, context_dim, tokens)
        self.ip_adapter = nn.ModuleDict()
        for n, width in layers.items():
            m = nn.Module()
            m.to_k_ip, m.to_v_ip = nn.Linear(context_dim, width, bias=False), nn.Linear(context_dim, width, bias=False)
            self.ip_adapter[str(n)] = m


def probes_config() -> dict:
    return {"widths": [32, 64, 96, 128], "classes": {k: len(v) for k, v in world.CLASSES.items()}}


class Probes(nn.Module):
    """Small CNN that reads an IMAGE (B, 64, 64, 3 in [0, 1]): logits for shape, colour, texture and
    background, and the shape's (x, y, size) as fractions of the image."""

    def __init__(self, widths=(32, 64, 96, 128), classes=None):
        super().__init__()
        classes = classes or {k: len(v) for k, v in world.CLASSES.items()}
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * (world.SIZE // 16) ** 2, 256), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(256, n) for k, n in classes.items()})
        self.layout = nn.Linear(256, 3)

    def forward(self, images: torch.Tensor) -> dict:
        h = self.features(images.permute(0, 3, 1, 2) * 2 - 1)
        out = {k: head(h) for k, head in self.heads.items()}
        out["layout"] = self.layout(h)
        return out

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> dict:
        """Class index per head, and the layout (B, 3), for images of any size (resized to 64 px)."""
        if images.shape[1:3] != (world.SIZE, world.SIZE):
            x = images.permute(0, 3, 1, 2)
            images = nn.functional.interpolate(x, size=(world.SIZE,) * 2, mode="area").permute(0, 2, 3, 1)
        out = self(images.float())
        return {k: (v if k == "layout" else v.argmax(-1)) for k, v in out.items()}


def build(kind: str, config: dict | None = None):
    """A freshly initialised module of ``kind`` from ``config`` (the default configuration if None)."""
    if kind == "clip":
        from transformers import CLIPConfig, CLIPModel
        c = config or clip_config()
        return CLIPModel(CLIPConfig(text_config=c["text_config"], vision_config=c["vision_config"],
                                    projection_dim=c["projection_dim"]))
    if kind == "vae":
        from diffusers import AutoencoderKL
        return AutoencoderKL(**(config or vae_config()))
    if kind == "unet":
        from diffusers import UNet2DConditionModel
        return UNet2DConditionModel(**(config or unet_config()))
    if kind == "probes":
        c = config or probes_config()
        return Probes(tuple(c["widths"]), c["classes"])
    if kind == "ip_adapter":
        return IPAdapter(**(config or ip_adapter_config()))
    raise ValueError(f"unknown miniature model {kind!r}; one of {KINDS}")


def config_of(kind: str, module) -> dict:
    if kind == "clip":
        cfg = clip_config()
        cfg["text_config"]["vocab_size"] = module.config.text_config.vocab_size
        return cfg
    if kind in ("vae", "unet"):
        base = vae_config() if kind == "vae" else unet_config()
        return {k: module.config[k] if not isinstance(module.config[k], tuple) else list(module.config[k])
                for k in base}
    if kind == "ip_adapter":
        p = module.image_proj
        return {"embed_dim": p.proj.in_features, "context_dim": p.context_dim, "tokens": p.tokens,
                "layers": {n: m.to_k_ip.out_features for n, m in module.ip_adapter.items()}}
    return probes_config()


def metadata(kind: str, module, seed: int, extra: dict | None = None) -> dict:
    meta = {"format": FORMAT, "version": str(VERSION), "seed": str(seed), "kind": kind,
            "config": json.dumps(config_of(kind, module), sort_keys=True)}
    meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    return meta


def file_name(kind: str) -> str:
    return f"toy_{kind}.safetensors"


def save(kind: str, module, folder, seed: int, force: bool = False, extra: dict | None = None) -> str:
    """Write ``module``'s weights as fp16 safetensors (through :mod:`stylekit.files`: never half-written,
    never overwriting unless ``force``)."""
    from safetensors.torch import save_file

    from ..files import output_target, write_new
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in module.state_dict().items()
          if not k.endswith("position_ids")}
    target = output_target(str(folder), file_name(kind), ".safetensors", numbered=False, force=force)
    return write_new(target, lambda tmp: save_file(sd, tmp, metadata=metadata(kind, module, seed, extra)))


def load(kind: str, folder=WEIGHTS):
    """The module saved as ``kind`` in ``folder`` (float32, eval mode), built from the file's own config."""
    path = str(Path(folder) / file_name(kind))
    what = f"the miniature world's {kind} (make toy writes it)"
    tensors, meta = read_safetensors(path, what)
    if meta.get("format") != FORMAT or meta.get("kind") != kind:
        raise WeightFileError(f"{path}: not a StyleKit miniature {kind} file (format {meta.get('format')!r}, kind "
                              f"{meta.get('kind')!r}); run make toy to write it again")
    if meta.get("version") != str(VERSION):
        raise WeightFileError(f"{path}: miniature-world version {meta.get('version')}, this code reads {VERSION}; "
                              "run make toy")
    require_finite(tensors, path)
    module = build(kind, json.loads(meta["config"]))
    own = module.state_dict()
    tensors = {k: v.to(own[k].dtype) if k in own else v for k, v in tensors.items()}
    for k in own:
        if k.endswith("position_ids"):
            tensors[k] = own[k]
    return load_into(module, tensors, path, f"a miniature {kind}").eval()


def file_metadata(kind: str, folder=WEIGHTS) -> dict:
    _, meta = read_safetensors(str(Path(folder) / file_name(kind)), f"the miniature world's {kind}", keep=lambda k: False)
    return meta


class ToyWorld:
    """The trained miniature world, loaded once: ``clip`` (ComfyUI-shaped CLIP for prompts), ``clip_model``
    (the transformers CLIPModel), ``vae`` (ComfyUI-shaped, over the diffusers AutoencoderKL), ``model`` (a
    BridgePatcher over the UNet), ``probes``."""

    def __init__(self, folder=WEIGHTS):
        from ..bridge import BridgePatcher, BridgeVAE
        from ..bridge.clip_text import BridgeCLIP, clip_text_from_transformers
        self.tokenizer = WordTokenizer()
        self.clip_model = load("clip", folder)
        self.clip = BridgeCLIP(clip_text_from_transformers(self.clip_model.text_model), tokenizer=self.tokenizer)
        self.vae = BridgeVAE(load("vae", folder))
        self.unet = load("unet", folder)
        self.model = BridgePatcher(self.unet)
        self.probes = load("probes", folder)
        self.folder = Path(folder)

    def adapter(self):
        """The miniature IP-Adapter as a user loads one: through StyleKit's own loader."""
        from ..models.ip_adapter import load_adapter
        return load_adapter(str(self.folder / file_name("ip_adapter")))

    def deadiff(self):
        """The miniature DEADiff (Q-Formers trained by ``make toy``) as a user loads one: StyleKit DEADiff Loader's code."""
        from ..models.deadiff import load_deadiff
        from .deadiff import DEADIFF_FILE
        return load_deadiff(str(self.folder / DEADIFF_FILE))

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP ``image_embeds`` (B, 64) of IMAGE (B, 64, 64, 3): the vision tower at its own 64 px."""
        with torch.no_grad():
            return image_embeds(self.clip_model, images)

    def encode(self, text: str) -> torch.Tensor:
        with torch.no_grad():
            return self.clip.encode_from_tokens(self.clip.tokenize(text))

    def to_latent(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images)

    def to_image(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> IMAGE (B, 64, 64, 3) in [0, 1]."""
        return self.vae.decode(latents)


def image_embeds(clip_model, images: torch.Tensor) -> torch.Tensor:
    """CLIP's ``image_embeds``: the projected pooled output of the vision tower, for IMAGE (B, 64, 64, 3)."""
    out = clip_model.vision_model(pixel_values=images.permute(0, 3, 1, 2) * 2 - 1)
    return clip_model.visual_projection(out.pooler_output)


def text_embeds(clip_model, input_ids: torch.Tensor) -> torch.Tensor:
    """CLIP's ``text_embeds``: the projected pooled (eos) output of the text tower."""
    return clip_model.text_projection(clip_model.text_model(input_ids=input_ids).pooler_output)


@lru_cache(maxsize=2)
def load_world(folder: str = str(WEIGHTS)) -> ToyWorld:
    return ToyWorld(folder)


def images_tensor(scenes) -> torch.Tensor:
    return torch.from_numpy(world.render(scenes))
