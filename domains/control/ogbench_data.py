"""OGBench point-maze data sets generated offline, saved in OGBench's ``.npz`` layout, loaded through the package.

:func:`generate_dataset` follows OGBench's ``data_gen_scripts/generate_locomaze.py`` for the point agent:
the env is made with ``terminate_at_goal=False`` and a time limit of ``episode_steps``; every episode draws
its start cell uniformly among the free cells (numpy's global generator, as the script) and its goal cell
(navigate: uniformly among the vertex cells, and again after every success; stitch: uniformly among the
cells exactly 4 BFS moves away); the action is the oracle's unit direction plus N(0, 0.5^2) noise, clipped
to [-1, 1]. ``num_episodes`` training episodes are followed by ``num_episodes // 10`` validation episodes.

Files: ``<name>.npz`` and ``<name>-val.npz`` with ``observations (N, 2)``, ``actions (N, 2)`` float32,
``terminals (N,)`` bool (True on each episode's last step), ``qpos (N, 2)``, ``qvel (N, 2)`` float32 (the
state before the step), as OGBench ships them; ``<name>.json`` holds the generation settings.
:func:`load_dataset` checks a file against the environment, then reads it with
``ogbench.make_env_and_datasets(name, dataset_path=...)``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sciffusion.extras import require
from sciffusion.train.checkpoint import atomic_path

from .datasets import package_versions
from .maze import ControlConfigError
from .ogbench_env import (
    ACTION_DIM,
    STATE_DIM,
    BFSOracle,
    DatasetSpec,
    cells_at_distance,
    dataset_spec,
    make_env,
    maze_bounds,
    maze_cells,
)
from .trajectory import Normalizer

OGBENCH_KEYS = ("observations", "actions", "terminals", "qpos", "qvel")
STITCH_CELLS = 4  # BFS moves from the start cell to a stitch goal


@dataclass
class OGBenchData:
    """A loaded OGBench point-maze split, one row per state.

    Attributes:
        observations: ``(N, 2)`` positions, every state of every episode (OGBench's compact layout).
        actions: ``(N, 2)`` actions taken from them (the last state's action is never used).
        episode_ends: ``(E,)`` exclusive end of each episode.
        settings: generation settings (empty for a file without its ``.json``).
    """

    observations: np.ndarray
    actions: np.ndarray
    episode_ends: np.ndarray
    settings: dict[str, Any]


def generate_dataset(name: str, seed: int = 0, episodes: int | None = None, progress: bool = False
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Collect an OGBench data set in the simulator. Returns (train arrays, val arrays, settings).

    Args:
        name: ``pointmaze-<maze>-<navigate|stitch>-v0``.
        seed: seeds numpy's global generator (cells, goals, noise; the env's start / goal noise) and the
            first env reset.
        episodes: training episodes (default OGBench's: 1000 navigate, 5000 stitch).
        progress: show a tqdm bar.
    """
    spec = dataset_spec(name)
    n_train = spec.episodes if episodes is None else episodes
    if n_train < 1:
        raise ControlConfigError(f"episodes must be >= 1, got {n_train}")
    n_total = n_train + n_train // 10
    env = make_env(spec.env_id, terminate_at_goal=False, max_episode_steps=spec.episode_steps)
    maze = env.unwrapped
    oracle = BFSOracle(maze)
    free, vertex = maze_cells(maze.maze_map)
    state = np.random.get_state()
    np.random.seed(seed)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in OGBENCH_KEYS}
    t0 = time.time()
    episodes_iter: Any = range(n_total)
    if progress:
        from tqdm import trange

        episodes_iter = trange(n_total, desc=f"generate {name}")
    try:
        for ep in episodes_iter:
            init_ij = free[np.random.randint(len(free))]
            if spec.kind == "navigate":
                goal_ij = vertex[np.random.randint(len(vertex))]
            else:
                near = cells_at_distance(maze.maze_map, init_ij, STITCH_CELLS)
                goal_ij = near[np.random.randint(len(near))] if near else init_ij
            ob, _ = env.reset(seed=seed if ep == 0 else None, options={"task_info": {"init_ij": init_ij, "goal_ij": goal_ij}})
            done = False
            while not done:
                action = oracle.direction(maze.get_xy(), maze.cur_goal_xy)
                action = np.clip(action + np.random.normal(0.0, spec.noise, action.shape), -1.0, 1.0)
                next_ob, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                if info["success"] and spec.kind == "navigate":
                    maze.set_goal(vertex[np.random.randint(len(vertex))])
                for key, value in (("observations", ob), ("actions", action), ("terminals", done),
                                   ("qpos", info["prev_qpos"]), ("qvel", info["prev_qvel"])):
                    rows[key].append(value)
                ob = next_ob
    finally:
        np.random.set_state(state)
        env.close()
    n_train_steps = n_train * spec.episode_steps
    train, val = {}, {}
    for key, values in rows.items():
        arr = np.array(values, dtype=bool if key == "terminals" else np.float32)
        train[key], val[key] = arr[:n_train_steps], arr[n_train_steps:]
    settings = {
        "dataset": name, "env_id": spec.env_id, "kind": spec.kind, "seed": seed,
        "num_episodes": n_train, "num_val_episodes": n_total - n_train, "max_episode_steps": spec.episode_steps,
        "noise": spec.noise, "terminate_at_goal": False,
        "oracle": "unit direction to the centre of the BFS-next cell (env.get_oracle_subgoal), + N(0, noise^2), clip [-1, 1]",
        "goals": ("uniform vertex cell, redrawn after every success" if spec.kind == "navigate"
                  else f"uniform cell exactly {STITCH_CELLS} BFS moves from the uniform start cell"),
        "protocol": "OGBench data_gen_scripts/generate_locomaze.py (point agent)",
        "generation_seconds": round(time.time() - t0, 1),
        "versions": package_versions(("ogbench", "gymnasium", "mujoco", "numpy")),
    }
    return train, val, settings


def dataset_paths(folder: str | Path, name: str) -> tuple[Path, Path, Path]:
    """``(<folder>/<name>.npz, <folder>/<name>-val.npz, <folder>/<name>.json)``."""
    folder = Path(folder)
    return folder / f"{name}.npz", folder / f"{name}-val.npz", folder / f"{name}.json"


def save_dataset(folder: str | Path, name: str, train: dict[str, np.ndarray], val: dict[str, np.ndarray],
                 settings: dict[str, Any]) -> Path:
    """Write the train / val ``.npz`` files (``np.savez_compressed``, as OGBench) and the settings, atomically.
    Returns the train file's path."""
    train_path, val_path, meta_path = dataset_paths(folder, name)
    train_path.parent.mkdir(parents=True, exist_ok=True)
    for path, arrays in ((train_path, train), (val_path, val)):
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    with atomic_path(meta_path) as tmp:
        Path(tmp).write_text(json.dumps(settings, indent=2))
    return train_path


def check_dataset_file(path: str | Path, name: str) -> None:
    """Raise :class:`ControlConfigError` unless ``path`` holds point-maze arrays that fit ``name``'s maze."""
    spec = dataset_spec(name)
    p = Path(path)
    if not p.exists():
        raise ControlConfigError(f"{p}: data file not found")
    try:
        with np.load(p) as f:
            arrays = {k: f[k] for k in ("observations", "actions", "terminals") if k in f.files}
    except (OSError, ValueError) as e:
        raise ControlConfigError(f"{p}: not a readable .npz file ({e})") from None
    missing = [k for k in ("observations", "actions", "terminals") if k not in arrays]
    if missing:
        raise ControlConfigError(f"{p}: missing arrays {missing} (OGBench layout: observations, actions, terminals)")
    obs, act, term = arrays["observations"], arrays["actions"], arrays["terminals"]
    n = len(obs)
    if obs.shape != (n, STATE_DIM) or act.shape != (n, ACTION_DIM) or term.shape != (n,) or n == 0:
        raise ControlConfigError(f"{p}: arrays do not match {spec.env_id} (observations (N, {STATE_DIM}), actions (N, {ACTION_DIM}), "
                                 f"terminals (N,)); got {obs.shape}, {act.shape}, {term.shape}")
    if not (np.isfinite(obs).all() and np.isfinite(act).all()) or not bool(term[-1]):
        raise ControlConfigError(f"{p}: non-finite values, or the last step is not an episode end")
    maze_map = make_env(spec.env_id).unwrapped.maze_map
    lo, hi = maze_bounds(maze_map)
    if (obs < lo - 1.0).any() or (obs > hi + 1.0).any():
        raise ControlConfigError(f"{p}: positions leave the {spec.maze} maze ({obs.min(0).round(1).tolist()} .. "
                                 f"{obs.max(0).round(1).tolist()} outside {lo.tolist()} .. {hi.tolist()}): not {spec.env_id} data")


def load_dataset(path: str | Path, name: str, split: str = "train") -> OGBenchData:
    """Check ``path`` (and its ``-val`` file) against ``name``, then load ``split`` through
    ``ogbench.make_env_and_datasets(name, dataset_path=path, compact_dataset=True)``."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ControlConfigError(f"{path}: an OGBench data set is a .npz file")
    val_path = Path(str(path).replace(".npz", "-val.npz"))
    for p in (path, val_path):
        check_dataset_file(p, name)
    ogbench = require("ogbench", "control", "OGBench")
    train, val = ogbench.make_env_and_datasets(name, dataset_path=str(path), compact_dataset=True, dataset_only=True)
    data = train if split == "train" else val
    meta = path.with_suffix(".json")
    settings = json.loads(meta.read_text()) if meta.exists() else {}
    if settings.get("dataset", name) != name:
        raise ControlConfigError(f"{path}: generated for '{settings.get('dataset')}', not '{name}'")
    ends = np.nonzero(data["valids"] == 0)[0] + 1
    return OGBenchData(data["observations"].astype(np.float64), data["actions"].astype(np.float64), ends.astype(np.int64), settings)


def load_or_generate(name: str, folder: str | Path, seed: int = 0, episodes: int | None = None,
                     progress: bool = False) -> OGBenchData:
    """The training split of ``<folder>/<name>.npz``; generated (and saved) first when the folder lacks it or
    holds one made with other settings."""
    train_path, _, meta_path = dataset_paths(folder, name)
    spec = dataset_spec(name)
    wanted = spec.episodes if episodes is None else episodes
    if train_path.exists() and meta_path.exists():
        s = json.loads(meta_path.read_text())
        if s.get("seed") == seed and s.get("num_episodes") == wanted:
            return load_dataset(train_path, name)
    train, val, settings = generate_dataset(name, seed, wanted, progress)
    save_dataset(folder, name, train, val, settings)
    return load_dataset(train_path, name)


def default_cache(name: str, seed: int, episodes: int | None, spec: DatasetSpec | None = None) -> Path:
    """``data_cache/ogbench/<name>-s<seed>[-e<episodes>]``: the folder generated data goes to."""
    spec = spec or dataset_spec(name)
    tail = "" if episodes is None or episodes == spec.episodes else f"-e{episodes}"
    return Path("data_cache") / "ogbench" / f"{name}-s{seed}{tail}"


class FutureGoalPairs(torch.utils.data.Dataset):
    """GCBC pairs with OGBench's trajectory goals: the goal is a uniformly drawn later state of the same episode.

    Item ``i`` is state ``i % N``; its goal is drawn by a generator seeded with ``i`` (so the data set is
    ``repeats`` times longer than the number of states, and every draw is reproducible). Item::

        {"obs": (4,) normalised (x, y, goal x, goal y), "action": (2,) normalised}
    """

    def __init__(self, data: OGBenchData, obs_norm: Normalizer, action_norm: Normalizer, repeats: int = 8) -> None:
        n = len(data.observations)
        begins = np.concatenate([[0], data.episode_ends[:-1]])
        self.last = np.repeat(data.episode_ends - 1, data.episode_ends - begins)  # (N,) last state of each row's episode
        self.obs = data.observations
        self.actions = action_norm.normalize(data.actions).astype(np.float32)
        self.obs_norm, self.n, self.repeats = obs_norm, n, repeats
        self.rows = np.nonzero(np.arange(n) < self.last)[0]  # states with an action and a later state

    def __len__(self) -> int:
        return len(self.rows) * self.repeats

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        row = int(self.rows[i % len(self.rows)])
        goal = int(np.random.default_rng(i).integers(row + 1, self.last[row] + 1))
        obs = np.concatenate([self.obs[row], self.obs[goal]])
        return {"obs": self.obs_norm.normalize(obs).astype(np.float32), "action": self.actions[row]}
