"""Planning and acting with diffusion models: Diffuser-style planners and Diffusion Policy.

Both are thin adapters over :class:`sciffusion.model.DiffusionModel`: training goes through its
``training_loss`` (so through :class:`sciffusion.train.Trainer`), sampling through its solvers, and
conditioning / steering through the core's :class:`~sciffusion.guidance.Inpaint` and
:class:`~sciffusion.guidance.GradientGuidance`.

* :class:`TrajectoryPlanner` samples normalised trajectory windows ``(B, H, S + A)``. Start, goal and
  waypoints are pinned by inpainting; a value network (Diffuser) and any differentiable cost of the
  states steer it by gradient guidance; optional Decision-Diffuser return conditioning (classifier-
  free guidance on a ``returns`` condition) and an inverse-dynamics model ``(s_t, s_{t+stride}) -> a_t``.
* :class:`DiffusionPolicy` samples action chunks conditioned on the last ``To`` observations (FiLM);
  :class:`ChunkedActor` runs it closed loop with observation horizon ``To``, prediction horizon ``Tp``
  and action horizon ``Ta``::

      obs index      t-1  t                                   (To = 2 observations)
      chunk index     0   1   2   3   4   5   6   7   8   9  ...  15   (Tp = 16 predicted actions)
      executed            1   2   3   4   5   6   7   8             (Ta = 8, indices To-1 .. To-1+Ta-1)

  The chunk's index ``To - 1`` is the action for the current step ``t``.

Each model keeps its normalisers as buffers, so a checkpoint holds everything needed to act.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sciffusion.guidance import GradientGuidance, Inpaint
from sciffusion.model import DiffusionModel
from sciffusion.domains.control.trajectory import (
    Normalizer,
    TrajectoryError,
    TrajectorySpec,
    inpaint_states,
)
from sciffusion.rng import StepRandom

__all__ = ["ChunkedActor", "DiffusionPolicy", "InverseDynamics", "MLPPolicy", "TrajectoryPlanner", "cost_guidance", "value_guidance"]


class _AffineBuffers(nn.Module):
    """``y = (x - shift) / scale`` over the last axis, stored as buffers (saved with the weights)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def load(self, normalizer: Normalizer) -> None:
        if normalizer.dim != self.shift.numel():
            raise TrajectoryError(f"normaliser has {normalizer.dim} dimensions, the model expects {self.shift.numel()}")
        self.shift.copy_(torch.as_tensor(normalizer.shift, dtype=self.shift.dtype))
        self.scale.copy_(torch.as_tensor(normalizer.scale, dtype=self.scale.dtype))

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)

    def unnormalize(self, y: Tensor) -> Tensor:
        return y * self.scale.to(y.dtype) + self.shift.to(y.dtype)


class InverseDynamics(nn.Module):
    """``(s_t, s_{t+k}) -> a_t`` MLP on normalised states and actions (Decision Diffuser)."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * state_dim, hidden), nn.Mish(), nn.Linear(hidden, hidden), nn.Mish(),
                                 nn.Linear(hidden, action_dim))

    def forward(self, s: Tensor, s_next: Tensor) -> Tensor:
        """``(..., S)``, ``(..., S)`` -> ``(..., A)``."""
        return self.net(torch.cat([s, s_next], dim=-1))


class TrajectoryPlanner(nn.Module):
    """Diffuser-style planner over trajectory windows.

    Args:
        diffusion: model over the field ``field`` shaped ``(B, H, S + A)`` (normalised units).
        spec: trajectory layout (state / action dims, horizon, stride).
        value_net: optional ``(x_t (B, H, D), t (B,)) -> (B,)`` trained on noisy windows.
        inverse_dynamics: optional :class:`InverseDynamics` (needs actions in the batch).
        returns_condition: the diffusion net is conditioned on ``cond["returns"]`` (Decision Diffuser).
        goal_condition: the diffusion net also sees the start and goal states as a global (FiLM)
            condition ``cond["start"]``, ``cond["goal"]`` (normalised, ``(B, S)``), besides inpainting.
        action_dim_data: action size in the data (for the inverse dynamics), when ``spec.action_dim = 0``.
        field: name of the trajectory field.

    Batch (from the domain's dataset, collated)::

        {"fields": {field: (B, H, D)}, "loss_mask": {field: (B, H, D)},
         "cond": {"returns": (B, 1), "start": (B, S), "goal": (B, S)} (as configured), "value": (B,) (optional),
         "actions": (B, H, A_data) normalised (optional), "valid": (B, H)}
    """

    def __init__(self, diffusion: DiffusionModel, spec: TrajectorySpec, value_net: nn.Module | None = None,
                 inverse_dynamics: InverseDynamics | None = None, returns_condition: bool = False,
                 action_dim_data: int = 0, field: str = "traj", goal_condition: bool = False) -> None:
        super().__init__()
        self.diffusion, self.spec, self.field = diffusion, spec, field
        self.value_net = value_net
        self.inverse_dynamics = inverse_dynamics
        self.returns_condition = returns_condition
        self.goal_condition = goal_condition
        self.norm = _AffineBuffers(spec.transition_dim)
        self.action_norm = _AffineBuffers(action_dim_data) if action_dim_data else None

    @property
    def process(self):
        return self.diffusion.processes[self.field]

    # -- training -------------------------------------------------------------------------------
    def training_loss(self, batch: Mapping[str, object], rng: StepRandom) -> Tensor:
        """Diffusion loss + (optional) value regression + (optional) inverse-dynamics regression."""
        fields = batch["fields"]
        inner = {"fields": fields, "loss_mask": batch.get("loss_mask")}
        if self.returns_condition or self.goal_condition:
            inner["cond"] = batch["cond"]
        loss = self.diffusion.training_loss(inner, rng)
        x0 = fields[self.field]
        if self.value_net is not None:
            t = self.process.sample_time(x0.shape[0], rng.fork(2000), "uniform").to(x0.device)
            x_t = self.process.add_noise(x0, rng.fork(2001).randn_like(x0), t)
            t_in = self.process.time_input(t)
            loss = loss + ((self.value_net(x_t, t_in.to(x0.dtype)) - batch["value"].to(x0.dtype)) ** 2).mean()
        if self.inverse_dynamics is not None:
            s = self.spec.states(x0)
            acts = batch["actions"].to(x0.dtype)
            pred = self.inverse_dynamics(s[:, :-1], s[:, 1:])
            pair_valid = (batch["valid"][:, :-1] * batch["valid"][:, 1:]).to(x0.dtype)[..., None]
            err = ((pred - acts[:, :-1]) ** 2) * pair_valid
            loss = loss + err.sum() / (pair_valid.sum() * acts.shape[-1]).clamp_min(1.0)
        return loss

    # -- planning -------------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        """Raw ``(..., S + A)`` -> normalised."""
        return self.norm.normalize(x)

    def unnormalize(self, x: Tensor) -> Tensor:
        """Normalised ``(..., S + A)`` -> raw."""
        return self.norm.unnormalize(x)

    def normalize_states(self, s: Tensor) -> Tensor:
        """Raw states ``(..., S)`` -> normalised."""
        S = self.spec.state_dim
        return (s - self.norm.shift[:S].to(s.dtype)) / self.norm.scale[:S].to(s.dtype)

    def conditions(self, start: Tensor, goal: Tensor | None = None, goal_dims: Sequence[int] | None = None,
                   waypoints: Mapping[int, Tensor] | None = None) -> Inpaint:
        """Inpainting constraint pinning token 0 to ``start`` ``(B, S)``, the last token's ``goal_dims`` to
        ``goal`` ``(B, len(goal_dims))`` and any ``waypoints`` {token: ``(B, S)``}; all raw units."""
        b = start.shape[0]
        values, mask = inpaint_states(self.spec, {0: self.normalize_states(start)}, b)
        if goal is not None:
            dims = list(range(self.spec.state_dim)) if goal_dims is None else list(goal_dims)
            full = torch.zeros(b, self.spec.state_dim, dtype=goal.dtype)
            full[:, dims] = goal
            g = self.normalize_states(full)[:, dims]
            v2, m2 = inpaint_states(self.spec, {self.spec.horizon - 1: g}, b, dims)
            values, mask = torch.where(m2.bool(), v2, values), torch.maximum(mask, m2)
        for token, w in (waypoints or {}).items():
            v3, m3 = inpaint_states(self.spec, {token: self.normalize_states(w)}, b)
            values, mask = torch.where(m3.bool(), v3, values), torch.maximum(mask, m3)
        return Inpaint({self.field: values}, {self.field: mask}, noise_known=False)

    @torch.no_grad()
    def plan(self, start: Tensor, goal: Tensor | None = None, goal_dims: Sequence[int] | None = None,
             waypoints: Mapping[int, Tensor] | None = None, solver: str = "dpmpp_2m", steps: int = 20,
             gradient_guidance: Sequence[GradientGuidance] = (), returns: Tensor | None = None,
             guidance_scale: float = 1.0, generator: torch.Generator | None = None, clip_x0: float | None = None) -> Tensor:
        """Sample plans ``(B, H, S + A)`` in raw units from ``start`` ``(B, S)`` toward ``goal``.

        Args:
            start: current states (raw).
            goal: goal values for ``goal_dims`` of the last token (raw), or None.
            goal_dims: which state dims the goal pins (default all).
            waypoints: extra pinned tokens.
            solver, steps: core solver and its steps.
            gradient_guidance: value / cost guidance terms (see :func:`value_guidance`, :func:`cost_guidance`).
            returns: ``(B, 1)`` target returns in [0, 1] for a return-conditioned (Decision Diffuser) model.
            guidance_scale: classifier-free guidance scale on the returns condition.
            clip_x0: clamp predicted clean plans to ``[-clip_x0, clip_x0]`` (1 for ``limits``-normalised data).
        """
        b = start.shape[0]
        device = self.norm.shift.device
        cond: dict[str, Tensor] | None = None
        if self.returns_condition:
            if returns is None:
                returns = torch.ones(b, 1)
            cond = {"returns": returns.to(device=device, dtype=torch.float32).reshape(b, 1)}
        if self.goal_condition:
            if goal is None:
                raise TrajectoryError("a goal-conditioned planner needs a goal")
            full = torch.zeros(b, self.spec.state_dim)
            full[:, list(range(self.spec.state_dim)) if goal_dims is None else list(goal_dims)] = goal.float().cpu()
            cond = {**(cond or {}), "start": self.normalize_states(start.float().to(device)),
                    "goal": self.normalize_states(full.to(device))}
        inpaint = self.conditions(start.float().cpu(), None if goal is None else goal.float().cpu(), goal_dims, waypoints)
        inpaint = Inpaint({k: v.to(device) for k, v in inpaint.values.items()}, {k: v.to(device) for k, v in inpaint.mask.items()},
                          noise_known=False)
        shape = {self.field: (b, self.spec.horizon, self.spec.transition_dim)}
        out = self.diffusion.sample(shape, cond=cond, solver=solver, steps=steps, gradient_guidance=gradient_guidance,
                                    constraints=[inpaint], guidance_scale=guidance_scale if self.returns_condition else 1.0,
                                    generator=generator, clip_x0=clip_x0)
        return self.unnormalize(out[self.field])

    @torch.no_grad()
    def infer_actions(self, states: Tensor, next_states: Tensor) -> Tensor:
        """Inverse dynamics on raw states ``(..., S)`` -> raw actions ``(..., A)``."""
        if self.inverse_dynamics is None or self.action_norm is None:
            raise TrajectoryError("this planner was trained without an inverse-dynamics model")
        a = self.inverse_dynamics(self.normalize_states(states), self.normalize_states(next_states))
        return self.action_norm.unnormalize(a)


def value_guidance(planner: TrajectoryPlanner, scale: float) -> GradientGuidance:
    """Diffuser's value guidance: raise the value net's prediction on the noisy plan ``x_t``."""
    if planner.value_net is None:
        raise TrajectoryError("value guidance needs a planner trained with a value network")
    field = planner.field

    def loss(x0: dict[str, Tensor], x_t: dict[str, Tensor], t: Tensor, index: dict[str, Tensor]) -> Tensor:
        return -planner.value_net(x_t[field], planner.process.time_input(t).to(x_t[field].dtype))

    return GradientGuidance(loss, scale=scale, fields=[field], through_model=True)


def cost_guidance(planner: TrajectoryPlanner, cost: Callable[[Tensor], Tensor], scale: float,
                  through_model: bool = False, substeps: int = 1) -> GradientGuidance:
    """Steer plans down ``cost(states_raw (B, H, S)) -> (B,)`` evaluated on the predicted clean plan.

    ``substeps`` splits each correction of the predicted plan into that many gradient steps (see
    :class:`~sciffusion.guidance.GradientGuidance`); only without ``through_model``.
    """
    field = planner.field

    def loss(x0: dict[str, Tensor], x_t: dict[str, Tensor], t: Tensor, index: dict[str, Tensor]) -> Tensor:
        return cost(planner.spec.states(planner.unnormalize(x0[field])))

    return GradientGuidance(loss, scale=scale, fields=[field], through_model=through_model, substeps=substeps)


class DiffusionPolicy(nn.Module):
    """Diffusion Policy: action chunks ``(B, Tp, A)`` conditioned on ``To`` observations ``(B, To, O)``.

    Args:
        diffusion: model over the field ``"action"``; its net takes ``cond["obs"]`` (FiLM).
        obs_dim, action_dim: O and A.
        obs_horizon, pred_horizon, action_horizon: To, Tp, Ta (``To - 1 + Ta <= Tp``).
        clip_x0: clamp predicted clean (normalised) chunks while sampling, e.g. 1 for ``limits`` data.

    Batch: ``{"fields": {"action": (B, Tp, A)}, "cond": {"obs": (B, To, O)}}``, normalised.
    """

    def __init__(self, diffusion: DiffusionModel, obs_dim: int, action_dim: int, obs_horizon: int = 2,
                 pred_horizon: int = 16, action_horizon: int = 8, clip_x0: float | None = None) -> None:
        super().__init__()
        if not (obs_horizon >= 1 and action_horizon >= 1 and obs_horizon - 1 + action_horizon <= pred_horizon):
            raise TrajectoryError(f"need To >= 1, Ta >= 1 and To - 1 + Ta <= Tp; got To={obs_horizon} Tp={pred_horizon} Ta={action_horizon}")
        self.diffusion = diffusion
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.obs_horizon, self.pred_horizon, self.action_horizon = obs_horizon, pred_horizon, action_horizon
        self.clip_x0 = clip_x0
        self.obs_norm = _AffineBuffers(obs_dim)
        self.action_norm = _AffineBuffers(action_dim)

    def training_loss(self, batch: Mapping[str, object], rng: StepRandom) -> Tensor:
        return self.diffusion.training_loss({"fields": batch["fields"], "cond": batch["cond"]}, rng)

    def executed_slice(self) -> slice:
        """Chunk indices executed after a prediction: ``To - 1 .. To - 2 + Ta``."""
        return slice(self.obs_horizon - 1, self.obs_horizon - 1 + self.action_horizon)

    @torch.no_grad()
    def predict_chunk(self, obs_history: Tensor, solver: str = "ddim", steps: int = 10,
                      generator: torch.Generator | None = None) -> Tensor:
        """Raw observations ``(B, To, O)`` -> the whole raw action chunk ``(B, Tp, A)``.

        Predicted clean chunks are clamped to ``[-clip_x0, clip_x0]`` at every step when ``clip_x0``
        is set (Diffusion Policy's ``clip_sample`` for actions normalised to [-1, 1]).
        """
        if obs_history.shape[1:] != (self.obs_horizon, self.obs_dim):
            raise TrajectoryError(f"observation history must be (B, {self.obs_horizon}, {self.obs_dim}), got {tuple(obs_history.shape)}")
        device = self.obs_norm.shift.device
        obs = self.obs_norm.normalize(obs_history.to(device=device, dtype=torch.float32))
        shape = {"action": (obs.shape[0], self.pred_horizon, self.action_dim)}
        out = self.diffusion.sample(shape, cond={"obs": obs}, solver=solver, steps=steps, generator=generator,
                                    clip_x0=self.clip_x0)
        return self.action_norm.unnormalize(out["action"])

    @torch.no_grad()
    def act(self, obs_history: Tensor, solver: str = "ddim", steps: int = 10, generator: torch.Generator | None = None) -> Tensor:
        """Raw observations ``(B, To, O)`` -> the ``Ta`` actions to execute ``(B, Ta, A)``."""
        return self.predict_chunk(obs_history, solver, steps, generator)[:, self.executed_slice()]


class ChunkedActor:
    """Closed-loop driver for a chunk policy over a batch of environments.

    Keeps the last ``To`` observations of each environment (the first observation is repeated to fill
    the history, as in training's history padding) and a queue of ``Ta`` pending actions; a new chunk
    is predicted for all environments whenever the queue runs empty.

    Args:
        chunk_fn: ``(obs_history (B, To, O)) -> actions (B, Ta, A)``.
        obs_horizon: To.
    """

    def __init__(self, chunk_fn: Callable[[Tensor], Tensor], obs_horizon: int) -> None:
        self.chunk_fn, self.obs_horizon = chunk_fn, obs_horizon
        self.history: deque[np.ndarray] = deque(maxlen=obs_horizon)
        self.queue: deque[np.ndarray] = deque()
        self.chunk_calls = 0

    def reset(self, obs: np.ndarray) -> None:
        """Start episodes from observations ``(B, O)``."""
        self.history.clear()
        self.queue.clear()
        for _ in range(self.obs_horizon):
            self.history.append(np.asarray(obs, dtype=np.float32))

    def act(self) -> np.ndarray:
        """Actions ``(B, A)`` for the current step (predicting a new chunk when the queue is empty)."""
        if not self.queue:
            hist = torch.as_tensor(np.stack(list(self.history), axis=1))
            chunk = self.chunk_fn(hist).cpu().numpy()
            self.chunk_calls += 1
            for k in range(chunk.shape[1]):
                self.queue.append(chunk[:, k])
        return self.queue.popleft()

    def observe(self, obs: np.ndarray) -> None:
        """Append observations ``(B, O)`` received after an environment step."""
        self.history.append(np.asarray(obs, dtype=np.float32))


class MLPPolicy(nn.Module):
    """Behaviour-cloning baseline: MLP ``(obs (B, O)) -> action (B, A)`` in normalised units.

    Batch: ``{"obs": (B, O), "action": (B, A)}`` normalised. Trained with mean squared error.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 256, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        d = obs_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.Mish()]
            d = hidden
        mods.append(nn.Linear(d, action_dim))
        self.net = nn.Sequential(*mods)
        self.obs_norm = _AffineBuffers(obs_dim)
        self.action_norm = _AffineBuffers(action_dim)

    def training_loss(self, batch: Mapping[str, Tensor], rng: StepRandom) -> Tensor:
        return ((self.net(batch["obs"].float()) - batch["action"].float()) ** 2).mean()

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        """Raw observations ``(B, O)`` -> raw actions ``(B, A)``."""
        device = self.obs_norm.shift.device
        return self.action_norm.unnormalize(self.net(self.obs_norm.normalize(obs.to(device=device, dtype=torch.float32))))
