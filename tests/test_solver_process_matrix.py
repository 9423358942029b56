"""Every solver on every Gaussian path and prediction type the core offers converges to the target.

The model is a perfect network of each prediction type (the exact mixture denoiser, turned into the raw
output ``eps`` / ``x0`` / ``v`` / ``velocity`` and converted back by the process, as :class:`DiffusionModel`
does), so every error is the solver's. The error is the sliced W1 of 8,000 samples to the mixture itself.
A pair passes when the error falls from 10 network evaluations to many (200 for the ODE solvers, 1,000 for
the stochastic ones, which converge at first order in the step) and ends within 50 % of the floor: the larger
of the mean error of 8,000 true samples (sampling noise) and the path's own DDIM error at 1,000 steps (a path
whose prior at ``t = 1`` is not exactly the Gaussian, such as VP quad, has a floor no solver goes below).
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from sciffusion.processes import FlowProcess, GaussianProcess, Prediction, VEProcess, VPProcess, from_x0_eps
from sciffusion.processes.gaussian import EDMProcess
from sciffusion.sampling import compatible_solvers, solve, steps_for_nfe
from sciffusion.sampling.exact import SlicedW1ToMixture, reference_mixture

MIXTURE = reference_mixture(dim=2, components=4, seed=0)
SOLVER_NAMES = ["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "euler_maruyama", "pc"]
PATHS = {
    "vp_linear": lambda prediction: VPProcess("linear", prediction=prediction),
    "vp_cosine": lambda prediction: VPProcess("cosine", prediction=prediction),
    "vp_quad": lambda prediction: VPProcess("quad", prediction=prediction),
    "ve": lambda prediction: VEProcess(prediction=prediction),
    "edm": lambda prediction: EDMProcess(),
    "flow": lambda prediction: FlowProcess(prediction=prediction),
}
PREDICTIONS = ["eps", "x0", "v", "velocity"]
DEFAULT_PREDICTION = {"vp_linear": "eps", "vp_cosine": "v", "vp_quad": "eps", "ve": "eps", "edm": "x0", "flow": "velocity"}
N_SAMPLES = 8000
FINE_NFE = {"ddpm": 1000, "euler_maruyama": 1000, "pc": 1000}  # others: 200


@pytest.fixture(scope="module")
def distance() -> SlicedW1ToMixture:
    return SlicedW1ToMixture(MIXTURE, projections=128)


def _raw_network(process: GaussianProcess):
    """A perfect network whose raw output is of the process's prediction type (EDM: its ``F``)."""

    def denoise(x: dict[str, Tensor], t: Tensor, path: dict | None = None) -> dict[str, Prediction]:
        c = process.coefficients(t, x["x"])
        exact = MIXTURE.predict(x["x"], c.alpha[:, 0].expand(len(x["x"])), c.sigma[:, 0].expand(len(x["x"])))
        native = from_x0_eps(exact.x0, exact.eps, process.prediction, c)
        if isinstance(process, EDMProcess):  # invert D = c_skip x + c_out F
            c_skip, c_out, _, _ = process.preconditioning(process.sigma_max * t.to(torch.float64))
            native = (native - c_skip[:, None] * x["x"]) / c_out[:, None]
            native = process.net_output(native, x["x"], t)
        return {"x": process.to_x0_eps(native, x["x"], t)}

    return denoise


def _error(process: GaussianProcess, solver: str, nfe_budget: int, distance: SlicedW1ToMixture) -> float:
    steps = steps_for_nfe(solver, nfe_budget)
    z = torch.randn(N_SAMPLES, MIXTURE.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = solve({"x": process}, _raw_network(process), {"x": z * process.prior_scale()}, process.time_grid(steps),
                solver, generator=torch.Generator().manual_seed(6))["x"]
    assert torch.isfinite(out).all(), (solver, nfe_budget)
    return distance(out)


@pytest.fixture(scope="module")
def floors(distance) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    sampling_noise = sum(distance(MIXTURE.sample(N_SAMPLES, generator)) for _ in range(4)) / 4
    return {name: max(sampling_noise, _error(make(DEFAULT_PREDICTION[name]), "ddim", 1000, distance))
            for name, make in PATHS.items()}


def test_every_registered_solver_is_in_the_matrix() -> None:
    """Every solver that can drive a Gaussian path is tested here (a new one needs a row)."""
    assert sorted(compatible_solvers(VPProcess("linear"))) == sorted(SOLVER_NAMES)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_solver_converges_on_path(path: str, solver: str, distance, floors) -> None:
    process = PATHS[path](DEFAULT_PREDICTION[path])
    coarse, fine = _error(process, solver, 10, distance), _error(process, solver, FINE_NFE.get(solver, 200), distance)
    assert fine < coarse, (coarse, fine)
    assert fine <= 1.5 * floors[path], (fine, floors[path])


@pytest.mark.parametrize("path", ["vp_linear", "vp_cosine", "ve", "flow"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun", "ddpm"])
def test_prediction_types_give_the_same_samples(path: str, prediction: str, solver: str) -> None:
    """The conversions are exact: a perfect network of any parametrization yields the x0 network's samples."""
    if path == "flow" and prediction == "eps":
        pytest.skip("refused: see test_eps_prediction_is_refused_where_alpha_vanishes")
    reference, other = PATHS[path]("x0"), PATHS[path](prediction)
    z = torch.randn(256, MIXTURE.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def run(process: GaussianProcess) -> Tensor:
        return solve({"x": process}, _raw_network(process), {"x": z.clone()}, process.time_grid(12), solver,
                     generator=torch.Generator().manual_seed(2))["x"]

    assert torch.allclose(run(other), run(reference), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("make", [lambda p: FlowProcess(prediction=p), lambda p: VPProcess("linear", prediction=p, zero_terminal_snr=True)])
@pytest.mark.parametrize("prediction", ["eps", "score"])
def test_eps_prediction_is_refused_where_alpha_vanishes(make, prediction: str) -> None:
    with pytest.raises(ValueError, match="cannot give the clean sample at t = 1"):
        make(prediction)
