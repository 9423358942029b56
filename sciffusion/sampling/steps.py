"""Single solver steps for Gaussian paths. Pure functions: no hidden state, per-sample times.

Every step moves one field from time ``t`` to an earlier time ``s`` (both (B,)); ``x`` is the field
(dense ``(B, ...)`` or ragged ``(N, ...)`` with ``index`` (N,)); ``pred`` is the denoiser's answer at
``(x, t)``. Noise for stochastic steps is passed in, so the caller owns all randomness.
"""
from __future__ import annotations

import torch
from torch import Tensor

from sciffusion.processes import GaussianProcess, Prediction, broadcast


def _ab(process: GaussianProcess, t: Tensor, like: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
    alpha, sigma = process.alpha_sigma(t)
    return broadcast(alpha, like, index), broadcast(sigma, like, index)


def ddim_step(process: GaussianProcess, x: Tensor, pred: Prediction, t: Tensor, s: Tensor, eta: float = 0.0,
              noise: Tensor | None = None, index: Tensor | None = None) -> Tensor:
    """DDIM (Song et al. 2021) for any Gaussian path; ``eta = 1`` is DDPM's ancestral step.

    ``x_s = alpha_s x0 + sqrt(sigma_s^2 - std^2) eps + std z`` with
    ``std = eta * (sigma_s / sigma_t) * sqrt(sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2)``.
    """
    a_t, s_t = _ab(process, t, x, index)
    a_s, s_s = _ab(process, s, x, index)
    if eta == 0.0:
        return a_s * pred.x0 + s_s * pred.eps
    var_ts = (s_t**2 - (a_t / a_s) ** 2 * s_s**2).clamp_min(0)
    std = eta * s_s / s_t * var_ts.sqrt()
    if noise is None:
        raise ValueError("a stochastic step (eta > 0) needs noise")
    return a_s * pred.x0 + (s_s**2 - std**2).clamp_min(0).sqrt() * pred.eps + std * noise


def ddpm_step(process: GaussianProcess, x: Tensor, pred: Prediction, t: Tensor, s: Tensor, noise: Tensor,
              index: Tensor | None = None) -> Tensor:
    """Ancestral sampling from the posterior ``q(x_s | x_t, x0_hat)`` (Ho et al. 2020, "fixed small" variance).

    Mean ``(a_ts s_s^2 / s_t^2) x_t + (a_s s_ts^2 / s_t^2) x0``, variance ``s_ts^2 s_s^2 / s_t^2`` where
    ``a_ts = a_t / a_s`` and ``s_ts^2 = s_t^2 - a_ts^2 s_s^2``.
    """
    a_t, s_t = _ab(process, t, x, index)
    a_s, s_s = _ab(process, s, x, index)
    a_ts = a_t / a_s
    var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp_min(0)
    mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * var_ts / s_t**2) * pred.x0
    return mean + (var_ts * s_s**2 / s_t**2).sqrt() * noise


def dpmpp_2m_step(process: GaussianProcess, x: Tensor, pred: Prediction, t: Tensor, s: Tensor,
                  prev_x0: Tensor | None = None, prev_t: Tensor | None = None, index: Tensor | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, midpoint form as in diffusers.

    First order (= DDIM) when there is no history or when ``s`` is the clean end (``sigma_s = 0``).
    ``h = lambda_s - lambda_t`` with ``lambda = log(alpha / sigma)``.
    """
    a_t, s_t = _ab(process, t, x, index)
    a_s, s_s = _ab(process, s, x, index)
    if bool((s_s == 0).all()):
        return pred.x0.clone()  # exact end of the exponential integrator
    lam_t, lam_s = torch.log(a_t) - torch.log(s_t), torch.log(a_s) - torch.log(s_s)
    h = lam_s - lam_t
    phi = torch.expm1(-h)  # e^{-h} - 1
    d = pred.x0
    if prev_x0 is not None and prev_t is not None:
        a_p, s_p = _ab(process, prev_t, x, index)
        h_prev = lam_t - (torch.log(a_p) - torch.log(s_p))
        r = h_prev / h
        second = torch.isfinite(r) & (r > 0)
        d = torch.where(second, pred.x0 + 0.5 * (pred.x0 - prev_x0) / torch.where(second, r, torch.ones_like(r)), pred.x0)
    return (s_s / s_t) * x - a_s * phi * d


def euler_step(process: GaussianProcess, x: Tensor, pred: Prediction, t: Tensor, s: Tensor,
               index: Tensor | None = None) -> Tensor:
    """Euler step of the probability-flow ODE in the process's ODE coordinates (:meth:`ode_coords`)."""
    tau_t, scale_t = process.ode_coords(t)
    tau_s, scale_s = process.ode_coords(s)
    y = x / broadcast(scale_t, x, index)
    y_s = y + broadcast(tau_s - tau_t, x, index) * process.ode_drift(pred)
    return y_s * broadcast(scale_s, x, index)


def heun_correct(process: GaussianProcess, x: Tensor, pred_t: Prediction, pred_s: Prediction, t: Tensor, s: Tensor,
                 index: Tensor | None = None) -> Tensor:
    """Heun's (trapezoid) correction: average the ODE drift at ``t`` and at the Euler proposal at ``s``."""
    tau_t, scale_t = process.ode_coords(t)
    tau_s, scale_s = process.ode_coords(s)
    drift = 0.5 * (process.ode_drift(pred_t) + process.ode_drift(pred_s))
    y = x / broadcast(scale_t, x, index)
    return (y + broadcast(tau_s - tau_t, x, index) * drift) * broadcast(scale_s, x, index)


def sde_coefficients(process: GaussianProcess, t: Tensor) -> tuple[Tensor, Tensor]:
    """Drift factor ``f(t)`` and squared diffusion ``g(t)^2`` of the forward SDE ``dx = f x dt + g dW``
    whose marginals are the path: ``f = alpha'/alpha``, ``g^2 = 2 sigma sigma' - 2 f sigma^2``."""
    alpha, sigma = process.alpha_sigma(t)
    d_alpha, d_sigma = process.derivatives(t)
    f = d_alpha / alpha
    return f, (2 * sigma * d_sigma - 2 * f * sigma**2).clamp_min(0)


def euler_maruyama_step(process: GaussianProcess, x: Tensor, pred: Prediction, t: Tensor, s: Tensor, noise: Tensor,
                        index: Tensor | None = None) -> Tensor:
    """Euler–Maruyama on the reverse-time SDE ``dx = [f x - g^2 score] dt + g dW`` from ``t`` down to ``s``."""
    _, sigma = _ab(process, t, x, index)
    f, g2 = sde_coefficients(process, t)
    f, g2 = broadcast(f, x, index), broadcast(g2, x, index)
    dt = broadcast(s - t, x, index)  # negative
    score = -pred.eps / sigma
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
