"""Gaussian probability paths ``x_t = alpha(t) x0 + sigma(t) eps`` on continuous time ``t in [0, 1]``.

``t = 0`` is clean data, ``t = 1`` the prior. Every method takes a per-sample time ``t`` of shape ``(B,)``.

* :class:`VPProcess`   — variance preserving (DDPM): discrete beta tables (linear, cosine, quad, custom),
  optional zero-terminal-SNR rescale. Discrete index ``k`` (0-based, as in diffusers) is ``t = (k + 1) / T``.
* :class:`VEProcess`   — variance exploding, ``alpha = 1``, ``sigma = sigma_max * t``.
* :class:`EDMProcess`  — VE with Karras et al. (2022) preconditioning (c_skip, c_out, c_in, c_noise).
* :class:`FlowProcess` — linear flow matching / rectified flow, ``alpha = 1 - t``, ``sigma = t``.

A process also says how a network sees its input (``net_input``), how the raw network output becomes a
prediction (``net_output``), which time grids it offers to solvers, how training times are drawn, and in
which coordinates the probability-flow ODE is integrated by Euler / Heun (``ode_coords_of``: straight-line
coordinates on VP and flow paths, sigma on VE / EDM).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
import dataclasses
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from sciffusion.processes.base import Process, segment_mean
from sciffusion.processes.parametrization import PREDICTION_TYPES, Coefficients, Prediction, from_x0_eps, to_x0_eps
from sciffusion.processes.weighting import loss_weight
from sciffusion.registry import PROCESSES
from sciffusion.rng import StepRandom


def broadcast(c: Tensor, like: Tensor, index: Tensor | None = None) -> Tensor:
    """Broadcast per-sample values ``c`` (B,) to a field ``like``.

    Dense fields are ``(B, ...)``; ragged fields are ``(N, ...)`` with ``index`` (N,) giving each row's sample.
    """
    if index is not None:
        c = c[index]
    return c.reshape(c.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


def shared_time(t: Tensor, index: Tensor | None) -> Tensor:
    """``t[:1]`` when a dense field's batch shares one time as an expanded scalar (as the sampling loop passes
    it), so that per-sample values are computed once and broadcast as ``(1, 1, ...)``."""
    return t[:1] if index is None and t.dim() == 1 and t.shape[0] > 1 and t.stride(0) == 0 else t


@dataclass(frozen=True)
class LossWeighting:
    """How the Gaussian denoising loss is weighted over time (see :mod:`sciffusion.processes.weighting`)."""

    name: str = "uniform"
    min_snr_gamma: float = 5.0


class GaussianProcess(Process):
    """Base class: subclasses define ``alpha``, ``sigma`` and their time derivatives.

    With ``zero_com`` the field is a set of points per sample (``(N, d)`` ragged rows with a sample index,
    or dense ``(B, n, d)``) living in the subspace of zero centre of mass (EDM, Hoogeboom et al. 2022):
    training noise, the prior and every sampling step are projected onto it, and the loss is normalised by
    its ``(n - 1) d`` degrees of freedom per sample instead of ``n d``.
    """

    name: str = "gaussian"
    prediction: str = "eps"
    t_min: float = 1e-5  # smallest training time
    default_grid: str = "uniform"
    default_time_sampler: str = "uniform"
    default_solver: str = "dpmpp_2m"
    zero_com: bool = False

    def __init__(self, prediction: str, zero_com: bool = False) -> None:
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type '{prediction}' (known: {', '.join(PREDICTION_TYPES)})")
        self.prediction = prediction
        self.zero_com = bool(zero_com)

    def _check_prediction_at_prior(self) -> None:
        """Refuse ``eps`` / ``score`` on a path with ``alpha(1) = 0`` (flow, zero terminal SNR): there the clean
        sample ``x0 = (x_t - sigma eps) / alpha`` is 0 / 0, so a sampler's first step would be NaN."""
        alpha, _ = self.alpha_sigma(torch.ones(1, dtype=torch.float64))
        if self.prediction in ("eps", "score") and float(alpha) == 0.0:
            raise ValueError(f"prediction '{self.prediction}' cannot give the clean sample at t = 1 on the {self.name} path "
                             f"(alpha(1) = 0); use velocity, v or x0")

    # -- path -----------------------------------------------------------------------------------
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``alpha(t), sigma(t)``, each shaped like ``t``."""
        raise NotImplementedError

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``d alpha / dt, d sigma / dt``, each shaped like ``t``."""
        raise NotImplementedError

    def coefficients(self, t: Tensor, like: Tensor, index: Tensor | None = None) -> Coefficients:
        """Path coefficients at ``t`` (B,), broadcast to the field ``like`` (computed afresh: the sampling loop
        computes a whole grid's once, :meth:`path_table`, and hands each step's in explicitly)."""
        t = shared_time(t, index)
        alpha, sigma = self.alpha_sigma(t)
        d_alpha, d_sigma = self.derivatives(t)
        return Coefficients(*(broadcast(v, like, index) for v in (alpha, sigma, d_alpha, d_sigma)))

    def path_table(self, grid: Tensor, like: Tensor, index: Tensor | None, batch: int) -> list[Coefficients]:
        """:meth:`coefficients` at every time of a grid ``(T,)`` for a batch sharing each time, in one
        evaluation of the path: dense fields get ``(1, 1, ...)`` tensors, ragged rows their sample's value."""
        values = (*self.alpha_sigma(grid), *self.derivatives(grid))
        if index is None:
            shaped = [v.to(like.dtype).reshape(-1, *([1] * like.dim())).unbind(0) for v in values]
            return [Coefficients(*per_time) for per_time in zip(*shaped)]
        rows = torch.zeros(len(index), dtype=torch.long, device=index.device)
        return [Coefficients(*(broadcast(v[i:i + 1][rows], like) for v in values)) for i in range(len(grid))]

    def log_snr(self, t: Tensor) -> Tensor:
        """``log(alpha^2 / sigma^2)`` (B,)."""
        alpha, sigma = self.alpha_sigma(t)
        return 2 * (torch.log(alpha) - torch.log(sigma))

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
        """Sample ``x_t`` given clean ``x0`` and noise ``eps`` (both shaped like the field)."""
        alpha, sigma = self.alpha_sigma(t)
        return broadcast(alpha, x0, index) * x0 + broadcast(sigma, x0, index) * eps

    def prior_scale(self) -> float:
        """Standard deviation of the prior at ``t = 1`` (per entry, for unit-scale data)."""
        alpha, sigma = self.alpha_sigma(torch.ones(1, dtype=torch.float64))
        return float(torch.sqrt(alpha**2 + sigma**2))

    # -- the Process protocol -------------------------------------------------------------------
    def validate(self, x: Tensor, field: str) -> None:
        if not torch.is_floating_point(x):
            raise ValueError(f"field '{field}': the {self.name} process needs a floating-point tensor, got {x.dtype}")
        if self.zero_com and x.dim() < 2:
            raise ValueError(f"field '{field}': zero-CoM positions need rows of coordinates (N, d) or (B, n, d), "
                             f"got shape {tuple(x.shape)}")

    def project(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """Zero centre of mass per sample when ``zero_com`` (rows by ``index``, or axis 1 of a dense field)."""
        if not self.zero_com:
            return x
        if index is None:
            return x - x.mean(dim=1, keepdim=True)
        return x - segment_mean(x, index, int(index.max()) + 1 if len(index) else 0)[index]

    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, index: Tensor | None = None) -> Tensor:
        noise = torch.randn(shape, generator=generator, dtype=dtype) * self.prior_scale()
        return self.project(noise.to(device), None if index is None else index.to(device))

    def corrupt(self, x0: Tensor, t: Tensor, rng: StepRandom, index: Tensor | None = None,
                noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x_t, eps)``: ``eps`` drawn from ``rng`` unless given (minibatch OT pairs it), projected."""
        eps = self.project(rng.randn_field(x0, index) if noise is None else noise, index)
        return self.add_noise(self.project(x0, index), eps, t, index), eps

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, aux: Tensor, t: Tensor, index: Tensor | None = None,
             weighting: LossWeighting = LossWeighting()) -> Tensor:
        """Weighted squared error of the prediction against its target, per entry (shaped like the field); with
        ``zero_com`` scaled by ``n / (n - 1)`` so that a per-sample mean counts the subspace's dimensions."""
        c = self.coefficients(t, x0, index)
        target = from_x0_eps(self.project(x0, index), aux, self.prediction, c)
        sigma_data = getattr(self, "sigma_data", 0.5)
        w = loss_weight(weighting.name, self.prediction, c, weighting.min_snr_gamma, sigma_data)
        err = w * (self.net_output(out, x_t, t, index) - target) ** 2
        if self.zero_com:
            err = err * _dof_correction(x0, index)
        return err

    def predict(self, out: Tensor, x_t: Tensor, t: Tensor, index: Tensor | None = None,
                path: Coefficients | None = None) -> Prediction:
        """``Prediction(x0, eps)`` from the raw network output (``path``: this time's coefficients, if known)."""
        return self.to_x0_eps(self.net_output(out, x_t, t, index), x_t, t, index, path)

    def x0_estimate(self, pred: Prediction) -> Tensor:
        return pred.x0

    def combine_cfg(self, cond: Prediction, uncond: Prediction, scale: float) -> Prediction:
        """Affine in ``(x0, eps)``, hence the same in every parametrization."""
        return Prediction(x0=uncond.x0 + scale * (cond.x0 - uncond.x0), eps=uncond.eps + scale * (cond.eps - uncond.eps))

    def noised_known(self, x0: Tensor, t: Tensor, generator: torch.Generator | None, index: Tensor | None = None) -> Tensor:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return self.add_noise(x0, self.project(noise, index), t.to(x0.dtype), index)

    # -- network interface ----------------------------------------------------------------------
    def net_input(self, x_t: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
        """What the network sees of ``x_t``. Identity except for EDM (``c_in x_t``)."""
        return x_t

    def time_input(self, t: Tensor) -> Tensor:
        """The time input ``(B,)`` of the network. Identity except for EDM (``c_noise``)."""
        return t

    def net_output(self, raw: Tensor, x_t: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
        """Raw network output -> prediction of type ``self.prediction``. Identity except for EDM."""
        return raw

    def to_x0_eps(self, pred: Tensor, x_t: Tensor, t: Tensor, index: Tensor | None = None,
                  c: Coefficients | None = None) -> Prediction:
        return to_x0_eps(pred, self.prediction, x_t, self.coefficients(t, x_t, index) if c is None else c)

    # -- sampling -------------------------------------------------------------------------------
    def time_grid(self, steps: int, kind: str | None = None, rho: float = 7.0, shift: float = 1.0) -> Tensor:
        """Decreasing times ``(steps + 1,)`` from the prior to ``t = 0`` for a solver.

        ``uniform`` (in t), ``logsnr`` (uniform in log-SNR), ``karras`` (Karras et al. rho-spacing of
        sigma / alpha), ``shifted``: the noise levels ``sigma / alpha = shift * u / (1 - u)`` for ``u``
        uniform in ``(0, 1)``, i.e. the levels of a ``shift``-ed uniform flow-matching grid (SD3) on any
        path (on the flow path itself it is that grid); the first time is always ``t = 1``.
        """
        kind = kind or self.default_grid
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        t_max, t_end = 1.0, self.t_min
        if kind == "uniform":
            return torch.cat([torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)])
        if kind == "shifted":
            if shift <= 0:
                raise ValueError(f"grid shift must be > 0, got {shift}")
            u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[1:-1]
            inner = self._t_from_scaled_sigma(shift * u / (1 - u)).clamp(max=t_max)
            return torch.cat([torch.full((1,), t_max, dtype=torch.float64), inner, torch.zeros(1, dtype=torch.float64)])
        if kind in ("logsnr", "karras"):
            lo, hi = self._scaled_sigma(t_end), self._scaled_sigma(t_max)
            if not math.isfinite(hi):  # alpha(1) = 0 (flow, zero terminal SNR): space from the last finite level
                hi = self._scaled_sigma(t_max - self.t_min)
            if kind == "logsnr":
                u = torch.linspace(math.log(hi), math.log(lo), steps, dtype=torch.float64).exp()
            else:
                r = torch.linspace(0, 1, steps, dtype=torch.float64)
                u = (hi ** (1 / rho) + r * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
            ts = self._t_from_scaled_sigma(u)
            ts[0] = t_max
            return torch.cat([ts, torch.zeros(1, dtype=torch.float64)])
        raise ValueError(f"unknown time grid '{kind}' (known: uniform, logsnr, karras, shifted)")

    def _scaled_sigma(self, t: float) -> float:
        alpha, sigma = self.alpha_sigma(torch.tensor([t], dtype=torch.float64))
        return float(sigma / alpha) if float(alpha) > 0 else float("inf")

    def _t_from_scaled_sigma(self, target: Tensor) -> Tensor:
        """Invert ``sigma(t)/alpha(t)`` (monotone) by bisection; ``target`` (N,) float64."""
        lo = torch.zeros_like(target)
        hi = torch.ones_like(target)
        for _ in range(60):
            mid = (lo + hi) / 2
            alpha, sigma = self.alpha_sigma(mid)
            too_noisy = sigma / alpha.clamp_min(1e-300) > target
            hi = torch.where(too_noisy, mid, hi)
            lo = torch.where(too_noisy, lo, mid)
        return (lo + hi) / 2

    def ode_coords_of(self, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor | None]:
        """Coordinates ``(tau, scale)`` in which Euler / Heun integrate the probability-flow ODE: they integrate
        ``y = x / scale`` in ``tau`` (a scale of ``None`` is 1); from the path's ``alpha, sigma`` (any shape).

        Default (VP and flow paths): the straight-line coordinates ``tau = sigma / (alpha + sigma)``,
        ``scale = alpha + sigma``, in which every Gaussian path is the linear flow path
        ``y = (1 - tau) x0 + tau eps`` with the bounded drift ``eps - x0``. Euler there is DDIM (as in any
        coordinates where the path is linear), and Heun stays well posed where ``alpha(1)`` is ~0: in the
        sigma-space coordinates ``sigma / alpha`` of diffusers' Heun, a VP cosine grid starts at ~2e4 and the
        trapezoid rule over that first interval turns the model's change in ``eps`` into pure noise.
        """
        total = alpha + sigma
        return sigma / total, total

    def ode_drift(self, pred: Prediction) -> Tensor:
        """``dy / dtau`` in :meth:`ode_coords_of`: ``eps - x0`` for the straight-line coordinates."""
        return pred.eps - pred.x0

    # -- training -------------------------------------------------------------------------------
    def sample_time(self, batch: int, rng: StepRandom, sampler: str | None = None, loc: float = 0.0, scale: float = 1.0) -> Tensor:
        """Training times (B,) in ``[t_min, 1]``: ``uniform``, ``logit_normal`` (SD3), ``log_normal`` (EDM)."""
        sampler = sampler or self.default_time_sampler
        if sampler == "uniform":
            u = rng.rand(batch, dtype=torch.float64)
            return (self.t_min + (1 - self.t_min) * u).float()
        if sampler == "logit_normal":
            return torch.sigmoid(loc + scale * rng.randn(batch, dtype=torch.float64)).clamp(self.t_min, 1.0).float()
        if sampler == "log_normal":
            return self._t_from_log_sigma(loc + scale * rng.randn(batch, dtype=torch.float64)).float()
        if sampler == "discrete":
            raise ValueError(f"the 'discrete' time sampler needs a process with a discrete schedule (vp), not {self.name}")
        raise ValueError(f"unknown time sampler '{sampler}' (known: uniform, logit_normal, log_normal, discrete)")

    def _t_from_log_sigma(self, log_sigma: Tensor) -> Tensor:
        return self._t_from_scaled_sigma(log_sigma.exp()).clamp(self.t_min, 1.0)


def _dof_correction(x0: Tensor, index: Tensor | None) -> Tensor:
    """``n / (n - 1)`` per row (ragged) or per sample (dense ``(B, n, d)``): a zero-CoM cloud of ``n`` points in
    ``d`` dimensions has ``(n - 1) d`` degrees of freedom (1 for a single point, whose error is 0 anyway)."""
    if index is None:
        n = torch.full((x0.shape[0],), float(x0.shape[1]), dtype=x0.dtype, device=x0.device)
    else:
        n = torch.bincount(index, minlength=int(index.max()) + 1).to(x0.dtype)[index]
    return broadcast(n / (n - 1).clamp_min(1.0), x0)


# ------------------------------------------------------------------------------------------------
# Variance preserving
# ------------------------------------------------------------------------------------------------
def beta_schedule(kind: str, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02, betas: Sequence[float] | None = None) -> Tensor:
    """Discrete betas (T,) in float64, as in DDPM / improved DDPM / diffusers."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if kind == "quad":  # diffusers' "scaled_linear"
        return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    if kind == "cosine":  # Nichol & Dhariwal; diffusers' "squaredcos_cap_v2"
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)], dtype=torch.float64)
    if kind == "custom":
        if betas is None or len(betas) == 0:
            raise ValueError("schedule 'custom' needs a non-empty 'betas' list")
        b = torch.tensor(list(betas), dtype=torch.float64)
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("custom betas must lie in (0, 1)")
        return b
    raise ValueError(f"unknown beta schedule '{kind}' (known: linear, cosine, quad, custom)")


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. (2024), Alg. 1: shift and scale sqrt(alpha_bar) so the last step has SNR exactly 0."""
    a = alphas_cumprod.sqrt()
    a0, a_last = a[0].clone(), a[-1].clone()
    a = (a - a_last) * a0 / (a0 - a_last)
    return a**2


@dataclass
class VPConfig:
    schedule: Literal["linear", "cosine", "quad", "custom"] = "cosine"
    prediction: Literal["eps", "x0", "v", "velocity", "score"] = "eps"
    num_train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    betas: list[float] | None = None
    zero_terminal_snr: bool = False


class VPProcess(GaussianProcess):
    """Variance-preserving process from a discrete beta table; continuous in t by interpolating alpha."""

    name = "vp"
    default_grid = "uniform"

    def __init__(self, schedule: str = "cosine", prediction: str = "eps", num_train_steps: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 0.02, betas: Sequence[float] | None = None,
                 zero_terminal_snr: bool = False, zero_com: bool = False) -> None:
        super().__init__(prediction, zero_com)
        b = beta_schedule(schedule, num_train_steps, beta_start, beta_end, betas)
        self.num_train_steps = len(b)
        alphas_cumprod = torch.cumprod(1 - b, dim=0)
        if zero_terminal_snr:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
        self.alphas_cumprod = alphas_cumprod  # (T,) float64, index k <-> t = (k+1)/T
        # alpha at knots t = k/T, k = 0..T (t=0 is clean: alpha=1)
        self._alpha_knots = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod.sqrt()])
        self.t_min = 1.0 / self.num_train_steps
        self._check_prediction_at_prior()

    def _interp(self, t: Tensor) -> tuple[Tensor, Tensor]:
        pos = (t.double().clamp(0, 1) * self.num_train_steps)
        k = pos.floor().clamp(max=self.num_train_steps - 1).long()
        frac = pos - k
        a0, a1 = self._alpha_knots[k], self._alpha_knots[k + 1]
        return a0 + frac * (a1 - a0), (a1 - a0) * self.num_train_steps

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, _ = self._interp(t)
        sigma = (1 - alpha**2).clamp_min(0).sqrt()
        return alpha.to(t.dtype), sigma.to(t.dtype)

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, d_alpha = self._interp(t)
        sigma = (1 - alpha**2).clamp_min(1e-30).sqrt()
        return d_alpha.to(t.dtype), (-alpha * d_alpha / sigma).to(t.dtype)

    def sample_time(self, batch: int, rng: StepRandom, sampler: str | None = None, loc: float = 0.0, scale: float = 1.0) -> Tensor:
        """As :meth:`GaussianProcess.sample_time`, plus ``discrete``: the schedule's own times ``k / T``,
        ``k`` uniform in ``1..T`` (DDPM's and CSDI's training), where ancestral sampling evaluates the net."""
        if sampler == "discrete":
            k = torch.floor(rng.rand(batch, dtype=torch.float64) * self.num_train_steps).clamp(max=self.num_train_steps - 1)
            return self.t_from_index(k).float()
        return super().sample_time(batch, rng, sampler, loc, scale)

    def t_from_index(self, k: Tensor) -> Tensor:
        """Discrete DDPM index (0-based) -> continuous time."""
        return (k.double() + 1) / self.num_train_steps

    def index_grid(self, steps: int, spacing: str = "leading") -> Tensor:
        """diffusers-style discrete timesteps (descending indices) for ``steps`` inference steps."""
        T = self.num_train_steps
        if spacing == "leading":
            return torch.arange(0, steps, dtype=torch.float64).mul(T // steps).round().flip(0)
        if spacing == "trailing":
            return (torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1)
        if spacing == "linspace":
            return torch.linspace(0, T - 1, steps, dtype=torch.float64).round().flip(0)
        raise ValueError(f"unknown spacing '{spacing}' (known: leading, trailing, linspace)")

    def time_grid(self, steps: int, kind: str | None = None, rho: float = 7.0, shift: float = 1.0) -> Tensor:
        kind = kind or self.default_grid
        if kind in ("leading", "trailing", "linspace"):
            return torch.cat([self.t_from_index(self.index_grid(steps, kind)), torch.zeros(1, dtype=torch.float64)])
        return super().time_grid(steps, kind, rho, shift)


@PROCESSES.register("vp", config=VPConfig, help="variance preserving (DDPM): linear/cosine/quad/custom betas")
def _build_vp(**kw) -> VPProcess:
    return VPProcess(**kw)


# ------------------------------------------------------------------------------------------------
# Variance exploding and EDM
# ------------------------------------------------------------------------------------------------
@dataclass
class VEConfig:
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    prediction: Literal["eps", "x0", "v", "velocity", "score"] = "eps"


class VEProcess(GaussianProcess):
    """Variance exploding: ``alpha = 1``, ``sigma = sigma_max * t`` (so Euler in t is Euler in sigma)."""

    name = "ve"
    default_grid = "karras"
    default_time_sampler = "log_normal"

    def __init__(self, sigma_max: float = 80.0, sigma_min: float = 0.002, prediction: str = "eps",
                 zero_com: bool = False) -> None:
        super().__init__(prediction, zero_com)
        self.sigma_max, self.sigma_min = float(sigma_max), float(sigma_min)
        self.t_min = self.sigma_min / self.sigma_max

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), self.sigma_max * t

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros_like(t), torch.full_like(t, self.sigma_max)

    def _t_from_scaled_sigma(self, target: Tensor) -> Tensor:
        return target / self.sigma_max

    def ode_coords_of(self, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """VE / EDM integrate in ``tau = sigma`` (Karras et al. 2022; diffusers' Euler / Heun sigma space)."""
        return sigma / alpha, alpha

    def ode_drift(self, pred: Prediction) -> Tensor:
        """``dx / dsigma = eps`` on a VE path."""
        return pred.eps

    def sample_time(self, batch: int, rng: StepRandom, sampler: str | None = None, loc: float = -1.2, scale: float = 1.2) -> Tensor:
        return super().sample_time(batch, rng, sampler, loc, scale)


@dataclass
class EDMConfig:
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    sigma_data: float = 0.5


class EDMProcess(VEProcess):
    """Karras et al. (2022): VE path, network ``F`` wrapped as ``D = c_skip x + c_out F(c_in x, c_noise)``.

    The prediction type is ``x0`` (the denoiser ``D``); the EDM loss weighting makes the loss on ``F``
    uniform.
    """

    name = "edm"

    def __init__(self, sigma_max: float = 80.0, sigma_min: float = 0.002, sigma_data: float = 0.5,
                 zero_com: bool = False) -> None:
        super().__init__(sigma_max, sigma_min, prediction="x0", zero_com=zero_com)
        self.sigma_data = float(sigma_data)

    def preconditioning(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``c_skip, c_out, c_in, c_noise`` for noise levels ``sigma`` (any shape)."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.clamp_min(1e-20).log() / 4
        return c_skip, c_out, c_in, c_noise

    def net_input(self, x_t: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
        _, _, c_in, _ = self.preconditioning(self.sigma_max * t)
        return broadcast(c_in, x_t, index) * x_t

    def time_input(self, t: Tensor) -> Tensor:
        return self.preconditioning(self.sigma_max * t)[3]

    def net_output(self, raw: Tensor, x_t: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
        c_skip, c_out, _, _ = self.preconditioning(self.sigma_max * t)
        return broadcast(c_skip, x_t, index) * x_t + broadcast(c_out, x_t, index) * raw


@PROCESSES.register("ve", config=VEConfig, help="variance exploding, sigma = sigma_max * t")
def _build_ve(**kw) -> VEProcess:
    return VEProcess(**kw)


@PROCESSES.register("edm", config=EDMConfig, help="EDM (Karras et al. 2022) preconditioned VE")
def _build_edm(**kw) -> EDMProcess:
    return EDMProcess(**kw)


# ------------------------------------------------------------------------------------------------
# Flow matching
# ------------------------------------------------------------------------------------------------
@dataclass
class FlowConfig:
    prediction: Literal["eps", "x0", "v", "velocity", "score"] = "velocity"
    ot_coupling: bool = False
    shift: float = 1.0


class FlowProcess(GaussianProcess):
    """Linear flow matching / rectified flow: ``x_t = (1 - t) x0 + t eps``, target ``eps - x0``.

    ``ot_coupling`` pairs data and noise within a minibatch by exact optimal transport (Tong et al. 2023;
    Pooladian et al. 2023) during training. ``shift`` > 1 moves the sampling grid towards noise (SD3).
    """

    name = "flow"
    default_grid = "uniform"
    default_time_sampler = "uniform"

    def __init__(self, prediction: str = "velocity", ot_coupling: bool = False, shift: float = 1.0,
                 zero_com: bool = False) -> None:
        super().__init__(prediction, zero_com)
        self.ot_coupling, self.shift = ot_coupling, float(shift)
        self.t_min = 1e-4
        self._check_prediction_at_prior()

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return 1 - t, t

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return -torch.ones_like(t), torch.ones_like(t)

    def to_x0_eps(self, pred: Tensor, x_t: Tensor, t: Tensor, index: Tensor | None = None,
                  c: Coefficients | None = None) -> Prediction:
        """For a velocity ``v = eps - x0`` the general conversion reduces to ``x0 = x_t - t v``,
        ``eps = x_t + (1 - t) v`` (the same values with a third of the tensor operations)."""
        if self.prediction != "velocity":
            return super().to_x0_eps(pred, x_t, t, index, c)
        c = self.coefficients(t, x_t, index) if c is None else c
        return Prediction(x0=x_t - c.sigma * pred, eps=x_t + c.alpha * pred)

    def _t_from_scaled_sigma(self, target: Tensor) -> Tensor:
        return target / (1 + target)

    def time_grid(self, steps: int, kind: str | None = None, rho: float = 7.0, shift: float = 1.0) -> Tensor:
        ts = super().time_grid(steps, kind, rho, shift)
        return self.shift * ts / (1 + (self.shift - 1) * ts)

    def ode_coords_of(self, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor | None]:
        """Flow paths integrate ``x`` directly in ``t = sigma`` (the straight-path ODE; scale 1, given as ``None``)."""
        return sigma, None


@PROCESSES.register("flow", config=FlowConfig, help="linear flow matching / rectified flow (optional minibatch OT)")
def _build_flow(**kw) -> FlowProcess:
    return FlowProcess(**kw)


# ------------------------------------------------------------------------------------------------
# Zero centre of mass (EDM for molecules)
# ------------------------------------------------------------------------------------------------
ZERO_COM_PATHS = {"vp": (VPProcess, VPConfig), "ve": (VEProcess, VEConfig), "edm": (EDMProcess, EDMConfig),
                  "flow": (FlowProcess, FlowConfig)}


@dataclass
class ZeroCoMConfig:
    """``path``: the Gaussian path (vp | ve | edm | flow); ``options``: that path's own keys (e.g. schedule)."""

    path: Literal["vp", "ve", "edm", "flow"] = "edm"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@PROCESSES.register("zero_com", config=ZeroCoMConfig,
                    help="Gaussian path (vp/ve/edm/flow) on point clouds with zero centre of mass per sample (EDM, Hoogeboom et al. 2022)")
def _build_zero_com(path: str = "edm", options: dict[str, Any] | None = None) -> GaussianProcess:
    cls, config = ZERO_COM_PATHS[path]
    known = {f.name for f in fields(config)}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for the zero_com '{path}' path (known: {', '.join(sorted(known))})")
    return cls(**{**asdict(config(**(options or {}))), "zero_com": True})
