"""The molecule networks (``egnn``, ``e3nn_tp``): fully connected edges per molecule; E(3) equivariance of the
position output and invariance of the logits (rotations, translations, permutations within molecules) in float64;
molecules of a batch do not interact; the position output has zero mean per molecule; classifier-free guidance's
dropped condition equals no condition; float32 and float64; registry and config checks; a short training run
through the core lowers the loss. ``-m slow``: default sizes, and the forward + backward time of 64 QM9-sized
molecules."""
from __future__ import annotations

import time
from dataclasses import asdict

import pytest
import torch

from sciffusion.config import FieldError
from sciffusion.domains.molecules.nets import E3TPNet, E3TPNetConfig, EGNN, EGNNConfig, fully_connected_edges
from sciffusion.model import DiffusionModel
from sciffusion.nets.equivariance import assert_equivariant
from sciffusion.processes import CategoricalProcess, EDMProcess, VPProcess, segment_mean
from sciffusion.registry import NETS
from sciffusion.reps.graph import ragged_from_sizes
from sciffusion.rng import StepRandom

SIZES = [3, 5, 9]
K, C = 5, 3  # atom types, charge classes (the inputs also hold the mask tokens K, C)
SMALL = {
    "egnn": dict(hidden=32, n_layers=2),
    "egnn_sin_mean": dict(hidden=24, n_layers=2, inv_sublayers=2, sin_embedding=True, attention=False, aggregation="mean",
                          tanh=False),
    "e3nn_tp": dict(scalars=16, vectors=4, n_layers=2),
    "e3nn_tp_fc": dict(scalars=8, vectors=2, n_layers=2, lmax=1, tensor_product="fully_connected"),
}
NET_OF = {"egnn": "egnn", "egnn_sin_mean": "egnn", "e3nn_tp": "e3nn_tp", "e3nn_tp_fc": "e3nn_tp"}


def _build(variant: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return NETS.build(NET_OF[variant], **{**SMALL[variant], **kw})


def _batch(sizes=SIZES, seed: int = 0, dtype=torch.float64, charges: bool = False) -> tuple[dict, torch.Tensor]:
    """Random zero-CoM positions and random classes, some of them mask tokens."""
    gen = torch.Generator().manual_seed(seed)
    index = ragged_from_sizes(sizes)
    pos = torch.randn(len(index), 3, generator=gen, dtype=torch.float64)
    pos = (pos - segment_mean(pos, index, len(sizes))[index]).to(dtype)
    types = torch.randint(0, K + 1, (len(index),), generator=gen)
    types[::4] = K  # masked
    fields = {"pos": pos, "types": types}
    if charges:
        fields["charges"] = torch.randint(0, C + 1, (len(index),), generator=gen)
    return fields, index


def _call(net, fields, index, t, cond=None):
    return net(fields, t, cond, index={k: index for k in fields})


def test_fully_connected_edges_are_every_ordered_pair_within_a_sample() -> None:
    index = torch.tensor([2, 0, 0, 2, 1, 0, 2, 2, 4])  # unsorted; sample 3 has no rows, sample 4 one
    edges = fully_connected_edges(index, num_samples=5)
    expected = sorted((i, j) for i in range(len(index)) for j in range(len(index)) if i != j and index[i] == index[j])
    assert edges.dtype == torch.long and edges.shape == (2, len(expected))
    assert sorted(map(tuple, edges.T.tolist())) == expected
    assert fully_connected_edges(torch.zeros(0, dtype=torch.long)).shape == (2, 0)
    sizes = torch.tensor([18] * 64)
    assert fully_connected_edges(ragged_from_sizes(sizes)).shape[1] == int((sizes * (sizes - 1)).sum())


@pytest.mark.parametrize("variant", list(SMALL))
def test_equivariance_in_float64(variant: str) -> None:
    """Positions in, an equivariant vector and invariant logits out, types and charges with mask tokens, and a
    property condition."""
    net = _build(variant, categorical={"types": K, "charges": C}, num_properties=2).double()
    fields, index = _batch(charges=True)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    cond = {"properties": torch.randn(3, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)}
    out = _call(net, fields, index, t, cond)
    assert out["pos"].shape == (17, 3) and out["types"].shape == (17, K) and out["charges"].shape == (17, C)
    assert out["pos"].abs().max() > 1e-6  # not trivially equivariant
    with torch.no_grad():
        errors = assert_equivariant(lambda f: _call(net, f, index, t, cond), fields, {"pos": "position"},
                                    {"pos": "vector", "types": "scalar", "charges": "scalar"},
                                    index={k: index for k in fields}, atol=1e-5)
    assert set(errors) == {"rotation", "translation", "permutation"}
    # a reflection: both nets are E(3)-equivariant (the vectors are polar, 1o)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    reflected = _call(net, {**fields, "pos": fields["pos"] @ mirror}, index, t, cond)
    torch.testing.assert_close(reflected["pos"], out["pos"] @ mirror, atol=1e-8, rtol=0)
    torch.testing.assert_close(reflected["types"], out["types"], atol=1e-8, rtol=0)


@pytest.mark.parametrize("variant", ["egnn", "e3nn_tp"])
def test_molecules_do_not_interact_and_the_position_output_has_zero_mean(variant: str) -> None:
    net = _build(variant).double()
    fields, index = _batch()
    t = torch.tensor([0.2, 0.4, 0.7], dtype=torch.float64)
    out = _call(net, fields, index, t)
    assert segment_mean(out["pos"], index, 3).abs().max() < 1e-12
    # change the first molecule's positions, types and time: the others' outputs stay put
    first = index == 0
    changed = {"pos": torch.where(first[:, None], 2.0 * fields["pos"] + 0.3, fields["pos"]),
               "types": torch.where(first, (fields["types"] + 1) % (K + 1), fields["types"])}
    t2 = t.clone()
    t2[0] = 0.95
    again = _call(net, changed, index, t2)
    for name in ("pos", "types"):
        torch.testing.assert_close(again[name][~first], out[name][~first], atol=1e-12, rtol=0)
        assert not torch.allclose(again[name][first], out[name][first])
    # the same molecules alone (batch of one) give the same outputs
    alone_fields, alone_index = {k: v[index == 2] for k, v in fields.items()}, torch.zeros(SIZES[2], dtype=torch.long)
    alone = _call(net, alone_fields, alone_index, t[2:])
    torch.testing.assert_close(alone["pos"], out["pos"][index == 2], atol=1e-10, rtol=0)
    # rows of different molecules interleaved (with their index): the outputs are permuted alike
    perm = torch.randperm(len(index), generator=torch.Generator().manual_seed(5))
    shuffled = _call(net, {k: v[perm] for k, v in fields.items()}, index[perm], t)
    for name in ("pos", "types"):
        torch.testing.assert_close(shuffled[name], out[name][perm], atol=1e-10, rtol=0)


@pytest.mark.parametrize("variant", ["egnn", "e3nn_tp"])
def test_dropped_condition_equals_no_condition(variant: str) -> None:
    net = _build(variant, num_properties=2).double()
    fields, index = _batch()
    t = torch.tensor([0.3, 0.6, 0.8], dtype=torch.float64)
    props = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-0.3, 1.5]], dtype=torch.float64)
    cond = {"properties": props}
    conditional = _call(net, fields, index, t, cond)
    unconditional = _call(net, fields, index, t, None)
    dropped_all = _call(net, fields, index, t, net.drop_condition(cond, torch.ones(3, dtype=torch.bool)))
    for name in ("pos", "types"):
        torch.testing.assert_close(dropped_all[name], unconditional[name], atol=0, rtol=0)
        assert not torch.allclose(conditional[name], unconditional[name])
    # dropping some molecules: exactly those take the unconditional outputs
    drop = torch.tensor([True, False, True])
    dropped = net.drop_condition(cond, drop)
    assert set(dropped) == {"properties"} and dropped["properties"].shape == props.shape
    assert torch.equal(cond["properties"], props)  # not modified in place
    mixed = _call(net, fields, index, t, dropped)
    rows = drop[index]
    for name in ("pos", "types"):
        torch.testing.assert_close(mixed[name][rows], unconditional[name][rows], atol=1e-12, rtol=0)
        torch.testing.assert_close(mixed[name][~rows], conditional[name][~rows], atol=1e-12, rtol=0)
    # a property of 0 is not the null condition
    zeros = _call(net, fields, index, t, {"properties": torch.zeros_like(props)})
    assert not torch.allclose(zeros["pos"], unconditional["pos"])
    with pytest.raises(ValueError, match="expects"):
        _call(net, fields, index, t, {"properties": props[:, :1]})
    with pytest.raises(ValueError, match="takes none"):
        _call(_build(variant).double(), fields, index, t, cond)


@pytest.mark.parametrize("variant", ["egnn", "e3nn_tp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_runs_in_float32_and_float64_with_gradients(variant: str, dtype: torch.dtype) -> None:
    net = _build(variant).to(dtype)
    fields, index = _batch(dtype=dtype)
    fields["pos"].requires_grad_(True)
    out = _call(net, fields, index, torch.rand(3, dtype=dtype))
    assert out["pos"].dtype == dtype and out["types"].dtype == dtype
    assert all(torch.isfinite(v).all() for v in out.values())
    loss = out["pos"].pow(2).sum() + out["types"].pow(2).sum()
    loss.backward()
    assert torch.isfinite(fields["pos"].grad).all() and fields["pos"].grad.abs().max() > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())


def test_registry_configs_and_errors() -> None:
    assert "egnn" in NETS and "e3nn_tp" in NETS
    egnn = NETS.build("egnn", **asdict(EGNNConfig()))
    assert isinstance(egnn, EGNN) and egnn.categorical == {"types": 5} and len(egnn.blocks) == 6
    e3 = NETS.build("e3nn_tp", **asdict(E3TPNetConfig()))
    assert isinstance(e3, E3TPNet) and e3.categorical == {"types": 5}
    assert NETS.get("egnn").config is EGNNConfig and NETS.get("e3nn_tp").config is E3TPNetConfig
    with pytest.raises(FieldError, match="hidden"):
        EGNNConfig(hidden=0)
    with pytest.raises(FieldError, match="aggregation"):
        EGNNConfig(aggregation="max")
    with pytest.raises(FieldError, match="categorical"):
        EGNNConfig(categorical={"types": 0})
    with pytest.raises(FieldError, match="categorical"):
        E3TPNetConfig(categorical={"pos": 3})
    with pytest.raises(FieldError, match="tensor_product"):
        E3TPNetConfig(tensor_product="uuu")
    fields, index = _batch()
    net = _build("egnn").double()
    with pytest.raises(ValueError, match="index"):
        net(fields, torch.rand(3, dtype=torch.float64), None)
    with pytest.raises(ValueError, match="types"):
        net({"pos": fields["pos"]}, torch.rand(3, dtype=torch.float64), None, index={"pos": index})


def _molecules(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sizes = [4, 6, 5, 7, 3, 6]
    index = ragged_from_sizes(sizes)
    pos = torch.randn(len(index), 3, generator=gen)
    types = torch.randint(0, K, (len(index),), generator=gen)
    return {"fields": {"pos": pos, "types": types}, "index": {"pos": index, "types": index}, "num_samples": len(sizes)}


@pytest.mark.parametrize("variant,path", [("egnn", "vp"), ("e3nn_tp", "edm")])
def test_a_few_adam_steps_lower_the_training_loss_through_the_core(variant: str, path: str) -> None:
    pos_process = VPProcess("cosine", prediction="eps", zero_com=True) if path == "vp" else EDMProcess(zero_com=True)
    model = DiffusionModel(_build(variant), {"pos": pos_process, "types": CategoricalProcess(K)})
    batch = _molecules()
    rngs = [StepRandom(0, s) for s in range(4)]  # a fixed batch with fixed times and noise

    def loss() -> torch.Tensor:
        return torch.stack([model.training_loss(batch, rng) for rng in rngs]).mean()

    before = float(loss().detach())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        value = loss()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    after = float(loss().detach())
    print(f"\n{variant} / {path}: training loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before, (before, after)


def test_conditional_sampling_with_guidance_through_the_core() -> None:
    """Classifier-free guidance doubles the batch (the condition and its dropped copy concatenated): the net's
    NaN-marked null condition survives that, and the samples keep zero centre of mass."""
    net = _build("egnn", num_properties=1)
    model = DiffusionModel(net, {"pos": VPProcess("cosine", prediction="eps", zero_com=True), "types": CategoricalProcess(K)},
                           cond_drop_prob=0.2)
    batch = {**_molecules(), "cond": {"properties": torch.randn(6, 1, generator=torch.Generator().manual_seed(1))}}
    assert torch.isfinite(model.training_loss(batch, StepRandom(0, 1)))
    index = ragged_from_sizes([4, 6])
    with torch.no_grad():
        out = model.sample({"pos": (10, 3), "types": (10,)}, index={"pos": index, "types": index},
                           cond={"properties": torch.tensor([[1.0], [-1.0]])}, guidance_scale=2.0,
                           solver={"pos": "ddim", "types": "dfm_euler"}, steps=4, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(out["pos"]).all()  # (an untrained eps-net's x0 estimate near t = 1 is large)
    assert segment_mean(out["pos"], index, 2).abs().max() < 1e-5 * out["pos"].abs().max()
    assert out["types"].dtype == torch.long and bool(((out["types"] >= 0) & (out["types"] < K)).all())


# ------------------------------------------------------------------------------------------------
# slow: default sizes
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["egnn", "e3nn_tp"])
def test_default_size_equivariance(name: str) -> None:
    torch.manual_seed(0)
    net = NETS.build(name).double()
    fields, index = _batch(sizes=[9, 18, 29])
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    with torch.no_grad():
        assert_equivariant(lambda f: _call(net, f, index, t), fields, {"pos": "position"}, {"pos": "vector", "types": "scalar"},
                           index={k: index for k in fields}, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["egnn", "e3nn_tp"])
def test_forward_backward_time_of_64_qm9_sized_molecules(name: str) -> None:
    torch.manual_seed(0)
    net = NETS.build(name)
    fields, index = _batch(sizes=[18] * 64, dtype=torch.float32)
    t = torch.rand(64)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        out = _call(net, fields, index, t)
        (out["pos"].pow(2).mean() + out["types"].logsumexp(1).mean()).backward()
        times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in net.parameters())
    print(f"\n{name}: {params} parameters, forward + backward of 64 x 18 atoms "
          f"({fully_connected_edges(index).shape[1]} edges): best {min(times):.3f} s of {[round(x, 3) for x in times]}")
    assert min(times) < 60
