"""OGBench PointMaze environments (pip ``ogbench``, MuJoCo, state-based, headless) and their BFS oracle.

OGBench names a data set ``pointmaze-<maze>-<kind>-v0`` (``maze``: medium | large | giant; ``kind``:
navigate | stitch) and its environment ``pointmaze-<maze>-v0``. The point agent's observation is its
position ``(x, y)``; an action ``(2,)`` in [-1, 1] moves it by ``0.2 * action`` (walls block it). Maze
cells are 4 units wide; cell ``(i, j)`` has its centre at ``x = 4 j - 4``, ``y = 4 i - 4``. An episode
succeeds when the agent is within 1.0 of the goal; each maze has five evaluation tasks (start cell,
goal cell), the package's ``task_infos``; starts and goals get uniform noise of +-1 per axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sciffusion.extras import require

from .maze import ControlConfigError

POINT_MAZES = ("medium", "large", "giant")
DATASET_KINDS = ("navigate", "stitch")
OGBENCH_ENVS = tuple(f"pointmaze-{m}-v0" for m in POINT_MAZES)
OGBENCH_DATASETS = tuple(f"pointmaze-{m}-{k}-v0" for m in POINT_MAZES for k in DATASET_KINDS)
N_TASKS = 5
EPISODE_STEPS = 1000  # evaluation episode length (the registered TimeLimit)
GOAL_TOL = 1.0  # success radius of the point agent
STEP_SIZE = 0.2  # displacement per unit action
STATE_DIM = ACTION_DIM = 2


@dataclass(frozen=True)
class DatasetSpec:
    """One OGBench point-maze data set and how ``generate_locomaze.py`` collects it.

    Attributes:
        name: data set name, ``pointmaze-large-stitch-v0``.
        env_id: environment id, ``pointmaze-large-v0``.
        maze: medium | large | giant.
        kind: navigate (new uniform goal among the maze's vertex cells on every success) | stitch (a goal
            cell exactly 4 BFS steps from a uniform start cell; the agent stays there afterwards).
        episodes: training episodes (the ``-val`` split adds a tenth more).
        episode_steps: steps per episode (fixed: the episode is truncated, never terminated).
        noise: standard deviation of the Gaussian noise added to the oracle's action.
    """

    name: str
    env_id: str
    maze: str
    kind: str
    episodes: int
    episode_steps: int
    noise: float = 0.5


def dataset_spec(name: str) -> DatasetSpec:
    """Parse an OGBench data set name; an unknown one is a :class:`ControlConfigError`."""
    if name not in OGBENCH_DATASETS:
        raise ControlConfigError(f"unknown OGBench data set '{name}' (known: {', '.join(OGBENCH_DATASETS)})")
    maze, kind = name.split("-")[1:3]
    episodes, steps = (1000, 1001) if kind == "navigate" else (5000, 201)
    return DatasetSpec(name, f"pointmaze-{maze}-v0", maze, kind, episodes, steps)


def check_env_id(env_id: str) -> str:
    """``env_id`` if it is an OGBench point-maze environment, else a :class:`ControlConfigError`."""
    if env_id not in OGBENCH_ENVS:
        raise ControlConfigError(f"unknown OGBench environment '{env_id}' (known: {', '.join(OGBENCH_ENVS)})")
    return env_id


def make_env(env_id: str, **kwargs: Any) -> Any:
    """``gymnasium.make(env_id, **kwargs)`` after registering OGBench's environments (time limit included)."""
    check_env_id(env_id)
    gym = require("gymnasium", "control", "OGBench")
    require("ogbench", "control", "OGBench")
    return gym.make(env_id, **kwargs)


def task_infos(env_id: str) -> list[dict[str, Any]]:
    """The package's five evaluation tasks: dicts with ``init_ij``, ``init_xy``, ``goal_ij``, ``goal_xy``."""
    env = make_env(env_id)
    infos = [dict(t) for t in env.unwrapped.task_infos]
    env.close()
    return infos


class BFSOracle:
    """OGBench's point oracle: head for the neighbouring cell with the lowest BFS distance to the goal cell.

    ``direction(xy, goal_xy)`` is the unit vector from ``xy`` to the centre of the cell the package's
    ``get_oracle_subgoal`` returns; those subgoals are memoised per (cell, goal cell) pair, which gives the
    same result as calling it every step (it only depends on the two cells).

    Args:
        maze_env: the unwrapped OGBench maze env (``get_oracle_subgoal``, ``xy_to_ij``).
    """

    def __init__(self, maze_env: Any) -> None:
        self.env = maze_env
        self._subgoals: dict[tuple[tuple[int, int], tuple[int, int]], np.ndarray] = {}

    def subgoal(self, xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
        """Centre ``(2,)`` of the next cell on a shortest path of cells from ``xy`` to ``goal_xy``."""
        key = (self.env.xy_to_ij(xy), self.env.xy_to_ij(goal_xy))
        if key not in self._subgoals:
            self._subgoals[key] = np.asarray(self.env.get_oracle_subgoal(xy, goal_xy)[0], dtype=np.float64)
        return self._subgoals[key]

    def direction(self, xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
        """Unit vector ``(2,)`` toward the subgoal (``d / (|d| + 1e-6)``, as the generator)."""
        d = self.subgoal(xy, goal_xy) - np.asarray(xy, dtype=np.float64)
        return d / (np.linalg.norm(d) + 1e-6)


def maze_cells(maze_map: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(all free cells, vertex cells) of a 0/1 map, row-major; vertex cells exclude straight hallway cells
    (free above and below with walls left and right, or the transpose): the navigate goals."""
    free, vertex = [], []
    for i in range(maze_map.shape[0]):
        for j in range(maze_map.shape[1]):
            if maze_map[i, j]:
                continue
            free.append((i, j))
            vertical = not maze_map[i - 1, j] and not maze_map[i + 1, j] and maze_map[i, j - 1] and maze_map[i, j + 1]
            horizontal = not maze_map[i, j - 1] and not maze_map[i, j + 1] and maze_map[i - 1, j] and maze_map[i + 1, j]
            if not (vertical or horizontal):
                vertex.append((i, j))
    return free, vertex


def cells_at_distance(maze_map: np.ndarray, start: tuple[int, int], steps: int) -> list[tuple[int, int]]:
    """Free cells exactly ``steps`` BFS moves from ``start`` (4-connected), in the order BFS reaches them."""
    dist = np.full(maze_map.shape, -1)
    dist[start] = 0
    queue, out = [start], []
    while queue:
        i, j = queue.pop(0)
        for di, dj in ((-1, 0), (0, -1), (1, 0), (0, 1)):
            n = (i + di, j + dj)
            if 0 <= n[0] < maze_map.shape[0] and 0 <= n[1] < maze_map.shape[1] and not maze_map[n] and dist[n] == -1:
                dist[n] = dist[i, j] + 1
                queue.append(n)
                if dist[n] == steps:
                    out.append(n)
    return out


def maze_bounds(maze_map: np.ndarray, unit: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest ``(x, y)`` ``(2,)`` inside the outer walls of a map (cell centres +- half a cell)."""
    rows, cols = maze_map.shape
    lo = np.array([unit * 1 - 4 - unit / 2, unit * 1 - 4 - unit / 2])
    hi = np.array([unit * (cols - 2) - 4 + unit / 2, unit * (rows - 2) - 4 + unit / 2])
    return lo, hi
