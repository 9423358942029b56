"""Closed-loop PointMaze evaluation: agents (planner + tracking, expert, BC) and the episode loop.

All episodes of one call run in lockstep (one env each), so a planner plans for every episode in one
batched sampling call. Episode ``i`` is reset with seed ``seed + i`` (D4RL goal cell, random start),
so a seed fixes the whole evaluation. Metrics per episode: return (steps within 0.45 m of the goal),
success (the goal was reached at least once), D4RL normalized score.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from sciffusion.domains.control.planning import (
    MLPPolicy,
    TrajectoryPlanner,
    cost_guidance,
    value_guidance,
)

from .config import ForbiddenRegion
from .controllers import TrackingConfig, TrackingController
from .expert import ExpertConfig, WaypointExpert
from .maze import GOAL_RADIUS, MazeSpec, make_pointmaze_env


class MazeAgent(Protocol):
    def reset(self, states: np.ndarray, goals: np.ndarray) -> None: ...

    def act(self, states: np.ndarray, step: int) -> np.ndarray: ...


class ExpertAgent:
    """The scripted waypoint expert, noise-free (no jitter, no action noise)."""

    def __init__(self, spec: MazeSpec, config: ExpertConfig | None = None) -> None:
        base = config or ExpertConfig()
        self.spec = spec
        self.config = ExpertConfig(**{**base.to_dict(), "waypoint_jitter": 0.0, "action_noise": 0.0})
        self.experts: list[WaypointExpert] = []

    def reset(self, states: np.ndarray, goals: np.ndarray) -> None:
        self.experts = [WaypointExpert(self.spec, self.config, np.random.default_rng(0)) for _ in states]
        for ex, s, g in zip(self.experts, states, goals):
            ex.set_goal(g, s[:2])

    def act(self, states: np.ndarray, step: int) -> np.ndarray:
        return np.stack([ex.act(s, noise=False) for ex, s in zip(self.experts, states)])


class BCAgent:
    """Goal-conditioned MLP behaviour cloning: ``(state, goal) -> action``."""

    def __init__(self, policy: MLPPolicy) -> None:
        self.policy = policy
        self.goals = np.zeros((0, 2))

    def reset(self, states: np.ndarray, goals: np.ndarray) -> None:
        self.goals = goals.copy()

    def act(self, states: np.ndarray, step: int) -> np.ndarray:
        obs = torch.as_tensor(np.concatenate([states, self.goals], axis=1), dtype=torch.float32)
        return np.clip(self.policy.act(obs).cpu().numpy(), -1.0, 1.0)


def forbidden_cost(region: ForbiddenRegion, per_segment: int = 8) -> Callable[[torch.Tensor], torch.Tensor]:
    """``states (B, H, S) -> (B,)``: squared intrusion into the disc enlarged by the margin.

    The path between plan tokens is what the tracking controller executes, so the cost is taken on the
    straight segments between consecutive tokens, each sampled at ``per_segment`` points.
    """
    center = torch.tensor(region.center, dtype=torch.float32)
    reach = region.radius + region.margin
    frac = torch.linspace(0.0, 1.0, per_segment + 1)[:-1]

    def cost(states: torch.Tensor) -> torch.Tensor:
        p = states[..., :2]
        a, b = p[:, :-1, None, :], p[:, 1:, None, :]
        f = frac.to(p)[None, None, :, None]
        dense = torch.cat([(a + f * (b - a)).flatten(1, 2), p[:, -1:]], dim=1)  # (B, (H-1)*k + 1, 2)
        d = torch.linalg.vector_norm(dense - center.to(p), dim=-1)
        return (torch.relu(reach - d) ** 2).sum(dim=-1)

    return cost


@dataclass
class PlannerAgent:
    """Diffuser planner + tracking controller, open loop or with receding-horizon replanning.

    Args:
        planner: trained planner (states first: x, y, vx, vy).
        tracking: controller gains.
        mode: ``open_loop`` | ``receding``.
        replan_every: steps between replans (receding mode).
        solver, steps: sampling solver and its steps.
        value_scale: value-guidance scale (0 = off).
        forbidden: region to steer plans away from (cost guidance), or None.
        target_return, guidance_scale: Decision-Diffuser conditioning (return-conditioned planners).
        clip_x0: clamp predicted clean plans (1 for ``limits``-normalised data), or None.
        seed: seeds the sampling noise.
    """

    planner: TrajectoryPlanner
    tracking: TrackingConfig
    mode: str = "open_loop"
    replan_every: int = 32
    solver: str = "dpmpp_2m"
    steps: int = 20
    value_scale: float = 0.0
    forbidden: ForbiddenRegion | None = None
    target_return: float = 0.9
    guidance_scale: float = 1.0
    clip_x0: float | None = None
    seed: int = 0
    plan_seconds: list[float] = field(default_factory=list)
    first_plans: np.ndarray | None = None
    goals: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.controller = TrackingController(self.tracking, self.planner.spec.stride)
        self.generator = torch.Generator().manual_seed(self.seed)
        guides = []
        if self.value_scale > 0:
            guides.append(value_guidance(self.planner, self.value_scale))
        if self.forbidden is not None:
            guides.append(cost_guidance(self.planner, forbidden_cost(self.forbidden), self.forbidden.scale,
                                        substeps=self.forbidden.substeps))
        self.guides = guides

    def _plan(self, states: np.ndarray) -> np.ndarray:
        assert self.goals is not None
        b = len(states)
        goal_states = np.concatenate([self.goals, np.zeros((b, 2))], axis=1)
        returns = torch.full((b, 1), self.target_return) if self.planner.returns_condition else None
        t0 = time.perf_counter()
        plans = self.planner.plan(torch.as_tensor(states, dtype=torch.float32), torch.as_tensor(goal_states, dtype=torch.float32),
                                  solver=self.solver, steps=self.steps, gradient_guidance=self.guides, returns=returns,
                                  guidance_scale=self.guidance_scale, generator=self.generator, clip_x0=self.clip_x0)
        self.plan_seconds.append(time.perf_counter() - t0)
        return plans.cpu().numpy().astype(np.float64)

    def reset(self, states: np.ndarray, goals: np.ndarray) -> None:
        self.goals = goals.copy()
        plans = self._plan(states)
        self.first_plans = plans
        self.controller.set_plans(plans)

    def act(self, states: np.ndarray, step: int) -> np.ndarray:
        if self.mode == "receding" and step > 0 and step % self.replan_every == 0:
            self.controller.set_plans(self._plan(states))
        return self.controller.act(states)


def reset_episodes(spec: MazeSpec, episodes: int, seed: int, start_cells: Sequence[Sequence[int]] | None = None
                   ) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Make and reset one env per episode; returns (envs, states (B, 4), goals (B, 2))."""
    envs, states, goals = [], [], []
    for i in range(episodes):
        env = make_pointmaze_env(spec)
        options: dict[str, Any] = {"goal_cell": np.array(spec.goal_cell)}
        if start_cells:
            options["reset_cell"] = np.array(start_cells[i % len(start_cells)])
        obs, _ = env.reset(seed=seed + i, options=options)
        envs.append(env)
        states.append(obs["observation"])
        goals.append(obs["desired_goal"])
    return envs, np.array(states, dtype=np.float64), np.array(goals, dtype=np.float64)


def run_maze_episodes(spec: MazeSpec, agent: MazeAgent, episodes: int = 50, seed: int = 0,
                      start_cells: Sequence[Sequence[int]] | None = None, max_steps: int | None = None,
                      region: ForbiddenRegion | None = None) -> dict[str, Any]:
    """Run ``episodes`` episodes in lockstep and collect per-episode results.

    Returns a dict with ``returns``, ``success``, ``normalized_score`` (each ``(B,)``), ``paths``
    ``(B, T + 1, 4)``, ``goals`` ``(B, 2)``, ``seconds`` and, with ``region``, ``avoided`` ``(B,)``
    (the ball's centre never entered the disc).
    """
    envs, states, goals = reset_episodes(spec, episodes, seed, start_cells)
    steps = max_steps or spec.max_episode_steps
    paths = np.zeros((episodes, steps + 1, 4))
    paths[:, 0] = states
    rewards = np.zeros((episodes, steps))
    t0 = time.perf_counter()
    agent.reset(states, goals)
    for k in range(steps):
        actions = agent.act(states, k)
        for i, env in enumerate(envs):
            obs, reward, *_ = env.step(actions[i])
            states[i] = obs["observation"]
            rewards[i, k] = reward
        paths[:, k + 1] = states
    for env in envs:
        env.close()
    returns = rewards.sum(axis=1)
    out: dict[str, Any] = {
        "returns": returns,
        "success": (np.linalg.norm(paths[:, 1:, :2] - goals[:, None], axis=-1) <= GOAL_RADIUS).any(axis=1),
        "normalized_score": spec.normalized_score(returns),
        "paths": paths,
        "goals": goals,
        "seconds": time.perf_counter() - t0,
    }
    if region is not None:
        d = np.linalg.norm(paths[:, :, :2] - np.asarray(region.center), axis=-1)
        out["avoided"] = (d > region.radius).all(axis=1)
    return out


def summarize(result: dict[str, Any]) -> dict[str, float]:
    """Means of the per-episode metrics (JSON-ready)."""
    out = {
        "episodes": len(result["returns"]),
        "success_rate": float(np.mean(result["success"])),
        "mean_return": float(np.mean(result["returns"])),
        "normalized_score": float(np.mean(result["normalized_score"])),
        "normalized_score_sem": float(np.std(result["normalized_score"]) / np.sqrt(len(result["returns"]))),
        "wall_seconds": float(result["seconds"]),
    }
    if "avoided" in result:
        out["avoid_rate"] = float(np.mean(result["avoided"]))
    return out
