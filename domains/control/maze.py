"""PointMaze environments (gymnasium-robotics + MuJoCo, headless) and maze geometry.

The three mazes are the D4RL ``maze2d`` layouts as shipped by gymnasium-robotics. Coordinates follow
gymnasium-robotics: cell ``(row, col)`` has its centre at ``x = col + 0.5 - W / 2``,
``y = H / 2 - (row + 0.5)`` (cells are 1 m wide). The ball has radius 0.1 m.

Evaluation protocol (D4RL-style): the goal cell is D4RL's fixed ``G`` cell of each maze, the start
cell is drawn uniformly among the free cells at least 0.5 m from the goal, and gymnasium-robotics adds
uniform noise of +-0.25 m to both. Reward is sparse: 1 for every step that ends within 0.45 m of the
goal, else 0 (gymnasium-robotics' definition; D4RL used 0.5 m). An episode lasts 300 / 600 / 800
steps (U-Maze / Medium / Large), the D4RL episode lengths.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from sciffusion.extras import require


class ControlConfigError(ValueError):
    """Bad environment name, data file or horizon for the control domain."""


BALL_RADIUS = 0.1
GOAL_RADIUS = 0.45

U_MAZE = [
    [1, 1, 1, 1, 1],
    [1, 0, 0, 0, 1],
    [1, 1, 1, 0, 1],
    [1, 0, 0, 0, 1],
    [1, 1, 1, 1, 1],
]
MEDIUM_MAZE = [
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 1, 1, 0, 0, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 1, 0, 0, 0, 1, 1, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 0, 1, 0, 0, 1, 0, 1],
    [1, 0, 0, 0, 1, 0, 0, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
]
LARGE_MAZE = [
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
    [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
    [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
    [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
    [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
    [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
    [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1],
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
]


@dataclass(frozen=True)
class MazeSpec:
    """One PointMaze task.

    Attributes:
        name: environment name used on the command line (``pointmaze-umaze``).
        gym_id: gymnasium-robotics id.
        layout: 0/1 wall map, rows top to bottom.
        max_episode_steps: evaluation episode length (D4RL).
        goal_cell: D4RL's fixed evaluation goal cell ``(row, col)``.
        ref_min_score, ref_max_score: D4RL reference returns for the normalized score.
    """

    name: str
    gym_id: str
    layout: tuple[tuple[int, ...], ...]
    max_episode_steps: int
    goal_cell: tuple[int, int]
    ref_min_score: float
    ref_max_score: float

    @property
    def n_rows(self) -> int:
        return len(self.layout)

    @property
    def n_cols(self) -> int:
        return len(self.layout[0])

    @cached_property
    def free_cells(self) -> list[tuple[int, int]]:
        """All non-wall cells, row-major."""
        return [(i, j) for i in range(self.n_rows) for j in range(self.n_cols) if self.layout[i][j] == 0]

    @cached_property
    def wall_array(self) -> np.ndarray:
        """``(n_rows, n_cols)`` bool, True where there is a wall."""
        return np.array(self.layout, dtype=bool)

    def cell_to_xy(self, cell: tuple[int, int] | np.ndarray) -> np.ndarray:
        """Centre ``(2,)`` of cell ``(row, col)``."""
        i, j = int(cell[0]), int(cell[1])
        return np.array([j + 0.5 - self.n_cols / 2.0, self.n_rows / 2.0 - (i + 0.5)])

    def xy_to_cell(self, xy: np.ndarray) -> tuple[int, int]:
        """Cell ``(row, col)`` holding point ``xy`` (clamped to the map)."""
        i = int(np.floor(self.n_rows / 2.0 - xy[1]))
        j = int(np.floor(xy[0] + self.n_cols / 2.0))
        return min(max(i, 0), self.n_rows - 1), min(max(j, 0), self.n_cols - 1)

    @cached_property
    def wall_centres(self) -> np.ndarray:
        """``(n_walls, 2)`` centres of the wall blocks."""
        return np.array([self.cell_to_xy(c) for c in zip(*np.nonzero(self.wall_array))])

    def wall_distance(self, xy: np.ndarray) -> np.ndarray:
        """Distance from points ``(..., 2)`` to the nearest wall block (0 inside a wall). Shape ``(...)``."""
        xy = np.asarray(xy, dtype=np.float64)
        d = np.abs(xy[..., None, :] - self.wall_centres) - 0.5  # (..., W, 2) per-axis box distance
        outside = np.linalg.norm(np.maximum(d, 0.0), axis=-1)
        return np.min(outside, axis=-1)

    def segment_clear(self, a: np.ndarray, b: np.ndarray, margin: float, n: int = 16) -> bool:
        """True when the straight segment a->b stays at least ``margin`` from every wall."""
        pts = a[None, :] + np.linspace(0.0, 1.0, n)[:, None] * (b - a)[None, :]
        return bool(np.all(self.wall_distance(pts) >= margin))

    def shortest_path(self, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
        """Breadth-first shortest path of 4-connected free cells from ``start`` to ``goal`` (both included)."""
        if self.layout[start[0]][start[1]] or self.layout[goal[0]][goal[1]]:
            raise ControlConfigError(f"{self.name}: path endpoints must be free cells, got {start} -> {goal}")
        parent: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
        queue = deque([start])
        while queue:
            cell = queue.popleft()
            if cell == goal:
                break
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nxt = (cell[0] + di, cell[1] + dj)
                if nxt not in parent and self.layout[nxt[0]][nxt[1]] == 0:
                    parent[nxt] = cell
                    queue.append(nxt)
        path = [goal]
        while path[-1] != start:
            path.append(parent[path[-1]])  # type: ignore[arg-type]
        return path[::-1]

    def normalized_score(self, episode_return: float | np.ndarray) -> float | np.ndarray:
        """D4RL normalized score ``100 * (return - ref_min) / (ref_max - ref_min)``."""
        return 100.0 * (episode_return - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)


MAZES: dict[str, MazeSpec] = {
    spec.name: spec
    for spec in (
        MazeSpec("pointmaze-umaze", "PointMaze_UMaze-v3", tuple(map(tuple, U_MAZE)), 300, (1, 1), 23.85, 161.86),
        MazeSpec("pointmaze-medium", "PointMaze_Medium-v3", tuple(map(tuple, MEDIUM_MAZE)), 600, (6, 6), 13.13, 277.39),
        MazeSpec("pointmaze-large", "PointMaze_Large-v3", tuple(map(tuple, LARGE_MAZE)), 800, (7, 9), 6.7, 273.99),
    )
}


def get_maze(name: str) -> MazeSpec:
    """Look up a maze by CLI name (``pointmaze-umaze`` | ``pointmaze-medium`` | ``pointmaze-large``)."""
    if name not in MAZES:
        raise ControlConfigError(f"unknown environment '{name}' (known: {', '.join(sorted(MAZES))}, pusht)")
    return MAZES[name]


def make_pointmaze_env(spec: MazeSpec) -> Any:
    """A headless gymnasium-robotics PointMaze env (sparse reward, continuing task, no time limit wrapper).

    The caller counts steps itself (``spec.max_episode_steps``), so one env can serve many episodes.
    """
    gym = require("gymnasium", "control", "PointMaze")
    gym.register_envs(require("gymnasium_robotics", "control", "PointMaze"))
    env = gym.make(spec.gym_id, max_episode_steps=None, continuing_task=True, reset_target=False)
    return env.unwrapped


def reset_eval_episode(env: Any, spec: MazeSpec, seed: int) -> np.ndarray:
    """Reset ``env`` for evaluation episode ``seed`` (D4RL goal cell, random start). Returns state ``(4,)``."""
    obs, _ = env.reset(seed=int(seed), options={"goal_cell": np.array(spec.goal_cell)})
    return np.asarray(obs["observation"], dtype=np.float64)


def set_goal(env: Any, goal_xy: np.ndarray) -> None:
    """Move the env's goal (and its rendered target site) to ``goal_xy`` ``(2,)``."""
    env.goal = np.asarray(goal_xy, dtype=np.float64).copy()
    env.update_target_site_pos()
