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
    c = process.coefficients(t, like, index)  # remembered per time tensor: shared with the network's conversion
    return c.alpha, c.sigma


def _shared(t: Tensor, index: Tensor | None) -> Tensor:
    """``t[:1]`` when a dense field's batch shares one time as an expanded scalar (as the sampling loop passes
    it), so that it is evaluated once."""
    return t[:1] if index is None and t.dim() == 1 and t.shape[0] > 1 and t.stride(0) == 0 else t


def _ode_coords(process: GaussianProcess, t: Tensor, like: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
    """:meth:`~GaussianProcess.ode_coords` broadcast to ``like``, from the process's remembered coefficients."""
    c = process.coefficients(t, like, index)
    return process.ode_coords_of(c.alpha, c.sigma)


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
    lam_t = torch.log(a_t / s_t)
    h = torch.log(a_s / s_s) - lam_t
    d = pred.x0
    if prev_x0 is not None and prev_t is not None:
        a_p, s_p = _ab(process, prev_t, x, index)
        h_prev = lam_t - torch.log(a_p / s_p)
        # D = x0 + (x0 - x0_prev) / (2 r), r = h_prev / h; first order where the history is unusable: h_prev
        # infinite (the previous time had alpha = 0) gives weight 0, h_prev <= 0 (repeated times) is masked
        weight = torch.where((h_prev > 0) & (h > 0), 0.5 * h / h_prev, torch.zeros_like(h))
        d = pred.x0 + weight * (pred.x0 - prev_x0)
    return (s_s / s_t) * x - (a_s * torch.expm1(-h)) * d


ODECoords = tuple[Tensor, "Tensor | None", Tensor, "Tensor | None"]


def euler_step(process: GaussianProcess, x: Tensor, pred: Prediction, t: Tensor, s: Tensor,
               index: Tensor | None = None, *, coords: ODECoords | None = None) -> Tensor:
    """Euler step of the probability-flow ODE in the process's ODE coordinates (:meth:`ode_coords`).

    ``coords``: ``(tau_t, scale_t, tau_s, scale_s)`` already broadcast to ``x`` (a scale of ``None`` is 1), as
    the sampling loop precomputes them for its grid; computed from the process when not given.
    """
    tau_t, scale_t, tau_s, scale_s = coords if coords is not None else (*_ode_coords(process, t, x, index), *_ode_coords(process, s, x, index))
    y = x if scale_t is None else x / scale_t
    y_s = y + (tau_s - tau_t) * process.ode_drift(pred)
    return y_s if scale_s is None else y_s * scale_s


def heun_correct(process: GaussianProcess, x: Tensor, pred_t: Prediction, pred_s: Prediction, t: Tensor, s: Tensor,
                 index: Tensor | None = None, *, coords: ODECoords | None = None) -> Tensor:
    """Heun's (trapezoid) correction: average the ODE drift at ``t`` and at the Euler proposal at ``s``
    (``coords`` as in :func:`euler_step`)."""
    tau_t, scale_t, tau_s, scale_s = coords if coords is not None else (*_ode_coords(process, t, x, index), *_ode_coords(process, s, x, index))
    drift = 0.5 * (process.ode_drift(pred_t) + process.ode_drift(pred_s))
    y = x if scale_t is None else x / scale_t
    y_s = y + (tau_s - tau_t) * drift
    return y_s if scale_s is None else y_s * scale_s


def _sde_terms(alpha: Tensor, sigma: Tensor, d_alpha: Tensor, d_sigma: Tensor) -> tuple[Tensor, Tensor]:
    f = d_alpha / alpha
    return f, (2 * sigma * d_sigma - 2 * f * sigma**2).clamp_min(0)


def sde_coefficients(process: GaussianProcess, t: Tensor) -> tuple[Tensor, Tensor]:
    """Drift factor ``f(t)`` and squared diffusion ``g(t)^2`` of the forward SDE ``dx = f x dt + g dW``
    whose marginals are the path: ``f = alpha'/alpha``, ``g^2 = 2 sigma sigma' - 2 f sigma^2``."""
    return _sde_terms(*process.alpha_sigma(t), *process.derivatives(t))


def euler_maruyama_step(process: GaussianProcess, x: Tensor, pred: Prediction, t: Tensor, s: Tensor, noise: Tensor,
                        index: Tensor | None = None) -> Tensor:
    """Euler–Maruyama on the reverse-time SDE ``dx = [f x - g^2 score] dt + g dW`` from ``t`` down to ``s``."""
    c = process.coefficients(t, x, index)
    f, g2 = _sde_terms(c.alpha, c.sigma, c.d_alpha, c.d_sigma)
    dt = broadcast(_shared(s, index) - _shared(t, index), x, index)  # negative
    score = -pred.eps / c.sigma
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
