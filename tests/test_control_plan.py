"""Diffuser-style planning end to end on U-Maze: train through the core Trainer, plan, guide, run closed loop."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sciffusion.domains.control.config import ForbiddenRegion
from sciffusion.domains.control.domain import evaluate_run
from sciffusion.domains.control.evaluation import forbidden_cost
from sciffusion.domains.control.maze import ControlConfigError

from sciffusion.cli import main as cli_main
from sciffusion.config import config_from_dict
from sciffusion.domain import get_domain, load_run
from sciffusion.model import DiffusionModel
from sciffusion.processes import VPProcess
from sciffusion.domains.control.trajectory import TrajectorySpec
from sciffusion.domains.control.planning import TrajectoryPlanner, cost_guidance, value_guidance
from sciffusion.train.trainer import train


def tiny_planner_config(run_dir: Path, cache: Path, **task: object) -> dict:
    return {
        "domain": "control",
        "seed": 0,
        "run_dir": str(run_dir),
        "data": {"env": "pointmaze-umaze", "generate_steps": 2000, "generate_seed": 1, "cache": str(cache)},
        "task": {"kind": "planner", "horizon": 8, "stride": 8, **task},
        "net": {"name": "temporal_unet1d", "dim": 8, "dim_mults": [1, 2]},
        "process": {"name": "vp", "schedule": "cosine", "prediction": "x0", "num_train_steps": 64},
        "loss": {"cond_drop_prob": 0.2},
        "trainer": {"max_steps": 30, "batch_size": 16, "lr": 1e-3, "ema_decay": 0.9, "checkpoint_every": 0,
                    "log_every": 20, "progress": False},
        "sample": {"solver": "dpmpp_2m", "steps": 6, "seed": 0},
        "control": {"episodes": 2, "seed": 5},
    }


@pytest.fixture(scope="module")
def planner_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("umaze")
    # every planner option at once: value head, inverse dynamics, goal (FiLM) and return conditioning
    cfg = config_from_dict(tiny_planner_config(root / "run", root / "data", value=True, value_dim=8,
                                                 inverse_dynamics=True, goal_condition=True, returns_condition=True))
    result = train(cfg)
    assert result.step == 30 and np.isfinite(result.loss)
    return root / "run"


def test_inpainting_keeps_start_and_goal_exactly(planner_run: Path) -> None:
    planner = load_run(planner_run).model
    assert isinstance(planner, TrajectoryPlanner)
    start = torch.tensor([[-1.0, -1.0, 0.3, -0.2], [1.1, 0.9, 0.0, 0.0]])
    goal = torch.tensor([[-1.0, 1.0, 0.0, 0.0], [-0.9, -1.1, 0.0, 0.0]])
    plans = planner.plan(start, goal, steps=6, generator=torch.Generator().manual_seed(0), clip_x0=1.0)
    assert plans.shape == (2, 8, 4)
    torch.testing.assert_close(plans[:, 0], start, atol=1e-5, rtol=0)
    torch.testing.assert_close(plans[:, -1], goal, atol=1e-5, rtol=0)
    # return conditioning with classifier-free guidance (Decision Diffuser) keeps them too, and changes the plan
    cfg_plans = planner.plan(start, goal, steps=6, returns=torch.full((2, 1), 0.9), guidance_scale=2.0,
                             generator=torch.Generator().manual_seed(0), clip_x0=1.0)
    assert not torch.allclose(cfg_plans, plans)
    plans = cfg_plans
    torch.testing.assert_close(plans[:, 0], start, atol=1e-5, rtol=0)
    torch.testing.assert_close(plans[:, -1], goal, atol=1e-5, rtol=0)
    # a waypoint pinned in the middle is kept too
    mid = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    plans = planner.plan(start, goal, waypoints={4: mid}, steps=6, clip_x0=1.0)
    torch.testing.assert_close(plans[:, 4], mid, atol=1e-5, rtol=0)


class GaussianPosteriorNet(torch.nn.Module):
    """Exact x0 denoiser for data ~ N(0, c I): ``x0_hat = alpha c / (alpha^2 c + sigma^2) x_t``."""

    def __init__(self, process: VPProcess, c: float = 0.25) -> None:
        super().__init__()
        self.process, self.c = process, c
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: dict, t: torch.Tensor, cond: dict | None = None) -> dict:
        alpha, sigma = (v.to(x["traj"].dtype)[:, None, None] for v in self.process.alpha_sigma(t.double()))
        return {"traj": alpha * self.c / (alpha**2 * self.c + sigma**2) * x["traj"]}


def analytic_planner() -> TrajectoryPlanner:
    """A planner whose denoiser is exact for a known Gaussian prior: guidance effects are clean to measure."""
    process = VPProcess(schedule="cosine", prediction="x0", num_train_steps=64)
    return TrajectoryPlanner(DiffusionModel(GaussianPosteriorNet(process), {"traj": process}), TrajectorySpec(4, 0, 16))


@pytest.mark.parametrize("substeps", [1, 20])
def test_cost_guidance_lowers_the_cost_it_targets(substeps: int) -> None:
    planner = analytic_planner()
    start = torch.tensor([[-1.0, 0.0, 0.0, 0.0]]).repeat(32, 1)
    goal = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(32, 1)
    region = ForbiddenRegion(center=[0.0, 0.0], radius=0.5, margin=0.1)
    cost = forbidden_cost(region)
    free = planner.plan(start, goal, steps=20, generator=torch.Generator().manual_seed(1))
    guided = planner.plan(start, goal, steps=20, generator=torch.Generator().manual_seed(1),
                          gradient_guidance=[cost_guidance(planner, cost, scale=2.0, substeps=substeps)])
    c_free, c_guided = cost(free).mean().item(), cost(guided).mean().item()
    assert c_free > 0.3  # prior samples crowd the origin
    assert c_guided < 0.2 * c_free
    # the plan states stay out of the disc itself
    inside = torch.linalg.vector_norm(guided[:, 1:-1, :2], dim=-1) < region.radius
    assert inside.float().mean() < 0.02 < (torch.linalg.vector_norm(free[:, 1:-1, :2], dim=-1) < region.radius).float().mean()
    # the correction is finite at t = 1 (no sigma^2 / alpha blow-up): plans stay near the prior's scale
    assert (guided - free)[..., :2].norm(dim=-1).mean() < 3.0
    torch.testing.assert_close(guided[:, 0], start, atol=1e-5, rtol=0)  # guidance leaves the pinned states alone
    torch.testing.assert_close(guided[:, -1], goal, atol=1e-5, rtol=0)


def test_cost_guidance_substeps_do_not_overshoot() -> None:
    """A strong single step throws plan states far past the region's edge; sub-steps stop near it."""
    planner = analytic_planner()
    start = torch.tensor([[-1.0, 0.0, 0.0, 0.0]]).repeat(32, 1)
    goal = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(32, 1)
    cost = forbidden_cost(ForbiddenRegion(center=[0.0, 0.0], radius=0.5, margin=0.1))
    free = planner.plan(start, goal, steps=20, generator=torch.Generator().manual_seed(1))

    def moved(substeps: int) -> float:
        guided = planner.plan(start, goal, steps=20, generator=torch.Generator().manual_seed(1),
                              gradient_guidance=[cost_guidance(planner, cost, scale=20.0, substeps=substeps)])
        assert cost(guided).mean() < 0.05 * cost(free).mean()
        return (guided - free)[..., :2].norm(dim=-1).mean().item()

    assert moved(50) < 0.2 * moved(1)
    with pytest.raises(ValueError):
        cost_guidance(planner, cost, scale=1.0, through_model=True, substeps=2)


def test_value_guidance_raises_the_value_it_targets() -> None:
    """With a known value function (mean normalised x of the plan) guidance must raise it."""
    planner = analytic_planner()

    class MeanX(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x[..., 0].mean(dim=-1)

    planner.value_net = MeanX()
    start = torch.zeros(32, 4)
    free = planner.plan(start, steps=20, generator=torch.Generator().manual_seed(2))
    guided = planner.plan(start, steps=20, generator=torch.Generator().manual_seed(2),
                          gradient_guidance=[value_guidance(planner, scale=1.0)])
    assert guided[:, 1:, 0].mean() > free[:, 1:, 0].mean() + 0.2
    torch.testing.assert_close(guided[:, 0], start, atol=1e-6, rtol=0)


def test_value_and_inverse_dynamics_heads_are_trained_and_usable(planner_run: Path) -> None:
    planner = load_run(planner_run).model
    s = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    a = planner.infer_actions(s, s + torch.tensor([[0.3, 0.0, 0.5, 0.0]]))
    assert a.shape == (1, 2) and torch.isfinite(a).all()
    v = planner.value_net(torch.zeros(3, 8, 4), torch.full((3,), 0.5))
    assert v.shape == (3,)


def test_plan_command_end_to_end_and_deterministic(planner_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "plans"
    gif = tmp_path / "rollout.gif"
    code = cli_main(["plan", str(planner_run), "--env", "pointmaze-umaze", "--episodes", "2", "--out", str(out), "--render", str(gif)])
    assert code == 0
    metrics = json.loads((out / "plan_metrics.json").read_text())
    assert metrics["episodes"] == 2 and 0.0 <= metrics["success_rate"] <= 1.0 and metrics["plan_calls"] == 1
    assert (out / "paths.png").stat().st_size > 0 and gif.stat().st_size > 0
    assert cli_main(["evaluate", str(planner_run)]) == 0  # control.episodes = 2
    assert json.loads((planner_run / "metrics.json").read_text())["episodes"] == 2
    assert (planner_run / "eval" / "paths.png").stat().st_size > 0
    run = load_run(planner_run)
    m1, r1 = evaluate_run(run.model, run.config, episodes=2, seed=11)
    m2, r2 = evaluate_run(run.model, run.config, episodes=2, seed=11)
    np.testing.assert_array_equal(r1["paths"], r2["paths"])
    assert m1["mean_return"] == m2["mean_return"]
    capsys.readouterr()
    assert cli_main(["plan", str(planner_run), "--env", "pointmaze-medium", "--episodes", "1"]) == 2
    assert "trained on 'pointmaze-umaze'" in capsys.readouterr().err
    assert cli_main(["plan", str(planner_run), "--env", "mars-rover"]) == 2
    assert "unknown environment 'mars-rover'" in capsys.readouterr().err


def test_horizon_longer_than_episodes_is_rejected(tmp_path: Path) -> None:
    cfg = config_from_dict(tiny_planner_config(tmp_path / "run", tmp_path / "data", horizon=48, stride=8))
    with pytest.raises(ControlConfigError, match="longer than a pointmaze-umaze episode"):
        get_domain("control").setup(cfg)
