"""Ragged batches end to end: training loss, CFG, gradient guidance and inpainting on rows with a sample index
equal the same data held densely; zero centre of mass is kept by the noise, the prior and every solver; the
node-budget batch sampler is deterministic and splits steps evenly over ranks."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from _toy_domain import ToyCloudNet  # noqa: E402

from sciffusion.guidance import GradientGuidance, Inpaint
from sciffusion.model import DiffusionModel
from sciffusion.processes import VPProcess, segment_mean
from sciffusion.processes.gaussian import EDMProcess, FlowProcess
from sciffusion.registry import PROCESSES
from sciffusion.reps.graph import ragged_from_sizes
from sciffusion.rng import StepRandom
from sciffusion.sampling import get_solver, solve
from sciffusion.train.batches import NodeBudgetBatchSampler

B, N = 5, 4  # samples, points per sample (dense equivalents)


class _SameNoise(StepRandom):
    """Ragged rows draw exactly what the dense field ``(B, N, 3)`` draws (so the two layouts can be compared)."""

    def randn_rows(self, index, *row_shape, dtype=torch.float32, device="cpu"):
        return self.randn(B, N, *row_shape, dtype=dtype, device=device).reshape(-1, *row_shape)


class _CondCloudNet(ToyCloudNet):
    """:class:`ToyCloudNet` plus a class shift, with ``drop_condition`` for classifier-free guidance."""

    def __init__(self) -> None:
        super().__init__(16)
        self.embed = nn.Embedding(3, 3)

    def drop_condition(self, cond: dict[str, Tensor], drop: Tensor) -> dict[str, Tensor]:
        return {"label": torch.where(drop, torch.full_like(cond["label"], 2), cond["label"])}

    def forward(self, x, t, cond=None, index=None):
        out = super().forward(x, t, cond, index)["pos"]
        shift = self.embed(cond["label"]).to(out.dtype)
        shift = shift[index["pos"]] if index is not None else shift[:, None, :]
        return {"pos": out + shift}


def _processes(zero_com: bool = True) -> dict:
    return {"pos": VPProcess("linear", prediction="eps", zero_com=zero_com)}


def _dense_and_ragged(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    dense = torch.randn(B, N, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return dense, dense.reshape(-1, 3), ragged_from_sizes([N] * B)


def _model(net: nn.Module | None = None, **kw) -> DiffusionModel:
    torch.manual_seed(0)
    return DiffusionModel((net or ToyCloudNet(16)).double(), _processes(), **kw)


def test_ragged_training_loss_equals_dense() -> None:
    model = _model(weighting="min_snr")
    dense, ragged, index = _dense_and_ragged()
    loss_dense = model.training_loss({"fields": {"pos": dense}}, _SameNoise(3, 11))
    loss_ragged = model.training_loss({"fields": {"pos": ragged}, "index": {"pos": index}}, _SameNoise(3, 11))
    torch.testing.assert_close(loss_ragged, loss_dense, rtol=1e-12, atol=1e-12)


def test_ragged_loss_is_a_mean_per_sample_and_ignores_row_order() -> None:
    """Unequal sizes: interleaving the samples' rows (with their index) changes nothing."""
    model = _model()
    sizes = [2, 5, 3]
    index = ragged_from_sizes(sizes)
    pos = torch.randn(sum(sizes), 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    base = model.training_loss({"fields": {"pos": pos}, "index": {"pos": index}}, StepRandom(0, 5))
    # round-robin over the samples; a sample's rows keep their relative order (each sample's stream of draws
    # reaches its rows in order)
    starts = torch.tensor([0, *torch.tensor(sizes).cumsum(0)[:-1].tolist()])
    within = torch.arange(len(pos)) - starts[index]
    shuffled = torch.argsort(within * len(sizes) + index)
    assert not torch.equal(shuffled, torch.arange(len(pos)))
    again = model.training_loss({"fields": {"pos": pos[shuffled]}, "index": {"pos": index[shuffled]}}, StepRandom(0, 5))
    torch.testing.assert_close(again, base, rtol=1e-12, atol=1e-12)


def test_zero_com_loss_counts_the_subspace_dimensions() -> None:
    """A net that always predicts eps = 0 has expected loss E|eps|^2 / dof = 1 per entry once the loss counts
    the (n - 1) d degrees of freedom of a zero-CoM cloud (it would be (n - 1) / n per entry otherwise)."""

    class Zero(nn.Module):
        anchor = nn.Parameter(torch.zeros(()))

        def forward(self, x, t, cond=None, index=None):
            return {"pos": torch.zeros_like(x["pos"])}

    model = DiffusionModel(Zero(), _processes())
    sizes = [2, 3, 4] * 400
    index = ragged_from_sizes(sizes)
    pos = torch.zeros(sum(sizes), 3, dtype=torch.float64)
    loss = model.training_loss({"fields": {"pos": pos}, "index": {"pos": index}}, StepRandom(0, 1))
    assert abs(float(loss) - 1.0) < 0.03, float(loss)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "heun", "ddpm"])
def test_cfg_ragged_equals_dense(solver: str) -> None:
    model = _model(_CondCloudNet(), cond_drop_prob=0.1)
    dense, ragged, index = _dense_and_ragged(3)
    cond = {"label": torch.tensor([0, 1, 0, 1, 1])}
    kw = dict(cond=cond, solver=solver, steps=6, guidance_scale=2.5)
    out_dense = model.sample(x_init={"pos": dense}, generator=torch.Generator().manual_seed(4), **kw)["pos"]
    out_ragged = model.sample(x_init={"pos": ragged}, index={"pos": index}, generator=torch.Generator().manual_seed(4), **kw)["pos"]
    torch.testing.assert_close(out_ragged, out_dense.reshape(-1, 3), rtol=1e-10, atol=1e-10)


def test_gradient_guidance_ragged_equals_dense_and_gets_the_index() -> None:
    model = _model()
    dense, ragged, index = _dense_and_ragged(5)
    target = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    seen: list[bool] = []

    def dense_loss(x0, x_t, t, idx):
        return ((x0["pos"] - target) ** 2).sum(dim=(1, 2))

    def ragged_loss(x0, x_t, t, idx):
        seen.append(torch.equal(idx["pos"], index))
        rows = ((x0["pos"] - target) ** 2).sum(dim=1)
        return torch.zeros(B, dtype=rows.dtype).index_add(0, idx["pos"], rows)

    for through_model in (True, False):
        kw = dict(solver="ddim", steps=5)
        a = model.sample(x_init={"pos": dense}, gradient_guidance=[GradientGuidance(dense_loss, 0.3, through_model=through_model)], **kw)
        b = model.sample(x_init={"pos": ragged}, index={"pos": index},
                         gradient_guidance=[GradientGuidance(ragged_loss, 0.3, through_model=through_model)], **kw)
        torch.testing.assert_close(b["pos"], a["pos"].reshape(-1, 3), rtol=1e-10, atol=1e-10)
    assert seen and all(seen)


@pytest.mark.parametrize("noise_known", [True, False])
def test_inpainting_ragged_equals_dense_and_keeps_rows_exactly(noise_known: bool) -> None:
    model = DiffusionModel(ToyCloudNet(16).double(), _processes(zero_com=False))
    dense, ragged, index = _dense_and_ragged(6)
    known = torch.zeros(B, N, 3, dtype=torch.float64)
    known[:, 0] = torch.tensor([0.5, -0.5, 0.25], dtype=torch.float64)
    mask = torch.zeros(B, N, 1, dtype=torch.bool)
    mask[:, 0] = True
    kw = dict(solver="ddpm", steps=8)
    a = model.sample(x_init={"pos": dense}, constraints=[Inpaint({"pos": known}, {"pos": mask}, noise_known)],
                     generator=torch.Generator().manual_seed(9), **kw)["pos"]
    b = model.sample(x_init={"pos": ragged}, index={"pos": index},
                     constraints=[Inpaint({"pos": known.reshape(-1, 3)}, {"pos": mask.reshape(-1, 1)}, noise_known)],
                     generator=torch.Generator().manual_seed(9), **kw)["pos"]
    torch.testing.assert_close(b, a.reshape(-1, 3), rtol=1e-10, atol=1e-10)
    assert torch.equal(b.reshape(B, N, 3)[:, 0], known[:, 0])


@pytest.mark.parametrize("path", [lambda: VPProcess("cosine", prediction="v", zero_com=True), lambda: EDMProcess(zero_com=True),
                                  lambda: FlowProcess(zero_com=True)], ids=["vp", "edm", "flow"])
def test_zero_com_is_kept_by_noise_prior_and_every_solver(path) -> None:
    process = path()
    sizes = [1, 3, 6, 2]
    index = ragged_from_sizes(sizes)
    pos = torch.randn(sum(sizes), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_t, eps = process.corrupt(pos, torch.full((4,), 0.5, dtype=torch.float64), StepRandom(0, 1), index)
    assert segment_mean(eps, index, 4).abs().max() < 1e-12
    assert segment_mean(x_t, index, 4).abs().max() < 1e-12
    prior = process.prior((sum(sizes), 3), torch.Generator().manual_seed(1), dtype=torch.float64, index=index)
    assert segment_mean(prior, index, 4).abs().max() < 1e-12
    model = DiffusionModel(ToyCloudNet(16).double(), {"pos": process})
    for solver in ("ddpm", "ddim", "dpmpp_2m", "euler", "heun", "euler_maruyama", "pc"):
        assert get_solver(solver).compatible(process)
        out = model.sample({"pos": (sum(sizes), 3)}, index={"pos": index}, solver=solver, steps=4,
                           generator=torch.Generator().manual_seed(2))["pos"]
        assert torch.isfinite(out).all()
        assert segment_mean(out.double(), index, 4).abs().max() < 1e-5, solver


def test_zero_com_registry_entry_builds_each_path_and_rejects_unknown_options() -> None:
    for path in ("vp", "ve", "edm", "flow"):
        process = PROCESSES.build("zero_com", path=path, options={})
        assert process.zero_com and process.name == path
    assert PROCESSES.build("zero_com", path="vp", options={"schedule": "linear"}).num_train_steps == 1000
    with pytest.raises(ValueError, match="unknown option"):
        PROCESSES.build("zero_com", path="edm", options={"schedule": "linear"})


def test_gaussian_field_rejects_integer_classes() -> None:
    model = _model()
    with pytest.raises(ValueError, match="field 'pos'.*floating-point"):
        model.training_loss({"fields": {"pos": torch.zeros(B, N, 3, dtype=torch.long)}}, StepRandom(0, 1))


def test_per_field_solver_choice_and_refusal() -> None:
    process = VPProcess("linear")
    processes = {"a": process, "b": process}

    def denoise(x, t, path=None):
        from sciffusion.processes import Prediction
        return {k: Prediction(x0=torch.zeros_like(v), eps=v) for k, v in x.items()}

    x = {"a": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(3, 2, dtype=torch.float64)}
    both = solve(processes, denoise, dict(x), process.time_grid(4), {"a": "ddim", "b": "heun"})
    assert torch.allclose(both["a"], torch.zeros(3, 2, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="unknown field"):
        solve(processes, denoise, dict(x), process.time_grid(4), {"c": "ddim"})


def test_node_budget_sampler_is_deterministic_within_budget_and_even_over_ranks() -> None:
    sizes = torch.randint(1, 9, (57,), generator=torch.Generator().manual_seed(0)).tolist()
    single = NodeBudgetBatchSampler(sizes, 30, seed=3, first_step=1, last_step=40)
    steps = list(single)
    assert all(sum(sizes[i] for i in batch) <= 30 for batch in steps)
    assert all(len(batch) >= 1 for batch in steps)
    resumed = list(NodeBudgetBatchSampler(sizes, 30, seed=3, first_step=21, last_step=40))
    assert resumed == steps[20:]
    # two ranks: equal shares whose union (in rank order) is the global batch of that step
    ranks = [list(NodeBudgetBatchSampler(sizes, 30, seed=3, first_step=1, last_step=40, rank=r, world=2)) for r in range(2)]
    for step in range(40):
        assert len(ranks[0][step]) == len(ranks[1][step]) >= 1
        both = NodeBudgetBatchSampler(sizes, 30, seed=3, first_step=1, last_step=40, world=2).global_indices(step + 1)
        assert ranks[0][step] + ranks[1][step] == both
    # every item is seen once per epoch (stream order)
    seen = [i for batch in steps for i in batch]
    assert sorted(seen[:len(sizes)]) == list(range(len(sizes)))
    with pytest.raises(ValueError, match="more than the node budget"):
        NodeBudgetBatchSampler([40], 30, 0, 1, 2)


def test_processes_move_with_the_model_and_keep_their_precision() -> None:
    """``model.to(device)`` moves the processes' tables (VP's schedule knots) with the weights; ``model.float()``
    leaves their float64 precision alone."""
    model = DiffusionModel(ToyCloudNet(16), {"pos": VPProcess("cosine", prediction="v")})
    knots = model.processes["pos"]._alpha_knots
    assert knots.dtype == torch.float64
    model.float()
    assert model.processes["pos"]._alpha_knots.dtype == torch.float64
    model.to("meta")
    assert model.processes["pos"]._alpha_knots.device.type == "meta"
    assert model.processes["pos"]._alpha_knots.dtype == torch.float64
