"""Transformer denoiser for trajectories and action chunks (the transformer variant of the temporal U-Net).

Each of the ``H`` tokens ``(B, H, D)`` is embedded linearly with a learned position embedding; a
conditioning token (diffusion time plus the optional global condition, see
:class:`~sciffusion.domains.control.temporal_unet.ConditionEmbedding`) is prepended, and a pre-norm
``nn.TransformerEncoder`` mixes all tokens. Classifier-free guidance as in the U-Net (NaN-marked rows).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sciffusion.nets.checks import at_least, check_cfg_keys, check_cond_dims, divisible, dropout_rate
from sciffusion.domains.control.temporal_unet import ConditionEmbedding, nan_drop
from sciffusion.registry import NETS


@dataclass
class TemporalTransformerConfig:
    """Settings of :class:`TemporalTransformer`."""

    transition_dim: int = 0
    horizon: int = 0
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    dropout: float = 0.0
    time_dim: int = 64
    cond_dims: dict[str, int] = field(default_factory=dict)
    cond_emb_dim: int = 128
    cfg_keys: list[str] | None = None
    field: str = "traj"

    def __post_init__(self) -> None:
        at_least(self, 0, "transition_dim", "horizon", "cond_emb_dim")
        at_least(self, 1, "d_model", "n_heads", "n_layers", "time_dim")
        divisible("d_model", self.d_model, "n_heads", self.n_heads)
        dropout_rate("dropout", self.dropout)
        check_cond_dims(self.cond_dims)


class TemporalTransformer(nn.Module):
    """``net({field: (B, H, D)}, t (B,), cond) -> {field: (B, H, D)}`` with ``H <= horizon``.

    Args:
        transition_dim: D, channels per token.
        horizon: maximum number of tokens (size of the position table).
        d_model, n_heads, n_layers, dropout: encoder size.
        time_dim: width of the sinusoidal time embedding.
        cond_dims: global-condition name -> flattened size.
        cond_emb_dim: MLP width for the global condition.
        cfg_keys: conditions that classifier-free guidance drops (default: all of ``cond_dims``).
        field: name of the denoised field.
    """

    def __init__(self, transition_dim: int, horizon: int, d_model: int = 128, n_heads: int = 4, n_layers: int = 4,
                 dropout: float = 0.0, time_dim: int = 64, cond_dims: dict[str, int] | None = None,
                 cond_emb_dim: int = 128, cfg_keys: Sequence[str] | None = None, field: str = "traj") -> None:
        super().__init__()
        if transition_dim < 1 or horizon < 1:
            raise ValueError(f"transition_dim and horizon must be >= 1, got {transition_dim}, {horizon}")
        self.field, self.transition_dim, self.horizon = field, transition_dim, horizon
        self.embed = ConditionEmbedding(time_dim, dict(cond_dims or {}), cond_emb_dim)
        self.cfg_keys = check_cfg_keys(self.embed.cond_names if cfg_keys is None else cfg_keys, self.embed.cond_names)
        self.cond_proj = nn.Linear(self.embed.dim, d_model)
        self.inp = nn.Linear(transition_dim, d_model)
        self.pos = nn.Parameter(torch.zeros(1, horizon + 1, d_model))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, transition_dim)

    def drop_condition(self, cond: dict[str, Tensor], drop: Tensor) -> dict[str, Tensor]:
        """Mark the ``cfg_keys`` conditions of rows ``drop (B,)`` as absent (classifier-free guidance)."""
        return nan_drop(cond, drop, self.cfg_keys)

    def forward(self, x: dict[str, Tensor], t: Tensor, cond: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        traj = x[self.field]
        b, h, d = traj.shape
        if d != self.transition_dim or h > self.horizon:
            raise ValueError(f"field '{self.field}' is (B, {h}, {d}); the network takes up to {self.horizon} tokens of {self.transition_dim}")
        c = self.cond_proj(self.embed(t, cond, b))[:, None, :]
        tokens = torch.cat([c, self.inp(traj)], dim=1) + self.pos[:, : h + 1]
        out = self.norm(self.encoder(tokens))[:, 1:]
        return {self.field: self.out(out)}


@NETS.register("temporal_transformer", config=TemporalTransformerConfig,
               help="transformer denoiser over trajectory tokens with a time/condition token")
def _build_temporal_transformer(**kw) -> TemporalTransformer:
    return TemporalTransformer(**kw)
