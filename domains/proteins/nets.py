"""An SE(3)-invariant frame network for protein backbones: invariant point attention (IPA), as in AlphaFold 2's
structure module and FrameDiff / FrameFlow, at a CPU size (registered as ``frame_ipa``).

Call (the core's ragged net contract)::

    net(x={"trans": (N, 3), "rots": (N, 3, 3)}, t: (B,), cond={"residue_pos": (N,)} | None, index={"trans": (N,), ...})
        -> {"trans": (N, 3), "rots": (N, 3, 3) or (N, 3)}

``trans`` are CA positions in units of ``trans_scale`` Angstrom (FrameFlow's nm for 10; the points and updates of
IPA are in these units, only the distance features in Angstrom), ``rots`` the residue frames (columns e1, e2, e3;
:mod:`~sciffusion.domains.proteins.frames`). ``residue_pos`` gives each residue's position along its chain (jumps at
chain breaks); without it residues are numbered 0, 1, ... within each sample in row order. Rows of a sample must be
in chain order (the chain is not permutation-symmetric); samples may be interleaved in any order.

Every feature the network computes is invariant under a global rotation ``Q`` and translation ``c`` of the input
frames (``R -> Q R``, ``x -> Q x + c``): node features from the time and residue index, pair features from relative
positions along the chain and CA-CA distances, and IPA's point terms, which compare points in the global frame and
read them back in each residue's local frame. Each layer updates every frame by a local rotation and translation,
``R <- R dR``, ``x <- x + t R dx`` (the translation step scaled by the time, ``time_scaled_updates``: the
corruption's size on the straight path, so that the net's outputs are of one size at every time and a clean input
stays put at ``t = 0``), so the final frames transform as the input ones: the ``trans`` output is the
predicted clean CA positions (re-centred on the input's centre, so a centred input gives a centred output), the
``rots`` output the predicted clean frames (``rot_output="rotmat"``), their displacement ``log(R_t^T R0_hat)`` in the
body frame (``"rotvec"``, invariant), or, for IGSO(3), FrameDiff's normalised score of ``R_t`` around the predicted
``R0_hat`` (``"igso3_score"``, invariant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciffusion.nets.checks import at_least, finite_positive
from sciffusion.nets.embeddings import sinusoidal_embedding
from sciffusion.processes.so3 import IGSO3Process, igso3_score, so3_log
from sciffusion.registry import NETS

__all__ = ["FrameIPANet", "FrameIPAConfig", "InvariantPointAttention"]


def quaternion_update(q: Tensor) -> Tensor:
    """AlphaFold 2's backbone update: ``(b, c, d)`` ``(..., 3)`` -> the rotation of the quaternion ``(1, b, c, d)``
    normalised ``(..., 3, 3)`` (the identity at 0)."""
    quat = torch.cat([torch.ones_like(q[..., :1]), q], dim=-1)
    a, b, c, d = (quat / quat.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c),
        2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b),
        2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d,
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


class InvariantPointAttention(nn.Module):
    """IPA over padded residues: ``h`` ``(B, L, D)``, pair features ``z`` ``(B, L, L, P)``, frames ``rots``
    ``(B, L, 3, 3)``, ``trans`` ``(B, L, 3)`` (the ``trans`` field's units), ``mask`` ``(B, L)`` bool -> update of ``h`` ``(B, L, D)``."""

    def __init__(self, dim: int, pair_dim: int, heads: int, head_dim: int, qk_points: int, v_points: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.qk_points, self.v_points = heads, head_dim, qk_points, v_points
        self.q = nn.Linear(dim, heads * head_dim, bias=False)
        self.kv = nn.Linear(dim, 2 * heads * head_dim, bias=False)
        self.q_points = nn.Linear(dim, heads * qk_points * 3)
        self.kv_points = nn.Linear(dim, heads * (qk_points + v_points) * 3)
        self.pair_bias = nn.Linear(pair_dim, heads, bias=False)
        self.point_weight = nn.Parameter(torch.full((heads,), math.log(math.e - 1)))  # softplus -> 1
        out_dim = heads * (head_dim + pair_dim + v_points * 4)
        self.out = nn.Linear(out_dim, dim)

    def forward(self, h: Tensor, z: Tensor, rots: Tensor, trans: Tensor, mask: Tensor) -> Tensor:
        b, n, _ = h.shape
        hd, pq, pv = self.heads, self.qk_points, self.v_points
        q = self.q(h).view(b, n, hd, -1)
        k, v = self.kv(h).view(b, n, hd, 2, -1).unbind(3)

        def to_global(points: Tensor) -> Tensor:  # (B, L, H, P, 3) local -> global
            return torch.einsum("blij,blhpj->blhpi", rots, points) + trans[:, :, None, None, :]

        q_pts = to_global(self.q_points(h).view(b, n, hd, pq, 3))
        kv_pts = to_global(self.kv_points(h).view(b, n, hd, pq + pv, 3))
        k_pts, v_pts = kv_pts[..., :pq, :], kv_pts[..., pq:, :]
        w_c = math.sqrt(2.0 / (9.0 * pq))
        w_l = math.sqrt(1.0 / 3.0)
        scalar = torch.einsum("bihc,bjhc->bhij", q, k) / math.sqrt(self.head_dim)
        q_flat, k_flat = q_pts.flatten(-2), k_pts.flatten(-2)  # (B, L, H, P * 3)
        dist2 = ((q_flat ** 2).sum(-1).permute(0, 2, 1)[..., :, None] + (k_flat ** 2).sum(-1).permute(0, 2, 1)[..., None, :]
                 - 2 * torch.einsum("bihc,bjhc->bhij", q_flat, k_flat))  # (B, H, L, L)
        gamma = F.softplus(self.point_weight)
        logits = w_l * (scalar + self.pair_bias(z).permute(0, 3, 1, 2)
                        - 0.5 * w_c * gamma[None, :, None, None] * dist2)
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = torch.softmax(logits, dim=-1)  # (B, H, L, L)
        o_scalar = torch.einsum("bhij,bjhc->bihc", attn, v).reshape(b, n, -1)
        o_pair = torch.einsum("bhij,bijp->bihp", attn, z).reshape(b, n, -1)
        o_pts = torch.einsum("bhij,bjhpc->bihpc", attn, v_pts) - trans[:, :, None, None, :]
        o_local = torch.einsum("blji,blhpj->blhpi", rots, o_pts)  # R^T (o - x)
        norms = torch.sqrt((o_local ** 2).sum(-1) + 1e-8)
        return self.out(torch.cat([o_scalar, o_pair, o_local.reshape(b, n, -1), norms.reshape(b, n, -1)], dim=-1))


class IPABlock(nn.Module):
    """IPA, a transition MLP (both residual, layer-normed) and a frame update ``(B, L, 6)`` from the features."""

    def __init__(self, dim: int, pair_dim: int, heads: int, head_dim: int, qk_points: int, v_points: int) -> None:
        super().__init__()
        self.ipa = InvariantPointAttention(dim, pair_dim, heads, head_dim, qk_points, v_points)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.transition = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.update = nn.Linear(dim, 6)
        nn.init.zeros_(self.update.weight)
        nn.init.zeros_(self.update.bias)

    def forward(self, h: Tensor, z: Tensor, rots: Tensor, trans: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.norm1(h + self.ipa(h, z, rots, trans, mask))
        h = self.norm2(h + self.transition(h))
        return h, self.update(h)


@dataclass
class FrameIPAConfig:
    """Settings of :class:`FrameIPANet` (FrameFlow's structure network: hidden 256, 6 blocks, 8 heads; this default
    is CPU-sized). ``trans_scale``: Angstrom per unit of ``trans`` (set by the domain from ``data.trans_scale``).
    ``time_scaled_updates``: scale each layer's translation update by the time input (the raw ``t`` of the
    ``trans`` path; see the module docstring).
    ``rot_output``: see the module docstring (set by the domain from the ``rots`` process)."""

    hidden: int = 64
    n_layers: int = 4
    heads: int = 4
    head_dim: int = 16
    qk_points: int = 4
    v_points: int = 4
    pair_dim: int = 32
    max_relative: int = 32
    distance_bins: int = 16
    max_distance: float = 20.0
    trans_scale: float = 10.0
    rot_output: Literal["rotmat", "rotvec", "igso3_score"] = "rotmat"
    time_scaled_updates: bool = True

    def __post_init__(self) -> None:
        at_least(self, 1, "hidden", "n_layers", "heads", "head_dim", "qk_points", "v_points", "pair_dim", "max_relative")
        at_least(self, 2, "distance_bins")
        finite_positive("max_distance", self.max_distance)
        finite_positive("trans_scale", self.trans_scale)


class FrameIPANet(nn.Module):
    """IPA blocks over residue frames (see the module docstring). ``igso3``: the IGSO(3) process whose normalised
    score ``rot_output="igso3_score"`` returns."""

    def __init__(self, hidden: int = 64, n_layers: int = 4, heads: int = 4, head_dim: int = 16, qk_points: int = 4,
                 v_points: int = 4, pair_dim: int = 32, max_relative: int = 32, distance_bins: int = 16,
                 max_distance: float = 20.0, trans_scale: float = 10.0, rot_output: str = "rotmat",
                 time_scaled_updates: bool = True, igso3: IGSO3Process | None = None) -> None:
        super().__init__()
        if rot_output not in ("rotmat", "rotvec", "igso3_score"):
            raise ValueError(f"rot_output must be rotmat, rotvec or igso3_score, got {rot_output!r}")
        if (rot_output == "igso3_score") != (igso3 is not None):
            raise ValueError("rot_output 'igso3_score' goes with the IGSO(3) process (igso3=...), and only with it")
        self.hidden, self.max_relative, self.trans_scale = hidden, max_relative, float(trans_scale)
        self.rot_output, self.igso3, self.time_scaled_updates = rot_output, igso3, bool(time_scaled_updates)
        self.distance_bins, self.max_distance = distance_bins, float(max_distance)
        self.node_in = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        # the pair input layer on [one-hot relative position, distance RBF, time], as three summed parts (no
        # (B, L, L, features) concatenation): the one-hot's linear map is an embedding lookup
        self.pair_rel = nn.Embedding(2 * max_relative + 2, pair_dim)  # the last class stays free
        self.pair_dist = nn.Linear(distance_bins, pair_dim)
        self.pair_time = nn.Linear(hidden, pair_dim, bias=False)
        self.pair_out = nn.Sequential(nn.ReLU(), nn.Linear(pair_dim, pair_dim))
        self.blocks = nn.ModuleList(IPABlock(hidden, pair_dim, heads, head_dim, qk_points, v_points)
                                    for _ in range(n_layers))

    def _padded(self, index: Tensor, residue_index: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """Row order grouped by sample ``(N,)``, each row's sample and slot in the padding ``(N,)``, the padded residue
        index ``(B, L)`` and the batch size."""
        batch = int(index.max()) + 1 if index.numel() else 0
        order = torch.argsort(index, stable=True)
        counts = torch.bincount(index, minlength=batch)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(index)
        slot[order] = torch.arange(len(index), device=index.device) - starts[index[order]]
        res = slot if residue_index is None else residue_index.to(index.device)
        padded = torch.zeros(batch, int(counts.max()) if batch else 0, dtype=torch.long, device=index.device)
        padded[index, slot] = res.long()
        return order, index, slot, padded, batch

    def forward(self, x: dict[str, Tensor], t: Tensor, cond: dict[str, Tensor] | None = None,
                index: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        trans_in, rots_in = x["trans"], x["rots"]
        idx = (index or {}).get("trans")
        if idx is None:
            idx = torch.zeros(len(trans_in), dtype=torch.long, device=trans_in.device)
        _, sample, slot, resid, batch = self._padded(idx, (cond or {}).get("residue_pos"))
        length = resid.shape[1]
        dtype = trans_in.dtype
        mask = torch.zeros(batch, length, dtype=torch.bool, device=trans_in.device)
        mask[sample, slot] = True
        trans = torch.zeros(batch, length, 3, dtype=dtype, device=trans_in.device)
        trans[sample, slot] = trans_in
        rots = torch.eye(3, dtype=dtype, device=trans_in.device).expand(batch, length, 3, 3).clone()
        rots[sample, slot] = rots_in

        t_emb = sinusoidal_embedding(t, self.hidden).to(dtype)  # (B, D)
        pos_emb = sinusoidal_embedding(resid.reshape(-1).to(dtype), self.hidden, scale=1.0).to(dtype).view(batch, length, -1)
        h = self.node_in(torch.cat([pos_emb, t_emb[:, None].expand(-1, length, -1)], dim=-1))
        rel = (resid[:, None, :] - resid[:, :, None]).clamp(-self.max_relative, self.max_relative) + self.max_relative
        dist = torch.cdist(trans, trans) * self.trans_scale  # Angstrom
        centres = torch.linspace(0.0, self.max_distance, self.distance_bins, dtype=dtype, device=trans.device)
        width = self.max_distance / (self.distance_bins - 1)
        rbf = torch.exp(-(((dist[..., None] - centres) / width) ** 2))
        z = self.pair_out(self.pair_rel(rel) + self.pair_dist(rbf) + self.pair_time(t_emb)[:, None, None])

        step = t.to(dtype).clamp(0.0, 1.0)[:, None, None] if self.time_scaled_updates else 1.0  # (B, 1, 1)
        for block in self.blocks:
            h, update = block(h, z, rots, trans, mask)
            rots_new = rots @ quaternion_update(update[..., :3])
            trans = trans + step * torch.einsum("blij,blj->bli", rots, update[..., 3:])
            rots = rots_new

        trans_out = trans[sample, slot]
        counts = torch.bincount(idx, minlength=batch).clamp_min(1).to(dtype)[:, None]
        shift = (torch.zeros(batch, 3, dtype=dtype, device=trans_out.device).index_add_(0, idx, trans_in - trans_out)
                 / counts)
        rot0 = rots[sample, slot]
        return {"trans": trans_out + shift[idx], "rots": self._rot_readout(rots_in, rot0, t, idx)}

    def _rot_readout(self, rot_t: Tensor, rot0: Tensor, t: Tensor, idx: Tensor) -> Tensor:
        """The ``rots`` output for ``rot_output`` from the noisy ``rot_t`` and predicted clean ``rot0`` ``(N, 3, 3)``."""
        if self.rot_output == "rotmat":
            return rot0
        if self.rot_output == "rotvec":
            return so3_log(rot_t.transpose(-1, -2) @ rot0)
        noise = so3_log(rot0.transpose(-1, -2) @ rot_t)  # the IGSO(3) draw E = R0^T R_t, body frame
        sigma = self.igso3._smooth_sigma(t)
        score = igso3_score(noise, sigma[idx]) / self.igso3.score_scale(t)[idx][:, None]
        return score.to(rot_t.dtype)


@NETS.register("frame_ipa", config=FrameIPAConfig,
               help="invariant point attention over residue frames (proteins; FrameDiff / FrameFlow's structure net)")
def _build_frame_ipa(**kw) -> FrameIPANet:
    return FrameIPANet(**kw)
