"""Per-step random numbers that make training exactly reproducible, resumable and DDP-consistent.

Every training step draws its randomness (diffusion times, noise, condition dropout) from a
generator seeded by ``(seed, step)`` alone, so a run resumed at step ``k`` draws exactly what an
uninterrupted run draws at step ``k``: no RNG state has to be checkpointed.

Under DistributedDataParallel each rank holds a contiguous slice of the global batch. Draws are made
for the *global* batch and sliced, so ``world`` ranks with local batch ``b`` see exactly the numbers a
single process with batch ``world * b`` sees.

Ragged fields (rows of many samples, e.g. atoms of a batch of molecules) hold a different number of rows
on each rank, so their draws (:meth:`StepRandom.randn_rows`, :meth:`StepRandom.rand_rows`) come from one
stream per *sample*, seeded by the sample's position in the global batch: any layout of the same samples
over ranks draws the same numbers for each sample's rows.
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

    def _rows(self, index: torch.Tensor, row_shape: tuple[int, ...], draw) -> torch.Tensor:
        """Rows ``(N, *row_shape)`` for a ragged field whose row ``r`` belongs to local sample ``index[r]``; a
        sample's rows take its stream's draws in their order."""
        index = index.cpu()
        counts = torch.bincount(index, minlength=int(index.max()) + 1 if len(index) else 0).tolist()
        base = self.rank * len(counts)  # local sample i is global sample rank * b + i
        parts = []
        for i, count in enumerate(counts):
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.step * 7_919 + (base + i) * 104_723 + 1) % (2**62))
            parts.append(draw((count, *row_shape), gen))
        if not parts:
            return draw((0, *row_shape), self.generator)
        in_sample_order = torch.cat(parts)
        out = torch.empty_like(in_sample_order)
        out[torch.argsort(index, stable=True)] = in_sample_order
        return out

    def randn_rows(self, index: torch.Tensor, *row_shape: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """Standard normal rows ``(N, *row_shape)`` of a ragged field, one stream per sample (see the module docstring)."""
        out = self._rows(index, tuple(row_shape), lambda s, g: torch.randn(s, generator=g))
        return out.to(device=device, dtype=dtype)

    def rand_rows(self, index: torch.Tensor, *row_shape: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform [0, 1) rows ``(N, *row_shape)`` of a ragged field, one stream per sample."""
        out = self._rows(index, tuple(row_shape), lambda s, g: torch.rand(s, generator=g))
        return out.to(device=device, dtype=dtype)

    def randn_field(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Standard normal noise shaped like a field: dense ``(B, ...)`` as :meth:`randn_like`, ragged by ``index``."""
        if index is None:
            return self.randn_like(x)
        return self.randn_rows(index, *x.shape[1:], dtype=x.dtype, device=x.device)

    def fork(self, offset: int) -> "StepRandom":
        """An independent stream for the same step (e.g. for a second field or a mask sampler)."""
        return type(self)(self.seed + 104_729 * (offset + 1), self.step, self.rank, self.world)
