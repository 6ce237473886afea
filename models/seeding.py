"""Seeded work that leaves torch's random state as it was."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def cpu_seeded(seed: int):
    """Inside: torch's CPU generator seeded with ``seed``; after: the caller's CPU state restored. Only the CPU
    generator is seeded, the one the fork restores (``torch.manual_seed`` would reseed every GPU as well)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
