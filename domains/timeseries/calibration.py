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
Factors are fitted per group of entries: per feature, or (``spread_bins`` > 0) per bin of the model's own
relative spread, the width of its 90 % interval over the feature's scale (Mondrian conformal prediction: when
narrow intervals are too narrow and wide ones about right, only the narrow ones are widened). A group with fewer
than ``min_entries`` hidden entries takes the factors pooled over all entries; the others are shrunk toward them,
``w c_g + (1 - w) c_pooled`` with ``w = n_g / (n_g + shrinkage)``. Coverage counts entries while CRPS weighs them by
magnitude, so reaching nominal coverage can cost CRPS: on the PM2.5 validation month the uncalibrated spread has
its lowest CRPS at 0.9x while 90 % coverage reaches 0.87 only past 1.1x, and neither shrinkage nor spread bins
change that (``benchmarks/results/imputation_pm25_calibration_pilot.json``).
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


SPREAD_WIDTH_LEVELS = (0.05, 0.95)  # the interval whose width, over the feature's scale, sorts entries into groups


@dataclass
class Calibration:
    """Spread factors per group of entries and central level, with what they were fitted on.

    A group is a feature (``edges`` None), or a bin of the model's own relative spread (``edges`` given): the
    width of the central 90 % interval over the feature's scale, binned at ``edges`` (Mondrian conformal
    prediction: each bin of predicted spread is calibrated on its own, so entries whose intervals are too narrow
    are widened without widening those that were right).

    Attributes:
        levels: the central interval levels ``(B,)``.
        factors: ``(G, B)``.
        entries: ``(G,)`` hidden entries per group.
        pooled: ``(G,)`` bool, groups that took the pooled factors.
        coverage_before, coverage_after: ``(B,)`` empirical coverage of the hidden entries by the model's
            intervals and by the rescaled ones (the second is in-sample: at least ``levels`` by construction).
        shrinkage: the prior weight (in entries) of the pooled factors in the others.
        edges: ``(G - 1,)`` relative-spread bin edges, or None for per-feature groups.
        scale: ``(K,)`` the features' scales (relative spread = width / scale).
    """

    levels: np.ndarray
    factors: np.ndarray
    entries: np.ndarray
    pooled: np.ndarray
    coverage_before: np.ndarray
    coverage_after: np.ndarray
    shrinkage: float = 0.0
    edges: np.ndarray | None = None
    scale: np.ndarray | None = None

    def factor_at(self, beta: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """Factors for central ranks ``beta`` of entries in groups ``group`` (long, broadcast to ``beta``)."""
        levels = torch.as_tensor(self.levels, dtype=beta.dtype)
        factors = torch.as_tensor(self.factors, dtype=beta.dtype)  # (G, B)
        position = torch.clamp((beta - levels[0]) / (levels[1] - levels[0]), 0, len(levels) - 1)
        low = position.floor().long().clamp(max=len(levels) - 2)
        weight = position - low
        group = group.expand_as(low)
        return factors[group, low] * (1 - weight) + factors[group, low + 1] * weight

    def groups_of(self, samples: torch.Tensor) -> torch.Tensor:
        """Group ``(..., K, L)`` (long) of each entry of samples ``(S, ..., K, L)``."""
        features = samples.shape[-2]
        if self.edges is None:
            return torch.arange(features).reshape(features, 1)
        lower, upper = sample_quantiles(samples, list(SPREAD_WIDTH_LEVELS))
        scale = torch.as_tensor(self.scale, dtype=samples.dtype).reshape(features, 1)
        return torch.bucketize((upper - lower) / scale, torch.as_tensor(self.edges, dtype=samples.dtype), right=True)

    def apply(self, samples: torch.Tensor) -> torch.Tensor:
        """Rescale samples ``(S, ..., K, L)`` (features on the second-to-last axis) about their median."""
        count = samples.shape[0]
        median = sample_quantiles(samples, [0.5])[0]
        rank = torch.argsort(torch.argsort(samples, dim=0), dim=0).to(samples.dtype)
        beta = (2 * rank / max(count - 1, 1) - 1).abs()
        return median + self.factor_at(beta, self.groups_of(samples)) * (samples - median)

    def group_names(self, features: list[str]) -> list[str]:
        if self.edges is None:
            return list(features)
        bounds = [0.0, *self.edges.tolist(), float("inf")]
        return [f"relative 90% width {a:.3g}-{b:.3g}" for a, b in zip(bounds[:-1], bounds[1:])]

    def to_json(self, features: list[str]) -> dict[str, Any]:
        names = self.group_names(features)
        grouping = "feature" if self.edges is None else "bin of the model's relative 90 % interval width"
        return {"method": f"split-conformal spread factors per {grouping} and central level, from the input's own "
                          "observed entries hidden in the pattern of other windows' gaps",
                "levels": self.levels.tolist(),
                "factors": {g: self.factors[i].round(4).tolist() for i, g in enumerate(names)},
                "hidden_entries": {g: int(self.entries[i]) for i, g in enumerate(names)},
                "pooled_groups": [g for i, g in enumerate(names) if self.pooled[i]],
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
                    shrinkage: float = 0.0, spread_bins: int = 0) -> Calibration:
    """Factors from the hidden entries: ``quantiles`` ``(Q, K, N)`` at ``levels`` (must include the median, each
    central level's ends and :data:`SPREAD_WIDTH_LEVELS`), ``truth`` ``(K, N)``, ``hidden`` ``(K, N)`` bool,
    ``scale`` ``(K,)`` the features' spreads (a half-width under ``1e-6 * scale`` counts as that); ``shrinkage``
    >= 0 entries (0: each group its own factors); ``spread_bins`` 0: a group per feature, else that many bins of
    relative spread with equal numbers of hidden entries."""
    if not shrinkage >= 0:
        raise ValueError(f"shrinkage must be >= 0 entries, got {shrinkage}")
    if spread_bins < 0:
        raise ValueError(f"spread_bins must be >= 0, got {spread_bins}")
    K = truth.shape[0]
    scale = np.asarray(scale, dtype=np.float64)
    floor = 1e-6 * scale[:, None]
    betas = np.asarray(CENTRAL_LEVELS)
    scores = [spread_scores(quantiles, levels, np.nan_to_num(truth), b, floor) for b in CENTRAL_LEVELS]  # (K, N) each
    edges = None
    if spread_bins:
        lower, upper = (quantiles[levels.index(q)] for q in SPREAD_WIDTH_LEVELS)
        width = (upper - lower) / scale[:, None]
        cuts = np.arange(1, spread_bins) / spread_bins
        edges = np.quantile(width[hidden], cuts) if hidden.any() else np.zeros(spread_bins - 1)
        group = np.searchsorted(edges, width, side="right")
    else:
        group = np.broadcast_to(np.arange(K)[:, None], truth.shape)
    count = spread_bins or K
    members = [hidden & (group == g) for g in range(count)]
    entries = np.array([int(m.sum()) for m in members])
    pooled_factors = np.array([conformal_factor(s[hidden], b) for s, b in zip(scores, betas)])
    pooled = entries < min_entries
    factors = np.empty((count, len(betas)))
    for g, chosen in enumerate(members):
        if pooled[g]:
            factors[g] = pooled_factors
            continue
        own = np.array([conformal_factor(s[chosen], b) for s, b in zip(scores, betas)])
        weight = entries[g] / (entries[g] + shrinkage)
        factors[g] = weight * own + (1 - weight) * pooled_factors
    n = max(int(hidden.sum()), 1)
    before = np.array([(s[hidden] <= 1.0).sum() / n for s in scores])
    after = np.array([(s <= factors[group, j])[hidden].sum() / n for j, s in enumerate(scores)])
    return Calibration(betas, factors, entries, pooled, before, after, float(shrinkage), edges, scale)


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
