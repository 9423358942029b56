"""Exact conversions between what a network may predict for a Gaussian path.

A Gaussian path corrupts clean data ``x0`` as ``x_t = alpha(t) x0 + sigma(t) eps`` with ``eps ~ N(0, I)``.
Given ``x_t`` and the path coefficients, each of these determines the pair ``(x0, eps)``:

* ``eps``      — the noise,
* ``x0``       — the clean sample,
* ``v``        — ``alpha eps - sigma x0`` (Salimans & Ho 2022; the usual v for VP paths),
* ``velocity`` — ``d x_t / dt = alpha' x0 + sigma' eps`` (flow matching's target),
* ``score``    — ``grad log p_t(x_t) = -eps / sigma``.

All conversions are affine in the prediction for fixed ``x_t``, so a linear combination of predictions
(classifier-free guidance) gives the same result in every parametrization.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

PredictionType = Literal["eps", "x0", "v", "velocity", "score"]
PREDICTION_TYPES: tuple[str, ...] = ("eps", "x0", "v", "velocity", "score")


@dataclass
class Coefficients:
    """Path coefficients at a time, already broadcast to the field's shape."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor  # d alpha / dt
    d_sigma: Tensor  # d sigma / dt


@dataclass
class Prediction:
    """A denoiser's answer in the two canonical forms: clean sample and noise, both shaped like ``x_t``."""

    x0: Tensor
    eps: Tensor


def to_x0_eps(pred: Tensor, kind: str, x_t: Tensor, c: Coefficients) -> Prediction:
    """Convert a network output of type ``kind`` into ``(x0, eps)`` (exact, no approximations)."""
    if kind == "eps":
        return Prediction(x0=(x_t - c.sigma * pred) / c.alpha, eps=pred)
    if kind == "x0":
        return Prediction(x0=pred, eps=(x_t - c.alpha * pred) / c.sigma)
    if kind == "score":
        eps = -c.sigma * pred
        return Prediction(x0=(x_t - c.sigma * eps) / c.alpha, eps=eps)
    if kind == "v":
        norm = c.alpha**2 + c.sigma**2
        return Prediction(x0=(c.alpha * x_t - c.sigma * pred) / norm, eps=(c.sigma * x_t + c.alpha * pred) / norm)
    if kind == "velocity":
        det = c.alpha * c.d_sigma - c.sigma * c.d_alpha
        return Prediction(x0=(c.d_sigma * x_t - c.sigma * pred) / det, eps=(c.alpha * pred - c.d_alpha * x_t) / det)
    raise ValueError(f"unknown prediction type '{kind}' (known: {', '.join(PREDICTION_TYPES)})")


def from_x0_eps(x0: Tensor, eps: Tensor, kind: str, c: Coefficients) -> Tensor:
    """The ``kind`` target for a clean sample ``x0`` and noise ``eps`` (inverse of :func:`to_x0_eps`)."""
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "score":
        return -eps / c.sigma
    if kind == "v":
        return c.alpha * eps - c.sigma * x0
    if kind == "velocity":
        return c.d_alpha * x0 + c.d_sigma * eps
    raise ValueError(f"unknown prediction type '{kind}' (known: {', '.join(PREDICTION_TYPES)})")


def convert(pred: Tensor, source: str, target: str, x_t: Tensor, c: Coefficients) -> Tensor:
    """Convert a prediction between any two parametrizations."""
    p = to_x0_eps(pred, source, x_t, c)
    return from_x0_eps(p.x0, p.eps, target, c)


def x0_space_weight(kind: str, c: Coefficients) -> Tensor:
    """Weight ``w`` such that ``||pred - target||^2 = w ||x0_hat - x0||^2`` for prediction ``kind``.

    Used to express every loss weighting once, in x0 space, whatever the network predicts.
    """
    snr = (c.alpha / c.sigma) ** 2
    if kind == "eps":
        return snr
    if kind == "x0":
        return torch.ones_like(snr)
    if kind == "score":
        return snr / c.sigma**2
    if kind == "v":
        return ((c.alpha**2 + c.sigma**2) / c.sigma) ** 2
    if kind == "velocity":
        return (c.d_alpha - c.d_sigma * c.alpha / c.sigma) ** 2
    raise ValueError(f"unknown prediction type '{kind}' (known: {', '.join(PREDICTION_TYPES)})")
