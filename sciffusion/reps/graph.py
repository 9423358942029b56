"""Ragged samples (graphs, point clouds, crystals, chains) as torch-geometric batches for the core.

A domain keeps each item as a :class:`torch_geometric.data.Data` (rows of per-node fields, e.g. ``pos`` (n, 3)
and ``atom_types`` (n,); per-item fields with a leading 1, e.g. ``lattice`` (1, 6)). :func:`collate_graphs` is
the trainer's collate: it batches the items with torch-geometric and returns the core's batch dict
(:meth:`sciffusion.model.DiffusionModel.training_loss`), where the node fields are ragged ``(N, ...)`` with
torch-geometric's ``batch`` vector as their index and the per-item fields are dense ``(B, ...)``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor


def collate_graphs(items: Sequence[Any], node_fields: Sequence[str], item_fields: Sequence[str] = (),
                   cond_fields: Sequence[str] = ()) -> dict[str, Any]:
    """torch-geometric ``Data`` items -> ``{"fields", "index", "num_samples"[, "cond"]}``.

    Args:
        items: ``Data`` objects.
        node_fields: attributes with one row per node, ragged in the batch.
        item_fields: attributes with one row per item (``(1, ...)`` each), dense ``(B, ...)`` in the batch.
        cond_fields: per-item conditioning attributes ``(1, ...)`` -> ``cond`` ``(B, ...)``.
    """
    from torch_geometric.data import Batch

    batch = Batch.from_data_list(list(items))
    out: dict[str, Any] = {
        "fields": {name: batch[name] for name in (*node_fields, *item_fields)},
        "index": {name: batch.batch for name in node_fields},
        "num_samples": batch.num_graphs,
    }
    if cond_fields:
        out["cond"] = {name: batch[name] for name in cond_fields}
    return out


def ragged_from_sizes(sizes: Sequence[int] | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """The index ``(sum(sizes),)`` of a ragged field whose sample ``i`` has ``sizes[i]`` rows."""
    sizes = torch.as_tensor(sizes, dtype=torch.long)
    return torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(device)
