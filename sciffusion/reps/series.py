"""Multivariate time-series representation for imputation.

A long series holds ``K`` features over ``N`` time points. Models see fixed-length windows of it:

* ``values``        ``(B, K, L)`` float, normalised, ``0`` where not observed;
* ``observed_mask`` ``(B, K, L)`` float in {0, 1}: 1 where a value exists;
* ``target_mask``   ``(B, K, L)`` float in {0, 1}: observed entries hidden from the model and scored;
* ``time``          ``(B, L)`` float: time stamps in units of the series' typical step, relative to
  the window start (irregular spacing allowed: stamps need not be ``0, 1, 2, ...``).

``Series`` stores the whole ``(K, N)`` table; :class:`FeatureNormalizer` is fitted on training
entries only; :func:`window_starts` / :class:`SeriesWindows` cut a series into windows and
:func:`stitch_windows` puts per-window outputs back together without double counting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset


class SeriesError(ValueError):
    """Invalid series data (a one-line message naming the offending column, key or file)."""


@dataclass
class Series:
    """A multivariate series with missing entries.

    Attributes:
        values: ``(K, N)`` float64, NaN where missing.
        features: ``K`` feature (column) names.
        index: ``N`` original time stamps (a ``pd.DatetimeIndex`` or a numeric ``pd.Index``).
        time_name: name of the time column in files.
        step: the typical spacing of ``index`` (median difference); a ``pd.Timedelta`` or a number.
    """

    values: np.ndarray
    features: list[str]
    index: pd.Index
    time_name: str = "time"
    step: Any = None

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.ndim != 2:
            raise SeriesError(f"series values must be (K, N), got shape {self.values.shape}")
        if len(self.features) != self.values.shape[0]:
            raise SeriesError(f"{len(self.features)} feature names for {self.values.shape[0]} features")
        if len(self.index) != self.values.shape[1]:
            raise SeriesError(f"{len(self.index)} time stamps for {self.values.shape[1]} time points")
        if self.step is None:
            self.step = typical_step(self.index)

    @property
    def num_features(self) -> int:
        return self.values.shape[0]

    @property
    def length(self) -> int:
        return self.values.shape[1]

    @property
    def observed_mask(self) -> np.ndarray:
        """``(K, N)`` bool: True where a value exists."""
        return ~np.isnan(self.values)

    @property
    def time(self) -> np.ndarray:
        """``(N,)`` float64: time stamps in units of ``step`` since the first stamp."""
        return time_in_steps(self.index, self.step)

    def select(self, positions: np.ndarray) -> "Series":
        """The sub-series at integer time ``positions`` (sorted)."""
        return Series(self.values[:, positions], list(self.features), self.index[positions], self.time_name, self.step)

    def with_values(self, values: np.ndarray) -> "Series":
        """Same stamps and features, new ``(K, N)`` values."""
        return Series(values, list(self.features), self.index, self.time_name, self.step)

    def to_frame(self) -> pd.DataFrame:
        """Wide DataFrame: the time column then one column per feature (NaN = missing)."""
        frame = pd.DataFrame(self.values.T, columns=self.features)
        frame.insert(0, self.time_name, np.asarray(self.index))
        return frame


def typical_step(index: pd.Index) -> Any:
    """Median spacing of a sorted time index (``pd.Timedelta`` for datetimes, a float otherwise)."""
    if len(index) < 2:
        return pd.Timedelta(hours=1) if isinstance(index, pd.DatetimeIndex) else 1.0
    if isinstance(index, pd.DatetimeIndex):
        return pd.Timedelta(int(np.median(np.diff(index.as_unit("ns").asi8))), unit="ns")
    step = float(np.median(np.diff(np.asarray(index, dtype=np.float64))))
    return step if step > 0 else 1.0


def time_in_steps(index: pd.Index, step: Any) -> np.ndarray:
    """``(N,)`` float64 stamps measured in ``step`` units since ``index[0]``."""
    if isinstance(index, pd.DatetimeIndex):
        ns = index.as_unit("ns").asi8.astype(np.float64)
        return (ns - ns[0]) / float(pd.Timedelta(step).value)
    raw = np.asarray(index, dtype=np.float64)
    return (raw - raw[0]) / float(step)


@dataclass
class FeatureNormalizer:
    """Per-feature affine normalisation ``(x - mean) / std`` fitted on observed training entries.

    Attributes:
        mean: ``(K,)``.
        std: ``(K,)``; a feature with zero spread gets ``std = 1``.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, observed: np.ndarray | None = None) -> "FeatureNormalizer":
        """Fit on ``values`` ``(K, N)`` (NaN = missing), counting only ``observed`` ``(K, N)`` entries."""
        values = np.asarray(values, dtype=np.float64)
        keep = ~np.isnan(values) if observed is None else (np.asarray(observed, bool) & ~np.isnan(values))
        counts = keep.sum(axis=1)
        if (counts == 0).any():
            raise SeriesError(f"cannot fit normaliser: feature {int(np.argmax(counts == 0))} has no observed training value")
        filled = np.where(keep, values, 0.0)
        mean = filled.sum(axis=1) / counts
        var = (np.where(keep, values - mean[:, None], 0.0) ** 2).sum(axis=1) / np.maximum(counts - 1, 1)
        std = np.sqrt(var)
        std[~(std > 0)] = 1.0
        return cls(mean=mean, std=std)

    def transform(self, values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Normalise values whose feature axis is second to last: ``(..., K, L)``."""
        mean, std = self._shaped(values)
        return (values - mean) / std

    def inverse(self, values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Undo :meth:`transform` for ``(..., K, L)`` values."""
        mean, std = self._shaped(values)
        return values * std + mean

    def _shaped(self, values: np.ndarray | torch.Tensor) -> tuple[Any, Any]:
        mean, std = self.mean[:, None], self.std[:, None]
        if isinstance(values, torch.Tensor):
            return (torch.as_tensor(mean, dtype=values.dtype, device=values.device),
                    torch.as_tensor(std, dtype=values.dtype, device=values.device))
        return mean, std

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-safe form for run metadata."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[float]]) -> "FeatureNormalizer":
        try:
            return cls(mean=np.asarray(data["mean"], np.float64), std=np.asarray(data["std"], np.float64))
        except KeyError as err:
            raise SeriesError(f"normaliser metadata is missing key {err.args[0]!r}") from None


def window_starts(length: int, window: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Start positions of windows covering ``length`` points, and the leading points each must skip.

    Windows start every ``stride`` points (default: ``window``, no overlap). If the windows do not
    reach the end, one more window is aligned to the end; its ``skip`` counts the leading points that
    an earlier window already covers (CSDI's ``cut_length``), so stitching never counts a point twice.

    Returns:
        ``(starts, skip)`` int64 arrays of equal length.
    """
    if window < 1:
        raise SeriesError(f"window length must be >= 1, got {window}")
    if length < window:
        return np.zeros(1, np.int64), np.zeros(1, np.int64)
    stride = window if stride is None else stride
    if stride < 1:
        raise SeriesError(f"window stride must be >= 1, got {stride}")
    starts = list(range(0, length - window + 1, stride))
    skip = [0] * len(starts)
    covered = starts[-1] + window
    if covered < length:
        starts.append(length - window)
        skip.append(covered - (length - window))
    return np.asarray(starts, np.int64), np.asarray(skip, np.int64)


def stitch_windows(windows: np.ndarray, starts: np.ndarray, skip: np.ndarray, length: int) -> np.ndarray:
    """Put per-window arrays ``(W, ..., K, L)`` back on the series axis -> ``(..., K, length)``.

    Each window writes its points from ``skip`` on; with the layout from :func:`window_starts` every
    point is written exactly once (for overlapping strides, later windows win).
    """
    windows = np.asarray(windows)
    window = windows.shape[-1]
    out = np.full(windows.shape[1:-1] + (length,), np.nan, dtype=windows.dtype)
    for w, (start, cut) in enumerate(zip(starts, skip)):
        stop = min(start + window, length)
        out[..., start + cut:stop] = windows[w, ..., cut:stop - start]
    return out


class SeriesWindows(Dataset):
    """Windows of one normalised series as model-ready dicts.

    Each item holds ``values`` ``(K, L)`` (normalised, 0 where missing), ``observed_mask`` ``(K, L)``,
    ``cond_mask`` ``(K, L)`` (entries the model may see; equals ``observed_mask`` unless
    ``cond_mask`` is given, e.g. the evaluation inputs of a benchmark), ``pattern_mask`` ``(K, L)``
    (another window's observed mask, for the historical training mask), ``time`` ``(L,)`` (stamps in
    steps, relative to the window start) and ``skip`` (points already covered by an earlier window).

    Args:
        series: the series (NaN = missing).
        normalizer: fitted normaliser.
        window: window length ``L``; series shorter than ``L`` are padded with unobserved points.
        stride: start spacing (default ``L``).
        cond_mask: optional ``(K, N)`` bool: observed entries the model is allowed to see.
        pattern_pool: window indices whose observed masks may serve as historical patterns
            (default: all windows).
        seed: fixes which window lends each window its pattern.
    """

    def __init__(self, series: Series, normalizer: FeatureNormalizer, window: int, stride: int | None = None,
                 cond_mask: np.ndarray | None = None, pattern_pool: np.ndarray | None = None, seed: int = 0) -> None:
        self.series = series
        self.window = window
        self.starts, self.skip = window_starts(series.length, window, stride)
        observed = series.observed_mask
        normalised = np.where(observed, normalizer.transform(np.nan_to_num(series.values)), 0.0)
        time = series.time
        pad = max(0, window - series.length)
        if pad:
            normalised = np.pad(normalised, ((0, 0), (0, pad)))
            observed = np.pad(observed, ((0, 0), (0, pad)))
            last = time[-1] if len(time) else 0.0
            time = np.concatenate([time, last + np.arange(1, pad + 1)])
            if cond_mask is not None:
                cond_mask = np.pad(cond_mask, ((0, 0), (0, pad)))
        self._values = torch.as_tensor(normalised, dtype=torch.float32)
        self._observed = torch.as_tensor(observed, dtype=torch.float32)
        cond = observed if cond_mask is None else (np.asarray(cond_mask, bool) & observed)
        self._cond = torch.as_tensor(cond, dtype=torch.float32)
        self._time = torch.as_tensor(time, dtype=torch.float32)
        pool = np.arange(len(self.starts)) if pattern_pool is None else np.asarray(pattern_pool, np.int64)
        if len(pool) == 0:
            raise SeriesError("pattern_pool is empty")
        rng = np.random.default_rng(seed)
        self._pattern_of = pool[rng.integers(0, len(pool), size=len(self.starts))]

    def __len__(self) -> int:
        return len(self.starts)

    def _cut(self, table: torch.Tensor, i: int) -> torch.Tensor:
        start = int(self.starts[i])
        return table[..., start:start + self.window]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        time = self._cut(self._time, i)
        return {
            "values": self._cut(self._values, i),
            "observed_mask": self._cut(self._observed, i),
            "cond_mask": self._cut(self._cond, i),
            "pattern_mask": self._cut(self._observed, int(self._pattern_of[i])),
            "time": time - time[0],
            "skip": torch.tensor(int(self.skip[i])),
        }
