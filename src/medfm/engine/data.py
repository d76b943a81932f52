"""Exactly resumable data order: a sampler that knows its position, and per-sample random seeds.

The sampler yields ``(index, seed)`` pairs. ``index`` follows a permutation drawn from ``(seed, epoch)``,
cut into equal parts per rank (rank ``r`` takes positions ``r, r + world, ...``), so ranks never share a
sample and every rank runs the same number of batches. ``seed`` is derived from ``(seed, epoch, index)``
and drives every random choice made for that sample (crops, flips, masks), so a run resumed mid-epoch
draws the same views as one that never stopped, whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample in one epoch (independent streams via numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_generator(sample_seed_value: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(sample_seed_value)
    return generator


class ResumableSampler(Sampler[tuple[int, int]]):
    """Shuffled, rank-sharded ``(index, seed)`` pairs, whole batches only, starting at a saved position."""

    def __init__(self, size: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batches_per_epoch = size // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{size} samples cannot fill one batch of {batch_size} on each of {world_size} rank(s); "
                "use a smaller batch_size or more data"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, batch: int) -> None:
        """Start the next iteration at batch ``batch`` of ``epoch`` (batches already consumed)."""
        if not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(f"batch {batch} outside 0..{self.batches_per_epoch}")
        self.epoch, self.start_batch = epoch, batch

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's indices for a whole epoch, in order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        used = self.batches_per_epoch * self.batch_size * self.world_size
        return order[:used][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.epoch_indices(self.epoch)[self.start_batch * self.batch_size :]
        for index in indices.tolist():
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
