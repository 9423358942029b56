"""Value network for value-guided planning (Diffuser): the temporal U-Net's encoder half plus a head.

``value(x_t (B, H, D), t (B,)) -> (B,)`` predicts the value (e.g. discounted return) of the clean
trajectory behind a noisy one, so its gradient can steer sampling at every noise level.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sciffusion.nets.checks import at_least
from sciffusion.domains.control.temporal_unet import ConditionEmbedding, ResidualBlock1D, check_temporal_unet_sizes
from sciffusion.registry import NETS


@dataclass
class TemporalValueNetConfig:
    """Settings of :class:`TemporalValueNet`."""

    transition_dim: int = 0
    horizon: int = 0
    dim: int = 32
    dim_mults: list[int] = field(default_factory=lambda: [1, 2, 4])
    kernel_size: int = 5
    n_groups: int = 8
    field: str = "traj"

    def __post_init__(self) -> None:
        at_least(self, 0, "transition_dim", "horizon")
        check_temporal_unet_sizes(self)


class TemporalValueNet(nn.Module):
    """Encoder half of :class:`~sciffusion.domains.control.temporal_unet.TemporalUNet1D` + MLP head -> scalar.

    Args:
        transition_dim: D, channels per token.
        horizon: H, tokens per trajectory (fixes the flattened feature size).
        dim, dim_mults, kernel_size, n_groups: as the U-Net.
        field: the trajectory field read from the input dict.
    """

    def __init__(self, transition_dim: int, horizon: int, dim: int = 32, dim_mults: Sequence[int] = (1, 2, 4),
                 kernel_size: int = 5, n_groups: int = 8, field: str = "traj") -> None:
        super().__init__()
        self.field, self.transition_dim, self.horizon = field, transition_dim, horizon
        self.embed = ConditionEmbedding(dim, {})
        e = self.embed.dim
        self.stem = nn.Conv1d(transition_dim, dim, 1)
        blocks: list[nn.Module] = []
        c, length = dim, horizon
        for w in (dim * m for m in dim_mults):
            blocks.append(nn.ModuleList([ResidualBlock1D(c, w, e, kernel_size, n_groups),
                                         ResidualBlock1D(w, w, e, kernel_size, n_groups),
                                         nn.Conv1d(w, w, 3, stride=2, padding=1)]))
            c, length = w, (length + 1) // 2
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.Linear(c * length + e, 256), nn.Mish(), nn.Linear(256, 1))

    def forward(self, x: dict[str, Tensor] | Tensor, t: Tensor) -> Tensor:
        """``x``: ``(B, H, D)`` or ``{field: (B, H, D)}``; ``t`` (B,). Returns ``(B,)``."""
        traj = x[self.field] if isinstance(x, dict) else x
        b, h, d = traj.shape
        if h != self.horizon or d != self.transition_dim:
            raise ValueError(f"value net expects (B, {self.horizon}, {self.transition_dim}), got {tuple(traj.shape)}")
        emb = self.embed(t, None, b)
        z = self.stem(traj.transpose(1, 2))
        for res1, res2, down in self.blocks:
            z = down(res2(res1(z, emb), emb))
        return self.head(torch.cat([z.flatten(1), emb], dim=1)).squeeze(-1)


@NETS.register("temporal_value", config=TemporalValueNetConfig,
               help="value network on noisy trajectories (U-Net encoder half + head), for value guidance")
def _build_temporal_value(**kw) -> TemporalValueNet:
    return TemporalValueNet(**kw)
