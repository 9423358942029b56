"""Embeddings shared by the networks."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> Tensor:
    """Transformer-style features of a continuous time ``t`` (B,) -> ``(B, dim)``.

    ``t`` in [0, 1] is multiplied by ``scale`` so that the frequencies cover the DDPM index range.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal features followed by a two-layer MLP: ``t (B,) -> (B, dim)``."""

    def __init__(self, dim: int, freq_dim: int | None = None, scale: float = 1000.0) -> None:
        super().__init__()
        self.freq_dim, self.scale = freq_dim or dim, scale
        self.mlp = nn.Sequential(nn.Linear(self.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(t, self.freq_dim, self.scale))
