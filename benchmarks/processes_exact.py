"""The new processes on targets whose answer is known: categorical, torus and SO(3) solvers driven by exact
denoisers, against Meta's ``flow_matching`` where it has the same process.

    python benchmarks/processes_exact.py [--quick] [--only categorical,torus,so3] [--results-dir DIR]

Each part (``benchmarks/_processes_exact_<space>.py``) builds a finite target set on its space, the exact
posterior denoiser / velocity of every path to it (tested against Monte Carlo in ``tests/``), and draws samples
with every compatible solver of the core at NFE 5, 10, 20, 50, 100 and 1000 from the same initial noises (several
seeds, errors averaged), measuring a distance to the target on the right space (total variation for sequences of
classes; MMD with a periodic kernel on the torus; MMD with the heat kernel on SO(3)); the 1000-step error is each
solver's floor. In the same run, ``flow_matching`` drives the same exact model for the processes it has (discrete
flow matching with its mixture-path Euler solver; the flat torus with its Riemannian ODE solver) at the same NFE
and from the same noise. Writes ``benchmarks/results/processes_exact.json`` (``--quick``: a smoke run, written only
with ``--results-dir``). Bars: ``categorical_error_ratio_vs_flow_matching_nfe20`` <= 1.05,
``torus_error_ratio_vs_flow_matching_nfe10`` <= 1.05, ``so3_error_nfe20_over_floor`` <= 1.2,
``torus_error_nfe20_over_floor`` <= 1.2, ``categorical_error_nfe50_over_floor`` <= 1.2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

PARTS = ("categorical", "torus", "so3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer budgets, seeds and samples")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts to run")
    parser.add_argument("--results-dir", default=None, help="where to write processes_exact.json")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)} (known: {', '.join(PARTS)})")
    torch.set_num_threads(1)
    started, cpu_started, load = time.perf_counter(), time.process_time(), os.getloadavg()
    payload: dict = {"settings": {"quick": args.quick, "parts": parts, "torch_threads": 1}, "parts": {}, "bars": []}
    for part in parts:
        module = importlib.import_module(f"_processes_exact_{part}")
        t0 = time.perf_counter()
        out = module.run(args.quick, log=lambda message, part=part: print(f"[{part}] {message}", flush=True))
        payload["parts"][part] = {"description": (module.__doc__ or "").strip(), "results": out["results"],
                                  "seconds": time.perf_counter() - t0}
        payload["bars"].extend(out["bars"])
    payload["runtime_seconds"] = time.perf_counter() - started
    payload["runtime_cpu_seconds"] = time.process_time() - cpu_started
    payload["load_average_1_5_15min"] = {"start": list(load), "end": list(os.getloadavg())}
    for b in payload["bars"]:
        print(f"bar {b['name']}: {b['value']:.4f} {b['op']} {b['target']} -> {'met' if b['met'] else 'NOT met'}")
    if args.quick and args.results_dir is None:
        return 0
    folder = {"folder": args.results_dir} if args.results_dir else {}
    print("wrote", write_results("processes_exact", payload, packages=("sciffusion", "torch", "numpy", "flow_matching", "roma"),
                                 **folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
