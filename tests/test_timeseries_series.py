"""Series representation: normaliser, windows, CSV / Parquet round trips and bad-input errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sciffusion.domains.timeseries.datasets import split_series
from sciffusion.domains.timeseries.io import (
    SeriesFileError,
    frame_to_series,
    read_series,
    write_series,
)

from sciffusion.domains.timeseries.series import (
    FeatureNormalizer,
    Series,
    SeriesWindows,
    stitch_windows,
    window_starts,
)


def make_series(n: int = 50, seed: int = 0) -> Series:
    rng = np.random.default_rng(seed)
    values = np.stack([10 + rng.normal(size=n), -5 + 3 * rng.normal(size=n), rng.normal(size=n)])
    values[rng.random(values.shape) < 0.2] = np.nan
    index = pd.date_range("2024-01-01", periods=n, freq="h")
    index = index.delete([7, 8, 30]).append(pd.DatetimeIndex(["2024-01-03 05:00", "2024-01-03 06:00", "2024-01-03 09:00"]))
    return Series(values, ["a", "b", "c"], index, time_name="when")


def test_normaliser_is_fitted_on_training_entries_only() -> None:
    series = make_series(200)
    data = split_series(series, test_fraction=0.25, holdout_ratio=0.2, seed=0)
    train = series.values[:, :150]
    np.testing.assert_allclose(data.normalizer.mean, np.nanmean(train, axis=1))
    np.testing.assert_allclose(data.normalizer.std, np.nanstd(train, axis=1, ddof=1))
    shifted = series.values.copy()
    shifted[:, 150:] += 1000.0  # test values must not move the statistics
    data2 = split_series(series.with_values(shifted), 0.25, 0.2, 0)
    np.testing.assert_allclose(data2.normalizer.mean, data.normalizer.mean)
    x = torch.randn(4, 3, 7, dtype=torch.float64)
    np.testing.assert_allclose(data.normalizer.inverse(data.normalizer.transform(x)).numpy(), x.numpy(), atol=1e-12)
    restored = FeatureNormalizer.from_dict(data.normalizer.to_dict())
    np.testing.assert_allclose(restored.mean, data.normalizer.mean)
    assert FeatureNormalizer.fit(np.array([[2.0, 2.0, np.nan]])).std[0] == 1.0  # constant feature: no division by 0


@pytest.mark.parametrize("length,window,stride", [(100, 36, None), (72, 36, None), (10, 4, 3), (5, 8, None)])
def test_windows_cover_every_point_exactly_once(length: int, window: int, stride: int | None) -> None:
    starts, skip = window_starts(length, window, stride)
    counts = np.zeros(max(length, window), int)
    for start, cut in zip(starts, skip):
        counts[start + cut:start + window] += 1
    assert (counts[:length] == 1).all()
    values = np.arange(length, dtype=float)
    windows = np.stack([np.pad(values, (0, max(0, window - length)))[s:s + window] for s in starts])[:, None, :]
    np.testing.assert_array_equal(stitch_windows(windows, starts, skip, length)[0], values)


def test_series_windows_use_irregular_time_stamps_and_normalised_values() -> None:
    series = make_series(60)
    norm = FeatureNormalizer.fit(series.values)
    ds = SeriesWindows(series, norm, window=12, stride=12)
    item = ds[0]
    assert item["values"].shape == (3, 12) and item["time"].shape == (12,)
    np.testing.assert_allclose(item["time"].numpy(), series.time[:12] - series.time[0])
    assert float(item["time"][7] - item["time"][6]) == pytest.approx(3.0)  # two deleted hours: a gap of 3 steps
    observed = series.observed_mask[:, :12]
    expected = np.where(observed, (np.nan_to_num(series.values[:, :12]) - norm.mean[:, None]) / norm.std[:, None], 0.0)
    np.testing.assert_allclose(item["values"].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(item["observed_mask"].numpy(), observed.astype(np.float32))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_round_trip_keeps_values_stamps_and_gaps(tmp_path: Path, suffix: str) -> None:
    series = make_series()
    path = tmp_path / f"series{suffix}"
    write_series(series, path)
    back = read_series(path, "when")
    assert back.features == series.features and back.time_name == "when"
    assert back.index.equals(series.index)
    np.testing.assert_array_equal(np.isnan(back.values), np.isnan(series.values))
    np.testing.assert_allclose(back.values, series.values, equal_nan=True)
    assert back.step == pd.Timedelta(hours=1)


def test_numeric_time_column_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame({"t": [0.0, 0.5, 1.0, 2.5], "x": [1.0, np.nan, 3.0, 4.0]})
    path = tmp_path / "s.csv"
    frame.to_csv(path, index=False)
    series = read_series(path)
    np.testing.assert_allclose(series.time, [0, 1, 2, 5])  # in units of the median step 0.5
    write_series(series, tmp_path / "out.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out.csv"), frame)


@pytest.mark.parametrize("frame,message", [
    (pd.DataFrame({"time": [1, 2, 3], "a": [1.0, 2.0, 3.0], "b": ["x", "1", "2"]}), "feature column 'b' is not numeric"),
    (pd.DataFrame({"time": [1, 2, 3], "a": [1.0, 2.0, 3.0], "b": [np.nan] * 3}), "feature column 'b' has no values"),
    (pd.DataFrame({"time": [1, 2, 2], "a": [1.0, 2.0, 3.0]}), "duplicated time stamp"),
    (pd.DataFrame({"time": [1, 3, 2], "a": [1.0, 2.0, 3.0]}), "not sorted"),
    (pd.DataFrame({"time": ["2024-01-01", "soon", "2024-01-03"], "a": [1.0, 2.0, 3.0]}), "neither numbers nor dates"),
    (pd.DataFrame({"time": [1, 2, 3]}), "at least one feature column"),
])
def test_bad_tables_raise_one_line_errors_naming_the_problem(tmp_path: Path, frame: pd.DataFrame, message: str) -> None:
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(SeriesFileError, match=message) as info:
        read_series(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(SeriesFileError, match="no such file"):
        read_series(tmp_path / "absent.csv")
    (tmp_path / "x.txt").write_text("a,b\n")
    with pytest.raises(SeriesFileError, match="unsupported file type"):
        read_series(tmp_path / "x.txt")
    with pytest.raises(SeriesFileError, match="no time column 'stamp'"):
        frame_to_series(pd.DataFrame({"t": [1], "a": [1.0]}), "stamp", "table")


def test_linear_interpolation_baseline_uses_real_time_stamps() -> None:
    from sciffusion.domains.timeseries.domain import linear_interpolation

    series = Series(np.array([[0.0, np.nan, 4.0, 6.0], [np.nan, 1.0, np.nan, np.nan]]), ["x", "y"],
                    pd.Index([0.0, 1.0, 4.0, 5.0]), step=1.0)
    cond = np.array([[True, False, True, False], [False, False, False, False]])
    out = linear_interpolation(series, cond, fallback=np.array([0.0, 7.0]))
    np.testing.assert_allclose(out[0], [0.0, 1.0, 4.0, 4.0])  # t = 1 between (0, 0) and (4, 4); constant after
    np.testing.assert_allclose(out[1], [7.0] * 4)  # nothing to interpolate from: the fallback
