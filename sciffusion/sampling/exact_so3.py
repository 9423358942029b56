"""Exact targets on SO(3): a finite set of rotations, its exact denoisers on both SO(3) paths, and a distance.

The data are rotations ``Q_j`` ``(K, 3, 3)`` with weights ``pi_j``. On both paths of
:mod:`sciffusion.processes.so3` the posterior over the targets given ``R_t`` is closed form, so a solver driven by
:meth:`SO3Target.network` sees a perfect network and every error it makes is its own (or sampling noise).

* Geodesic flow from the uniform prior, ``R_t = Q exp(kappa log U)`` with ``U`` Haar. By Weyl's formula the
  angle ``w`` of a Haar rotation has density ``(1 - cos w) / pi`` on ``[0, pi]`` and an independent uniform axis.
  ``Q^T R_t = exp(kappa log U)`` has the same axis and the angle ``theta = kappa w``, of density
  ``(1 - cos(theta / kappa)) / (pi kappa)`` on ``[0, kappa pi]``. A rotation law with a uniform axis whose angle has
  density ``q`` has the Haar density ``q(theta) / ((1 - cos theta) / pi)``, so

      p_t(R | Q) = (1 - cos(theta / kappa)) / (kappa (1 - cos theta)) 1[theta <= kappa pi],  theta = angle(Q^T R)

  (``= kappa^-3 sinc^2(theta / 2 kappa) / sinc^2(theta / 2)``, ``kappa^-3`` at ``theta = 0``; 1 at ``kappa = 1``,
  the prior; for ``kappa = t`` the linear schedule). Hence ``w_j(R) ∝ pi_j p_t(R | Q_j)``. Given ``R_t = R`` and
  ``Q_j``, ``log U = -log(R^T Q_j) / kappa`` exactly (the angle is ``<= kappa pi < pi``, so ``log`` is
  unambiguous), so the conditional velocity is ``u_t(R | Q_j) = -(kappa' / kappa) log(R^T Q_j)`` and the exact
  marginal velocity is ``sum_j w_j u_t(R | Q_j)``: the displacement ``d = sum_j w_j log(R^T Q_j)`` is what a
  perfect network outputs (``R exp(d)`` for the ``rotmat`` output). A discretised trajectory can leave every ball
  ``theta_j <= kappa pi`` (where ``p_t = 0``); there the nearest targets take the place of the containing ones
  (``w_j ∝ pi_j`` on the ``j`` of smallest ``theta_j``).
* IGSO(3): ``p_t(R) = sum_j pi_j f(angle(Q_j^T R); sigma(t))``, ``w_j ∝ pi_j f(theta_j; sigma)``, and the score is
  ``sum_j w_j score_IGSO3(log(Q_j^T R); sigma)`` (the gradient of ``log p_t``).

:class:`SO3MMD` measures a sample set against the target itself by the maximum mean discrepancy with the heat kernel
``k(R, R') = f(angle(R^T R'); h) / f(0; h)`` (the IGSO3 density of ``R^T R'``, bandwidth ``h``): a class function whose
character coefficients ``(2l + 1) exp(-l(l+1) h^2 / 2)`` are all positive, hence positive definite and characteristic
on SO(3) (Peter-Weyl), a function of the geodesic distance only, and about ``exp(-angle^2 / (2 h^2))`` for small
angles. Its sampling-noise floor is closed form (:meth:`SO3MMD.noise_floor`).
"""
from __future__ import annotations

import math
from typing import Sequence

import roma
import torch
from torch import Tensor

from sciffusion.processes.base import per_sample
from sciffusion.processes.so3 import (
    GeodesicFlowProcess,
    IGSO3Process,
    SO3Network,
    SO3Process,
    igso3_log_density,
    igso3_score,
    so3_exp,
)


class SO3Target:
    """A finite set of rotations with weights.

    Args:
        rotations: ``(K, 3, 3)`` rotation matrices.
        weights: ``(K,)`` positive (normalised here).
    Stored in float64; outputs follow the dtype of the input rotations.
    """

    def __init__(self, rotations: Tensor | Sequence, weights: Tensor | Sequence[float]) -> None:
        q = torch.as_tensor(rotations, dtype=torch.float64)
        w = torch.as_tensor(weights, dtype=torch.float64)
        if q.dim() != 3 or tuple(q.shape[1:]) != (3, 3) or w.shape != (q.shape[0],):
            raise ValueError(f"expected rotations (K, 3, 3) and weights (K,), got {tuple(q.shape)} and {tuple(w.shape)}")
        if float((q.transpose(1, 2) @ q - torch.eye(3, dtype=torch.float64)).abs().max()) > 1e-8 or \
                float((torch.linalg.det(q) - 1).abs().max()) > 1e-8:
            raise ValueError("target rotations must be rotation matrices (orthonormal, det +1)")
        if not bool((w > 0).all()):
            raise ValueError("target weights must be positive")
        self.rotations, self.weights = q, w / w.sum()
        self._inverse_quats = roma.quat_conjugation(roma.rotmat_to_unitquat(q))  # Q_j^T as unit quaternions (K, 4)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent draws ``(n, 3, 3)`` float64."""
        return self.rotations[torch.multinomial(self.weights, n, replacement=True, generator=generator)]

    def relative(self, rot: Tensor) -> Tensor:
        """``log(Q_j^T R)`` ``(R, K, 3)`` float64 for rotations ``rot`` ``(R, 3, 3)`` (composed as unit quaternions:
        one matrix-to-quaternion conversion per rotation, not per pair)."""
        q_rot = roma.rotmat_to_unitquat(rot.double())
        return roma.unitquat_to_rotvec(roma.quat_product(self._inverse_quats.to(rot.device)[None], q_rot[:, None]))

    # -- geodesic flow ---------------------------------------------------------------------------
    @staticmethod
    def flow_log_kernel(theta: Tensor, kappa: Tensor) -> Tensor:
        """``log p_t(R | Q)`` w.r.t. Haar at angles ``theta = angle(Q^T R)``, ``-inf`` beyond ``kappa pi``; ``kappa``
        (> 0) broadcasts to ``theta``; float64."""
        theta, kappa = torch.broadcast_tensors(theta.double(), kappa.double())
        inner = (theta / (2 * kappa)).clamp_max(math.pi / 2)
        log_p = (-3 * torch.log(kappa) + 2 * torch.log(torch.sinc(inner / math.pi))
                 - 2 * torch.log(torch.sinc(theta / (2 * math.pi))))
        return torch.where(theta <= kappa * math.pi, log_p, torch.full_like(log_p, -math.inf))

    def flow_posterior(self, rot: Tensor, kappa: Tensor, relative: Tensor | None = None) -> Tensor:
        """``P(Q_j | R_t = rot)`` ``(R, K)`` float64 for rotations ``(R, 3, 3)`` at ``kappa`` ``(R,)`` in ``(0, 1]``
        (``relative``: :meth:`relative` of ``rot``, if already computed)."""
        theta = (self.relative(rot) if relative is None else relative).norm(dim=-1)
        log_w = torch.log(self.weights.to(rot.device)) + self.flow_log_kernel(theta, kappa.double()[:, None])
        outside = torch.isinf(log_w).all(-1, keepdim=True)
        nearest = torch.where(theta == theta.amin(-1, keepdim=True), torch.log(self.weights.to(rot.device)),
                              torch.full_like(theta, -math.inf))
        return torch.softmax(torch.where(outside, nearest, log_w), dim=-1)

    def flow_displacement(self, rot: Tensor, kappa: Tensor) -> Tensor:
        """``sum_j w_j log(R^T Q_j)`` ``(R, 3)`` float64: the exact clean-rotation displacement (velocity times
        ``-kappa / kappa'``) for rotations ``(R, 3, 3)`` at ``kappa`` ``(R,)``."""
        rel = self.relative(rot)
        return -(self.flow_posterior(rot, kappa, rel)[..., None] * rel).sum(1)

    # -- IGSO(3) ---------------------------------------------------------------------------------
    def igso3_posterior(self, rot: Tensor, sigma: Tensor, relative: Tensor | None = None) -> Tensor:
        """``P(Q_j | R_t = rot)`` ``(R, K)`` float64 at noise levels ``sigma`` ``(R,)`` > 0."""
        theta = (self.relative(rot) if relative is None else relative).norm(dim=-1)
        log_f = igso3_log_density(theta, sigma.double()[:, None])
        return torch.softmax(torch.log(self.weights.to(rot.device)) + log_f, dim=-1)

    def igso3_score(self, rot: Tensor, sigma: Tensor) -> Tensor:
        """Exact body-frame score ``grad log sum_j pi_j f(angle(Q_j^T R); sigma)`` ``(R, 3)`` float64."""
        rel = self.relative(rot)
        scores = igso3_score(rel, sigma.double()[:, None])  # (R, K, 3)
        return (self.igso3_posterior(rot, sigma, rel)[..., None] * scores).sum(1)

    # -- marginals and a perfect network ---------------------------------------------------------
    def log_density(self, process: SO3Process, rot: Tensor, t: Tensor) -> Tensor:
        """``log p_t(R)`` w.r.t. Haar ``(R,)`` float64 for rotations ``(R, 3, 3)`` at per-row times ``t`` ``(R,)`` > 0."""
        theta = self.relative(rot).norm(dim=-1)
        if isinstance(process, GeodesicFlowProcess):
            log_kernel = self.flow_log_kernel(theta, process.kappa(t)[:, None])
        elif isinstance(process, IGSO3Process):
            log_kernel = igso3_log_density(theta, process.sigma(t)[:, None])
        else:
            raise TypeError(f"no exact density for {type(process).__name__}")
        return torch.logsumexp(torch.log(self.weights.to(rot.device)) + log_kernel, dim=-1)

    def network(self, process: SO3Process) -> SO3Network:
        """``(x_t, t (B,), index) -> raw output`` of a perfect network for ``process``: the exact displacement
        (``rotvec`` output) or ``R_t exp(displacement)`` (``rotmat``) for the geodesic flow, the exact score over
        :meth:`IGSO3Process.score_scale` for IGSO3. ``x_t`` is ``(B, L, 3, 3)`` or ragged ``(N, 3, 3)``; every
        rotation is an independent draw of the target. Times must be ``> 0``."""

        def rows(x_t: Tensor, t: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
            t_rows = per_sample(t, x_t[..., 0, 0].double(), index).expand(x_t.shape[:-2]).reshape(-1)
            return x_t.reshape(-1, 3, 3), t_rows

        if isinstance(process, GeodesicFlowProcess):
            def clean(x_t: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
                rot, t_rows = rows(x_t, t, index)
                d = self.flow_displacement(rot, process.kappa(t_rows))
                out = d if process.output == "rotvec" else rot.double() @ so3_exp(d)
                return out.to(x_t.dtype).reshape(*x_t.shape[:-2], *out.shape[1:])

            return clean
        if isinstance(process, IGSO3Process):
            def normalised_score(x_t: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
                rot, t_rows = rows(x_t, t, index)
                score = self.igso3_score(rot, process.sigma(t_rows)) / process.score_scale(t_rows)[:, None]
                return score.to(x_t.dtype).reshape(*x_t.shape[:-2], 3)

            return normalised_score
        raise TypeError(f"no exact network for {type(process).__name__}")

    def nearest(self, rot: Tensor) -> tuple[Tensor, Tensor]:
        """The nearest target of every rotation ``(R, 3, 3)`` and the geodesic distance to it: ``(R,)`` long and
        ``(R,)`` float64."""
        angle, label = self.relative(rot).norm(dim=-1).min(dim=-1)
        return label, angle


class SO3MMD:
    """Maximum mean discrepancy of samples to an :class:`SO3Target`, heat kernel of bandwidth ``h``.

    ``MMD^2 = |mean_a k(x_a, .) - sum_j pi_j k(Q_j, .)|^2`` in the kernel's feature space (the V-statistic: a squared
    norm, never negative), with the pairwise kernel between samples summed in chunks of rows.

    Args:
        target: the target.
        bandwidth: ``h`` in radians (the kernel is about ``exp(-angle^2 / (2 h^2))``).
        chunk: rows of samples per block of the pairwise sum.
    """

    def __init__(self, target: SO3Target, bandwidth: float = 0.25, chunk: int = 1024) -> None:
        if not bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
        self.target, self.bandwidth, self.chunk = target, float(bandwidth), int(chunk)
        self._h = torch.tensor(self.bandwidth, dtype=torch.float64)
        self._log_k0 = float(igso3_log_density(torch.zeros((), dtype=torch.float64), self._h))
        q, pi = target.rotations, target.weights
        self._target_term = float(pi @ self.kernel(q, q) @ pi)

    def kernel(self, a: Tensor, b: Tensor) -> Tensor:
        """``k(a_i, b_j)`` ``(n, m)`` float64 for rotations ``a`` ``(n, 3, 3)`` and ``b`` ``(m, 3, 3)`` (the angle of
        ``a_i^T b_j`` from the trace ``sum a_i * b_j = 1 + 2 cos(angle)``)."""
        trace = a.double().reshape(-1, 9) @ b.double().reshape(-1, 9).T
        angle = torch.arccos(((trace - 1) / 2).clamp(-1, 1))
        return torch.exp(igso3_log_density(angle, self._h) - self._log_k0)

    def mmd2(self, samples: Tensor) -> float:
        """Squared MMD (V-statistic) of samples ``(n, 3, 3)`` to the target."""
        x = samples.double().cpu().reshape(-1, 3, 3)
        n = x.shape[0]
        self_term = sum(float(self.kernel(x[i:i + self.chunk], x).sum()) for i in range(0, n, self.chunk)) / n**2
        cross = float((self.kernel(x, self.target.rotations) @ self.target.weights).mean())
        return self_term - 2 * cross + self._target_term

    def __call__(self, samples: Tensor) -> float:
        """MMD of samples ``(n, 3, 3)`` to the target (the square root of :meth:`mmd2`)."""
        return math.sqrt(max(self.mmd2(samples), 0.0))

    def noise_floor(self, n: int) -> float:
        """Root of the expected squared MMD of ``n`` exact draws of the target: ``E MMD^2 = (k(x, x) - E k(x, x')) / n
        = (1 - pi^T K pi) / n`` with ``K`` the kernel between the targets."""
        return math.sqrt((1 - self._target_term) / n)
