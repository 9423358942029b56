"""Property models: the regressor's invariance, the training loss on clean and noised molecules, EDM's
property-given-size distribution and "#atoms" baseline on known inputs, and gradient guidance by a regressor."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric")

from sciffusion.domains.molecules.nets import EGNN  # noqa: E402
from sciffusion.domains.molecules.property_models import (  # noqa: E402
    PropertyGivenSize,
    PropertyModel,
    PropertyRegressor,
    atoms_baseline,
    predict_properties,
    regressor_guidance,
)
from sciffusion.processes.categorical import CategoricalProcess  # noqa: E402
from sciffusion.registry import PROCESSES  # noqa: E402
from sciffusion.rng import StepRandom  # noqa: E402


def _processes():
    return {"pos": PROCESSES.build("zero_com", path="flow", options={"prediction": "velocity"}),
            "types": CategoricalProcess(num_classes=5, source="mask")}


def _model(noisy: bool = True, seed: int = 0) -> PropertyModel:
    torch.manual_seed(seed)
    net = EGNN(hidden=16, n_layers=2, categorical={"types": 5})
    return PropertyModel(PropertyRegressor(net, 2), _processes(), ("gap", "mu"), noisy)


def _batch(sizes=(4, 6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    pos = torch.randn(len(idx), 3, generator=g) * 1.5
    types = torch.randint(0, 5, (len(idx),), generator=g)
    return pos, types, idx


def test_regressor_is_invariant_to_rotation_translation_and_permutation() -> None:
    model = _model().double()
    pos, types, idx = _batch()
    pos = pos.double()
    t = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    ref = model({"pos": pos, "types": types}, t, {"pos": idx, "types": idx})
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(2))
    moved = (pos @ q.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))[perm]
    out = model({"pos": moved, "types": types[perm]}, t, {"pos": idx[perm], "types": idx[perm]})
    assert ref.shape == (3, 2)
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-9)


def test_training_loss_is_the_l1_error_on_clean_or_noised_molecules() -> None:
    pos, types, idx = _batch()
    target = torch.tensor([[0.5, -1.0], [0.0, 2.0], [1.0, 1.0]])
    batch = {"fields": {"pos": pos, "types": types}, "index": {"pos": idx, "types": idx},
             "cond": {"properties": target}, "num_samples": 3}
    clean = _model(noisy=False)
    expected = (clean({"pos": pos, "types": types}, torch.zeros(3), batch["index"]) - target).abs().mean()
    torch.testing.assert_close(clean.training_loss(batch, StepRandom(0, 0)), expected)
    noisy = _model(noisy=True)
    a, b = noisy.training_loss(batch, StepRandom(0, 0)), noisy.training_loss(batch, StepRandom(0, 1))
    assert torch.isfinite(a) and a.item() != b.item()  # each step draws its own times and noise
    torch.testing.assert_close(a, noisy.training_loss(batch, StepRandom(0, 0)))  # ... from the step's seed


def test_a_few_steps_fit_a_property_of_the_geometry() -> None:
    """The regressor learns the mean squared distance to the centre (a property a GNN on distances can read)."""
    model = _model(noisy=False)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    pos, types, idx = _batch(sizes=(5,) * 32, seed=3)
    pos = pos * torch.repeat_interleave(torch.linspace(0.5, 2.0, 32), 5)[:, None]
    radius = torch.zeros(32).index_add_(0, idx, (pos**2).sum(1)) / 5
    target = torch.stack([(radius - radius.mean()) / radius.std(), torch.zeros(32)], dim=1)
    batch = {"fields": {"pos": pos, "types": types}, "index": {"pos": idx, "types": idx},
             "cond": {"properties": target}, "num_samples": 32}
    first = model.training_loss(batch, StepRandom(0, 0)).item()
    for step in range(150):
        opt.zero_grad()
        loss = model.training_loss(batch, StepRandom(0, step))
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = model.training_loss(batch, StepRandom(0, 0)).item()
    assert last < 0.3 * first
    molecules = [(pos[idx == i].numpy(), types[idx == i].numpy()) for i in range(32)]
    pred = predict_properties(model, molecules, batch_size=7)  # batched differently, centred: the same values
    np.testing.assert_allclose(np.abs(pred - target.numpy()).mean(), last, atol=1e-5)


def test_property_given_size_draws_inside_each_sizes_bins() -> None:
    sizes = np.array([3, 3, 3, 3, 5, 5])
    values = np.array([0.0, 0.0, 0.0, 1.0, 10.0, 20.0])
    dist = PropertyGivenSize.of(sizes, values, bins=4)
    np.testing.assert_allclose(dist.histograms[3], [0.75, 0.0, 0.0, 0.25])
    np.testing.assert_allclose(dist.histograms[5], [0.5, 0.0, 0.0, 0.5])
    draws = dist.sample(np.array([3] * 4000 + [5] * 4000), np.random.default_rng(0))
    small, large = draws[:4000], draws[4000:]
    assert ((small >= 0) & (small <= 1)).all() and ((large >= 10) & (large <= 20)).all()
    assert abs((small < 0.25).mean() - 0.75) < 0.03  # the first bin, [0, 0.25), carries 3 of 4
    assert not ((small >= 0.25) & (small < 0.75)).any()  # empty bins are never drawn
    with pytest.raises(ValueError, match="no training molecule has 4 atoms"):
        dist.sample(np.array([4]), np.random.default_rng(0))


def test_atoms_baseline_is_the_median_per_atom_count() -> None:
    pred = atoms_baseline(np.array([3, 3, 3, 5, 5]), np.array([1.0, 2.0, 9.0, 4.0, 6.0]), np.array([3, 5, 7]))
    np.testing.assert_allclose(pred, [2.0, 5.0, 4.0])  # 7 atoms: never seen -> the overall median


def test_regressor_guidance_moves_positions_toward_the_target() -> None:
    model = _model(noisy=True)
    pos, types, idx = _batch()
    guide = regressor_guidance(model, {"gap": 3.0}, scale=1.0)
    state, t, index = {"pos": pos, "types": types}, torch.full((3,), 0.5), {"pos": idx, "types": idx}
    before = guide.loss_fn({}, state, t, index)
    x = pos.clone().requires_grad_(True)
    grad, = torch.autograd.grad(guide.loss_fn({}, {"pos": x, "types": types}, t, index).sum(), x)
    after = guide.loss_fn({}, {"pos": pos - 0.05 * grad, "types": types}, t, index)
    assert guide.fields == ["pos"] and guide.through_model
    assert (after < before).all()
    with pytest.raises(ValueError, match="not qed"):
        regressor_guidance(model, {"qed": 0.5}, 1.0)
