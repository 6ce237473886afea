"""DEADiff's non-reconstructive training: the model half of bytedance/DEADiff's trainer, on either host.

Each step draws one of three kinds of pairs (``settings.loader_weights``), as the official trainer draws
one of its data loaders:

- ``style``: the reference shares only its style with the target. The style Q-Former encodes the
  reference; the content layers get zero tokens; the target's own caption conditions the text.
- ``content``: the reference shares only its content. The content Q-Former encodes it; the style
  layers get zero tokens; the target's caption conditions the text.
- ``both``: the reference is the target itself, encoded by both branches, with the empty caption; one
  of style, content or both is then subject to the drop below (drawn uniformly, as the official code).

Per sample the injected tokens are dropped (zeroed) with the kind's probability ``settings.drop``
(the official [0.15, 0.15, 0.0]). The loss is the eps-MSE of the frozen host model with the tokens
injected through :func:`~stylekit.models.deadiff_inject.deadiff_model`, the same code path the Apply
node uses, so what is trained is what runs. Trainable (the official ``configure_optimizers``): both
Q-Formers and their query tokens, both projection layers, every attn2 ``i_to_k`` / ``i_to_v``; the
vision LayerNorms, the host model, its text encoder, VAE and CLIP vision stay frozen. AdamW at
``settings.lr`` after a linear warm-up (official: 1e-4, 10k steps), gradients clipped to a norm.

Scale: a step's global batch is cut into ``shards`` equal parts, ``settings.accumulate`` per process times
the number of processes (:class:`Processes`; the CLI fills it from ``accelerate``). Every random draw of a
step (the kind, the drops, noise levels and noise) is made for the whole global batch from one generator
and each shard takes its rows; the Q-Formers' dropout is seeded per (step, shard). A shard's gradient is
that of its mean loss divided by ``shards``, the process sums its own shards, then the processes sum
theirs, so N processes accumulating k shards each compute what one process accumulating N*k shards
computes: the same shards, the same draws, only the order of one final sum differs.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attention.layers import UnsupportedModelError, attention_modules, model_layers
from ..errors import InputError
from .deadiff import INSTRUCTION_IDS, DEADiffAdapter, QFormerShape
from .deadiff_inject import DEADiffTokens, deadiff_model
from .magicstyle import host_apply_model
from .seeding import cpu_seeded, derived_seed

KINDS = ("style", "content", "both")
PairLoader = Callable[[int, int, int], "PairBatch"]  # (step, shard, shards) -> that shard of the step's batch


@dataclass(frozen=True)
class DEADiffTrainSettings:
    steps: int = 1000
    lr: float = 1e-4
    warmup: int = 10_000          # linear warm-up steps (official: 10k); a short run sets fewer
    drop: dict = field(default_factory=lambda: {"style": 0.15, "content": 0.15, "both": 0.0})
    loader_weights: dict = field(default_factory=lambda: {"style": 1.0, "content": 1.0, "both": 1.0})
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2    # torch's AdamW default, as the official optimiser
    seed: int = 0
    accumulate: int = 1           # shards of the global batch each process runs in turn (gradient accumulation)


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel ones: ``rank`` of ``count``, and ``sum_``, which returns a
    tensor summed over them (an all-reduce; the CLI passes accelerate's). One process: nothing to reduce."""
    rank: int = 0
    count: int = 1
    sum_: Callable[[torch.Tensor], torch.Tensor] | None = None

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.count == 1 else self.sum_(t)

    @classmethod
    def launched(cls) -> tuple[torch.device, "Processes", bool]:
        """(device, processes, is the main one) as ``accelerate launch`` set them up (one process when run
        plainly, or when accelerate is not installed: the CPU)."""
        try:
            from accelerate import Accelerator
        except ImportError:
            return torch.device("cpu"), cls(), True
        acc = Accelerator(cpu=not torch.cuda.is_available())  # without a GPU: processes over gloo on the CPU
        if acc.num_processes != int(os.environ.get("WORLD_SIZE", "1")):
            raise InputError(f"launched as {os.environ['WORLD_SIZE']} processes but accelerate set up "
                             f"{acc.num_processes}; check `accelerate config`")
        return acc.device, cls(acc.process_index, acc.num_processes, lambda t: acc.reduce(t, "sum")), \
            acc.is_main_process


@dataclass
class PairBatch:
    """One batch of one kind: the references' CLIP features and the targets the model must denoise."""
    kind: str                 # "style" | "content" | "both"
    reference: torch.Tensor   # (B, N, 1024): penultimate CLIP ViT-L/14 hidden states of the references
    target: torch.Tensor      # (B, C, H, W): the targets' latents, in the model's latent space
    context: torch.Tensor     # (B, T, D): the targets' captions ("both": the empty caption), encoded
    extra: dict | None = None  # further model inputs batched like target (SDXL: y, the pooled text and sizes)


def fresh_adapter(model, shape: QFormerShape, seed: int = 0, split: dict | None = None) -> DEADiffAdapter:
    """A DEADiff adapter to train from scratch on ``model`` (an SD1.5 or SDXL UNet of either host): both
    Q-Formers in the BLIP-2 layout with transformers' initialisation and queries drawn N(0, 0.02) as BLIP-2
    draws them, and each attn2's image projections starting as copies of that layer's text K/V (the official
    ``init_from_ckpt`` copies ``attn2.to_k`` / ``to_v`` into ``i_to_k`` / ``i_to_v``). Tokens narrower than
    the text (SDXL's 2048 = CLIP-L's 768 then OpenCLIP-bigG's 1280, for 768-wide Q-Formers) start from the
    first columns of to_k / to_v, those that read CLIP-L's part of the text. ``split`` (blocks per branch)
    defaults to the family's and is stored with the adapter. Seeded, without touching the global random state."""
    from .deadiff import split_problem
    from ..attention.families import DEADIFF
    from .deadiff_inject import branch_keys, split_blocks
    layers = model_layers(model)
    if layers.is_dit:
        raise UnsupportedModelError("DEADiff injects image tokens into UNet cross-attention; a DiT has none")
    layers.require(DEADIFF, "DEADiff training")
    widths = {l.context_dim for l in layers.layers}
    if min(widths) < shape.hidden:
        raise InputError(f"the Q-Formers' tokens are {shape.hidden} wide but this UNet's cross-attention reads "
                         f"{sorted(widths)}: set the Q-Former width to at most the model's text width")
    attn2 = {key: (m.to_k.weight.detach()[:, :shape.hidden].float().clone(),
                   m.to_v.weight.detach()[:, :shape.hidden].float().clone())
             for key, m in attention_modules(model, "attn2").items()}
    with cpu_seeded(seed):
        adapter = DEADiffAdapter(shape, attn2)
        for branch in adapter.branches.values():
            nn.init.normal_(branch.query_tokens, std=0.02)
    adapter.split = {b: [tuple(k) for k in blocks] for b, blocks in (split or split_blocks(adapter, layers.family)).items()}
    problem = split_problem(adapter.split)
    if problem:
        raise InputError(f"the layer split {problem}")
    branch_keys(adapter, layers)  # blocks this model has
    return adapter.eval()


def start_adapter(model, shape: QFormerShape, seed: int = 0, given: DEADiffAdapter | None = None,
                  name: str = "deadiff") -> DEADiffAdapter:
    """What a run on ``model`` trains. Fine-tuning ``given`` (the input ``name``): it must fit the model layer
    for layer and read the host's CLIP vision width (``shape.vision``); a float32 copy is trained (the given
    one stays as it is, and may hold inference-mode tensors), recording the split it trains. Otherwise fresh
    Q-Formers of ``shape`` (:func:`fresh_adapter`)."""
    from .deadiff import adapter_from_state_dict, official_state_dict
    from .deadiff_inject import check_pairing, split_blocks
    if given is None:
        return fresh_adapter(model, shape, seed=seed)
    check_pairing(given, model)
    if given.shape.vision != shape.vision:
        raise InputError(f"{name}: its Q-Formers read {given.shape.vision}-wide CLIP vision states, this host's CLIP "
                         f"vision gives {shape.vision}; give the CLIP vision it was trained with, or train from scratch")
    tensors = {k: v.detach().clone().float() for k, v in official_state_dict(given).items()}
    adapter = adapter_from_state_dict(tensors, heads=given.shape.heads, source=name)
    adapter.split = split_blocks(given, model_layers(model).family)  # the file records what it trained
    return adapter


def weights_digest(adapter: DEADiffAdapter) -> str:
    """A short digest of the adapter's weights (every Q-Former tensor and attn2 projection): which starting
    weights a run trains from, for its checkpoint's identity."""
    import hashlib
    h = hashlib.sha256()
    tensors = [*adapter.state_dict().values(), *(t for kv in adapter.attn2.values() for t in kv)]
    for t in tensors:
        h.update(repr(float(t.detach().double().sum())).encode())
    return h.hexdigest()[:16]


def trainable(adapter: DEADiffAdapter) -> list[nn.Parameter]:
    """The official trainable set, making the attn2 projections parameters of the adapter (in place)."""
    for key, (wk, wv) in list(adapter.attn2.items()):
        if not isinstance(wk, nn.Parameter):
            adapter.attn2[key] = (nn.Parameter(wk.detach().clone()), nn.Parameter(wv.detach().clone()))
    params = []
    for branch in adapter.branches.values():
        branch.ln_vision.requires_grad_(False)
        params += [*branch.qformer.parameters(), branch.query_tokens, *branch.proj.parameters()]
    for wk, wv in adapter.attn2.values():
        params += [wk, wv]
    return params


def _kept(keep: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return tokens * keep.view(-1, 1, 1).to(tokens)


def injected_tokens(adapter: DEADiffAdapter, batch: PairBatch, keep: torch.Tensor, dropped: str) -> DEADiffTokens:
    """Each branch's tokens for ``batch`` (zeros for a branch its kind does not train), the per-sample
    ``keep`` mask (1 keep, 0 drop) applied to the branch(es) ``dropped`` names ("style", "content", "both")."""
    if batch.kind not in KINDS:
        raise InputError(f"unknown pair kind {batch.kind!r}; choose from {list(KINDS)}")
    tokens = {}
    for b in ("style", "content"):
        if batch.kind in (b, "both"):
            t = adapter.branches[b](batch.reference, INSTRUCTION_IDS[b])
            tokens[b] = _kept(keep, t) if dropped in (b, "both") else t
    some = next(iter(tokens.values()))
    zeros = torch.zeros_like(some)
    return DEADiffTokens(adapter, tokens.get("style", zeros), tokens.get("content", zeros))


def pair_loss(model, tokens: DEADiffTokens, batch: PairBatch, sigma: torch.Tensor, noise: torch.Tensor):
    """eps-MSE of ``model`` with ``tokens`` injected as Apply injects them (official layer split)."""
    patched = deadiff_model(model, tokens)
    x = batch.target + sigma.view(-1, 1, 1, 1) * noise
    options = patched.model_options["transformer_options"]
    eps = (x - host_apply_model(patched, x, sigma, batch.context, options, batch.extra).float()) / sigma.view(-1, 1, 1, 1)
    return F.mse_loss(eps, noise)


def warmup_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def _seed_dropout(device: torch.device, seed: int, step: int, shard: int) -> None:
    """Seed the generators the Q-Formers' dropout draws from for one shard of one step: the CPU's, and the
    training GPU's (torch.manual_seed would reseed every GPU, which the caller's fork does not restore).
    Seeded per shard, dropout needs no state in a checkpoint and is the same whichever process runs the shard.
    Dropout on other backends (MPS) is not seeded."""
    shard_seed = derived_seed("deadiff dropout", seed, step, shard)
    torch.default_generator.manual_seed(shard_seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(shard_seed)


def _fingerprint(settings: DEADiffTrainSettings, shards: int, kinds: list, run_id: str) -> str:
    """What a checkpoint must have been written with to be resumed: every setting but the step count (a run
    may be continued for longer), the number of shards, the kinds of pairs, and the caller's ``run_id`` (the
    data and the starting weights)."""
    import dataclasses
    import json
    fields = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("steps", "accumulate")}
    return json.dumps({**fields, "shards": shards, "kinds": kinds, "run": run_id}, sort_keys=True)


def _state(params, opt, sched, g, step: int, losses: list, fingerprint: str) -> dict:
    return {"step": step, "params": [p.detach().clone() for p in params], "optimizer": opt.state_dict(),
            "schedule": sched.state_dict(), "generator": g.get_state(),
            "losses": torch.tensor(losses, dtype=torch.float64), "fingerprint": fingerprint}


def _save_checkpoint(path: str, state: dict) -> None:
    """Atomically replace the checkpoint (a crash mid-write leaves the previous one whole)."""
    from ..files import output_target, write_new
    target = output_target(os.path.dirname(path) or ".", os.path.basename(path), "", numbered=False, force=True,
                           field="checkpoint")
    write_new(target, lambda tmp: torch.save(state, tmp))


def _resume(path: str, params, opt, sched, g, fingerprint: str) -> tuple[int, list]:
    from .weights_file import load_weights_only
    state = load_weights_only(path, what="DEADiff training checkpoint", mmap=True)
    if len(state["params"]) != len(params) or any(a.shape != b.shape for a, b in zip(state["params"], params)):
        raise InputError(f"{os.path.basename(path)} was written for another DEADiff model; start without it")
    if state.get("fingerprint") != fingerprint:
        raise InputError(f"{os.path.basename(path)} was written by a run with other settings, data or starting "
                         "weights; continue with those, or delete it (or choose another name) to start anew")
    with torch.no_grad():
        for p, saved in zip(params, state["params"]):
            p.copy_(saved)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["schedule"])
    g.set_state(state["generator"])
    return int(state["step"]), state["losses"].tolist()


def train_deadiff(model, adapter: DEADiffAdapter, loaders: dict[str, PairLoader], sigmas: torch.Tensor,
                  settings: DEADiffTrainSettings, progress=None, interrupted=None, checkpoint: str | None = None,
                  checkpoint_every: int = 100, processes: Processes = Processes(), on_loss=None,
                  run_id: str = "") -> list[float]:
    """Train ``adapter`` in place on ``model`` (frozen); returns the loss of every step (the global batch's mean).

    ``loaders``: kind -> ``batch(step, shard, shards)``: shard ``shard`` of ``shards`` equal parts of that
    step's global batch (a seeded draw, so a run is reproducible; see :mod:`stylekit.models.deadiff_data`).
    ``sigmas``: the model's discrete noise levels; each sample draws one uniformly, as LDM training draws t.
    ``checkpoint``: a file written every ``checkpoint_every`` steps (trainable tensors, optimiser, schedule,
    the draw generator, losses; by the first process only) and resumed from when present, so an interrupted
    run continues exactly. ``processes``: this process among data-parallel ones (see the module docstring).
    ``on_loss(step, loss)``: called after every step with the global batch's loss (a log, a loss curve).
    ``run_id``: names the data and the starting weights; a checkpoint of another run is refused, not resumed.
    """
    kinds = [k for k in KINDS if k in loaders and settings.loader_weights.get(k, 0) > 0]
    if not kinds:
        raise InputError(f"no pairs to train on: give at least one of {list(KINDS)} with a weight above 0")
    if settings.steps < 1 or settings.accumulate < 1:
        raise InputError("steps and accumulate must be at least 1")
    params = trainable(adapter)
    g = torch.Generator().manual_seed(settings.seed)
    # dropout draws from torch's default generators: seeded per shard inside a fork, so a run is reproducible
    # and the caller's random state is left as it was
    device = params[0].device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _train(model, adapter, loaders, sigmas, settings, progress, interrupted, checkpoint, checkpoint_every,
                      kinds, params, g, processes, on_loss, run_id)


def _draws(g: torch.Generator, settings, sigmas, first: PairBatch, shards: int):
    """A step's random draws for the whole global batch (``shards`` times ``first``'s rows), made in one order
    on every process: the kind was drawn before; the per-sample keep, the "both" drop mode, sigma, noise."""
    n = first.target.shape[0] * shards
    keep = (torch.rand(n, generator=g) >= settings.drop.get(first.kind, 0.0)).float()
    dropped = ("style", "content", "both")[int(torch.randint(3, (1,), generator=g))] if first.kind == "both" else first.kind
    sigma = sigmas[torch.randint(len(sigmas), (n,), generator=g)]
    noise = torch.randn((n, *first.target.shape[1:]), generator=g)
    return keep, dropped, sigma, noise


def _set_grads(params, grads: list, loss: torch.Tensor, processes: Processes) -> float:
    """Sum this process's shard gradients over the processes into each ``.grad``, and its share of the batch's
    mean loss, which is returned; one all-reduce of everything flattened (the kind, hence which gradients
    exist, is the same everywhere). A parameter the step's kind did not reach gets no gradient (None, not the
    last step's): AdamW skips it."""
    used = [i for i, gr in enumerate(grads) if gr is not None]
    flat = processes.total(torch.cat([grads[i].flatten() for i in used] + [loss.to(params[0]).view(1)]))
    for p in params:
        p.grad = None
    for i, part in zip(used, flat[:-1].split([params[i].numel() for i in used])):
        params[i].grad = part.view_as(params[i])
    return float(flat[-1])


def _train(model, adapter, loaders, sigmas, settings, progress, interrupted, checkpoint, checkpoint_every, kinds,
           params, g, processes, on_loss=None, run_id="") -> list[float]:
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_factor(s, settings.warmup))
    weights = torch.tensor([float(settings.loader_weights[k]) for k in kinds])
    shards = settings.accumulate * processes.count
    mine = range(processes.rank * settings.accumulate, (processes.rank + 1) * settings.accumulate)
    device = params[0].device
    start, losses = 0, []
    fingerprint = _fingerprint(settings, shards, kinds, run_id)
    if checkpoint and os.path.exists(checkpoint):
        start, losses = _resume(checkpoint, params, opt, sched, g, fingerprint)
    adapter.train()
    try:
        for step in range(start, settings.steps):
            if interrupted is not None:
                interrupted()
            kind = kinds[int(torch.multinomial(weights, 1, generator=g))]
            grads, loss_sum = [None] * len(params), torch.zeros((), dtype=torch.float64)
            draws = None
            for shard in mine:
                batch = loaders[kind](step, shard, shards)
                if draws is None:
                    draws = _draws(g, settings, sigmas, batch, shards)
                keep, dropped, sigma, noise = draws
                rows = slice(shard * batch.target.shape[0], (shard + 1) * batch.target.shape[0])
                _seed_dropout(device, settings.seed, step, shard)
                loss = pair_loss(model, injected_tokens(adapter, batch, keep[rows], dropped), batch,
                                 sigma[rows].to(batch.target), noise[rows].to(batch.target))
                # gradients of the trainable set only: the host's frozen weights never receive a .grad
                # (a branch the step's kind does not run gets none, and AdamW leaves it alone, as the official)
                for i, grad in enumerate(torch.autograd.grad(loss / shards, params, allow_unused=True)):
                    if grad is not None:
                        grads[i] = grad if grads[i] is None else grads[i] + grad
                loss_sum += loss.detach().double().cpu() / shards
            global_loss = _set_grads(params, grads, loss_sum, processes)
            if not math.isfinite(global_loss):  # the global loss, after the reduce: every process stops together
                raise InputError(f"DEADiff training: loss is {global_loss} at step {step}; lower the learning rate")
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            opt.step()
            sched.step()
            losses.append(global_loss)
            if on_loss is not None:
                on_loss(step + 1, losses[-1])
            if checkpoint and processes.rank == 0 and ((step + 1) % checkpoint_every == 0 or step + 1 == settings.steps):
                _save_checkpoint(checkpoint, _state(params, opt, sched, g, step + 1, losses, fingerprint))
            if progress is not None:
                progress(step + 1, settings.steps)
    finally:
        adapter.eval()
        for p in params:
            p.grad = None
    return losses
