"""StyleID's whole pipeline, written from the paper's algorithm and the official code's conventions
(jiwoogit/StyleID: ``run_styleid.py``, ``ldm/models/diffusion/ddim.py`` ``encode_ddim`` / ``reverse_ddim`` /
``ddim_sampling``, ``ldm/modules/attention.py``), in its own VP terms: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps,
integer timesteps, alphas_cumprod from SD's linear beta schedule. No StyleKit code computes any of it.

- DDIM inversion: the clean latent is the latent at t = 1; at each timestep t = 1, 1 + c, ... eps is read
  at t on the latent at t, then x steps to the next one; the last target is t = 999 (``encode_ddim``). The
  DDIM timesteps are ``make_ddim_timesteps``' (steps of them); the start is the latent the step from the
  top one reaches (t = 999 when steps divide 1000).
- Feature store by timestep: the self-attention inputs of the chosen layers at each inversion call.
- AdaIN of the content's t = 999 latent to the style's (mean and unbiased std per channel).
- Sampling: the top timestep is skipped, the start is fed as it is at the second one; each step reads the
  stored features of its timestep (q = gamma q_content + (1 - gamma) q, K/V of the style, logits x T);
  the last step lands at alpha_cumprod[0].

``Changes`` switches one convention at a time to what the pack did before (tests show each breaks the match).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def alphas_cumprod(timesteps: int = 1000, start: float = 0.00085, end: float = 0.012) -> torch.Tensor:
    betas = torch.linspace(start ** 0.5, end ** 0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


@dataclass(frozen=True)
class Changes:
    clean_at_sigma0: bool = False   # the clean latent taken at sigma 0 (x0 in sigma space) instead of at t = 1
    eps_at_target: bool = False     # inversion reads eps at the timestep it steps to
    end_at_top: bool = False        # the start is the latent at the top DDIM timestep, not one step past it
    unscaled_start: bool = False    # the start fed at the second timestep in ComfyUI's unscaled space
    last_to_zero: bool = False      # the last sampling step lands at alpha = 1 (sigma 0)


def _hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"] if "hidden_states" in kwargs else kwargs["x"]


def _heads(t, h):
    b, n, d = t.shape
    return t.reshape(b, n, h, d // h).permute(0, 2, 1, 3).reshape(b * h, n, d // h)


def _merge(t, h):
    bh, n, d = t.shape
    return t.reshape(bh // h, h, n, d).permute(0, 2, 1, 3).reshape(bh // h, n, h * d)


def fused_attention(attn, x, h_content, h_style, gamma, temperature):
    """The official CrossAttention with injected q (content), k and v (style)."""
    h = attn.heads
    q = _heads(attn.to_q(h_content), h) * gamma + _heads(attn.to_q(x), h) * (1.0 - gamma)
    k, v = _heads(attn.to_k(h_style), h), _heads(attn.to_v(h_style), h)
    sim = torch.einsum("b i d, b j d -> b i j", q, k) * temperature * q.shape[-1] ** -0.5
    out = _merge(torch.einsum("b i j, b j d -> b i d", sim.softmax(dim=-1), v), h)
    return attn.to_out[1](attn.to_out[0](out))


@dataclass
class Trace:
    inversion_inputs: dict      # t -> latent fed to the model at t, (2, C, H, W): content, style
    features: dict              # (layer, t) -> attn1 input, (2, N, C)
    start: torch.Tensor         # the AdaIN-ed latent the sampler starts from (VP)
    sampler_inputs: dict        # t -> latent fed to the model at t
    final: torch.Tensor         # the sampler's last latent (VP, at alpha_cumprod[0] unless changed)
    timesteps: list             # the DDIM timesteps


def styleid_pipeline(eps, attn1: dict, content, style, steps: int, gamma=0.75, temperature=1.5,
                     changes: Changes = Changes(), alphas=None) -> Trace:
    """``eps(x, t)``: the model's eps for latents ``x`` at integer timestep ``t`` (empty prompt);
    ``attn1``: layer -> self-attention module whose input is stored and which is fused while sampling."""
    a = alphas_cumprod() if alphas is None else alphas
    T = len(a)
    c = T // steps
    ddim_ts = [k * c + 1 for k in range(steps)]    # make_ddim_timesteps("uniform"): the sampler's and the store's
    targets = list(range(1, T + c, c))             # encode_ddim: each inversion step's target ...
    targets[-1] = T - 1                            # ... the last one t = 999
    inv_ts = list(range(1, T, c))                  # encode_ddim's iterator
    top = ddim_ts[-1]
    seen, fuse = {}, {}

    def hook(layer):
        def run(module, args, kwargs, output):
            x = _hidden(args, kwargs)
            if "t" in seen:  # content, then style
                seen.setdefault((layer, seen["t"]), []).append(x.detach().clone())
            if fuse:
                return fused_attention(module, x, fuse[layer][0:1], fuse[layer][1:2], gamma, temperature)
            return output
        return run

    handles = [m.register_forward_hook(hook(k), with_kwargs=True) for k, m in attn1.items()]
    try:
        x = torch.cat([content, style]).double()
        if changes.clean_at_sigma0:
            x = x * a[1].sqrt()
        inputs, z_enc = {}, {}
        with torch.no_grad():
            for i, t in enumerate(inv_ts):  # reverse_ddim, content and style one at a time as the official code
                nxt = targets[i + 1]
                at = nxt if changes.eps_at_target else t
                inputs[t] = x.float()
                seen["t"] = t
                e = torch.cat([eps(x[j:j + 1].float(), at) for j in range(2)]).double()
                seen.pop("t")
                pred_x0 = (x - (1 - a[at]).sqrt() * e) / a[at].sqrt()
                x_next = a[nxt].sqrt() * pred_x0 + (1 - a[nxt]).sqrt() * e
                if t in ddim_ts:  # the sampler callback saves z_enc = the latent after this step, by timestep
                    z_enc[t] = x if changes.end_at_top else x_next
                x = x_next
                if t == top:  # nothing after the top DDIM timestep reaches the result
                    break
            features = {k: torch.cat(v) for k, v in seen.items() if k[1] in ddim_ts}
            last = targets[inv_ts.index(top) + 1]
            zc, zs = z_enc[top][0:1], z_enc[top][1:2]
            img = ((zc - zc.mean((0, 2, 3), keepdim=True)) / zc.std((0, 2, 3), keepdim=True)
                   * zs.std((0, 2, 3), keepdim=True) + zs.mean((0, 2, 3), keepdim=True))
            sample_ts = ddim_ts[::-1][1:]  # ddim_sampling with start_step = steps - 1: the top timestep skipped
            if changes.unscaled_start:
                img = img * (a[sample_ts[0]] / a[top if changes.end_at_top else last]).sqrt()
            start = img.float()
            sampler_inputs = {}
            for i, t in enumerate(sample_ts):
                prev = sample_ts[i + 1] if i + 1 < len(sample_ts) else None
                a_prev = a[prev] if prev is not None else (torch.ones((), dtype=a.dtype) if changes.last_to_zero
                                                           else a[0])
                sampler_inputs[t] = img.float()
                fuse.update({k: features[(k, t)] for k in attn1})
                e = eps(img.float(), t).double()
                fuse.clear()
                pred_x0 = (img - (1 - a[t]).sqrt() * e) / a[t].sqrt()
                img = a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * e
    finally:
        for hd in handles:
            hd.remove()
    return Trace(inputs, features, start, sampler_inputs, img.float(), ddim_ts)
