"""The one way StyleKit reads a weight file (and its side-car config).

Every loader opens its files through :func:`read_safetensors`, :func:`load_tensor_dict` or
:func:`read_json_config`. Any failure (missing, a directory, empty, truncated, corrupt, another
format, a pickled object the weights-only loader refuses) becomes a :class:`WeightFileError` that
names the file, the format expected and what to do; it never suggests ``weights_only=False``.
Floating-point tensors holding NaN or inf are refused by name (:func:`require_finite`), and metadata
fields are checked by :func:`positive_int` before any shape is built from them.
"""
from __future__ import annotations

import json
import math
import os
import re

import torch

from ..errors import WeightFileError
from ..files import shown


def refused_global(error: Exception) -> str | None:
    """The global torch's weights-only loader refused (e.g. ``posix.system``), if that was the reason."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else None


def check_file(path: str, what: str, error: type[WeightFileError] = WeightFileError) -> str:
    """``path`` as a string once it names a readable, non-empty file; else ``error`` saying which."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise error(f"{shown(path)}: not found; expected {what}. Check the name and the folder it is in.")
    if os.path.isdir(path):
        raise error(f"{shown(path)} is a folder; expected {what} (a file).")
    if not os.access(path, os.R_OK):
        raise error(f"{shown(path)}: not readable (permissions); expected {what}.")
    if os.path.getsize(path) == 0:
        raise error(f"{shown(path)} is empty (0 bytes); expected {what}. Download or convert it again.")
    return path


def _first_line(e: Exception) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(e).__name__


DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
               "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_WEIGHT_BYTES = 8 * 2 ** 30  # what a format that names no bound of its own may declare


class _Refused(Exception):
    """A header refused before any tensor is read (re-raised with the file's name)."""


def _declared_within(declared: int, max_bytes: int, what: str) -> None:
    """Refuse tensors declaring more bytes than ``what`` ever holds, before any of them is read."""
    if declared > max_bytes:
        raise _Refused(f"its tensors declare {declared / 2 ** 20:,.0f} MB, more than {what} ever holds "
                       f"({max_bytes / 2 ** 20:,.0f} MB at most); it is not that file")


def declared_within(tensors, max_bytes: int, what: str, error: type[WeightFileError], source: str) -> None:
    """Refuse (``error``, naming ``source``) ``tensors`` (memory-mapped or meta: nothing is read) that declare
    more than ``max_bytes`` in all."""
    try:
        _declared_within(sum(t.numel() * t.element_size() for t in tensors), max_bytes, what)
    except _Refused as e:
        raise error(f"{source}: {e}") from None


FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def floating(name: str, dtype: str) -> bool:
    """The ``dtypes`` rule of a file of weights: every tensor is floating-point."""
    return dtype in FLOAT_DTYPES


def read_safetensors(path: str, what: str, hint: str = "", error: type[WeightFileError] = WeightFileError,
                     keep=None, names=None, max_bytes: int = MAX_WEIGHT_BYTES, dtypes=None,
                     structure=None) -> tuple[dict, dict]:
    """(tensors, metadata) of a ``.safetensors`` file; ``keep(name)`` selects the tensors to read.

    The header is checked before any tensor is read, so a file costs memory only for what passes:
    a tensor whose name ``names(name)`` refuses, a kept tensor whose header dtype ``dtypes(name, dtype)``
    refuses, or kept tensors declaring more than ``max_bytes`` in all refuse the file; then
    ``structure(meta_tensors, metadata)``, run with meta as the default device, checks the format's names
    and shapes on meta tensors (shape and dtype, no data) and raises ``error`` if they do not form it. Only
    then are the tensors read, lazily (memory-mapped) one by one."""
    path = check_file(path, what, error)
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            chosen = [k for k in f.keys() if keep is None or keep(k)]
            strange = [k for k in f.keys() if names is not None and not names(k)]
            if strange:
                raise _Refused(f"tensors {strange[:4]} are not part of {what}")
            declared, shapes = 0, {}
            for k in chosen:
                sl = f.get_slice(k)
                shape, dtype = [int(d) for d in sl.get_shape()], sl.get_dtype()
                if dtypes is not None and not dtypes(k, dtype):
                    raise _Refused(f"tensor {k!r} is {dtype}, which {what} never holds there")
                declared += math.prod(shape) * DTYPE_BYTES.get(dtype, 8)
                shapes[k] = (shape, dtype)
            _declared_within(declared, max_bytes, what)
            if structure is not None:
                with torch.device("meta"):  # what the check builds costs no memory either
                    structure({k: torch.empty(s, dtype=FLOAT_DTYPES.get(d, torch.float32))
                               for k, (s, d) in shapes.items()}, meta)
            tensors = {k: f.get_tensor(k) for k in chosen}
    except WeightFileError:
        raise
    except _Refused as e:
        raise error(f"{shown(path)}: {e}.{' ' + hint if hint else ''}") from None
    except Exception as e:  # safetensors raises its own header / I/O errors without the file's name
        raise error(f"{shown(path)} is not a readable .safetensors file ({_first_line(e)}): it is truncated, corrupt "
                    f"or another format; expected {what}.{' ' + hint if hint else ''}") from None
    return tensors, meta


def load_weights_only(path: str, error: type[WeightFileError] = WeightFileError, what: str = "tensor file",
                      hint: str = "", safe_globals=(), mmap: bool = False, max_bytes: int = MAX_WEIGHT_BYTES):
    """``torch.load(weights_only=True)``, with ``safe_globals`` (further classes) allowed and, for large
    zip-format files, memory-mapped; a refusal or a corrupt file raises ``error`` naming the file.

    A file torch would read whole (the legacy pre-1.6 format, which cannot be memory-mapped, or any file
    when ``mmap`` is off) is refused when it is larger than ``max_bytes``, before torch allocates what it
    declares: a small sparse file declaring gigabytes would otherwise cost them."""
    import zipfile
    path = check_file(path, what, error)
    whole = not (mmap and zipfile.is_zipfile(path))
    if whole and os.path.getsize(path) > max_bytes:
        raise error(f"{shown(path)} is {os.path.getsize(path) / 2 ** 20:,.0f} MB, more than a {what} ever holds "
                    f"({max_bytes / 2 ** 20:,.0f} MB at most) in a format read whole into memory; it is not that "
                    f"file.{' ' + hint if hint else ''}")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            if mmap:
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as e:  # the old (non-zip) format cannot be memory-mapped
                    if "mmap" not in str(e):
                        raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors, plain containers and safe_globals
        refused = refused_global(e)
        why = (f"it holds a pickled object ({refused}), which StyleKit does not unpickle" if refused else
               "it is truncated, corrupt or not a torch file")
        raise error(f"{shown(path)} cannot be read as a plain {what}: {why}.{' ' + hint if hint else ''}") from None


def load_tensor_dict(path: str, error: type[WeightFileError] = WeightFileError, what: str = "tensor file",
                     hint: str = "", max_bytes: int = MAX_WEIGHT_BYTES, structure=None) -> dict:
    """A ``.bin`` / ``.pt`` dict of tensors, read weights-only and memory-mapped (a zip-format file), its
    tensors' declared sizes checked against ``max_bytes`` before any of them is read; then, as
    :func:`read_safetensors` does, ``structure(meta_dict)`` checks the format's names and shapes on the same
    dict with every tensor a meta tensor (shape and dtype, no data) and raises ``error`` if they do not form
    it. Anything else raises ``error``."""
    obj = load_weights_only(path, error, what, hint, mmap=True, max_bytes=max_bytes)
    if not isinstance(obj, dict):
        raise error(f"{shown(path)} holds a {type(obj).__name__}, not a dict of weights; expected a {what}")

    def leaves(o):
        if isinstance(o, torch.Tensor):
            yield o
        elif isinstance(o, dict):
            for v in o.values():
                yield from leaves(v)
    declared_within(leaves(obj), max_bytes, f"a {what}", error, shown(path))
    if structure is not None:
        with torch.device("meta"):
            structure(as_meta(obj))
    return obj


def as_meta(o):
    """``o`` with every tensor in it (nested dicts) replaced by a meta tensor of its shape and dtype: what a
    structure check reads, with no data."""
    if isinstance(o, torch.Tensor):
        return torch.empty(o.shape, dtype=o.dtype, device="meta")
    if isinstance(o, dict):
        return {k: as_meta(v) for k, v in o.items()}
    return o


def require_finite(tensors: dict, path: str, error: type[WeightFileError] = WeightFileError) -> dict:
    """Refuse a file whose floating-point tensors hold NaN or inf, naming the first such tensor."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise error(f"{os.path.basename(os.fspath(path))}: tensor {name!r} holds NaN or inf values; the file is "
                        "corrupt or was saved from a diverged training run. Use another copy.")
    return tensors


def positive_int(value, field: str, source: str, error: type[WeightFileError] = WeightFileError) -> int:
    """A metadata / config field that must be a whole number > 0 (``'12'`` and ``12`` both are)."""
    try:
        n = int(str(value).strip())
    except ValueError:
        raise error(f"{source}: {field} is {value!r}, not a whole number") from None
    if n <= 0 or str(n) != str(value).strip().lstrip("+"):
        raise error(f"{source}: {field} is {value!r}; it must be a whole number greater than 0")
    return n


def read_json_config(path: str, what: str, error: type[WeightFileError] = WeightFileError) -> dict:
    """A side-car JSON config that must be an object (``{...}``)."""
    path = check_file(path, what, error)
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{shown(path)} is not valid JSON ({_first_line(e)}); expected {what}") from None
    if not isinstance(cfg, dict):
        raise error(f"{shown(path)} holds a JSON {type(cfg).__name__}, not an object; expected {what}")
    return cfg


def load_into(module: torch.nn.Module, sd: dict, source: str, what: str,
              error: type[WeightFileError] = WeightFileError) -> torch.nn.Module:
    """``module.load_state_dict(sd)`` with every missing, unexpected or mis-shaped tensor reported as
    ``error`` naming the file and the layout expected."""
    mine = module.state_dict()
    missing = [k for k in mine if k not in sd]
    unexpected = [k for k in sd if k not in mine]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(mine[k].shape)})" for k in mine
             if k in sd and (not isinstance(sd[k], torch.Tensor) or sd[k].shape != mine[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:4]}" if missing else "", f"unexpected {unexpected[:4]}" if unexpected else "",
                 f"wrong shapes {wrong[:3]}" if wrong else ""]
        raise error(f"{source}: the tensors do not form {what}: {'; '.join(p for p in parts if p)}")
    module.load_state_dict(sd)
    return module
