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

__all__ = ["NodeBudgetBatchSampler", "StepBatchSampler"]


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


class NodeBudgetBatchSampler(Sampler[list[int]]):
    """Batches of ragged items (molecules, crystals, proteins) holding at most ``max_nodes`` rows per step.

    The data stream is :class:`StepBatchSampler`'s (per-epoch permutations seeded by ``(seed, epoch)``). Step
    ``s`` takes items from the stream, in order, while their total size stays within ``max_nodes`` (an item
    larger than the budget on its own is refused up front), and keeps the largest multiple of ``multiple`` of
    them (at least ``multiple``; default ``world``): rank ``r`` gets the ``r``-th contiguous equal share, so every
    rank has the same number of samples (the per-sample random draws and DDP's gradient mean then equal one
    process's). Items left over start the next step. Runs with different numbers of processes draw the same
    batches when they share ``multiple`` (divisible by each one's ``world``). A step's batch is a pure function of ``(seed, step)``: a resumed run replays
    the stream positions from step 1 (sizes only, no data is read).

    Args:
        sizes: number of rows (atoms, residues) of every item.
        max_nodes: the budget of rows per step, summed over ranks.
        seed, first_step, last_step, rank, world: as :class:`StepBatchSampler`.
        multiple: the number of items per step is a multiple of it (default ``world``).
    """

    def __init__(self, sizes: list[int], max_nodes: int, seed: int, first_step: int, last_step: int, rank: int = 0,
                 world: int = 1, multiple: int | None = None) -> None:
        multiple = world if multiple is None else multiple
        if multiple < 1 or multiple % world:
            raise ValueError(f"the items per step must come in multiples ({multiple}) divisible by the {world} processes")
        if not sizes:
            raise ValueError("the training dataset is empty")
        if max(sizes) > max_nodes:
            raise ValueError(f"an item has {max(sizes)} rows, more than the node budget of {max_nodes} per step")
        if multiple * max(sizes) > max_nodes:
            raise ValueError(f"a node budget of {max_nodes} cannot hold {multiple} items of up to {max(sizes)} rows")
        self.sizes, self.max_nodes = list(sizes), max_nodes
        self.first_step, self.last_step, self.rank, self.world, self.multiple = first_step, last_step, rank, world, multiple
        self._stream = StepBatchSampler(len(sizes), 1, seed, 1, 1)
        self._positions = [0]  # stream position at the start of step s + 1

    def _item(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.sizes))
        return int(self._stream._permutation(epoch)[offset])

    def _start(self, step: int) -> int:
        while len(self._positions) < step:
            position, total, taken = self._positions[-1], 0, []
            while True:
                item = self._item(position + len(taken))
                if total + self.sizes[item] > self.max_nodes:
                    break
                total += self.sizes[item]
                taken.append(item)
            self._positions.append(position + len(taken) - len(taken) % self.multiple)
        return self._positions[step - 1]

    def global_indices(self, step: int) -> list[int]:
        """All items of 1-based ``step`` (every rank's, in rank order)."""
        start, end = self._start(step), self._start(step + 1)
        return [self._item(p) for p in range(start, end)]

    def indices(self, step: int) -> list[int]:
        items = self.global_indices(step)
        share = len(items) // self.world
        return items[self.rank * share:(self.rank + 1) * share]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.first_step, self.last_step + 1):
            yield self.indices(step)

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step + 1)
