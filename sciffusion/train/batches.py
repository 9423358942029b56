"""Deterministic batches: the sample indices of every step are a pure function of ``(seed, step)``.

The data stream is the concatenation of per-epoch permutations of ``range(N)``, epoch ``e``
shuffled by a generator seeded from ``(seed, e)``. Step ``s`` (1-based) takes stream positions
``[(s - 1) * B, s * B)`` for global batch ``B``; under DDP rank ``r`` of ``W`` takes the contiguous
slice ``[r * B / W, (r + 1) * B / W)`` of it. A resumed run therefore sees exactly the batches an
uninterrupted run sees, and ``W`` ranks together see exactly one process's batch.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["StepBatchSampler"]


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's index list for each step ``first_step .. last_step`` (inclusive, 1-based).

    Args:
        dataset_len: number of items ``N`` in the map-style dataset.
        global_batch: ``B``, the batch summed over all ranks; must be divisible by ``world``.
        seed: run seed.
        first_step, last_step: the steps to yield (a resumed run starts after its checkpoint).
        rank, world: this process's slice of the global batch.
    """

    def __init__(self, dataset_len: int, global_batch: int, seed: int, first_step: int, last_step: int, rank: int = 0, world: int = 1) -> None:
        if dataset_len < 1:
            raise ValueError("the training dataset is empty")
        if global_batch % world != 0:
            raise ValueError(f"trainer.batch_size ({global_batch}) must be divisible by the number of processes ({world})")
        self.n, self.batch, self.seed = dataset_len, global_batch, seed
        self.first_step, self.last_step = first_step, last_step
        self.rank, self.world = rank, world
        self.local_batch = global_batch // world
        self._perms: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            gen = torch.Generator().manual_seed((self.seed * 2_654_435_761 + epoch * 40_503 + 17) % (2**62))
            self._perms[epoch] = torch.randperm(self.n, generator=gen)
        return self._perms[epoch]

    def global_indices(self, step: int) -> list[int]:
        """All ``B`` dataset indices of 1-based ``step`` (every rank's rows, in rank order)."""
        positions = torch.arange((step - 1) * self.batch, step * self.batch)
        epochs = positions // self.n
        out = torch.empty(self.batch, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            rows = epochs == epoch
            out[rows] = self._permutation(epoch)[positions[rows] % self.n]
        return out.tolist()

    def indices(self, step: int) -> list[int]:
        """This rank's ``B / W`` indices of ``step``."""
        full = self.global_indices(step)
        return full[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.first_step, self.last_step + 1):
            yield self.indices(step)

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step + 1)
