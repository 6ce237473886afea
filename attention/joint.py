"""The patch router for DiT joint attention (Flux): text and image tokens in one attention call.

ComfyUI's Flux blocks (double and single) offer two hooks per attention, shared by every block:

* ``attn1_patch(q, k, v, pe=, attn_mask=, extra_options=) -> dict`` before the attention: q, k, v
  are ``(batch, heads, txt + img, dim_head)`` after QK-norm and before RoPE; the dict may replace
  ``q``, ``k``, ``v``, ``pe``, ``attn_mask``; ``extra_options["img_slice"] = [txt_len, total]``,
  ``block_type`` ("double" | "single") and ``block_index`` name the block; reference latents (Flux.1
  Kontext, Flux.2) are the last tokens, ``extra_options["reference_image_num_tokens"]`` of them;
* ``attn1_output_patch(attn, extra_options) -> attn`` after it (``attn`` is ``(batch, tokens, heads
  * dim_head)``); ``extra_options`` is the same dict object the first hook saw, per block call.

One :class:`JointRouter` (``attn1_patch``) and one :class:`JointOutput` (``attn1_output_patch``) are installed.
Its contributions (:class:`JointContribution`: a :class:`~.router.Contribution` with the same weight,
sigma window and per-block weights, of its own kind so neither installer takes the other's) see a
:class:`JointQKV`: q and k already rotated (RoPE applied by the host's own function), the text and
image token ranges (reference-latent tokens are neither: every contribution leaves their rows as they
are and keeps their keys), and the additive mask. They return a new JointQKV, which the host's attention
then computes (``pe=None``: RoPE is done), so an added key (a reference's) carries its own
positions. A contribution that must correct some rows afterwards (the text rows, a weight below 1,
a MASK) computes those rows itself through the host's attention and registers a fix-up on the
output (:meth:`JointQKV.after`). With no active contribution the router returns ``{}``: the block
runs exactly as unpatched.

Block keys are ``("double" | "single", block_index, 0)``, the 3-part shape of the UNet keys.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable

import torch

from ..errors import InputError, UnsupportedModelError
from .functional import host_attention
from .families import FLUX_HOOKS, JointHooks
from .options import JOINT_AFTER, JOINT_PLAIN, JOINT_ROWS_BY_BLOCK
from .rope import host_rope, token_slice
from .router import Contribution, active_chain, as_device, current_sigma, moved_patch, patch_models


def dit_key(extra_options: dict) -> tuple:
    return (extra_options["block_type"], extra_options.get("block_index", 0), 0)


def token_ranges(extra_options: dict) -> tuple[int, int, int]:
    """(text end, image end, total) of a joint call: text ``[0, txt)``, the sample's image tokens
    ``[txt, img)``, reference-latent tokens ``[img, total)`` (ComfyUI's ``reference_image_num_tokens``)."""
    txt, total = extra_options["img_slice"]
    refs = sum(extra_options.get("reference_image_num_tokens") or ())
    if not 0 <= refs < total - txt:  # counts that do not fit this call (a patch dropped the tokens): none
        refs = 0
    return txt, total - refs, total


@dataclass(frozen=True, eq=False)
class JointContribution(Contribution):
    """A contribution on DiT joint attention: ``apply(call: JointQKV, call_next, weight) -> JointQKV``."""

    joint: ClassVar[bool] = True


@dataclass
class JointQKV:
    """One joint attention call as contributions see it."""
    q: torch.Tensor                 # (batch, heads, tokens, dim_head), rotated
    k: torch.Tensor                 # (batch, heads, keys, dim_head), rotated
    v: torch.Tensor
    mask: torch.Tensor | None       # additive, broadcastable to (batch, heads, tokens, keys)
    txt: int                        # query tokens [0, txt) are text
    img: tuple                      # query tokens [img[0], img[1]) are the sample's image (img[0] == txt)
    pe: torch.Tensor                # rotations of the query tokens (image keys share them)
    extra: dict = field(repr=False, default_factory=dict)
    total: int = -1                 # query tokens [img[1], total) are reference latents (-1: none, total = img[1])

    @property
    def ref_latents(self) -> tuple:
        """The reference-latent tokens' range ``[img[1], total)`` (empty when there are none)."""
        return (self.img[1], max(self.total, self.img[1]))

    def replace(self, **changes) -> "JointQKV":
        return dataclasses.replace(self, **changes)

    @property
    def img_pe(self) -> torch.Tensor:
        """Rotations of the image tokens, one batch row (the host may repeat them per row; positions agree)."""
        return token_slice(self.pe[:1], *self.img)

    def rotate_img(self, x: torch.Tensor) -> torch.Tensor:
        """Image-token queries or keys of a reference (batch, heads, img tokens, dim) at the image positions."""
        return host_rope(x, self.img_pe)

    def attention(self, q, k, v, mask=None) -> torch.Tensor:
        """The host's attention on split heads -> (batch, tokens, heads * dim_head). Keys and values with fewer
        heads than the queries (grouped-query attention, Krea 2) are repeated to them, as the host does after
        its hook (query head h reads key head h // (heads / kv heads))."""
        if k.shape[1] != q.shape[1]:
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        return host_attention(q, k, v, self.extra, mask, skip_reshape=True)

    def after(self, fix: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Run ``fix(attn) -> attn`` on this call's attention output (before the output projection)."""
        self.extra.setdefault(JOINT_AFTER, []).append(fix)

    def keep_plain(self, rows: int | None = None) -> None:
        """Give the text and reference-latent queries of batch rows ``[0, rows)`` (all by default) their plain
        attention after the main call: computed now over this call's own keys and values, on those rows only."""
        if self.extra.get(JOINT_ROWS_BY_BLOCK) is not None:  # the block keeps them (PlainRowsBlock)
            return
        r0, r1 = self.ref_latents
        idx = torch.cat([torch.arange(self.txt), torch.arange(r0, r1)]).to(self.q.device)
        if not len(idx):
            return
        n = self.q.shape[0] if rows is None else rows
        mask = self.mask
        if mask is not None:
            mask = mask[:n] if mask.shape[0] == self.q.shape[0] else mask
            mask = mask if mask.shape[-2] == 1 else mask[..., idx, :]
        plain = self.attention(self.q[:n, :, idx], self.k[:n], self.v[:n], mask)

        def plain_rows(attn):
            attn = attn.clone()
            attn[:n, idx] = plain.to(attn.dtype)
            return attn
        self.after(plain_rows)


class JointRouter:
    """``attn1_patch`` of a DiT model patcher (its output fix-ups run in :class:`JointOutput`).

    ``hooks`` is the model family's hook contract. Where the blocks rotate q and k with whatever ``pe``
    comes back (Qwen-Image), the router returns identity rotations; where they have no output hook, the
    text and reference rows are kept plain by :class:`PlainRowsBlock` and no other fix-up can run; where
    they ignore a returned mask, a contribution that needs one is refused."""

    stylekit_joint_router = True

    def __init__(self, entries: tuple = (), hooks: JointHooks = FLUX_HOOKS):
        self.entries = tuple(entries)  # (Contribution, frozenset of block keys)
        self.hooks = hooks

    def with_contribution(self, contribution: "JointContribution", keys: Iterable[tuple]) -> "JointRouter":
        if not type(contribution).joint:
            raise TypeError(f"{contribution.name} is a UNet attention contribution (apply(q, k, v, extra_options, "
                            "call_next, weight)); a DiT block takes a JointContribution")
        return JointRouter(self.entries + ((contribution, frozenset(tuple(k) for k in keys)),), self.hooks)

    def __deepcopy__(self, memo):
        return self  # immutable; clones share it

    def to(self, device_or_dtype) -> "JointRouter":
        device = as_device(device_or_dtype)
        if device is None:
            return self
        return JointRouter(tuple((c.to(device), keys) for c, keys in self.entries), self.hooks)

    def models(self) -> list:
        return []

    def active(self, key, extra_options) -> list:
        return active_chain([c for c, keys in self.entries if key in keys], key, current_sigma(extra_options))

    def __call__(self, q, k, v, pe=None, attn_mask=None, extra_options=None):
        extra = extra_options
        if extra.get(JOINT_PLAIN):  # PlainRowsBlock's plain run of the block
            return {}
        chain = self.active(dit_key(extra), extra)
        if not chain:
            return {}
        if pe is None:
            raise InputError("StyleKit's DiT patches need the block's rotary embedding (pe); this model has none")
        hooks = self.hooks
        rows_by_block = extra.get(JOINT_ROWS_BY_BLOCK)
        if not hooks.output_hook and rows_by_block is None:
            raise InputError("this model's blocks have no attention output hook, and the block replace that keeps "
                             "its text rows plain (StyleKit's) was replaced by another node: apply StyleKit's "
                             "node after it")
        txt, img, total = token_ranges(extra)
        mask = attn_mask if hooks.returned_mask else None  # else the host's own mask, built before the hook
        call = JointQKV(host_rope(q, pe), host_rope(k, pe), v, mask, txt, (txt, img), pe, extra, total)

        def run(i, call):
            if i == len(chain):
                return call
            c, w = chain[i]
            return c.apply(call, lambda c2: run(i + 1, c2), w)

        out = run(0, call)
        if out is call and not extra.get(JOINT_AFTER):  # every contribution stood aside
            return {}
        if not hooks.output_hook:
            if extra.pop(JOINT_AFTER, None):
                raise InputError("a weight below 1, a MASK or a per-block weight blends attention outputs, which "
                                 "needs an attention output hook; this model's blocks (Qwen-Image) have none: use "
                                 "weight 1 with no mask")
            rows_by_block["changed"] = True
        if not hooks.returned_mask:
            if out.mask is not None:
                raise InputError("this model's blocks (Qwen-Image) ignore an attention mask a patch returns, and this "
                                 "step needs one (MagicStyle's content_kv other than 0 or 1): use content_kv 0 or 1")
            if attn_mask is not None and out.k.shape[2] != k.shape[2]:
                raise InputError(f"this model (Qwen-Image) built its text mask for {k.shape[2]} keys before the hook, "
                                 f"and this step has {out.k.shape[2]} (the content's keys beside the style's): use "
                                 "content_kv 0 (StyleID)")
        return {"q": out.q, "k": out.k, "v": out.v, "pe": identity_pe(pe, max(out.q.shape[2], out.k.shape[2]))
                if hooks.rope_always else None, "attn_mask": out.mask}


def identity_pe(pe: torch.Tensor, tokens: int) -> torch.Tensor:
    """Rotations by angle 0 for ``tokens`` tokens in ``pe``'s layout: for a host that rotates q and k after the
    hook whatever comes back (the router has rotated them already); cos 1, sin 0 leave every value exact."""
    eye = torch.zeros(*pe.shape[:2], tokens, *pe.shape[3:], dtype=pe.dtype, device=pe.device)
    eye[..., 0, 0] = 1
    eye[..., 1, 1] = 1
    return eye


class PlainRowsBlock:
    """A DiT block replace for a family whose blocks have no attention output hook (Qwen-Image): when the
    router changed this block's attention, the block runs a second time plainly, and the text stream and
    the reference-latent rows come from that plain run, the image rows from the patched one. Exact, since a
    double-stream block's text output depends on its text rows' attention only (and each image-stream row on
    its own row); the cost is one more run of each block the router changes."""

    stylekit_plain_rows = True

    def __init__(self, inner=None):
        self.inner = inner  # a block replace that was there before (another pack's), called in turn

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        inner = moved_patch(self.inner, device_or_dtype)
        return self if inner is self.inner else PlainRowsBlock(inner)

    def models(self) -> list:
        return patch_models(self.inner)

    def __call__(self, args, extra):
        def block(a):
            return self.inner(a, extra) if self.inner is not None else extra["original_block"](a)
        to = args["transformer_options"]
        holder = {"changed": False}
        out = block(dict(args, transformer_options={**to, JOINT_ROWS_BY_BLOCK: holder}))
        if not holder["changed"]:
            return out
        plain = block(dict(args, transformer_options={**to, JOINT_PLAIN: True}))
        img = out["img"]
        refs = sum(to.get("reference_image_num_tokens") or ())
        if 0 < refs < img.shape[1]:
            img = torch.cat([img[:, :-refs], plain["img"][:, -refs:]], dim=1)
        return dict(out, img=img, txt=plain["txt"])


class JointOutput:
    """The router's ``attn1_output_patch`` (a separate object so ComfyUI can list it; it holds nothing)."""

    stylekit_joint_output = True

    def __call__(self, attn, extra_options):
        for fix in reversed(extra_options.pop(JOINT_AFTER, [])):
            attn = fix(attn)
        return attn

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        return self


def is_joint_router(obj) -> bool:
    return getattr(obj, "stylekit_joint_router", False) is True


def add_joint_contribution(patcher, contribution: "JointContribution", keys: Iterable[tuple]):
    """Install ``contribution`` on the DiT block ``keys`` of ``patcher`` (already a clone).

    The patcher keeps one router (copy-on-write: a new router replaces the old one in the clone's own
    list) and one output patch; other packs' ``attn1_patch`` entries stay where they were.
    """
    keys = [tuple(k) for k in keys]
    if any(len(k) != 3 or k[0] not in ("double", "single") for k in keys):
        raise InputError(f"DiT block keys are ('double' | 'single', index, 0), got {keys[:3]}")
    router = joint_router(patcher.model_options)
    if router is None:
        from .layers import model_layers
        try:
            spec = model_layers(patcher).spec
        except UnsupportedModelError:  # a network no family reads (tests' stand-ins): Flux's contract
            spec = None
        hooks = spec.hooks if spec is not None else FLUX_HOOKS
        patcher.set_model_patch(JointRouter(hooks=hooks).with_contribution(contribution, keys), "attn1_patch")
        patcher.set_model_patch(JointOutput(), "attn1_output_patch")
    else:
        to = dict(patcher.model_options["transformer_options"])
        current = [router.with_contribution(contribution, keys) if p is router else p for p in to["patches"]["attn1_patch"]]
        to["patches"] = dict(to["patches"], attn1_patch=current)
        patcher.model_options["transformer_options"] = to
        hooks = router.hooks
    if not hooks.output_hook:  # the text and reference rows are kept plain by the block itself
        table = patcher.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        for kind, index, _ in keys:
            there = table.get((f"{kind}_block", index))
            if not getattr(there, "stylekit_plain_rows", False):
                patcher.set_model_patch_replace(PlainRowsBlock(there), "dit", f"{kind}_block", index)
    return patcher


def joint_router(model_options: dict) -> JointRouter | None:
    """The model's StyleKit DiT router, if it has one."""
    patches = model_options.get("transformer_options", {}).get("patches", {}).get("attn1_patch", [])
    return next((p for p in patches if is_joint_router(p)), None)


def joint_contributions(model_options: dict) -> list:
    """The contributions of the model's DiT router (empty when it has none)."""
    router = joint_router(model_options)
    return [] if router is None else [c for c, _ in router.entries]
