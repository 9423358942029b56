"""AQI-36 (PM2.5) loader reproduces CSDI's split and evaluation targets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_data
from sciffusion.domains.timeseries.datasets import PM25_TEST_MONTHS, load_pm25

from sciffusion.domains.timeseries.series import SeriesWindows


@pytest.fixture(scope="module")
def pm25():
    return load_pm25(shared_data("timeseries/pm25"))


def test_test_months_hold_csdis_20434_targets(pm25) -> None:
    assert pm25.num_targets() == 20434
    assert [int(s.index.month[0]) for s in pm25.test] == list(PM25_TEST_MONTHS)
    assert [s.length for s in pm25.test] == [744, 720, 720, 744]
    # scored the CSDI way: 36-hour windows, the last one aligned to the month's end, skipped points not rescored
    windows = SeriesWindows(pm25.test, pm25.normalizer, 36, stride=36, cond_masks=pm25.test_cond)
    batch = windows.stacked()
    target = batch["observed_mask"] * (1 - batch["cond_mask"])
    target = target * (torch.arange(36)[None, None, :] >= batch["skip"][:, None, None])
    assert len(windows) == 82 and int(target.sum()) == 20434
    assert sorted(batch["skip"][batch["skip"] > 0].tolist()) == [12, 12]  # 744 = 20 * 36 + 24 hours


def test_training_months_and_normaliser_exclude_test_months(pm25) -> None:
    train_months = [int(s.index.month[0]) for s in pm25.train]
    assert train_months == [2, 4, 5, 7, 8, 10, 11]  # month 1 is CSDI's validation month
    ground = pd.read_csv(shared_data("timeseries/pm25") / "pm25_ground.txt", index_col="datetime", parse_dates=True)
    non_test = ground[~ground.index.month.isin(PM25_TEST_MONTHS)]
    np.testing.assert_allclose(pm25.normalizer.mean, non_test.mean().to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(pm25.normalizer.std, non_test.std().to_numpy(), rtol=1e-10)
    assert [train_months[i] for i in pm25.pattern_segments] == [2, 5, 8, 11]
