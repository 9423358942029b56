"""A periodic message-passing network for crystals (``crystal_gnn``), after DiffCSP's CSPNet (Jiao et al. 2023).

The core's ragged net contract::

    net(x: {"frac_coords": (N, 3), "lattice": (B, 6)[, "atom_types": (N,)]}, t: (B,),
        cond: {"atom_types": (N,)[, "properties": (B, P)]} | None, index={"frac_coords": (N,)[, "atom_types": (N,)]})
        -> {"frac_coords": (N, 3), "lattice": (B, 6)[, "atom_types": (N, K) logits]}

Atom types are a field (de novo generation: classes ``0..K-1`` plus the categorical process's mask token ``K``)
or, for crystal structure prediction, the clean types given in ``cond["atom_types"]``.

Every crystal is fully connected (all ordered pairs of its atoms, each atom with itself too: a one-atom cell still
sees its lattice). An edge ``i <- j`` carries DiffCSP's inputs: both atoms' features, the lattice (the six
standardised lattice numbers and the six inner products of the cell vectors ``a_k . a_l`` of the cell scaled to
one atom per unit volume) and sin / cos Fourier features ``2 pi m (f_j - f_i)``, ``m = 1..num_freqs``, of the
fractional difference, which are periodic, so the wrapped and unwrapped differences give the same features.
Messages are averaged over each atom's edges (DiffCSP's scatter mean) and update its features residually.

Symmetries (tested in ``tests/test_materials_nets.py``): the lattice field does not depend on the Cartesian frame,
so every output is invariant to rotations of it; only fractional differences enter, so every output is invariant
to a common shift of all fractional coordinates of a crystal; atoms are exchanged only through sums over edges,
so per-atom outputs are equivariant and per-crystal outputs invariant to a permutation of the atoms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sciffusion.nets.checks import at_least
from sciffusion.nets.embeddings import sinusoidal_embedding
from sciffusion.processes.base import segment_mean
from sciffusion.registry import NETS

FRAC, LATTICE, TYPES, PROPERTIES = "frac_coords", "lattice", "atom_types", "properties"


def all_pairs(index: Tensor) -> Tensor:
    """Every ordered pair ``(i, j)`` of rows of the same sample, ``i == j`` included: ``(2, E)`` long,
    ``E = sum n_b^2``; ``index`` ``(N,)`` gives each row's sample (any order)."""
    index = index.long().reshape(-1)
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index)
    starts = torch.cumsum(counts, 0) - counts
    sizes = counts[index[order]]  # (N,) size of each sorted row's sample
    row = torch.repeat_interleave(order, sizes)
    first = starts[index[order]]  # (N,) where each sorted row's sample begins
    offsets = torch.arange(int(sizes.sum()), device=index.device) - torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
    col = order[torch.repeat_interleave(first, sizes) + offsets]
    return torch.stack([row, col])


def gram_features(lattice: Tensor, mean: Tensor, spread: Tensor) -> Tensor:
    """The six inner products ``a_k . a_l`` (k <= l) of the cell vectors of a cell with one atom per unit volume
    (lengths ``exp(log-length feature)``), from the standardised lattice field ``(B, 6)`` -> ``(B, 6)``.
    The raw features are clamped to a sane range so that a noisy lattice gives finite values."""
    raw = lattice * spread + mean
    lengths = torch.exp(raw[:, :3].clamp(-3.0, 3.0))
    angles = torch.deg2rad(59.0 + 62.0 * torch.sigmoid(raw[:, 3:]))
    cos = torch.cos(angles)  # alpha (b, c), beta (a, c), gamma (a, b)
    a, b, c = lengths.unbind(1)
    return torch.stack([a * a, b * b, c * c, b * c * cos[:, 0], a * c * cos[:, 1], a * b * cos[:, 2]], dim=1)


class CrystalLayer(nn.Module):
    """One DiffCSP layer: ``m_ij = MLP([h_i, h_j, lattice_b, fourier(f_j - f_i)])``, mean over ``j``,
    ``h_i += MLP([h_i, mean_j m_ij])`` (pre-LayerNorm)."""

    def __init__(self, hidden: int, lattice_dim: int, fourier_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.edge_mlp = nn.Sequential(nn.Linear(2 * hidden + lattice_dim + fourier_dim, hidden), nn.SiLU(),
                                      nn.Linear(hidden, hidden), nn.SiLU())
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())

    def forward(self, h: Tensor, edges: Tensor, edge_lattice: Tensor, fourier: Tensor) -> Tensor:
        row, col = edges
        x = self.norm(h)
        messages = self.edge_mlp(torch.cat([x[row], x[col], edge_lattice, fourier], dim=1))
        aggregated = segment_mean(messages, row, len(h))
        return h + self.node_mlp(torch.cat([x, aggregated], dim=1))


class CrystalGNN(nn.Module):
    """DiffCSP-style periodic GNN (see the module docstring for the call and its symmetries).

    Args:
        hidden: feature width; n_layers: message-passing layers; num_freqs: Fourier frequencies per coordinate.
        num_types: number of element classes ``K`` (the run's element list).
        generate_types: atom types are a field (de novo) instead of a given condition (structure prediction).
        num_properties: conditioning properties (classifier-free guidance: a NaN row = dropped).
        lattice_mean, lattice_spread: the run's lattice standardisation (to form the inner products).
    """

    def __init__(self, hidden: int = 128, n_layers: int = 4, num_freqs: int = 10, num_types: int = 100,
                 generate_types: bool = False, num_properties: int = 0, lattice_mean: tuple[float, ...] = (0.0,) * 6,
                 lattice_spread: tuple[float, ...] = (1.0,) * 6) -> None:
        super().__init__()
        self.hidden, self.num_freqs, self.num_types = hidden, num_freqs, num_types
        self.generate_types, self.num_properties = generate_types, num_properties
        self.register_buffer("lattice_mean", torch.tensor(lattice_mean, dtype=torch.float32))
        self.register_buffer("lattice_spread", torch.tensor(lattice_spread, dtype=torch.float32))
        self.type_embedding = nn.Embedding(num_types + (1 if generate_types else 0), hidden)
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.property_mlp = (nn.Sequential(nn.Linear(2 * num_properties, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                             if num_properties else None)
        self.node_in = nn.Linear(2 * hidden, hidden)
        fourier_dim = 3 * 2 * num_freqs
        self.layers = nn.ModuleList(CrystalLayer(hidden, 12, fourier_dim) for _ in range(n_layers))
        self.out_norm = nn.LayerNorm(hidden)
        self.coords_out = nn.Linear(hidden, 3, bias=False)
        self.lattice_out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 6))
        self.types_out = nn.Linear(hidden, num_types) if generate_types else None

    def drop_condition(self, cond: dict[str, Tensor], drop: Tensor) -> dict[str, Tensor]:
        """Classifier-free guidance: the properties of the crystals ``drop`` ``(B,)`` become NaN (the null
        condition); given atom types are part of the task, not a guidance condition, and stay."""
        out = dict(cond)
        if PROPERTIES in cond:
            out[PROPERTIES] = torch.where(drop[:, None], torch.full_like(cond[PROPERTIES], float("nan")), cond[PROPERTIES])
        return out

    def fourier(self, diff: Tensor) -> Tensor:
        """``(E, 3)`` fractional differences -> ``(E, 6 num_freqs)`` sin / cos of ``2 pi m diff``."""
        m = torch.arange(1, self.num_freqs + 1, dtype=diff.dtype, device=diff.device)
        angles = 2 * math.pi * diff[:, :, None] * m  # (E, 3, F)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=2).reshape(len(diff), -1)

    def forward(self, x: dict[str, Tensor], t: Tensor, cond: dict[str, Tensor] | None = None,
                index: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        if index is None or FRAC not in index:
            raise ValueError("crystal_gnn needs the ragged index of 'frac_coords'")
        frac, lattice, batch = x[FRAC], x[LATTICE], index[FRAC]
        types = x[TYPES] if self.generate_types else (cond or {}).get(TYPES)
        if types is None:
            raise ValueError("crystal structure prediction needs the atom types in cond['atom_types']")
        n_crystals = lattice.shape[0]
        dtype = frac.dtype
        context = self.time_mlp(sinusoidal_embedding(t, self.hidden).to(dtype))  # (B, hidden)
        if self.property_mlp is not None:
            props = (cond or {}).get(PROPERTIES)
            if props is None:
                props = torch.full((n_crystals, self.num_properties), float("nan"), dtype=dtype, device=frac.device)
            null = torch.isnan(props).any(dim=1, keepdim=True).expand_as(props)
            context = context + self.property_mlp(torch.cat([torch.where(null, 0.0, props), null.to(dtype)], dim=1))
        h = self.node_in(torch.cat([self.type_embedding(types.long()).to(dtype), context[batch]], dim=1))
        edges = all_pairs(batch)
        row, col = edges
        lattice_feats = torch.cat([lattice, gram_features(lattice, self.lattice_mean.to(dtype),
                                                          self.lattice_spread.to(dtype))], dim=1)  # (B, 12)
        edge_lattice = lattice_feats[batch[row]]
        fourier = self.fourier(frac[col] - frac[row])
        for layer in self.layers:
            h = layer(h, edges, edge_lattice, fourier)
        h = self.out_norm(h)
        out = {FRAC: self.coords_out(h), LATTICE: self.lattice_out(segment_mean(h, batch, n_crystals))}
        if self.types_out is not None:
            out[TYPES] = self.types_out(h)
        return out


@dataclass
class CrystalGNNConfig:
    """``net:`` keys of ``crystal_gnn`` (the element count, the task and the lattice standardisation come from the
    data). DiffCSP's Perov-5 net: hidden 512, 6 layers, 128 frequencies; the defaults are a CPU size."""

    hidden: int = 128
    n_layers: int = 4
    num_freqs: int = 10

    def __post_init__(self) -> None:
        at_least(self, 1, "hidden", "n_layers", "num_freqs")


@NETS.register("crystal_gnn", config=CrystalGNNConfig,
               help="periodic GNN for crystals (DiffCSP's CSPNet: Fourier features of fractional differences, lattice "
                    "inner products; invariant to the Cartesian frame and to a common shift)")
def _build_crystal_gnn(**kw) -> CrystalGNN:
    return CrystalGNN(**kw)
