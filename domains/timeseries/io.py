"""Wide-format time-series files (CSV / Parquet / DataFrame) <-> :class:`~sciffusion.domains.timeseries.series.Series`.

Wide format: one time column (default: the first column) and one numeric column per feature;
an empty cell / NaN is a missing value. Files are written atomically (temp file, then rename).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sciffusion.extras import require
from sciffusion.domains.timeseries.series import TIME_LIKE, Series, SeriesError
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


TIME_FORMATS = ("auto", "timestamp", "duration", "number")
_CLOCK_LIKE = r"^\s*\d+:\d{2}(:\d{2}(\.\d*)?)?\s*$"  # "hh:mm[:ss]": a duration or a clock time; never guessed


def _parse_durations(column: pd.Series, where: str) -> pd.TimedeltaIndex:
    """``hh:mm[:ss]`` (hours may exceed 24, as PhysioNet's ``47:59``) or any ``pd.to_timedelta`` text (``2 days``)."""
    text = column.astype(str).str.strip()
    clock = text.str.fullmatch(r"(\d+):(\d{2})(?::(\d{2}(?:\.\d*)?))?")
    out = pd.Series(pd.NaT, index=column.index, dtype="timedelta64[ns]")
    if clock.any():
        parts = text[clock].str.extract(r"(\d+):(\d{2})(?::(\d{2}(?:\.\d*)?))?").astype(float).fillna(0.0)
        out[clock] = pd.to_timedelta(parts[0] * 3600 + parts[1] * 60 + parts[2], unit="s")
    rest = ~clock & column.notna()
    if rest.any():
        out[rest] = pd.to_timedelta(text[rest], errors="coerce")
    bad = column.isna() | out.isna()
    if bad.any():
        example = column[bad].iloc[0]
        raise SeriesFileError(f"{where}: time column {column.name!r} holds {example!r}, not a duration "
                              f"(data.time_format: duration takes hh:mm[:ss] or '2 days 03:00:00')")
    return pd.TimedeltaIndex(out)


def _parse_time(column: pd.Series, where: str, time_format: str = "auto") -> pd.Index:
    """The time column as dates (``timestamp``), durations (``duration``) or numbers (``number``).

    ``auto`` reads a numeric column as numbers and a date column or text as dates, except text that reads as
    ``hh:mm[:ss]``: that is a duration (PhysioNet's time since admission) as often as a clock time, so it is an
    error asking for ``time_format`` rather than a silent guess."""
    if time_format not in TIME_FORMATS:
        raise SeriesFileError(f"{where}: time_format must be one of {', '.join(TIME_FORMATS)}, got {time_format!r}")
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if time_format == "duration":
        if pd.api.types.is_timedelta64_dtype(column):
            return pd.TimedeltaIndex(column)
        if numeric:
            raise SeriesFileError(f"{where}: time column {column.name!r} holds plain numbers; durations need a unit "
                                  f"(hh:mm or '3 days'), or set data.time_format: number")
        return _parse_durations(column, where)
    if time_format == "number" or (time_format == "auto" and numeric):
        values = pd.to_numeric(column, errors="coerce")
        if values.isna().any():
            example = column[values.isna()].iloc[0]
            raise SeriesFileError(f"{where}: time column {column.name!r} holds {example!r}, not a number")
        return pd.Index(values.to_numpy(dtype=np.float64))
    if pd.api.types.is_datetime64_any_dtype(column):
        stamps = pd.DatetimeIndex(column)
        return stamps.tz_convert(None) if stamps.tz is not None else stamps
    if time_format == "auto" and column.astype(str).str.match(_CLOCK_LIKE).any():
        example = column[column.astype(str).str.match(_CLOCK_LIKE)].iloc[0]
        raise SeriesFileError(f"{where}: time column {column.name!r} holds {example!r}, which reads as a duration "
                              f"or as a clock time; set data.time_format: duration (time since a start) or timestamp")
    try:
        stamps = pd.to_datetime(column, format="mixed", utc=True)
    except (ValueError, TypeError):
        raise SeriesFileError(f"{where}: time column {column.name!r} is neither numbers nor dates") from None
    if stamps.isna().any():
        raise SeriesFileError(f"{where}: time column {column.name!r} has empty cells")
    return pd.DatetimeIndex(stamps).tz_convert(None)


def format_time(index: pd.Index) -> np.ndarray:
    """Time stamps as written to files: dates as ISO text, durations as ``hh:mm:ss`` (hours past 24 allowed),
    numbers as numbers; :func:`_parse_time` reads each back with its ``time_format``."""
    if isinstance(index, pd.TimedeltaIndex):
        seconds = index.total_seconds().to_numpy()
        hours, rest = np.divmod(seconds, 3600)
        minutes, secs = np.divmod(rest, 60)
        return np.array([f"{int(h):02d}:{int(m):02d}:{s:02g}" if s % 1 else f"{int(h):02d}:{int(m):02d}:{int(s):02d}"
                         for h, m, s in zip(hours, minutes, secs)], dtype=object)
    if isinstance(index, pd.DatetimeIndex):
        return np.asarray(index.strftime("%Y-%m-%d %H:%M:%S"), dtype=object)
    return np.asarray(index)


def frame_to_series(frame: pd.DataFrame, time_column: str | None = None, source: str = "table",
                    time_format: str = "auto", allow_empty: bool = False) -> Series:
    """Validate a wide DataFrame and turn it into a :class:`Series`.

    Raises :class:`SeriesFileError` for: no feature column, a missing time column, unparseable (under
    ``time_format``, see :func:`_parse_time`), duplicated or unsorted time stamps, a non-numeric feature column,
    and, unless ``allow_empty`` (one series of a panel, or a file to impute), an all-NaN feature column.
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
    index = _parse_time(frame[time_column], source, time_format)
    position = index.duplicated()
    if position.any():
        raise SeriesFileError(f"{source}: duplicated time stamp {index[int(np.argmax(position))]} in column {time_column!r}")
    if not index.is_monotonic_increasing:
        bad = int(np.argmax(np.diff(np.asarray(index.as_unit("ns").asi8 if isinstance(index, TIME_LIKE) else index)) < 0))
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
        if np.isnan(array).all() and not allow_empty:
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


# ------------------------------------------------------------------------------ panels and long format


@dataclass(frozen=True)
class TableLayout:
    """How a file holds its series (the ``data:`` keys of the same names).

    Attributes:
        layout: ``wide`` (a time column, one column per feature) or ``long`` (one row per measurement:
            time, variable, value).
        time_column: the time column (wide: default the first column; long: default ``time``).
        id_column: the series id column of a panel (many series in one file); None: one series per file.
        variable_column, value_column: long layout's columns.
        time_format: ``auto``, ``timestamp``, ``duration`` or ``number`` (:func:`_parse_time`).
        resample: a regular grid: a pandas offset (``1h``) for dates and durations (durations binned from 0,
            dates from midnight of the first day, as pandas' ``origin="start_day"``) or a bin width for numbers
            (bins from 0); each bin is labelled by its left edge. None: the stamps as given.
        aggregate: ``last`` or ``mean`` (pandas' rules: the last non-missing value, the mean of the non-missing
            ones) for several values of a variable in one bin or at one time; None: that is an error.
    """

    layout: str = "wide"
    time_column: str | None = None
    id_column: str | None = None
    variable_column: str = "variable"
    value_column: str = "value"
    time_format: str = "auto"
    resample: str | float | None = None
    aggregate: str | None = None


@dataclass
class PanelSeries:
    """One series of a file: its id (``""`` for a single series), the series, and for a wide file read without
    resampling the file rows of its time points (None otherwise)."""

    id: str
    series: Series
    rows: np.ndarray | None = None


def _aggregate(frame: pd.DataFrame, keys: list[str], layout: TableLayout, where: str,
               describe: Callable[[Any, str], str]) -> pd.DataFrame:
    """Rows of ``frame`` grouped by ``keys`` with one value per column, by ``layout.aggregate``; without a rule,
    several values in one group are an error (``describe(group key, column)`` names them)."""
    grouped = frame.groupby(keys, sort=True, dropna=False)
    counts = grouped.count()
    if layout.aggregate is None and (counts > 1).any(axis=None):
        row, column = np.argwhere((counts > 1).to_numpy())[0]
        raise SeriesFileError(f"{where}: {describe(counts.index[row], str(counts.columns[column]))} has "
                              f"{int(counts.iloc[row, column])} values; set data.aggregate: last or mean")
    if layout.aggregate in (None, "last"):
        return grouped.last()
    if layout.aggregate == "mean":
        return grouped.mean()
    raise SeriesFileError(f"{where}: aggregate must be last or mean, got {layout.aggregate!r}")


def _resample(frame: pd.DataFrame, layout: TableLayout, where: str) -> pd.DataFrame:
    """``frame`` (time index, one column per feature) on the regular grid of ``layout.resample``."""
    index = frame.index
    if isinstance(index, TIME_LIKE):
        try:
            width = pd.Timedelta(pd.tseries.frequencies.to_offset(str(layout.resample)))
        except (ValueError, TypeError):
            raise SeriesFileError(f"{where}: resample {layout.resample!r} is not a pandas frequency (e.g. 1h, 30min)") from None
        if isinstance(index, pd.TimedeltaIndex):  # bins from duration 0
            bins = index.floor(width)
        else:
            start = index[0].normalize()
            bins = start + ((index - start) // width) * width
    else:
        try:
            width = float(layout.resample)
        except (TypeError, ValueError):
            raise SeriesFileError(f"{where}: numeric time needs a numeric resample width, got {layout.resample!r}") from None
        if not width > 0:
            raise SeriesFileError(f"{where}: resample width must be > 0, got {layout.resample!r}")
        bins = pd.Index(np.floor(np.asarray(index, dtype=np.float64) / width) * width)
    binned = _aggregate(frame.set_axis(pd.Index(bins, name="__bin__")).reset_index(), ["__bin__"], layout, where,
                        lambda key, column: f"{column!r} in the grid bin at {format_time(pd.Index([key]))[0]}")
    grid = (pd.timedelta_range(binned.index[0], binned.index[-1], freq=width) if isinstance(index, pd.TimedeltaIndex)
            else pd.date_range(binned.index[0], binned.index[-1], freq=width) if isinstance(index, pd.DatetimeIndex)
            else pd.Index(binned.index[0] + width * np.arange(int(round((binned.index[-1] - binned.index[0]) / width)) + 1)))
    return binned.reindex(grid)


def _numeric_values(column: pd.Series, where: str) -> np.ndarray:
    if pd.api.types.is_bool_dtype(column):
        raise SeriesFileError(f"{where}: column {column.name!r} is not numeric (e.g. {column.iloc[0]!r})")
    converted = pd.to_numeric(column, errors="coerce")
    bad = column.notna() & converted.isna()
    if bad.any():
        raise SeriesFileError(f"{where}: column {column.name!r} is not numeric (e.g. {column[bad].iloc[0]!r})")
    return converted.to_numpy(dtype=np.float64)


def _long_to_wide(frame: pd.DataFrame, layout: TableLayout, where: str) -> pd.DataFrame:
    """One series' long rows -> a wide frame (time index, one column per variable, sorted by name)."""
    time_column = layout.time_column or "time"
    for column in (time_column, layout.variable_column, layout.value_column):
        if column not in frame.columns:
            raise SeriesFileError(f"{where}: no {column!r} column for the long layout "
                                  f"(columns: {', '.join(map(str, frame.columns))})")
    table = pd.DataFrame({"__time__": _parse_time(frame[time_column], where, layout.time_format),
                          "__var__": frame[layout.variable_column].astype(str).to_numpy(),
                          "__value__": _numeric_values(frame[layout.value_column], where)})
    if np.isinf(table["__value__"]).any():
        raise SeriesFileError(f"{where}: column {layout.value_column!r} holds an infinite value")
    table = table[table["__value__"].notna()]
    if table.empty:
        raise SeriesFileError(f"{where}: no values")
    one = _aggregate(table, ["__time__", "__var__"], layout, where,
                     lambda key, _: f"variable {key[1]!r} at {time_column} {format_time(pd.Index([key[0]]))[0]}")
    return one["__value__"].unstack("__var__").sort_index(axis=1).rename_axis(index=time_column, columns=None)


def _one_series(frame: pd.DataFrame, layout: TableLayout, where: str, features: list[str] | None) -> PanelSeries:
    """One series (no id column left) of a wide or long frame, resampled if asked."""
    if layout.layout == "long":
        wide = _long_to_wide(frame, layout, where)
        time_name = layout.time_column or "time"
        rows = None
    elif layout.layout == "wide":
        series = frame_to_series(frame, layout.time_column, where, layout.time_format, allow_empty=True)
        wide = pd.DataFrame(series.values.T, index=series.index, columns=series.features)
        time_name, rows = series.time_name, np.asarray(frame.index)
    else:
        raise SeriesFileError(f"{where}: layout must be wide or long, got {layout.layout!r}")
    if layout.resample is not None:
        wide, rows = _resample(wide, layout, where), None
    if features is not None:
        extra = [str(c) for c in wide.columns if c not in features]
        missing = [f for f in features if f not in wide.columns] if layout.layout == "wide" else []
        if missing or extra:  # a long file simply has no rows for a variable never measured
            found = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
            raise SeriesFileError(f"{where}: columns do not match the trained model ({'; '.join(found)})")
        wide = wide.reindex(columns=features)
    return PanelSeries("", Series(wide.to_numpy(dtype=np.float64).T, [str(c) for c in wide.columns], wide.index,
                                  time_name=time_name), rows)


def read_panel(path: str | os.PathLike, layout: TableLayout = TableLayout(),
               features: list[str] | None = None) -> list[PanelSeries]:
    """The series of a file (one, or one per ``layout.id_column`` value in order of first appearance) or of a
    folder of such files (each file one series, its id the file name without suffix; sorted by name).

    ``features`` (a trained model's) fixes the columns: a variable the file lacks is entirely missing, one the
    model does not know is an error. Without ``features``, the features are the union over the series (a long
    file's variables sorted by name), and a feature with no value in any series is an error; a feature empty in
    some series is simply missing there."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise SeriesFileError(f"{path}: no {', '.join(SUFFIXES)} files in the folder")
        if layout.id_column is not None:
            raise SeriesFileError(f"{path}: a folder holds one series per file; drop data.id_column")
        parts = [(f.stem, read_table(f), str(f)) for f in files]
    else:
        frame = read_table(path)
        if layout.id_column is None:
            parts = [("", frame, str(path))]
        else:
            if layout.id_column not in frame.columns:
                raise SeriesFileError(f"{path}: no id column {layout.id_column!r} "
                                      f"(columns: {', '.join(map(str, frame.columns))})")
            if frame[layout.id_column].isna().any():
                raise SeriesFileError(f"{path}: id column {layout.id_column!r} has empty cells")
            ids = frame[layout.id_column].astype(str)
            parts = [(key, frame[ids == key].drop(columns=[layout.id_column]), f"{path} ({layout.id_column}={key})")
                     for key in pd.unique(ids)]
    panel = []
    for key, frame, where in parts:
        one = _one_series(frame, layout, where, features)
        panel.append(PanelSeries(key, one.series, one.rows))
    return _common_features(panel, str(path)) if features is None else panel


def _common_features(panel: list[PanelSeries], where: str) -> list[PanelSeries]:
    """The panel on the union of its series' features (sorted for a long file, in file order for wide ones)."""
    names: list[str] = []
    for part in panel:
        names.extend(f for f in part.series.features if f not in names)
    kinds = {type(p.series.index).__name__ for p in panel}
    if len(kinds) > 1:
        raise SeriesFileError(f"{where}: the series mix time kinds ({', '.join(sorted(kinds))})")
    out = []
    for part in panel:
        s = part.series
        order = [s.features.index(f) if f in s.features else -1 for f in names]
        values = np.stack([s.values[k] if k >= 0 else np.full(s.length, np.nan) for k in order])
        out.append(PanelSeries(part.id, Series(values, list(names), s.index, s.time_name), part.rows))
    observed = np.any([p.series.observed_mask.any(axis=1) for p in out], axis=0)
    if not observed.all():
        raise SeriesFileError(f"{where}: feature {names[int(np.argmin(observed))]!r} has no values in any series")
    return out


def panel_frame(panel: list[PanelSeries], layout: TableLayout, values: list[np.ndarray] | None = None) -> pd.DataFrame:
    """The panel as a table in ``layout`` (its id, time, variable and value columns; the time written by
    :func:`format_time`), on each series' grid; ``values`` ``(K, N_i)`` per series replaces the series' values.
    Long layout: one row per non-missing entry."""
    frames = []
    for i, part in enumerate(panel):
        s = part.series
        table = s.values if values is None else values[i]
        time_name = layout.time_column or s.time_name
        if layout.layout == "long":
            n, k = np.nonzero(~np.isnan(table.T))  # time-major rows
            frame = pd.DataFrame({time_name: format_time(s.index)[n], layout.variable_column: np.asarray(s.features)[k],
                                  layout.value_column: table[k, n]})
        else:
            frame = pd.DataFrame(table.T, columns=s.features)
            frame.insert(0, time_name, format_time(s.index))
        if layout.id_column is not None:
            frame.insert(0, layout.id_column, part.id)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
