"""A crystal-like toy with three fields on three spaces trains and samples end to end on the shared core: a dense
"lattice" (B, 2) under a VP path, ragged fractional coordinates (N, 3) on the torus, ragged atom types (N,)
under a categorical process. In the data the type fixes where an atom sits (type k at fractional x = (k + 0.5) / 3)
and the lattice's first entry says how many atoms there are; a short training run must learn both couplings."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sciffusion.model import DiffusionModel
from sciffusion.processes import CategoricalProcess, VPProcess, segment_mean
from sciffusion.processes.torus import TorusFlowProcess
from sciffusion.reps.graph import ragged_from_sizes
from sciffusion.rng import StepRandom

K = 3


def _data(batch: int, generator: torch.Generator) -> dict:
    sizes = torch.randint(2, 6, (batch,), generator=generator)
    index = ragged_from_sizes(sizes)
    types = torch.randint(K, (len(index),), generator=generator)
    frac = torch.rand(len(index), 3, generator=generator)
    frac[:, 0] = (types.float() + 0.5) / K + 0.02 * torch.randn(len(index), generator=generator)
    lattice = torch.stack([(sizes.float() - 3.5) / 1.2, 0.3 * torch.randn(batch, generator=generator)], dim=1)
    return {"fields": {"lattice": lattice, "frac": frac % 1.0, "types": types},
            "index": {"frac": index, "types": index}, "num_samples": batch}


class ToyCrystalNet(nn.Module):
    """Rows see their coordinates (as periodic features), type, time, the sample's lattice and the mean of its rows;
    the lattice sees that mean and the number of rows."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(K + 1, 8)  # + the mask token
        self.rows = nn.Sequential(nn.Linear(6 + 8 + 2 + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.row_out = nn.Linear(2 * hidden, 3 + K)
        self.lattice_out = nn.Sequential(nn.Linear(hidden + 2 + 2, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x: dict[str, Tensor], t: Tensor, cond=None, index: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        idx = index["frac"]
        angle = 2 * torch.pi * x["frac"]
        h = self.rows(torch.cat([angle.sin(), angle.cos(), self.embed(x["types"]), x["lattice"][idx], t[idx, None]], dim=1))
        pooled = segment_mean(h, idx, len(t))
        out = self.row_out(torch.cat([h, pooled[idx]], dim=1))
        count = torch.bincount(idx, minlength=len(t)).to(h.dtype)[:, None] / 5
        lattice = self.lattice_out(torch.cat([pooled, count, x["lattice"], t[:, None]], dim=1))
        return {"lattice": lattice, "frac": out[:, :3], "types": out[:, 3:]}


def _model() -> DiffusionModel:
    torch.manual_seed(0)
    processes = {"lattice": VPProcess("cosine", prediction="v"), "frac": TorusFlowProcess(),
                 "types": CategoricalProcess(num_classes=K)}
    return DiffusionModel(ToyCrystalNet(), processes, weights={"types": 0.5})


def _placement_error(model: DiffusionModel, n: int = 64) -> tuple[float, float]:
    """Sample ``n`` toy crystals of 2-5 atoms; mean wrapped distance of x to the type's site, and how far the
    lattice's first entry is from the atom count it should encode."""
    sizes = torch.randint(2, 6, (n,), generator=torch.Generator().manual_seed(1))
    index = ragged_from_sizes(sizes)
    out = model.sample({"lattice": (n, 2), "frac": (len(index), 3), "types": (len(index),)},
                       index={"frac": index, "types": index}, solver={"lattice": "dpmpp_2m", "frac": "euler", "types": "dfm_euler"},
                       steps=25, generator=torch.Generator().manual_seed(2))
    assert out["types"].dtype == torch.long and bool(((out["types"] >= 0) & (out["types"] < K)).all())
    assert bool(((out["frac"] >= 0) & (out["frac"] < 1)).all()) and torch.isfinite(out["lattice"]).all()
    site = (out["types"].float() + 0.5) / K
    wrapped = torch.remainder(out["frac"][:, 0] - site + 0.5, 1.0) - 0.5
    count = out["lattice"][:, 0] * 1.2 + 3.5
    return float(wrapped.abs().mean()), float((count - sizes.float()).abs().mean())


def test_three_fields_on_three_spaces_train_and_sample_end_to_end() -> None:
    model = _model()
    before = _placement_error(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(0)
    losses = []
    for step in range(1, 301):
        loss = model.training_loss(_data(32, data), StepRandom(0, step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    after = _placement_error(model)
    assert sum(losses[-30:]) / 30 < 0.9 * sum(losses[:30]) / 30  # much of the flow's loss is irreducible (1/12 per entry)
    assert after[0] < 0.5 * before[0], (before, after)  # atoms sit at their type's site (uniform: 0.25)
    assert after[1] < 0.6 * before[1], (before, after)  # the lattice knows the atom count


def test_aux_loss_sees_every_fields_clean_estimate_and_adds_its_mean() -> None:
    model = _model()
    batch = _data(6, torch.Generator().manual_seed(3))
    seen: dict = {}

    def aux(x0_hat: dict[str, Tensor], x0: dict[str, Tensor], t: Tensor, index: dict[str, Tensor]) -> Tensor:
        seen.update(x0_hat=x0_hat, t=t)
        return torch.arange(len(t), dtype=torch.float32)  # mean over the 6 samples: 2.5

    plain = model.training_loss(batch, StepRandom(0, 1))
    model.aux_loss = aux
    with_aux = model.training_loss(batch, StepRandom(0, 1))
    assert torch.allclose(with_aux - plain, torch.tensor(2.5), atol=1e-5)
    assert set(seen["x0_hat"]) == {"lattice", "frac", "types"} and seen["t"].shape == (6,)
    assert seen["x0_hat"]["lattice"].shape == (6, 2) and seen["x0_hat"]["frac"].shape == batch["fields"]["frac"].shape
