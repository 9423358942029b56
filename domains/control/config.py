"""Config sections of the control domain (validated by :func:`sciffusion.config.from_dict`).

A control config has the standard sections (``net``, ``process``, ``loss``, ``trainer``, ``sample``)
plus ``data`` (:class:`ControlData`), ``task`` (:class:`TaskConfig`: what is trained) and ``control``
(:class:`ControlEval`: closed-loop settings for ``plan`` / ``evaluate``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sciffusion.config import FieldError

from .maze import MAZES
from .ogbench_env import OGBENCH_DATASETS

ENV_NAMES = (*MAZES, "pusht", *OGBENCH_DATASETS)


@dataclass
class ControlData:
    """Where the offline data comes from.

    Attributes:
        env: ``pointmaze-umaze`` | ``pointmaze-medium`` | ``pointmaze-large`` | ``pusht`` | an OGBench data set
            ``pointmaze-{medium,large,giant}-{navigate,stitch}-v0``.
        path: data file. PointMaze: a ``.npz`` written by the generator (with its ``.json``); null =
            generate. OGBench: the data set's ``.npz`` (its ``-val.npz`` beside it); null = generate.
            Push-T: ``pusht_lowdim.npz``; null = ``../shared/data/planning/pusht/pusht_lowdim.npz``.
        generate_steps: PointMaze steps to generate when ``path`` is null.
        generate_seed: seed of the generator.
        cache: where generated data is cached (default ``data_cache/<env>-<steps>-s<seed>``; OGBench: a
            folder, default ``data_cache/ogbench/<env>-s<seed>``).
        normalizer: ``limits`` (to [-1, 1]) | ``gaussian`` | ``identity``.
    """

    env: str = "pointmaze-umaze"
    path: str | None = None
    generate_steps: int = 100_000
    generate_seed: int = 0
    cache: str | None = None
    normalizer: Literal["limits", "gaussian", "identity"] = "limits"

    def __post_init__(self) -> None:
        if self.env not in ENV_NAMES:
            raise FieldError("env", f"unknown environment '{self.env}' (known: {', '.join(ENV_NAMES)})")
        if self.generate_steps < 1000:
            raise FieldError("generate_steps", f"must be >= 1000, got {self.generate_steps}")


@dataclass
class TaskConfig:
    """What is trained.

    Attributes:
        kind: ``planner`` (Diffuser over state(-action) windows), ``policy`` (Diffusion Policy) or
            ``bc`` (MLP behaviour cloning baseline).
        horizon: planner tokens H (a multiple of ``2 ** (len(net.dim_mults) - 1)`` for the U-Net).
        stride: environment steps between planner tokens.
        use_actions: planner windows hold actions after the states (Diffuser); false = states only.
        value: also train a value network (Diffuser value guidance) on the windows' discounted reward.
        value_dim: base width of the value network.
        discount: per-token discount of the window reward (value target and Decision-Diffuser return).
        goal_condition: also give the planner's network the window's first and last states as a global
            (FiLM) condition; plans are still pinned to start and goal by inpainting.
        returns_condition: condition the planner on the window's normalised return (Decision Diffuser,
            trained with ``loss.cond_drop_prob`` for classifier-free guidance).
        inverse_dynamics: also train ``(s_t, s_{t+stride}) -> a_t`` (Decision Diffuser).
        obs: Push-T observation features, ``keypoints`` | ``state``.
        obs_horizon, pred_horizon, action_horizon: Diffusion Policy's To, Tp, Ta.
        bc_hidden, bc_layers: MLP size of the ``bc`` baseline.
    """

    kind: Literal["planner", "policy", "bc"] = "planner"
    horizon: int = 32
    stride: int = 8
    use_actions: bool = False
    value: bool = False
    value_dim: int = 32
    discount: float = 0.99
    goal_condition: bool = False
    returns_condition: bool = False
    inverse_dynamics: bool = False
    obs: Literal["keypoints", "state"] = "keypoints"
    obs_horizon: int = 2
    pred_horizon: int = 16
    action_horizon: int = 8
    bc_hidden: int = 256
    bc_layers: int = 3

    def __post_init__(self) -> None:
        for key in ("horizon", "stride", "obs_horizon", "pred_horizon", "action_horizon", "value_dim", "bc_hidden", "bc_layers"):
            if getattr(self, key) < 1:
                raise FieldError(key, f"must be >= 1, got {getattr(self, key)}")
        if not 0.0 < self.discount <= 1.0:
            raise FieldError("discount", f"must be in (0, 1], got {self.discount}")
        if self.obs_horizon - 1 + self.action_horizon > self.pred_horizon:
            raise FieldError("action_horizon", f"needs obs_horizon - 1 + action_horizon <= pred_horizon, got "
                                               f"{self.obs_horizon} - 1 + {self.action_horizon} > {self.pred_horizon}")


@dataclass
class ForbiddenRegion:
    """A disc the executed path must avoid, added at test time only (cost guidance).

    Attributes:
        center: (x, y) in metres.
        radius: disc radius in metres (the ball's centre must stay outside it).
        margin: extra clearance the cost asks for.
        scale: gradient-guidance scale.
        substeps: gradient steps per correction of the predicted plan (1: one step of the full size).
    """

    center: list[float] = field(default_factory=lambda: [0.0, 0.0])
    radius: float = 0.3
    margin: float = 0.15
    scale: float = 1.0
    substeps: int = 1

    def __post_init__(self) -> None:
        if len(self.center) != 2:
            raise FieldError("center", f"must be [x, y], got {self.center}")
        if self.radius <= 0 or self.margin < 0:
            raise FieldError("radius", f"radius must be > 0 and margin >= 0, got {self.radius}, {self.margin}")
        if self.substeps < 1:
            raise FieldError("substeps", f"must be >= 1, got {self.substeps}")


@dataclass
class ControlEval:
    """Closed-loop settings for ``sciffusion plan`` and ``sciffusion evaluate``.

    Attributes:
        episodes: episodes (one fixed seed each: ``seed + i``).
        seed: first episode seed.
        mode: ``open_loop`` (plan once, then track) or ``receding`` (replan every ``replan_every`` steps).
        replan_every: environment steps between replans in ``receding`` mode.
        kp, gain, max_speed: tracking-controller gains (see ``TrackingConfig``).
        value_scale: value-guidance scale (planners trained with ``task.value``; 0 = off).
        target_return: Decision-Diffuser return to condition on, in [0, 1].
        forbidden: optional region to avoid (cost guidance at test time).
        start_cells: optional list of ``[row, col]`` start cells (default: any free cell, env's rule).
    """

    episodes: int = 50
    seed: int = 0
    mode: Literal["open_loop", "receding"] = "open_loop"
    replan_every: int = 32
    kp: float = 8.0
    gain: float = 4.0
    max_speed: float = 5.0
    value_scale: float = 0.0
    target_return: float = 0.9
    forbidden: ForbiddenRegion | None = None
    start_cells: list[list[int]] | None = None

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise FieldError("episodes", f"must be >= 1, got {self.episodes}")
        if self.replan_every < 1:
            raise FieldError("replan_every", f"must be >= 1, got {self.replan_every}")
