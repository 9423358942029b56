"""The ``molecule`` representation: a 3-D molecular graph as the core's ragged fields.

One molecule of ``n`` atoms is a torch-geometric ``Data`` with

* ``pos`` ``(n, 3)`` float32, Angstrom, centre of mass (of the atom positions, unweighted, as EDM) at the origin;
* ``types`` ``(n,)`` long, indices into the element decoder (QM9: ``H, C, N, O, F``);
* ``charges`` ``(n,)`` long (optional), formal charge classes: index ``c`` is the charge ``CHARGES[c]``;
* ``properties`` ``(1, P)`` float32 (optional), the conditioning properties normalised as EDM does
  (``(value - mean) / mad``, mean and mean absolute deviation over the training molecules).

In a batch (:func:`sciffusion.reps.graph.collate_graphs`) ``pos``, ``types`` and ``charges`` are ragged with
torch-geometric's ``batch`` vector as their index, and ``properties`` is the ``cond`` ``{"properties": (B, P)}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from sciffusion.domains.molecules.qm9 import MoleculeTable
from sciffusion.reps.graph import collate_graphs

CHARGES: tuple[int, ...] = (-1, 0, 1)  # formal charge of each charge class


@dataclass(frozen=True)
class PropertyNorm:
    """EDM's normalisation of one conditioning property: ``(value - mean) / mad``."""

    mean: float
    mad: float

    @classmethod
    def of(cls, values: np.ndarray) -> "PropertyNorm":
        mean = float(np.mean(values))
        return cls(mean, float(np.mean(np.abs(values - mean))))

    def normalise(self, values: np.ndarray | torch.Tensor) -> Any:
        return (values - self.mean) / self.mad

    def denormalise(self, values: np.ndarray | torch.Tensor) -> Any:
        return values * self.mad + self.mean


def charge_classes(charges: np.ndarray) -> np.ndarray:
    """Formal charges ``(n,)`` -> charge classes (a charge outside :data:`CHARGES` is a ``ValueError``)."""
    lookup = {c: i for i, c in enumerate(CHARGES)}
    try:
        return np.array([lookup[int(c)] for c in charges], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"formal charge {e.args[0]} is not one of {CHARGES}") from None


class MoleculeDataset(torch.utils.data.Dataset):
    """Items of a :class:`~sciffusion.domains.molecules.qm9.MoleculeTable` as ``molecule`` graphs.

    Args:
        table: the molecules.
        with_charges: add the ``charges`` field.
        properties: names of the conditioning properties (columns of ``table.properties``).
        norms: their normalisation (default: computed on ``table``).
    """

    def __init__(self, table: MoleculeTable, with_charges: bool = False, properties: tuple[str, ...] = (),
                 norms: dict[str, PropertyNorm] | None = None) -> None:
        unknown = sorted(set(properties) - set(table.properties))
        if unknown:
            raise ValueError(f"unknown propert{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)} "
                             f"(known: {', '.join(table.properties)})")
        self.table, self.with_charges, self.properties = table, with_charges, tuple(properties)
        self.norms = norms if norms is not None else {p: PropertyNorm.of(table.properties[p]) for p in properties}
        self.sizes = table.sizes.tolist()
        self.charge_classes = charge_classes(table.charges) if with_charges else None
        self.normalised = (np.stack([self.norms[p].normalise(table.properties[p]) for p in properties], axis=1)
                           .astype(np.float32) if properties else None)

    @property
    def node_fields(self) -> list[str]:
        return ["pos", "types", *(["charges"] if self.with_charges else [])]

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> Any:
        from torch_geometric.data import Data

        lo, hi = int(self.table.offsets[i]), int(self.table.offsets[i + 1])
        pos = torch.from_numpy(self.table.positions[lo:hi].astype(np.float32))
        item = Data(pos=pos - pos.mean(dim=0, keepdim=True), types=torch.from_numpy(self.table.types[lo:hi]),
                    num_nodes=hi - lo)
        if self.charge_classes is not None:
            item.charges = torch.from_numpy(self.charge_classes[lo:hi])
        if self.normalised is not None:
            item.properties = torch.from_numpy(self.normalised[i:i + 1])
        return item

    def collate(self) -> Any:
        """The trainer's collate for these items."""
        return partial(collate_graphs, node_fields=self.node_fields,
                       cond_fields=("properties",) if self.properties else ())


def size_histogram(sizes: np.ndarray | list[int]) -> np.ndarray:
    """Counts of molecules per atom count ``(max_size + 1,)`` (EDM's ``DistributionNodes`` draws from it)."""
    return np.bincount(np.asarray(sizes, dtype=np.int64))


def draw_sizes(histogram: np.ndarray, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` atom counts drawn from the training histogram ``(max_size + 1,)``: long ``(n,)``."""
    probs = torch.as_tensor(histogram, dtype=torch.float64)
    return torch.multinomial(probs / probs.sum(), n, replacement=True, generator=generator)
