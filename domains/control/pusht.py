"""Push-T (gym-pusht, pymunk<7): observation features and the closed-loop evaluation loop.

Observations: the 5-d simulator state ``(agent x, agent y, block x, block y, block angle)`` is turned
into features by :func:`pusht_features`:

* ``keypoints`` (default, 18-d): agent position + the 8 corners of the T block in world pixels
  (the block's pose written as points, so no angle wrap-around);
* ``state`` (6-d): agent xy, block xy, cos and sin of the angle.

Evaluation (Diffusion Policy protocol): one env per seed, at most 300 steps; the score of an episode is
its maximum coverage of the goal zone; success means coverage > 0.95 (the env then terminates).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sciffusion.extras import require

from .maze import ControlConfigError

PUSHT_OBS_KINDS = ("keypoints", "state")
PUSHT_MAX_STEPS = 300
PUSHT_SUCCESS = 0.95

# local vertices of the T (gym-pusht add_tee with scale 30, length 4): bar then stem
_T_LOCAL = np.array([
    [-60.0, 30.0], [60.0, 30.0], [60.0, 0.0], [-60.0, 0.0],
    [-15.0, 30.0], [-15.0, 120.0], [15.0, 120.0], [15.0, 30.0],
])


def pusht_keypoints(state: np.ndarray) -> np.ndarray:
    """Block corners in world pixels: ``(..., 5)`` state -> ``(..., 16)`` (8 points, x y interleaved)."""
    pos, ang = state[..., 2:4], state[..., 4]
    c, s = np.cos(ang)[..., None], np.sin(ang)[..., None]
    x = pos[..., None, 0] + c * _T_LOCAL[:, 0] - s * _T_LOCAL[:, 1]
    y = pos[..., None, 1] + s * _T_LOCAL[:, 0] + c * _T_LOCAL[:, 1]
    return np.stack([x, y], axis=-1).reshape(*state.shape[:-1], 16)


def pusht_features(state: np.ndarray, kind: str = "keypoints") -> np.ndarray:
    """Policy observation features from states ``(..., 5)``: ``(..., 18)`` or ``(..., 6)``."""
    state = np.asarray(state, dtype=np.float64)
    if state.shape[-1] != 5:
        raise ControlConfigError(f"Push-T states must have 5 values (agent xy, block xy, angle), got {state.shape[-1]}")
    if kind == "keypoints":
        return np.concatenate([state[..., :2], pusht_keypoints(state)], axis=-1)
    if kind == "state":
        return np.concatenate([state[..., :4], np.cos(state[..., 4:5]), np.sin(state[..., 4:5])], axis=-1)
    raise ControlConfigError(f"unknown Push-T observation kind '{kind}' (known: {', '.join(PUSHT_OBS_KINDS)})")


def pusht_obs_dim(kind: str) -> int:
    return pusht_features(np.zeros(5), kind).shape[-1]


def make_pusht_env() -> Any:
    """A headless gym-pusht env with state observations (no time-limit wrapper; the loop counts steps)."""
    gym = require("gymnasium", "control", "Push-T")
    require("gym_pusht", "control", "Push-T")  # registers the env
    return gym.make("gym_pusht/PushT-v0", obs_type="state", render_mode="rgb_array").unwrapped


def evaluate_pusht(act_fn: Callable[[np.ndarray], np.ndarray], episodes: int = 50, seed: int = 0,
                   max_steps: int = PUSHT_MAX_STEPS, frames_for: int | None = None, frame_every: int = 3,
                   frame_size: int = 256) -> dict[str, Any]:
    """Run ``episodes`` Push-T episodes in lockstep (env ``i`` reset with seed ``seed + i``).

    Args:
        act_fn: ``states (B, 5) -> actions (B, 2)``, called once per step with every env's latest state
            (finished envs keep their last state and ignore their action).
        frames_for: episode index whose rendered frames to return (for a GIF), or None.
        frame_every, frame_size: keep every ``frame_every``-th frame, resized to ``frame_size`` pixels.

    Returns:
        ``{"max_coverage": (B,), "success": (B,), "steps": (B,), "frames": [...], "seconds": float}``.
    """
    cv2 = require("cv2", "control", "Push-T frames")
    envs = [make_pusht_env() for _ in range(episodes)]
    states = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    done = np.zeros(episodes, bool)
    max_cov = np.zeros(episodes)
    steps = np.zeros(episodes, np.int64)
    frames: list[np.ndarray] = []
    t0 = time.perf_counter()
    for k in range(max_steps):
        if frames_for is not None and not done[frames_for] and k % frame_every == 0:
            frames.append(cv2.resize(envs[frames_for].render(), (frame_size, frame_size), interpolation=cv2.INTER_AREA))
        actions = np.asarray(act_fn(states), dtype=np.float64)
        for i, env in enumerate(envs):
            if done[i]:
                continue
            obs, _, terminated, _, info = env.step(actions[i])
            states[i] = obs
            max_cov[i] = max(max_cov[i], float(info["coverage"]))
            steps[i] += 1
            done[i] = bool(terminated)
        if done.all():
            break
    for env in envs:
        env.close()
    return {"max_coverage": max_cov, "success": max_cov > PUSHT_SUCCESS, "steps": steps, "frames": frames,
            "seconds": time.perf_counter() - t0}
