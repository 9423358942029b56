"""Conformal calibration of imputation intervals at impute time, from the input's own observed entries.

No ground truth is needed. Observed entries of the input are hidden in the pattern of its real gaps (each
window borrows the missing-entry pattern of another window of the input, :func:`borrowed_gap_masks`), the model
imputes them, and per feature and per central interval level ``beta`` (10 %, 20 %, ..., 90 %) the spread is
rescaled by the split-conformal factor

    c = the ceil((n + 1) beta)-th smallest of s_i = |y_i - m_i| / h_i,

where ``m`` is the sample median and ``h`` the half-width of the ``beta`` interval on the side of ``y`` (upper
quantile minus median when ``y >= m``, else median minus lower quantile). The interval ``m +/- c (q - m)`` then
covers a new entry with probability at least ``beta`` when the hidden entries are exchangeable with the real
gaps (Romano et al. 2019's conformalised quantiles, in multiplicative form). Samples are rescaled the same way:
a sample at central rank ``beta`` moves to ``m + c(beta) (x - m)``, ``c`` interpolated linearly between levels
(constant outside 10 %..90 %), so every quantile, the CRPS and the intervals come from the calibrated samples.
A feature with fewer than ``min_entries`` hidden entries takes the factors pooled over all features; the others
are shrunk toward the pooled factors, ``w c_k + (1 - w) c_pooled`` with ``w = n_k / (n_k + shrinkage)`` (``n_k`` the
feature's hidden entries): a per-feature factor from a few hundred entries is noisy (most at the narrow central
levels), and noise in the factors widens some features' intervals where they were right, which costs CRPS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sciffusion.domains.timeseries.series import Series, window_starts
from sciffusion.tasks.impute import sample_quantiles

CENTRAL_LEVELS = tuple(round(0.1 * i, 1) for i in range(1, 10))  # 10 %, ..., 90 % central intervals
#: quantile levels an imputation must give for :func:`fit_calibration`: the median and each level's two ends
CALIBRATION_QUANTILES = tuple(sorted({0.5} | {round((1 - b) / 2, 2) for b in CENTRAL_LEVELS}
                                     | {round((1 + b) / 2, 2) for b in CENTRAL_LEVELS}))


def borrowed_gap_masks(series: list[Series], window: int, seed: int) -> list[np.ndarray] | None:
    """Per series a ``(K, N)`` bool mask of the entries the model may see during calibration: its observed
    entries minus, in each window (non-overlapping, the last aligned to the end, as imputation cuts them), the
    missing entries of another full-length window of the input that has gaps (drawn with ``seed``). None when
    no window of the input has a gap to lend."""
    rng = np.random.default_rng(seed)
    patterns = []
    for s in series:
        starts, _ = window_starts(s.length, window)
        observed = s.observed_mask
        patterns += [observed[:, a:a + window] for a in starts
                     if s.length >= window and not observed[:, a:a + window].all()]
    if not patterns:
        return None
    masks = []
    for s in series:
        cond = s.observed_mask.copy()
        starts, skip = window_starts(s.length, window)
        for a, cut in zip(starts, skip):
            stop = min(a + window, s.length)
            lent = patterns[int(rng.integers(len(patterns)))]
            cond[:, a + cut:stop] &= lent[:, cut:stop - a]
        masks.append(cond)
    return masks


@dataclass
class Calibration:
    """Per-feature spread factors for each central level, with what they were fitted on.

    Attributes:
        levels: the central interval levels ``(B,)``.
        factors: ``(K, B)``.
        entries: ``(K,)`` hidden entries per feature.
        pooled: ``(K,)`` bool, features that took the pooled factors.
        shrinkage: the prior weight (in entries) of the pooled factors in the others.
        coverage_before, coverage_after: ``(B,)`` empirical coverage of the hidden entries by the model's
            intervals and by the rescaled ones (the second is in-sample: at least ``levels`` by construction).
    """

    levels: np.ndarray
    factors: np.ndarray
    entries: np.ndarray
    pooled: np.ndarray
    coverage_before: np.ndarray
    coverage_after: np.ndarray
    shrinkage: float = 0.0

    def factor_at(self, beta: torch.Tensor, feature_axis: int) -> torch.Tensor:
        """Factors for central ranks ``beta`` (any shape with the feature axis at ``feature_axis``)."""
        levels = torch.as_tensor(self.levels, dtype=beta.dtype)
        factors = torch.as_tensor(self.factors, dtype=beta.dtype)  # (K, B)
        position = torch.clamp((beta - levels[0]) / (levels[1] - levels[0]), 0, len(levels) - 1)
        low = position.floor().long().clamp(max=len(levels) - 2)
        weight = position - low
        shape = [1] * beta.dim()
        shape[feature_axis] = factors.shape[0]
        k = torch.arange(factors.shape[0]).reshape(shape).expand_as(low)
        return factors[k, low] * (1 - weight) + factors[k, low + 1] * weight

    def apply(self, samples: torch.Tensor) -> torch.Tensor:
        """Rescale samples ``(S, ..., K, L)`` (features on the second-to-last axis) about their median."""
        count = samples.shape[0]
        median = sample_quantiles(samples, [0.5])[0]
        rank = torch.argsort(torch.argsort(samples, dim=0), dim=0).to(samples.dtype)
        beta = (2 * rank / max(count - 1, 1) - 1).abs()
        return median + self.factor_at(beta, samples.dim() - 2) * (samples - median)

    def to_json(self, features: list[str]) -> dict[str, Any]:
        return {"method": "split-conformal spread factors per feature and central level, from the input's own "
                          "observed entries hidden in the pattern of other windows' gaps",
                "levels": self.levels.tolist(),
                "factors": {f: self.factors[k].round(4).tolist() for k, f in enumerate(features)},
                "hidden_entries": {f: int(self.entries[k]) for k, f in enumerate(features)},
                "pooled_features": [f for k, f in enumerate(features) if self.pooled[k]],
                "shrinkage_entries": self.shrinkage,
                "coverage_before": self.coverage_before.round(4).tolist(),
                "coverage_after": self.coverage_after.round(4).tolist()}


def conformal_factor(scores: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) level)``-th smallest score (the largest when that exceeds ``n``); 1 if there are none."""
    if len(scores) == 0:
        return 1.0
    rank = min(math.ceil((len(scores) + 1) * level), len(scores))
    return float(np.partition(scores, rank - 1)[rank - 1])


def spread_scores(quantiles: np.ndarray, levels: tuple[float, ...], truth: np.ndarray, beta: float,
                  floor: np.ndarray) -> np.ndarray:
    """``s = |y - m| / h`` for entries ``(K, M)``: ``quantiles`` ``(Q, K, M)`` at ``levels``; ``h`` at least
    ``floor`` ``(K, 1)`` (a zero-width interval)."""
    median = quantiles[levels.index(0.5)]
    upper = quantiles[levels.index(round((1 + beta) / 2, 2))] - median
    lower = median - quantiles[levels.index(round((1 - beta) / 2, 2))]
    half = np.maximum(np.where(truth >= median, upper, lower), floor)
    return np.abs(truth - median) / half


def fit_calibration(quantiles: np.ndarray, truth: np.ndarray, hidden: np.ndarray, scale: np.ndarray,
                    min_entries: int = 30, levels: tuple[float, ...] = CALIBRATION_QUANTILES,
                    shrinkage: float = 0.0) -> Calibration:
    """Factors from the hidden entries: ``quantiles`` ``(Q, K, N)`` at ``levels`` (must include the median and
    each central level's ends), ``truth`` ``(K, N)``, ``hidden`` ``(K, N)`` bool, ``scale`` ``(K,)`` the features'
    spreads (a half-width under ``1e-6 * scale`` counts as that); ``shrinkage`` >= 0 entries (0: each feature its
    own factors)."""
    if not shrinkage >= 0:
        raise ValueError(f"shrinkage must be >= 0 entries, got {shrinkage}")
    K = truth.shape[0]
    floor = 1e-6 * np.asarray(scale, dtype=np.float64)[:, None]
    betas = np.asarray(CENTRAL_LEVELS)
    scores = [spread_scores(quantiles, levels, np.nan_to_num(truth), b, floor) for b in CENTRAL_LEVELS]  # (K, N) each
    entries = hidden.sum(axis=1)
    pooled_factors = np.array([conformal_factor(s[hidden], b) for s, b in zip(scores, betas)])
    pooled = entries < min_entries
    factors = np.empty((K, len(betas)))
    for k in range(K):
        if pooled[k]:
            factors[k] = pooled_factors
            continue
        own = np.array([conformal_factor(s[k][hidden[k]], b) for s, b in zip(scores, betas)])
        weight = entries[k] / (entries[k] + shrinkage)
        factors[k] = weight * own + (1 - weight) * pooled_factors
    n = max(int(hidden.sum()), 1)
    before = np.array([(s[hidden] <= 1.0).sum() / n for s in scores])
    after = np.array([(s <= factors[:, j:j + 1])[hidden].sum() / n for j, s in enumerate(scores)])
    return Calibration(betas, factors, entries, pooled, before, after, float(shrinkage))


def reliability(samples: np.ndarray | torch.Tensor, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Empirical coverage ``(B,)`` of the entries ``mask`` by the central :data:`CENTRAL_LEVELS` intervals of
    ``samples`` ``(S, K, N)``."""
    samples = torch.as_tensor(samples, dtype=torch.float64)
    target = torch.as_tensor(np.nan_to_num(truth))
    chosen = torch.as_tensor(mask, dtype=torch.bool)
    out = []
    for b in CENTRAL_LEVELS:
        lower, upper = sample_quantiles(samples, [(1 - b) / 2, (1 + b) / 2])
        inside = (target >= lower) & (target <= upper)
        out.append(float(inside[chosen].double().mean()) if chosen.any() else float("nan"))
    return np.asarray(out)


def plot_reliability(path: Any, curves: dict[str, np.ndarray], title: str) -> None:
    """Nominal against empirical coverage at 10 %..90 % (the diagonal is calibrated), one line per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="0.6", linewidth=1, label="calibrated")
    for (name, values), marker in zip(curves.items(), "os^v"):
        ax.plot(CENTRAL_LEVELS, values, marker=marker, markersize=4, label=name)
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("empirical coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110, format="png")
    finally:
        plt.close(fig)
