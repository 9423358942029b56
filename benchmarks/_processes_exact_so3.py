"""SO(3) solvers on an exact denoiser: geodesic flow matching (linear and FrameFlow's exponential schedule) and
IGSO(3) score diffusion, against a finite target of rotations.

The target is four rotations with unequal weights (0.4, 0.3, 0.2, 0.1), the second at angle ``pi - 0.05`` from the
first, whose posterior given ``R_t`` is exact in closed form on both paths
(:class:`sciffusion.sampling.exact_so3.SO3Target`), so every error is the solver's or sampling noise. For each model,
each of its solvers and each NFE budget we draw ``n`` rotations from each of several initial-noise seeds (the same
Haar draws for every solver and budget; Euler-Maruyama noise from a second seeded generator) and measure the MMD
with the heat kernel of bandwidth 0.25 rad to the target itself (:class:`sciffusion.sampling.exact_so3.SO3MMD`),
averaged over the seeds; the 1000-step error is the solver's floor (``mmd_floor_exact_samples`` is the root expected
MMD of ``n`` exact draws). Heun spends 2 NFE per step (1 on the last), so it runs ``(budget + 1) // 2`` steps. The
nearest-target diagnostics (mean geodesic error, total variation of the assignment frequencies) are recorded too.
The exact network outputs the displacement (``output="rotvec"``; the ``rotmat`` output gives the same samples up to
rounding and a Procrustes projection per evaluation).

Called by ``benchmarks/processes_exact.py``: ``run(quick, log) -> {"results": ..., "bars": [...]}``.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bar  # noqa: E402

from sciffusion.processes.so3 import GeodesicFlowProcess, IGSO3Process, SO3Process, so3_exp, so3_log  # noqa: E402
from sciffusion.sampling import compatible_solvers, solve_field, steps_for_nfe  # noqa: E402
from sciffusion.sampling.exact_so3 import SO3MMD, SO3Target  # noqa: E402

NFE_BUDGETS = (5, 10, 20, 50, 100, 1000)
QUICK_NFE_BUDGETS = (5, 20, 200)
BANDWIDTH = 0.25
BAR_MODEL = "geodesic_flow"


def make_target() -> SO3Target:
    """Four rotations ``(4, 3, 3)``: the identity, ``pi - 0.05`` about x (near the cut locus of the first), and two
    generic ones; weights 0.4, 0.3, 0.2, 0.1."""
    vecs = torch.tensor([[0.0, 0.0, 0.0], [math.pi - 0.05, 0.0, 0.0], [0.3, 1.2, -0.5], [-1.0, 0.2, 1.6]], dtype=torch.float64)
    vecs[2] *= 1.4 / vecs[2].norm()
    vecs[3] *= 2.0 / vecs[3].norm()
    return SO3Target(so3_exp(vecs), [0.4, 0.3, 0.2, 0.1])


def models() -> dict[str, SO3Process]:
    """The compared models: FrameFlow's linear geodesic path, its exponential schedule (rate 10) and FrameDiff's IGSO3."""
    return {"geodesic_flow": GeodesicFlowProcess(output="rotvec"),
            "geodesic_flow_exp": GeodesicFlowProcess(schedule="exp", exp_rate=10.0, output="rotvec"),
            "igso3": IGSO3Process(sigma_min=0.1, sigma_max=1.5)}


def run(quick: bool, log: Callable[[str], None]) -> dict:
    """All models x solvers x NFE budgets x seeds; returns ``{"results": ..., "bars": [...]}``."""
    budgets = QUICK_NFE_BUDGETS if quick else NFE_BUDGETS
    n, seeds = (300, (0, 1)) if quick else (1000, (0, 1, 2, 3))
    target = make_target()
    mmd = SO3MMD(target, bandwidth=BANDWIDTH)
    results: dict = {"target": {"rotvecs": [[round(float(v), 6) for v in row] for row in so3_log(target.rotations)],
                                "weights": target.weights.tolist()},
                     "distance": f"MMD, heat kernel f(angle; {BANDWIDTH}) / f(0; {BANDWIDTH}) (IGSO3 density), V-statistic",
                     "samples_per_seed": n, "seeds": list(seeds), "nfe": list(budgets),
                     "mmd_floor_exact_samples": mmd.noise_floor(n), "models": {}}
    for model, process in models().items():
        network = target.network(process)
        per_solver: dict = {}
        for solver in compatible_solvers(process):
            errors: dict[int, list[float]] = {k: [] for k in budgets}
            angle_error: dict[int, list[float]] = {k: [] for k in budgets}
            weight_tv: dict[int, list[float]] = {k: [] for k in budgets}
            started = time.perf_counter()
            for k in budgets:
                for seed in seeds:
                    x_init = process.prior((n, 3, 3), torch.Generator().manual_seed(seed), dtype=torch.float64)
                    noise = torch.Generator().manual_seed(10_000 + seed)
                    samples = solve_field(process, network, x_init, process.time_grid(steps_for_nfe(solver, k)), solver,
                                        generator=noise, index=torch.arange(n))
                    errors[k].append(mmd(samples))
                    labels, angle = target.nearest(samples)
                    freq = torch.bincount(labels, minlength=len(target.weights)).double() / n
                    angle_error[k].append(float(angle.mean()))
                    weight_tv[k].append(0.5 * float((freq - target.weights).abs().sum()))
            mean = {k: statistics.fmean(v) for k, v in errors.items()}
            per_solver[solver] = {"mmd_mean": mean, "mmd_per_seed": errors, "floor": mean[max(budgets)],
                                  "over_floor": {k: mean[k] / mean[max(budgets)] for k in budgets},
                                  "steps": {k: steps_for_nfe(solver, k) for k in budgets},
                                  "mean_angle_error": {k: statistics.fmean(v) for k, v in angle_error.items()},
                                  "assignment_tv": {k: statistics.fmean(v) for k, v in weight_tv.items()},
                                  "seconds": time.perf_counter() - started}
            log(f"so3 {model:17s} {solver:14s} " + "  ".join(f"nfe{k}={mean[k]:.4f}" for k in budgets)
                + f"  ({per_solver[solver]['seconds']:.0f} s)")
        results["models"][model] = per_solver
    return {"results": results, "bars": _bars(results, budgets)}


def _bars(results: dict, budgets: tuple[int, ...]) -> list[dict]:
    """Per model: the solver with the lowest mean MMD at NFE 20 over its own 1000-step floor (quick runs use the
    budgets nearest to 20 and their largest). The bar is the default so3 model's (``geodesic_flow``); the others
    are recorded in ``results["best"]``."""
    at20 = 20 if 20 in budgets else min(budgets, key=lambda k: abs(k - 20))
    best: dict = {}
    for model, per_solver in results["models"].items():
        name = min(per_solver, key=lambda s: per_solver[s]["mmd_mean"][at20])
        best[model] = {"solver": name, "nfe20_over_floor": per_solver[name]["over_floor"][at20]}
    results["best"] = best
    return [bar("so3_error_nfe20_over_floor", best[BAR_MODEL]["nfe20_over_floor"], "<=", 1.2)]
