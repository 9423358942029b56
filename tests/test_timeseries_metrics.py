"""Imputation metrics: CRPS against closed forms, coverage, MAE / RMSE."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sciffusion.domains.timeseries import metrics as M
from scipy.stats import norm


def gaussian_crps(mu: np.ndarray, sigma: float, y: np.ndarray) -> np.ndarray:
    """Closed-form CRPS of N(mu, sigma^2) at y (Gneiting & Raftery 2007)."""
    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def test_energy_crps_matches_gaussian_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    mu, sigma = np.array([[0.0, 1.0, -2.0, 3.0]]), 1.5
    y = np.array([[0.3, -1.0, -2.0, 6.0]])
    samples = torch.as_tensor(mu) + sigma * torch.randn((20000, 1, 4), generator=gen, dtype=torch.float64)
    per_entry = M.crps_energy_per_entry(samples, torch.as_tensor(y)).numpy()
    np.testing.assert_allclose(per_entry, gaussian_crps(mu, sigma, y), rtol=0.02)
    mask = np.ones_like(y)
    expected = gaussian_crps(mu, sigma, y).sum() / np.abs(y).sum()
    assert M.crps_energy(samples, y, mask) == pytest.approx(expected, rel=0.02)
    assert M.crps_energy(samples, y, mask, normalize=False) == pytest.approx(gaussian_crps(mu, sigma, y).mean(), rel=0.02)


def test_energy_crps_is_exact_for_small_sample_sets() -> None:
    samples = torch.tensor([[[1.0]], [[2.0]], [[4.0]]], dtype=torch.float64)
    y = torch.tensor([[3.0]], dtype=torch.float64)
    # E|X - y| = (2 + 1 + 1) / 3; E|X - X'| over all 9 ordered pairs = (0+1+3+1+0+2+3+2+0) / 9
    expected = 4 / 3 - 0.5 * 12 / 9
    assert float(M.crps_energy_per_entry(samples, y)) == pytest.approx(expected, abs=1e-12)


def test_quantile_crps_equals_csdi_formula_with_exact_quantiles() -> None:
    gen = torch.Generator().manual_seed(1)
    mu, sigma = 2.0, 0.7
    y = np.array([[1.2, 2.5, 4.0]])
    samples = mu + sigma * torch.randn((40000, 1, 3), generator=gen, dtype=torch.float64)
    # CSDI: mean over q of 2 * sum |(F^-1(q) - y) (1{y <= F^-1(q)} - q)| / sum |y|
    expected = 0.0
    for q in np.arange(0.05, 1.0, 0.05):
        pred = norm.ppf(q, mu, sigma)
        expected += 2 * np.abs((pred - y) * ((y <= pred) - q)).sum() / np.abs(y).sum()
    expected /= 19
    assert M.crps_quantile(samples, y, np.ones_like(y)) == pytest.approx(expected, rel=0.01)
    # the 19-quantile CRPS approximates the exact one (it drops the tails)
    exact = gaussian_crps(mu, sigma, y).sum() / np.abs(y).sum()
    assert M.crps_quantile(samples, y, np.ones_like(y)) == pytest.approx(exact, rel=0.1)


def test_coverage_of_calibrated_gaussian_samples() -> None:
    gen = torch.Generator().manual_seed(2)
    targets = torch.randn((2000, 5), generator=gen, dtype=torch.float64)
    samples = torch.randn((400, 2000, 5), generator=gen, dtype=torch.float64)
    mask = torch.ones_like(targets)
    assert M.coverage(samples, targets, mask, 0.9) == pytest.approx(0.9, abs=0.02)
    assert M.coverage(samples, targets, mask, 0.5) == pytest.approx(0.5, abs=0.02)
    # over-confident samples cover less
    assert M.coverage(0.3 * samples, targets, mask, 0.9) < 0.4


def test_mae_rmse_only_count_masked_entries() -> None:
    target = np.array([[1.0, 2.0, 3.0, 100.0]])
    point = np.array([[2.0, 2.0, 0.0, 0.0]])
    mask = np.array([[1.0, 1.0, 1.0, 0.0]])
    assert M.mae(point, target, mask) == pytest.approx(4 / 3)
    assert M.rmse(point, target, mask) == pytest.approx(math.sqrt(10 / 3))


def test_metric_inputs_are_checked() -> None:
    with pytest.raises(M.MetricInputError, match="empty"):
        M.mae(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(M.MetricInputError, match="do not match"):
        M.crps_quantile(np.zeros((5, 1, 3)), np.zeros((1, 2)), np.ones((1, 2)))
