"""Trajectory representation: states and actions over a horizon, ``(B, H, S + A)``.

A trajectory window holds ``H`` tokens; token ``h`` is the concatenation ``[state (S), action (A)]``
of raw time step ``start + h * stride`` (``stride > 1`` plans on a coarser clock; the tracking
controller interpolates between tokens). States come first in the last axis, so
``x[..., :S]`` are states and ``x[..., S:]`` actions.

Pieces:

* normalisers (``limits``: per-dimension min/max to [-1, 1]; ``gaussian``: zero mean, unit variance;
  ``identity``), fitted on the training data and saved as plain lists (JSON-safe);
* :class:`EpisodeWindows`: fixed-length windows cut from variable-length episodes, with padding
  rules (history padding before the first step, padding after the last step, and absorbing padding
  after a terminal step) and a ``valid`` mask marking real (unpadded) tokens;
* :func:`inpaint_states`: values and mask that pin chosen tokens' states (start, goal, waypoints) for
  the core's ``Inpaint`` constraint.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


class TrajectoryError(ValueError):
    """Inconsistent trajectory data or settings (dimensions, horizon, padding)."""


ArrayLike = np.ndarray | torch.Tensor


def _as_like(values: np.ndarray, x: ArrayLike) -> ArrayLike:
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(values, dtype=x.dtype, device=x.device)
    return values.astype(x.dtype if np.issubdtype(np.asarray(x).dtype, np.floating) else np.float64)


class Normalizer:
    """Per-dimension affine map ``y = (x - shift) / scale`` over the last axis; works on numpy and torch."""

    kind = "identity"

    def __init__(self, shift: Sequence[float], scale: Sequence[float]) -> None:
        self.shift = np.asarray(shift, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        if self.shift.shape != self.scale.shape or self.shift.ndim != 1:
            raise TrajectoryError(f"normaliser shift/scale must be 1-D of equal length, got {self.shift.shape} and {self.scale.shape}")

    @property
    def dim(self) -> int:
        return int(self.shift.shape[0])

    def _check(self, x: ArrayLike) -> None:
        if x.shape[-1] != self.dim:
            raise TrajectoryError(f"normaliser fitted on {self.dim} dimensions, got data with {x.shape[-1]}")

    def normalize(self, x: ArrayLike) -> ArrayLike:
        """``(..., D)`` raw -> normalised."""
        self._check(x)
        return (x - _as_like(self.shift, x)) / _as_like(self.scale, x)

    def unnormalize(self, y: ArrayLike) -> ArrayLike:
        """``(..., D)`` normalised -> raw."""
        self._check(y)
        return y * _as_like(self.scale, y) + _as_like(self.shift, y)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shift": self.shift.tolist(), "scale": self.scale.tolist()}


class IdentityNormalizer(Normalizer):
    kind = "identity"

    @classmethod
    def fit(cls, data: np.ndarray) -> IdentityNormalizer:
        d = np.asarray(data).shape[-1]
        return cls(np.zeros(d), np.ones(d))


class LimitsNormalizer(Normalizer):
    """Maps each dimension's [min, max] over the data to [-1, 1]; constant dimensions map to 0."""

    kind = "limits"

    @classmethod
    def fit(cls, data: np.ndarray, eps: float = 1e-6) -> LimitsNormalizer:
        flat = np.asarray(data, dtype=np.float64).reshape(-1, np.asarray(data).shape[-1])
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        half = (hi - lo) / 2.0
        return cls((hi + lo) / 2.0, np.where(half > eps, half, 1.0))


class GaussianNormalizer(Normalizer):
    """Zero mean, unit standard deviation per dimension."""

    kind = "gaussian"

    @classmethod
    def fit(cls, data: np.ndarray, eps: float = 1e-6) -> GaussianNormalizer:
        flat = np.asarray(data, dtype=np.float64).reshape(-1, np.asarray(data).shape[-1])
        std = flat.std(axis=0)
        return cls(flat.mean(axis=0), np.where(std > eps, std, 1.0))


NORMALIZERS: dict[str, type[Normalizer]] = {
    "identity": IdentityNormalizer,
    "limits": LimitsNormalizer,
    "gaussian": GaussianNormalizer,
}


def fit_normalizer(kind: str, data: np.ndarray) -> Normalizer:
    """Fit a normaliser of ``kind`` (identity | limits | gaussian) on ``data`` ``(..., D)``."""
    if kind not in NORMALIZERS:
        raise TrajectoryError(f"unknown normaliser '{kind}' (known: {', '.join(NORMALIZERS)})")
    return NORMALIZERS[kind].fit(data)  # type: ignore[attr-defined]


def normalizer_from_state(state: Mapping[str, Any]) -> Normalizer:
    """Rebuild a normaliser saved with :meth:`Normalizer.state_dict`."""
    kind = state.get("kind")
    if kind not in NORMALIZERS:
        raise TrajectoryError(f"unknown normaliser kind '{kind}' in saved state")
    return NORMALIZERS[kind](state["shift"], state["scale"])


@dataclass(frozen=True)
class TrajectorySpec:
    """Layout of one trajectory window ``(H, S + A)``.

    Attributes:
        state_dim: S, number of state (observation) dimensions per token.
        action_dim: A, number of action dimensions per token (0 for state-only planners).
        horizon: H, tokens per window.
        stride: raw environment steps between consecutive tokens.
    """

    state_dim: int
    action_dim: int
    horizon: int
    stride: int = 1

    def __post_init__(self) -> None:
        if self.state_dim < 0 or self.action_dim < 0 or self.state_dim + self.action_dim == 0:
            raise TrajectoryError(f"trajectory needs state_dim + action_dim > 0, got {self.state_dim} + {self.action_dim}")
        if self.horizon < 1 or self.stride < 1:
            raise TrajectoryError(f"horizon and stride must be >= 1, got horizon={self.horizon} stride={self.stride}")

    @property
    def transition_dim(self) -> int:
        return self.state_dim + self.action_dim

    @property
    def span(self) -> int:
        """Raw steps covered by a window: ``(H - 1) * stride + 1``."""
        return (self.horizon - 1) * self.stride + 1

    def join(self, states: ArrayLike, actions: ArrayLike | None) -> ArrayLike:
        """``(..., H, S)`` and ``(..., H, A)`` -> ``(..., H, S + A)``."""
        if self.action_dim == 0:
            return states
        if actions is None:
            raise TrajectoryError("this trajectory layout has actions; none were given")
        if isinstance(states, torch.Tensor):
            return torch.cat([states, actions], dim=-1)
        return np.concatenate([states, actions], axis=-1)

    def states(self, x: ArrayLike) -> ArrayLike:
        """State part ``(..., H, S)`` of ``(..., H, S + A)``."""
        return x[..., : self.state_dim]

    def actions(self, x: ArrayLike) -> ArrayLike:
        """Action part ``(..., H, A)`` of ``(..., H, S + A)``."""
        return x[..., self.state_dim:]


def split_episodes(episode_ends: np.ndarray, n_steps: int) -> list[tuple[int, int]]:
    """``[(begin, end), ...]`` raw index ranges from exclusive ``episode_ends`` ``(E,)``."""
    ends = np.asarray(episode_ends, dtype=np.int64)
    if ends.ndim != 1 or len(ends) == 0 or np.any(np.diff(ends) <= 0) or ends[0] <= 0 or ends[-1] != n_steps:
        raise TrajectoryError(f"episode_ends must be strictly increasing, positive and end at the number of steps ({n_steps})")
    begins = np.concatenate([[0], ends[:-1]])
    return list(zip(begins.tolist(), ends.tolist()))


class EpisodeWindows(torch.utils.data.Dataset):
    """Fixed-length windows of ``horizon`` tokens from variable-length episodes.

    Padding rules (tokens that fall outside an episode repeat its first or last step; ``valid`` is 0
    there):

    * ``pad_before`` tokens before the first step (Diffusion Policy's observation history);
    * ``pad_after`` tokens after the last step of any episode;
    * ``absorbing_terminal``: an episode whose ``terminals`` flag is set ends in an absorbing state
      (e.g. the goal was reached and the agent stays), so windows may run past its end by up to
      ``horizon - 1`` tokens; the padded tokens repeat the terminal step with the fields listed in
      ``zero_on_pad`` (e.g. actions or velocities) zeroed over the given column slices.

    Windows start at every raw step of an episode (and ``pad_before * stride`` steps earlier).

    Args:
        arrays: name -> ``(N, D_name)`` arrays concatenated over episodes.
        episode_ends: ``(E,)`` exclusive end index of each episode.
        horizon: tokens per window.
        stride: raw steps between tokens.
        pad_before, pad_after: padding allowed, in tokens.
        terminals: ``(E,)`` bool, True where the episode ends in a terminal (absorbing) state.
        absorbing_terminal: allow absorbing padding after terminal episodes.
        zero_on_pad: name -> (first column, last column exclusive) zeroed in absorbing padding.

    ``__getitem__`` returns name -> ``(horizon, D_name)`` float32 arrays plus ``"valid"`` ``(horizon,)``.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], episode_ends: np.ndarray, horizon: int, stride: int = 1,
                 pad_before: int = 0, pad_after: int = 0, terminals: np.ndarray | None = None,
                 absorbing_terminal: bool = False, zero_on_pad: Mapping[str, tuple[int, int]] | None = None) -> None:
        if not arrays:
            raise TrajectoryError("no arrays given")
        n = {name: len(a) for name, a in arrays.items()}
        if len(set(n.values())) != 1:
            raise TrajectoryError(f"arrays have different lengths: {n}")
        n_steps = next(iter(n.values()))
        self.arrays = {name: np.asarray(a, dtype=np.float32).reshape(n_steps, -1) for name, a in arrays.items()}
        self.ranges = split_episodes(episode_ends, n_steps)
        if horizon < 1 or stride < 1 or pad_before < 0 or pad_after < 0:
            raise TrajectoryError(f"bad window settings horizon={horizon} stride={stride} pad_before={pad_before} pad_after={pad_after}")
        self.horizon, self.stride = horizon, stride
        self.pad_before, self.pad_after = pad_before, pad_after
        term = np.zeros(len(self.ranges), bool) if terminals is None else np.asarray(terminals, bool)
        if term.shape != (len(self.ranges),):
            raise TrajectoryError(f"terminals has shape {term.shape}, expected ({len(self.ranges)},)")
        self.terminals = term
        self.absorbing_terminal = absorbing_terminal
        self.zero_on_pad = dict(zero_on_pad or {})
        span = (horizon - 1) * stride + 1
        index = []
        for e, (b, end) in enumerate(self.ranges):
            length = end - b
            after = (horizon - 1) if (absorbing_terminal and term[e]) else pad_after
            last_start = length - span + after * stride
            starts = np.arange(-pad_before * stride, last_start + 1)
            index.append(np.stack([np.full(len(starts), e), starts], axis=1))
        self.index = np.concatenate(index) if index else np.zeros((0, 2), np.int64)
        if len(self.index) == 0:
            longest = max(end - b for b, end in self.ranges)
            raise TrajectoryError(
                f"horizon {horizon} x stride {stride} spans {span} steps, longer than the longest episode ({longest} steps) "
                f"with the padding allowed; lower the horizon or allow padding")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        e, start = (int(v) for v in self.index[i])
        b, end = self.ranges[e]
        raw = start + np.arange(self.horizon) * self.stride  # episode-relative steps
        valid = (raw >= 0) & (raw < end - b)
        idx = b + np.clip(raw, 0, end - b - 1)
        out = {name: a[idx].copy() for name, a in self.arrays.items()}
        if self.terminals[e] and self.absorbing_terminal:
            after = raw >= end - b
            for name, (c0, c1) in self.zero_on_pad.items():
                out[name][after, c0:c1] = 0.0
        out["valid"] = valid.astype(np.float32)
        return out


def inpaint_states(spec: TrajectorySpec, known: Mapping[int, ArrayLike], batch: int, dims: Sequence[int] | None = None,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and mask pinning the states of chosen tokens (start, goal, waypoints).

    Args:
        spec: trajectory layout.
        known: token index (negative counts from the end) -> normalised states ``(B, S)`` or ``(S,)``
            (or ``(B, len(dims))`` when ``dims`` is given).
        batch: B.
        dims: state dimensions to pin (default all ``S``), e.g. ``[0, 1]`` for positions only.

    Returns:
        values ``(B, H, S + A)`` and mask ``(B, H, S + A)`` (1 = known entry), for ``Inpaint``.
    """
    values = torch.zeros(batch, spec.horizon, spec.transition_dim, dtype=dtype)
    mask = torch.zeros_like(values)
    cols = list(range(spec.state_dim)) if dims is None else list(dims)
    if any(c < 0 or c >= spec.state_dim for c in cols):
        raise TrajectoryError(f"state dims {cols} out of range for state_dim={spec.state_dim}")
    for token, v in known.items():
        if not -spec.horizon <= token < spec.horizon:
            raise TrajectoryError(f"token {token} outside horizon {spec.horizon}")
        v = torch.as_tensor(v, dtype=dtype)
        if v.shape[-1] != len(cols):
            raise TrajectoryError(f"condition for token {token} has {v.shape[-1]} values, expected {len(cols)}")
        values[:, token, cols] = v.expand(batch, len(cols)) if v.ndim == 1 else v
        mask[:, token, cols] = 1.0
    return values, mask
