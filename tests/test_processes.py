"""Processes: beta tables against diffusers, exact prediction conversions, path derivatives, forward
marginals against their closed form, loss weightings against their closed forms, time grids."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale_zero_snr
from torch import Tensor

from sciffusion.processes import (
    EDMProcess,
    FlowProcess,
    GaussianProcess,
    VEProcess,
    VPProcess,
    beta_schedule,
    convert,
    from_x0_eps,
    loss_weight,
    to_x0_eps,
    x0_space_weight,
)
from sciffusion.processes.parametrization import PREDICTION_TYPES
from sciffusion.rng import StepRandom
from sciffusion.sampling.exact import reference_mixture

SCHEDULES = {"linear": "linear", "scaled_linear": "quad", "squaredcos_cap_v2": "cosine"}
PROCESSES = {
    "vp_cosine": lambda: VPProcess("cosine"),
    "vp_linear": lambda: VPProcess("linear"),
    "vp_quad_zsnr": lambda: VPProcess("quad", beta_start=0.00085, beta_end=0.012, zero_terminal_snr=True, prediction="v"),
    "ve": lambda: VEProcess(),
    "edm": lambda: EDMProcess(),
    "flow": lambda: FlowProcess(),
}


# ------------------------------------------------------------------------------------------------
# Discrete tables (VP) against diffusers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("diffusers_name,ours", list(SCHEDULES.items()))
@pytest.mark.parametrize("beta_range", [(1e-4, 0.02), (0.00085, 0.012)])
def test_beta_tables_match_diffusers(diffusers_name: str, ours: str, beta_range: tuple[float, float]) -> None:
    sched = DDIMScheduler(beta_schedule=diffusers_name, beta_start=beta_range[0], beta_end=beta_range[1])
    betas = beta_schedule(ours, 1000, *beta_range)
    if ours == "cosine":  # diffusers computes it in float64 and rounds once to float32
        assert torch.equal(betas.to(torch.float32), sched.betas)
    else:  # diffusers' float32 linspace (and square): a few float32 units in the last place
        assert torch.allclose(betas, sched.betas.to(torch.float64), rtol=4e-7, atol=0)
    process = VPProcess(ours, beta_start=beta_range[0], beta_end=beta_range[1])
    # the same product, accumulated in float64 from diffusers' own (float32) betas: equal up to their rounding
    assert (process.alphas_cumprod - torch.cumprod(1 - sched.betas.to(torch.float64), 0)).abs().max() < 3e-8
    # and diffusers' float32 product differs by its float32 accumulation only
    assert (process.alphas_cumprod - sched.alphas_cumprod.to(torch.float64)).abs().max() < 5e-7


@pytest.mark.parametrize("diffusers_name,ours", list(SCHEDULES.items()))
def test_zero_terminal_snr_matches_diffusers(diffusers_name: str, ours: str) -> None:
    betas = beta_schedule(ours, 1000, 0.00085, 0.012)
    expected = torch.cumprod(1 - diffusers_rescale_zero_snr(betas.clone()), 0)  # float64 in, float64 out
    process = VPProcess(ours, beta_start=0.00085, beta_end=0.012, zero_terminal_snr=True, prediction="v")
    assert (process.alphas_cumprod - expected).abs().max() < 1e-12
    assert process.alphas_cumprod[-1] == 0
    assert math.isclose(float(process.alphas_cumprod[0]), float(1 - betas[0]), rel_tol=1e-12)
    alpha, sigma = process.alpha_sigma(torch.ones(1, dtype=torch.float64))
    assert float(alpha) == 0 and float(sigma) == 1


def test_discrete_index_is_continuous_time() -> None:
    process = VPProcess("linear")
    k = torch.arange(1000)
    alpha, sigma = process.alpha_sigma(process.t_from_index(k))
    assert torch.allclose(alpha, process.alphas_cumprod.sqrt(), rtol=1e-13, atol=0)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(alpha), atol=1e-14)
    assert float(process.alpha_sigma(torch.zeros(1, dtype=torch.float64))[0]) == 1.0


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [7, 10, 50])
def test_index_grid_matches_diffusers_timesteps(spacing: str, steps: int) -> None:
    sched = DDIMScheduler(timestep_spacing=spacing)
    sched.set_timesteps(steps)
    assert torch.equal(VPProcess("linear").index_grid(steps, spacing), sched.timesteps.to(torch.float64))


# ------------------------------------------------------------------------------------------------
# Parametrizations
# ------------------------------------------------------------------------------------------------
def _field(n: int = 16, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 3, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(n, 3, 4, generator=gen, dtype=torch.float64)
    t = 0.02 + 0.96 * torch.rand(n, generator=gen, dtype=torch.float64)  # per-sample times away from the ends
    return x0, eps, t


@pytest.mark.parametrize("name", list(PROCESSES))
def test_conversions_round_trip_all_pairs(name: str) -> None:
    process = PROCESSES[name]()
    x0, eps, t = _field()
    x_t = process.add_noise(x0, eps, t)
    c = process.coefficients(t, x_t)
    for source, target in itertools.product(PREDICTION_TYPES, repeat=2):
        pred = from_x0_eps(x0, eps, source, c)
        converted = convert(pred, source, target, x_t, c)
        assert torch.allclose(converted, from_x0_eps(x0, eps, target, c), rtol=1e-9, atol=1e-9), (source, target)
        assert torch.allclose(convert(converted, target, source, x_t, c), pred, rtol=1e-9, atol=1e-9), (source, target)
        back = to_x0_eps(pred, source, x_t, c)
        assert torch.allclose(back.x0, x0, atol=1e-9) and torch.allclose(back.eps, eps, atol=1e-9), source


def test_flow_velocity_shortcut_equals_general_conversion() -> None:
    """FlowProcess.to_x0_eps (x0 = x_t - t v, eps = x_t + (1 - t) v) equals the general velocity conversion."""
    process = FlowProcess()
    x0, eps, t = _field()
    x_t = process.add_noise(x0, eps, t)
    c = process.coefficients(t, x_t)
    velocity = from_x0_eps(x0, eps, "velocity", c)
    fast, general = process.to_x0_eps(velocity, x_t, t), to_x0_eps(velocity, "velocity", x_t, c)
    assert torch.allclose(fast.x0, general.x0, rtol=0, atol=1e-12) and torch.allclose(fast.eps, general.eps, rtol=0, atol=1e-12)
    assert torch.allclose(fast.x0, x0, atol=1e-12) and torch.allclose(fast.eps, eps, atol=1e-12)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_velocity_is_time_derivative_of_the_path(name: str) -> None:
    """``velocity = d x_t / dt`` at fixed (x0, eps): checks each process's ``derivatives``."""
    process = PROCESSES[name]()
    x0, eps, t = _field(seed=1)
    t = t * 0.9 + 0.05 + 1e-4  # off the VP table's knots (alpha is piecewise linear between them)
    h = 1e-7
    finite = (process.add_noise(x0, eps, t + h) - process.add_noise(x0, eps, t - h)) / (2 * h)
    velocity = from_x0_eps(x0, eps, "velocity", process.coefficients(t, x0))
    assert torch.allclose(finite, velocity, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_x0_space_weight_is_the_error_ratio(name: str) -> None:
    """``||pred_hat - pred||^2 = w ||x0_hat - x0||^2`` when the prediction is read back at fixed x_t."""
    process = PROCESSES[name]()
    x0, eps, t = _field(seed=2)
    x_t = process.add_noise(x0, eps, t)
    c = process.coefficients(t, x_t)
    x0_hat = x0 + 0.1 * torch.randn_like(x0)
    eps_hat = (x_t - c.alpha * x0_hat) / c.sigma  # the noise consistent with x0_hat at this x_t
    for kind in PREDICTION_TYPES:
        err_pred = (from_x0_eps(x0_hat, eps_hat, kind, c) - from_x0_eps(x0, eps, kind, c)) ** 2
        err_x0 = (x0_hat - x0) ** 2
        assert torch.allclose(err_pred, x0_space_weight(kind, c) * err_x0, rtol=1e-7, atol=1e-12), kind


# ------------------------------------------------------------------------------------------------
# Forward marginals
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROCESSES))
def test_forward_marginals_match_closed_form(name: str) -> None:
    """x_t from data samples: mean ``alpha mu`` and covariance ``alpha^2 C + sigma^2 I`` (within 6 s.e.)."""
    process = PROCESSES[name]()
    mixture = reference_mixture(dim=2, components=3, seed=4)
    n = 100_000
    gen = torch.Generator().manual_seed(0)
    x0 = mixture.sample(n, gen)
    for t_value in (0.1, 0.5, 0.9):
        t = torch.full((n,), t_value, dtype=torch.float64)
        x_t = process.add_noise(x0, torch.randn(x0.shape, generator=gen, dtype=torch.float64), t)
        alpha, sigma = (float(v[0]) for v in process.alpha_sigma(t[:1]))
        mean = alpha * mixture.mean()
        cov = alpha**2 * mixture.covariance() + sigma**2 * torch.eye(2, dtype=torch.float64)
        var = cov.diagonal()
        assert ((x_t.mean(0) - mean).abs() < 6 * (var / n).sqrt()).all(), (t_value, x_t.mean(0), mean)
        cov_hat = torch.cov(x_t.T)
        cov_se = ((var[:, None] * var[None, :] + cov**2) / n).sqrt()
        assert ((cov_hat - cov).abs() < 6 * cov_se).all(), (t_value, cov_hat, cov)


def test_ragged_fields_use_their_sample_time() -> None:
    process = VPProcess("cosine")
    t = torch.tensor([0.2, 0.9], dtype=torch.float64)
    index = torch.tensor([0, 0, 1, 1, 1])
    x0, eps = torch.ones(5, 3, dtype=torch.float64), torch.zeros(5, 3, dtype=torch.float64)
    x_t = process.add_noise(x0, eps, t, index)
    alpha, _ = process.alpha_sigma(t)
    assert torch.equal(x_t, alpha[index][:, None].expand(5, 3))


# ------------------------------------------------------------------------------------------------
# Loss weightings and EDM preconditioning
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vp_cosine", "vp_linear", "flow", "edm"])
def test_min_snr_weighting_closed_form(name: str) -> None:
    process = PROCESSES[name]()
    _, _, t = _field(seed=3)
    c = process.coefficients(t, t)
    snr = (c.alpha / c.sigma) ** 2
    gamma = 5.0
    clipped = torch.clamp(snr, max=gamma)
    expected = {  # Hang et al. (2023): eps -> min(snr, g)/snr; x0 -> min(snr, g); v -> min(snr, g)/(snr + 1) on VP
        "eps": clipped / snr,
        "x0": clipped,
        "score": clipped * c.sigma**2 / snr,
        "v": clipped * c.sigma**2 / (c.alpha**2 + c.sigma**2) ** 2,
        "velocity": clipped / (c.d_alpha - c.d_sigma * c.alpha / c.sigma) ** 2,
    }
    if name.startswith("vp"):
        assert torch.allclose(expected["v"], clipped / (snr + 1), rtol=1e-12)
    for kind, weight in expected.items():
        assert torch.allclose(loss_weight("min_snr", kind, c, gamma=gamma), weight, rtol=1e-10), kind
        assert torch.equal(loss_weight("uniform", kind, c), torch.ones_like(weight))


def test_velocity_weighting_is_frameflows_clipped_vector_field_loss() -> None:
    t = torch.tensor([0.01, 0.05, 0.1, 0.3, 0.9], dtype=torch.float64)
    c = FlowProcess(prediction="x0").coefficients(t, t)
    expected = 1 / t.clamp_min(0.1) ** 2  # FrameFlow: |x0_hat - x0|^2 / (1 - min(tau, 0.9))^2 with tau = 1 - t
    assert torch.allclose(loss_weight("velocity", "x0", c, gamma=100.0), expected, rtol=1e-12)
    # a velocity-predicting net gets plain MSE above the cap and the same capped x0-space weight below it
    cv = FlowProcess(prediction="velocity").coefficients(t, t)
    assert torch.allclose(loss_weight("velocity", "velocity", cv, gamma=100.0), expected * t**2, rtol=1e-12)


def test_edm_weighting_and_preconditioning_closed_form() -> None:
    process = EDMProcess(sigma_data=0.5)
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 10.0, 80.0], dtype=torch.float64)
    t = sigma / process.sigma_max
    c = process.coefficients(t, t)
    sd = 0.5
    lam = (sigma**2 + sd**2) / (sigma * sd) ** 2  # Karras et al. (2022), Table 1
    assert torch.allclose(loss_weight("edm", "x0", c, sigma_data=sd), lam, rtol=1e-12)
    c_skip, c_out, c_in, c_noise = process.preconditioning(sigma)
    assert torch.allclose(c_skip, sd**2 / (sigma**2 + sd**2), rtol=1e-14)
    assert torch.allclose(c_out, sigma * sd / (sigma**2 + sd**2).sqrt(), rtol=1e-14)
    assert torch.allclose(c_in, 1 / (sigma**2 + sd**2).sqrt(), rtol=1e-14)
    assert torch.allclose(c_noise, sigma.log() / 4, rtol=1e-14)
    assert torch.allclose(lam * c_out**2, torch.ones_like(lam), rtol=1e-12)  # unit weight on the raw network F
    # D = c_skip x + c_out F  with F(c_in x, c_noise)
    x = torch.randn(6, 2, dtype=torch.float64)
    raw = torch.randn(6, 2, dtype=torch.float64)
    net_in, t_in = process.net_input(x, t), process.time_input(t)
    assert torch.allclose(net_in, c_in[:, None] * x) and torch.allclose(t_in, c_noise)
    assert torch.allclose(process.net_output(raw, x, t), c_skip[:, None] * x + c_out[:, None] * raw)


# ------------------------------------------------------------------------------------------------
# Time grids and training times
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("kind", ["uniform", "logsnr", "karras"])
def test_time_grids_are_finite_and_decreasing(name: str, kind: str) -> None:
    process = PROCESSES[name]()
    for steps in (1, 2, 7, 50):
        grid = process.time_grid(steps, kind)
        assert grid.shape == (steps + 1,)
        assert torch.isfinite(grid).all()
        assert float(grid[0]) == 1.0 and float(grid[-1]) == 0.0
        assert (grid[1:] < grid[:-1]).all(), grid


def test_karras_grid_is_karras_sigmas() -> None:
    process = EDMProcess(sigma_max=80.0, sigma_min=0.002)
    steps, rho = 18, 7.0
    i = torch.arange(steps, dtype=torch.float64)
    sigmas = (80.0 ** (1 / rho) + i / (steps - 1) * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    grid = process.time_grid(steps, "karras")
    assert torch.allclose(grid[:-1] * process.sigma_max, sigmas, rtol=1e-12)


def test_logsnr_grid_is_uniform_in_log_snr() -> None:
    process = VPProcess("cosine")
    grid = process.time_grid(12, "logsnr")
    lam = process.log_snr(grid[1:-1])  # interior points (the first is moved to t = 1)
    steps = lam[1:] - lam[:-1]
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-9)


def test_shifted_grid_carries_the_flow_shift_to_any_path() -> None:
    steps, shift = 10, 2.0
    on_flow = FlowProcess().time_grid(steps, "shifted", shift=shift)
    assert torch.allclose(on_flow, FlowProcess(shift=shift).time_grid(steps, "uniform"), atol=1e-12)  # SD3's shift
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[1:-1]
    for process in (VPProcess("linear"), EDMProcess()):
        grid = process.time_grid(steps, "shifted", shift=shift)
        assert grid.shape == (steps + 1,) and float(grid[0]) == 1.0 and float(grid[-1]) == 0.0
        assert bool((grid[1:] < grid[:-1]).all())
        alpha, sigma = process.alpha_sigma(grid[1:-1])
        assert torch.allclose(sigma / alpha, shift * u / (1 - u), rtol=1e-6)


@pytest.mark.parametrize("sampler", ["uniform", "logit_normal", "log_normal"])
def test_training_times_lie_in_range(sampler: str) -> None:
    for process in (VPProcess(), EDMProcess(), FlowProcess()):
        t = process.sample_time(4096, StepRandom(0, 3), sampler)
        assert t.shape == (4096,)
        assert float(t.min()) >= process.t_min - 1e-7 and float(t.max()) <= 1.0
    flow_t = FlowProcess().sample_time(20_000, StepRandom(1, 0), "logit_normal")
    assert abs(float(torch.logit(flow_t.double()).mean())) < 0.05  # logit-normal(0, 1)


def test_discrete_training_times_are_the_schedules_knots() -> None:
    process = VPProcess("quad", num_train_steps=50, beta_start=1e-4, beta_end=0.5)
    t = process.sample_time(20_000, StepRandom(2, 0), "discrete")
    index = t.double() * 50 - 1  # t = (k + 1) / T for the DDPM index k
    assert torch.allclose(index, index.round(), atol=1e-4)
    counts = torch.bincount(index.round().long(), minlength=50)
    assert counts.shape == (50,) and int(counts.min()) > 0.8 * 400 and int(counts.max()) < 1.2 * 400  # uniform over 0..49
    # at a knot the interpolated schedule is exactly the discrete one
    alpha, _ = process.alpha_sigma(t[:5].double())
    assert torch.allclose(alpha**2, process.alphas_cumprod[index[:5].round().long()], rtol=1e-6)
    with pytest.raises(ValueError, match="discrete schedule"):
        FlowProcess().sample_time(4, StepRandom(0, 0), "discrete")


def test_prior_scale() -> None:
    assert math.isclose(VPProcess().prior_scale(), 1.0, rel_tol=1e-6)
    assert math.isclose(FlowProcess().prior_scale(), 1.0)
    assert math.isclose(EDMProcess().prior_scale(), math.sqrt(1 + 80.0**2))


def test_unknown_names_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown beta schedule 'sigmoid'"):
        VPProcess("sigmoid")
    with pytest.raises(ValueError, match="unknown prediction type 'noise'"):
        VPProcess(prediction="noise")
    with pytest.raises(ValueError, match="unknown time grid 'exp'"):
        VPProcess().time_grid(5, "exp")
    with pytest.raises(ValueError, match="unknown loss weighting 'p2'"):
        loss_weight("p2", "eps", VPProcess().coefficients(torch.full((2,), 0.5), torch.zeros(2)))


def test_process_base_has_no_path() -> None:
    with pytest.raises(NotImplementedError):
        GaussianProcess("eps").alpha_sigma(torch.zeros(1))
