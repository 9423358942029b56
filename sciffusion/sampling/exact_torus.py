"""Exact targets on the torus ``[0, 1)^d``: a finite set of points, its exact denoisers, and a distance.

The data are points ``y_j`` ``(M, d)`` with weights ``pi_j``. On both torus paths the posterior over the
target points given ``x_t`` is closed form, so a solver driven by :meth:`TorusTarget.network` sees a perfect
network and every error it makes is its own.

* Flat-torus flow (``x_t = wrap(y + t delta)``, ``delta`` uniform on ``[-1/2, 1/2)^d``): ``p_t(x | y_j)`` is
  uniform with density ``t^-d`` on the wrapped box ``B_j(t) = {x : |wrapped(x - y_j)| <= t / 2}`` (for
  ``t <= 1`` the box does not overlap itself; half-open and closed boxes differ on a null set, and the closed
  one makes ``t = 1`` -- every ``x`` in every box -- hold exactly in floating point). So
  ``w_j(x) = pi_j 1[x in B_j] / sum_k pi_k 1[x in B_k]`` (the ``t^-d`` cancels), and since inside ``B_j``
  ``delta = wrapped(x - y_j) / t`` exactly, the marginal velocity is ``E[delta | x_t = x] = sum_j w_j
  wrapped(x - y_j) / t``. A discretised trajectory can leave every box (where ``p_t = 0``); there the
  boxes nearest in the sup norm take the place of the containing ones, which is the same rule written as
  ``w_j ∝ pi_j 1[e_j = min_k e_k]`` with ``e_j`` the sup-norm distance of ``x`` to ``B_j``.
* Wrapped normal (``x_t = wrap(y + sigma eps)``): ``w_j(x) ∝ pi_j prod_i WN(x_i - y_ji; sigma)`` and the score
  is ``sum_j w_j score_WN(x - y_j; sigma)`` (the gradient of ``log sum_j pi_j WN``), with the images of
  :mod:`sciffusion.processes.torus` (truncated at 1e-10).

:class:`TorusMMD` measures samples against the target itself (no reference sample) by the maximum mean
discrepancy with the product von Mises kernel ``k(x, y) = prod_i exp(kappa (cos 2 pi (x_i - y_i) - 1))``. It
is positive definite and characteristic on the torus (its Fourier coefficients ``e^-kappa I_n(kappa)`` are
all positive), depends only on wrapped differences, and its squared MMD is exactly a Fourier sum,
``sum_m c_m |phi_samples(m) - phi_target(m)|^2``, evaluated here with the frequencies truncated to a stated
tolerance: no pairwise ``n^2`` sum, and no second sample whose own noise would enter the distance.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from sciffusion.processes.base import per_sample
from sciffusion.processes.torus import (
    TorusFlowProcess,
    TorusNetwork,
    TorusProcess,
    WrappedNormalProcess,
    wrapped_difference,
    wrapped_normal,
    wrapped_normal_images,
)


class TorusTarget:
    """A finite set of points on the torus with weights.

    Args:
        points: ``(M, d)`` in ``[0, 1)``.
        weights: ``(M,)`` positive (normalised here).
    Stored in float64; outputs follow the dtype of the input points.
    """

    def __init__(self, points: Tensor | Sequence[Sequence[float]], weights: Tensor | Sequence[float]) -> None:
        y = torch.as_tensor(points, dtype=torch.float64)
        w = torch.as_tensor(weights, dtype=torch.float64)
        if y.dim() != 2 or w.shape != (y.shape[0],):
            raise ValueError(f"expected points (M, d) and weights (M,), got {tuple(y.shape)} and {tuple(w.shape)}")
        if bool((y < 0).any()) or bool((y >= 1).any()):
            raise ValueError("target points must lie in [0, 1)")
        if not bool((w > 0).all()):
            raise ValueError("target weights must be positive")
        self.points, self.weights = y, w / w.sum()

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent draws ``(n, d)`` float64."""
        return self.points[torch.multinomial(self.weights, n, replacement=True, generator=generator)]

    def _differences(self, x: Tensor) -> Tensor:
        """``wrapped(x - y_j)`` ``(R, M, d)`` float64 for rows ``x`` ``(R, d)``."""
        return wrapped_difference(x.double()[:, None, :] - self.points.to(x.device)[None])

    # -- flat-torus flow -------------------------------------------------------------------------
    def flow_posterior(self, x: Tensor, t: Tensor) -> Tensor:
        """``P(y_j | x_t = x)`` ``(R, M)`` float64 for rows ``x`` ``(R, d)`` at times ``t`` ``(R,)`` in ``(0, 1]``."""
        excess = (self._differences(x).abs() - t.double()[:, None, None] / 2).clamp_min(0).amax(-1)  # (R, M)
        nearest = excess == excess.amin(-1, keepdim=True)
        w = self.weights.to(x.device) * nearest
        return w / w.sum(-1, keepdim=True)

    def flow_velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact marginal velocity ``d x_t / dt = sum_j w_j wrapped(x - y_j) / t`` ``(R, d)`` (``t`` ``(R,)`` > 0)."""
        diff = self._differences(x)
        v = (self.flow_posterior(x, t)[:, :, None] * diff).sum(1) / t.double()[:, None]
        return v.to(x.dtype)

    # -- wrapped normal --------------------------------------------------------------------------
    def _wrapped_normal(self, x: Tensor, sigma: Tensor, n_images: int) -> tuple[Tensor, Tensor]:
        """Posterior ``(R, M)`` and per-point scores ``score_WN(x - y_j)`` ``(R, M, d)``, float64."""
        log_kernel, scores = wrapped_normal(self._differences(x), sigma.double()[:, None, None], n_images)
        return torch.softmax(torch.log(self.weights.to(x.device)) + log_kernel.sum(-1), dim=-1), scores

    def wrapped_normal_posterior(self, x: Tensor, sigma: Tensor, n_images: int) -> Tensor:
        """``P(y_j | x_t = x)`` ``(R, M)`` float64 for rows ``x`` ``(R, d)`` at noise levels ``sigma`` ``(R,)`` > 0."""
        return self._wrapped_normal(x, sigma, n_images)[0]

    def wrapped_normal_score(self, x: Tensor, sigma: Tensor, n_images: int) -> Tensor:
        """Exact score ``grad log sum_j pi_j WN(x - y_j; sigma)`` ``(R, d)`` (``sigma`` ``(R,)`` > 0)."""
        posterior, scores = self._wrapped_normal(x, sigma, n_images)
        return (posterior[:, :, None] * scores).sum(1).to(x.dtype)

    # -- a perfect network -----------------------------------------------------------------------
    def network(self, process: TorusProcess) -> TorusNetwork:
        """``(x_t, t (B,), index) -> raw output`` of a perfect network for ``process``: the velocity for the flow,
        the score over :meth:`WrappedNormalProcess.score_scale` for the wrapped normal (images chosen from the
        call's largest ``sigma``, truncation error <= 1e-10). ``x_t`` is ``(B, ..., d)`` or ragged ``(N, d)``;
        every row is an independent draw of the target."""

        def rows(x_t: Tensor, t: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
            t_rows = per_sample(t.double(), x_t, index).expand(*x_t.shape[:-1], 1).reshape(-1)
            return x_t.reshape(-1, self.dim), t_rows

        if isinstance(process, TorusFlowProcess):
            def velocity(x_t: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
                x, t_rows = rows(x_t, t, index)
                return self.flow_velocity(x, t_rows).reshape(x_t.shape)

            return velocity
        if isinstance(process, WrappedNormalProcess):
            def normalised_score(x_t: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
                x, t_rows = rows(x_t, t, index)
                sigma = process.sigma(t_rows)
                score = self.wrapped_normal_score(x, sigma, wrapped_normal_images(float(sigma.max())))
                return (score / process.score_scale(t_rows)[:, None]).to(x_t.dtype).reshape(x_t.shape)

            return normalised_score
        raise TypeError(f"no exact network for {type(process).__name__}")


class TorusMMD:
    """Maximum mean discrepancy of samples to a :class:`TorusTarget`, product von Mises kernel.

    ``MMD^2 = || mean_a k(x_a, .) - sum_j pi_j k(y_j, .) ||^2`` (the V-statistic: a squared norm, never
    negative), computed as ``sum_m c_m |phi_x(m) - phi_y(m)|^2`` over frequencies ``m in [-F, F]^d`` with
    ``c_m = prod_i e^-kappa I_{m_i}(kappa)``; ``F`` is the smallest with ``4 (1 - (sum_{|n|<=F} c_n)^d) <= tolerance``
    (the omitted coefficients times the largest ``|phi_x - phi_y|^2``).

    Args:
        target: the target.
        kappa: concentration; the kernel's length scale is about ``1 / (2 pi sqrt(kappa))`` (0.11 for 2).
        tolerance: bound on the truncation error of ``MMD^2``.
    """

    def __init__(self, target: TorusTarget, kappa: float = 2.0, tolerance: float = 1e-10) -> None:
        self.target, self.kappa = target, float(kappa)
        grid = torch.arange(1024, dtype=torch.float64) / 1024
        coeffs = torch.fft.fft(torch.exp(self.kappa * (torch.cos(2 * math.pi * grid) - 1))).real / 1024  # c_n, n mod 1024
        d = target.dim
        n_freq = 0
        while 4 * (1 - float(coeffs[0] + 2 * coeffs[1:n_freq + 1].sum()) ** d) > tolerance:
            n_freq += 1
        self.frequencies = torch.arange(-n_freq, n_freq + 1, dtype=torch.float64)  # (F,)
        c = coeffs[self.frequencies.long() % 1024]  # (F,)
        weight = c
        for _ in range(d - 1):
            weight = (weight[:, None] * c[None]).reshape(-1)
        self.coefficients = weight  # (F^d,) in the order of _characteristic
        self._target_phi = self._characteristic(target.points, target.weights)

    def kernel(self, x: Tensor, y: Tensor) -> Tensor:
        """``k(x_a, y_b)`` ``(n, m)`` float64 for points ``x`` ``(n, d)`` and ``y`` ``(m, d)``."""
        diff = x.double()[:, None, :] - y.double()[None]
        return torch.exp(self.kappa * (torch.cos(2 * math.pi * diff) - 1).sum(-1))

    def _characteristic(self, points: Tensor, weights: Tensor, chunk: int = 4096) -> Tensor:
        """``sum_a weights_a exp(2 pi i m . x_a)`` for every frequency ``m`` ``(F^d,)`` complex128 (first coordinate
        slowest), in chunks of rows so memory stays at ``chunk * F^(d-1)``."""
        points = points.double().cpu()
        weights = weights.double().cpu()
        total = torch.zeros(len(self.frequencies) ** points.shape[1], dtype=torch.complex128)
        for start in range(0, points.shape[0], chunk):
            x, w = points[start:start + chunk], weights[start:start + chunk]
            waves = torch.exp(2j * math.pi * x[:, :, None] * self.frequencies)  # (n, d, F)
            lead = torch.ones(x.shape[0], 1, dtype=torch.complex128)
            for i in range(x.shape[1] - 1):
                lead = (lead[:, :, None] * waves[:, i, None, :]).reshape(x.shape[0], -1)
            total += (lead.T @ (w[:, None] * waves[:, -1])).reshape(-1)
        return total

    def mmd2(self, samples: Tensor) -> float:
        """Squared MMD (V-statistic) of samples ``(n, d)`` to the target."""
        n = samples.shape[0]
        phi = self._characteristic(samples, torch.full((n,), 1.0 / n, dtype=torch.float64))
        return float((self.coefficients * (phi - self._target_phi).abs() ** 2).sum())

    def __call__(self, samples: Tensor) -> float:
        """MMD of samples ``(n, d)`` to the target (the square root of :meth:`mmd2`)."""
        return math.sqrt(max(self.mmd2(samples), 0.0))

    def noise_floor(self, n: int) -> float:
        """Root of the expected squared MMD of ``n`` exact draws of the target: ``E MMD^2 = (k(x, x) - E k(x, x')) / n
        = (1 - pi^T K pi) / n`` with ``K`` the kernel between the target points."""
        pi = self.target.weights
        return math.sqrt((1 - float(pi @ self.kernel(self.target.points, self.target.points) @ pi)) / n)
