"""Conformal calibration: a model whose spread is too narrow by a known factor is widened to nominal coverage,
a calibrated one is left (about) unchanged, and the calibration entries follow the input's own gap pattern."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from sciffusion.domains.timeseries.calibration import (
    CALIBRATION_QUANTILES,
    CENTRAL_LEVELS,
    borrowed_gap_masks,
    conformal_factor,
    fit_calibration,
    reliability,
)
from sciffusion.domains.timeseries.series import Series

K, N = 2, 16000


def gaussian_quantiles(sigma: np.ndarray) -> np.ndarray:
    """``(Q, K, N)`` exact quantiles of N(0, sigma_k^2) at the calibration levels."""
    z = norm.ppf(np.asarray(CALIBRATION_QUANTILES))[:, None, None]
    return np.broadcast_to(z * sigma[None, :, None], (len(CALIBRATION_QUANTILES), K, N)).copy()


@pytest.mark.parametrize("true_sigma,expected", [(np.array([3.0, 0.5]), np.array([3.0, 0.5])),
                                                 (np.array([1.0, 1.0]), np.array([1.0, 1.0]))])
def test_factors_recover_a_known_spread_error(true_sigma: np.ndarray, expected: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(K, N)) * true_sigma[:, None]
    hidden = np.ones((K, N), bool)
    cal = fit_calibration(gaussian_quantiles(np.ones(K)), truth, hidden, scale=np.ones(K))
    np.testing.assert_allclose(cal.factors, np.repeat(expected[:, None], len(CENTRAL_LEVELS), 1), rtol=0.08)
    assert not cal.pooled.any() and list(cal.entries) == [N, N]
    assert np.all(cal.coverage_after >= np.asarray(CENTRAL_LEVELS) - 1e-9)
    # fresh entries from the same truth distribution: calibrated samples cover at the nominal levels
    samples = torch.as_tensor(rng.normal(size=(400, K, 500)))  # the model: N(0, 1)
    fresh = rng.normal(size=(K, 500)) * true_sigma[:, None]
    after = reliability(cal.apply(samples), fresh, np.ones((K, 500), bool))
    np.testing.assert_allclose(after, CENTRAL_LEVELS, atol=0.05)
    if np.all(true_sigma == 1.0):
        before = reliability(samples, fresh, np.ones((K, 500), bool))
        np.testing.assert_allclose(after, before, atol=0.03)  # already calibrated: unchanged


def test_conformal_factor_rank_and_pooling() -> None:
    scores = np.arange(1.0, 11.0)  # n = 10
    assert conformal_factor(scores, 0.5) == 6.0  # ceil(11 * 0.5) = 6th smallest
    assert conformal_factor(scores, 0.9) == 10.0  # ceil(9.9) = 10th
    assert conformal_factor(scores, 0.95) == 10.0  # past n: the largest
    assert conformal_factor(np.array([]), 0.9) == 1.0
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(K, N)) * 2.0
    hidden = np.zeros((K, N), bool)
    hidden[0] = True
    hidden[1, :5] = True  # too few for its own factors
    cal = fit_calibration(gaussian_quantiles(np.ones(K)), truth, hidden, scale=np.ones(K), min_entries=30)
    assert cal.pooled.tolist() == [False, True]
    np.testing.assert_allclose(cal.factors[1], cal.factors[0], rtol=0.02)


def test_shrinkage_weights_own_and_pooled_factors_by_entries() -> None:
    """``w c_k + (1 - w) c_pooled`` with ``w = n_k / (n_k + shrinkage)``: 0 keeps each feature's own factors, a
    prior of n_k entries halves the way to the pooled ones, a huge one gives the pooled factors."""
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(K, N)) * np.array([[3.0], [1.0]])
    hidden = np.ones((K, N), bool)
    hidden[1, 4000:] = False  # feature 1: 4,000 entries
    quantiles = gaussian_quantiles(np.ones(K))
    own = fit_calibration(quantiles, truth, hidden, scale=np.ones(K)).factors
    pooled_only = fit_calibration(quantiles, truth, hidden, scale=np.ones(K), min_entries=10 * N).factors
    half = fit_calibration(quantiles, truth, hidden, scale=np.ones(K), shrinkage=4000.0)
    np.testing.assert_allclose(half.factors[1], 0.5 * own[1] + 0.5 * pooled_only[1], rtol=1e-12)
    np.testing.assert_allclose(half.factors[0], 0.8 * own[0] + 0.2 * pooled_only[0], rtol=1e-12)  # 16,000 entries
    huge = fit_calibration(quantiles, truth, hidden, scale=np.ones(K), shrinkage=1e12).factors
    np.testing.assert_allclose(huge, pooled_only, rtol=1e-6)
    assert half.to_json(["a", "b"])["shrinkage_entries"] == 4000.0
    with pytest.raises(ValueError, match="shrinkage"):
        fit_calibration(quantiles, truth, hidden, scale=np.ones(K), shrinkage=-1.0)


def test_spread_bins_widen_only_the_intervals_that_are_too_narrow() -> None:
    """One feature, two kinds of entries: the model says sigma 1 where the truth has 2, and sigma 5 where it has 5.
    Per-feature factors widen both (to about 1.6 at 90 %); two spread bins give 2 and 1, and the rescaled samples
    cover at the nominal level in each bin."""
    rng = np.random.default_rng(4)
    model_sigma = np.where(np.arange(N) % 2 == 0, 1.0, 5.0)[None, :].repeat(K, 0)
    truth = rng.normal(size=(K, N)) * np.where(model_sigma == 1.0, 2.0, 5.0)
    z = norm.ppf(np.asarray(CALIBRATION_QUANTILES))[:, None, None]
    quantiles = z * model_sigma[None]
    hidden = np.ones((K, N), bool)
    per_feature = fit_calibration(quantiles, truth, hidden, scale=np.ones(K))
    assert per_feature.factors[:, -1].min() > 1.3  # the wide, right intervals are widened too
    binned = fit_calibration(quantiles, truth, hidden, scale=np.ones(K), spread_bins=2)
    np.testing.assert_allclose(binned.factors[0], 2.0, rtol=0.1)
    np.testing.assert_allclose(binned.factors[1], 1.0, rtol=0.1)
    assert binned.edges.shape == (1,) and 2 * 1.645 < binned.edges[0] < 10 * 1.645
    samples = torch.as_tensor(rng.normal(size=(400, K, 1000))) * torch.as_tensor(model_sigma[:, :1000])
    fresh = rng.normal(size=(K, 1000)) * np.where(model_sigma[:, :1000] == 1.0, 2.0, 5.0)
    groups = binned.groups_of(samples)
    assert torch.equal(groups, torch.as_tensor(model_sigma[:, :1000] == 5.0).long())
    calibrated = binned.apply(samples)
    for narrow in (True, False):
        chosen = (model_sigma[:, :1000] == 1.0) == narrow
        np.testing.assert_allclose(reliability(calibrated, fresh, chosen), CENTRAL_LEVELS, atol=0.06)
    assert list(binned.to_json(["a", "b"])["factors"])[0].startswith("relative 90% width 0-")


def test_calibration_entries_follow_the_inputs_own_gaps() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=(3, 60))
    values[0, 10:16] = np.nan  # a gap in the first window
    values[2, 40:44] = np.nan  # one in the fourth
    series = Series(values, ["a", "b", "c"], pd.Index(np.arange(60.0)))
    masks = borrowed_gap_masks([series], window=12, seed=0)
    cond = masks[0]
    observed = series.observed_mask
    assert not (cond & ~observed).any(), "only observed entries are seen"
    hidden = observed & ~cond
    assert hidden.any() and not hidden[1].any(), "feature b never has a gap to lend"
    for start in range(0, 60, 12):  # each window hides one of the two gap shapes
        block = hidden[:, start:start + 12]
        rows = sorted(set(np.nonzero(block)[0]))
        assert rows in ([], [0], [2])
    full = Series(rng.normal(size=(2, 30)), ["a", "b"], pd.Index(np.arange(30.0)))
    assert borrowed_gap_masks([full], window=12, seed=0) is None
