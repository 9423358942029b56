"""Scoring against a truth file (`evaluate --input --truth`), the `holdout` command that writes such files,
and the metric values on hand-made cases."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _series_data import write_series_csv  # noqa: E402
from test_timeseries_e2e import trained  # noqa: E402,F401  (the module's trained run)

from sciffusion.cli import main  # noqa: E402
from sciffusion.domains.timeseries import metrics as M  # noqa: E402
from sciffusion.domains.timeseries.domain import SeriesMeta, truth_report  # noqa: E402
from sciffusion.domains.timeseries.series import FeatureNormalizer  # noqa: E402


def test_truth_report_on_a_hand_made_case() -> None:
    meta = SeriesMeta(["a", "b"], "time", 1.0, FeatureNormalizer(np.array([0.0, 10.0]), np.array([1.0, 2.0])), 4)
    samples = np.ones((4, 2, 3))  # every sample says 1
    truth = np.array([[3.0, 1.0, np.nan], [1.0, 5.0, 1.0]])
    mask = np.array([[True, False, False], [False, True, True]])
    report = truth_report(samples, truth, mask, meta)
    a = report["per_feature"]["a"]["original"]
    assert a["mae"] == pytest.approx(2.0) and a["rmse"] == pytest.approx(2.0) and a["num_targets"] == 1
    # CSDI's CRPS of a point mass at 1 for y = 3: mean over q of 2 |1 - 3| q = 2, over |y| = 3
    assert a["crps"] == pytest.approx(2.0 / 3.0) and a["crps_energy"] == pytest.approx(2.0 / 3.0)
    assert a["coverage90"] == 0.0
    overall = report["overall"]["original"]
    assert overall["mae"] == pytest.approx((2 + 4 + 0) / 3) and overall["num_targets"] == 3
    b = report["per_feature"]["b"]["normalised"]  # (x - 10) / 2: samples -4.5, targets -2.5 and -4.5
    assert b["mae"] == pytest.approx(1.0)


def test_holdout_then_evaluate_against_the_truth(trained: Path, capsys) -> None:  # noqa: F811
    source = write_series_csv(trained / "user.csv", n=48, seed=5)
    masked, truth = trained / "masked.csv", trained / "truth.csv"
    assert main(["holdout", str(trained / "config.yaml"), f"data.path={trained / 'user.csv'}", "--ratio", "0.25",
                 "--seed", "1", "--masked", str(masked), "--truth", str(truth)]) == 0
    observed = int(source[["temp", "dew", "wind"]].notna().sum().sum())
    assert f"hid {int(observed * 0.25)} of {observed} observed entries" in capsys.readouterr().out
    full = pd.read_csv(truth)
    np.testing.assert_allclose(full[["temp", "dew", "wind"]], source[["temp", "dew", "wind"]])
    hidden = pd.read_csv(masked)[["temp", "dew", "wind"]].isna() & source[["temp", "dew", "wind"]].notna()
    assert int(hidden.sum().sum()) == int(observed * 0.25)

    assert main(["evaluate", str(trained / "run"), "--input", str(masked), "--truth", str(truth), "--n", "8",
                 "--steps", "3", "--seed", "2"]) == 0
    report = json.loads((trained / "run" / "metrics_truth.json").read_text())
    assert report["targets"] == int(observed * 0.25)
    assert set(report["uncalibrated"]["per_feature"]) == {"temp", "dew", "wind"}
    assert report["uncalibrated"]["overall"]["original"]["num_targets"] == report["targets"]
    assert "calibrated" in report and len(report["reliability"]["calibrated"]) == 9
    assert (trained / "run" / "reliability_truth.png").stat().st_size > 1000
    # the uncalibrated scores are those of `impute --no-calibrate` with the same seed, scored by hand
    out = trained / "masked_out.csv"
    assert main(["impute", str(trained / "run"), "--input", str(masked), "--output", str(out), "--samples", "8",
                 "--steps", "3", "--seed", "2", "--no-calibrate"]) == 0
    median = pd.read_csv(out)[["temp", "dew", "wind"]].to_numpy()
    errors = np.abs(median - source[["temp", "dew", "wind"]].to_numpy())[hidden.to_numpy()]
    assert report["uncalibrated"]["overall"]["original"]["mae"] == pytest.approx(errors.mean(), rel=1e-6)
    assert M.mae is not None


@pytest.mark.parametrize("edit,message", [
    (lambda f: f.assign(temp=f["temp"] + 1.0), "the truth must agree with the input"),
    (lambda f: f.iloc[5:], "no time 2024-03-01 00:00:00"),
])
def test_a_truth_that_does_not_fit_the_input_is_one_line_exit_2(trained: Path, capsys, edit, message) -> None:  # noqa: F811
    source = write_series_csv(trained / "t_user.csv", n=36, seed=6)
    masked = source.copy()
    masked.loc[3:6, "wind"] = np.nan
    masked.to_csv(trained / "t_masked.csv", index=False)
    edit(source).to_csv(trained / "t_truth.csv", index=False)
    code = main(["evaluate", str(trained / "run"), "--input", str(trained / "t_masked.csv"), "--truth",
                 str(trained / "t_truth.csv"), "--n", "4", "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (trained / "run" / "metrics_t_truth.json").exists()
    assert main(["evaluate", str(trained / "run"), "--input", str(trained / "t_masked.csv")]) == 2
    assert "--input and --truth go together" in capsys.readouterr().err
