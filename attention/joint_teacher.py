"""StyleStudio's teacher layout on DiT joint attention (the UNet version is :mod:`.teacher`).

The same :class:`~.teacher.TeacherWrapper` runs teacher rows beside the stylised ones during the first
steps (batch ``[chunks..., teacher chunks...]``). In each joint attention of those steps:

* the stylised rows' image queries use the teacher's attention map with their own values: they take
  the teacher's queries and keys, ``softmax(Q_t K_t^T / sqrt(d)) V_s``, one fused call as on the UNet;
* the stylised rows' text queries (and reference-latent queries, Kontext / Flux.2) keep their own
  attention (computed through the host's attention on those rows only, put back after the main call):
  the layout map is the image tokens' map;
* on a DiT the style usually arrives as extra context tokens (core StyleModelApply / Redux appends
  them after the prompt's). The teacher must not see them, or it would be the stylised sample
  itself: with ``prompt_tokens`` (the prompt's length before the style tokens) every context key
  from ``prompt_tokens`` on is hidden from the teacher's map (an additive -inf mask).
"""
from __future__ import annotations

import torch

from .options import TEACHER_CHUNKS
from .joint import JointContribution, JointQKV


def teacher_call(call: JointQKV, styled_rows: int, prompt_tokens: int | None = None) -> JointQKV:
    """The main call: stylised rows ``[0, styled_rows)`` take the teacher rows' queries and keys."""
    n, t0 = styled_rows, call.txt
    q, k = call.q, call.k
    main = call.replace(q=torch.cat([q[n:], q[n:]]), k=torch.cat([k[n:], k[n:]]))
    if prompt_tokens is not None and prompt_tokens < t0:
        hide = torch.zeros(1, 1, 1, k.shape[2], dtype=q.dtype, device=q.device)
        hide[..., prompt_tokens:t0] = float("-inf")
        main = main.replace(mask=hide if call.mask is None else call.mask.to(q.dtype) + hide)
    call.keep_plain(rows=n)  # registered on the call's options, which the main call shares
    return main


def joint_teacher_contribution(prompt_tokens: int | None = None, name: str = "teacher_layout") -> JointContribution:
    def apply(call: JointQKV, call_next, w):
        styled = call.extra.get(TEACHER_CHUNKS)
        if styled is None:
            return call_next(call)
        rows = call.q.shape[0] // len(call.extra["cond_or_uncond"]) * styled
        return call_next(teacher_call(call, rows, prompt_tokens))

    return JointContribution(name, apply, info={"prompt_tokens": prompt_tokens})
