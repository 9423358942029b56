"""Solvers: step-for-step equality with diffusers' schedulers, and convergence on an exact score.

Every comparison drives our solver and a diffusers scheduler with the same model (the exact noise / velocity
prediction of a Gaussian mixture, a nonlinear function of ``x`` and the noise level) from the same initial
noise (and the same stochastic draws, for DDPM / DDIM with eta > 0), in float64 states, and compares final
samples. diffusers' discrete index ``k`` is our ``t = (k + 1) / T``; its Euler / Heun schedulers integrate in
``x / alpha`` ("sigma space") on interpolated sigmas, so our grid is built from the scheduler's own sigmas.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
)
from torch import Tensor

from sciffusion.processes import Coefficients, FlowProcess, GaussianProcess, Prediction, VEProcess, VPProcess, from_x0_eps, to_x0_eps
from sciffusion.processes.gaussian import EDMProcess
from sciffusion.sampling import DenoiseFn, nfe, solve, steps_for_nfe
from sciffusion.sampling.exact import GaussianMixture, SlicedW1ToMixture, reference_mixture, sliced_wasserstein

TOL = 1e-5
SCHEDULES = {"linear": "linear", "scaled_linear": "quad", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}
MIXTURE = reference_mixture(dim=2, components=4, seed=0)


def _initial_noise(n: int = 64, seed: int = 0) -> Tensor:
    return torch.randn(n, MIXTURE.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _vp_levels(alphas_cumprod_k: Tensor | float, n: int) -> tuple[Tensor, Tensor]:
    """``alpha, sigma`` (n,) from a diffusers ``alphas_cumprod`` entry."""
    abar = torch.as_tensor(alphas_cumprod_k, dtype=torch.float64)
    return abar.sqrt().expand(n), (1 - abar).sqrt().expand(n)


def _ve_levels(sigma_ve: Tensor | float, n: int) -> tuple[Tensor, Tensor]:
    """``alpha, sigma`` (n,) of the VP path from diffusers' sigma-space noise level ``sigma / alpha``."""
    s = torch.as_tensor(sigma_ve, dtype=torch.float64)
    alpha = 1 / (1 + s**2).sqrt()
    return alpha.expand(n), (s * alpha).expand(n)


def _network(prediction: str, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """What a perfect network of type ``prediction`` (ours: eps | v | velocity) outputs at levels (B,).

    ``velocity`` is only used with the flow path, whose derivatives are ``alpha' = -1, sigma' = 1``.
    """
    p = MIXTURE.predict(x, alpha, sigma)
    c = _coefficients(alpha, sigma, x)
    return from_x0_eps(p.x0, p.eps, prediction, c)


def _coefficients(alpha: Tensor, sigma: Tensor, like: Tensor) -> Coefficients:
    a, s = alpha.reshape(-1, 1).to(like.dtype), sigma.reshape(-1, 1).to(like.dtype)
    return Coefficients(a, s, -torch.ones_like(a), torch.ones_like(s))  # derivatives: flow's (used by 'velocity')


def _our_denoiser(process: GaussianProcess):
    """Our side: the same perfect network, its raw output converted by the process (as DiffusionModel does)."""

    def denoise(x: dict[str, Tensor], t: Tensor, path: dict | None = None) -> dict[str, Prediction]:
        alpha, sigma = process.alpha_sigma(t.to(torch.float64))
        raw = _network(process.prediction, x["x"], alpha, sigma)
        return {"x": process.to_x0_eps(raw, x["x"], t.to(torch.float64))}

    return denoise


def _run_ours(process: GaussianProcess, grid: Tensor, solver: str, x: Tensor, seed: int | None = None, eta: float = 0.0) -> Tensor:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return solve({"x": process}, _our_denoiser(process), {"x": x.clone()}, grid, solver, eta=eta, generator=gen)["x"]


def _float64_tables(sched):
    """Recompute a diffusers scheduler's ``alphas_cumprod`` from its own betas in float64 (diffusers keeps
    float32 tables, whose accumulated rounding, ~3e-7, would otherwise dominate the comparison)."""
    sched.alphas_cumprod = torch.cumprod(1 - sched.betas.to(torch.float64), dim=0)
    return sched


def _index_grid(process: VPProcess, timesteps: Tensor) -> Tensor:
    """diffusers' integer timesteps (descending) -> our times, ending at the clean end ``t = 0``."""
    return torch.cat([process.t_from_index(timesteps.to(torch.float64)), torch.zeros(1, dtype=torch.float64)])


def _sigma_grid(process: GaussianProcess, sigmas: Tensor) -> Tensor:
    """diffusers' sigma-space levels (descending, last 0) -> our times with ``sigma(t)/alpha(t)`` equal to them."""
    levels = torch.unique_consecutive(sigmas.to(torch.float64))
    return torch.cat([process._t_from_scaled_sigma(levels[:-1]), torch.zeros(1, dtype=torch.float64)])


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("steps", [10, 50])
def test_ddpm_matches_diffusers(schedule: str, steps: int) -> None:
    sched = _float64_tables(DDPMScheduler(beta_schedule=schedule, clip_sample=False))
    sched.set_timesteps(steps)
    process = VPProcess(schedule=SCHEDULES[schedule])
    z = _initial_noise()
    x, gen = z.clone(), torch.Generator().manual_seed(7)
    for k in sched.timesteps:
        eps = _network("eps", x, *_vp_levels(sched.alphas_cumprod[k], len(x)))
        x = sched.step(eps, k, x, generator=gen).prev_sample
    ours = _run_ours(process, _index_grid(process, sched.timesteps), "ddpm", z, seed=7)
    assert (ours - x).abs().max() <= TOL


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("prediction", list(PREDICTIONS))
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_diffusers(schedule: str, prediction: str, eta: float) -> None:
    sched = _float64_tables(DDIMScheduler(beta_schedule=schedule, clip_sample=False, prediction_type=prediction))
    sched.set_timesteps(20)
    process = VPProcess(schedule=SCHEDULES[schedule], prediction=PREDICTIONS[prediction])
    z = _initial_noise()
    x, gen = z.clone(), torch.Generator().manual_seed(3)
    for k in sched.timesteps:
        out = _network(process.prediction, x, *_vp_levels(sched.alphas_cumprod[k], len(x)))
        x = sched.step(out, k, x, eta=eta, generator=gen).prev_sample
    ours = _run_ours(process, _index_grid(process, sched.timesteps), "ddim", z, seed=3, eta=eta)
    assert (ours - x).abs().max() <= TOL


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("prediction", list(PREDICTIONS))
@pytest.mark.parametrize("steps", [5, 10, 25])
def test_dpmpp_2m_matches_diffusers(schedule: str, prediction: str, steps: int) -> None:
    sched = _float64_tables(DPMSolverMultistepScheduler(beta_schedule=schedule, algorithm_type="dpmsolver++",
                                                        solver_order=2, prediction_type=prediction))
    sched.set_timesteps(steps)
    abar = sched.alphas_cumprod[sched.timesteps]  # diffusers rounds its sigmas to float32; use its float64 table
    sched.sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=torch.float64)])
    process = VPProcess(schedule=SCHEDULES[schedule], prediction=PREDICTIONS[prediction])
    z = _initial_noise()
    x = z.clone()
    for k in sched.timesteps:
        out = _network(process.prediction, x, *_vp_levels(sched.alphas_cumprod[k], len(x)))
        x = sched.step(out, k, x).prev_sample
    ours = _run_ours(process, _index_grid(process, sched.timesteps), "dpmpp_2m", z)
    assert (ours - x).abs().max() <= TOL


class _Recorder:
    """A constraint that records the state after every solver step (and the initial state). Constraints also
    see a corrector's proposal at the step's end time; the step's final state replaces it."""

    def __init__(self) -> None:
        self.by_time: dict[float, Tensor] = {}

    def __call__(self, x, t, processes, generator, index=None):
        self.by_time[float(t[0])] = x["x"].clone()
        return x

    @property
    def states(self) -> list[Tensor]:
        return list(self.by_time.values())


def _our_trajectory(process: GaussianProcess, grid: Tensor, solver: str, x: Tensor) -> list[Tensor]:
    rec = _Recorder()
    solve({"x": process}, _our_denoiser(process), {"x": x.clone()}, grid, solver, constraints=[rec])
    return rec.states


def _sigma_space(prediction: str, sigma_max: float) -> tuple[VEProcess, DenoiseFn]:
    """diffusers' sigma space of a VP path as our VE process (state ``x / alpha``, noise level ``sigma / alpha``),
    and the same perfect VP network seen from it: evaluated on ``x * alpha`` at the VP levels of each sigma. Both
    spaces share ``x0`` and ``eps``, so the VP network's ``(x0, eps)`` is the VE denoiser's answer."""

    def denoise(x: dict[str, Tensor], t: Tensor, path: dict | None = None) -> dict[str, Prediction]:
        alpha, sigma = _ve_levels(sigma_max * t.to(torch.float64), len(x["x"]))
        x_vp = x["x"] * alpha[:, None]
        raw = _network(prediction, x_vp, alpha, sigma)
        return {"x": to_x0_eps(raw, prediction, x_vp, _coefficients(alpha, sigma, x_vp))}

    return VEProcess(sigma_max=sigma_max, prediction="eps"), denoise


# diffusers' Euler-type steps cast the state to float32, so these comparisons are made step by step from our
# state (teacher forcing): the per-step difference is float32 rounding, which a whole trajectory could amplify
# near a decision boundary between modes. The cosine table is left out here: its sigma-space start,
# sigma/alpha = 2e4, loses ~1e-3 to that float32 cast in the first step (it is covered by DDPM/DDIM/DPM above).
# Euler is compared on the VP path itself (Euler in any coordinates where the path is linear is DDIM). Our Heun
# integrates VP paths in straight-line coordinates (see GaussianProcess.ode_coords_of), diffusers' Heun in
# sigma space, so Heun is compared like for like on the VE process of that sigma space (Karras et al.'s Heun).
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("prediction", list(PREDICTIONS))
@pytest.mark.parametrize("solver,scheduler", [("euler", EulerDiscreteScheduler), ("heun", HeunDiscreteScheduler)])
@pytest.mark.parametrize("steps", [4, 12, 40])
def test_euler_heun_match_diffusers(schedule: str, prediction: str, solver: str, scheduler, steps: int) -> None:
    sched = scheduler(beta_schedule=schedule, prediction_type=prediction)
    sched.set_timesteps(steps)
    process = VPProcess(schedule=SCHEDULES[schedule], prediction=PREDICTIONS[prediction])
    grid = _sigma_grid(process, sched.sigmas)
    assert len(sched.timesteps) == nfe(solver, len(grid) - 1)
    z = _initial_noise() * sched.init_noise_sigma
    if solver == "euler":
        alphas = process.alpha_sigma(grid)[0]
        ours = _our_trajectory(process, grid, solver, z * alphas[0])
    else:
        sigma_max = float(sched.sigmas[0])
        ve, denoise = _sigma_space(PREDICTIONS[prediction], sigma_max)
        levels = torch.unique_consecutive(sched.sigmas.to(torch.float64))
        rec = _Recorder()
        solve({"x": ve}, denoise, {"x": z.clone()}, levels / sigma_max, solver, constraints=[rec])
        ours, alphas = rec.states, torch.ones(len(levels), dtype=torch.float64)
    step = 0
    for i, k in enumerate(sched.timesteps):
        if sched.state_in_first_order if solver == "heun" else True:
            x = ours[step] / alphas[step]  # our state, in diffusers' sigma space
        out = _network(process.prediction, sched.scale_model_input(x, k), *_ve_levels(sched.sigmas[i], len(x)))
        x = sched.step(out, k, x).prev_sample
        if solver == "euler" or sched.state_in_first_order or i == len(sched.timesteps) - 1:  # a full step is done
            step += 1
            assert (x * alphas[step] - ours[step]).abs().max() <= TOL, f"step {step}"
    assert step == len(ours) - 1


@pytest.mark.parametrize("steps", [4, 10, 30])
def test_flow_euler_matches_diffusers(steps: int) -> None:
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(steps)
    process = FlowProcess(prediction="velocity")
    ours = _our_trajectory(process, sched.sigmas.to(torch.float64), "euler", _initial_noise())
    for i, k in enumerate(sched.timesteps):
        s = sched.sigmas[i].to(torch.float64).expand(len(ours[i]))
        x = sched.step(_network("velocity", ours[i], 1 - s, s), k, ours[i]).prev_sample
        assert (x - ours[i + 1]).abs().max() <= TOL, f"step {i}"
    assert len(ours) == steps + 1


def test_nfe_of_one_solver_per_field_is_the_largest() -> None:
    """solve() evaluates the whole state once per step, plus once at the proposal when any field corrects."""
    assert nfe({"frac_coords": "pc", "lattice": "euler", "atom_types": "dfm_euler"}, 50) == 99
    assert nfe({"pos": "euler", "types": "dfm_euler"}, 50) == 50
    assert nfe({"x": "heun"}, 10) == nfe("heun", 10) == 19


def test_steps_for_nfe_fits_budget() -> None:
    for solver in ["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "euler_maruyama", "pc"]:
        for budget in [1, 2, 5, 10, 20, 1000]:
            steps = steps_for_nfe(solver, budget)
            assert nfe(solver, steps) <= max(budget, 1)
            assert nfe(solver, steps + 1) > budget


# ------------------------------------------------------------------------------------------------
# Convergence to the target with an exact score
# ------------------------------------------------------------------------------------------------
# (solver, process, grid): each solver on a path where it is well posed at coarse steps.
CONVERGENCE = [
    ("ddpm", VPProcess("cosine"), "uniform"),
    ("ddim", VPProcess("cosine"), "uniform"),
    ("dpmpp_2m", VPProcess("cosine"), "uniform"),
    ("euler", EDMProcess(), "karras"),
    ("heun", FlowProcess(), "uniform"),
    ("euler_maruyama", FlowProcess(), "uniform"),
    ("pc", VPProcess("linear"), "uniform"),
]


@pytest.fixture(scope="module")
def target_samples() -> tuple[Tensor, float]:
    """4,000 true samples, and the noise floor: mean sliced W1 between independent pairs of true sets."""
    gen = torch.Generator().manual_seed(11)
    true = MIXTURE.sample(4000, gen)
    floor = sum(sliced_wasserstein(MIXTURE.sample(4000, gen), MIXTURE.sample(4000, gen), 256) for _ in range(4)) / 4
    return true, floor


def _exact_solve(mixture: GaussianMixture, process: GaussianProcess, solver: str, budget: int, grid: str, n: int = 4000) -> Tensor:
    steps = steps_for_nfe(solver, budget)
    z = torch.randn(n, mixture.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return solve({"x": process}, mixture.denoiser(process), {"x": z * process.prior_scale()},
                 process.time_grid(steps, grid), solver, generator=torch.Generator().manual_seed(6))["x"]


@pytest.mark.parametrize("solver,process,grid", CONVERGENCE, ids=[c[0] for c in CONVERGENCE])
def test_exact_score_solvers_converge(solver: str, process: GaussianProcess, grid: str, target_samples) -> None:
    true, floor = target_samples
    errors = {budget: sliced_wasserstein(_exact_solve(MIXTURE, process, solver, budget, grid), true, 256)
              for budget in (5, 100)}
    assert errors[100] < 0.3 * errors[5], errors
    assert errors[100] < 1.5 * floor, (errors, floor)


def test_exact_ode_solvers_agree_at_high_nfe() -> None:
    """Deterministic solvers integrate the same probability-flow ODE: from the same noise they land on the
    same points (a check free of sampling noise), closer as the number of steps grows."""
    z = torch.randn(200, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    process = VPProcess("linear")

    def run(solver: str, steps: int) -> Tensor:
        return solve({"x": process}, MIXTURE.denoiser(process), {"x": z}, process.time_grid(steps, "logsnr"), solver)["x"]

    reference = run("dpmpp_2m", 300)
    for solver in ["ddim", "dpmpp_2m", "euler", "heun"]:
        coarse = (run(solver, 10) - reference).abs().mean()
        fine = (run(solver, 100) - reference).abs().mean()
        assert fine < 0.2 * coarse and fine < 0.02, (solver, float(coarse), float(fine))


@pytest.mark.parametrize("solver", ["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "euler_maruyama", "pc"])
def test_ragged_field_matches_dense(solver: str) -> None:
    """A ragged field (rows with a sample index, as torch-geometric batches) samples exactly like the same
    rows held densely: per-sample coefficients reach every row of their sample."""
    process = VPProcess("linear")
    batch, rows = 6, 5
    dense0 = torch.randn(batch, rows, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    index = torch.arange(batch).repeat_interleave(rows)

    def denoise_dense(x: dict[str, Tensor], t: Tensor, path: dict | None = None) -> dict[str, Prediction]:
        alpha, sigma = process.alpha_sigma(t)
        p = MIXTURE.predict(x["x"].reshape(-1, 2), alpha.repeat_interleave(rows), sigma.repeat_interleave(rows))
        return {"x": Prediction(p.x0.reshape(batch, rows, 2), p.eps.reshape(batch, rows, 2))}

    def denoise_ragged(x: dict[str, Tensor], t: Tensor, path: dict | None = None) -> dict[str, Prediction]:
        alpha, sigma = process.alpha_sigma(t)
        return {"x": MIXTURE.predict(x["x"], alpha[index], sigma[index])}

    grid = process.time_grid(8)
    dense = solve({"x": process}, denoise_dense, {"x": dense0}, grid, solver, generator=torch.Generator().manual_seed(2))["x"]
    ragged = solve({"x": process}, denoise_ragged, {"x": dense0.reshape(-1, 2)}, grid, solver,
                   generator=torch.Generator().manual_seed(2), index={"x": index})["x"]
    assert torch.allclose(ragged, dense.reshape(-1, 2), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# Sliced W1 to the mixture itself
# ------------------------------------------------------------------------------------------------
def test_sliced_w1_to_mixture_equals_numerical_integral_in_1d() -> None:
    """In 1-D the metric is integral |F_n - F| dx: compare with a dense numerical integral (scipy's normal CDF)."""
    import numpy as np
    from scipy import stats

    mixture = GaussianMixture([0.3, 0.7], [[-1.0], [2.0]], [[[0.25]], [[1.0]]])
    metric = SlicedW1ToMixture(mixture, projections=1)
    sign = float(metric.directions[0, 0])  # the one direction is +1 or -1
    for n in (50, 2000):
        y = np.sort(sign * mixture.sample(n, torch.Generator().manual_seed(n))[:, 0].numpy())
        grid = np.linspace(-14.0, 14.0, 2_000_001)
        cdf = 0.3 * stats.norm.cdf(grid, -sign, 0.5) + 0.7 * stats.norm.cdf(grid, 2 * sign, 1.0)
        numeric = np.trapezoid(np.abs(np.searchsorted(y, grid, side="right") / n - cdf), grid)
        assert metric(mixture.sample(n, torch.Generator().manual_seed(n))) == pytest.approx(numeric, rel=1e-5)


def test_sliced_w1_to_mixture_sees_shifts_and_shrinks_with_n() -> None:
    """True samples: the error falls like n^-1/2; a shift by d along e_1 costs mean |u_1| d (the W1 of a translation)."""
    mixture = reference_mixture(dim=4, components=3, seed=3)
    metric = SlicedW1ToMixture(mixture, projections=256, seed=1)
    gen = torch.Generator().manual_seed(0)
    small, large = (sum(metric(mixture.sample(n, gen)) for _ in range(4)) / 4 for n in (500, 8000))
    assert 2.5 < small / large < 6.0  # sqrt(16) = 4
    shift = torch.tensor([3.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    expected = 3.0 * float(metric.directions[:, 0].abs().mean())
    assert metric(mixture.sample(8000, gen) + shift) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("process", [VPProcess("linear"), VPProcess("cosine", prediction="v"), VEProcess(), EDMProcess(),
                                     FlowProcess()], ids=["vp_linear", "vp_cosine", "ve", "edm", "flow"])
def test_euler_through_the_ode_coordinates_equals_the_registered_euler_step(process: GaussianProcess) -> None:
    """The registered Euler step uses DDIM's closed form; integrating ``y = x / scale`` in ``tau`` gives the same."""
    from sciffusion.sampling.steps import euler_step

    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, s = torch.full((16,), 0.7, dtype=torch.float64), torch.full((16,), 0.4, dtype=torch.float64)
    c_t, c_s = process.coefficients(t, x), process.coefficients(s, x)
    pred = MIXTURE.predict(x, c_t.alpha[:, 0], c_t.sigma[:, 0])
    step = solve({"x": process}, lambda state, tt, path=None: {"x": pred}, {"x": x.clone()}, torch.tensor([0.7, 0.4], dtype=torch.float64), "euler")["x"]
    assert torch.allclose(step, euler_step(process, x, pred, c_t, c_s), atol=1e-12, rtol=1e-12)
