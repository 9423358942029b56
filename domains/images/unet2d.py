"""UNet2D for images: residual blocks with time (and class) embedding, self-attention at low resolution.

Class conditioning uses a learned embedding with one extra *null* class (index ``num_classes``) for
classifier-free guidance.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciffusion.config import FieldError
from sciffusion.nets.checks import at_least, dropout_rate, positive_list
from sciffusion.nets.embeddings import TimeEmbedding
from sciffusion.registry import NETS

ATTENTION_HEADS = 4


def _norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 2 or g == 1)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with the embedding added in between (scale-shift)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Multi-head self-attention over pixels."""

    def __init__(self, channels: int, heads: int = ATTENTION_HEADS) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


@dataclass
class UNet2DConfig:
    """Settings of :class:`UNet2D`; level ``i`` has ``channels * channel_mults[i]`` channels.

    Self-attention (``ATTENTION_HEADS`` heads) runs at the ``attention_levels`` and in the middle block
    (the deepest level), so those levels' widths must be divisible by the number of heads.
    """

    in_channels: int = 1
    channels: int = 64
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    blocks_per_level: int = 2
    attention_levels: list[int] = field(default_factory=lambda: [2])
    num_classes: int = 0
    dropout: float = 0.1
    field: str = "image"

    def __post_init__(self) -> None:
        at_least(self, 1, "in_channels", "channels", "blocks_per_level")
        at_least(self, 0, "num_classes")
        positive_list("channel_mults", self.channel_mults)
        levels = len(self.channel_mults)
        for level in self.attention_levels:
            if not 0 <= level < levels:
                raise FieldError("attention_levels", f"names level {level}, but channel_mults {self.channel_mults} has levels 0..{levels - 1}")
        for level in sorted(set(self.attention_levels) | {levels - 1}):
            width = self.channels * self.channel_mults[level]
            if width % ATTENTION_HEADS:
                raise FieldError("channels", f"x channel_mults[{level}] = {width} channels must be divisible by the "
                                             f"{ATTENTION_HEADS} attention heads (attention runs at level {level})")
        dropout_rate("dropout", self.dropout)


class UNet2D(nn.Module):
    """``net({field: (B, C, H, W)}, t (B,), cond {"label": (B,) long} | None) -> {field: (B, C, H, W)}``.

    H and W must be divisible by ``2 ** (len(channel_mults) - 1)``.
    """

    def __init__(self, in_channels: int = 1, channels: int = 64, channel_mults: list[int] | None = None,
                 blocks_per_level: int = 2, attention_levels: list[int] | None = None, num_classes: int = 0,
                 dropout: float = 0.1, field: str = "image") -> None:
        super().__init__()
        mults = list(channel_mults or [1, 2, 2])
        attn_levels = set(attention_levels if attention_levels is not None else [len(mults) - 1])
        self.field, self.num_classes = field, num_classes
        emb_dim = 4 * channels
        self.time_emb = TimeEmbedding(emb_dim, channels)
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips, c = [channels], channels
        for level, m in enumerate(mults):
            for _ in range(blocks_per_level):
                self.down.append(nn.ModuleList([ResBlock(c, channels * m, emb_dim, dropout),
                                                 Attention(channels * m) if level in attn_levels else nn.Identity()]))
                c = channels * m
                skips.append(c)
            if level < len(mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), Attention(c), ResBlock(c, c, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mults))):
            for _ in range(blocks_per_level + 1):
                self.up.append(nn.ModuleList([ResBlock(c + skips.pop(), channels * m, emb_dim, dropout),
                                               Attention(channels * m) if level in attn_levels else nn.Identity()]))
                c = channels * m
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]))
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def drop_condition(self, cond: dict[str, Tensor], drop: Tensor) -> dict[str, Tensor]:
        """Replace the label by the null class where ``drop`` (B,) is true."""
        label = torch.where(drop, torch.full_like(cond["label"], self.num_classes), cond["label"])
        return {**cond, "label": label}

    def forward(self, x: dict[str, Tensor], t: Tensor, cond: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        h = x[self.field]
        emb = self.time_emb(t)
        if self.class_emb is not None:
            label = cond["label"] if cond is not None else torch.full((h.shape[0],), self.num_classes, device=h.device)
            emb = emb + self.class_emb(label.long())
        h = self.stem(h)
        hs = [h]
        for block in self.down:
            if len(block) == 1:  # downsample
                h = block[0](h)
            else:
                h = block[1](block[0](h, emb))
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for block in self.up:
            if isinstance(block[0], nn.Upsample):
                h = block[1](block[0](h))
            else:
                h = block[1](block[0](torch.cat([h, hs.pop()], dim=1), emb))
        return {self.field: self.out(h)}


@NETS.register("unet2d", config=UNet2DConfig, help="UNet2D with time and class (null-class CFG) embeddings")
def _build_unet2d(**kw) -> UNet2D:
    return UNet2D(**kw)
