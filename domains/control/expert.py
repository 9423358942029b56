"""Scripted PointMaze expert: a waypoint controller on the maze's cell graph.

As in D4RL's maze2d data collection, the expert plans a shortest path of cells to the goal, jitters
each waypoint around its cell centre and adds Gaussian noise to its actions. It steers toward the
furthest waypoint it can see (at most ``lookahead`` ahead, segment clear of the walls by
``sight_margin``), at ``max_speed`` with braking before turns and at the goal. The action is a
velocity-tracking force command ``clip(gain * (v_desired - v), -1, 1)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .maze import GOAL_RADIUS, MazeSpec


@dataclass(frozen=True)
class ExpertConfig:
    """Waypoint-controller settings (all SI units; actions are in [-1, 1]).

    Attributes:
        max_speed: cruise speed in m/s (the simulator clips |v| at 5 m/s).
        turn_speed: speed allowed when arriving at an intermediate waypoint.
        brake_accel: deceleration in m/s^2 assumed when planning to slow down.
        gain: action per m/s of velocity error.
        waypoint_jitter: half-width of the uniform jitter added to each waypoint (D4RL-style).
        action_noise: standard deviation of the Gaussian noise added to each action.
        lookahead: how many waypoints ahead the controller may aim at.
        sight_margin: clearance from walls required to aim straight at a waypoint.
    """

    max_speed: float = 4.0
    turn_speed: float = 1.5
    brake_accel: float = 10.0
    gain: float = 4.0
    waypoint_jitter: float = 0.15
    action_noise: float = 0.1
    lookahead: int = 3
    sight_margin: float = 0.15

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class WaypointExpert:
    """Goal-reaching controller for one maze; call :meth:`set_goal` then :meth:`act` every step.

    Args:
        spec: the maze.
        config: controller settings.
        rng: source of waypoint jitter and action noise.
    """

    def __init__(self, spec: MazeSpec, config: ExpertConfig, rng: np.random.Generator) -> None:
        self.spec, self.config, self.rng = spec, config, rng
        self.goal = np.zeros(2)
        self.waypoints: list[np.ndarray] = []
        self.path_cells: list[tuple[int, int]] = []

    def set_goal(self, goal_xy: np.ndarray, position: np.ndarray) -> None:
        """Plan jittered waypoints from ``position`` ``(2,)`` to ``goal_xy`` ``(2,)``."""
        self.goal = np.asarray(goal_xy, dtype=np.float64).copy()
        self._plan(np.asarray(position, dtype=np.float64))

    def _plan(self, position: np.ndarray) -> None:
        cells = self.spec.shortest_path(self.spec.xy_to_cell(position), self.spec.xy_to_cell(self.goal))
        jitter = self.config.waypoint_jitter
        self.path_cells = cells
        self.waypoints = [self.spec.cell_to_xy(c) + self.rng.uniform(-jitter, jitter, 2) for c in cells[1:-1]]
        self.waypoints.append(self.goal.copy())

    def act(self, state: np.ndarray, noise: bool = True) -> np.ndarray:
        """Force command ``(2,)`` in [-1, 1] for state ``(4,)`` = (x, y, vx, vy)."""
        pos, vel = state[:2], state[2:4]
        cell = self.spec.xy_to_cell(pos)
        if cell not in self.path_cells:  # pushed off the planned corridor: replan from here
            self._plan(pos)
        else:  # drop waypoints of cells already passed
            k = self.path_cells.index(cell)
            if k > 0:
                self.path_cells = self.path_cells[k:]
                self.waypoints = self.waypoints[k:] or [self.goal.copy()]
        target_idx = 0
        for idx in range(min(self.config.lookahead, len(self.waypoints)) - 1, 0, -1):
            if self.spec.segment_clear(pos, self.waypoints[idx], self.config.sight_margin):
                target_idx = idx
                break
        target = self.waypoints[target_idx]
        offset = target - pos
        dist = float(np.linalg.norm(offset))
        cfg = self.config
        if target_idx == len(self.waypoints) - 1:  # aiming at the goal: stop on it
            speed = min(cfg.max_speed, np.sqrt(2.0 * cfg.brake_accel * dist), 10.0 * dist)
        else:
            speed = min(cfg.max_speed, np.sqrt(cfg.turn_speed**2 + 2.0 * cfg.brake_accel * dist))
        v_des = offset / max(dist, 1e-6) * speed
        action = cfg.gain * (v_des - vel)
        if noise and cfg.action_noise > 0:
            action = action + self.rng.normal(0.0, cfg.action_noise, 2)
        return np.clip(action, -1.0, 1.0)

    def at_goal(self, state: np.ndarray, tol: float = 0.1) -> bool:
        """True when the ball is within ``tol`` of the goal and nearly still."""
        return bool(np.linalg.norm(state[:2] - self.goal) < tol and np.linalg.norm(state[2:4]) < 0.3)


def expert_reaches(spec: MazeSpec, start_xy: np.ndarray, goal_xy: np.ndarray, config: ExpertConfig,
                   seed: int, max_steps: int) -> tuple[bool, int]:
    """Run the expert in the real env from ``start_xy`` to ``goal_xy``; returns (reached, steps used)."""
    from .maze import make_pointmaze_env, set_goal

    env = make_pointmaze_env(spec)
    env.reset(seed=seed)
    env.point_env.set_state(np.array([*start_xy]), np.zeros(2))
    set_goal(env, goal_xy)
    expert = WaypointExpert(spec, config, np.random.default_rng(seed))
    state = np.array([*start_xy, 0.0, 0.0])
    expert.set_goal(goal_xy, state[:2])
    for step in range(max_steps):
        obs, *_ = env.step(expert.act(state))
        state = obs["observation"]
        if np.linalg.norm(state[:2] - goal_xy) <= GOAL_RADIUS:
            return True, step + 1
    return False, max_steps
