"""Probabilistic imputation metrics, computed on the scored entries only (in original units).

Shapes: ``target`` and ``mask`` ``(..., K, L)`` (any leading dims, e.g. ``(B, K, L)``),
``samples`` ``(S, ..., K, L)`` with the sample axis first, ``point`` ``(..., K, L)``.
"""
from __future__ import annotations

import numpy as np
import torch

from sciffusion.tasks.impute import sample_quantiles

CSDI_QUANTILES = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))


class MetricInputError(ValueError):
    """Metric inputs of inconsistent shapes or with nothing to score."""


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _check(target: torch.Tensor, mask: torch.Tensor, samples: torch.Tensor | None = None) -> None:
    if target.shape != mask.shape:
        raise MetricInputError(f"target {tuple(target.shape)} and mask {tuple(mask.shape)} differ in shape")
    if samples is not None and samples.shape[1:] != target.shape:
        raise MetricInputError(f"samples {tuple(samples.shape)} do not match target {tuple(target.shape)}")
    if mask.sum() == 0:
        raise MetricInputError("nothing to score: the evaluation mask is empty")


def mae(point: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor) -> float:
    """Mean absolute error over ``mask`` entries."""
    point, target, mask = _as_tensor(point), _as_tensor(target), _as_tensor(mask)
    _check(target, mask)
    return float(((point - target).abs() * mask).sum() / mask.sum())


def rmse(point: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor) -> float:
    """Root mean squared error over ``mask`` entries."""
    point, target, mask = _as_tensor(point), _as_tensor(target), _as_tensor(mask)
    _check(target, mask)
    return float(torch.sqrt((((point - target) ** 2) * mask).sum() / mask.sum()))


def crps_quantile(samples: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
                  mask: np.ndarray | torch.Tensor, quantiles: tuple[float, ...] = CSDI_QUANTILES) -> float:
    """CRPS as CSDI computes it: the mean over ``quantiles`` of twice the pinball loss of the
    empirical sample quantile (linear interpolation), summed over masked entries and divided by
    ``sum(|target|)`` over them."""
    samples, target, mask = _as_tensor(samples), _as_tensor(target), _as_tensor(mask)
    _check(target, mask, samples)
    denominator = (target.abs() * mask).sum()
    total = torch.zeros((), dtype=torch.float64)
    for q, q_pred in zip(quantiles, sample_quantiles(samples, [float(q) for q in quantiles])):
        indicator = (target <= q_pred).to(torch.float64)
        total = total + 2.0 * ((q_pred - target) * mask * (indicator - q)).abs().sum() / denominator
    return float(total / len(quantiles))


def crps_energy_per_entry(samples: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Exact CRPS of the empirical sample distribution, ``E|X - y| - E|X - X'| / 2``, per entry.

    Uses the sorted-sample identity ``E|X - X'| = 2 / S^2 * sum_i (2 i - S - 1) x_(i)`` (``O(S log S)``).

    Returns:
        ``target``-shaped tensor.
    """
    samples, target = _as_tensor(samples), _as_tensor(target)
    count = samples.shape[0]
    spread_to_target = (samples - target.unsqueeze(0)).abs().mean(dim=0)
    ordered = torch.sort(samples, dim=0).values
    weights = (2 * torch.arange(1, count + 1, dtype=torch.float64) - count - 1).reshape((count,) + (1,) * target.dim())
    pair_spread = 2.0 * (weights * ordered).sum(dim=0) / count**2
    return spread_to_target - 0.5 * pair_spread


def crps_energy(samples: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
                mask: np.ndarray | torch.Tensor, normalize: bool = True) -> float:
    """Exact sample CRPS over ``mask`` entries: divided by ``sum(|target|)`` when ``normalize``
    (comparable with :func:`crps_quantile`), else the mean per entry (in target units)."""
    samples, target, mask = _as_tensor(samples), _as_tensor(target), _as_tensor(mask)
    _check(target, mask, samples)
    total = (crps_energy_per_entry(samples, target) * mask).sum()
    return float(total / ((target.abs() * mask).sum() if normalize else mask.sum()))


def coverage(samples: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
             mask: np.ndarray | torch.Tensor, level: float) -> float:
    """Fraction of masked targets inside the central ``level`` interval of the samples
    (between the ``(1 - level) / 2`` and ``(1 + level) / 2`` sample quantiles)."""
    if not 0.0 < level < 1.0:
        raise MetricInputError(f"coverage level must be in (0, 1), got {level}")
    samples, target, mask = _as_tensor(samples), _as_tensor(target), _as_tensor(mask)
    _check(target, mask, samples)
    lower, upper = sample_quantiles(samples, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    inside = ((target >= lower) & (target <= upper)).to(torch.float64)
    return float((inside * mask).sum() / mask.sum())


def summary(samples: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
            mask: np.ndarray | torch.Tensor) -> dict[str, float]:
    """All metrics with the sample median as point estimate (CSDI's protocol)."""
    samples = _as_tensor(samples)
    median = sample_quantiles(samples, [0.5])[0]
    return {
        "mae": mae(median, target, mask),
        "rmse": rmse(median, target, mask),
        "crps": crps_quantile(samples, target, mask),
        "crps_energy": crps_energy(samples, target, mask),
        "coverage50": coverage(samples, target, mask, 0.5),
        "coverage90": coverage(samples, target, mask, 0.9),
        "num_targets": float(_as_tensor(mask).sum()),
    }
