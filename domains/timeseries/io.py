"""Wide-format time-series files (CSV / Parquet / DataFrame) <-> :class:`~sciffusion.domains.timeseries.series.Series`.

Wide format: one time column (default: the first column) and one numeric column per feature;
an empty cell / NaN is a missing value. Files are written atomically (temp file, then rename).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from sciffusion.extras import require
from sciffusion.domains.timeseries.series import Series, SeriesError
from sciffusion.train.checkpoint import atomic_path

SUFFIXES = (".csv", ".parquet", ".pq")


class SeriesFileError(SeriesError):
    """A series file or table that cannot be used (message names the file and column)."""


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame (one-line error if it cannot be read)."""
    if not path.is_file():
        raise SeriesFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        require("pyarrow", "timeseries", "reading Parquet files")
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as err:
        raise SeriesFileError(f"{path}: cannot be read as a table ({str(err).splitlines()[0]})") from None
    raise SeriesFileError(f"{path}: unsupported file type {suffix!r} (use {', '.join(SUFFIXES)})")


def _parse_time(column: pd.Series, where: str) -> pd.Index:
    if pd.api.types.is_datetime64_any_dtype(column):
        stamps = pd.DatetimeIndex(column)
        return stamps.tz_convert(None) if stamps.tz is not None else stamps
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        if column.isna().any():
            raise SeriesFileError(f"{where}: time column {column.name!r} has empty cells")
        return pd.Index(column.to_numpy(dtype=np.float64))
    try:
        stamps = pd.to_datetime(column, format="mixed", utc=True)
    except (ValueError, TypeError):
        raise SeriesFileError(f"{where}: time column {column.name!r} is neither numbers nor dates") from None
    if stamps.isna().any():
        raise SeriesFileError(f"{where}: time column {column.name!r} has empty cells")
    return pd.DatetimeIndex(stamps).tz_convert(None)


def frame_to_series(frame: pd.DataFrame, time_column: str | None = None, source: str = "table") -> Series:
    """Validate a wide DataFrame and turn it into a :class:`Series`.

    Raises :class:`SeriesFileError` for: no feature column, a missing time column, unparseable,
    duplicated or unsorted time stamps, a non-numeric feature column, an all-NaN feature column.
    """
    if frame.shape[1] < 2:
        raise SeriesFileError(f"{source}: needs a time column and at least one feature column")
    if frame.shape[0] == 0:
        raise SeriesFileError(f"{source}: has no rows")
    time_column = str(frame.columns[0]) if time_column is None else time_column
    if time_column not in frame.columns:
        raise SeriesFileError(f"{source}: no time column {time_column!r} (columns: {', '.join(map(str, frame.columns))})")
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise SeriesFileError(f"{source}: column {duplicate!r} appears twice")
    index = _parse_time(frame[time_column], source)
    position = index.duplicated()
    if position.any():
        raise SeriesFileError(f"{source}: duplicated time stamp {index[int(np.argmax(position))]} in column {time_column!r}")
    if not index.is_monotonic_increasing:
        bad = int(np.argmax(np.diff(np.asarray(index.as_unit("ns").asi8 if isinstance(index, pd.DatetimeIndex) else index)) < 0))
        raise SeriesFileError(f"{source}: time stamps in column {time_column!r} are not sorted (row {bad + 2} comes before row {bad + 1})")
    features = [c for c in frame.columns if c != time_column]
    values = []
    for name in features:
        column = frame[name]
        if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
            converted = pd.to_numeric(column, errors="coerce")
            bad = column.notna() & converted.isna()
            if bad.any() or pd.api.types.is_bool_dtype(column):
                example = column[bad].iloc[0] if bad.any() else column.iloc[0]
                raise SeriesFileError(f"{source}: feature column {name!r} is not numeric (e.g. {example!r})")
            column = converted
        array = column.to_numpy(dtype=np.float64)
        if np.isnan(array).all():
            raise SeriesFileError(f"{source}: feature column {name!r} has no values (all missing)")
        if np.isinf(array).any():
            raise SeriesFileError(f"{source}: feature column {name!r} holds an infinite value")
        values.append(array)
    return Series(np.stack(values), [str(f) for f in features], index, time_name=str(time_column))


def read_series(path: str | os.PathLike, time_column: str | None = None) -> Series:
    """Read a wide CSV or Parquet file (see :func:`frame_to_series` for the checks)."""
    path = Path(path)
    return frame_to_series(read_table(path), time_column, source=str(path))


def write_frame(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``frame`` to CSV or Parquet (by suffix) atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise SeriesFileError(f"{path}: unsupported output type {suffix!r} (use {', '.join(SUFFIXES)})")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SeriesFileError(f"{path}: folder {folder} does not exist")
    if suffix != ".csv":
        require("pyarrow", "timeseries", "writing Parquet files")
    with atomic_path(path, suffix=".tmp") as temp:
        if suffix == ".csv":
            frame.to_csv(temp, index=False)
        else:
            frame.to_parquet(temp, index=False)


def write_series(series: Series, path: str | os.PathLike) -> None:
    """Write a series in wide format (atomic)."""
    write_frame(series.to_frame(), path)
