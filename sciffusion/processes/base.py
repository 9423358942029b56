"""The Process protocol: how one field of a sample is corrupted, learned and sampled.

A sample is a set of named fields (positions, atom types, fractional coordinates, rotations, images, ...),
each driven by its own process. All fields share one diffusion time ``t`` per sample, shape ``(B,)``,
continuous in ``[0, 1]`` (``0`` clean, ``1`` the prior). A field is dense ``(B, ...)`` or ragged
``(N, ...)`` with ``index`` ``(N,)`` giving the sample of every row (torch-geometric's ``batch``).

The network's raw output for a field is turned by the process into a *prediction* (``predict``); the
prediction is whatever that process's solvers consume (Gaussian: :class:`Prediction` ``(x0, eps)``;
categorical: logits of the clean class; torus / SO(3): the clean-sample estimate). Classifier-free
guidance combines two predictions (``combine_cfg``), constraints and guidance read the clean-sample
estimate (``x0_estimate``), and ``project`` maps a state onto the field's space (zero centre of mass, wrap
to ``[0, 1)``, re-orthonormalise): the same projection is applied to training noise, the prior and after
every solver step.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sciffusion.rng import StepRandom


class Process:
    """Base class of every field's process (Gaussian, zero-CoM, categorical, torus, SO(3)).

    Subclasses implement the methods below; shapes: a field ``x`` is ``(B, ...)`` or ragged ``(N, ...)`` with
    ``index`` ``(N,)``; ``t`` is ``(B,)``.
    """

    name: str = "process"
    default_solver: str = ""  # used when a sampler names a solver that cannot drive this process
    default_grid: str = "uniform"
    default_time_sampler: str = "uniform"
    t_min: float = 1e-5

    # -- the field's space -------------------------------------------------------------------------
    def validate(self, x: Tensor, field: str) -> None:
        """Raise ``ValueError`` naming ``field`` when ``x`` is not a clean sample of this space (dtype, shape, range)."""

    def project(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """Map a state onto the space (identity on R^d)."""
        return x

    # -- forward process ---------------------------------------------------------------------------
    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, index: Tensor | None = None) -> Tensor:
        """A draw from the prior at ``t = 1``, projected."""
        raise NotImplementedError

    def corrupt(self, x0: Tensor, t: Tensor, rng: StepRandom, index: Tensor | None = None) -> tuple[Tensor, Any]:
        """``x_t ~ p_t(. | x0)`` and whatever the loss needs besides (e.g. the Gaussian noise)."""
        raise NotImplementedError

    def sample_time(self, batch: int, rng: StepRandom, sampler: str | None = None, loc: float = 0.0,
                    scale: float = 1.0) -> Tensor:
        """Training times ``(B,)`` in ``[t_min, 1]`` (``uniform`` unless a subclass offers more)."""
        sampler = sampler or self.default_time_sampler
        if sampler != "uniform":
            raise ValueError(f"time sampler '{sampler}' is not offered by the {self.name} process (known: uniform)")
        return (self.t_min + (1 - self.t_min) * rng.rand(batch, dtype=torch.float64)).float()

    # -- the network -------------------------------------------------------------------------------
    def net_input(self, x_t: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
        """What the network sees of the field (identity unless preconditioned)."""
        return x_t

    def time_input(self, t: Tensor) -> Tensor:
        """The time the network sees, ``(B,)`` (identity unless preconditioned, as EDM's ``c_noise``)."""
        return t

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, aux: Any, t: Tensor, index: Tensor | None = None) -> Tensor:
        """Training loss of the raw network output, per entry: shaped like the field, or like its rows ``(rows,)``
        (the model averages it per sample, then over samples; Gaussian processes also take the model's
        ``weighting``)."""
        raise NotImplementedError

    def predict(self, out: Tensor, x_t: Tensor, t: Tensor, index: Tensor | None = None, path: Any = None) -> Any:
        """The raw network output as this process's prediction (what its solvers consume); ``path`` is the
        process's :meth:`path_table` entry at ``t`` when the sampler has it."""
        raise NotImplementedError

    def x0_estimate(self, pred: Any) -> Tensor:
        """The clean-sample estimate carried by a prediction (used by guidance and constraints)."""
        raise NotImplementedError

    def combine_cfg(self, cond: Any, uncond: Any, scale: float) -> Any:
        """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` in the process's own space."""
        raise NotImplementedError

    # -- sampling ----------------------------------------------------------------------------------
    def time_grid(self, steps: int, kind: str | None = None) -> Tensor:
        """Decreasing times ``(steps + 1,)`` float64 from ``1`` to ``0``."""
        kind = kind or self.default_grid
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if kind != "uniform":
            raise ValueError(f"unknown time grid '{kind}' for the {self.name} process (known: uniform)")
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)

    def path_table(self, grid: Tensor, like: Tensor, index: Tensor | None, batch: int) -> list[Any]:
        """Per grid time ``(T,)``, whatever the process's steps and predictions reuse at that time (computed once
        by the sampling loop and passed back explicitly); ``None`` when there is nothing to reuse."""
        return [None] * len(grid)

    def noised_known(self, x0: Tensor, t: Tensor, generator: torch.Generator | None, index: Tensor | None = None) -> Tensor:
        """Known clean values brought to time ``t`` (inpainting with ``noise_known``): a draw of ``p_t(. | x0)``."""
        raise NotImplementedError


def per_sample(values: Tensor, like: Tensor, index: Tensor | None = None) -> Tensor:
    """Per-sample values ``(B,)`` broadcast to a field ``like`` (dense ``(B, ...)``, or ragged rows by ``index``)."""
    if index is not None:
        values = values[index]
    return values.reshape(values.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


def segment_mean(values: Tensor, index: Tensor, n_segments: int) -> Tensor:
    """Mean of the rows of ``values`` ``(N, ...)`` per sample (``index`` ``(N,)``) -> ``(n_segments, ...)``;
    a sample without rows gets 0."""
    sums = torch.zeros((n_segments, *values.shape[1:]), dtype=values.dtype, device=values.device)
    sums.index_add_(0, index, values)
    counts = torch.bincount(index, minlength=n_segments).clamp_min(1).to(values.dtype)
    return sums / counts.reshape(-1, *([1] * (values.dim() - 1)))
