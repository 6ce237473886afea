"""Training the miniature world (``make toy``): seeded, resumable, CPU-sized.

Stages, in order (each reads what the earlier ones wrote):

1. ``clip``: text and vision towers trained together contrastively on (image, caption) pairs; captions
   that repeat in a batch count as positives of each other.
2. ``vae``: reconstruction (MSE) + a small KL term; afterwards ``scaling_factor`` = 1 / std of the latents.
3. ``probes``: the judges, on world images, half of them passed through the VAE (what they will read).
4. ``unet``: eps-prediction on SD's scaled-linear schedule with Min-SNR-5 weighting, conditioned on the
   frozen CLIP text tower's last hidden states, captions dropped 10 % of the time; then a second phase
   (``unet_partial``) on captions that leave each field out half of the time; EMA weights ship.
5. ``ip_adapter``: image reconstruction through the frozen UNet on those partial captions.
6-8. ``catversion``, ``stylerdalle``, ``deadiff``: StyleKit's own trainers (see each function).

Every batch is drawn from the world with a seed made of (seed, stage, step), so a run resumed from a
checkpoint (saved every ``checkpoint_every`` steps in ``work/``) draws exactly the batches it would
have drawn. ``metrics.json`` beside the weights records what the trained family measures.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..bridge.schedule import DiscreteSchedule
from . import family, world
from .family import WordTokenizer, build, images_tensor

STAGES = ("clip", "vae", "probes", "unet", "ip_adapter", "catversion", "stylerdalle", "deadiff")  # append only: a
# stage's salt is its place here, and every shipped file depends on its stage's salt
CONCEPT_FILE = "toy_catversion_heart.safetensors"
_STAGE_SALT = {name: i + 1 for i, name in enumerate(STAGES)}


@dataclass
class Plan:
    """Steps, batch sizes and learning rates of each stage (the defaults are what ships)."""
    clip_steps: int = 500
    clip_batch: int = 256
    vae_steps: int = 1200
    vae_batch: int = 32
    probe_steps: int = 900
    probe_batch: int = 64
    unet_steps: int = 7000
    unet_batch: int = 32
    unet_lr: float = 6e-4
    unet_partial_steps: int = 1000  # then captions that name part of the scene (train_unet's phase 2)
    unet_partial_lr: float = 2e-4
    unet_hidden: float = 0.2  # the share of the UNet's circles drawn as hearts (CatVersion's concept, never named)
    adapter_steps: int = 2000
    adapter_batch: int = 32
    adapter_lr: float = 1e-3
    catversion_steps: int = 1000
    dvae_steps: int = 800
    dalle_pre_steps: int = 1000
    dalle_rl_steps: int = 150
    deadiff_steps: int = 4000
    deadiff_batch: int = 16
    deadiff_lr: float = 3e-3
    ema: float = 0.998
    caption_drop: float = 0.1
    checkpoint_every: int = 100

    def scaled(self, factor: float) -> "Plan":
        if factor == 1.0:
            return self
        steps = {k: max(2, round(v * factor)) for k, v in vars(self).items() if k.endswith("_steps")}
        return dataclasses.replace(self, **steps, checkpoint_every=max(1, round(self.checkpoint_every * factor)))


def warmup_cosine(step: int, warmup: int, steps: int) -> float:
    return min(1.0, (step + 1) / warmup) * (0.5 + 0.5 * math.cos(math.pi * min(step / steps, 1.0)))


def batch_seed(seed: int, stage: str, step: int) -> int:
    return (seed * 1_000_003 + _STAGE_SALT[stage] * 100_003 + step) % (2 ** 31)


def scenes_for(seed: int, stage: str, step: int, n: int):
    return world.random_scenes(n, batch_seed(seed, stage, step))


class Stage:
    """A training loop over ``modules`` with AdamW, resumable from ``work/<name>.pt``."""

    def __init__(self, name, params, lr, steps, work: Path, seed: int, warmup: int = 50, log=print):
        """``lr`` with a linear warm-up over ``warmup`` steps, then a cosine to 0."""
        self.name, self.steps, self.work, self.seed, self.log = name, steps, work, seed, log
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: warmup_cosine(s, warmup, steps))
        self.path = work / f"{name}.pt"

    def resume(self, state_modules: dict) -> int:
        if not self.path.exists():
            return 0
        ck = torch.load(self.path, map_location="cpu", weights_only=True)
        for k, m in state_modules.items():
            m.load_state_dict(ck[k])
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        self.log(f"[{self.name}] resumed at step {ck['step']}")
        return ck["step"]

    def checkpoint(self, step: int, state_modules: dict) -> None:
        ck = {k: m.state_dict() for k, m in state_modules.items()}
        ck.update(opt=self.opt.state_dict(), sched=self.sched.state_dict(), step=step)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(ck, tmp)
        tmp.replace(self.path)

    def run(self, step_fn, state_modules: dict, every: int, after_step=None) -> None:
        """``step_fn(step)`` returns the loss; ``after_step()`` runs after each optimiser step (an EMA)."""
        start = self.resume(state_modules)
        t0, losses = time.perf_counter(), []
        for step in range(start, self.steps):
            loss = step_fn(step)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 1.0)
            self.opt.step()
            self.sched.step()
            if after_step is not None:
                after_step()
            losses.append(loss.item())
            if (step + 1) % every == 0 or step + 1 == self.steps:
                self.checkpoint(step + 1, state_modules)
                rate = (time.perf_counter() - t0) / (step + 1 - start)
                self.log(f"[{self.name}] step {step + 1}/{self.steps}  loss {sum(losses) / len(losses):.4f}  "
                         f"{rate:.2f} s/step  ~{rate * (self.steps - step - 1) / 60:.1f} min left")
                losses = []


# --- 1. CLIP -------------------------------------------------------------------------------------------
def train_clip(plan: Plan, work: Path, seed: int, log=print):
    torch.manual_seed(seed)
    tok = WordTokenizer()
    clip = build("clip").train()

    def step(i):
        scenes = scenes_for(seed, "clip", i, plan.clip_batch)
        caps = [world.caption(s) for s in scenes]
        img = images_tensor(scenes).permute(0, 3, 1, 2) * 2 - 1
        out = clip(input_ids=tok.batch(caps), pixel_values=img)
        same = torch.tensor([[a == b for b in caps] for a in caps], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        li = out.logits_per_image
        return 0.5 * (-(target * li.log_softmax(1)).sum(1).mean() - (target * li.t().log_softmax(1)).sum(1).mean())

    Stage("clip", clip.parameters(), 1e-3, plan.clip_steps, work, seed, log=log).run(
        step, {"model": clip}, plan.checkpoint_every)
    return clip.eval()


# --- 2. VAE --------------------------------------------------------------------------------------------
def train_vae(plan: Plan, work: Path, seed: int, log=print):
    torch.manual_seed(seed)
    vae = build("vae").train()

    def step(i):
        x = images_tensor(scenes_for(seed, "vae", i, plan.vae_batch)).permute(0, 3, 1, 2) * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(i))
        rec = vae.decode(z).sample
        return F.mse_loss(rec, x) + 1e-5 * post.kl().mean()

    Stage("vae", vae.parameters(), 1e-3, plan.vae_steps, work, seed, log=log).run(
        step, {"model": vae}, plan.checkpoint_every)
    vae.eval()
    with torch.no_grad():
        x = images_tensor(world.random_scenes(256, batch_seed(seed, "vae", 10 ** 6))).permute(0, 3, 1, 2) * 2 - 1
        std = float(vae.encode(x).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    return vae


# --- 3. probes -----------------------------------------------------------------------------------------
def probe_batch(vae, scenes, g: torch.Generator, vae_share: float = 0.5) -> torch.Tensor:
    """World images, the first ``vae_share`` of them through the VAE, plus light noise."""
    img = images_tensor(scenes)
    k = int(len(scenes) * vae_share)
    if k:
        with torch.no_grad():
            x = img[:k].permute(0, 3, 1, 2) * 2 - 1
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        img[:k] = (rec.permute(0, 2, 3, 1) + 1) / 2
    return (img + 0.02 * torch.randn(img.shape, generator=g)).clamp(0, 1)


def layout_target(scenes) -> torch.Tensor:
    return torch.tensor([[s.x, s.y, s.size] for s in scenes], dtype=torch.float32)


def train_probes(plan: Plan, work: Path, seed: int, vae, log=print):
    torch.manual_seed(seed)
    probes = build("probes").train()

    def step(i):
        scenes = world.random_scenes(plan.probe_batch, batch_seed(seed, "probes", i), shapes=world.PROBE_SHAPES)
        out = probes(probe_batch(vae, scenes, torch.Generator().manual_seed(i)))
        lab = world.labels(scenes)
        loss = sum(F.cross_entropy(out[k], torch.from_numpy(v)) for k, v in lab.items())
        return loss + 10 * F.mse_loss(out["layout"], layout_target(scenes))

    Stage("probes", probes.parameters(), 2e-3, plan.probe_steps, work, seed, log=log).run(
        step, {"model": probes}, plan.checkpoint_every)
    return probes.eval()


# --- 4. UNet -------------------------------------------------------------------------------------------
def caption_table(clip, tok: WordTokenizer, partial: bool = False) -> tuple[dict, torch.Tensor]:
    """Last hidden states of the frozen text tower for every caption the world can write (and ""); with
    ``partial`` also every caption that leaves fields out (:func:`world.caption`'s ``omit``)."""
    omits = [()] if not partial else \
        [tuple(f for k, f in enumerate(world.NAMED) if m >> k & 1) for m in range(2 ** len(world.NAMED))]
    caps = [""] + sorted({world.caption(world.Scene(s, c, t, b), o) for s in world.SHAPES for c in world.COLOURS
                          for t in world.TEXTURES for b in world.COLOURS if b != c for o in omits})
    with torch.no_grad():
        states = torch.cat([clip.text_model(input_ids=tok.batch(caps[i:i + 256])).last_hidden_state
                            for i in range(0, len(caps), 256)])
    return {c: i for i, c in enumerate(caps)}, states


def partial_caption(scene, draws: torch.Tensor, omit_rate: float = 0.5, drop: float = 0.05) -> str:
    """A training caption that names part of the scene: empty at ``drop`` (draws[-1]), otherwise each field named with
    probability 1 - ``omit_rate`` (draws[k] for world.NAMED[k]). Real captions leave out most of what their
    images show, and what a caption leaves out is what an image prompt must carry."""
    if float(draws[-1]) < drop:
        return ""
    return world.caption(scene, tuple(f for f, u in zip(world.NAMED, draws.tolist()) if u < omit_rate))


def train_unet(plan: Plan, work: Path, seed: int, clip, vae, log=print):
    torch.manual_seed(seed)
    unet = build("unet").train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    index, states = caption_table(clip, WordTokenizer())
    acp = 1.0 / (1.0 + DiscreteSchedule().sigmas.double() ** 2)  # alphas_cumprod
    snr = acp / (1 - acp)
    scale = vae.config.scaling_factor

    def batch(k):
        """Step ``k``'s generator, scenes (some circles drawn as hearts) and latents."""
        g = torch.Generator().manual_seed(batch_seed(seed, "unet", k))
        scenes = world.with_hidden(scenes_for(seed, "unet", k, plan.unet_batch), plan.unet_hidden,
                                   batch_seed(seed, "unet", k) + 1)
        with torch.no_grad():
            post = vae.encode(images_tensor(scenes).permute(0, 3, 1, 2) * 2 - 1).latent_dist
            x0 = (post.mean + post.std * torch.randn(post.mean.shape, generator=g)) * scale
        return g, scenes, x0

    def loss(g, x0, ctx):
        t = torch.randint(0, 1000, (len(x0),), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = acp[t].float().view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = unet(xt, t, encoder_hidden_states=ctx).sample
        w = (snr[t].clamp(max=5.0) / snr[t]).float()
        return (w * (pred - eps).pow(2).mean((1, 2, 3))).mean()

    def step(i):
        g, scenes, x0 = batch(i)
        caps = [world.caption(s) if float(torch.rand((), generator=g)) >= plan.caption_drop else "" for s in scenes]
        return loss(g, x0, states[[index[c] for c in caps]])

    @torch.no_grad()
    def follow():  # the EMA follows every optimiser step (and is checkpointed with the model)
        for pe, p in zip(ema.parameters(), unet.parameters()):
            pe.lerp_(p, 1 - plan.ema)

    Stage("unet", unet.parameters(), plan.unet_lr, plan.unet_steps, work, seed, warmup=100, log=log).run(
        step, {"model": unet, "ema": ema}, plan.checkpoint_every, after_step=follow)
    # phase 2: captions that leave fields out (partial_caption), so a prompt may name only part of an image
    # and leave the rest to an image prompt, as real prompts do; its own warm-up and cosine, its batches
    # continuing phase 1's seeds
    partial_index, partial_states = caption_table(clip, WordTokenizer(), partial=True)

    def step2(i):
        g, scenes, x0 = batch(plan.unet_steps + i)
        draws = torch.rand(len(scenes), len(world.NAMED) + 1, generator=g)
        caps = [partial_caption(s, u, drop=plan.caption_drop) for s, u in zip(scenes, draws)]
        return loss(g, x0, partial_states[[partial_index[c] for c in caps]])

    Stage("unet_partial", unet.parameters(), plan.unet_partial_lr, plan.unet_partial_steps, work, seed, log=log).run(
        step2, {"model": unet, "ema": ema}, plan.checkpoint_every, after_step=follow)
    return ema


# --- 5. IP-Adapter -------------------------------------------------------------------------------------
class _DecoupledAttn2:
    """Training-time attn2 processor: text attention + image attention over the adapter's tokens (the
    IP-Adapter sum, scale 1), so the adapter learns through the frozen UNet."""

    def __init__(self, to_k_ip, to_v_ip, tokens: dict):
        self.to_k_ip, self.to_v_ip, self.tokens = to_k_ip, to_v_ip, tokens

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        b, n, _ = hidden_states.shape
        split = lambda t: t.view(b, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)  # noqa: E731
        q = split(attn.to_q(hidden_states))
        text = F.scaled_dot_product_attention(q, split(attn.to_k(encoder_hidden_states)),
                                              split(attn.to_v(encoder_hidden_states)))
        c = self.tokens["now"]
        image = F.scaled_dot_product_attention(q, split(self.to_k_ip(c)), split(self.to_v_ip(c)))
        out = (text + image).transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[1](attn.to_out[0](out))


def train_ip_adapter(plan: Plan, work: Path, seed: int, clip, vae, unet, log=print):
    """The usual IP-Adapter objective: eps-MSE with the target image's own CLIP embedding as the image
    prompt (5 % of embeddings and 5 % of captions dropped, each field of the others left out at 50 %:
    :func:`partial_caption`); the UNet and CLIP stay frozen. to_k_ip /
    to_v_ip start as copies of each layer's to_k / to_v, as in the IP-Adapter paper."""
    torch.manual_seed(seed)
    unet = copy.deepcopy(unet).eval().requires_grad_(False)
    adapter = build("ip_adapter", family.ip_adapter_config(unet)).train()
    tokens = {}
    procs = dict(unet.attn_processors)
    for n, name in enumerate(procs):
        if name.endswith("attn2.processor"):
            attn, ip = unet.get_submodule(name.removesuffix(".processor")), adapter.ip_adapter[str(n)]
            with torch.no_grad():
                ip.to_k_ip.weight.copy_(attn.to_k.weight)
                ip.to_v_ip.weight.copy_(attn.to_v.weight)
            procs[name] = _DecoupledAttn2(ip.to_k_ip, ip.to_v_ip, tokens)
    unet.set_attn_processor(procs)
    index, states = caption_table(clip, WordTokenizer(), partial=True)
    acp = 1.0 / (1.0 + DiscreteSchedule().sigmas.double() ** 2)
    scale = vae.config.scaling_factor

    def step(i):
        g = torch.Generator().manual_seed(batch_seed(seed, "ip_adapter", i))
        scenes = scenes_for(seed, "ip_adapter", i, plan.adapter_batch)
        img = images_tensor(scenes)
        with torch.no_grad():
            x0 = vae.encode(img.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean * scale
            emb = family.image_embeds(clip, img)
        keep = (torch.rand(len(scenes), 1, generator=g) >= 0.05).float()
        tokens["now"] = adapter.image_proj(emb * keep)
        caps = [partial_caption(s, torch.rand(len(world.NAMED) + 1, generator=g)) for s in scenes]
        t = torch.randint(0, 1000, (len(scenes),), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = acp[t].float().view(-1, 1, 1, 1)
        pred = unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t, encoder_hidden_states=states[[index[c] for c in caps]]).sample
        return F.mse_loss(pred, eps)

    Stage("ip_adapter", adapter.parameters(), plan.adapter_lr, plan.adapter_steps, work, seed, log=log).run(
        step, {"model": adapter}, plan.checkpoint_every)
    return adapter.eval()


# --- 6. CatVersion -------------------------------------------------------------------------------------
def concept_scenes(seed: int, n: int = 6):
    """The concept's training images: red striped hearts on white, captioned by the base class (circle)."""
    return world.random_scenes(n, batch_seed(seed, "catversion", 0), shapes=("heart",), colour="red",
                               texture="striped", background="white")


def train_catversion(plan: Plan, seed: int, toy, log=print):
    """A CatVersion prefix for the heart through StyleKit's own trainer (the node's code path): the images
    and their mirror images, the caption naming the base class; 1000 steps of the paper's AdamW 1e-2 (its default length)."""
    from ..models.catversion import CatVersionPrefix, catversion_clip, prefixed_layers
    from ..models.catversion_train import TrainSettings, train_prefix
    from ..models.magicstyle import host_apply_model
    scenes = concept_scenes(seed)
    images = images_tensor(scenes)
    latents = toy.to_latent(torch.cat([images, images.flip(2)]))
    n_layers = len(toy.clip.text_model.encoder.layers)
    prefix = CatVersionPrefix.random(list(range(n_layers - 3, n_layers)), toy.clip.text_model.final_layer_norm.normalized_shape[0],
                                     seed=seed, base_word="circle")
    prefixed_layers(prefix, toy.clip)
    text = catversion_clip(toy.clip, prefix, trainable=True)
    tokens = text.tokenize(world.caption(scenes[0]))

    def progress(step, total):
        if step % 100 == 0 or step == total:
            log(f"[catversion] step {step}/{total}")
    train_prefix(prefix, lambda: text.encode_from_tokens(tokens),
                 lambda x, s, c: host_apply_model(toy.model, x, s, c, {}), latents, toy.model.model_sampling.sigmas,
                 TrainSettings(steps=plan.catversion_steps, seed=seed), progress=progress)
    return prefix


def write_file(folder: Path, name: str, force: bool, write, extension: str = ".safetensors") -> str:
    """``write(path)`` through :mod:`stylekit.files`: never half-written, never overwriting unless ``force``."""
    from ..files import output_target, write_new
    return write_new(output_target(str(folder), name, extension, numbered=False, force=force), write)


def save_catversion(prefix, folder: Path, force: bool) -> str:
    from ..models.catversion import save_prefix
    return write_file(folder, CONCEPT_FILE, force, lambda tmp: save_prefix(prefix, tmp))


def train_stylerdalle(plan: Plan, work: Path, seed: int, folder: Path, force: bool, clip, log=print) -> None:
    """The dVAE, then the pre-trained and the style translator (see :mod:`.stylerdalle`), each saved in the
    pack's own formats (what StyleKit StylerDALLE Load reads)."""
    from safetensors.torch import save_file

    from ..models.stylerdalle import save_translator
    from . import stylerdalle as sd
    enc, dec = sd.train_dvae(plan.dvae_steps, seed, Stage, work, log)
    tensors = {f"{part}.{k}": v.half().contiguous() for part, m in (("encoder", enc), ("decoder", dec))
               for k, v in m.state_dict().items()}
    write_file(folder, sd.DVAE_FILE, force, lambda tmp: save_file(tensors, tmp, metadata={"seed": str(seed)}))
    pre, styled = sd.train_translators(enc, dec, clip, seed, plan.dalle_pre_steps, plan.dalle_rl_steps, log)
    write_file(folder, sd.PRETRAINED_FILE, force, lambda tmp: save_translator(pre.half(), tmp))
    write_file(folder, sd.STYLE_FILE, force, lambda tmp: save_translator(styled.half(), tmp, style=sd.STYLE))


# --- 8. DEADiff -----------------------------------------------------------------------------------------
def train_deadiff(plan: Plan, work: Path, seed: int, toy, folder: Path, force: bool, log=print) -> str:
    """DEADiff's Q-Formers for the miniature UNet through StyleKit's DEADiff trainer on the world's style,
    content and both pairs (:mod:`.deadiff`), saved fp16 in the extracted-file format StyleKit DEADiff Loader
    reads; resumable from ``work/deadiff.pt``."""
    from ..files import output_target
    from ..models.deadiff import save_deadiff
    from .deadiff import DEADIFF_FILE, train

    def progress(done, total):
        if done % 100 == 0 or done == total:
            log(f"[deadiff] step {done}/{total}")
    adapter, _ = train(toy, plan.deadiff_steps, seed, plan.deadiff_batch, plan.deadiff_lr, progress,
                       checkpoint=str(work / "deadiff.pt"), checkpoint_every=plan.checkpoint_every)
    target = output_target(str(folder), DEADIFF_FILE, ".safetensors", numbered=False, force=force)
    return save_deadiff(adapter, target, source=f"make toy (StyleKit DEADiff training, seed {seed})", dtype=torch.float16)


# --- metrics -------------------------------------------------------------------------------------------
def evaluate(folder, seed: int = 1234, n: int = 256, samples: int = 64) -> dict:
    """What the family in ``folder`` measures: probe accuracy on held-out world images (clean and through
    the VAE), VAE reconstruction error, CLIP caption retrieval, and text-to-image agreement (probes read
    the samples of ``samples`` random prompts, 20 steps, CFG 5)."""
    from .effects import text_to_image
    w = family.ToyWorld(folder)
    scenes = world.random_scenes(n, seed)
    lab = {k: torch.from_numpy(v) for k, v in world.labels(scenes).items()}
    clean = images_tensor(scenes)
    with torch.no_grad():
        rec = w.to_image(w.to_latent(clean))
    m = {"vae_mse": round(float(F.mse_loss(rec, clean)), 5)}
    for name, img in (("clean", clean), ("vae", rec)):
        read = w.probes.read(img)
        for k in lab:
            m[f"probe_{k}_{name}"] = round(float((read[k] == lab[k]).float().mean()), 4)
        m[f"probe_layout_mae_{name}"] = round(float((read["layout"] - layout_target(scenes)).abs().mean()), 4)
    tok = WordTokenizer()
    caps = [world.caption(s) for s in scenes]
    with torch.no_grad():
        out = w.clip_model(input_ids=tok.batch(caps), pixel_values=clean.permute(0, 3, 1, 2) * 2 - 1)
    best = out.logits_per_image.argmax(1)
    m["clip_retrieval"] = round(sum(caps[int(j)] == c for j, c in zip(best, caps)) / n, 4)
    m.update({f"t2i_{k}": v for k, v in text_to_image(w, samples, seed=seed).items()})
    return m


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Train the miniature world (make toy).")
    ap.add_argument("--out", type=Path, default=family.WEIGHTS, help="where the fp16 weights go")
    ap.add_argument("--work", type=Path, default=Path("toy_work"), help="checkpoints (resumed when present)")
    ap.add_argument("--seed", type=int, default=family.SEED)
    ap.add_argument("--stages", nargs="*", choices=STAGES + ("metrics",), default=list(STAGES) + ["metrics"],
                    help="which stages to run, in order (each reads what earlier stages wrote to --out)")
    ap.add_argument("--force", action="store_true", help="replace weights already in --out")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps (a smoke run: 0.01)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    plan, t0 = Plan().scaled(a.scale), time.perf_counter()

    def have(kind):
        return (a.out / family.file_name(kind)).exists()

    def get(kind):
        return family.load(kind, a.out)

    def log(msg):
        print(f"{(time.perf_counter() - t0) / 60:6.1f} min  {msg}", flush=True)

    for stage in a.stages:
        if stage == "clip":
            family.save("clip", train_clip(plan, a.work, a.seed, log), a.out, a.seed, a.force)
        elif stage == "vae":
            family.save("vae", train_vae(plan, a.work, a.seed, log), a.out, a.seed, a.force)
        elif stage == "probes":
            family.save("probes", train_probes(plan, a.work, a.seed, get("vae"), log), a.out, a.seed, a.force)
        elif stage == "unet":
            family.save("unet", train_unet(plan, a.work, a.seed, get("clip"), get("vae"), log), a.out, a.seed, a.force)
        elif stage == "ip_adapter":
            family.save("ip_adapter", train_ip_adapter(plan, a.work, a.seed, get("clip"), get("vae"), get("unet"), log),
                        a.out, a.seed, a.force)
        elif stage == "catversion":
            save_catversion(train_catversion(plan, a.seed, family.ToyWorld(a.out), log), a.out, a.force)
        elif stage == "stylerdalle":
            train_stylerdalle(plan, a.work, a.seed, a.out, a.force, get("clip"), log)
        elif stage == "deadiff":
            train_deadiff(plan, a.work, a.seed, family.ToyWorld(a.out), a.out, a.force, log)
        elif stage == "metrics":
            missing = [k for k in family.KINDS if not have(k)]
            if missing:
                raise SystemExit(f"metrics need every stage's weights; missing {missing} in {a.out}")
            m = evaluate(a.out)
            text = json.dumps(m, indent=2, sort_keys=True) + "\n"
            write_file(a.out, "metrics.json", a.force, lambda tmp: Path(tmp).write_text(text), ".json")
            log(f"metrics: {m}")
        log(f"{stage} done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
