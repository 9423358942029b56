"""Per-step random numbers that make training exactly reproducible, resumable and DDP-consistent.

Every training step draws its randomness (diffusion times, noise, condition dropout) from a
generator seeded by ``(seed, step)`` alone, so a run resumed at step ``k`` draws exactly what an
uninterrupted run draws at step ``k``: no RNG state has to be checkpointed.

Under DistributedDataParallel each rank holds a contiguous slice of the global batch. Draws are made
for the *global* batch and sliced, so ``world`` ranks with local batch ``b`` see exactly the numbers a
single process with batch ``world * b`` sees.
"""
from __future__ import annotations

import torch


class StepRandom:
    """Random draws for one training step, identical across resumes and across DDP layouts.

    Args:
        seed: run seed.
        step: global optimisation step.
        rank: this process's rank; its samples are rows ``[rank * b, (rank + 1) * b)`` of the global batch.
        world: number of ranks.
    """

    def __init__(self, seed: int, step: int, rank: int = 0, world: int = 1) -> None:
        self.seed, self.step, self.rank, self.world = seed, step, rank, world
        self.generator = torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919) % (2**62))

    def _global(self, local_shape: tuple[int, ...], draw) -> torch.Tensor:
        b = local_shape[0]
        full = draw((b * self.world, *local_shape[1:]))
        return full[self.rank * b:(self.rank + 1) * b]

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """Standard normal draws of local ``shape`` (first dim = local batch)."""
        out = self._global(shape, lambda s: torch.randn(s, generator=self.generator))
        return out.to(device=device, dtype=dtype)

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform [0, 1) draws of local ``shape`` (first dim = local batch)."""
        out = self._global(shape, lambda s: torch.rand(s, generator=self.generator))
        return out.to(device=device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(*x.shape, dtype=x.dtype, device=x.device)

    def fork(self, offset: int) -> "StepRandom":
        """An independent stream for the same step (e.g. for a second field or a mask sampler)."""
        return StepRandom(self.seed + 104_729 * (offset + 1), self.step, self.rank, self.world)
