"""Seeded work that leaves the caller's random state alone.

Library functions that need reproducible random numbers from torch's global generators (weight
initialisation in timm and torch modules, dropout, MAE masks) seed them inside :func:`seeded`, which
restores the caller's generator states when the block ends: calling medfm never changes what the
caller's own ``torch.rand`` draws next.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU (and CUDA) generators seeded with ``seed``; restore them afterwards.

    CUDA generators are saved only once CUDA has started: reading their state starts CUDA on every
    device, which a CPU-only probe or a worker process must not pay for."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
