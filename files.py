"""The one way StyleKit writes a file (nodes and command-line tools alike).

1. :func:`output_target`, called **before** any work starts, checks the name and the folder: the name
   is a plain file name (no folder parts, not absolute, no NUL or control characters, at most
   :data:`MAX_NAME` characters, the expected extension added), the resolved path stays inside the
   folder (symlinks followed), the folder exists or can be made and is writable.
2. :func:`write_new` writes through a temporary file in the same folder and then links it to its
   name, so an interrupted or failed save leaves nothing half-written and an existing file is never
   overwritten: a node takes the next free numbered name (``name_00001.ext``), as ComfyUI's SaveImage
   does; a command-line tool refuses unless it was given ``--force``.
Refusals are :class:`~stylekit.errors.OutputFileError` naming the field or file and the fix.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from .errors import InputError, OutputFileError

MAX_NAME = 200  # characters of a file name, extension included (file systems allow 255 bytes)


@dataclass(frozen=True)
class OutputTarget:
    folder: str          # real path of the folder
    name: str            # the file name asked for, extension included
    numbered: bool       # a taken name: take the next free numbered one (nodes) or refuse (tools)
    force: bool = False  # tools only: replace an existing file

    @property
    def path(self) -> str:
        return os.path.join(self.folder, self.name)


def plain_name(filename: str, extension: str = "", field: str = "filename") -> str:
    """``filename`` checked as a plain file name (step 1's name rules) with ``extension`` added; no file
    system access, so a node can refuse a bad name when ComfyUI validates the prompt."""
    if not isinstance(filename, str) or not filename.strip():
        raise OutputFileError(f"{field} is empty: give a file name such as 'my_style'")
    name = filename.strip()
    bad = [c for c in name if ord(c) < 32 or ord(c) == 127]
    if bad:
        raise OutputFileError(f"{field} {name!r} holds control characters ({', '.join(repr(c) for c in bad[:3])}); "
                              "use letters, digits, '-', '_' and '.'")
    if "/" in name or "\\" in name or os.path.isabs(name) or name in (".", "..") or (len(name) > 1 and name[1] == ":"):
        raise OutputFileError(f"{field} {name!r} is a path; give a plain file name: the file is written into its "
                              "model folder and nowhere else")
    if extension and not name.lower().endswith(extension.lower()):
        name += extension
    if len(name) > MAX_NAME or len(name.encode("utf-8")) > 255:
        raise OutputFileError(f"{field} {name[:40]!r}... is {len(name)} characters long; keep it under {MAX_NAME}")
    return name


def output_target(folder: str, filename: str, extension: str = "", numbered: bool = True, force: bool = False,
                  field: str = "filename") -> OutputTarget:
    """Check where ``filename`` would be written in ``folder``; see the module docstring."""
    name = plain_name(filename, extension, field)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OutputFileError(f"cannot make the folder {shown(folder)} ({e.strerror}); create it or choose another") from None
    real = os.path.realpath(folder)
    if not os.path.isdir(real):
        raise OutputFileError(f"{shown(folder)} is not a folder; the file cannot be written there")
    if not os.access(real, os.W_OK | os.X_OK):
        raise OutputFileError(f"the folder {shown(folder)} is not writable; fix its permissions or choose another")
    path = os.path.realpath(os.path.join(real, name))
    if os.path.dirname(path) != real:  # e.g. the name is a symlink that points elsewhere
        raise OutputFileError(f"{field} {name!r} in {shown(folder)} resolves to {shown(path)}, outside the folder; refusing")
    target = OutputTarget(real, name, numbered, force)
    if os.path.lexists(target.path) and not numbered and not force:
        raise OutputFileError(f"{shown(target.path)} exists; StyleKit never overwrites a file. Choose another name, or pass "
                              "--force to replace it")
    return target


def shown(path) -> str:
    """How a message names a file. Inside ComfyUI: relative to its base folder (``models/deadiff/x.safetensors``)
    when the file is under it, else the file's name alone, so a remote caller of the server never learns
    its layout. Outside ComfyUI (command lines, tests): the path as given."""
    path = os.fspath(path)
    try:
        import folder_paths
    except ImportError:
        return path
    base = os.path.realpath(folder_paths.base_path)
    real = os.path.realpath(path)
    if os.path.commonpath([real, base]) == base:
        return os.path.relpath(real, base)
    return os.path.basename(path)


def _candidates(target: OutputTarget):
    yield target.name
    if target.numbered:
        stem, ext = os.path.splitext(target.name)
        for n in range(1, 100000):
            yield f"{stem}_{n:05d}{ext}"


def process_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux: /proc), else by the
    set-and-restore dance."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_new(target: OutputTarget, write: Callable[[str], None]) -> str:
    """Call ``write(temporary path)``, then give the file its name without overwriting anything (or,
    with ``force``, replace atomically); returns the final path. Nothing is left behind on failure.

    The file gets the mode any new file of the process gets (0666 less the umask), as ComfyUI's own
    outputs do: writers such as safetensors create their files 0600, which other accounts serving the
    same ComfyUI could not read."""
    tmp = os.path.join(target.folder, f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        write(tmp)
        if not os.path.isfile(tmp):
            raise OutputFileError(f"nothing was written for {target.name}")
        os.chmod(tmp, 0o666 & ~process_umask())
        if target.force:
            os.replace(tmp, target.path)
            return target.path
        for name in _candidates(target):
            path = os.path.join(target.folder, name)
            try:
                os.link(tmp, path)  # fails if the name is taken: no overwrite, even in a race
                return path
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links
                if os.path.lexists(path):
                    continue
                os.rename(tmp, path)
                return path
        raise OutputFileError(f"{shown(target.path)} exists{' and so do its numbered variants' if target.numbered else ''}; "
                              "StyleKit never overwrites a file: choose another name")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


MAX_IMAGE_PIXELS = 50_000_000  # an image file's size, read from its header before any pixel is decoded


@contextmanager
def open_image(path: str, name: str):
    """The PIL image in ``path`` once its header says it is an image of at most :data:`MAX_IMAGE_PIXELS`;
    a file that is not a readable image, or a larger one, raises InputError naming ``name`` (how the
    caller's message shows the file), before anything is decoded."""
    from PIL import Image, UnidentifiedImageError
    try:
        im = Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{name} is not a readable image ({e})") from None
    with im:
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise InputError(f"{name} is {im.width}x{im.height} px, over {MAX_IMAGE_PIXELS // 1_000_000} MP; scale it "
                             "down first")
        yield im
