"""Temporal 1-D U-Net for trajectories and action chunks (Diffuser / Diffusion Policy style).

Input and output are ``(B, H, D)`` sequences (``H`` tokens of ``D`` channels); internally the time
axis is the convolution axis. Building blocks: ``Conv1d -> GroupNorm -> Mish``; residual blocks whose
first conv is modulated by the conditioning embedding, FiLM-style (per-channel scale and bias) or
bias-only (Diffuser). The conditioning embedding is the diffusion-time embedding concatenated with an
optional *global condition*: every entry of ``cond`` named in ``cond_dims`` is flattened per sample
and concatenated (e.g. Diffusion Policy's ``To`` past observations, Decision Diffuser's return).

Classifier-free guidance: :meth:`TemporalUNet1D.drop_condition` marks dropped rows by filling their
condition values with NaN; the network replaces such a condition by a learned *null* value (one per
condition name, so dropping the return keeps the start and goal).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sciffusion.nets.checks import at_least, check_cfg_keys, check_cond_dims, odd, positive_list
from sciffusion.nets.embeddings import sinusoidal_embedding
from sciffusion.registry import NETS


def _groups(channels: int, n_groups: int) -> int:
    return next(g for g in range(min(n_groups, channels), 0, -1) if channels % g == 0)


class Conv1dBlock(nn.Module):
    """``Conv1d -> GroupNorm -> Mish`` on ``(B, C, H)``, length preserving."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                                   nn.GroupNorm(_groups(c_out, n_groups), c_out), nn.Mish())

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class ResidualBlock1D(nn.Module):
    """Two conv blocks; the embedding ``(B, E)`` modulates the first one's output.

    ``film=True``: ``h * scale + bias`` (Diffusion Policy); ``film=False``: ``h + bias`` (Diffuser).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, kernel_size: int = 5, n_groups: int = 8, film: bool = True) -> None:
        super().__init__()
        self.film = film
        self.block1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.emb = nn.Sequential(nn.Mish(), nn.Linear(emb_dim, 2 * c_out if film else c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x (B, C_in, H)``, ``emb (B, E)`` -> ``(B, C_out, H)``."""
        h = self.block1(x)
        e = self.emb(emb)[:, :, None]
        if self.film:
            scale, bias = e.chunk(2, dim=1)
            h = h * (1 + scale) + bias
        else:
            h = h + e
        return self.block2(h) + self.skip(x)


class ConditionEmbedding(nn.Module):
    """Diffusion time plus optional global condition -> one embedding ``(B, E)``.

    Args:
        time_dim: width of the time embedding.
        cond_dims: condition name -> flattened size per sample (empty: unconditional).
        cond_emb_dim: width of the condition embedding (0: use the raw flattened condition, as
            Diffusion Policy does).
    """

    def __init__(self, time_dim: int, cond_dims: dict[str, int], cond_emb_dim: int = 0) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 4 * time_dim), nn.Mish(), nn.Linear(4 * time_dim, time_dim))
        self.cond_names = sorted(cond_dims)
        self.cond_in = sum(cond_dims[k] for k in self.cond_names)
        self.cond_dims = dict(cond_dims)
        if self.cond_in and cond_emb_dim > 0:
            self.cond_mlp: nn.Module = nn.Sequential(nn.Linear(self.cond_in, cond_emb_dim), nn.Mish(), nn.Linear(cond_emb_dim, cond_emb_dim))
            self.cond_out = cond_emb_dim
        else:
            self.cond_mlp = nn.Identity()
            self.cond_out = self.cond_in
        # learned stand-in for each condition when it is dropped (classifier-free guidance)
        self.null = nn.ParameterDict({k: nn.Parameter(torch.zeros(cond_dims[k])) for k in self.cond_names})

    @property
    def dim(self) -> int:
        return self.time_dim + self.cond_out

    def forward(self, t: Tensor, cond: dict[str, Tensor] | None, batch: int) -> Tensor:
        emb = self.time_mlp(sinusoidal_embedding(t.reshape(-1).expand(batch) if t.numel() == 1 else t, self.time_dim))
        if not self.cond_in:
            return emb
        if cond is None or any(k not in cond for k in self.cond_names):
            missing = [k for k in self.cond_names if cond is None or k not in cond]
            raise ValueError(f"network expects condition(s) {missing}")
        flat = []
        for k in self.cond_names:
            c = cond[k].reshape(batch, -1).to(emb.dtype)
            if c.shape[1] != self.cond_dims[k]:
                raise ValueError(f"condition '{k}' has {c.shape[1]} values per sample, the network expects {self.cond_dims[k]}")
            dropped = torch.isnan(c).any(dim=1, keepdim=True)
            flat.append(torch.where(dropped, self.null[k].to(c.dtype).expand_as(c), c))
        return torch.cat([emb, self.cond_mlp(torch.cat(flat, dim=1))], dim=1)


def nan_drop(cond: dict[str, Tensor], drop: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """Fill the rows ``drop (B,)`` of the named conditions with NaN (the *null condition* marker)."""
    out = dict(cond)
    for k in names:
        v = cond[k]
        mask = drop.reshape(-1, *([1] * (v.dim() - 1)))
        out[k] = torch.where(mask, torch.full_like(v, float("nan")), v)
    return out


@dataclass
class TemporalUNet1DConfig:
    """Settings of :class:`TemporalUNet1D` (``transition_dim`` / ``cond_dims`` usually come from the data)."""

    transition_dim: int = 0
    dim: int = 32
    dim_mults: list[int] = field(default_factory=lambda: [1, 2, 4])
    kernel_size: int = 5
    n_groups: int = 8
    film: bool = True
    time_dim: int = 0
    cond_dims: dict[str, int] = field(default_factory=dict)
    cond_emb_dim: int = 0
    cfg_keys: list[str] | None = None
    field: str = "traj"

    def __post_init__(self) -> None:
        check_temporal_unet_sizes(self)
        at_least(self, 0, "transition_dim", "time_dim", "cond_emb_dim")
        check_cond_dims(self.cond_dims)


def check_temporal_unet_sizes(config: Any) -> None:
    """The U-Net sizes the temporal U-Net and the value net share: ``dim``, ``dim_mults``, ``kernel_size``, ``n_groups``."""
    at_least(config, 1, "dim", "n_groups")
    positive_list("dim_mults", config.dim_mults)
    odd("kernel_size", config.kernel_size)


class TemporalUNet1D(nn.Module):
    """``net({field: (B, H, D)}, t (B,), cond) -> {field: (B, H, D)}``.

    ``H`` must be divisible by ``2 ** (len(dim_mults) - 1)``.

    Args:
        transition_dim: D, channels per token (states + actions).
        dim: base width; level ``i`` has ``dim * dim_mults[i]`` channels.
        dim_mults: width multipliers per resolution level.
        kernel_size: temporal kernel size.
        n_groups: GroupNorm groups.
        film: FiLM (scale + bias) conditioning; ``False`` adds a bias only.
        time_dim: width of the time embedding (default ``dim``).
        cond_dims: global-condition name -> flattened size (e.g. ``{"obs": To * obs_dim}``).
        cond_emb_dim: MLP width for the global condition (0 = feed it raw).
        cfg_keys: conditions that classifier-free guidance drops (default: all of ``cond_dims``).
        field: name of the field the network denoises.
    """

    def __init__(self, transition_dim: int, dim: int = 32, dim_mults: Sequence[int] = (1, 2, 4), kernel_size: int = 5,
                 n_groups: int = 8, film: bool = True, time_dim: int = 0, cond_dims: dict[str, int] | None = None,
                 cond_emb_dim: int = 0, cfg_keys: Sequence[str] | None = None, field: str = "traj") -> None:
        super().__init__()
        if transition_dim < 1:
            raise ValueError(f"transition_dim must be >= 1, got {transition_dim}")
        self.field = field
        self.transition_dim = transition_dim
        self.n_down = len(dim_mults) - 1
        self.embed = ConditionEmbedding(time_dim or dim, dict(cond_dims or {}), cond_emb_dim)
        self.cfg_keys = check_cfg_keys(self.embed.cond_names if cfg_keys is None else cfg_keys, self.embed.cond_names)
        e = self.embed.dim
        widths = [dim * m for m in dim_mults]
        self.stem = nn.Conv1d(transition_dim, dim, 1)
        self.down = nn.ModuleList()
        c = dim
        for i, w in enumerate(widths):
            self.down.append(nn.ModuleList([
                ResidualBlock1D(c, w, e, kernel_size, n_groups, film),
                ResidualBlock1D(w, w, e, kernel_size, n_groups, film),
                nn.Conv1d(w, w, 3, stride=2, padding=1) if i < self.n_down else nn.Identity(),
            ]))
            c = w
        self.mid = nn.ModuleList([ResidualBlock1D(c, c, e, kernel_size, n_groups, film),
                                  ResidualBlock1D(c, c, e, kernel_size, n_groups, film)])
        self.up = nn.ModuleList()
        for i in reversed(range(len(widths))):
            w_out = widths[i - 1] if i > 0 else dim
            self.up.append(nn.ModuleList([
                ResidualBlock1D(c + widths[i], w_out, e, kernel_size, n_groups, film),
                ResidualBlock1D(w_out, w_out, e, kernel_size, n_groups, film),
                nn.ConvTranspose1d(w_out, w_out, 4, stride=2, padding=1) if i > 0 else nn.Identity(),
            ]))
            c = w_out
        self.out = nn.Sequential(Conv1dBlock(c, c, kernel_size, n_groups), nn.Conv1d(c, transition_dim, 1))

    def drop_condition(self, cond: dict[str, Tensor], drop: Tensor) -> dict[str, Tensor]:
        """Mark the ``cfg_keys`` conditions of rows ``drop (B,)`` as absent (classifier-free guidance)."""
        return nan_drop(cond, drop, self.cfg_keys)

    def forward(self, x: dict[str, Tensor], t: Tensor, cond: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        traj = x[self.field]
        b, horizon, d = traj.shape
        if d != self.transition_dim:
            raise ValueError(f"field '{self.field}' has {d} channels, the network expects {self.transition_dim}")
        if horizon % (2 ** self.n_down):
            raise ValueError(f"horizon {horizon} must be divisible by {2 ** self.n_down} for this U-Net depth")
        emb = self.embed(t, cond, b)
        h = self.stem(traj.transpose(1, 2))
        skips = []
        for res1, res2, down in self.down:
            h = res2(res1(h, emb), emb)
            skips.append(h)
            h = down(h)
        for block in self.mid:
            h = block(h, emb)
        for res1, res2, up in self.up:
            h = res2(res1(torch.cat([h, skips.pop()], dim=1), emb), emb)
            h = up(h)
        return {self.field: self.out(h).transpose(1, 2)}


@NETS.register("temporal_unet1d", config=TemporalUNet1DConfig,
               help="temporal 1-D U-Net (Conv1d, GroupNorm, Mish, FiLM global condition) for trajectories / action chunks")
def _build_temporal_unet(**kw) -> TemporalUNet1D:
    return TemporalUNet1D(**kw)
