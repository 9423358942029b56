"""Networks for 3-D molecules: an E(n)-equivariant GNN as EDM uses it (``egnn``) and an e3nn tensor-product
network (``e3nn_tp``).

Both follow the core's ragged net contract::

    net(x: {field: Tensor}, t: Tensor (B,), cond: {"properties": (B, P)} | None, index={field: (N,)})
        -> {pos_field: (N, 3), <categorical field>: (N, K_field) logits, ...}

A batch holds ``B`` molecules with ``N`` atoms in all; ``index[pos_field]`` gives each atom's molecule (any order;
torch-geometric's ``batch``). Inputs:

* ``x[pos_field]`` ``(N, 3)`` float: positions (the zero-CoM process keeps each molecule's centre at 0, the nets
  do not rely on it: they only see differences of positions);
* ``x[name]`` ``(N,)`` long for every categorical field ``name`` of ``categorical`` (``{name: K}``): classes in
  ``[0, K]``, ``K`` being the categorical process's mask token (so ``K + 1`` input classes, ``K`` output logits);
* ``t`` ``(B,)``: the time input, appended to every atom's features as EDM does (``t[index]``);
* ``cond["properties"]`` ``(B, P)`` when ``num_properties = P > 0``: (normalised) molecular properties,
  concatenated to every atom's features with a *null* indicator (EDM's context). :meth:`drop_condition` marks
  dropped rows by NaN; a NaN row, or ``cond = None``, becomes zeros with the indicator set, so a dropped
  condition differs from a property of 0 and ``cond = None`` is the unconditional model.

Outputs: the position output is an E(3)-equivariant vector per atom (rotates with the input, invariant to
translations; the raw Gaussian prediction, eps / velocity / EDM's ``F``), with the mean of each molecule removed;
the logits are invariant. Edges: every ordered pair of distinct atoms of a molecule
(:func:`fully_connected_edges`); aggregation is pure PyTorch (``index_add_``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciffusion.config import FieldError
from sciffusion.extras import require
from sciffusion.nets.checks import at_least, finite_positive
from sciffusion.processes.base import segment_mean
from sciffusion.registry import NETS

__all__ = ["E3TPNet", "E3TPNetConfig", "EGNN", "EGNNConfig", "EquivariantBlock", "fully_connected_edges"]

DEFAULT_CATEGORICAL = {"types": 5}  # QM9 with hydrogens: H, C, N, O, F
PROPERTIES = "properties"


# ------------------------------------------------------------------------------------------------
# Graph helpers
# ------------------------------------------------------------------------------------------------
def fully_connected_edges(index: Tensor, num_samples: int | None = None) -> Tensor:
    """All ordered pairs ``(i, j)``, ``i != j``, of rows of the same sample: ``(2, E)`` long, ``E = sum n_b (n_b - 1)``.

    ``index`` ``(N,)`` gives each row's sample; it need not be sorted. Vectorised (no loop over samples): row
    ``i`` is repeated ``n_{b(i)}`` times and paired with the members of its sample, then the pairs ``(i, i)``
    are dropped. Edges are grouped by their first row ``i`` (the receiving atom of the nets' messages).
    """
    index = index.long().reshape(-1)
    device = index.device
    n = index.numel()
    if n == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    if num_samples is None:
        num_samples = int(index.max()) + 1
    counts = torch.bincount(index, minlength=num_samples)
    order = torch.argsort(index, stable=True)  # rows grouped by sample
    start = torch.cumsum(counts, 0) - counts  # where each sample's rows begin in `order`
    per_row = counts[index]  # size of each row's sample
    row = torch.repeat_interleave(torch.arange(n, device=device), per_row)
    first = torch.cumsum(per_row, 0) - per_row  # where each row's block of pairs begins
    k = torch.arange(row.numel(), device=device) - torch.repeat_interleave(first, per_row)
    col = order[start[index[row]] + k]
    keep = row != col
    return torch.stack([row[keep], col[keep]])


def _aggregate(values: Tensor, target: Tensor, n: int, method: str, normalization_factor: float) -> Tensor:
    """Sum of ``values`` (E, ...) into ``n`` rows by ``target``: divided by ``normalization_factor`` (``sum``) or
    by each row's number of edges (``mean``)."""
    out = values.new_zeros((n, *values.shape[1:])).index_add_(0, target, values)
    if method == "sum":
        return out / normalization_factor
    counts = torch.bincount(target, minlength=n).clamp_min(1).to(values.dtype)
    return out / counts.reshape(-1, *([1] * (values.dim() - 1)))


def _remove_mean(v: Tensor, index: Tensor, batch: int) -> Tensor:
    return v - segment_mean(v, index, batch)[index]


# ------------------------------------------------------------------------------------------------
# Shared input / conditioning handling
# ------------------------------------------------------------------------------------------------
def _check_common(config: Any) -> None:
    bad = {k: v for k, v in config.categorical.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise FieldError("categorical", f"numbers of classes must be integers >= 1, got {bad}")
    if config.pos_field in config.categorical:
        raise FieldError("categorical", f"names the position field '{config.pos_field}'")
    at_least(config, 0, "num_properties")


class _MoleculeNet(nn.Module):
    """Node features, conditioning and outputs shared by :class:`EGNN` and :class:`E3TPNet`."""

    def __init__(self, categorical: dict[str, int] | None, num_properties: int, pos_field: str) -> None:
        super().__init__()
        self.categorical = dict(DEFAULT_CATEGORICAL if categorical is None else categorical)
        if any(int(k) < 1 for k in self.categorical.values()):
            raise ValueError(f"categorical: numbers of classes must be >= 1, got {self.categorical}")
        if pos_field in self.categorical:
            raise ValueError(f"categorical names the position field '{pos_field}'")
        if num_properties < 0:
            raise ValueError(f"num_properties must be >= 0, got {num_properties}")
        self.num_properties = int(num_properties)
        self.pos_field = pos_field
        # one-hot of every categorical field (K + 1 classes with the mask), time, properties + null indicator
        cond_features = self.num_properties + 1 if self.num_properties else 0
        self.in_features = sum(k + 1 for k in self.categorical.values()) + 1 + cond_features
        self.num_logits = sum(self.categorical.values())

    # -- classifier-free guidance ------------------------------------------------------------------
    def drop_condition(self, cond: dict[str, Tensor], drop: Tensor) -> dict[str, Tensor]:
        """Mark the properties of molecules ``drop (B,)`` as absent (NaN rows; the net reads them as the null
        condition). Other entries of ``cond`` are kept."""
        if cond is None or PROPERTIES not in cond:
            return cond
        out = dict(cond)
        props = cond[PROPERTIES]
        mask = drop.to(props.device).reshape(-1, *([1] * (props.dim() - 1)))
        out[PROPERTIES] = torch.where(mask, torch.full_like(props, float("nan")), props)
        return out

    def _condition(self, cond: dict[str, Tensor] | None, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
        """``(B, P + 1)``: the properties (0 where null) and the null indicator; ``None`` when unconditional."""
        props = None if cond is None else cond.get(PROPERTIES)
        if not self.num_properties:
            if props is not None:
                raise ValueError(f"cond has '{PROPERTIES}' but the network takes none (num_properties = 0)")
            return None
        if props is None:
            return torch.cat([torch.zeros(batch, self.num_properties, dtype=dtype, device=device),
                              torch.ones(batch, 1, dtype=dtype, device=device)], dim=1)
        props = props.to(device=device, dtype=dtype).reshape(props.shape[0], -1)
        if props.shape != (batch, self.num_properties):
            raise ValueError(f"cond['{PROPERTIES}'] has shape {tuple(props.shape)}, the network expects "
                             f"({batch}, {self.num_properties})")
        null = torch.isnan(props).any(dim=1, keepdim=True)
        values = torch.where(null, torch.zeros_like(props), props)
        return torch.cat([values, null.to(dtype)], dim=1)

    def _inputs(self, x: dict[str, Tensor], t: Tensor, cond: dict[str, Tensor] | None,
                index: dict[str, Tensor] | None) -> tuple[Tensor, Tensor, Tensor, int]:
        """``(pos (N, 3), index (N,), node features (N, in_features), B)``."""
        if self.pos_field not in x:
            raise ValueError(f"the network needs the field '{self.pos_field}' (got: {', '.join(x)})")
        if not index or self.pos_field not in index:
            raise ValueError(f"the network takes ragged molecules: index['{self.pos_field}'] (N,) is required")
        pos, idx = x[self.pos_field], index[self.pos_field].long()
        if pos.dim() != 2 or pos.shape[1] != 3 or idx.shape != pos.shape[:1]:
            raise ValueError(f"field '{self.pos_field}' must be (N, 3) with an index (N,), got {tuple(pos.shape)} "
                             f"and {tuple(idx.shape)}")
        dtype, n = pos.dtype, pos.shape[0]
        t = t.to(dtype=dtype, device=pos.device).reshape(-1)
        batch = t.shape[0]
        if batch == 1 and n and int(idx.max()) > 0:  # one time for every molecule
            batch = int(idx.max()) + 1
            t = t.expand(batch)
        feats = []
        for name, k in self.categorical.items():
            if name not in x:
                raise ValueError(f"the network needs the categorical field '{name}' (got: {', '.join(x)})")
            classes = x[name].long().reshape(-1)
            if classes.shape[0] != n:
                raise ValueError(f"field '{name}' has {classes.shape[0]} rows, '{self.pos_field}' has {n}")
            feats.append(F.one_hot(classes, k + 1).to(dtype))  # k: the mask token
        feats.append(t[idx, None])
        c = self._condition(cond, batch, dtype, pos.device)
        if c is not None:
            feats.append(c[idx])
        return pos, idx, torch.cat(feats, dim=1), batch

    def _outputs(self, vel: Tensor, logits: Tensor, idx: Tensor, batch: int) -> dict[str, Tensor]:
        out = {self.pos_field: _remove_mean(vel, idx, batch)}
        for name, part in zip(self.categorical, logits.split(list(self.categorical.values()), dim=1)):
            out[name] = part
        return out


# ------------------------------------------------------------------------------------------------
# EGNN (Satorras et al. 2021) as EDM (Hoogeboom et al. 2022) uses it
# ------------------------------------------------------------------------------------------------
class SinusoidalDistance(nn.Module):
    """EDM's ``sin_embedding`` of a squared distance: ``sin / cos`` of ``d * 2 pi 4^k / 15`` for the frequencies
    spanning resolutions 15 down to 15 / 2000 (6 frequencies, 12 features). Unlike EDM the features are not
    detached, so gradients reach the positions (gradient guidance through the network)."""

    def __init__(self, max_res: float = 15.0, min_res: float = 15.0 / 2000.0, div_factor: float = 4.0) -> None:
        super().__init__()
        n = int(math.log(max_res / min_res, div_factor)) + 1
        self.register_buffer("frequencies", 2 * math.pi * div_factor ** torch.arange(n, dtype=torch.float64) / max_res,
                             persistent=False)
        self.dim = 2 * n

    def forward(self, d2: Tensor) -> Tensor:
        arg = torch.sqrt(d2 + 1e-8) * self.frequencies.to(d2.dtype)
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class GCL(nn.Module):
    """Invariant graph-convolution sublayer: messages ``m_ij = phi_e(h_i, h_j, a_ij)`` (times a sigmoid attention
    ``phi_att(m_ij)`` when ``attention``), aggregated into ``i``; residual node update ``h_i + phi_h(h_i, m_i)``."""

    def __init__(self, hidden: int, edge_dim: int, attention: bool, aggregation: str, normalization_factor: float) -> None:
        super().__init__()
        self.edge_mlp = nn.Sequential(nn.Linear(2 * hidden + edge_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.att_mlp = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid()) if attention else None
        self.aggregation, self.normalization_factor = aggregation, normalization_factor

    def forward(self, h: Tensor, edges: Tensor, edge_attr: Tensor) -> Tensor:
        row, col = edges
        m = self.edge_mlp(torch.cat([h[row], h[col], edge_attr], dim=1))
        if self.att_mlp is not None:
            m = m * self.att_mlp(m)
        agg = _aggregate(m, row, h.shape[0], self.aggregation, self.normalization_factor)
        return h + self.node_mlp(torch.cat([h, agg], dim=1))


class EquivariantUpdate(nn.Module):
    """Coordinate update ``x_i + sum_j (x_i - x_j) / (|x_i - x_j| + c) * phi_x(h_i, h_j, a_ij)``; with ``tanh``
    the scalar is ``coords_range * tanh(phi_x)``. The last layer has no bias and a tiny initialisation (EDM)."""

    def __init__(self, hidden: int, edge_dim: int, tanh: bool, coords_range: float, aggregation: str,
                 normalization_factor: float) -> None:
        super().__init__()
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)
        self.coord_mlp = nn.Sequential(nn.Linear(2 * hidden + edge_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                       nn.SiLU(), last)
        self.tanh, self.coords_range = tanh, coords_range
        self.aggregation, self.normalization_factor = aggregation, normalization_factor

    def forward(self, h: Tensor, pos: Tensor, edges: Tensor, direction: Tensor, edge_attr: Tensor) -> Tensor:
        row, col = edges
        phi = self.coord_mlp(torch.cat([h[row], h[col], edge_attr], dim=1))
        if self.tanh:
            phi = torch.tanh(phi) * self.coords_range
        return pos + _aggregate(direction * phi, row, pos.shape[0], self.aggregation, self.normalization_factor)


class EquivariantBlock(nn.Module):
    """``inv_sublayers`` :class:`GCL` s then one :class:`EquivariantUpdate`. Edge attributes: the squared distance
    at the block's input and at the network's input (each through :class:`SinusoidalDistance` when given)."""

    def __init__(self, hidden: int, edge_dim: int, inv_sublayers: int, attention: bool, tanh: bool, coords_range: float,
                 norm_constant: float, aggregation: str, normalization_factor: float,
                 sin_embedding: SinusoidalDistance | None = None) -> None:
        super().__init__()
        self.gcls = nn.ModuleList(GCL(hidden, edge_dim, attention, aggregation, normalization_factor)
                                  for _ in range(inv_sublayers))
        self.update = EquivariantUpdate(hidden, edge_dim, tanh, coords_range, aggregation, normalization_factor)
        self.norm_constant = norm_constant
        self.sin_embedding = [sin_embedding]  # shared with the EGNN, kept out of this module's children

    def forward(self, h: Tensor, pos: Tensor, edges: Tensor, initial_attr: Tensor) -> tuple[Tensor, Tensor]:
        row, col = edges
        diff = pos[row] - pos[col]
        d2 = (diff ** 2).sum(dim=1, keepdim=True)
        direction = diff / (torch.sqrt(d2 + 1e-8) + self.norm_constant)
        embed = self.sin_embedding[0]
        edge_attr = torch.cat([embed(d2) if embed is not None else d2, initial_attr], dim=1)
        for gcl in self.gcls:
            h = gcl(h, edges, edge_attr)
        return h, self.update(h, pos, edges, direction, edge_attr)


@dataclass
class EGNNConfig:
    """Settings of :class:`EGNN`. EDM's QM9 model: ``hidden=256, n_layers=9, inv_sublayers=1, attention=True,
    tanh=True, coords_range=15, norm_constant=1, normalization_factor=1, aggregation='sum'``; the default here is
    smaller (CPU-friendly)."""

    hidden: int = 128
    n_layers: int = 6
    inv_sublayers: int = 1
    attention: bool = True
    tanh: bool = True
    coords_range: float = 15.0
    norm_constant: float = 1.0
    sin_embedding: bool = False
    normalization_factor: float = 1.0
    aggregation: Literal["sum", "mean"] = "sum"
    categorical: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CATEGORICAL))
    num_properties: int = 0
    pos_field: str = "pos"

    def __post_init__(self) -> None:
        at_least(self, 1, "hidden", "n_layers", "inv_sublayers")
        finite_positive("coords_range", self.coords_range)
        finite_positive("normalization_factor", self.normalization_factor)
        if not (math.isfinite(self.norm_constant) and self.norm_constant >= 0):
            raise FieldError("norm_constant", f"must be a finite number >= 0, got {self.norm_constant}")
        if self.aggregation not in ("sum", "mean"):
            raise FieldError("aggregation", f"must be 'sum' or 'mean', got {self.aggregation!r}")
        _check_common(self)


class EGNN(_MoleculeNet):
    """E(n)-equivariant GNN on fully connected molecules, as EDM's ``EGNN_dynamics_QM9`` + ``EGNN``.

    Node features: one-hot of every categorical field (with its mask token), the time ``t`` and, when
    conditional, the properties with a null indicator; embedded linearly to ``hidden``. ``n_layers``
    :class:`EquivariantBlock` s update the features and the coordinates; the logits are a linear read-out of the
    final features, the position output is the final minus the input coordinates with each molecule's mean
    removed. See the module docstring for the call.

    Args: see :class:`EGNNConfig` (``coords_range`` applies to every block, as EDM's code does).
    """

    def __init__(self, hidden: int = 128, n_layers: int = 6, inv_sublayers: int = 1, attention: bool = True, tanh: bool = True,
                 coords_range: float = 15.0, norm_constant: float = 1.0, sin_embedding: bool = False,
                 normalization_factor: float = 1.0, aggregation: str = "sum", categorical: dict[str, int] | None = None,
                 num_properties: int = 0, pos_field: str = "pos") -> None:
        super().__init__(categorical, num_properties, pos_field)
        if aggregation not in ("sum", "mean"):
            raise ValueError(f"aggregation must be 'sum' or 'mean', got {aggregation!r}")
        self.sin_embedding = SinusoidalDistance() if sin_embedding else None
        edge_dim = 2 * (self.sin_embedding.dim if self.sin_embedding is not None else 1)
        self.embedding = nn.Linear(self.in_features, hidden)
        self.blocks = nn.ModuleList(
            EquivariantBlock(hidden, edge_dim, inv_sublayers, attention, tanh, coords_range, norm_constant, aggregation,
                             normalization_factor, self.sin_embedding) for _ in range(n_layers))
        self.embedding_out = nn.Linear(hidden, max(self.num_logits, 1))

    def encode(self, x: dict[str, Tensor], t: Tensor, cond: dict[str, Tensor] | None = None,
               index: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """The blocks' final invariant features ``h (N, hidden)`` and coordinates ``(N, 3)``, with the input
        positions ``(N, 3)``, each atom's molecule ``(N,)`` and the number of molecules ``B``."""
        pos, idx, feats, batch = self._inputs(x, t, cond, index)
        edges = fully_connected_edges(idx, batch)
        row, col = edges
        d2 = ((pos[row] - pos[col]) ** 2).sum(dim=1, keepdim=True)
        initial_attr = self.sin_embedding(d2) if self.sin_embedding is not None else d2
        h, coords = self.embedding(feats), pos
        for block in self.blocks:
            h, coords = block(h, coords, edges, initial_attr)
        return h, coords, pos, idx, batch

    def forward(self, x: dict[str, Tensor], t: Tensor, cond: dict[str, Tensor] | None = None,
                index: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        h, coords, pos, idx, batch = self.encode(x, t, cond, index)
        return self._outputs(coords - pos, self.embedding_out(h)[:, :self.num_logits], idx, batch)


@NETS.register("egnn", config=EGNNConfig,
               help="E(n)-equivariant GNN (EDM's EGNN_dynamics: fully connected molecules, tanh coordinate updates)")
def _build_egnn(**kw) -> EGNN:
    return EGNN(**kw)


# ------------------------------------------------------------------------------------------------
# e3nn tensor-product network
# ------------------------------------------------------------------------------------------------
def _e3nn() -> Any:
    return require("e3nn.o3", "molecules", "the e3nn_tp network")


def _gaussian_basis(d: Tensor, r_max: float, number: int) -> Tensor:
    """``number`` Gaussians ``exp(-((d - c_k) / w)^2)``, centres ``c_k`` evenly on ``[0, r_max]``, width ``w`` their spacing."""
    centres = torch.linspace(0.0, r_max, number, dtype=d.dtype, device=d.device)
    width = r_max / (number - 1)
    return torch.exp(-(((d[:, None] - centres) / width) ** 2))


class TensorProductLayer(nn.Module):
    """One interaction: messages ``m_ij = TP(h_j, Y(x_j - x_i); w_ij)`` with per-edge weights from an MLP of a
    radial basis of ``|x_j - x_i|`` and the scalars of ``h_i``, ``h_j``; summed into ``i``, mixed with ``h_i`` by
    an equivariant linear map, gated (SiLU scalars, sigmoid-gated vectors) and added to ``h_i``.

    ``tensor_product``: ``uvu`` (one weight per channel and path, the NequIP-style convolution) or
    ``fully_connected`` (:class:`e3nn.o3.FullyConnectedTensorProduct`, all channels mixed; heavier).
    """

    def __init__(self, scalars: int, vectors: int, lmax: int, num_basis: int, radial_hidden: int,
                 normalization_factor: float, tensor_product: str) -> None:
        super().__init__()
        o3 = _e3nn()
        from e3nn.nn import Gate

        self.irreps_node = o3.Irreps(f"{scalars}x0e + {vectors}x1o")
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        allowed = {o3.Irrep("0e"), o3.Irrep("1o")}
        if tensor_product == "uvu":
            mid, instructions = [], []
            for i, (mul, ir_in) in enumerate(self.irreps_node):
                for j, (_, ir_sh) in enumerate(self.irreps_sh):
                    for ir_out in ir_in * ir_sh:
                        if ir_out in allowed:
                            instructions.append((i, j, len(mid), "uvu", True))
                            mid.append((mul, ir_out))
            self.tp = o3.TensorProduct(self.irreps_node, self.irreps_sh, o3.Irreps(mid), instructions,
                                       shared_weights=False, internal_weights=False)
        elif tensor_product == "fully_connected":
            self.tp = o3.FullyConnectedTensorProduct(self.irreps_node, self.irreps_sh, self.irreps_node,
                                                     shared_weights=False, internal_weights=False)
        else:
            raise ValueError(f"tensor_product must be 'uvu' or 'fully_connected', got {tensor_product!r}")
        self.scalars, self.num_basis, self.normalization_factor = scalars, num_basis, normalization_factor
        self.weight_mlp = nn.Sequential(nn.Linear(num_basis + 2 * scalars, radial_hidden), nn.SiLU(),
                                        nn.Linear(radial_hidden, self.tp.weight_numel))
        self.gate = Gate(f"{scalars}x0e", [F.silu], f"{vectors}x0e", [torch.sigmoid], f"{vectors}x1o")
        self.mix = o3.Linear(self.irreps_node + self.tp.irreps_out, self.gate.irreps_in)

    def forward(self, h: Tensor, edges: Tensor, sh: Tensor, radial: Tensor) -> Tensor:
        row, col = edges
        s = h[:, :self.scalars]
        w = self.weight_mlp(torch.cat([radial, s[row], s[col]], dim=1))
        messages = self.tp(h[col], sh, w)
        agg = _aggregate(messages, row, h.shape[0], "sum", self.normalization_factor)
        return h + self.gate(self.mix(torch.cat([h, agg], dim=1)))


@dataclass
class E3TPNetConfig:
    """Settings of :class:`E3TPNet`."""

    scalars: int = 64
    vectors: int = 16
    n_layers: int = 4
    lmax: int = 2
    num_basis: int = 16
    r_max: float = 10.0
    radial_hidden: int = 64
    normalization_factor: float = 4.0
    tensor_product: Literal["uvu", "fully_connected"] = "uvu"
    categorical: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CATEGORICAL))
    num_properties: int = 0
    pos_field: str = "pos"

    def __post_init__(self) -> None:
        at_least(self, 1, "scalars", "vectors", "n_layers", "lmax", "radial_hidden")
        at_least(self, 2, "num_basis")
        finite_positive("r_max", self.r_max)
        finite_positive("normalization_factor", self.normalization_factor)
        if self.tensor_product not in ("uvu", "fully_connected"):
            raise FieldError("tensor_product", f"must be 'uvu' or 'fully_connected', got {self.tensor_product!r}")
        _check_common(self)


class E3TPNet(_MoleculeNet):
    """e3nn tensor-product network on fully connected molecules.

    Node features are ``scalars x 0e + vectors x 1o``; the input features (one-hots, time, properties; see the
    module docstring) set the scalars, the vectors start at zero. Edges carry the spherical harmonics
    ``Y^0..Y^lmax`` of ``x_j - x_i`` and a Gaussian basis of its length on ``[0, r_max]``. After ``n_layers``
    :class:`TensorProductLayer` s, an equivariant linear map to ``1x1o`` gives the position output (each
    molecule's mean removed) and an MLP of the scalars gives the logits.

    Args: see :class:`E3TPNetConfig`.
    """

    def __init__(self, scalars: int = 64, vectors: int = 16, n_layers: int = 4, lmax: int = 2, num_basis: int = 16,
                 r_max: float = 10.0, radial_hidden: int = 64, normalization_factor: float = 4.0, tensor_product: str = "uvu",
                 categorical: dict[str, int] | None = None, num_properties: int = 0, pos_field: str = "pos") -> None:
        super().__init__(categorical, num_properties, pos_field)
        o3 = _e3nn()
        self.lmax, self.num_basis, self.r_max, self.vectors = lmax, num_basis, float(r_max), vectors
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.embedding = nn.Linear(self.in_features, scalars)
        self.layers = nn.ModuleList(TensorProductLayer(scalars, vectors, lmax, num_basis, radial_hidden, normalization_factor,
                                                       tensor_product) for _ in range(n_layers))
        irreps_node = o3.Irreps(f"{scalars}x0e + {vectors}x1o")
        self.vector_out = o3.Linear(irreps_node, o3.Irreps("1x1o"))
        self.scalar_out = nn.Sequential(nn.Linear(scalars, scalars), nn.SiLU(), nn.Linear(scalars, max(self.num_logits, 1)))
        # e3nn's basis of 1o -> Cartesian (x, y, z): a row v of 1o features is v @ basis (identity from e3nn 0.6 on,
        # (y, z, x) before)
        basis = o3.spherical_harmonics(1, torch.eye(3), normalize=False, normalization="component") / math.sqrt(3)
        self.register_buffer("to_xyz", basis.T.contiguous(), persistent=False)

    def forward(self, x: dict[str, Tensor], t: Tensor, cond: dict[str, Tensor] | None = None,
                index: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        o3 = _e3nn()
        pos, idx, feats, batch = self._inputs(x, t, cond, index)
        edges = fully_connected_edges(idx, batch)
        row, col = edges
        vec = pos[col] - pos[row]
        length = torch.sqrt((vec ** 2).sum(dim=1) + 1e-8)
        sh = o3.spherical_harmonics(self.irreps_sh, vec / length[:, None], normalize=False, normalization="component")
        radial = _gaussian_basis(length, self.r_max, self.num_basis)
        s = self.embedding(feats)
        h = torch.cat([s, s.new_zeros(s.shape[0], 3 * self.vectors)], dim=1)
        for layer in self.layers:
            h = layer(h, edges, sh, radial)
        vel = self.vector_out(h) @ self.to_xyz.to(h.dtype)
        logits = self.scalar_out(h[:, :s.shape[1]])[:, :self.num_logits]
        return self._outputs(vel, logits, idx, batch)


@NETS.register("e3nn_tp", config=E3TPNetConfig,
               help="e3nn tensor-product network (0e + 1o node features, spherical-harmonic edges, radial MLP weights)")
def _build_e3nn_tp(**kw) -> E3TPNet:
    return E3TPNet(**kw)
