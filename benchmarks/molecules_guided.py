"""Regressor-guided design toward GFN2-xTB gaps on QM9, checked by the oracle itself, against unguided samples.

1. the unconditional generator of ``benchmarks/molecules_qm9.py`` (``--generator-run``; trained here if missing);
2. a noise-aware regressor of the xTB gap (``task.kind: property``, ``data.properties: [xtb_gap]``: the GFN2-xTB
   gap of each training molecule's DFT geometry, so that target, regressor and oracle share one quantity), trained
   with the generator's own config (same processes) on ``--regressor-molecules`` training molecules;
3. for each target (the 10th, 50th and 90th percentiles of the labels, recorded), ``--n`` molecules guided by the
   regressor at each ``--scales`` and the same atom counts unguided; the oracle (GFN2-xTB on the generated
   geometry) scores every valid molecule.

    python benchmarks/molecules_guided.py [--generator-run runs/bench_qm9] [--regressor-steps 3000] [--n 200]
                                          [--scales 1 4 16] [--smoke]

Bars (the best scale by mean MAE): ``gap_mae_ratio_vs_naive`` <= 0.5 (mean over targets of the guided MAE over
the unguided one, each over valid molecules that xTB scores) and ``validity_drop_points`` <= 10 (validity
unguided minus guided, in points). Writes ``benchmarks/results/molecules_guided.json`` (or ``--results-dir``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bar, write_results  # noqa: E402

from sciffusion.config import load_config  # noqa: E402
from sciffusion.domain import load_run  # noqa: E402
from sciffusion.domains.molecules.dataset import draw_sizes  # noqa: E402
from sciffusion.domains.molecules.domain import describe_molecules, load_training_table, sample_molecules  # noqa: E402
from sciffusion.domains.molecules.oracle import xtb_batch  # noqa: E402
from sciffusion.domains.molecules.property_models import regressor_guidance  # noqa: E402
from sciffusion.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def oracle_scores(molecules: list, elements: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per molecule: EDM-valid (bool) and the xTB gap in eV (NaN where xTB fails)."""
    rows, _ = describe_molecules(molecules, elements)
    results = xtb_batch([(m.positions, m.types, m.charges) for m in molecules], elements)
    return np.array([r["valid"] for r in rows]), np.array([r.gap if r.ok else np.nan for r in results])


def scored_mae(valid: np.ndarray, gaps: np.ndarray, target: float) -> tuple[float, int]:
    keep = valid & np.isfinite(gaps)
    return (float(np.mean(np.abs(gaps[keep] - target))) if keep.any() else float("nan")), int(keep.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/molecules/qm9.yaml"), help="for a generator trained here")
    ap.add_argument("--generator-run", default=str(ROOT / "runs/bench_qm9"))
    ap.add_argument("--generator-steps", type=int, default=10000, help="only when the generator run is missing")
    ap.add_argument("--generator-override", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--regressor-run", default=str(ROOT / "runs/bench_guided/xtb_gap_regressor"))
    ap.add_argument("--regressor-steps", type=int, default=3000)
    ap.add_argument("--regressor-molecules", type=int, default=20000, help="training molecules with xTB labels")
    ap.add_argument("--regressor-override", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--n", type=int, default=200, help="molecules per target and setting")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    ap.add_argument("--solver", default="pos=heun,types=sequential_reveal")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="tiny runs (seconds): checks the script, measures nothing")
    ap.add_argument("--results-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tiny = ["data.max_nodes=200", "net.hidden=16", "net.n_layers=2", "trainer.warmup_steps=1",
            "trainer.checkpoint_every=4", "trainer.log_every=2"] if args.smoke else []
    if args.smoke:
        args.generator_steps, args.regressor_steps, args.regressor_molecules = 4, 4, 60
        args.n, args.steps, args.scales = 4, 4, [1.0, 4.0]
    solver = dict(part.split("=", 1) for part in args.solver.split(","))

    gen_dir, reg_dir = Path(args.generator_run), Path(args.regressor_run)
    timings = {}
    if not (gen_dir / "checkpoints" / "last").exists():
        cfg = load_config(args.config, [f"run_dir={gen_dir}", "trainer.progress=false", *tiny,
                                        *(["data.max_molecules=300"] if args.smoke else []),
                                        f"trainer.max_steps={args.generator_steps}", *args.generator_override])
        t0 = time.perf_counter()
        train(cfg)
        timings["generator_train_seconds"] = time.perf_counter() - t0
    if not (reg_dir / "checkpoints" / "last").exists():
        cfg = load_config(gen_dir / "config.yaml", [
            f"run_dir={reg_dir}", "trainer.progress=false", "task.kind=property", "task.noisy=true",
            "data.properties=[xtb_gap]", f"data.max_molecules={args.regressor_molecules}", *tiny,
            f"trainer.max_steps={args.regressor_steps}", *args.regressor_override])
        t0 = time.perf_counter()
        train(cfg)
        timings["regressor_train_seconds"] = time.perf_counter() - t0
    generator, regressor = load_run(gen_dir, "auto"), load_run(reg_dir, "auto")
    elements = tuple(generator.config.data.elements)
    labels = load_training_table(regressor.config.data).properties["xtb_gap"]
    targets = [float(np.round(np.percentile(labels, q), 2)) for q in (10, 50, 90)]
    norm = regressor.domain.meta(regressor).norms["xtb_gap"]
    sizes = draw_sizes(np.bincount(load_training_table(generator.config.data).sizes), args.n,
                       torch.Generator().manual_seed(1))

    t0 = time.perf_counter()
    plain = sample_molecules(generator.model, sizes, solver, args.steps, seed=2, batch_size=100)
    unguided_seconds = time.perf_counter() - t0
    valid0, gaps0 = oracle_scores(plain, elements)
    per_scale = {}
    for scale in args.scales:
        rows = []
        for target in targets:
            guide = regressor_guidance(regressor.model, {"xtb_gap": norm.normalise(target)}, scale)
            t0 = time.perf_counter()
            guided = sample_molecules(generator.model, sizes, solver, args.steps, seed=2, batch_size=100,
                                      gradient_guidance=(guide,))
            seconds = time.perf_counter() - t0
            valid, gaps = oracle_scores(guided, elements)
            mae, scored = scored_mae(valid, gaps, target)
            naive, naive_scored = scored_mae(valid0, gaps0, target)
            rows.append({"target_xtb_gap_eV": target, "guided_mae": mae, "guided_scored": scored,
                         "unguided_mae": naive, "unguided_scored": naive_scored, "guided_validity": float(valid.mean()),
                         "sampling_seconds": round(seconds, 2)})
            print({"scale": scale, **rows[-1]}, flush=True)
        ratios = [r["guided_mae"] / r["unguided_mae"] for r in rows]
        per_scale[f"{scale:g}"] = {"targets": rows, "mae_ratio_vs_naive": float(np.mean(ratios)),
                                   "validity": float(np.mean([r["guided_validity"] for r in rows]))}
    finite = {k: v for k, v in per_scale.items() if np.isfinite(v["mae_ratio_vs_naive"])}
    best_key = min(finite, key=lambda k: finite[k]["mae_ratio_vs_naive"]) if finite else next(iter(per_scale))
    best = per_scale[best_key]
    payload = {
        "settings": {"generator_run": str(gen_dir), "generator_steps": generator.step, "regressor_steps": regressor.step,
                     "regressor_config": regressor.config.to_dict(), "n_per_target": args.n, "scales": args.scales,
                     "solver": solver, "steps": args.steps, "targets_xtb_gap_eV": targets, "smoke": args.smoke,
                     "targets_from": "10th / 50th / 90th percentiles of the regressor's xTB labels",
                     "oracle": "GFN2-xTB (tblite) HOMO-LUMO gap on the generated geometry, valid molecules only",
                     **timings},
        "unguided": {"validity": float(valid0.mean()), "sampling_seconds": round(unguided_seconds, 2)},
        "results": per_scale,
        "best_scale": best_key,
        "bars": [bar("gap_mae_ratio_vs_naive", best["mae_ratio_vs_naive"], "<=", 0.5),
                 bar("validity_drop_points", 100.0 * (float(valid0.mean()) - best["validity"]), "<=", 10.0)],
    }
    folder = {"folder": args.results_dir} if args.results_dir else {}
    print("wrote", write_results("molecules_guided", payload, packages=("sciffusion", "torch", "numpy", "rdkit", "tblite"),
                                 **folder))


if __name__ == "__main__":
    main()
