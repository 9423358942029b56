"""Tracking controller that follows a planned PointMaze trajectory.

A plan is a sequence of ``H`` states ``(x, y, vx, vy)`` spaced ``stride`` environment steps apart.
At ``k`` steps after the plan was made the controller reads the plan at fractional token
``(k + 1) / stride`` (linear interpolation, clamped to the last token), asks for the velocity
``v_plan + kp * (p_plan - p)`` and outputs the force command ``clip(gain * (v_wanted - v), -1, 1)``.
After the plan's last token it holds the final planned position (the goal) with zero velocity.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class TrackingConfig:
    """Gains of :class:`TrackingController`.

    Attributes:
        kp: position error to velocity correction (1/s).
        gain: velocity error to action (action per m/s), as the scripted expert.
        max_speed: cap on the commanded velocity (m/s).
    """

    kp: float = 8.0
    gain: float = 4.0
    max_speed: float = 5.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class TrackingController:
    """Follows plans for a batch of episodes.

    Args:
        config: gains.
        stride: environment steps between plan tokens.
    """

    def __init__(self, config: TrackingConfig, stride: int) -> None:
        self.config, self.stride = config, stride
        self.plans: np.ndarray | None = None  # (B, H, 4)
        self.age = np.zeros(0, dtype=np.int64)

    def set_plans(self, plans: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Install plans ``(B, H, >=4)`` (raw states first) for all episodes or for ``rows``."""
        plans = np.asarray(plans, dtype=np.float64)[..., :4]
        if self.plans is None or rows is None:
            self.plans = plans.copy()
            self.age = np.zeros(len(plans), dtype=np.int64)
        else:
            self.plans[rows] = plans
            self.age[rows] = 0

    def reference(self, offset: int = 1) -> np.ndarray:
        """Plan states ``(B, 4)`` interpolated at ``age + offset`` steps; zero velocity past the end."""
        assert self.plans is not None
        b, h, _ = self.plans.shape
        pos = (self.age + offset) / self.stride
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, h - 1)
        i1 = np.clip(i0 + 1, 0, h - 1)
        frac = np.clip(pos - i0, 0.0, 1.0)[:, None]
        rows = np.arange(b)
        ref = (1 - frac) * self.plans[rows, i0] + frac * self.plans[rows, i1]
        ref[pos >= h - 1, 2:] = 0.0
        return ref

    def act(self, states: np.ndarray) -> np.ndarray:
        """Force commands ``(B, 2)`` for states ``(B, 4)``; advances each plan's clock by one step."""
        ref = self.reference()
        cfg = self.config
        v_wanted = ref[:, 2:4] + cfg.kp * (ref[:, :2] - states[:, :2])
        speed = np.linalg.norm(v_wanted, axis=1, keepdims=True)
        v_wanted = v_wanted * np.minimum(1.0, cfg.max_speed / np.maximum(speed, 1e-9))
        self.age += 1
        return np.clip(cfg.gain * (v_wanted - states[:, 2:4]), -1.0, 1.0)
