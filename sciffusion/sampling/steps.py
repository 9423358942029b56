"""Single solver steps for Gaussian paths. Pure functions: no hidden state, per-sample times.

Every step moves one field from time ``t`` to an earlier time ``s``; ``x`` is the field (dense ``(B, ...)`` or
ragged ``(N, ...)``); ``pred`` is the denoiser's answer at ``(x, t)``; ``c_t`` and ``c_s`` are the path's
:class:`~sciffusion.processes.Coefficients` at ``t`` and ``s``, already broadcast to ``x`` (the sampling loop
computes a grid's once, :meth:`GaussianProcess.path_table`). Noise for stochastic steps is passed in, so the
caller owns all randomness.
"""
from __future__ import annotations

import torch
from torch import Tensor

from sciffusion.processes import Coefficients, GaussianProcess, Prediction


def ddim_step(x: Tensor, pred: Prediction, c_t: Coefficients, c_s: Coefficients, eta: float = 0.0,
              noise: Tensor | None = None) -> Tensor:
    """DDIM (Song et al. 2021) for any Gaussian path; ``eta = 1`` is DDPM's ancestral step.

    ``x_s = alpha_s x0 + sqrt(sigma_s^2 - std^2) eps + std z`` with
    ``std = eta * (sigma_s / sigma_t) * sqrt(sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2)``.
    """
    if eta == 0.0:
        return c_s.alpha * pred.x0 + c_s.sigma * pred.eps
    if noise is None:
        raise ValueError("a stochastic step (eta > 0) needs noise")
    var_ts = (c_t.sigma**2 - (c_t.alpha / c_s.alpha) ** 2 * c_s.sigma**2).clamp_min(0)
    std = eta * c_s.sigma / c_t.sigma * var_ts.sqrt()
    return c_s.alpha * pred.x0 + (c_s.sigma**2 - std**2).clamp_min(0).sqrt() * pred.eps + std * noise


def ddpm_step(x: Tensor, pred: Prediction, c_t: Coefficients, c_s: Coefficients, noise: Tensor) -> Tensor:
    """Ancestral sampling from the posterior ``q(x_s | x_t, x0_hat)`` (Ho et al. 2020, "fixed small" variance).

    Mean ``(a_ts s_s^2 / s_t^2) x_t + (a_s s_ts^2 / s_t^2) x0``, variance ``s_ts^2 s_s^2 / s_t^2`` where
    ``a_ts = a_t / a_s`` and ``s_ts^2 = s_t^2 - a_ts^2 s_s^2``.
    """
    a_t, s_t, a_s, s_s = c_t.alpha, c_t.sigma, c_s.alpha, c_s.sigma
    a_ts = a_t / a_s
    var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp_min(0)
    mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * var_ts / s_t**2) * pred.x0
    return mean + (var_ts * s_s**2 / s_t**2).sqrt() * noise


def dpmpp_2m_step(x: Tensor, pred: Prediction, c_t: Coefficients, c_s: Coefficients, prev_x0: Tensor | None = None,
                  c_prev: Coefficients | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, midpoint form as in diffusers.

    First order (= DDIM) when there is no history (``prev_x0``, the previous step's ``x0`` at coefficients
    ``c_prev``) or when ``s`` is the clean end (``sigma_s = 0``). ``h = lambda_s - lambda_t`` with
    ``lambda = log(alpha / sigma)``.
    """
    a_t, s_t, a_s, s_s = c_t.alpha, c_t.sigma, c_s.alpha, c_s.sigma
    if bool((s_s == 0).all()):
        return pred.x0.clone()  # exact end of the exponential integrator
    lam_t = torch.log(a_t / s_t)
    h = torch.log(a_s / s_s) - lam_t
    d = pred.x0
    if prev_x0 is not None and c_prev is not None:
        h_prev = lam_t - torch.log(c_prev.alpha / c_prev.sigma)
        # D = x0 + (x0 - x0_prev) / (2 r), r = h_prev / h; first order where the history is unusable: h_prev
        # infinite (the previous time had alpha = 0) gives weight 0, h_prev <= 0 (repeated times) is masked
        weight = torch.where((h_prev > 0) & (h > 0), 0.5 * h / h_prev, torch.zeros_like(h))
        d = pred.x0 + weight * (pred.x0 - prev_x0)
    return (s_s / s_t) * x - (a_s * torch.expm1(-h)) * d


def _ode_move(process: GaussianProcess, x: Tensor, drift: Tensor, c_t: Coefficients, c_s: Coefficients) -> Tensor:
    """``y_s = y_t + (tau_s - tau_t) drift`` in the process's ODE coordinates ``y = x / scale`` (scale ``None``: 1)."""
    tau_t, scale_t = process.ode_coords_of(c_t.alpha, c_t.sigma)
    tau_s, scale_s = process.ode_coords_of(c_s.alpha, c_s.sigma)
    y = x if scale_t is None else x / scale_t
    y_s = y + (tau_s - tau_t) * drift
    return y_s if scale_s is None else y_s * scale_s


def euler_step(process: GaussianProcess, x: Tensor, pred: Prediction, c_t: Coefficients, c_s: Coefficients) -> Tensor:
    """Euler step of the probability-flow ODE in the process's ODE coordinates (:meth:`ode_coords_of`)."""
    return _ode_move(process, x, process.ode_drift(pred), c_t, c_s)


def heun_correct(process: GaussianProcess, x: Tensor, pred_t: Prediction, pred_s: Prediction, c_t: Coefficients,
                 c_s: Coefficients) -> Tensor:
    """Heun's (trapezoid) correction: average the ODE drift at ``t`` and at the Euler proposal at ``s``."""
    return _ode_move(process, x, 0.5 * (process.ode_drift(pred_t) + process.ode_drift(pred_s)), c_t, c_s)


def _sde_terms(alpha: Tensor, sigma: Tensor, d_alpha: Tensor, d_sigma: Tensor) -> tuple[Tensor, Tensor]:
    f = d_alpha / alpha
    return f, (2 * sigma * d_sigma - 2 * f * sigma**2).clamp_min(0)


def euler_maruyama_step(x: Tensor, pred: Prediction, c_t: Coefficients, dt: Tensor, noise: Tensor) -> Tensor:
    """Euler–Maruyama on the reverse-time SDE ``dx = [f x - g^2 score] dt + g dW`` over ``dt = s - t < 0``
    (broadcast to ``x``)."""
    f, g2 = _sde_terms(c_t.alpha, c_t.sigma, c_t.d_alpha, c_t.d_sigma)
    score = -pred.eps / c_t.sigma
    return x + (f * x - g2 * score) * dt + (g2 * (-dt)).sqrt() * noise


def langevin_correct(x: Tensor, pred: Prediction, sigma: Tensor, noise: Tensor, snr: float = 0.16) -> Tensor:
    """One Langevin corrector step (Song et al. 2021, Alg. 5) at fixed time.

    ``sigma`` is already broadcast to ``x``; step ``= 2 (snr ||z|| / ||score||)^2`` with the norms taken over
    the whole field, i.e. one step size per call, as in Song et al.'s reference code (which averages the
    norms over the batch). A per-sample ratio is unstable in low dimension: a sample near a mode has a
    near-zero score and gets an unbounded step.
    """
    score = -pred.eps / sigma
    step = 2 * (snr * noise.norm() / score.norm().clamp_min(1e-12)) ** 2
    return x + step * score + (2 * step).sqrt() * noise
