"""Offline data: the generated PointMaze data set and the Push-T human demonstrations.

PointMaze data (D4RL maze2d-style): one long stream per env reset in which the scripted expert drives
to a random goal (a random free cell's centre plus uniform noise of +-0.25 m), then a new goal is
drawn from where it stopped. The stream is cut into *segments* at goal switches (as Diffuser does with
maze2d); a segment whose goal was reached is marked ``terminal`` (the goal is absorbing), one cut short
by the step limit is not. Saved as ``<stem>.npz`` (arrays) + ``<stem>.json`` (generation settings),
both written atomically.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sciffusion.train.checkpoint import atomic_path

from .expert import ExpertConfig, WaypointExpert
from .maze import (
    GOAL_RADIUS,
    ControlConfigError,
    MazeSpec,
    get_maze,
    make_pointmaze_env,
    set_goal,
)

MAZE_ARRAYS = ("observations", "actions", "goals", "rewards")


@dataclass
class MazeDataset:
    """A PointMaze offline data set.

    Attributes:
        observations: ``(N, 4)`` x, y, vx, vy before each action.
        actions: ``(N, 2)`` force commands in [-1, 1].
        goals: ``(N, 2)`` the segment's goal.
        rewards: ``(N,)`` 1 where the step ends within 0.45 m of the goal.
        episode_ends: ``(E,)`` exclusive end of each segment.
        terminals: ``(E,)`` True where the segment reached its goal.
        settings: generation settings (JSON-safe).
    """

    observations: np.ndarray
    actions: np.ndarray
    goals: np.ndarray
    rewards: np.ndarray
    episode_ends: np.ndarray
    terminals: np.ndarray
    settings: dict[str, Any]

    @property
    def n_steps(self) -> int:
        return len(self.observations)


def generate_maze_dataset(env_name: str, n_steps: int, seed: int = 0, expert: ExpertConfig | None = None,
                          stream_steps: int = 10_000, goal_step_limit: int | None = None,
                          progress: bool = False) -> MazeDataset:
    """Run the scripted expert in the real simulator for ``n_steps`` steps.

    Args:
        env_name: ``pointmaze-umaze`` | ``pointmaze-medium`` | ``pointmaze-large``.
        n_steps: total environment steps recorded.
        seed: seeds env resets, goals, waypoint jitter and action noise.
        expert: controller settings (default :class:`ExpertConfig`).
        stream_steps: steps between env resets (the ball is then placed in a random cell).
        goal_step_limit: abandon a goal after this many steps (default: the maze's episode length).
        progress: show a tqdm bar.
    """
    spec = get_maze(env_name)
    expert_cfg = expert or ExpertConfig()
    limit = goal_step_limit or spec.max_episode_steps
    rng = np.random.default_rng(seed)
    env = make_pointmaze_env(spec)
    controller = WaypointExpert(spec, expert_cfg, rng)
    obs_buf = np.zeros((n_steps, 4))
    act_buf = np.zeros((n_steps, 2))
    goal_buf = np.zeros((n_steps, 2))
    rew_buf = np.zeros(n_steps)
    ends: list[int] = []
    terms: list[bool] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, desc=f"generate {env_name}")
    t0 = time.time()
    step, since_reset = 0, stream_steps
    state = np.zeros(4)
    while step < n_steps:
        if since_reset >= stream_steps:
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
            state = np.asarray(obs["observation"], dtype=np.float64)
            since_reset = 0
        goal = _random_goal(spec, rng, state[:2])
        set_goal(env, goal)
        controller.set_goal(goal, state[:2])
        reached = False
        seg_start = step
        for _ in range(limit):
            if step >= n_steps or since_reset >= stream_steps:
                break
            action = controller.act(state)
            obs, reward, *_ = env.step(action)
            obs_buf[step], act_buf[step], goal_buf[step], rew_buf[step] = state, action, goal, reward
            state = np.asarray(obs["observation"], dtype=np.float64)
            step += 1
            since_reset += 1
            if controller.at_goal(state):
                reached = True
                break
        if step > seg_start:
            ends.append(step)
            terms.append(reached)
        if bar is not None:
            bar.update(step - seg_start)
    if bar is not None:
        bar.close()
    settings = {
        "env": env_name,
        "gym_id": spec.gym_id,
        "n_steps": n_steps,
        "seed": seed,
        "expert": expert_cfg.to_dict(),
        "stream_steps": stream_steps,
        "goal_step_limit": limit,
        "goal_sampling": "uniform free cell centre + U(-0.25, 0.25) per axis, at least 0.5 m from the ball",
        "segment_end": "goal reached (within 0.1 m, speed < 0.3 m/s) -> terminal, or goal_step_limit / stream end -> not terminal",
        "reward": f"1 if |ball - goal| <= {GOAL_RADIUS} after the step else 0",
        "n_segments": len(ends),
        "n_terminal_segments": int(np.sum(terms)),
        "generation_seconds": round(time.time() - t0, 1),
        "versions": package_versions(),
    }
    return MazeDataset(obs_buf, act_buf, goal_buf, rew_buf, np.array(ends), np.array(terms, bool), settings)


def _random_goal(spec: MazeSpec, rng: np.random.Generator, position: np.ndarray) -> np.ndarray:
    while True:
        cell = spec.free_cells[int(rng.integers(len(spec.free_cells)))]
        goal = spec.cell_to_xy(cell) + rng.uniform(-0.25, 0.25, 2)
        if np.linalg.norm(goal - position) > 0.5:
            return goal


def package_versions(packages: tuple[str, ...] = ("gymnasium", "gymnasium-robotics", "mujoco", "numpy")) -> dict[str, str]:
    """Installed versions of ``packages`` ("missing" for one that is not installed), recorded beside generated data."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp") as tmp:
        write(str(tmp))


def save_maze_dataset(data: MazeDataset, stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.npz`` and ``<stem>.json`` atomically; returns both paths."""
    stem = Path(stem)
    npz, meta = stem.with_suffix(".npz"), stem.with_suffix(".json")

    def write_npz(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, observations=data.observations.astype(np.float32), actions=data.actions.astype(np.float32),
                                goals=data.goals.astype(np.float32), rewards=data.rewards.astype(np.float32),
                                episode_ends=data.episode_ends, terminals=data.terminals)

    def write_json(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(data.settings, indent=2))

    _atomic_write(npz, write_npz)
    _atomic_write(meta, write_json)
    return npz, meta


def load_maze_dataset(path: str | Path, env_name: str | None = None) -> MazeDataset:
    """Load ``<stem>.npz`` (+ ``<stem>.json``), checking shapes and, if given, the environment name."""
    npz = Path(path).with_suffix(".npz")
    if not npz.exists():
        raise ControlConfigError(f"{npz}: data file not found")
    with np.load(npz) as f:
        missing = [k for k in (*MAZE_ARRAYS, "episode_ends", "terminals") if k not in f]
        if missing:
            raise ControlConfigError(f"{npz}: missing arrays {missing}")
        arrays = {k: f[k] for k in f.files}
    if arrays["observations"].ndim != 2 or arrays["observations"].shape[1] != 4:
        raise ControlConfigError(f"{npz}: 'observations' must be (N, 4) for PointMaze, got {arrays['observations'].shape}")
    if arrays["actions"].ndim != 2 or arrays["actions"].shape[1] != 2:
        raise ControlConfigError(f"{npz}: 'actions' must be (N, 2) for PointMaze, got {arrays['actions'].shape}")
    meta_path = npz.with_suffix(".json")
    settings = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if env_name is not None and settings.get("env", env_name) != env_name:
        raise ControlConfigError(f"{npz}: generated for '{settings.get('env')}', config asks for '{env_name}'")
    return MazeDataset(arrays["observations"].astype(np.float64), arrays["actions"].astype(np.float64),
                       arrays["goals"].astype(np.float64), arrays["rewards"].astype(np.float64),
                       arrays["episode_ends"].astype(np.int64), arrays["terminals"].astype(bool), settings)


def load_or_generate_maze_dataset(env_name: str, n_steps: int, seed: int, cache: str | Path | None,
                                  expert: ExpertConfig | None = None, progress: bool = False) -> MazeDataset:
    """Load the cached data set when its settings match, else generate (and cache) it."""
    if cache is not None:
        stem = Path(cache)
        meta = stem.with_suffix(".json")
        if stem.with_suffix(".npz").exists() and meta.exists():
            s = json.loads(meta.read_text())
            cfg = (expert or ExpertConfig()).to_dict()
            if s.get("env") == env_name and s.get("n_steps") == n_steps and s.get("seed") == seed and s.get("expert") == cfg:
                return load_maze_dataset(stem, env_name)
    data = generate_maze_dataset(env_name, n_steps, seed=seed, expert=expert, progress=progress)
    if cache is not None:
        save_maze_dataset(data, cache)
    return data


# ---------------------------------------------------------------- Push-T demonstrations

PUSHT_KEYS = ("state", "action", "episode_ends")


@dataclass
class PushTDemos:
    """Push-T human demonstrations (Diffusion Policy's ``pusht_cchi_v7_replay``).

    Attributes:
        state: ``(N, 5)`` agent x, y, block x, y, block angle (pixels / radians).
        action: ``(N, 2)`` target agent position in pixels.
        episode_ends: ``(E,)`` exclusive episode ends.
    """

    state: np.ndarray
    action: np.ndarray
    episode_ends: np.ndarray


def default_pusht_path() -> Path:
    """``../shared/data/planning/pusht/pusht_lowdim.npz`` relative to the project root."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "planning" / "pusht" / "pusht_lowdim.npz"


def load_pusht(path: str | Path | None = None) -> PushTDemos:
    """Load the Push-T low-dimensional demonstrations, checking keys and shapes."""
    p = Path(path) if path is not None else default_pusht_path()
    if not p.exists():
        raise ControlConfigError(f"{p}: Push-T data file not found (pass data.path)")
    with np.load(p) as f:
        missing = [k for k in PUSHT_KEYS if k not in f]
        if missing:
            raise ControlConfigError(f"{p}: missing arrays {missing}")
        state, action, ends = f["state"], f["action"], f["episode_ends"]
    if state.ndim != 2 or state.shape[1] != 5:
        raise ControlConfigError(f"{p}: 'state' must be (N, 5) for Push-T, got {state.shape}")
    if action.ndim != 2 or action.shape[1] != 2 or len(action) != len(state):
        raise ControlConfigError(f"{p}: 'action' must be (N, 2) matching 'state', got {action.shape}")
    return PushTDemos(state.astype(np.float64), action.astype(np.float64), ends.astype(np.int64))
