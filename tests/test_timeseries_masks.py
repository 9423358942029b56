"""Training mask strategies give the promised ratio / pattern and never reveal unobserved entries."""
from __future__ import annotations

import pytest
import torch
from sciffusion.domains.timeseries.masks import (
    MaskConfig,
    block_mask,
    historical_mask,
    make_cond_mask,
    random_mask,
)

from sciffusion.config import ConfigError, from_dict


def observed_mask(seed: int = 0, shape: tuple[int, int, int] = (64, 6, 24), p: float = 0.8) -> torch.Tensor:
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p).float()


def test_random_mask_hides_the_exact_ratio_of_observed_entries() -> None:
    observed = observed_mask()
    cond = random_mask(observed, torch.Generator().manual_seed(1), ratio=0.3)
    assert bool((cond <= observed).all())
    hidden = (observed - cond).sum(dim=(1, 2))
    assert torch.equal(hidden, torch.round(observed.sum(dim=(1, 2)) * 0.3))


def test_random_mask_without_ratio_draws_a_uniform_fraction_per_sample() -> None:
    observed = torch.ones(2000, 4, 10)
    cond = random_mask(observed, torch.Generator().manual_seed(2), ratio=None)
    fraction = 1 - cond.mean(dim=(1, 2))
    assert float(fraction.min()) >= 0.0 and float(fraction.max()) <= 1.0
    assert float(fraction.mean()) == pytest.approx(0.5, abs=0.03)
    assert float(fraction.std()) == pytest.approx((1 / 12) ** 0.5, abs=0.03)


def test_historical_mask_is_the_intersection_with_the_pattern() -> None:
    observed, pattern = observed_mask(3), observed_mask(4, p=0.5)
    assert torch.equal(historical_mask(observed, pattern), observed * pattern)
    config = MaskConfig(strategy="historical")
    # without a pattern, each sample borrows the previous sample's observed mask
    cond = make_cond_mask(config, observed, None, torch.Generator().manual_seed(0))
    assert torch.equal(cond, observed * torch.roll(observed, 1, dims=0))


def test_mix_mask_is_random_or_historical_per_sample_about_half_each() -> None:
    observed, pattern = observed_mask(5, (400, 5, 20)), observed_mask(6, (400, 5, 20), p=0.6)
    cond = make_cond_mask(MaskConfig(strategy="mix", ratio=0.5), observed, pattern, torch.Generator().manual_seed(7))
    hist = observed * pattern
    is_hist = (cond == hist).all(dim=(1, 2))
    is_random = (observed - cond).sum(dim=(1, 2)) == torch.round(observed.sum(dim=(1, 2)) * 0.5)
    assert bool((is_hist | is_random).all())
    assert 0.4 < float(is_hist.float().mean()) < 0.6


def test_blackout_block_hides_one_contiguous_gap_across_all_features() -> None:
    observed = torch.ones(200, 5, 30)
    cond = block_mask(observed, torch.Generator().manual_seed(8), min_length=4, max_length=9, num_blocks=1, feature_prob=1.0)
    hidden = observed - cond
    assert bool((hidden == hidden[:, :1]).all()), "a blackout hides the same time points in every feature"
    per_time = hidden[:, 0]
    lengths = per_time.sum(dim=1)
    assert int(lengths.min()) >= 4 and int(lengths.max()) <= 9
    first = per_time.argmax(dim=1)
    for row, start, length in zip(per_time, first, lengths.long()):
        assert bool((row[start:start + length] == 1).all()), "the hidden points are contiguous"


def test_partial_block_covers_a_subset_of_features_and_respects_observed() -> None:
    observed = observed_mask(9, (300, 8, 30))
    cond = block_mask(observed, torch.Generator().manual_seed(10), min_length=5, max_length=5, feature_prob=0.5)
    assert bool((cond <= observed).all())
    blocked_features = ((torch.ones_like(observed) - block_mask(torch.ones_like(observed), torch.Generator().manual_seed(10),
                                                                 5, 5, feature_prob=0.5)).sum(dim=2) > 0).float()
    assert 0.4 < float(blocked_features.mean()) < 0.65
    assert bool((blocked_features.sum(dim=1) >= 1).all()), "every sample gets a non-empty block"


def test_mask_config_rejects_bad_values_with_the_dotted_key() -> None:
    with pytest.raises(ConfigError, match="'mask.ratio' must be in"):
        from_dict(MaskConfig, {"strategy": "random", "ratio": 1.5}, "mask")
    with pytest.raises(ConfigError, match="mask.strategy"):
        from_dict(MaskConfig, {"strategy": "sometimes"}, "mask")
    with pytest.raises(ConfigError, match="'mask.max_length'"):
        from_dict(MaskConfig, {"strategy": "block", "min_length": 6, "max_length": 3}, "mask")
