"""Torus processes on an exact target: every error is the solver's (part of ``processes_exact.py``).

The target is five points on the 3-torus with unequal weights, three of them within 0.05 of a cell face,
and its exact denoisers (:mod:`sciffusion.sampling.exact_torus`): the posterior over the points is closed form
on the flat-torus flow path (boxes) and on the wrapped normal path (images). Every compatible solver of
each torus model draws samples at NFE 5, 10, 20, 50, 100 and 1000 from the same uniform initial noises
(several seeds) and the distance to the target is the MMD with a product von Mises kernel (exact against the
target, no reference sample), averaged over the seeds; a model's floor is its best solver's error at NFE
1000. Our solvers run on each process's default time grid (the flow's is shifted towards the prior). In the
same run Meta's ``flow_matching`` drives the same exact flat-torus velocity with its ``RiemannianODESolver``
on its ``FlatTorus`` (coordinates and velocity scaled by ``2 pi``, its time ``1 - t``) at the same NFE and
from the same noise, with its Euler and midpoint steps, on its default uniform grid and on our grid.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from flow_matching.solver import RiemannianODESolver
from flow_matching.utils import ModelWrapper
from flow_matching.utils.manifolds import FlatTorus
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bar  # noqa: E402

from sciffusion.processes.torus import (  # noqa: E402
    TorusFlowProcess,
    TorusNetwork,
    TorusProcess,
    WrappedNormalProcess,
    wrap,
)
from sciffusion.sampling import compatible_solvers, nfe, solve_field, steps_for_nfe  # noqa: E402
from sciffusion.sampling.exact_torus import TorusMMD, TorusTarget  # noqa: E402

NFE_BUDGETS = (5, 10, 20, 50, 100, 1000)
POINTS = [[0.97, 0.03, 0.50], [0.25, 0.80, 0.02], [0.60, 0.35, 0.70], [0.10, 0.45, 0.30], [0.45, 0.05, 0.96]]
WEIGHTS = [0.30, 0.25, 0.20, 0.15, 0.10]
FLOW_MATCHING_METHODS = {"euler": 1, "midpoint": 2}  # NFE per step


class _FlatTorusVelocity(ModelWrapper):
    """Our exact velocity as flow_matching sees it: on ``[0, 2 pi)^d``, time ``tau = 1 - t`` from noise to data,
    so ``u(X, tau) = -2 pi v(X / 2 pi, 1 - tau)``."""

    def __init__(self, network: TorusNetwork) -> None:
        super().__init__(torch.nn.Identity())
        self.network = network

    def forward(self, x: Tensor, t: Tensor, **extras) -> Tensor:
        times = (1 - t).to(x.dtype).expand(x.shape[0])
        return -2 * math.pi * self.network(wrap(x / (2 * math.pi)), times, None)


def _flow_matching_sample(network: TorusNetwork, x1: Tensor, grid: Tensor, method: str) -> Tensor:
    """flow_matching's Riemannian ODE solver from our noise ``x1`` ``(n, d)`` over our decreasing time grid ``grid``
    (its times ``1 - grid``); returns samples in ``[0, 1)``."""
    solver = RiemannianODESolver(FlatTorus(), _FlatTorusVelocity(network))
    out = solver.sample(2 * math.pi * x1, step_size=None, method=method, time_grid=1 - grid)
    return wrap(out / (2 * math.pi))


def _summary(errors: list[float], used_nfe: int) -> dict:
    return {"nfe": used_nfe, "mmd_mean": sum(errors) / len(errors), "mmd_per_seed": errors}


def run(quick: bool, log: Callable[[str], None]) -> dict:
    """The torus part of the exact-process benchmark: ``{"results": ..., "bars": [...]}``.

    ``quick``: 2,000 samples, 2 noise seeds, NFE 5, 10, 20 and a 200-step floor (a smoke run); otherwise 10,000
    samples, 4 seeds, NFE 5 ... 1000.
    """
    n, seeds = (2000, 2) if quick else (10000, 4)
    budgets = (5, 10, 20, 200) if quick else NFE_BUDGETS
    floor_budget = budgets[-1]
    target = TorusTarget(POINTS, WEIGHTS)
    mmd = TorusMMD(target)
    processes: dict[str, TorusProcess] = {"flow": TorusFlowProcess(), "wrapped_normal": WrappedNormalProcess()}
    noises = [processes["flow"].prior((n, target.dim), torch.Generator().manual_seed(seed), dtype=torch.float64)
              for seed in range(seeds)]
    started = time.perf_counter()
    ours: dict[str, dict[str, dict[int, dict]]] = {}
    for model, process in processes.items():
        network = target.network(process)
        ours[model] = {}
        for solver in compatible_solvers(process):
            ours[model][solver] = {}
            for budget in budgets:
                steps = steps_for_nfe(solver, budget)
                errors = [mmd(solve_field(process, network, x1, process.time_grid(steps), solver,
                                          torch.Generator().manual_seed(1000 + seed)))
                          for seed, x1 in enumerate(noises)]
                ours[model][solver][budget] = _summary(errors, nfe(solver, steps))
                log(f"torus {model:>14} {solver:>5} NFE {budget:>4}: MMD {ours[model][solver][budget]['mmd_mean']:.5f} "
                    f"({time.perf_counter() - started:.0f} s)")
    theirs: dict[str, dict[str, dict[int, dict]]] = {"uniform": {}, "shifted": {}}  # their default grid; ours
    flow = processes["flow"]
    flow_network = target.network(flow)
    for grid_kind, table in theirs.items():
        for method, per_step in FLOW_MATCHING_METHODS.items():
            table[method] = {}
            for budget in budgets:
                grid = flow.time_grid(max(1, budget // per_step), grid_kind)
                errors = [mmd(_flow_matching_sample(flow_network, x1, grid, method)) for x1 in noises]
                table[method][budget] = _summary(errors, (len(grid) - 1) * per_step)
                log(f"torus flow_matching {method:>8} {grid_kind:>7} grid NFE {budget:>4}: "
                    f"MMD {table[method][budget]['mmd_mean']:.5f}")

    def best(table: dict[str, dict[int, dict]], budget: int) -> tuple[str, float]:
        name = min(table, key=lambda k: table[k][budget]["mmd_mean"])
        return name, table[name][budget]["mmd_mean"]

    ratio_nfe = 10
    our_solver, our_error = best(ours["flow"], ratio_nfe)
    their_method, their_error = best(theirs["uniform"], ratio_nfe)
    same_grid_method, same_grid_error = best(theirs["shifted"], ratio_nfe)
    over_floor = {}
    for model, table in ours.items():
        solver_20, error_20 = best(table, 20)
        solver_floor, floor = best(table, floor_budget)
        over_floor[model] = {"solver_nfe20": solver_20, "error_nfe20": error_20, "floor_solver": solver_floor,
                             "floor": floor, "ratio": error_20 / floor}
    worst_model = max(over_floor, key=lambda k: over_floor[k]["ratio"])
    results = {
        "target": {"points": POINTS, "weights": WEIGHTS},
        "distance": f"MMD (V-statistic) to the target, product von Mises kernel kappa={mmd.kappa}",
        "n_samples": n, "noise_seeds": seeds, "nfe_budgets": list(budgets), "floor_budget": floor_budget,
        "iid_noise_floor": mmd.noise_floor(n),
        "ours": ours, "flow_matching": theirs,
        "vs_flow_matching_nfe10": {
            "ours_best": our_solver, "ours_error": our_error, "theirs_best": their_method, "theirs_error": their_error,
            "ratio": our_error / their_error,
            "theirs_on_our_grid_best": same_grid_method, "ratio_on_our_grid": our_error / same_grid_error,
            "euler_vs_euler_on_our_grid": ours["flow"]["euler"][ratio_nfe]["mmd_mean"]
            / theirs["shifted"]["euler"][ratio_nfe]["mmd_mean"],
        },
        "nfe20_over_floor": over_floor,
        "seconds": time.perf_counter() - started,
    }
    bars = [
        bar("torus_error_ratio_vs_flow_matching_nfe10", our_error / their_error, "<=", 1.05),
        # every torus model must have a solver within 1.2x of its floor at NFE 20: the worse model decides
        bar("torus_error_nfe20_over_floor", over_floor[worst_model]["ratio"], "<=", 1.2),
    ]
    return {"results": results, "bars": bars}


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = run(quick="--quick" in sys.argv, log=print)
    for b in out["bars"]:
        print(b)
    print(out["results"]["vs_flow_matching_nfe10"], out["results"]["nfe20_over_floor"], sep="\n")
