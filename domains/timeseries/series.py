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

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

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
        index: ``N`` original time stamps (a ``pd.DatetimeIndex``, a ``pd.TimedeltaIndex`` of durations, e.g.
            since admission, or a numeric ``pd.Index``).
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

    def select(self, positions: np.ndarray) -> Series:
        """The sub-series at integer time ``positions`` (sorted)."""
        return Series(self.values[:, positions], list(self.features), self.index[positions], self.time_name, self.step)

    def with_values(self, values: np.ndarray) -> Series:
        """Same stamps and features, new ``(K, N)`` values."""
        return Series(values, list(self.features), self.index, self.time_name, self.step)

    def to_frame(self) -> pd.DataFrame:
        """Wide DataFrame: the time column then one column per feature (NaN = missing)."""
        frame = pd.DataFrame(self.values.T, columns=self.features)
        frame.insert(0, self.time_name, np.asarray(self.index))
        return frame


TIME_LIKE = (pd.DatetimeIndex, pd.TimedeltaIndex)


def typical_step(index: pd.Index) -> Any:
    """Median spacing of a sorted time index (``pd.Timedelta`` for dates and durations, a float otherwise)."""
    if len(index) < 2:
        return pd.Timedelta(hours=1) if isinstance(index, TIME_LIKE) else 1.0
    if isinstance(index, TIME_LIKE):
        return pd.Timedelta(int(np.median(np.diff(index.as_unit("ns").asi8))), unit="ns")
    step = float(np.median(np.diff(np.asarray(index, dtype=np.float64))))
    return step if step > 0 else 1.0


def time_in_steps(index: pd.Index, step: Any) -> np.ndarray:
    """``(N,)`` float64 stamps measured in ``step`` units since ``index[0]``."""
    if isinstance(index, TIME_LIKE):
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
    def fit(cls, values: np.ndarray, observed: np.ndarray | None = None) -> FeatureNormalizer:
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
    def from_dict(cls, data: dict[str, Sequence[float]]) -> FeatureNormalizer:
        try:
            return cls(mean=np.asarray(data["mean"], np.float64), std=np.asarray(data["std"], np.float64))
        except KeyError as err:
            raise SeriesError(f"normaliser metadata is missing key {err.args[0]!r}") from None


def window_starts(length: int, window: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Start positions of windows covering ``length`` points, and the leading points each must skip.

    Windows start every ``stride`` points (default: ``window``, no overlap). If the windows do not
    reach the end, one more window is aligned to the end. A window's ``skip`` counts its leading
    points that the previous window already covers (CSDI's ``cut_length`` for the last window), so
    stitching and scoring see every point exactly once.

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
    if starts[-1] + window < length:
        starts.append(length - window)
    skip = [0] + [max(0, previous + window - start) for previous, start in pairwise(starts)]
    return np.asarray(starts, np.int64), np.asarray(skip, np.int64)


def stitch_windows(windows: np.ndarray, starts: np.ndarray, skip: np.ndarray, length: int) -> np.ndarray:
    """Put per-window arrays ``(W, ..., K, L)`` back on the series axis -> ``(..., K, length)``.

    Each window writes its points from ``skip`` on; with the layout from :func:`window_starts` every
    point is written exactly once.
    """
    windows = np.asarray(windows)
    window = windows.shape[-1]
    out = np.full(windows.shape[1:-1] + (length,), np.nan, dtype=windows.dtype)
    for w, (start, cut) in enumerate(zip(starts, skip)):
        stop = min(start + window, length)
        out[..., start + cut:stop] = windows[w, ..., cut:stop - start]
    return out


class SeriesWindows(Dataset):
    """Windows of one or more normalised series segments as model-ready dicts.

    Windows never cross a segment boundary (e.g. months, or separate recordings). Each item holds
    ``values`` ``(K, L)`` (normalised, 0 where missing), ``observed_mask`` ``(K, L)``, ``cond_mask``
    ``(K, L)`` (entries the model may see: ``observed_mask`` unless ``cond_masks`` are given, e.g.
    the evaluation inputs of a benchmark), ``pattern_mask`` ``(K, L)`` (the observed mask of another
    window, for the historical training mask), ``time`` ``(L,)`` (stamps in steps relative to the
    window start), ``skip`` (leading points an earlier window of the segment already covers),
    ``segment`` and ``start``.

    Args:
        segments: one series or a list of them (same features).
        normalizer: fitted normaliser.
        window: window length ``L``; a segment shorter than ``L`` is padded with unobserved points.
        stride: start spacing inside a segment (default ``L``).
        cond_masks: optional ``(K, N_i)`` bool per segment: observed entries the model may see.
        pattern_segments: segments whose windows may lend historical patterns (default: all).
        seed: fixes which window lends each window its pattern.
        step: time unit for the stamps (default: the first segment's typical step).
    """

    def __init__(self, segments: Series | Sequence[Series], normalizer: FeatureNormalizer, window: int,
                 stride: int | None = None, cond_masks: Sequence[np.ndarray] | None = None,
                 pattern_segments: Sequence[int] | None = None, seed: int = 0, step: Any = None) -> None:
        self.segments = [segments] if isinstance(segments, Series) else list(segments)
        if not self.segments:
            raise SeriesError("no series segments to cut into windows")
        if cond_masks is not None and len(cond_masks) != len(self.segments):
            raise SeriesError(f"{len(cond_masks)} conditioning masks for {len(self.segments)} segments")
        self.window = window
        step = self.segments[0].step if step is None else step
        self._values, self._observed, self._cond, self._time = [], [], [], []
        windows: list[tuple[int, int, int]] = []
        for i, seg in enumerate(self.segments):
            observed = seg.observed_mask
            cond = observed if cond_masks is None else (np.asarray(cond_masks[i], bool) & observed)
            normalised = np.where(observed, normalizer.transform(np.nan_to_num(seg.values)), 0.0)
            time = time_in_steps(seg.index, step)
            pad = max(0, window - seg.length)
            if pad:
                normalised = np.pad(normalised, ((0, 0), (0, pad)))
                observed = np.pad(observed, ((0, 0), (0, pad)))
                cond = np.pad(cond, ((0, 0), (0, pad)))
                time = np.concatenate([time, time[-1] + np.arange(1, pad + 1)])
            self._values.append(torch.as_tensor(normalised, dtype=torch.float32))
            self._observed.append(torch.as_tensor(observed, dtype=torch.float32))
            self._cond.append(torch.as_tensor(cond, dtype=torch.float32))
            self._time.append(torch.as_tensor(time, dtype=torch.float32))
            starts, skip = window_starts(seg.length, window, stride)
            windows.extend((i, int(a), int(b)) for a, b in zip(starts, skip))
        self.windows = np.asarray(windows, dtype=np.int64).reshape(-1, 3)  # (W, 3): segment, start, skip
        allowed = range(len(self.segments)) if pattern_segments is None else list(pattern_segments)
        pool = np.flatnonzero(np.isin(self.windows[:, 0], list(allowed)))
        if len(pool) == 0:
            raise SeriesError("no window may lend a historical pattern (pattern_segments selects none)")
        self._pattern_of = pool[np.random.default_rng(seed).integers(0, len(pool), size=len(self.windows))]

    def __len__(self) -> int:
        return len(self.windows)

    def _cut(self, tables: list[torch.Tensor], i: int) -> torch.Tensor:
        segment, start, _ = self.windows[i]
        return tables[segment][..., start:start + self.window]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        time = self._cut(self._time, i)
        segment, start, skip = (int(v) for v in self.windows[i])
        return {
            "values": self._cut(self._values, i),
            "observed_mask": self._cut(self._observed, i),
            "cond_mask": self._cut(self._cond, i),
            "pattern_mask": self._cut(self._observed, int(self._pattern_of[i])),
            "time": time - time[0],
            "skip": torch.tensor(skip),
            "segment": torch.tensor(segment),
            "start": torch.tensor(start),
        }

    def stacked(self) -> dict[str, torch.Tensor]:
        """All windows as one batch ``{key: (W, ...)}``."""
        items = [self[i] for i in range(len(self))]
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}
