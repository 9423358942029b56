"""Property models of 3-D molecules, and the pieces of EDM's conditional protocol (Hoogeboom et al. 2022).

* :class:`PropertyRegressor`: an invariant network ``f(x_t, t) -> (B, P)`` (normalised properties): the EGNN's
  blocks, a per-atom MLP, a sum over each molecule's atoms and a per-molecule MLP, as EDM's property classifier
  (``qm9/property_prediction/models_property.py``) reads out. EDM's classifier updates no coordinates; ours
  reuses the generator's :class:`~sciffusion.domains.molecules.nets.EGNN` blocks, whose features stay invariant.
* :class:`PropertyModel`: what ``sciffusion train`` trains for ``task.kind: property``: EDM's L1 loss on the
  normalised property, on clean molecules (``noisy: false``, EDM's classifier) or on molecules corrupted by the
  config's processes at uniform times (``noisy: true``: a noise-aware regressor for gradient guidance of an
  unconditional generator trained with the same processes).
* :func:`regressor_guidance`: the core's :class:`~sciffusion.guidance.gradient.GradientGuidance` toward target
  properties with such a regressor (the gradient of ``0.5 |f(x_t, t) - y|^2`` with respect to the positions).
* :class:`PropertyGivenSize`: EDM's ``DistributionProperty``, the property drawn given the atom count, and
  :func:`atoms_baseline`, the "#atoms" predictor (the property from the atom count alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sciffusion.domains.molecules.nets import EGNN
from sciffusion.guidance.gradient import GradientGuidance
from sciffusion.model import Index, ProcessTable, State, network_inputs
from sciffusion.processes import Process
from sciffusion.rng import StepRandom

__all__ = ["PropertyGivenSize", "PropertyModel", "PropertyRegressor", "atoms_baseline", "regressor_guidance"]


class PropertyRegressor(nn.Module):
    """Invariant regressor ``(x: {field: Tensor}, t: (B,), index: {field: (N,)}) -> (B, num_outputs)``.

    ``backbone`` is an :class:`EGNN` (its categorical fields and time input as for the generator; no
    properties); its final features ``h (N, hidden)`` go through ``Linear-SiLU-Linear`` per atom, are summed per
    molecule, and go through ``Linear-SiLU-Linear`` to the outputs.
    """

    def __init__(self, backbone: EGNN, num_outputs: int) -> None:
        super().__init__()
        if not isinstance(backbone, EGNN):
            raise ValueError(f"a property model needs the egnn network, got {type(backbone).__name__}")
        if backbone.num_properties:
            raise ValueError("the regressor's backbone takes no properties as input (num_properties = 0)")
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        hidden = backbone.embedding.out_features
        self.backbone = backbone
        self.node_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.graph_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, num_outputs))

    def forward(self, x: dict[str, Tensor], t: Tensor, index: dict[str, Tensor]) -> Tensor:
        h, _, _, idx, batch = self.backbone.encode(x, t, None, index)
        nodes = self.node_head(h)
        pooled = torch.zeros(batch, nodes.shape[1], dtype=nodes.dtype, device=nodes.device).index_add_(0, idx, nodes)
        return self.graph_head(pooled)


class PropertyModel(nn.Module):
    """A property regressor trained by the core trainer (``training_loss``), on clean or noised molecules.

    Args:
        regressor: the network.
        processes: the fields' processes (those of the generator it will guide, for ``noisy``).
        properties: the names of the outputs, in order (the batch's ``cond["properties"]`` columns, normalised).
        noisy: train on ``x_t`` at uniform times (else on clean molecules at ``t = 0``).
    """

    def __init__(self, regressor: PropertyRegressor, processes: dict[str, Process], properties: tuple[str, ...],
                 noisy: bool) -> None:
        super().__init__()
        self.regressor = regressor
        self._processes = ProcessTable(processes)
        self.properties = tuple(properties)
        self.noisy = bool(noisy)

    @property
    def processes(self) -> dict[str, Process]:
        return self._processes.by_name

    def forward(self, x_t: State, t: Tensor, index: Index) -> Tensor:
        """Normalised properties ``(B, P)`` of the noisy state ``x_t`` at times ``t`` ``(B,)`` (raw state, as the
        sampler holds it; each process's network input is applied here)."""
        inputs, t_in = network_inputs(self.processes, x_t, t, index)
        return self.regressor(inputs, t_in, index)

    def training_loss(self, batch: dict[str, Any], rng: StepRandom) -> Tensor:
        """Mean absolute error (EDM's ``L1Loss``) on the normalised properties of one batch."""
        x0: State = batch["fields"]
        index: Index = batch["index"]
        target = batch["cond"]["properties"]
        n = int(batch["num_samples"])
        device = target.device
        if self.noisy:
            time_process = next(iter(self.processes.values()))
            t = time_process.sample_time(n, rng).to(device)
            x = {name: proc.corrupt(x0[name], t, rng.fork(i), index.get(name))[0]
                 for i, (name, proc) in enumerate(self.processes.items())}
        else:
            t, x = torch.zeros(n, device=device), x0
        return (self(x, t, index) - target).abs().mean()


def regressor_guidance(model: PropertyModel, targets: dict[str, float], scale: float) -> GradientGuidance:
    """Gradient guidance toward ``targets`` (normalised values by property name; a subset of the model's
    properties): the loss ``0.5 sum_p (f_p(x_t, t) - y_p)^2`` per molecule, differentiated with respect to the
    positions at the current state (classifier guidance with a Gaussian likelihood of unit width in normalised
    units; ``scale`` is its inverse temperature)."""
    unknown = sorted(set(targets) - set(model.properties))
    if unknown:
        raise ValueError(f"the property model predicts {', '.join(model.properties)}, not {', '.join(unknown)}")
    columns = [model.properties.index(name) for name in targets]
    values = torch.tensor(list(targets.values()), dtype=torch.float32)

    def loss(x0_hat: State, x_t: State, t: Tensor, index: Index) -> Tensor:
        pred = model(x_t, t, index)[:, columns]
        return 0.5 * ((pred - values.to(pred)) ** 2).sum(dim=1)

    return GradientGuidance(loss, scale=scale, fields=["pos"], through_model=True)


@torch.no_grad()
def predict_properties(model: PropertyModel, molecules: list[tuple[np.ndarray, np.ndarray]], batch_size: int = 256) -> np.ndarray:
    """Normalised properties ``(M, P)`` of clean molecules ``[(positions (n, 3), types (n,)), ...]`` at ``t = 0``
    (positions centred per molecule, as in training)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(molecules), batch_size):
        chunk = molecules[start:start + batch_size]
        sizes = torch.tensor([len(types) for _, types in chunk])
        idx = torch.repeat_interleave(torch.arange(len(chunk)), sizes).to(device)
        pos = torch.cat([torch.as_tensor(p - p.mean(axis=0), dtype=torch.float32) for p, _ in chunk]).to(device)
        types = torch.cat([torch.as_tensor(np.asarray(t), dtype=torch.long) for _, t in chunk]).to(device)
        fields = {"pos": pos, "types": types}
        x = {name: fields[name] for name in model.processes}
        out.append(model(x, torch.zeros(len(chunk), device=device), {name: idx for name in x}).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.properties)), dtype=np.float32)


@dataclass(frozen=True)
class PropertyGivenSize:
    """EDM's ``DistributionProperty`` for one property: for each atom count seen in the data, a histogram of the
    values in ``bins`` equal bins over ``[min, max]``; a draw picks a bin by its frequency and a value uniformly
    inside it.

    ``histograms[n]`` ``(bins,)`` float64 probabilities and ``ranges[n] = (min, max)`` per atom count ``n``.
    """

    histograms: dict[int, np.ndarray]
    ranges: dict[int, tuple[float, float]]

    @classmethod
    def of(cls, sizes: np.ndarray, values: np.ndarray, bins: int = 1000) -> "PropertyGivenSize":
        sizes, values = np.asarray(sizes), np.asarray(values, dtype=np.float64)
        histograms, ranges = {}, {}
        for n in np.unique(sizes):
            v = values[sizes == n]
            low, high = float(v.min()), float(v.max())
            where = np.minimum(((v - low) / (high - low + 1e-12) * bins).astype(np.int64), bins - 1)
            counts = np.bincount(where, minlength=bins).astype(np.float64)
            histograms[int(n)], ranges[int(n)] = counts / counts.sum(), (low, high)
        return cls(histograms, ranges)

    def sample(self, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One value per atom count in ``sizes`` ``(M,)`` -> ``(M,)`` float64."""
        out = np.empty(len(sizes), dtype=np.float64)
        for i, n in enumerate(np.asarray(sizes)):
            if int(n) not in self.histograms:
                raise ValueError(f"no training molecule has {int(n)} atoms: the property cannot be drawn given it")
            probs, (low, high) = self.histograms[int(n)], self.ranges[int(n)]
            k = rng.choice(len(probs), p=probs)
            width = (high - low) / len(probs)
            out[i] = low + (k + rng.random()) * width
        return out


def atoms_baseline(train_sizes: np.ndarray, train_values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """EDM's "#atoms" baseline: the property predicted from the atom count alone, as the L1-optimal predictor
    (the median of the training values with that count; the overall median for a count never seen) ``(M,)``."""
    train_sizes, train_values = np.asarray(train_sizes), np.asarray(train_values, dtype=np.float64)
    overall = float(np.median(train_values))
    medians = {int(n): float(np.median(train_values[train_sizes == n])) for n in np.unique(train_sizes)}
    return np.array([medians.get(int(n), overall) for n in np.asarray(sizes)], dtype=np.float64)
