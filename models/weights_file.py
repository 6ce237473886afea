"""Reading ``.bin`` / ``.pt`` weight files without unpickling arbitrary objects."""
from __future__ import annotations

import re

import torch


def refused_global(error: Exception) -> str:
    """The global torch's weights-only loader refused (e.g. ``posix.system``), else the error's first line."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else str(error).splitlines()[0]


def load_tensor_dict(path: str, error: type[Exception], what: str = "tensor file", hint: str = "") -> dict:
    """``torch.load(weights_only=True)`` of a dict of tensors; anything else raises ``error`` naming the file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise error(f"{path} is not a plain {what} ({type(e).__name__}: unsupported global "
                    f"{refused_global(e)}){'; ' + hint if hint else ''}") from None
    if not isinstance(obj, dict):
        raise error(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    return obj
