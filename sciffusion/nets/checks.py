"""Checks shared by the nets (their config dataclasses' ``__post_init__`` and their constructors).

Each raises :class:`sciffusion.config.FieldError` naming the field, which the config loader turns
into ``config error: 'net.<field>' ...``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sciffusion.config import FieldError

__all__ = ["at_least", "check_cfg_keys", "check_cond_dims", "divisible", "dropout_rate", "finite_positive", "odd", "positive_list"]


def at_least(config: Any, bound: int, *keys: str) -> None:
    """Each of ``keys`` of ``config`` must be ``>= bound``."""
    for key in keys:
        value = getattr(config, key)
        if value < bound:
            raise FieldError(key, f"must be >= {bound}, got {value}")


def positive_list(key: str, values: Sequence[int]) -> None:
    """``values`` must be a non-empty list of integers >= 1."""
    if not values:
        raise FieldError(key, "must be a non-empty list of integers >= 1, got []")
    if any(v < 1 for v in values):
        raise FieldError(key, f"must hold integers >= 1, got {list(values)}")


def odd(key: str, value: int) -> None:
    """A length-preserving convolution kernel: odd and >= 1."""
    if value < 1 or value % 2 == 0:
        raise FieldError(key, f"must be an odd integer >= 1 (the convolution keeps the sequence length), got {value}")


def divisible(key: str, value: int, by_key: str, by: int) -> None:
    """``value`` (of ``key``) must be divisible by ``by`` (the value of ``by_key``)."""
    if value % by:
        raise FieldError(key, f"({value}) must be divisible by {by_key} ({by})")


def dropout_rate(key: str, value: float) -> None:
    """A dropout probability in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise FieldError(key, f"must be in [0, 1), got {value}")


def finite_positive(key: str, value: float) -> None:
    """A finite number > 0."""
    if not (math.isfinite(value) and value > 0):
        raise FieldError(key, f"must be a finite number > 0, got {value}")


def check_cond_dims(cond_dims: dict[str, int]) -> None:
    """Every global condition has at least one value."""
    bad = {k: v for k, v in cond_dims.items() if v < 1}
    if bad:
        raise FieldError("cond_dims", f"sizes must be >= 1, got {bad}")


def check_cfg_keys(cfg_keys: Sequence[str], cond_names: Sequence[str]) -> list[str]:
    """``cfg_keys`` as a list, refused if it names a condition the network does not take."""
    unknown = sorted(set(cfg_keys) - set(cond_names))
    if unknown:
        raise FieldError("cfg_keys", f"names {unknown}, which the network does not take (its conditions: {list(cond_names) or 'none'})")
    return list(cfg_keys)
