"""Processes on the rotation group SO(3): the residue frames of a protein backbone.

A field holds rotation matrices, dense ``(B, L, 3, 3)`` or ragged ``(N, 3, 3)`` with ``index`` ``(N,)``. Time
follows the core's convention: ``t`` ``(B,)`` in ``[0, 1]``, ``t = 0`` the clean data, ``t = 1`` the prior (Haar,
uniform on SO(3)). Tangent vectors are rotation vectors ``(..., 3)`` in the *body frame*: ``v`` at ``R`` is the
direction ``R exp(eps v)``; ``exp`` / ``log`` are roma's ``rotvec_to_rotmat`` / ``rotmat_to_rotvec`` (via unit
quaternions and ``atan2``: stable near angle 0 and pi; ``log`` returns the shortest rotation vector, ``|v| <= pi``).
The angle of ``R`` is ``|log R|``; the Haar measure's angle has density ``(1 - cos w) / pi`` on ``[0, pi]`` with a
uniform axis. Noise always enters on the right, ``R_t = R0 E`` with ``E`` independent of ``R0``, so a global
rotation ``G`` commutes with the corruption draw by draw: ``corrupt(G R0) = G corrupt(R0)``, same targets.

Two models, registered together as ``so3`` with ``kind``:

* ``geodesic_flow`` -- flow matching along geodesics from the uniform prior (FrameFlow, Yim et al. 2023, "Fast
  protein backbone generation with SE(3) flow matching"; FoldFlow, Bose et al. 2024). With ``R1 = R0 U``, ``U``
  Haar (so ``R1`` is Haar and independent of ``R0``), ``R_t = R0 exp(kappa(t) log U)``, the geodesic from ``R0``
  (``t = 0``) to ``R1`` (``t = 1``). Its body-frame velocity is ``v = dR_t/dt = kappa'(t) log U
  = -(kappa'/kappa) log(R_t^T R0)``, so the clean estimate of a velocity is ``R_t exp(-(kappa/kappa') v)``.
  ``schedule``: ``linear`` ``kappa(t) = t``, or ``exp`` ``kappa(t) = (e^{c t} - 1) / (e^c - 1)`` with
  ``c = exp_rate`` (FrameFlow's exponential rotation schedule, ``c = 10``): as ``t`` decreases the rotation moves
  toward ``R0_hat`` at the rate ``kappa'/kappa = c / (1 - e^{-c t})`` times ``log(R_t^T R0_hat)``, FrameFlow's
  constant sampling rate ``c`` (in its time ``1 - t``) with the factor that lands the path exactly on ``R0`` at
  ``t = 0``. ``schedule`` is the training path; ``sample_schedule`` (default: the same) is the ``kappa`` the
  solvers integrate in. FrameFlow trains on the linear path and samples with the exponential rate
  (``schedule: linear``, ``sample_schedule: exp``): rotations then settle early in sampling, while the network
  still reads ``t`` as on the linear path (a deliberate mismatch that FrameFlow found to improve designability);
  with equal schedules a sampler with the exact model reaches the data distribution.
  The network predicts the clean rotation as FrameFlow (``output="rotmat"``: a 3x3 per row, projected by
  ``roma.special_procrustes``; ``output="rotvec"``: the displacement ``log(R_t^T R0_hat)`` ``(..., 3)``).
  Loss (FrameFlow's): ``|log(R_t^T R0_hat) - log(R_t^T R0)|^2 / max(kappa(t), 0.1)^2`` per rotation -- FrameFlow's
  ``|(log_{R_t} R0_hat - log_{R_t} R0) / (1 - min(tau, 0.9))|^2`` in its time ``tau = 1 - t``, i.e. the squared
  error of the vector field in ``kappa``-time, clipped at ``kappa = 0.1``. Solvers ``euler`` (the geodesic step
  ``R_s = R_t exp(((kappa_t - kappa_s) / kappa_t) log(R_t^T R0_hat))``, for ``kappa = t`` FrameFlow's
  ``(t - s) / t``; to ``s = 0`` it lands on ``R0_hat``) and ``heun`` (rates in ``kappa`` averaged).
* ``igso3`` -- score diffusion with the isotropic Gaussian on SO(3) (FrameDiff, Yim et al. 2023, "SE(3) diffusion
  model with application to protein backbone generation"): Brownian motion on SO(3), ``R_t = R0 E``,
  ``E ~ IGSO3(sigma(t))`` with FrameDiff's log-linear ``sigma(t) = log(t e^{sigma_max} + (1 - t) e^{sigma_min})``
  (0.1 and 1.5) for ``t > 0`` and ``sigma(0) = 0`` (``t = 0`` is the clean data; the last solver step lands on the
  clean estimate). IGSO3 is the heat kernel: its density w.r.t. Haar is ``f(w; sigma) = sum_l (2l + 1)
  exp(-l(l+1) sigma^2 / 2) sin((l + 1/2) w) / sin(w / 2)`` of the angle ``w`` (tangent increments ~ N(0, sigma^2 I_3)
  for small sigma). The network outputs the body-frame score of ``p(R_t | R0)`` divided by its root mean square
  ``sqrt(E |score|^2)`` at ``sigma(t)`` and the loss is ``|out - score / sqrt(E |score|^2)|^2`` per rotation:
  FrameDiff's score MSE normalised by the expected squared norm. Solvers ``euler_maruyama`` (the reverse SDE,
  :func:`igso3_euler_maruyama_step`), ``euler`` and ``heun`` (the probability-flow ODE ``dR/dsigma = -sigma score``,
  Euler / Heun in ``sigma``). The prior is Haar, as in FrameDiff; IGSO3(sigma_max = 1.5) is not quite uniform
  (total variation 0.13 from Haar; 0.023 at sigma_max = 2, 1.5e-4 at 3), which biases every IGSO3 sampler by that
  mismatch.

IGSO3 numerics (:func:`igso3_log_density`, :func:`igso3_dlog_density`). Poisson summation turns the series into the
exact sum over the images of the angle, ``f = sqrt(2 pi) sigma^-3 e^{sigma^2/8} / sin(w/2) sum_k (-1)^k (w - 2 pi k)
exp(-(w - 2 pi k)^2 / (2 sigma^2))``. Below ``IGSO3_SWITCH_SIGMA = 1`` the terms ``k = -1, 0, 1`` are used
(FrameDiff's closed-form small-sigma density, computed in log space so that it does not underflow); the omitted
images are below ``3 exp(-4 pi^2 / sigma^2)`` relative (``2e-17`` at the switch). From ``sigma = 1`` on the series
is summed over ``l < IGSO3_SERIES_TERMS = 10``; the first omitted term is below ``21^2 e^{-55} = 6e-22`` while
``f >= 0.13`` there, so the truncation is below ``1e-20`` relative (the two forms agree to 3e-15 in ``log f`` at the
switch; tested). Below the angle ``IGSO3_SMALL_ANGLE = 1e-3`` the odd function ``d log f / dw`` is continued
linearly (relative error below ``1e-6``), where the closed forms lose digits to cancellation. Angles are drawn by
inverse CDF on a grid of ``IGSO3_GRID_POINTS`` angles on ``[0, min(pi, 12 sigma)]`` (trapezoid CDF, linear
interpolation), which also gives ``E |score|^2`` by quadrature.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import roma
import torch
from torch import Tensor

from sciffusion.processes.base import Process, per_sample
from sciffusion.registry import PROCESSES
from sciffusion.rng import StepRandom

IGSO3_SWITCH_SIGMA = 1.0
IGSO3_SERIES_TERMS = 10
IGSO3_SMALL_ANGLE = 1e-3
IGSO3_GRID_POINTS = 2048
SO3Network = Callable[[Tensor, Tensor, Tensor | None], Tensor]
Draw = Callable[[tuple[int, ...]], Tensor]


# ------------------------------------------------------------------------------------------------
# The group
# ------------------------------------------------------------------------------------------------
def so3_exp(rotvec: Tensor) -> Tensor:
    """Rotation vectors ``(..., 3)`` -> rotation matrices ``(..., 3, 3)`` (roma, Rodrigues; first order below 1e-6)."""
    return roma.rotvec_to_rotmat(rotvec)


def so3_log(rot: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> shortest rotation vectors ``(..., 3)``, ``|v| <= pi`` (roma, via quaternions)."""
    return roma.rotmat_to_rotvec(rot)


def rotation_angle(rot: Tensor) -> Tensor:
    """Angle in ``[0, pi]`` of rotations ``(..., 3, 3)`` -> ``(...)`` (the norm of :func:`so3_log`)."""
    return so3_log(rot).norm(dim=-1)


def geodesic(r0: Tensor, r1: Tensor, frac: Tensor) -> Tensor:
    """The point ``frac`` of the way along the shortest geodesic from ``r0`` to ``r1``: ``r0 exp(frac log(r0^T r1))``.

    ``r0``, ``r1``: ``(..., 3, 3)``; ``frac``: broadcastable to ``(..., 1)``; returns ``(..., 3, 3)``.
    """
    return r0 @ so3_exp(frac * so3_log(r0.transpose(-1, -2) @ r1))


def haar_rotvec(normals: Tensor) -> Tensor:
    """Rotation vectors ``(..., 3)`` of Haar-uniform rotations from standard normals ``(..., 4)`` (a normalised
    Gaussian 4-vector is a uniform unit quaternion)."""
    return roma.unitquat_to_rotvec(_unit(normals))


def _unit(v: Tensor) -> Tensor:
    """``v / |v|`` along the last dimension."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def _sample_ids(x: Tensor, index: Tensor | None) -> Tensor:
    """The sample of every rotation of ``x`` ``(..., 3, 3)``: ``index`` when ragged, else the leading index; shape
    ``x.shape[:-2]``."""
    if index is not None:
        return index
    ids = torch.arange(x.shape[0], device=x.device)
    return ids.reshape(-1, *([1] * (x.dim() - 3))).expand(x.shape[:-2])


def _step_draws(rng: StepRandom, device: torch.device, index: Tensor | None = None) -> tuple[Draw, Draw]:
    """float64 normal and uniform draws of a given shape from a training step's :class:`StepRandom` (ragged rows:
    one stream per sample, so that the draws do not depend on how samples are spread over processes)."""
    if index is not None:
        return (lambda shape: rng.randn_rows(index, *shape[1:], dtype=torch.float64, device=device),
                lambda shape: rng.rand_rows(index, *shape[1:], dtype=torch.float64, device=device))
    return (lambda shape: rng.randn(*shape, dtype=torch.float64, device=device),
            lambda shape: rng.rand(*shape, dtype=torch.float64, device=device))


# ------------------------------------------------------------------------------------------------
# IGSO(3)
# ------------------------------------------------------------------------------------------------
def _igso3_images(omega: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``log f`` and ``d log f / dw`` from the images ``k = -1, 0, 1`` (float64, ``0 < w <= pi``)."""
    var = sigma**2
    a_plus = torch.exp(-2 * math.pi * (math.pi - omega) / var)  # image k = 1 relative to k = 0
    a_minus = torch.exp(-2 * math.pi * (math.pi + omega) / var)  # image k = -1
    a_diff = -a_plus * torch.expm1(-4 * math.pi * omega / var)  # a_plus - a_minus without cancellation
    images = omega * (1 - a_plus - a_minus) + 2 * math.pi * a_diff
    d_images = (1 - a_plus - a_minus - (omega - 2 * math.pi) * (2 * math.pi / var) * a_plus
                + (omega + 2 * math.pi) * (2 * math.pi / var) * a_minus)
    log_f = (0.5 * math.log(2 * math.pi) - 3 * torch.log(sigma) + var / 8 - omega**2 / (2 * var)
             + torch.log(images) - torch.log(torch.sin(omega / 2)))
    dlog_f = -omega / var + d_images / images - 0.5 / torch.tan(omega / 2)
    return log_f, dlog_f


def _igso3_series(omega: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``log f`` and ``d log f / dw`` from the character series, ``l < IGSO3_SERIES_TERMS`` (float64, ``0 < w <= pi``)."""
    ell = torch.arange(IGSO3_SERIES_TERMS, dtype=torch.float64, device=omega.device)
    m = ell + 0.5
    coef = (2 * ell + 1) * torch.exp(-ell * (ell + 1) * sigma[..., None] ** 2 / 2)
    w = omega[..., None]
    sin_half, cos_half = torch.sin(w / 2), torch.cos(w / 2)
    f = (coef * torch.sin(m * w)).sum(-1) / sin_half[..., 0]
    df = (coef * (m * torch.cos(m * w) * sin_half - 0.5 * torch.sin(m * w) * cos_half)).sum(-1) / sin_half[..., 0] ** 2
    return torch.log(f), df / f


def _igso3_terms(omega: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Both regimes by ``sigma`` (see the module docstring); ``omega`` and ``sigma`` broadcast, float64."""
    omega, sigma = torch.broadcast_tensors(omega.double(), sigma.double())
    log_f, dlog_f = torch.empty_like(omega), torch.empty_like(omega)
    small = sigma < IGSO3_SWITCH_SIGMA
    for mask, terms in ((small, _igso3_images), (~small, _igso3_series)):
        if bool(mask.any()):
            log_f[mask], dlog_f[mask] = terms(omega[mask], sigma[mask])
    return log_f, dlog_f


def igso3_log_density(omega: Tensor, sigma: Tensor) -> Tensor:
    """``log f(w; sigma)``, the IGSO3 log density w.r.t. the normalised Haar measure at rotation angle ``w`` in
    ``[0, pi]``; ``omega``, ``sigma`` (> 0) broadcast; float64."""
    return _igso3_terms(omega.double().clamp(1e-12, math.pi), sigma)[0]


def igso3_dlog_density(omega: Tensor, sigma: Tensor) -> Tensor:
    """``d log f(w; sigma) / dw`` (float64, broadcast), continued linearly below ``IGSO3_SMALL_ANGLE``."""
    omega = omega.double().clamp(0, math.pi)
    at = omega.clamp_min(IGSO3_SMALL_ANGLE)
    return _igso3_terms(at, sigma)[1] * omega / at


def igso3_score(rotvec: Tensor, sigma: Tensor) -> Tensor:
    """Body-frame score of ``IGSO3(center, sigma)`` at ``R``, given ``rotvec = log(center^T R)`` ``(..., 3)``:
    ``(d log f / dw)(|r|) r / |r|`` (the angle of ``center^T R exp(eps e)`` grows as ``eps r.e / |r|``).
    ``sigma`` broadcasts to ``rotvec.shape[:-1]``; float64."""
    angle = rotvec.double().norm(dim=-1)
    at = angle.clamp_min(IGSO3_SMALL_ANGLE)
    return (_igso3_terms(at.clamp_max(math.pi), sigma)[1] / at)[..., None] * rotvec.double()


def igso3_angle_grid(sigma: Tensor, points: int = IGSO3_GRID_POINTS) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The IGSO3 angle distribution on a grid, per noise level ``sigma`` ``(S,)`` (> 0).

    Returns ``omega`` ``(S, M)`` equally spaced on ``[0, min(pi, 12 sigma)]``, the angle density
    ``f(w) (1 - cos w) / pi`` ``(S, M)``, its trapezoid CDF ``(S, M)`` normalised to end at 1, and ``E |score|^2``
    ``(S,)`` by the trapezoid rule; all float64.
    """
    sigma = sigma.double()
    top = (12 * sigma).clamp_max(math.pi)
    omega = top[:, None] * torch.linspace(0, 1, points, dtype=torch.float64, device=sigma.device)
    log_f = igso3_log_density(omega, sigma[:, None])
    pdf = torch.exp(log_f + torch.log(2 * torch.sin(omega / 2) ** 2) - math.log(math.pi))
    step = (top / (points - 1))[:, None]
    cells = 0.5 * (pdf[:, 1:] + pdf[:, :-1]) * step
    cdf = torch.cat([torch.zeros_like(cells[:, :1]), cells.cumsum(-1)], dim=-1)
    score2 = igso3_dlog_density(omega, sigma[:, None]) ** 2 * pdf
    expected = (0.5 * (score2[:, 1:] + score2[:, :-1]) * step).sum(-1) / cdf[:, -1]
    return omega, pdf, cdf / cdf[:, -1:], expected


def igso3_sample_angle(sigma: Tensor, uniform: Tensor, sample: Tensor, points: int = IGSO3_GRID_POINTS) -> Tensor:
    """IGSO3 angles by inverse CDF: ``sigma`` ``(B,)`` per sample (``0`` gives angle 0), ``uniform`` ``(...)`` in
    ``[0, 1)`` and ``sample`` ``(...)`` the sample of every draw; returns angles ``(...)`` float64.

    The CDF is computed once per distinct ``sigma``; draw ``u`` of sample ``b`` is located in the concatenation of
    the CDFs shifted by their row number (a sorted 1-D sequence) and interpolated linearly within its cell.
    """
    sigma = sigma.double()
    levels, which = torch.unique(sigma.clamp_min(1e-6), return_inverse=True)
    omega, _, cdf, _ = igso3_angle_grid(levels, points)
    row = which[sample]
    keys = (cdf + torch.arange(len(levels), dtype=torch.float64, device=cdf.device)[:, None]).reshape(-1)
    u = uniform.double()
    pos = torch.searchsorted(keys, u + row, right=True) - 1
    pos = torch.minimum(pos.clamp_min(row * points), row * points + points - 2)
    lo, hi = keys[pos] - row, keys[pos + 1] - row
    frac = ((u - lo) / (hi - lo).clamp_min(1e-300)).clamp(0, 1)
    flat = omega.reshape(-1)
    angle = flat[pos] + frac * (flat[pos + 1] - flat[pos])
    return torch.where(sigma[sample] > 0, angle, torch.zeros_like(angle))


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SO3Prediction:
    """What the SO(3) solvers consume.

    ``value``: a body-frame tangent vector at ``rot_t`` ``(..., 3)`` in physical units -- the velocity ``dR_t/dt``
    (geodesic flow) or the score (IGSO3); ``rot_t``: the state it was evaluated at ``(..., 3, 3)``; ``x0_coef``:
    per-row coefficient (broadcast to ``value``) with clean estimate ``rot_t exp(x0_coef value)``.
    """

    value: Tensor
    rot_t: Tensor
    x0_coef: Tensor


class SO3Process(Process):
    """What both SO(3) models share: the space, the Haar prior, the clean estimate, CFG and known-row noise."""

    name = "so3"
    kind: str = ""
    t_min = 0.01  # FrameFlow's and FrameDiff's smallest training time

    def __init__(self, rotation_atol: float = 1e-4) -> None:
        if not rotation_atol > 0:
            raise ValueError(f"rotation_atol must be > 0, got {rotation_atol}")
        self.rotation_atol = float(rotation_atol)

    def validate(self, x: Tensor, field: str) -> None:
        """Rotation matrices: floating point ``(..., 3, 3)`` with at least one leading dimension, finite,
        ``|R^T R - I|_max`` and ``|det R - 1|`` at most ``rotation_atol``."""
        if not torch.is_floating_point(x):
            raise ValueError(f"field '{field}': the so3 process needs floating-point rotation matrices, got {x.dtype}")
        if x.dim() < 3 or tuple(x.shape[-2:]) != (3, 3):
            raise ValueError(f"field '{field}': rotations must be (B, L, 3, 3) or ragged (N, 3, 3), got shape {tuple(x.shape)}")
        if x.numel() == 0:
            return
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"field '{field}': rotation matrices must be finite")
        xd = x.double()
        ortho = (xd.transpose(-1, -2) @ xd - torch.eye(3, dtype=torch.float64, device=x.device)).abs().amax()
        det = (torch.linalg.det(xd) - 1).abs().amax()
        if float(ortho) > self.rotation_atol or float(det) > self.rotation_atol:
            raise ValueError(f"field '{field}': matrices must be rotations (orthonormal, det +1, within "
                             f"{self.rotation_atol:g}); got max |R^T R - I| = {float(ortho):.3g}, "
                             f"max |det R - 1| = {float(det):.3g}")

    def project(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """The nearest rotation in Frobenius norm (``roma.special_procrustes``), ``(..., 3, 3)``."""
        return roma.special_procrustes(x)

    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, index: Tensor | None = None) -> Tensor:
        """Haar-uniform rotations of the field's ``shape`` ``(..., 3, 3)``, drawn on the CPU and moved to ``device``."""
        if len(shape) < 3 or tuple(shape[-2:]) != (3, 3):
            raise ValueError(f"an so3 field has shape (..., 3, 3), got {tuple(shape)}")
        normals = torch.randn((*shape[:-2], 4), generator=generator, dtype=torch.float64)
        return roma.unitquat_to_rotmat(_unit(normals)).to(device=device, dtype=dtype)

    def x0_estimate(self, pred: SO3Prediction) -> Tensor:
        """``rot_t exp(x0_coef value)`` ``(..., 3, 3)``: the geodesic flow's predicted clean rotation; for IGSO3 the
        first-order (Tweedie-like) step ``rot_t exp(sigma^2 score)``."""
        return pred.rot_t @ so3_exp(pred.x0_coef * pred.value)

    def combine_cfg(self, cond: SO3Prediction, uncond: SO3Prediction, scale: float) -> SO3Prediction:
        """``uncond + scale (cond - uncond)`` on the tangent vectors at the shared ``rot_t`` (velocities or scores:
        one tangent space, so the combination is affine there; the clean estimate follows it)."""
        return SO3Prediction(uncond.value + scale * (cond.value - uncond.value), cond.rot_t, cond.x0_coef)

    def noised_known(self, x0: Tensor, t: Tensor, generator: torch.Generator | None, index: Tensor | None = None) -> Tensor:
        """A draw of ``p_t(. | x0)`` for known rotations ``x0`` ``(..., 3, 3)`` (noise drawn on the CPU); ``x0`` itself
        at ``t = 0``."""
        def randn(shape: tuple[int, ...]) -> Tensor:
            return torch.randn(shape, generator=generator, dtype=torch.float64).to(x0.device)

        def rand(shape: tuple[int, ...]) -> Tensor:
            return torch.rand(shape, generator=generator, dtype=torch.float64).to(x0.device)

        return x0 @ so3_exp(self._body_noise(t, _sample_ids(x0, index), randn, rand).to(x0.dtype))

    def _body_noise(self, t: Tensor, sample: Tensor, randn: Draw, rand: Draw) -> Tensor:
        """``log(R0^T R_t)`` ``(..., 3)`` float64 for rows whose samples are ``sample`` ``(...)`` (``t`` ``(B,)``), from the
        float64 standard-normal and uniform draws ``randn(shape)`` / ``rand(shape)``."""
        raise NotImplementedError

    # -- the probability-flow ODE in the process's own time (the ``euler`` and ``heun`` solvers) --------------
    def ode_time(self, t: Tensor) -> Tensor:
        """The variable Euler and Heun integrate in, ``(B,)`` float64 (``kappa`` or ``sigma``)."""
        raise NotImplementedError

    def ode_rate(self, pred: SO3Prediction, t: Tensor, index: Tensor | None = None) -> Tensor:
        """``dR / d ode_time`` in the body frame ``(..., 3)`` for the prediction at time ``t`` ``(B,)`` (``t > 0``)."""
        raise NotImplementedError


class GeodesicFlowProcess(SO3Process):
    """Geodesic flow matching from the uniform prior (FrameFlow; see the module docstring).

    Args:
        schedule: the training path, ``linear`` (``kappa = t``) or ``exp`` (``kappa = (e^{c t} - 1) / (e^c - 1)``,
            ``c = exp_rate``).
        exp_rate: ``c`` of the ``exp`` schedule (FrameFlow: 10).
        sample_schedule: the ``kappa`` the solvers integrate in (``linear`` or ``exp``); None: ``schedule``.
        output: ``rotmat`` (the network outputs a 3x3 per rotation, projected to the clean estimate) or ``rotvec``
            (the displacement ``log(R_t^T R0_hat)`` ``(..., 3)``).
        rotation_atol: tolerance of :meth:`validate`.
    """

    kind = "geodesic_flow"
    default_solver = "euler"

    def __init__(self, schedule: str = "linear", exp_rate: float = 10.0, output: str = "rotmat",
                 rotation_atol: float = 1e-4, sample_schedule: str | None = None) -> None:
        super().__init__(rotation_atol)
        sample_schedule = schedule if sample_schedule is None else sample_schedule
        for option, value in (("schedule", schedule), ("sample_schedule", sample_schedule)):
            if value not in ("linear", "exp"):
                raise ValueError(f"unknown so3 {option} '{value}' (known: linear, exp)")
        if not exp_rate > 0:
            raise ValueError(f"exp_rate must be > 0, got {exp_rate}")
        if output not in ("rotmat", "rotvec"):
            raise ValueError(f"unknown geodesic_flow output '{output}' (known: rotmat, rotvec)")
        self.schedule, self.exp_rate, self.output = schedule, float(exp_rate), output
        self.sample_schedule = sample_schedule

    def kappa(self, t: Tensor, schedule: str | None = None) -> Tensor:
        """The fraction ``kappa(t)`` ``(B,)`` float64 of the way from ``R0`` to ``R1`` on the training path (or on
        ``schedule``): 0 at ``t = 0``, 1 at ``t = 1``."""
        t = t.double()
        if (schedule or self.schedule) == "linear":
            return t
        return torch.expm1(self.exp_rate * t) / math.expm1(self.exp_rate)

    def kappa_rate(self, t: Tensor) -> Tensor:
        """``d kappa / dt`` ``(B,)`` float64 (never 0)."""
        t = t.double()
        if self.schedule == "linear":
            return torch.ones_like(t)
        return self.exp_rate * torch.exp(self.exp_rate * t) / math.expm1(self.exp_rate)

    def _body_noise(self, t: Tensor, sample: Tensor, randn: Draw, rand: Draw) -> Tensor:
        return self.kappa(t)[sample][..., None] * haar_rotvec(randn((*sample.shape, 4)))

    def corrupt(self, x0: Tensor, t: Tensor, rng: StepRandom, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``R_t = R0 exp(kappa(t) log U)``, ``U`` Haar; returns ``R_t`` ``(..., 3, 3)`` and the target displacement
        ``log(R_t^T R0) = -kappa log U`` ``(..., 3)``."""
        rotvec = self._body_noise(t, _sample_ids(x0, index), *_step_draws(rng, x0.device, index))
        return x0 @ so3_exp(rotvec.to(x0.dtype)), (-rotvec).to(x0.dtype)

    def displacement(self, out: Tensor, x_t: Tensor) -> Tensor:
        """The raw network output as the displacement ``log(R_t^T R0_hat)`` ``(..., 3)``."""
        if self.output == "rotvec":
            return out
        return so3_log(x_t.transpose(-1, -2) @ roma.special_procrustes(out))

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, aux: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
        """FrameFlow's loss per rotation ``(...)``: ``|displacement(out) - aux|^2 / max(kappa(t), 0.1)^2``."""
        scale = per_sample(self.kappa(t).clamp_min(0.1), aux, index)
        return (((self.displacement(out, x_t) - aux) / scale) ** 2).sum(-1)

    def predict(self, out: Tensor, x_t: Tensor, t: Tensor, index: Tensor | None = None, path: None = None) -> SO3Prediction:
        """The velocity ``v = -(kappa'/kappa) log(R_t^T R0_hat)``; clean estimate ``R_t exp(-(kappa/kappa') v)``
        (``t > 0``)."""
        d = self.displacement(out, x_t)
        ratio = per_sample(self.kappa(t) / self.kappa_rate(t), d, index)
        return SO3Prediction(-d / ratio, x_t, -ratio)

    def ode_time(self, t: Tensor) -> Tensor:
        """``kappa`` of the sampling schedule."""
        return self.kappa(t, self.sample_schedule)

    def ode_rate(self, pred: SO3Prediction, t: Tensor, index: Tensor | None = None) -> Tensor:
        """``dR/dkappa = -log(R_t^T R0_hat) / kappa`` in the sampling schedule's ``kappa`` (on the training path
        this is ``v / kappa'``)."""
        displacement = pred.x0_coef * pred.value
        return -displacement / per_sample(self.ode_time(t), pred.value, index)


class IGSO3Process(SO3Process):
    """IGSO(3) score diffusion (FrameDiff; see the module docstring).

    Args:
        sigma_min: the noise level as ``t -> 0`` (FrameDiff 0.1).
        sigma_max: the noise level at ``t = 1`` (FrameDiff 1.5).
        rotation_atol: tolerance of :meth:`validate`.
    """

    kind = "igso3"
    default_solver = "euler_maruyama"

    def __init__(self, sigma_min: float = 0.1, sigma_max: float = 1.5, rotation_atol: float = 1e-4) -> None:
        super().__init__(rotation_atol)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def _smooth_sigma(self, t: Tensor) -> Tensor:
        """FrameDiff's ``log(t e^{sigma_max} + (1 - t) e^{sigma_min})`` ``(B,)`` float64 (without the jump at 0)."""
        t = t.double()
        return torch.log(t * math.exp(self.sigma_max) + (1 - t) * math.exp(self.sigma_min))

    def sigma(self, t: Tensor) -> Tensor:
        """Noise level ``(B,)`` float64: the log-linear schedule for ``t > 0``, 0 at ``t = 0``."""
        return torch.where(t > 0, self._smooth_sigma(t), torch.zeros((), dtype=torch.float64, device=t.device))

    def score_scale(self, t: Tensor) -> Tensor:
        """``sqrt(E |score|^2)`` at ``sigma(t)`` ``(B,)`` float64 (at ``t = 0`` the ``sigma_min`` value), computed once
        per distinct time."""
        levels, which = torch.unique(self._smooth_sigma(t), return_inverse=True)
        return igso3_angle_grid(levels)[3].sqrt()[which]

    def _body_noise(self, t: Tensor, sample: Tensor, randn: Draw, rand: Draw) -> Tensor:
        axis = _unit(randn((*sample.shape, 3)))
        return igso3_sample_angle(self.sigma(t), rand(tuple(sample.shape)), sample)[..., None] * axis

    def corrupt(self, x0: Tensor, t: Tensor, rng: StepRandom, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``R_t = R0 E``, ``E ~ IGSO3(sigma(t))``; returns ``R_t`` and the normalised target
        ``score(R_t | R0) / sqrt(E |score|^2)`` ``(..., 3)`` (``t > 0``)."""
        sample = _sample_ids(x0, index)
        rotvec = self._body_noise(t, sample, *_step_draws(rng, x0.device, index))
        target = igso3_score(rotvec, self._smooth_sigma(t)[sample]) / self.score_scale(t)[sample][..., None]
        return x0 @ so3_exp(rotvec.to(x0.dtype)), target.to(x0.dtype)

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, aux: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
        """FrameDiff's normalised score loss per rotation ``(...)``: ``|out - aux|^2``."""
        return ((out - aux) ** 2).sum(-1)

    def predict(self, out: Tensor, x_t: Tensor, t: Tensor, index: Tensor | None = None, path: None = None) -> SO3Prediction:
        """Normalised network output ``(..., 3)`` -> the score ``out sqrt(E |score|^2)``; clean estimate
        ``R_t exp(sigma^2 score)``."""
        score = out * per_sample(self.score_scale(t), out, index)
        return SO3Prediction(score, x_t, per_sample(self.sigma(t) ** 2, out, index))

    def ode_time(self, t: Tensor) -> Tensor:
        return self.sigma(t)

    def ode_rate(self, pred: SO3Prediction, t: Tensor, index: Tensor | None = None) -> Tensor:
        """The probability-flow ODE ``dR/dsigma = -sigma score`` (Brownian motion with variance ``sigma^2``:
        ``dp/d(sigma^2) = Laplacian(p) / 2``)."""
        return -per_sample(self.sigma(t), pred.value, index) * pred.value


@dataclass
class SO3Config:
    """Options of the ``so3`` process; ``schedule``, ``exp_rate``, ``output``, ``sample_schedule`` are geodesic_flow
    options (defaults linear, 10, rotmat, the training schedule), ``sigma_min``, ``sigma_max`` IGSO3 options (defaults 0.1, 1.5)."""

    kind: Literal["geodesic_flow", "igso3"] = "geodesic_flow"
    schedule: Literal["linear", "exp"] | None = None
    exp_rate: float | None = None
    output: Literal["rotmat", "rotvec"] | None = None
    sample_schedule: Literal["linear", "exp"] | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    rotation_atol: float = 1e-4


_KIND_OPTIONS = {"geodesic_flow": ("schedule", "exp_rate", "output", "sample_schedule"), "igso3": ("sigma_min", "sigma_max")}


@PROCESSES.register("so3", config=SO3Config,
                    help="rotations (..., 3, 3): kind=geodesic_flow (FrameFlow) or igso3 (FrameDiff score)")
def _build_so3(kind: str = "geodesic_flow", schedule: str | None = None, exp_rate: float | None = None,
               output: str | None = None, sigma_min: float | None = None, sigma_max: float | None = None,
               rotation_atol: float = 1e-4, sample_schedule: str | None = None) -> SO3Process:
    if kind not in _KIND_OPTIONS:
        raise ValueError(f"unknown so3 kind '{kind}' (known: {', '.join(_KIND_OPTIONS)})")
    options = {"schedule": schedule, "exp_rate": exp_rate, "output": output, "sample_schedule": sample_schedule,
               "sigma_min": sigma_min, "sigma_max": sigma_max}
    given = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(set(given) - set(_KIND_OPTIONS[kind]))
    if foreign:
        raise ValueError(f"so3 kind '{kind}' takes no {', '.join(foreign)}")
    if kind == "igso3":
        return IGSO3Process(rotation_atol=rotation_atol, **given)
    return GeodesicFlowProcess(rotation_atol=rotation_atol, **given)


# ------------------------------------------------------------------------------------------------
# Solver steps: pure functions, per-sample times t, s (B,) with s < t, rotations (..., 3, 3)
# ------------------------------------------------------------------------------------------------
def so3_euler_step(process: SO3Process, x: Tensor, pred: SO3Prediction, t: Tensor, s: Tensor,
                   index: Tensor | None = None) -> Tensor:
    """One geodesic Euler step of the ODE in ``process.ode_time``: ``R_s = R_t exp((tau_s - tau_t) rate_t)``.

    Geodesic flow: ``R_t exp(((kappa_t - kappa_s) / kappa_t) log(R_t^T R0_hat))``. IGSO3 (probability flow):
    ``R_t exp(sigma_t (sigma_t - sigma_s) score)``. Either lands on the clean estimate at ``s = 0``.
    """
    step = per_sample(process.ode_time(s) - process.ode_time(t), pred.value, index)
    return x @ so3_exp(step * process.ode_rate(pred, t, index))


def so3_heun_step(process: SO3Process, x: Tensor, pred: SO3Prediction, pred_next: SO3Prediction, t: Tensor, s: Tensor,
                  index: Tensor | None = None) -> Tensor:
    """Heun's correction ``R_t exp((tau_s - tau_t) (rate_t + rate_s) / 2)``, ``pred_next`` evaluated at the Euler
    point at ``s > 0``. The body-frame rate there is used as a vector at ``R_t`` (left translation); the error of
    that identification is third order in the step, so the step stays second order (RKMK with the Heun tableau)."""
    step = per_sample(process.ode_time(s) - process.ode_time(t), pred.value, index)
    rate = 0.5 * (process.ode_rate(pred, t, index) + process.ode_rate(pred_next, s, index))
    return x @ so3_exp(step * rate)


def igso3_euler_maruyama_step(process: IGSO3Process, x: Tensor, pred: SO3Prediction, t: Tensor, s: Tensor, noise: Tensor,
                              index: Tensor | None = None) -> Tensor:
    """Geodesic Euler-Maruyama step of the reverse SDE (FrameDiff): ``R_s = R_t exp(dv score + sqrt(dv) z)`` with
    ``dv = sigma_t^2 - sigma_s^2 = integral of g^2`` over ``[s, t]`` (``g^2 = d sigma^2 / dt``) and ``z = noise``
    ``(..., 3)`` standard normal; rows with ``s = 0`` get the clean estimate ``R_t exp(sigma_t^2 score)`` instead."""
    var_t, var_s = process.sigma(t) ** 2, process.sigma(s) ** 2
    dv = per_sample(var_t - var_s, pred.value, index)
    keep_noise = per_sample((s > 0).double(), pred.value, index)
    return x @ so3_exp(dv * pred.value + keep_noise * dv.sqrt() * noise)
