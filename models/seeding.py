"""Seeded work that leaves torch's random state as it was."""
from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch


@contextmanager
def cpu_seeded(seed: int):
    """Inside: torch's CPU generator seeded with ``seed``; after: the caller's CPU state restored. Only the CPU
    generator is seeded, the one the fork restores (``torch.manual_seed`` would reseed every GPU as well)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def derived_seed(*parts) -> int:
    """A 63-bit seed from ``parts`` (a seed, names, step numbers): distinct parts give unrelated seeds, with no
    collisions of the kind ``seed * a + step * b`` has."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
