"""The patch router: one object per (attn1|attn2, block key) that composes StyleKit contributions.

ComfyUI allows one replace function per block key. Writing a key directly would silently drop
whatever another node (ours or another pack's) put there. Instead every StyleKit patch goes through
:func:`add_contribution`, which installs an :class:`AttentionRouter` on the key:

* it holds an ordered tuple of :class:`Contribution` (first added runs outermost);
* a replace function that was already on the key (another pack's) becomes its ``base`` and is still
  called, with whatever q/k/v the contributions pass down;
* it is immutable: adding a contribution makes a new router on the clone, so the model a node was
  given keeps its own router untouched (copy-on-write, like ComfyUI's own ``set_model_patch_replace``);
* ``copy.deepcopy`` (every ``ModelPatcher.clone()``) shares contributions and their tensors;
* it follows ComfyUI's patch protocol: ``.to(device)`` (called when ComfyUI loads the model and again
  when it offloads it) returns a router whose contributions hold moved copies of their tensors and
  fresh caches, so nothing stays behind on the old device; ``.models()`` and ``.cleanup()`` reach a
  foreign base, which the router would otherwise hide from ComfyUI.

A contribution is ``apply(q, k, v, extra_options, call_next, weight) -> out`` where ``call_next(q,
k, v, extra_options)`` runs the rest of the chain. The router skips a contribution whose effective
weight is 0 or whose sigma window does not contain the current sigma, so "off" is the plain path.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import itertools
import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Mapping

import torch

from ..errors import InputError
from .functional import host_attention

BlockKey = tuple  # ("input"|"middle"|"output", block_id, transformer_depth_index)
ApplyFn = Callable[..., "object"]


@dataclass(frozen=True, eq=False)
class Contribution:
    """One method's patch for a set of UNet attention blocks: ``apply(q, k, v, extra_options, call_next,
    weight)`` inside ComfyUI's attn1 / attn2 replace (DiT joint attention has its own kind,
    :class:`~.joint.JointContribution`, and each installer takes only its own kind).

    ``sigma_start`` >= ``sigma_end``: the contribution acts while ``sigma_end <= sigma <= sigma_start``
    (ComfyUI's ``percent_to_sigma(start_percent)`` and ``percent_to_sigma(end_percent)``).
    ``block_weights`` multiplies ``weight`` per block; keys are 3-part or 2-part block keys.
    """

    name: str
    apply: ApplyFn
    weight: float = 1.0
    sigma_start: float = math.inf
    sigma_end: float = 0.0
    block_weights: Mapping[tuple, float] = field(default_factory=dict)
    info: Mapping[str, object] = field(default_factory=dict)
    state: Mapping[str, object] = field(default_factory=dict)  # the tensors ``apply`` holds, by argument
    rebuild: Callable[[Mapping], "Contribution"] | None = None  # state on a device -> new contribution
    origin: Callable[[], "Contribution | None"] | None = None  # a moved copy: weak reference to its source
    serial: int = field(default_factory=lambda: next(_SERIALS))  # a moved copy keeps its source's
    joint: ClassVar[bool] = False  # the kind of block it patches: a UNet's attention (False) or a DiT's joint one

    def __deepcopy__(self, memo):  # immutable; share tensors held by ``apply`` across clones
        return self

    def to(self, device) -> "Contribution":
        """This contribution with its state on ``device`` (rebuilt: caches start empty).

        One contribution usually sits on many routers (a method's every layer) and ComfyUI moves every
        router when it loads or offloads the model, which ComfyUI 0.33 does around each sampling call:
        the routers share one moved copy per device while any of them holds it, and moving back to
        where the node built the state returns the original, with no copy."""
        if self.rebuild is None:
            return self
        if holds_shared_state(self.state):  # a feature store moves itself in place on every call
            return self.rebuild(move_to(self.state, device))
        device = torch.device(device)
        origin = (self.origin() if self.origin is not None else None) or self
        if all_on(origin.state, device):
            return origin
        key = (origin.serial, str(device))
        moved = _MOVED.get(key)
        if moved is None:  # the source is held weakly: an offloaded copy keeps nothing else on a device
            moved = dataclasses.replace(origin.rebuild(move_to(origin.state, device)), origin=weakref.ref(origin),
                                        serial=origin.serial)
            _MOVED[key] = moved
        return moved

    def weight_for(self, key: BlockKey) -> float:
        w = self.block_weights.get(tuple(key), self.block_weights.get(tuple(key[:2]), 1.0))
        return self.weight * w

    def active_at(self, sigma: float | None) -> bool:
        return sigma is None or self.sigma_end <= sigma <= self.sigma_start


def active_chain(contributions, key: BlockKey, sigma: float | None) -> list[tuple[Contribution, float]]:
    """The contributions that act on block ``key`` at ``sigma``, with their effective weights (a weight of
    0 or a sigma outside the window leaves a contribution out: "off" is the plain path)."""
    chain = []
    for c in contributions:
        w = c.weight_for(key)
        if w != 0 and c.active_at(sigma):
            chain.append((c, w))
    return chain


_MOVED = weakref.WeakValueDictionary()  # (source's serial, device) -> its moved copy, while a router holds it
_SERIALS = itertools.count()


def _leaves(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj


def holds_shared_state(obj) -> bool:
    """Whether a nest holds an object that moves itself in place (``move_to``: a feature store)."""
    return any(hasattr(x, "move_to") for x in _leaves(obj))


def all_on(obj, device: torch.device) -> bool:
    """Whether every tensor in a nest of dicts, lists and tuples is on ``device``."""
    return all(x.device.type == device.type and (device.index is None or x.device.index == device.index)
               for x in _leaves(obj) if isinstance(x, torch.Tensor))


def move_to(obj, device):
    """Tensors in a nest of dicts, lists and tuples moved to ``device``; objects with ``move_to`` (shared
    state such as a feature store) move themselves; anything else is kept as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    if hasattr(obj, "move_to"):
        return obj.move_to(device)
    return obj


def movable(*names: str):
    """Decorator for a contribution factory: its arguments ``names`` (tensors, or nests of them) become
    the contribution's ``state``, and ``Contribution.to(device)`` calls the factory again with them moved
    and every other argument as it was."""
    def wrap(factory):
        signature = inspect.signature(factory)

        @functools.wraps(factory)
        def make(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            made = factory(**arguments)
            return dataclasses.replace(made, state={n: arguments[n] for n in names},
                                       rebuild=lambda state: make(**{**arguments, **state}))
        return make
    return wrap


def as_device(device_or_dtype) -> torch.device | None:
    """ComfyUI calls a patch's ``.to`` with the load/offload device and with the model's dtype; the
    dtype is ignored (StyleKit casts to the activations' dtype at use)."""
    if isinstance(device_or_dtype, torch.dtype):
        return None
    return torch.device(device_or_dtype)


def moved_patch(patch, device_or_dtype):
    """A wrapped patch (another pack's replace function or model wrapper) after ComfyUI's ``.to``: moved
    if it follows the protocol, else as it is."""
    return patch.to(device_or_dtype) if hasattr(patch, "to") else patch


def patch_models(patch) -> list:
    """The ModelPatchers a wrapped patch asks ComfyUI to load (``.models()``), if it has any."""
    return list(patch.models()) if hasattr(patch, "models") else []


def block_key(extra_options: dict) -> BlockKey:
    """The 3-part key of the block a patch is called on (ComfyUI defaults ``block_index`` to 0)."""
    return (*extra_options["block"], extra_options.get("block_index", 0))


_LAST_SIGMA = threading.local()  # per thread (multi-GPU runs a model call per device thread at once): the
# sigmas tensor read last and its value; held, so its identity cannot be reused


def current_sigma(extra_options: dict) -> float | None:
    sigmas = extra_options.get("sigmas")
    if sigmas is None:
        return None
    if not hasattr(sigmas, "reshape"):
        return float(sigmas)
    last = getattr(_LAST_SIGMA, "value", (None, None))
    if last[0] is sigmas:  # the host passes one tensor to every block of a model call
        return last[1]
    value = float(sigmas.reshape(-1)[0])  # on a GPU, a wait for the device: once per model call, not per block
    _LAST_SIGMA.value = (sigmas, value)
    return value


class AttentionRouter:
    """Replace function installed on one block key; see the module docstring."""

    stylekit_router = True  # duck-typed marker: the pack may be imported under several module names

    def __init__(self, attn: str, key: BlockKey, base: Callable | None = None,
                 contributions: tuple[Contribution, ...] = ()):
        self.attn = attn
        self.key = tuple(key)
        self.base = base
        self.contributions = tuple(contributions)

    def with_contribution(self, contribution: Contribution) -> "AttentionRouter":
        return AttentionRouter(self.attn, self.key, self.base, self.contributions + (contribution,))

    def __deepcopy__(self, memo):
        return AttentionRouter(self.attn, self.key, copy.deepcopy(self.base, memo), self.contributions)

    def to(self, device_or_dtype) -> "AttentionRouter":
        device = as_device(device_or_dtype)
        base = moved_patch(self.base, device_or_dtype)
        if device is None:
            return self if base is self.base else AttentionRouter(self.attn, self.key, base, self.contributions)
        return AttentionRouter(self.attn, self.key, base, tuple(c.to(device) for c in self.contributions))

    def models(self) -> list:
        return patch_models(self.base)

    def cleanup(self) -> None:
        if hasattr(self.base, "cleanup"):
            self.base.cleanup()

    def active(self, extra_options: dict) -> list[tuple[Contribution, float]]:
        return active_chain(self.contributions, self.key, current_sigma(extra_options))

    def __call__(self, q, k, v, extra_options):
        chain = self.active(extra_options)
        base = self.base if self.base is not None else host_attention

        def run(i, q, k, v, extra):
            if i == len(chain):
                return base(q, k, v, extra)
            c, w = chain[i]
            return c.apply(q, k, v, extra, lambda q2, k2, v2, e2=extra: run(i + 1, q2, k2, v2, e2), w)

        return run(0, q, k, v, extra_options)


def is_router(obj) -> bool:
    return getattr(obj, "stylekit_router", False) is True


def installed_patch(model_options: dict, attn: str, key: BlockKey):
    """What ComfyUI would call for this block: the 3-part key wins over the 2-part one."""
    table = model_options.get("transformer_options", {}).get("patches_replace", {}).get(attn, {})
    key = tuple(key)
    if key in table:
        return table[key]
    return table.get(key[:2])


def add_contribution(patcher, contribution: Contribution, keys: Iterable[BlockKey], attn: str):
    """Install ``contribution`` on ``keys`` of ``patcher`` (which must already be a clone).

    Works on ComfyUI's ModelPatcher and on :class:`stylekit.bridge.BridgePatcher` alike: only
    ``model_options`` and ``set_model_patch_replace`` are used.
    """
    if attn not in ("attn1", "attn2"):
        raise InputError(f"attn must be 'attn1' or 'attn2', got {attn!r}")
    if type(contribution).joint:
        raise TypeError(f"{contribution.name} is a DiT joint-attention contribution; install it with "
                        "attention.joint.add_joint_contribution")
    for key in keys:
        key = tuple(key)
        if len(key) != 3:
            raise InputError(f"block keys must be (name, id, index) triples, got {key!r}")
        existing = installed_patch(patcher.model_options, attn, key)
        if is_router(existing) and existing.key == key:
            router = existing.with_contribution(contribution)
        else:  # nothing there, a foreign function, or a router of a 2-part key: keep it as the base
            router = AttentionRouter(attn, key, base=existing, contributions=(contribution,))
        patcher.set_model_patch_replace(router, attn, key[0], key[1], key[2])
    return patcher
