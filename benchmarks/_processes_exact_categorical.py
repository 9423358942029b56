"""Categorical solvers on an exact denoiser, against Meta's flow_matching driving the same model.

The target is a finite set of sequences (length ``L``, ``K`` classes, ``M`` distinct sequences with unequal weights)
whose clean-class posterior is exact in closed form on the mixture path
(:class:`sciffusion.sampling.exact_categorical.FiniteSequenceTarget`), so every error is the solver's or sampling
noise. For each source (mask, uniform), each of our solvers that drives it (``dfm_euler``, ``d3pm``; with the mask
source also ``sequential_reveal``) and each NFE budget we draw
``n`` sequences from each of several initial-noise seeds and measure the total variation to the target, averaged
over the seeds; the 1000-step error is the solver's floor (``tv_floor`` is the expected distance of ``n`` exact
samples). In the same run flow_matching's ``MixtureDiscreteEulerSolver`` on a ``MixtureDiscreteProbPath`` with
``PolynomialConvexScheduler(n)`` drives the same exact model at the same NFE from the same initial states: its time
``t'`` is our ``1 - t`` (its ``kappa(t') = t'^n`` is our ``kappa(t) = (1 - t)^n``), so its model call at ``t'``
evaluates our exact posterior at ``1 - t'``, on the uniform grid ``t' = 0, 1/N, ..., 1`` (ours: ``1, ..., 0``).
flow_matching draws from torch's global generator, which is seeded with the same seed per run.

Called by ``benchmarks/processes_exact.py``: ``run(quick, log) -> {"results": ..., "bars": [...]}``.
"""
from __future__ import annotations

import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
from flow_matching.path import MixtureDiscreteProbPath
from flow_matching.path.scheduler import PolynomialConvexScheduler
from flow_matching.solver import MixtureDiscreteEulerSolver
from flow_matching.utils import ModelWrapper
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bar  # noqa: E402

from sciffusion.processes.categorical import CategoricalProcess  # noqa: E402
from sciffusion.sampling import compatible_solvers, solve_field  # noqa: E402
from sciffusion.sampling.exact_categorical import FiniteSequenceTarget  # noqa: E402

NFE_BUDGETS = (5, 10, 20, 50, 100, 1000)
QUICK_NFE_BUDGETS = (5, 20, 50, 100)
SOURCES = ("mask", "uniform")
SCHEDULE = "linear"
TARGET = {"length": 5, "num_classes": 6, "count": 40, "seed": 0}
NOTES = [
    "mask source: dfm_euler and d3pm are the same kernel on this path (absorbing D3PM = masked flow matching), so "
    "their samples coincide draw for draw",
    "mask source: a step reveals entries independently, so entries revealed in the same step miss their dependence; "
    "on two positions the sampler's law is exactly joint + sum_i (kappa_i+1 - kappa_i)^2 (product - joint) "
    "(tests/test_process_categorical.py), i.e. an O(1/NFE) error that no per-entry step removes",
    "mask source: sequential_reveal reveals round(L kappa(s)) entries per sample, in random order, each from the "
    "posterior given those revealed before; with NFE >= L (= 5 here) that is one entry per evaluation, the chain "
    "rule of the target, so its error is sampling noise from NFE 5 on; below L it must reveal several at once",
]


def our_solvers(process: CategoricalProcess) -> list[str]:
    """Our registered solvers that drive ``process`` (``sequential_reveal`` needs the mask source)."""
    return compatible_solvers(process)


def make_target(length: int, num_classes: int, count: int, seed: int) -> FiniteSequenceTarget:
    """``count`` distinct random sequences ``(count, length)`` with Zipf-like weights ``1 / (j + 1)`` (unequal)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(num_classes, (4 * count, length), generator=g)
    unique = torch.unique(rows, dim=0)
    sequences = unique[torch.randperm(unique.shape[0], generator=g)[:count]]
    return FiniteSequenceTarget(sequences, 1.0 / torch.arange(1, count + 1, dtype=torch.float64))


def _solve(process: CategoricalProcess, target: FiniteSequenceTarget, solver: str, x: Tensor, steps: int,
           generator: torch.Generator) -> Tensor:
    """Our solver from ``x`` at ``t = 1`` over the uniform grid, through the core sampling loop."""
    return solve_field(process, lambda x_t, t, index: target.logits(process, x_t, t), x, process.time_grid(steps),
                       solver, generator=generator)


class _ExactPosterior(ModelWrapper):
    """The exact model in flow_matching's convention: probabilities ``(B, L, V)`` of the clean class at its time
    ``t'`` = our ``1 - t``."""

    def __init__(self, process: CategoricalProcess, target: FiniteSequenceTarget) -> None:
        super().__init__(torch.nn.Identity())
        self.process, self.target = process, target

    def forward(self, x: Tensor, t: Tensor, **extras) -> Tensor:
        probs = self.target.clean_probs(self.process, x, 1 - t)
        return torch.nn.functional.pad(probs, (0, self.process.vocab_size - self.process.num_classes))


def _flow_matching(process: CategoricalProcess, target: FiniteSequenceTarget, x: Tensor, steps: int, seed: int) -> Tensor:
    """flow_matching's mixture-path Euler solver on the same model from the same initial states ``x`` (its draws come
    from torch's global generator, seeded with ``seed``)."""
    path = MixtureDiscreteProbPath(PolynomialConvexScheduler(n=process.exponent))
    solver = MixtureDiscreteEulerSolver(_ExactPosterior(process, target), path, vocabulary_size=process.vocab_size)
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):  # it draws from the global generator: seed it, then restore the caller's
        torch.manual_seed(seed)
        return solver.sample(x_init=x.clone(), step_size=None, time_grid=grid, dtype_categorical=torch.float64)


def run(quick: bool, log: Callable[[str], None]) -> dict:
    """All sources x solvers x NFE budgets x seeds; returns ``{"results": ..., "bars": [...]}``."""
    budgets = QUICK_NFE_BUDGETS if quick else NFE_BUDGETS
    n, seeds = (2_000, (0, 1)) if quick else (10_000, (0, 1, 2))
    target = make_target(**TARGET)
    length, num_classes = TARGET["length"], TARGET["num_classes"]
    results: dict = {"target": {**TARGET, "weights": "1/(j+1), normalised"}, "notes": NOTES,
                     "schedule": SCHEDULE, "flow_matching_version": metadata.version("flow-matching"),
                     "samples_per_seed": n, "seeds": list(seeds), "nfe": list(budgets),
                     "tv_floor_exact_samples": target.tv_floor(n), "sources": {}}
    for source in SOURCES:
        process = CategoricalProcess(num_classes, source, SCHEDULE)
        solvers: dict[str, Callable[[CategoricalProcess, Tensor, int, int], Tensor]] = {
            name: (lambda p, x, k, seed, name=name: _solve(p, target, name, x, k, torch.Generator().manual_seed(10_000 + seed)))
            for name in our_solvers(process)}
        solvers["flow_matching"] = lambda p, x, k, seed: _flow_matching(p, target, x, k, 10_000 + seed)
        per_solver: dict = {}
        for name, sample in solvers.items():
            errors: dict[int, list[float]] = {}
            started, cpu_started = time.perf_counter(), time.process_time()
            for k in budgets:
                errors[k] = []
                for seed in seeds:
                    x_init = process.prior((n, length), torch.Generator().manual_seed(seed))
                    errors[k].append(target.total_variation(sample(process, x_init, k, seed)))
            mean = {k: statistics.fmean(v) for k, v in errors.items()}
            per_solver[name] = {"tv_mean": mean, "tv_per_seed": errors, "floor": mean[max(budgets)],
                                "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started}
            log(f"categorical {source:7s} {name:13s} " + "  ".join(f"nfe{k}={mean[k]:.4f}" for k in budgets)
                + f"  ({per_solver[name]['seconds']:.0f} s, cpu {per_solver[name]['cpu_seconds']:.0f} s)")
        results["sources"][source] = per_solver
    return {"results": results, "bars": _bars(results)}


def _bars(results: dict) -> list[dict]:
    """Per source: our best solver (lowest mean TV at the budget) against flow_matching at NFE 20, and at NFE 50
    against its own floor (its error at the largest budget); each bar takes the worse source."""
    ratios, over_floor = {}, {}
    for source, per_solver in results["sources"].items():
        ours = {k: v for k, v in per_solver.items() if k != "flow_matching"}
        best20 = min(ours, key=lambda name: ours[name]["tv_mean"][20])
        ratios[source] = ours[best20]["tv_mean"][20] / per_solver["flow_matching"]["tv_mean"][20]
        best50 = min(ours, key=lambda name: ours[name]["tv_mean"][50])
        over_floor[source] = ours[best50]["tv_mean"][50] / ours[best50]["floor"]
        per_solver["best"] = {"nfe20": best20, "nfe50": best50, "ratio_vs_flow_matching_nfe20": ratios[source],
                              "nfe50_over_floor": over_floor[source]}
    return [bar("categorical_error_ratio_vs_flow_matching_nfe20", max(ratios.values()), "<=", 1.05),
            bar("categorical_error_nfe50_over_floor", max(over_floor.values()), "<=", 1.2)]
