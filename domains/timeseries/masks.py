"""Training mask strategies: which observed entries are hidden from the model and become targets.

Every strategy maps the observed mask ``(B, K, L)`` to a conditional mask ``(B, K, L)`` (1 = the
model sees the value) with ``cond_mask <= observed_mask``; the training targets are
``observed_mask - cond_mask``.

* ``random``: hide a fraction of each sample's observed entries, uniformly at random; the fraction
  is ``ratio`` if given, else drawn from U(0, 1) per sample (CSDI).
* ``historical``: keep only the entries that are also observed in another window's pattern
  (``pattern_mask``), i.e. reuse a real missingness pattern (CSDI's "hist").
* ``mix``: per sample, ``random`` or ``historical`` with probability 1/2 each (CSDI's "mix").
* ``block``: hide contiguous time blocks; each block covers a random subset of features (each with
  probability ``feature_prob``; 1.0 = blackout of every feature), with lengths in
  ``[min_length, max_length]``, where interpolation cannot help.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from sciffusion.config import FieldError

STRATEGIES = ("random", "historical", "mix", "block")


@dataclass(frozen=True)
class MaskConfig:
    """Settings of a training mask strategy (``mask:`` section of a timeseries config).

    Attributes:
        strategy: one of ``random``, ``historical``, ``mix``, ``block``.
        ratio: fixed fraction of observed entries hidden by ``random`` (``None`` = U(0, 1) per sample).
        min_length / max_length: block lengths (time points) for ``block``.
        num_blocks: blocks per sample for ``block``.
        feature_prob: probability that a feature is inside a block (1.0 = blackout).
    """

    strategy: Literal["random", "historical", "mix", "block"] = "mix"
    ratio: float | None = None
    min_length: int = 4
    max_length: int = 12
    num_blocks: int = 1
    feature_prob: float = 1.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise FieldError("strategy", f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise FieldError("ratio", f"must be in (0, 1), got {self.ratio}")
        if self.min_length < 1:
            raise FieldError("min_length", f"must be >= 1, got {self.min_length}")
        if self.max_length < self.min_length:
            raise FieldError("max_length", f"must be >= min_length ({self.min_length}), got {self.max_length}")
        if self.num_blocks < 1:
            raise FieldError("num_blocks", f"must be >= 1, got {self.num_blocks}")
        if not 0.0 < self.feature_prob <= 1.0:
            raise FieldError("feature_prob", f"must be in (0, 1], got {self.feature_prob}")


def random_mask(observed: torch.Tensor, generator: torch.Generator, ratio: float | None = None) -> torch.Tensor:
    """Hide ``round(ratio * n_observed)`` observed entries per sample, chosen uniformly.

    Args:
        observed: ``(B, K, L)`` observed mask in {0, 1}.
        ratio: fraction to hide; ``None`` draws it from U(0, 1) per sample.
    Returns:
        ``(B, K, L)`` conditional mask.
    """
    batch = observed.shape[0]
    flat = observed.reshape(batch, -1)
    scores = torch.rand(flat.shape, generator=generator).to(flat.device) * flat
    if ratio is None:
        ratios = torch.rand(batch, generator=generator).to(flat.device)
    else:
        ratios = torch.full((batch,), float(ratio), device=flat.device)
    n_hide = torch.round(flat.sum(dim=1) * ratios).long()
    order = torch.argsort(scores, dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    hide = ranks < n_hide[:, None]
    return (flat * ~hide).reshape(observed.shape)


def historical_mask(observed: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Keep entries observed both here and in ``pattern`` (another window's observed mask), ``(B, K, L)``."""
    return observed * pattern


def block_mask(observed: torch.Tensor, generator: torch.Generator, min_length: int, max_length: int,
               num_blocks: int = 1, feature_prob: float = 1.0) -> torch.Tensor:
    """Hide ``num_blocks`` contiguous time blocks per sample across a random subset of features.

    Args:
        observed: ``(B, K, L)``.
    Returns:
        ``(B, K, L)`` conditional mask.
    """
    batch, features, length = observed.shape
    hidden = torch.zeros(batch, features, length, dtype=torch.bool)
    positions = torch.arange(length)
    for _ in range(num_blocks):
        lengths = torch.randint(min(min_length, length), min(max_length, length) + 1, (batch,), generator=generator)
        starts = (torch.rand(batch, generator=generator) * (length - lengths + 1)).long()
        in_time = (positions[None] >= starts[:, None]) & (positions[None] < (starts + lengths)[:, None])
        in_features = torch.rand(batch, features, generator=generator) < feature_prob
        if feature_prob < 1.0:  # never an empty block
            empty = ~in_features.any(dim=1)
            pick = torch.randint(0, features, (batch,), generator=generator)
            in_features[empty, pick[empty]] = True
        hidden |= in_features[:, :, None] & in_time[:, None, :]
    return observed * (~hidden).to(observed.device, observed.dtype)


def make_cond_mask(config: MaskConfig, observed: torch.Tensor, pattern: torch.Tensor | None,
                   generator: torch.Generator) -> torch.Tensor:
    """Apply ``config``'s strategy to ``observed`` ``(B, K, L)``; ``pattern`` ``(B, K, L)`` feeds the
    historical strategy (default: the observed mask of the previous sample in the batch)."""
    if pattern is None:
        pattern = torch.roll(observed, shifts=1, dims=0)
    if config.strategy == "random":
        return random_mask(observed, generator, config.ratio)
    if config.strategy == "historical":
        return historical_mask(observed, pattern)
    if config.strategy == "block":
        return block_mask(observed, generator, config.min_length, config.max_length, config.num_blocks,
                          config.feature_prob)
    use_random = (torch.rand(observed.shape[0], generator=generator) < 0.5).to(observed.device)
    rand = random_mask(observed, generator, config.ratio)
    hist = historical_mask(observed, pattern)
    return torch.where(use_random[:, None, None], rand, hist)
