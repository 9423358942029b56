"""Processes on the flat torus ``[0, 1)^d``: fractional coordinates of the atoms of a crystal.

Two models, registered together as ``torus`` with ``kind``:

* ``wrapped_normal`` -- score diffusion with a wrapped normal kernel (DiffCSP, Jiao et al. 2023; MatterGen,
  Zeni et al. 2025): ``x_t = wrap(x0 + sigma(t) eps)`` with the variance-exploding exponential schedule
  ``sigma(t) = sigma_min^(1 - t) sigma_max^t`` (DiffCSP: 0.005 and 0.5) for ``t > 0`` and ``sigma(0) = 0``
  (DiffCSP's ``sigma_0 = 0``: the last solver step lands on the clean sample). The network predicts the
  score of ``p(x_t | x0)`` divided by its root mean square ``sqrt(E |score|^2)`` at that ``sigma`` (DiffCSP's
  normalisation: the target has unit variance per coordinate at every noise level). The prior is uniform,
  as in DiffCSP (``WN(sigma_max = 0.5)`` differs from uniform by at most ``2 exp(-2 pi^2 0.25) = 1.4 %`` in
  density per coordinate). Solvers: ``pc`` (DiffCSP's predictor-corrector: the reverse VE SDE ancestral
  predictor, then at the new time a Langevin corrector with step ``step_lr (sigma / sigma_min)^2``; 2 NFE per
  step, 1 on the last, which ends at ``sigma = 0``: DiffCSP's chain without its first corrector on the prior),
  ``euler`` (the probability-flow ODE ``dx / dsigma = -sigma score``, Euler in ``sigma``; 1 NFE per step) and
  ``heun`` on the same ODE in ``sigma`` (Karras et al. 2022; 2 NFE per step, 1 on the last, to ``sigma = 0``).
* ``flow`` -- flat-torus flow matching (FlowMM, Miller et al. 2024): prior uniform on ``[0, 1)^d``,
  ``x_t = wrap(x0 + t delta)`` with ``delta = wrapped(x1 - x0)`` in ``[-1/2, 1/2)^d`` (the shortest wrapped
  difference; for uniform ``x1`` it is uniform, drawn directly), velocity target ``d x_t / dt = delta``.
  Solvers: ``euler`` and ``heun`` (2 NFE per step, 1 on the last: the velocity is singular at ``t = 0``).
  The default time grid is shifted towards the prior, ``t = a u / (1 + (a - 1) u)`` for ``u`` uniform
  (SD3's time shift, ``a = shift = 2``): below the smallest wrapped spacing of the data the conditional boxes
  do not overlap, the exact velocity is linear along each trajectory and an Euler step is exact, so the
  error comes from larger ``t``, where trajectories cross box edges; ``uniform`` is FlowMM's grid.

Time follows the core's convention (``t = 0`` clean, ``t = 1`` the prior). A field is dense ``(B, ..., d)`` or
ragged ``(N, d)`` with ``index`` ``(N,)``. Every step wraps its result into ``[0, 1)``.

The wrapped normal density and score are sums over the lattice images ``x + k``, ``|k| <= K`` per
coordinate, with ``K`` the smallest integer for which the truncation bound of
:func:`wrapped_normal_truncation_bound` is at most ``WRAPPED_NORMAL_TOLERANCE = 1e-10`` at ``sigma_max``
(``K = 4`` for ``sigma_max = 0.5``): both the relative error of the density and ``sigma`` times the error of
the score stay below it for every ``sigma <= sigma_max``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from sciffusion.processes.base import Process, per_sample
from sciffusion.registry import PROCESSES
from sciffusion.rng import StepRandom

WRAPPED_NORMAL_TOLERANCE = 1e-10
TorusNetwork = Callable[[Tensor, Tensor, Tensor | None], Tensor]


# ------------------------------------------------------------------------------------------------
# The torus and the wrapped normal
# ------------------------------------------------------------------------------------------------
def wrap(x: Tensor) -> Tensor:
    """Coordinates modulo 1, in ``[0, 1)`` (also where ``x - floor(x)`` rounds up to 1 for a tiny negative ``x``)."""
    y = x - torch.floor(x)
    return torch.where(y >= 1, torch.zeros_like(y), y)


def wrapped_difference(x: Tensor) -> Tensor:
    """The shortest representative of ``x`` modulo 1, in ``[-1/2, 1/2)`` (same shape)."""
    return x - torch.floor(x + 0.5)


def wrapped_normal_truncation_bound(sigma: float, n_images: int) -> float:
    """Bound on the error of summing the images ``|k| <= n_images`` only, for any ``x``.

    With ``x`` reduced to ``[-1/2, 1/2)`` the omitted images lie at distance ``>= K + 1/2 + j`` (``j >= 0``, two
    per ``j``) and the ``k = 0`` term is at least ``exp(-1/(8 sigma^2))``; writing
    ``g_j = exp(-((K + 1/2 + j)^2 - 1/4) / (2 sigma^2))``, the density's relative error is at most
    ``2 sum_j g_j`` and ``sigma |score error|`` at most ``(2 / sigma) sum_j (2K + 1 + j) g_j``. Returns the larger.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    k = n_images
    terms = [(2 * k + 1 + j, math.exp(-((k + 0.5 + j) ** 2 - 0.25) / (2 * sigma**2))) for j in range(64)]
    density = 2 * sum(g for _, g in terms)
    score = 2 / sigma * sum(c * g for c, g in terms)
    return max(density, score)


def wrapped_normal_images(sigma_max: float, tolerance: float = WRAPPED_NORMAL_TOLERANCE) -> int:
    """Smallest number of images ``K`` per side whose truncation bound at ``sigma_max`` is ``<= tolerance``
    (the bound grows with ``sigma``, so ``K`` holds for every smaller ``sigma``)."""
    k = 0
    while wrapped_normal_truncation_bound(sigma_max, k) > tolerance:
        k += 1
    return k


def wrapped_normal(x: Tensor, sigma: Tensor, n_images: int) -> tuple[Tensor, Tensor]:
    """``log WN(x; sigma) = log sum_k N(x + k; 0, sigma^2)`` and the score ``d/dx log WN = -sum_k r_k (x + k) / sigma^2``
    (``r_k`` the images' posterior weights) per coordinate, over the images ``|k| <= n_images``; ``sigma`` (> 0)
    broadcasts to ``x``; both shaped like ``x``.

    With ``u = wrapped(x)`` in ``[-1/2, 1/2)`` the ``k = 0`` image is the nearest, and relative to it image ``k``
    has weight ``exp(-k (k + 2u) / (2 sigma^2)) <= 1`` (its exponent is never positive, so nothing overflows).
    """
    sigma = torch.broadcast_to(sigma, x.shape)
    u = wrapped_difference(x)
    half_precision = 1 / (2 * sigma**2)
    k = torch.arange(-n_images, n_images + 1, dtype=x.dtype, device=x.device)
    k = k[k != 0]
    terms = torch.exp(-k * (k + 2 * u[..., None]) * half_precision[..., None])  # (..., 2K), image 0's weight is 1
    total = 1 + terms.sum(-1)
    log_density = torch.log(total) - u**2 * half_precision - 0.5 * torch.log(2 * math.pi * sigma**2)
    return log_density, -(u + (terms * k).sum(-1) / total) / sigma**2


def wrapped_normal_score(x: Tensor, sigma: Tensor, n_images: int) -> Tensor:
    """``d/dx log WN(x; sigma)`` per coordinate (see :func:`wrapped_normal`)."""
    return wrapped_normal(x, sigma, n_images)[1]


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TorusPrediction:
    """What the torus solvers consume.

    ``value``: the network's field in physical units (the score for the wrapped normal, the velocity
    ``d x_t / dt`` for the flow), shaped like the field; ``x_t``: the state it was evaluated at; ``x0_coef``:
    per-row coefficient (broadcast to the field) with clean estimate ``wrap(x_t + x0_coef * value)``.
    """

    value: Tensor
    x_t: Tensor
    x0_coef: Tensor


class TorusProcess(Process):
    """What both torus models share: the space ``[0, 1)^d``, the uniform prior, the clean estimate and CFG."""

    name = "torus"
    kind: str = ""

    def validate(self, x: Tensor, field: str) -> None:
        """Fractional coordinates: a floating-point tensor ``(B, ..., d)`` or ``(N, d)``, finite, in ``[0, 1)``."""
        if not torch.is_floating_point(x):
            raise ValueError(f"field '{field}': the torus process needs floating-point fractional coordinates, got {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"field '{field}': fractional coordinates must be (B, ..., d) or (N, d), got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"field '{field}': fractional coordinates must be finite")
        if x.numel() and (bool((x < 0).any()) or bool((x >= 1).any())):
            raise ValueError(f"field '{field}': fractional coordinates must lie in [0, 1), got values in "
                             f"[{float(x.min()):.6g}, {float(x.max()):.6g}] (wrap them with x % 1)")

    def project(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """Wrap into ``[0, 1)``."""
        return wrap(x)

    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, index: Tensor | None = None) -> Tensor:
        """Uniform on ``[0, 1)^d``, drawn on the CPU in ``dtype`` and moved to ``device``; ``shape`` is the field's."""
        return wrap(torch.rand(shape, generator=generator, dtype=dtype).to(device))

    def x0_estimate(self, pred: TorusPrediction) -> Tensor:
        """``wrap(x_t + x0_coef * value)``: the posterior mean of the clean sample lifted to the covering space
        ``R^d`` (Tweedie's formula for the score, ``x_t - t E[delta | x_t]`` for the velocity), wrapped."""
        return wrap(pred.x_t + pred.x0_coef * pred.value)

    def combine_cfg(self, cond: TorusPrediction, uncond: TorusPrediction, scale: float) -> TorusPrediction:
        """``uncond + scale (cond - uncond)`` on the predicted score / velocity (both are tangent vectors of the
        flat torus, so the combination is affine; the clean estimate follows it in the covering space)."""
        return TorusPrediction(uncond.value + scale * (cond.value - uncond.value), cond.x_t, cond.x0_coef)

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, aux: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
        """Mean squared error per entry (shaped like the field) against the target ``aux`` from :meth:`corrupt`."""
        return (out - aux) ** 2

    def posterior_variance(self, t: Tensor) -> Tensor:
        """A per-coordinate scale ``(B,)`` of the spread of the clean sample given ``x_t``, used by gradient guidance
        to size its steps (as ``sigma^2 / (alpha^2 + sigma^2)`` for Gaussian fields): the variance of the
        corruption's displacement, capped at ``1/12``, that of a uniform coordinate."""
        raise NotImplementedError

    def shift_x0(self, pred: TorusPrediction, shift: Tensor) -> TorusPrediction:
        """The prediction whose clean estimate is moved by ``shift`` (shaped like the field) in the covering space:
        ``value + shift / x0_coef`` (where ``x0_coef`` is 0, at ``t = 0``, nothing moves)."""
        coef = pred.x0_coef.expand_as(pred.value)
        moved = torch.where(coef != 0, pred.value + shift / torch.where(coef != 0, coef, torch.ones_like(coef)), pred.value)
        return TorusPrediction(moved, pred.x_t, pred.x0_coef)


class WrappedNormalProcess(TorusProcess):
    """Wrapped normal score diffusion on the torus (DiffCSP, Jiao et al. 2023; MatterGen, Zeni et al. 2025).

    Args:
        sigma_min: the noise level as ``t -> 0`` (DiffCSP 0.005).
        sigma_max: the noise level at ``t = 1`` (DiffCSP 0.5).
        step_lr: the Langevin corrector's step at ``sigma_min``; at ``sigma`` it is ``step_lr (sigma / sigma_min)^2``
            (DiffCSP, after Song & Ermon 2019; DiffCSP's value 1e-5).
    """

    kind = "wrapped_normal"
    default_solver = "pc"

    def __init__(self, sigma_min: float = 0.005, sigma_max: float = 0.5, step_lr: float = 1e-5) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        if step_lr <= 0:
            raise ValueError(f"step_lr must be > 0, got {step_lr}")
        self.sigma_min, self.sigma_max, self.step_lr = float(sigma_min), float(sigma_max), float(step_lr)
        self.n_images = wrapped_normal_images(self.sigma_max)
        self._knots = torch.linspace(0.0, 1.0, 257, dtype=torch.float64)
        self._sigma2_fisher = self._fisher_information(self._smooth_sigma(self._knots)) * self._smooth_sigma(self._knots) ** 2

    def _smooth_sigma(self, t: Tensor) -> Tensor:
        """``sigma_min^(1 - t) sigma_max^t`` in float64 (the schedule without the jump to 0 at ``t = 0``)."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t.double()

    def sigma(self, t: Tensor) -> Tensor:
        """Noise level ``(B,)`` float64: the exponential schedule for ``t > 0`` and 0 at ``t = 0``."""
        return torch.where(t > 0, self._smooth_sigma(t), torch.zeros((), dtype=torch.float64, device=t.device))

    def _fisher_information(self, sigma: Tensor) -> Tensor:
        """``E |d/dx log WN(x; sigma)|^2`` per coordinate for ``x ~ WN(sigma)``, ``(S,)`` for ``sigma`` ``(S,)``:
        ``E_z[score(sigma z)^2]`` with ``z ~ N(0, 1)`` (the score is periodic, so wrapping ``sigma z`` changes
        nothing), by the trapezoid rule on ``[-12, 12]`` with spacing 0.01."""
        z = torch.linspace(-12.0, 12.0, 2401, dtype=torch.float64)
        weight = torch.exp(-z**2 / 2) / math.sqrt(2 * math.pi) * (z[1] - z[0])
        score = wrapped_normal_score(sigma[:, None] * z, sigma[:, None], self.n_images)
        return (score**2 * weight).sum(-1)

    def score_scale(self, t: Tensor) -> Tensor:
        """``sqrt(E |score|^2)`` at ``sigma(t)`` ``(B,)`` float64, the unit the network's output is measured in
        (``sigma^2 E |score|^2`` tabulated on 257 times, linear in between; at ``t = 0`` the ``sigma_min`` value)."""
        knots = self._knots.to(t.device)
        table = self._sigma2_fisher.to(t.device)
        pos = t.double().clamp(0, 1) * (len(knots) - 1)
        lo = pos.floor().clamp(max=len(knots) - 2).long()
        frac = pos - lo
        sigma2_fisher = table[lo] + frac * (table[lo + 1] - table[lo])
        return sigma2_fisher.sqrt() / self._smooth_sigma(t)

    def corrupt(self, x0: Tensor, t: Tensor, rng: StepRandom, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x_t = wrap(x0 + sigma eps)`` and the normalised target ``score_WN(sigma eps; sigma) / sqrt(E |score|^2)``
        (at ``sigma = 0`` its limit ``-eps``)."""
        sigma = per_sample(self.sigma(t), x0, index)
        eps = rng.randn_field(x0, index)
        score = wrapped_normal_score(sigma * eps, sigma.clamp_min(self.sigma_min), self.n_images)
        target = torch.where(sigma > 0, score / per_sample(self.score_scale(t), x0, index), -eps)
        return wrap(x0 + sigma * eps), target

    def predict(self, out: Tensor, x_t: Tensor, t: Tensor, index: Tensor | None = None, path: None = None) -> TorusPrediction:
        """Normalised network output -> the score ``out * sqrt(E |score|^2)``; clean estimate ``x_t + sigma^2 score``
        (no path table: ``path`` is unused)."""
        score = out * per_sample(self.score_scale(t), x_t, index)
        return TorusPrediction(score, x_t, per_sample(self.sigma(t) ** 2, x_t, index))

    def posterior_variance(self, t: Tensor) -> Tensor:
        """``min(sigma(t)^2, 1/12)`` ``(B,)``."""
        return self.sigma(t).clamp(max=12 ** -0.5).to(t.dtype if t.is_floating_point() else torch.float32) ** 2

    def noised_known(self, x0: Tensor, t: Tensor, generator: torch.Generator | None, index: Tensor | None = None) -> Tensor:
        """``wrap(x0 + sigma(t) z)``, ``z`` standard normal drawn on the CPU."""
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return wrap(x0 + per_sample(self.sigma(t), x0, index) * z)


class TorusFlowProcess(TorusProcess):
    """Flat-torus flow matching (FlowMM, Miller et al. 2024; Riemannian flow matching, Chen & Lipman 2024).

    Args:
        shift: the default (``shifted``) time grid's shift ``a`` (1 is the uniform grid).
    """

    kind = "flow"
    default_solver = "euler"
    default_grid = "shifted"

    def __init__(self, shift: float = 2.0) -> None:
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        self.shift = float(shift)

    def time_grid(self, steps: int, kind: str | None = None) -> Tensor:
        """Decreasing times ``(steps + 1,)`` float64 from 1 to 0: ``uniform``, or ``shifted`` (the default),
        ``a u / (1 + (a - 1) u)`` of the uniform ``u`` with ``a = shift``."""
        kind = kind or self.default_grid
        if kind not in ("uniform", "shifted"):
            raise ValueError(f"unknown time grid '{kind}' for the torus flow process (known: shifted, uniform)")
        u = super().time_grid(steps, "uniform")
        return u if kind == "uniform" else self.shift * u / (1 + (self.shift - 1) * u)

    def corrupt(self, x0: Tensor, t: Tensor, rng: StepRandom, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x_t = wrap(x0 + t delta)`` with ``delta`` uniform on ``[-1/2, 1/2)^d`` (the wrapped difference of a
        uniform ``x1`` and ``x0``); returns ``x_t`` and the velocity target ``delta``."""
        if index is None:
            delta = rng.rand(*x0.shape, dtype=x0.dtype, device=x0.device) - 0.5
        else:  # one stream per sample (layout-independent under DDP)
            delta = rng.rand_rows(index, *x0.shape[1:], dtype=x0.dtype, device=x0.device) - 0.5
        return wrap(x0 + per_sample(t, x0, index) * delta), delta

    def predict(self, out: Tensor, x_t: Tensor, t: Tensor, index: Tensor | None = None, path: None = None) -> TorusPrediction:
        """The network predicts the velocity; clean estimate ``x_t - t v`` (no path table: ``path`` is unused)."""
        return TorusPrediction(out, x_t, -per_sample(t, x_t, index))

    def posterior_variance(self, t: Tensor) -> Tensor:
        """``t^2 / 12`` ``(B,)``: the variance of ``t delta`` for ``delta`` uniform on ``[-1/2, 1/2)``."""
        return t.clamp(0, 1) ** 2 / 12

    def noised_known(self, x0: Tensor, t: Tensor, generator: torch.Generator | None, index: Tensor | None = None) -> Tensor:
        """``wrap(x0 + t delta)``, ``delta`` uniform on ``[-1/2, 1/2)^d`` drawn on the CPU."""
        delta = torch.rand(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device) - 0.5
        return wrap(x0 + per_sample(t, x0, index) * delta)


@dataclass
class TorusConfig:
    kind: Literal["flow", "wrapped_normal"] = "flow"
    sigma_min: float | None = None  # wrapped_normal only (default 0.005)
    sigma_max: float | None = None  # wrapped_normal only (default 0.5)
    step_lr: float | None = None  # wrapped_normal only (default 1e-5)
    shift: float | None = None  # flow only (default 2.0)


_TORUS_OPTIONS = {"wrapped_normal": ("sigma_min", "sigma_max", "step_lr"), "flow": ("shift",)}


@PROCESSES.register("torus", config=TorusConfig,
                    help="fractional coordinates on [0,1)^d: kind=flow (FlowMM) or wrapped_normal (DiffCSP score)")
def _build_torus(kind: str = "flow", sigma_min: float | None = None, sigma_max: float | None = None,
                 step_lr: float | None = None, shift: float | None = None) -> TorusProcess:
    if kind not in _TORUS_OPTIONS:
        raise ValueError(f"unknown torus kind '{kind}' (known: flow, wrapped_normal)")
    options = {"sigma_min": sigma_min, "sigma_max": sigma_max, "step_lr": step_lr, "shift": shift}
    given = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(set(given) - set(_TORUS_OPTIONS[kind]))
    if foreign:
        raise ValueError(f"torus kind '{kind}' takes no {', '.join(foreign)} (it takes: {', '.join(_TORUS_OPTIONS[kind])})")
    return WrappedNormalProcess(**given) if kind == "wrapped_normal" else TorusFlowProcess(**given)


# ------------------------------------------------------------------------------------------------
# Solver steps: pure functions, per-sample times t, s (B,), every result wrapped into [0, 1)
# ------------------------------------------------------------------------------------------------
def flow_euler_step(x: Tensor, pred: TorusPrediction, t: Tensor, s: Tensor, index: Tensor | None = None) -> Tensor:
    """``wrap(x + (s - t) v)`` on the flat torus (the exponential map is a wrapped translation)."""
    return wrap(x + per_sample(s - t, x, index) * pred.value)


def flow_heun_step(x: Tensor, pred: TorusPrediction, pred_next: TorusPrediction, t: Tensor, s: Tensor,
                   index: Tensor | None = None) -> Tensor:
    """Heun's correction: ``wrap(x + (s - t) (v_t + v_s) / 2)``, ``pred_next`` evaluated at the Euler point at ``s``
    (tangent spaces of the flat torus are all one space, so the two velocities add as they are)."""
    return wrap(x + per_sample(s - t, x, index) * 0.5 * (pred.value + pred_next.value))


def wrapped_normal_ode_step(process: WrappedNormalProcess, x: Tensor, pred: TorusPrediction, t: Tensor, s: Tensor,
                            index: Tensor | None = None) -> Tensor:
    """Euler in ``sigma`` on the probability-flow ODE ``dx / dsigma = -sigma score``:
    ``wrap(x + sigma_t (sigma_t - sigma_s) score)`` (to ``sigma_s = 0`` it is Tweedie's denoised estimate)."""
    sigma_t, sigma_s = process.sigma(t), process.sigma(s)
    return wrap(x + per_sample(sigma_t * (sigma_t - sigma_s), x, index) * pred.value)


def wrapped_normal_heun_step(process: WrappedNormalProcess, x: Tensor, pred: TorusPrediction, pred_next: TorusPrediction,
                             t: Tensor, s: Tensor, index: Tensor | None = None) -> Tensor:
    """Heun's correction in ``sigma`` on ``dx / dsigma = -sigma score`` (Karras et al. 2022, Alg. 1), ``pred_next``
    evaluated at the Euler point at ``s`` (``sigma_s > 0``):
    ``wrap(x + (sigma_t - sigma_s) (sigma_t score_t + sigma_s score_s) / 2)``."""
    sigma_t, sigma_s = process.sigma(t), process.sigma(s)
    half_step = per_sample((sigma_t - sigma_s) / 2, x, index)
    return wrap(x + half_step * (per_sample(sigma_t, x, index) * pred.value + per_sample(sigma_s, x, index) * pred_next.value))


def wrapped_normal_predictor_step(process: WrappedNormalProcess, x: Tensor, pred: TorusPrediction, t: Tensor, s: Tensor,
                                  noise: Tensor, index: Tensor | None = None) -> Tensor:
    """Reverse VE SDE ancestral predictor (Song et al. 2021; DiffCSP):
    ``wrap(x + (sigma_t^2 - sigma_s^2) score + sqrt(sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2) z)``."""
    var_t, var_s = process.sigma(t) ** 2, process.sigma(s) ** 2
    std = (var_s * (var_t - var_s) / var_t).clamp_min(0).sqrt()
    return wrap(x + per_sample(var_t - var_s, x, index) * pred.value + per_sample(std, x, index) * noise)


def wrapped_normal_langevin_step(process: WrappedNormalProcess, x: Tensor, pred: TorusPrediction, t: Tensor,
                                 noise: Tensor, index: Tensor | None = None) -> Tensor:
    """Langevin corrector at fixed ``t`` (DiffCSP's step rule, after Song & Ermon 2019): step
    ``eps = step_lr (sigma_t / sigma_min)^2``, ``wrap(x + eps score + sqrt(2 eps) z)``, ``pred`` evaluated at ``(x, t)``."""
    step = process.step_lr * (process.sigma(t) / process.sigma_min) ** 2
    return wrap(x + per_sample(step, x, index) * pred.value + per_sample((2 * step).sqrt(), x, index) * noise)
