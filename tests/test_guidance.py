"""Guidance: classifier-free guidance, gradient guidance, and hard constraints (inpainting, projection).

The network is exact: for each class a Gaussian mixture, and for the null class their union, so the
conditional and unconditional noise predictions are the true ones and guided samples can be checked
against known distributions.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from sciffusion.guidance import GradientGuidance, Inpaint, Project, classifier_free
from sciffusion.model import DiffusionModel
from sciffusion.processes import Prediction, VPProcess, from_x0_eps
from sciffusion.sampling import solve
from sciffusion.sampling.exact import GaussianMixture, sliced_wasserstein

# Two classes, well apart along both coordinates: class 0 around (-3, -2), class 1 around (3, 2).
CLASS_MIXTURES = [
    GaussianMixture([1.0, 1.0], [[-3.0, -2.5], [-3.0, -1.5]], [torch.eye(2) * 0.1, torch.eye(2) * 0.1]),
    GaussianMixture([1.0, 1.0], [[3.0, 1.5], [3.0, 2.5]], [torch.eye(2) * 0.1, torch.eye(2) * 0.1]),
]
UNCONDITIONAL = GaussianMixture(
    torch.cat([m.weights for m in CLASS_MIXTURES]) / 2,
    torch.cat([m.means for m in CLASS_MIXTURES]),
    torch.cat([m.covariances for m in CLASS_MIXTURES]),
)
NULL = len(CLASS_MIXTURES)
SOLVERS = ["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "euler_maruyama", "pc"]


class ExactConditionalNet(nn.Module):
    """``net(x_t, t, cond) -> {"x": eps}``: the exact noise prediction of the class's mixture on ``process``.

    ``cond = {"label": (B,) long}``; label ``NULL`` is the unconditional model (all classes together).
    """

    def __init__(self, process: VPProcess) -> None:
        super().__init__()
        self.process = process
        self.anchor = nn.Parameter(torch.zeros(()))  # DiffusionModel reads the device from the parameters
        self.mixtures = [*CLASS_MIXTURES, UNCONDITIONAL]

    def forward(self, x: dict[str, Tensor], t: Tensor, cond: dict[str, Tensor] | None) -> dict[str, Tensor]:
        points = x["x"]
        labels = cond["label"] if cond is not None else torch.full((len(points),), NULL)
        alpha, sigma = self.process.alpha_sigma(t.to(torch.float64))
        eps = torch.zeros_like(points)
        for label, mixture in enumerate(self.mixtures):
            rows = labels == label
            if rows.any():
                eps = torch.where(rows[:, None], mixture.predict(points, alpha, sigma).eps, eps)
        return {"x": eps}

    def drop_condition(self, cond: dict[str, Tensor], drop: Tensor) -> dict[str, Tensor]:
        return {"label": torch.where(drop, torch.full_like(cond["label"], NULL), cond["label"])}


def _model() -> DiffusionModel:
    process = VPProcess("linear")
    return DiffusionModel(ExactConditionalNet(process), {"x": process}).double()


def _labels(n: int, label: int) -> dict[str, Tensor]:
    return {"label": torch.full((n,), label, dtype=torch.long)}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _noise(n: int, seed: int = 0) -> dict[str, Tensor]:
    return {"x": torch.randn(n, 2, generator=_gen(seed), dtype=torch.float64)}


# ------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ------------------------------------------------------------------------------------------------
def test_cfg_scale_one_equals_conditional_model() -> None:
    model = _model()
    n = 256
    cond = {"label": torch.randint(0, 2, (n,), generator=_gen(1))}
    x, t = _noise(n)["x"], torch.full((n,), 0.6, dtype=torch.float64)
    guided = model.denoiser(cond, guidance_scale=1.0)({"x": x}, t)["x"]
    plain = model.predict({"x": x}, t, cond)["x"]
    assert torch.equal(guided.x0, plain.x0) and torch.equal(guided.eps, plain.eps)
    sampled = model.sample(x_init=_noise(n), cond=cond, solver="dpmpp_2m", steps=15, guidance_scale=1.0)["x"]
    process = model.processes["x"]
    direct = solve(model.processes, lambda s, tt, path: model.predict(s, tt, cond, path=path), _noise(n), process.time_grid(15), "dpmpp_2m")["x"]
    assert torch.equal(sampled, direct)


def test_cfg_scale_one_samples_the_class() -> None:
    model = _model()
    n = 2000
    for label in (0, 1):
        out = model.sample(x_init=_noise(n, seed=label), cond=_labels(n, label), solver="dpmpp_2m", steps=25)["x"]
        true = CLASS_MIXTURES[label].sample(n, _gen(10 + label))
        other = CLASS_MIXTURES[1 - label].sample(n, _gen(20 + label))
        assert sliced_wasserstein(out, true) < 0.05
        assert sliced_wasserstein(out, other) > 1.0


@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_cfg_combines_conditional_and_unconditional(scale: float) -> None:
    model = _model()
    n = 64
    cond = {"label": torch.randint(0, 2, (n,), generator=_gen(2))}
    x, t = _noise(n)["x"], torch.full((n,), 0.4, dtype=torch.float64)
    guided = model.denoiser(cond, guidance_scale=scale)({"x": x}, t)["x"]
    c = model.predict({"x": x}, t, cond)["x"]
    u = model.predict({"x": x}, t, _labels(n, NULL))["x"]
    assert torch.allclose(guided.x0, u.x0 + scale * (c.x0 - u.x0), atol=1e-12)
    assert torch.allclose(guided.eps, u.eps + scale * (c.eps - u.eps), atol=1e-12)
    if scale == 0.0:
        assert torch.allclose(guided.eps, u.eps, atol=1e-12)


def test_cfg_is_the_same_in_every_parametrization() -> None:
    """The combination is affine, so guiding eps, x0, v or the score gives one and the same prediction."""
    process = VPProcess("linear")
    n, scale = 32, 2.5
    x, t = _noise(n)["x"], torch.full((n,), 0.7, dtype=torch.float64)
    alpha, sigma = process.alpha_sigma(t)
    cond = CLASS_MIXTURES[0].predict(x, alpha, sigma)
    uncond = UNCONDITIONAL.predict(x, alpha, sigma)
    guided = classifier_free({"x": cond}, {"x": uncond}, scale)["x"]
    c = process.coefficients(t, x)
    for kind in ("eps", "x0", "v", "velocity", "score"):
        pc, pu = (from_x0_eps(p.x0, p.eps, kind, c) for p in (cond, uncond))
        assert torch.allclose(from_x0_eps(guided.x0, guided.eps, kind, c), pu + scale * (pc - pu), atol=1e-10), kind


def test_cfg_sharpens_towards_the_class() -> None:
    """With an unconditional model covering both classes, guidance > 1 keeps samples in the class and
    moves them away from the other one (lower unconditional-vs-conditional likelihood ratio)."""
    model = _model()
    n = 1000
    plain = model.sample(x_init=_noise(n), cond=_labels(n, 1), solver="ddim", steps=20, guidance_scale=1.0)["x"]
    strong = model.sample(x_init=_noise(n), cond=_labels(n, 1), solver="ddim", steps=20, guidance_scale=4.0)["x"]
    assert float(strong[:, 0].min()) > 1.0
    assert float(strong[:, 0].mean()) > float(plain[:, 0].mean())


# ------------------------------------------------------------------------------------------------
# Hard constraints
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("noise_known", [True, False])
def test_inpainting_keeps_known_entries_exactly(solver: str, noise_known: bool) -> None:
    model = _model()
    n = 500
    values = torch.zeros(n, 2, dtype=torch.float64)
    values[:, 0] = 3.0  # the first coordinate is known, and it says "class 1"
    mask = torch.zeros(n, 2, dtype=torch.bool)
    mask[:, 0] = True
    out = model.sample(x_init=_noise(n), cond=_labels(n, NULL), solver=solver, steps=20,
                       constraints=[Inpaint({"x": values}, {"x": mask}, noise_known=noise_known)], generator=_gen(4))["x"]
    assert torch.equal(out[mask], values[mask])
    assert torch.isfinite(out).all()
    if noise_known:  # replacement conditions the unknown coordinate on the known one: class 1's second coordinate
        assert 1.0 < float(out[:, 1].mean()) < 3.0


def test_inpainting_acts_per_field() -> None:
    process = VPProcess("linear")
    processes = {"a": process, "b": process}

    def denoise(x: dict[str, Tensor], t: Tensor, path: dict | None = None) -> dict[str, Prediction]:
        alpha, sigma = process.alpha_sigma(t)
        return {k: UNCONDITIONAL.predict(v, alpha, sigma) for k, v in x.items()}

    n = 100
    values, mask = torch.full((n, 2), 0.5, dtype=torch.float64), torch.ones(n, 2, dtype=torch.bool)
    start = {"a": _noise(n, 1)["x"], "b": _noise(n, 2)["x"]}
    free = solve(processes, denoise, dict(start), process.time_grid(10), "ddim")
    held = solve(processes, denoise, dict(start), process.time_grid(10), "ddim",
                 constraints=[Inpaint({"a": values}, {"a": mask})], generator=_gen(0))
    assert torch.equal(held["a"], values)
    assert torch.equal(held["b"], free["b"])  # field b does not see field a in this denoiser


def test_project_is_applied_after_every_step() -> None:
    model = _model()
    n, steps = 300, 12
    calls: list[float] = []

    def into_box(state: dict[str, Tensor]) -> dict[str, Tensor]:
        calls.append(1.0)
        return {"x": state["x"].clamp(-1.0, 1.0)}

    out = model.sample(x_init=_noise(n), cond=_labels(n, NULL), solver="dpmpp_2m", steps=steps, constraints=[Project(into_box)])["x"]
    assert len(calls) == steps + 1  # the initial state and after each step
    assert float(out.abs().max()) <= 1.0
    free = model.sample(x_init=_noise(n), cond=_labels(n, NULL), solver="dpmpp_2m", steps=steps)["x"]
    assert float(free.abs().max()) > 2.0  # without the projection the samples leave the box


def test_project_zero_centre_of_mass() -> None:
    """A typical geometric constraint: a (B, atoms, 3) field kept at zero centre of mass."""
    process = VPProcess("linear")

    def denoise(x: dict[str, Tensor], t: Tensor, path: dict | None = None) -> dict[str, Prediction]:
        alpha, sigma = process.alpha_sigma(t)
        flat = x["pos"].reshape(-1, 2)
        p = UNCONDITIONAL.predict(flat, alpha.repeat_interleave(12), sigma.repeat_interleave(12))
        return {"pos": Prediction(p.x0.reshape(x["pos"].shape), p.eps.reshape(x["pos"].shape))}

    centre = Project(lambda s: {"pos": s["pos"] - s["pos"].mean(dim=1, keepdim=True)})
    start = {"pos": torch.randn(8, 4, 3, generator=_gen(3), dtype=torch.float64).reshape(8, 4, 3)}
    out = solve({"pos": process}, denoise, start, process.time_grid(10), "heun", constraints=[centre])["pos"]
    assert out.mean(dim=1).abs().max() < 1e-12


# ------------------------------------------------------------------------------------------------
# Gradient guidance
# ------------------------------------------------------------------------------------------------
def _distance_to(target: Tensor, column: int | None = None):
    def loss(x0: dict[str, Tensor], x_t: dict[str, Tensor], t: Tensor, index: dict[str, Tensor]) -> Tensor:
        diff = x0["x"] - target
        return (diff[:, column] ** 2) if column is not None else (diff**2).sum(-1)

    return loss


@pytest.mark.parametrize("through_model", [True, False])
@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "heun", "euler_maruyama"])
def test_gradient_guidance_lowers_its_loss(through_model: bool, solver: str) -> None:
    model = _model()
    n = 400
    target = torch.tensor([3.0, 2.5], dtype=torch.float64)  # one of the four modes
    loss = _distance_to(target)
    guide = GradientGuidance(loss, scale=0.5, through_model=through_model)
    kwargs = {"cond": _labels(n, NULL), "solver": solver, "steps": 20, "generator": _gen(5)}
    free = model.sample(x_init=_noise(n), **kwargs)["x"]
    guided = model.sample(x_init=_noise(n), gradient_guidance=[guide], **kwargs)["x"]
    free_loss = float(loss({"x": free}, {}, torch.zeros(n), {}).mean())
    guided_loss = float(loss({"x": guided}, {}, torch.zeros(n), {}).mean())
    assert guided_loss < 0.5 * free_loss, (free_loss, guided_loss)
    assert torch.isfinite(guided).all()


def test_gradient_guidances_compose() -> None:
    """Two losses, each on one coordinate: both together lower both; each alone lowers only its own more."""
    model = _model()
    n = 400
    target = torch.tensor([-3.0, -1.5], dtype=torch.float64)
    first, second = _distance_to(target, 0), _distance_to(target, 1)
    kwargs = {"cond": _labels(n, NULL), "solver": "ddim", "steps": 20}

    def mean_losses(guides: list[GradientGuidance]) -> tuple[float, float]:
        out = model.sample(x_init=_noise(n), gradient_guidance=guides, **kwargs)["x"]
        return float(first({"x": out}, {}, None, {}).mean()), float(second({"x": out}, {}, None, {}).mean())

    free = mean_losses([])
    both = mean_losses([GradientGuidance(first, scale=0.5), GradientGuidance(second, scale=0.5)])
    assert both[0] < 0.5 * free[0] and both[1] < 0.5 * free[1], (free, both)


class _UniformTorusNet(nn.Module):
    """The exact network of uniform data on the torus: the velocity (flow) and the score (wrapped normal) of the
    noisy marginal are 0 everywhere, so unguided samples stay uniform."""

    def forward(self, x: dict[str, Tensor], t: Tensor, cond=None, index=None) -> dict[str, Tensor]:  # noqa: ANN001
        return {"frac": torch.zeros_like(x["frac"])}


@pytest.mark.parametrize("kind, solver", [("flow", "euler"), ("flow", "heun"), ("wrapped_normal", "euler"),
                                          ("wrapped_normal", "pc")])
def test_gradient_guidance_steers_a_torus_field(kind: str, solver: str) -> None:
    """A periodic loss ``1 - cos(2 pi (x0 - 0.3))`` pulls uniform fractional coordinates toward 0.3 through the
    clean estimate (x0-only guidance); the guided samples stay on [0, 1); through_model is refused."""
    from sciffusion.processes.torus import TorusFlowProcess, WrappedNormalProcess

    process = TorusFlowProcess() if kind == "flow" else WrappedNormalProcess()
    model = DiffusionModel(_UniformTorusNet(), {"frac": process})
    model.register_parameter("anchor", nn.Parameter(torch.zeros(1, dtype=torch.float64)))

    def loss(x0: dict[str, Tensor], x_t, t, index) -> Tensor:  # noqa: ANN001
        return (1 - torch.cos(2 * torch.pi * (x0["frac"] - 0.3))).sum(dim=1)

    n = 500
    kwargs = {"solver": solver, "steps": 30}
    free = model.sample({"frac": (n, 2)}, generator=_gen(3), **kwargs)["frac"]
    guided = model.sample({"frac": (n, 2)}, generator=_gen(3), gradient_guidance=[
        GradientGuidance(loss, scale=20.0, through_model=False, substeps=4)], **kwargs)["frac"]
    free_loss = float(loss({"frac": free}, None, None, None).mean())
    guided_loss = float(loss({"frac": guided}, None, None, None).mean())
    assert free_loss > 1.6 and guided_loss < 0.5 * free_loss, (free_loss, guided_loss)
    assert float(guided.min()) >= 0 and float(guided.max()) < 1
    with pytest.raises(ValueError, match="through_model=False"):
        model.sample({"frac": (4, 2)}, gradient_guidance=[GradientGuidance(loss, fields=["frac"])], **kwargs)
