"""Tiny test-only domains: noisy 2-D linear regression with a small MLP (``toy``), and ragged 3-D point
clouds of 2-6 points under a zero-CoM process (``toy_cloud``), batched by torch-geometric.

Importing this module registers domains ``toy`` and ``toy_cloud`` and nets ``_toy_mlp`` and ``_toy_cloud_net``.
Run as a script it is the ``sciffusion`` CLI with the toy domains available (used by the SIGKILL and torchrun
tests):

    python tests/_toy_domain.py train CONFIG [KEY=VALUE ...] [--resume]
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from sciffusion.config import Config, FieldError
from sciffusion.domain import Domain, Run, TrainSetup
from sciffusion.registry import DOMAINS, NETS
from sciffusion.rng import StepRandom


@dataclass
class ToyData:
    """``n`` points ``x ~ N(0, I_dim)`` with targets ``y = x @ w + noise * eps`` (fixed seed)."""

    n: int = 64
    dim: int = 2
    noise: float = 0.1
    step_sleep: float = 0.0  # seconds slept per training step (lets a test kill a run mid-way)
    nan_at_step: int | None = None  # training_loss returns NaN at this step

    def __post_init__(self) -> None:
        if self.n < 1:
            raise FieldError("n", f"must be >= 1, got {self.n}")


@dataclass
class ToyNet:
    hidden: int = 16
    dropout: float = 0.0


class ToyMLP(nn.Module):
    """``(x, t) -> y``: input ``(B, dim + 1)``, output ``(B, 1)``."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], dim=1))


if "_toy_mlp" not in NETS:
    NETS.register("_toy_mlp", config=ToyNet, help="test-only MLP")(lambda hidden, dropout, dim: ToyMLP(dim, hidden, dropout))


class ToyModel(nn.Module):
    """Regresses ``y + 0.1 * t * noise`` from ``(x with condition dropout, t)``; all draws from ``rng``."""

    def __init__(self, net: nn.Module, cond_drop_prob: float, step_sleep: float = 0.0, nan_at_step: int | None = None) -> None:
        super().__init__()
        self.net, self.cond_drop_prob = net, cond_drop_prob
        self.step_sleep, self.nan_at_step = step_sleep, nan_at_step

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)

    def training_loss(self, batch: dict[str, torch.Tensor], rng: StepRandom) -> torch.Tensor:
        x, y = batch["x"], batch["y"]
        b = x.shape[0]
        t = rng.rand(b)
        noise = rng.randn(b, 1)
        keep = (rng.rand(b, 1) >= self.cond_drop_prob).to(x.dtype)
        loss = ((self(x * keep, t) - (y + 0.1 * t[:, None] * noise)) ** 2).mean()
        if self.step_sleep:
            time.sleep(self.step_sleep)
        if self.nan_at_step is not None and rng.step == self.nan_at_step:
            loss = loss * float("nan")
        return loss


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, data: ToyData) -> None:
        gen = torch.Generator().manual_seed(1234)
        self.x = torch.randn(data.n, data.dim, generator=gen)
        w = torch.linspace(-1.0, 1.0, data.dim)[:, None]
        self.y = self.x @ w + data.noise * torch.randn(data.n, 1, generator=gen)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def _write_hook(model: nn.Module, step: int, out: Path) -> None:
    with torch.no_grad():
        pred = model(torch.ones(1, model.net.net[0].in_features - 1), torch.zeros(1))
    (out / f"step_{step:06d}.txt").write_text(f"{pred.item():.6f}\n")


@dataclass
class ToyReport:
    """An extra config section (exercises ``Domain.extra_sections``)."""

    label: str = "toy"


class ToyDomain(Domain):
    """Test-only domain (see the module docstring)."""

    name = "toy"
    data_config = ToyData
    extra_sections = {"report": ToyReport}

    def build_model(self, cfg: Config) -> nn.Module:
        if cfg.net is None:
            raise ValueError("the toy domain needs a `net:` section")
        net = cfg.net.build(dim=cfg.data.dim)
        return ToyModel(net, cfg.loss.cond_drop_prob, cfg.data.step_sleep, cfg.data.nan_at_step)

    def setup(self, cfg: Config) -> TrainSetup:
        return TrainSetup(model=self.build_model(cfg), dataset=ToyDataset(cfg.data), sample_hook=_write_hook)

    def sample(self, run: Run, args: argparse.Namespace) -> None:
        settings = run.sample_config(args)
        gen = torch.Generator().manual_seed(settings.seed)
        x = torch.randn(settings.n, run.config.data.dim, generator=gen)
        with torch.no_grad():
            y = run.model(x, torch.zeros(settings.n))
        out = run.output_dir(args)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "samples.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([f"x{i}" for i in range(x.shape[1])] + ["y"])
            writer.writerows(torch.cat([x, y], dim=1).tolist())

    def evaluate(self, run: Run, args: argparse.Namespace) -> dict[str, Any]:
        data = ToyDataset(run.config.data)
        with torch.no_grad():
            mse = ((run.model(data.x, torch.zeros(len(data))) - data.y) ** 2).mean().item()
        return {"mse": mse, "step": run.step, "label": run.config.extra["report"].label}

    def design(self, run: Run, args: argparse.Namespace, targets: dict[str, float]) -> None:
        """Keeps the sampled inputs whose prediction is nearest each target ``y`` (the only property)."""
        from sciffusion.domain import DomainError

        unknown = sorted(set(targets) - {"y"})
        if unknown:
            raise DomainError(f"unknown property {', '.join(unknown)} for domain 'toy' (known: y)")
        settings = run.sample_config(args)
        x = torch.randn(max(64, settings.n), run.config.data.dim, generator=torch.Generator().manual_seed(settings.seed))
        with torch.no_grad():
            y = run.model(x, torch.zeros(len(x)))[:, 0]
        best = (y - targets["y"]).abs().argsort()[:settings.n]
        out = run.output_dir(args, "designs")
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "designs.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([f"x{i}" for i in range(x.shape[1])] + ["y"])
            writer.writerows(torch.cat([x[best], y[best, None]], dim=1).tolist())

    def add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        p = subparsers.add_parser("toy-info", help="print a toy run's step")
        p.add_argument("run_dir")
        p.set_defaults(func=_toy_info)


def _toy_info(args: argparse.Namespace) -> int:
    from sciffusion.domain import load_run

    print(f"toy run at step {load_run(args.run_dir, device='cpu').step}")
    return 0


if "toy" not in DOMAINS:
    DOMAINS.register("toy", help="test-only 2-D regression")(ToyDomain)


@dataclass
class ToyCloudData:
    """``n`` clouds of ``min_points..max_points`` points around a fixed 3-D template (fixed seed).
    ``max_nodes`` > 0 batches by a node budget instead of ``trainer.batch_size``, ``multiple`` clouds at a time."""

    n: int = 48
    min_points: int = 2
    max_points: int = 6
    max_nodes: int = 0
    multiple: int = 1


@dataclass
class ToyCloudNetConfig:
    hidden: int = 16


class ToyCloudNet(nn.Module):
    """A translation-invariant row-wise net with one round of per-sample mean pooling:
    ``out_r = MLP([x_r - mean of the sample's rows, |that mean|, t of the sample])`` (ragged: needs ``index``)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(5, hidden), nn.Tanh(), nn.Linear(hidden, 3))

    def forward(self, x: dict[str, torch.Tensor], t: torch.Tensor, cond: Any = None,
                index: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        from sciffusion.processes import segment_mean

        pos = x["pos"]
        if index is None:  # dense (B, n, 3)
            pooled = pos.mean(dim=1, keepdim=True).expand_as(pos)
            t_rows = t[:, None, None].expand(*pos.shape[:2], 1)
        else:
            idx = index["pos"]
            pooled = segment_mean(pos, idx, len(t))[idx]
            t_rows = t[idx][:, None]
        return {"pos": self.mlp(torch.cat([pos - pooled, pooled.norm(dim=-1, keepdim=True), t_rows], dim=-1))}


if "_toy_cloud_net" not in NETS:
    NETS.register("_toy_cloud_net", config=ToyCloudNetConfig, help="test-only ragged point-cloud net")(ToyCloudNet)


class ToyCloudDataset(torch.utils.data.Dataset):
    def __init__(self, data: ToyCloudData) -> None:
        from torch_geometric.data import Data

        gen = torch.Generator().manual_seed(4321)
        template = torch.randn(data.max_points, 3, generator=gen)
        sizes = torch.randint(data.min_points, data.max_points + 1, (data.n,), generator=gen).tolist()
        self.items = []
        for size in sizes:
            pos = template[:size] + 0.1 * torch.randn(size, 3, generator=gen)
            self.items.append(Data(pos=pos - pos.mean(dim=0, keepdim=True), num_nodes=size))
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class ToyCloudDomain(Domain):
    """Test-only ragged domain (see the module docstring)."""

    name = "toy_cloud"
    data_config = ToyCloudData

    def build_model(self, cfg: Config) -> nn.Module:
        from sciffusion.model import diffusion_model_from_config

        return diffusion_model_from_config(cfg.net.build(), {"pos": cfg.process.build()}, cfg.loss)

    def setup(self, cfg: Config) -> TrainSetup:
        from functools import partial

        from sciffusion.reps.graph import collate_graphs
        from sciffusion.train.batches import NodeBudgetBatchSampler

        dataset = ToyCloudDataset(cfg.data)

        def node_budget(first_step: int, last_step: int, rank: int, world: int) -> NodeBudgetBatchSampler:
            return NodeBudgetBatchSampler(dataset.sizes, cfg.data.max_nodes, cfg.seed, first_step, last_step, rank,
                                          world, multiple=cfg.data.multiple)

        return TrainSetup(model=self.build_model(cfg), dataset=dataset, collate=partial(collate_graphs, node_fields=["pos"]),
                          batch_sampler=node_budget if cfg.data.max_nodes > 0 else None)


if "toy_cloud" not in DOMAINS:
    DOMAINS.register("toy_cloud", help="test-only ragged point clouds")(ToyCloudDomain)


def write_toy_config(path: Path, run_dir: Path, **sections: dict[str, Any]) -> Path:
    """Write a small toy config (CPU, no progress bar) to ``path``; ``sections`` update its sections."""
    cfg: dict[str, Any] = {
        "domain": "toy",
        "seed": 7,
        "run_dir": str(run_dir),
        "net": {"name": "_toy_mlp", "hidden": 16, "dropout": 0.0},
        "data": {},
        "trainer": {
            "max_steps": 12, "batch_size": 8, "lr": 0.01, "warmup_steps": 2, "log_every": 2,
            "checkpoint_every": 4, "ema_decay": 0.9, "device": "cpu", "progress": False,
        },
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


if __name__ == "__main__":
    from sciffusion.cli import main

    sys.exit(main())
