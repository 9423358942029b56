"""Panels (many series in one file or folder), long format with resampling, explicit time formats, splits by
series, the exact-fraction holdout, and a panel trained and imputed end to end."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_timeseries_e2e import TINY_NET  # noqa: E402

from sciffusion.cli import main  # noqa: E402
from sciffusion.domains.timeseries.datasets import holdout_mask, split_panel  # noqa: E402
from sciffusion.domains.timeseries.io import (  # noqa: E402
    SeriesFileError,
    TableLayout,
    _parse_time,
    panel_frame,
    read_panel,
)
from sciffusion.domains.timeseries.series import FeatureNormalizer, Series, SeriesWindows  # noqa: E402

LONG = TableLayout(layout="long", time_column="Time", id_column="id", variable_column="Parameter",
                   value_column="Value", time_format="duration", resample="1h", aggregate="mean")


def icu_like(n_stays: int = 6, hours: int = 12, seed: int = 0) -> pd.DataFrame:
    """PhysioNet-2012-like long rows: ``id, Time (hh:mm since admission), Parameter, Value``; HR every
    ~20 min, Temp every ~3 h, Lactate only in even stays."""
    rng = np.random.default_rng(seed)
    rows = []
    for stay in range(n_stays):
        for minute in range(0, hours * 60, 20):
            rows.append((f"s{stay}", f"{minute // 60:02d}:{minute % 60:02d}", "HR", 80 + 10 * np.sin(minute / 90) + stay))
            if minute % 180 == 0:
                rows.append((f"s{stay}", f"{minute // 60:02d}:{minute % 60:02d}", "Temp", 37 + rng.normal(0, 0.3)))
            if stay % 2 == 0 and minute % 240 == 60:
                rows.append((f"s{stay}", f"{minute // 60:02d}:{minute % 60:02d}", "Lactate", 1 + rng.random()))
    return pd.DataFrame(rows, columns=["id", "Time", "Parameter", "Value"])


def test_durations_clock_times_and_numbers_are_read_by_the_stated_rule() -> None:
    column = pd.Series(["00:00", "23:30", "47:59"], name="Time")
    durations = _parse_time(column, "f", "duration")
    assert isinstance(durations, pd.TimedeltaIndex)
    assert list(durations.total_seconds()) == [0.0, 23.5 * 3600, 47 * 3600 + 59 * 60]
    with pytest.raises(SeriesFileError, match="reads as a duration or as a clock time; set data.time_format"):
        _parse_time(column, "f", "auto")  # never guessed
    clock = _parse_time(pd.Series(["2024-03-01 00:00", "2024-03-01 23:30"], name="t"), "f", "timestamp")
    assert isinstance(clock, pd.DatetimeIndex) and clock[1] == pd.Timestamp("2024-03-01 23:30")
    assert list(_parse_time(pd.Series([0, 1.5], name="t"), "f", "auto")) == [0.0, 1.5]
    assert list(_parse_time(pd.Series(["2 days", "36:00"], name="t"), "f", "duration").total_seconds()) == [172800.0, 129600.0]
    for text, fmt, message in [(["00:00", "soon"], "duration", "not a duration"), (["1", "x"], "number", "not a number"),
                               ([1, 2], "duration", "durations need a unit")]:
        with pytest.raises(SeriesFileError, match=message):
            _parse_time(pd.Series(text, name="t"), "f", fmt)


def test_long_to_wide_with_resampling_equals_pandas(tmp_path: Path) -> None:
    frame = icu_like()
    frame.to_csv(tmp_path / "long.csv", index=False)
    panel = read_panel(tmp_path / "long.csv", LONG)
    assert [p.id for p in panel] == [f"s{i}" for i in range(6)]
    assert panel[0].series.features == ["HR", "Lactate", "Temp"]  # sorted by name
    for part in panel:
        rows = frame[frame["id"] == part.id]
        expected = (rows.assign(Time=pd.to_timedelta(rows["Time"] + ":00"))
                    .pivot_table(index="Time", columns="Parameter", values="Value", aggfunc="mean")
                    .resample("1h").mean().reindex(columns=["HR", "Lactate", "Temp"]))
        assert part.series.index.equals(pd.TimedeltaIndex(expected.index))
        np.testing.assert_allclose(part.series.values, expected.to_numpy().T, equal_nan=True)
    # odd stays never measured lactate: simply missing there, not an error
    assert np.isnan(panel[1].series.values[1]).all() and not np.isnan(panel[0].series.values[1]).all()
    last = read_panel(tmp_path / "long.csv", TableLayout(**{**LONG.__dict__, "aggregate": "last"}))
    assert last[0].series.values[0, 0] == frame[(frame.id == "s0") & (frame.Parameter == "HR")]["Value"].iloc[2]


def test_conflicting_values_need_an_aggregation_rule_and_bad_panels_are_one_line(tmp_path: Path) -> None:
    frame = icu_like(n_stays=2)
    frame.to_csv(tmp_path / "long.csv", index=False)
    layout = TableLayout(**{**LONG.__dict__, "resample": None, "aggregate": None})
    read_panel(tmp_path / "long.csv", layout)  # one value per (time, variable): fine
    pd.concat([frame, frame.iloc[[0]].assign(Value=99.0)]).to_csv(tmp_path / "twice.csv", index=False)
    cases = [(tmp_path / "twice.csv", layout, "variable 'HR' at Time 00:00:00 has 2 values"),
             (tmp_path / "long.csv", TableLayout(**{**LONG.__dict__, "aggregate": None}), "in the grid bin at 00:00:00 has 3 values; set data.aggregate"),
             (tmp_path / "long.csv", TableLayout(**{**LONG.__dict__, "id_column": "stay"}), "no id column 'stay'"),
             (tmp_path / "long.csv", TableLayout(**{**LONG.__dict__, "time_format": "auto"}), "set data.time_format")]
    for path, bad, message in cases:
        with pytest.raises(SeriesFileError, match=message) as info:
            read_panel(path, bad)
        assert "\n" not in str(info.value)
    pd.DataFrame({"id": ["a", "a", "b"], "t": [0, 1, 0], "x": [1.0, 2.0, np.nan], "y": [np.nan] * 3}).to_csv(
        tmp_path / "empty.csv", index=False)
    with pytest.raises(SeriesFileError, match="feature 'y' has no values in any series"):
        read_panel(tmp_path / "empty.csv", TableLayout(id_column="id"))


def test_a_folder_is_a_panel_and_round_trips_through_panel_frame(tmp_path: Path) -> None:
    panel = read_panel(_write(icu_like(n_stays=3), tmp_path / "long.csv"), LONG)
    folder = tmp_path / "stays"
    folder.mkdir()
    for part in panel:
        panel_frame([part], TableLayout("long", "Time", None, "Parameter", "Value")).to_csv(folder / f"{part.id}.csv", index=False)
    again = read_panel(folder, TableLayout(**{**LONG.__dict__, "id_column": None}))
    assert [p.id for p in again] == [p.id for p in panel]
    for a, b in zip(panel, again):
        assert a.series.index.equals(b.series.index)
        np.testing.assert_allclose(a.series.values, b.series.values, equal_nan=True)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def test_windows_never_cross_series_and_splits_are_by_series() -> None:
    series = [Series(np.full((2, n), float(i)), ["a", "b"], pd.Index(np.arange(n, dtype=float)))
              for i, n in enumerate([7, 12, 30, 5])]
    windows = SeriesWindows(series, FeatureNormalizer(np.zeros(2), np.ones(2)), window=6, stride=1)
    for i in range(len(windows)):
        item = windows[i]
        seen = item["values"][item["observed_mask"] > 0]
        assert seen.unique().numel() == 1, "a window holds one series"
    from sciffusion.domains.timeseries.io import PanelSeries

    panel = [PanelSeries(f"p{i}", Series(np.random.default_rng(i).normal(size=(2, 20)), ["a", "b"],
                                         pd.Index(np.arange(20.0)))) for i in range(20)]
    one = split_panel(panel, 0.2, 0.1, 0.25, seed=3)
    again = split_panel(panel, 0.2, 0.1, 0.25, seed=3)
    other = split_panel(panel, 0.2, 0.1, 0.25, seed=4)
    assert one.split == again.split and one.split != other.split
    parts = [set(one.split[k]) for k in ("train", "validation", "test")]
    assert [len(p) for p in parts] == [14, 2, 4] and set.union(*parts) == {p.id for p in panel}
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    mine = split_panel(panel, 0.2, 0.0, 0.25, seed=3, test_ids=["p1", "p7"], validation_ids=[])
    assert mine.split["test"] == ["p1", "p7"] and mine.split["validation"] == [] and len(mine.train) == 18
    assert split_panel(panel, 0.2, 0.0, 0.25, seed=3, test_ids=[]).test == []  # no silent test part
    for cond, s in zip(one.test_cond, one.test):
        assert (s.observed_mask & ~cond).sum() == int(s.observed_mask.sum() * 0.25)  # exactly the fraction
    with pytest.raises(ValueError, match="test_ids not in the data"):
        split_panel(panel, 0.2, 0.0, 0.25, seed=3, test_ids=["nope"])


def test_holdout_hides_exactly_the_fraction_of_observed_entries() -> None:
    values = np.random.default_rng(0).normal(size=(3, 50))
    values[values > 1.0] = np.nan
    s = Series(values, ["a", "b", "c"], pd.Index(np.arange(50.0)))
    for ratio in (0.1, 0.37, 0.5):
        cond = holdout_mask(s, ratio, seed=1)
        assert (s.observed_mask & ~cond).sum() == int(s.observed_mask.sum() * ratio)
        assert not (cond & ~s.observed_mask).any()
    assert np.array_equal(holdout_mask(s, 0.3, 2), holdout_mask(s, 0.3, 2))


def test_a_long_panel_trains_and_imputes_one_stay_with_never_measured_variables(tmp_path: Path, capsys) -> None:
    path = _write(icu_like(n_stays=8, hours=24), tmp_path / "stays.csv")
    config = {"domain": "timeseries", "seed": 0, "run_dir": str(tmp_path / "run"),
              "data": {"source": "csv", "path": str(path), "layout": "long", "time_column": "Time", "id_column": "id",
                       "variable_column": "Parameter", "value_column": "Value", "time_format": "duration",
                       "resample": "1h", "aggregate": "mean", "window": 12, "stride": 12, "test_fraction": 0.25},
              "net": TINY_NET, "process": {"name": "vp", "schedule": "quad", "num_train_steps": 50, "beta_end": 0.5},
              "trainer": {"max_steps": 6, "batch_size": 4, "log_every": 2, "checkpoint_every": 6, "progress": False},
              "sample": {"solver": "dpmpp_2m", "steps": 3, "n": 6}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "c.yaml")]) == 0
    import json

    split = json.loads((tmp_path / "run" / "series.json").read_text())["split"]
    assert len(split["test"]) == 2 and len(split["train"]) == 6
    masked, truth = tmp_path / "m.csv", tmp_path / "t.csv"
    assert main(["holdout", str(tmp_path / "c.yaml"), "--part", "test", "--ratio", "0.2", "--masked", str(masked),
                 "--truth", str(truth)]) == 0
    assert sorted(pd.read_csv(truth)["id"].unique()) == sorted(split["test"])  # only series training never saw
    assert main(["evaluate", str(tmp_path / "run"), "--input", str(masked), "--truth", str(truth)]) == 0
    stay = icu_like(n_stays=8, hours=24)
    stay = stay[(stay["id"] == "s1") & (stay["Parameter"] != "Temp")]  # s1: no lactate, no temperature either
    _write(stay, tmp_path / "one.csv")
    out = tmp_path / "one_out.csv"
    assert main(["impute", str(tmp_path / "run"), "--input", str(tmp_path / "one.csv"), "--output", str(out)]) == 0, \
        capsys.readouterr().err
    result = pd.read_csv(out)
    assert list(result.columns[:5]) == ["id", "Time", "HR", "Lactate", "Temp"] and len(result) == 24
    assert result[["HR", "Lactate", "Temp"]].notna().all().all() and (result["Temp_q95"] > result["Temp_q05"]).all()
    assert result["Time"].iloc[-1] == "23:00:00"
