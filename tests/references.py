"""Independent references the tests compare the pack against (test code: not shipped in the pack)."""
import torch


def explicit_attention(q, k, v, heads: int, mask=None, scale=None):
    """Attention with an explicit softmax in float64, heads split from the channel axis; fused paths are
    compared against it."""
    b = q.shape[0]
    qh, kh, vh = (t.reshape(b, t.shape[1], heads, -1).transpose(1, 2).double() for t in (q, k, v))
    d = qh.shape[-1]
    logits = qh @ kh.transpose(-1, -2) * (scale if scale is not None else d ** -0.5)
    if mask is not None:
        logits = logits + mask.double()
    out = torch.softmax(logits, dim=-1) @ vh
    return out.transpose(1, 2).reshape(b, q.shape[1], -1).to(q.dtype)


def dit_store_bytes(blocks: int, image_tokens: int, width: int, steps: int, element_bytes: int = 2) -> int:
    """Bytes a DiT feature store holds for ``blocks`` blocks over ``steps`` steps (recompute mode: 1 step):
    five (image_tokens, width) tensors (the references' q_c, k_c, v_c, k_s, v_s) per block and step.
    Flux.1-dev at 1024 px: 4096 tokens, width 3072."""
    return 5 * blocks * steps * image_tokens * width * element_bytes
