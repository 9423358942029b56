"""CSDI denoiser (Tashiro et al., NeurIPS 2021) for conditional imputation of ``(B, K, L)`` series.

The network sees two channels per entry: the conditioning values (observed entries the model may
use, zero elsewhere) and the noisy state on the entries to impute (zero on conditioning entries).
A stack of residual layers mixes information along time (a transformer over ``L`` for each feature)
and across features (a transformer over ``K`` for each time point). Every layer adds the embedded
diffusion time, adds a projection of the side information (sinusoidal embedding of the time stamps,
a learned per-feature embedding and the conditional mask), applies a gated activation
``sigmoid(gate) * tanh(filter)`` and returns a residual and a skip output; the skips are summed into
the prediction.

Net contract (see :mod:`sciffusion.model`): ``net({field: (B, K, L)}, t (B,), cond) -> {field: (B, K, L)}``
with ``cond = {"cond_values": (B, K, L), "cond_mask": (B, K, L), "time": (B, L)}``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sciffusion.nets.checks import at_least, divisible, dropout_rate, finite_positive
from sciffusion.registry import NETS


@dataclass
class CSDIConfig:
    """Size of the CSDI denoiser.

    Attributes:
        num_features: ``K``, number of series features (fixes the feature embedding table); domains
            pass it from their data, so configs leave it at 0.
        field: name of the imputed field in the state dict.
        channels: residual channels.
        layers: residual layers.
        heads: attention heads of both transformers.
        ff_dim: feed-forward width inside the transformers.
        diffusion_embedding_dim: width of the diffusion-time embedding.
        time_embedding_dim: width of the sinusoidal time-stamp embedding.
        feature_embedding_dim: width of the learned feature embedding.
        time_scale: the network time input is multiplied by this before its sinusoidal embedding.
        dropout: dropout inside the transformers.
    """

    num_features: int = 0
    field: str = "values"
    channels: int = 64
    layers: int = 4
    heads: int = 8
    ff_dim: int = 64
    diffusion_embedding_dim: int = 128
    time_embedding_dim: int = 128
    feature_embedding_dim: int = 16
    time_scale: float = 1000.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        at_least(self, 0, "num_features")
        at_least(self, 1, "channels", "layers", "heads", "ff_dim", "diffusion_embedding_dim", "time_embedding_dim",
                 "feature_embedding_dim")
        divisible("channels", self.channels, "heads", self.heads)
        finite_positive("time_scale", self.time_scale)
        dropout_rate("dropout", self.dropout)


def sinusoidal(positions: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of real-valued ``positions`` ``(...)`` -> ``(..., dim)`` (sin, cos halves)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32).unsqueeze(-1) * freqs
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def _pointwise(in_channels: int, out_channels: int) -> nn.Conv1d:
    conv = nn.Conv1d(in_channels, out_channels, kernel_size=1)
    nn.init.kaiming_normal_(conv.weight)
    return conv


class ResidualLayer(nn.Module):
    """One CSDI residual layer on ``(B, C, K, L)`` features."""

    def __init__(self, channels: int, side_dim: int, diffusion_dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.diffusion_projection = nn.Linear(diffusion_dim, channels)
        self.side_projection = _pointwise(side_dim, 2 * channels)
        self.mid_projection = _pointwise(channels, 2 * channels)
        self.out_projection = _pointwise(channels, 2 * channels)
        self.time_transformer = nn.TransformerEncoderLayer(channels, heads, ff_dim, dropout, activation="gelu", batch_first=True)
        self.feature_transformer = nn.TransformerEncoderLayer(channels, heads, ff_dim, dropout, activation="gelu", batch_first=True)

    def _along_time(self, h: Tensor) -> Tensor:
        batch, channels, features, length = h.shape
        if length == 1:
            return h
        seq = h.permute(0, 2, 3, 1).reshape(batch * features, length, channels)
        seq = self.time_transformer(seq)
        return seq.reshape(batch, features, length, channels).permute(0, 3, 1, 2)

    def _across_features(self, h: Tensor) -> Tensor:
        batch, channels, features, length = h.shape
        if features == 1:
            return h
        seq = h.permute(0, 3, 2, 1).reshape(batch * length, features, channels)
        seq = self.feature_transformer(seq)
        return seq.reshape(batch, length, features, channels).permute(0, 3, 2, 1)

    def forward(self, x: Tensor, side: Tensor, diffusion_emb: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``(B, C, K, L)``, ``side`` ``(B, S, K, L)``, ``diffusion_emb`` ``(B, D)`` -> (residual out, skip), each ``(B, C, K, L)``."""
        batch, channels, features, length = x.shape
        h = x + self.diffusion_projection(diffusion_emb)[:, :, None, None]
        h = self._across_features(self._along_time(h))
        h = self.mid_projection(h.reshape(batch, channels, -1))
        h = h + self.side_projection(side.reshape(batch, side.shape[1], -1))
        gate, filt = h.chunk(2, dim=1)
        h = self.out_projection(torch.sigmoid(gate) * torch.tanh(filt))
        residual, skip = h.chunk(2, dim=1)
        shape = (batch, channels, features, length)
        return (x + residual.reshape(shape)) / math.sqrt(2.0), skip.reshape(shape)


class CSDINet(nn.Module):
    """The CSDI denoiser; see the module docstring for inputs and outputs."""

    def __init__(self, config: CSDIConfig) -> None:
        super().__init__()
        if config.num_features < 1:
            raise ValueError(f"csdi net: num_features must be >= 1, got {config.num_features}")
        self.config = config
        dim = config.diffusion_embedding_dim
        self.diffusion_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())
        self.feature_embedding = nn.Embedding(config.num_features, config.feature_embedding_dim)
        side_dim = config.time_embedding_dim + config.feature_embedding_dim + 1
        self.input_projection = _pointwise(2, config.channels)
        self.layers = nn.ModuleList(
            ResidualLayer(config.channels, side_dim, dim, config.heads, config.ff_dim, config.dropout) for _ in range(config.layers)
        )
        self.skip_projection = _pointwise(config.channels, config.channels)
        self.output_projection = nn.Conv1d(config.channels, 1, kernel_size=1)
        nn.init.zeros_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    def side_info(self, cond_mask: Tensor, time: Tensor) -> Tensor:
        """Side information ``(B, T + F + 1, K, L)`` from ``cond_mask`` ``(B, K, L)`` and stamps ``time`` ``(B, L)``."""
        batch, features, length = cond_mask.shape
        if features != self.config.num_features:
            raise ValueError(f"csdi net was built for {self.config.num_features} features, got {features}")
        time_emb = sinusoidal(time, self.config.time_embedding_dim)  # (B, L, T)
        time_emb = time_emb.permute(0, 2, 1)[:, :, None, :].expand(-1, -1, features, -1)
        feat = self.feature_embedding(torch.arange(features, device=cond_mask.device))  # (K, F)
        feat = feat.t()[None, :, :, None].expand(batch, -1, -1, length)
        return torch.cat([time_emb, feat, cond_mask[:, None].to(time_emb.dtype)], dim=1)

    def forward(self, x_t: dict[str, Tensor], t: Tensor, cond: dict[str, Tensor] | None) -> dict[str, Tensor]:
        """``x_t[field]`` ``(B, K, L)``, ``t`` ``(B,)`` -> ``{field: (B, K, L)}`` (the process's native prediction)."""
        if cond is None:
            raise ValueError("csdi net needs cond with 'cond_values', 'cond_mask' and 'time'")
        noisy = x_t[self.config.field]
        batch, features, length = noisy.shape
        cond_mask = cond["cond_mask"].to(noisy.dtype)
        inputs = torch.stack([cond["cond_values"].to(noisy.dtype) * cond_mask, noisy * (1 - cond_mask)], dim=1)
        h = torch.relu(self.input_projection(inputs.reshape(batch, 2, -1)))
        h = h.reshape(batch, self.config.channels, features, length)
        side = self.side_info(cond_mask, cond["time"].to(noisy.dtype))
        diffusion_emb = self.diffusion_mlp(sinusoidal(t * self.config.time_scale, self.config.diffusion_embedding_dim))
        skips = torch.zeros_like(h)
        for layer in self.layers:
            h, skip = layer(h, side, diffusion_emb)
            skips = skips + skip
        h = skips.reshape(batch, self.config.channels, -1) / math.sqrt(len(self.layers))
        out = self.output_projection(torch.relu(self.skip_projection(h)))
        return {self.config.field: out.reshape(batch, features, length)}


@NETS.register("csdi", config=CSDIConfig, help="CSDI imputation denoiser: temporal + feature transformers, side info, gated residuals")
def build_csdi(**kwargs) -> CSDINet:
    """Build a :class:`CSDINet` from :class:`CSDIConfig` fields."""
    return CSDINet(CSDIConfig(**kwargs))
