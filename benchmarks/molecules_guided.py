"""Regressor-guided design on QM9 toward GFN2-xTB gaps and RDKit logP, checked by the oracles themselves, against
unguided samples.

1. the unconditional generator of ``benchmarks/molecules_qm9.py`` (``--generator-run``; trained here if missing);
2. per ``--properties`` entry a noise-aware regressor (``task.kind: property``, ``data.properties: [NAME]``: for
   ``xtb_gap`` the GFN2-xTB gap of each training molecule's DFT geometry, for ``logp`` / ``qed`` RDKit's value of
   its EDM molecule, so that target, regressor and oracle share one quantity), trained with the generator's own
   config (same processes) on ``--regressor-molecules`` training molecules (finished runs are reused);
3. for each target (the 10th, 50th and 90th percentiles of the labels, recorded), ``--n`` molecules guided by the
   regressor at each ``--scales`` and the same atom counts unguided; the oracles score every valid molecule as the
   molecule its SMILES names, EDM's largest fragment (GFN2-xTB on that fragment's generated geometry with its
   implicit hydrogens placed by RDKit, RDKit on its SMILES).

    python benchmarks/molecules_guided.py [--properties xtb_gap logp] [--generator-run runs/bench_qm9]
                                          [--regressor-steps 3000] [--n 200] [--scales 1 4 16] [--smoke]

Bars (per property, the best scale by mean MAE): ``gap_mae_ratio_vs_naive`` <= 0.5 (mean over targets of the
guided MAE over the unguided one, each over valid molecules the oracle scores; ``logp_mae_ratio_vs_naive`` the
same for logP) and ``validity_drop_points`` <= 10 (validity unguided minus guided at the gap's best scale, in
points). Writes ``benchmarks/results/molecules_guided.json`` (or ``--results-dir``).
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
from sciffusion.domains.molecules.domain import (  # noqa: E402
    ORACLE_COLUMN,
    describe_molecules,
    load_training_table,
    sample_molecules,
    score_with_oracles,
)
from sciffusion.domains.molecules.property_models import regressor_guidance  # noqa: E402
from sciffusion.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def oracle_scores(molecules: list, elements: tuple[str, ...], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per molecule: EDM-valid (bool) and the oracle's value of property ``name`` (NaN where it has none)."""
    rows, _ = describe_molecules(molecules, elements)
    score_with_oracles(molecules, rows, elements, {})
    return np.array([r["valid"] for r in rows]), np.array([r[ORACLE_COLUMN[name]] for r in rows], dtype=float)


def scored_mae(valid: np.ndarray, values: np.ndarray, target: float) -> tuple[float, int]:
    keep = valid & np.isfinite(values)
    return (float(np.mean(np.abs(values[keep] - target))) if keep.any() else float("nan")), int(keep.sum())


BAR_NAME = {"xtb_gap": "gap_mae_ratio_vs_naive", "logp": "logp_mae_ratio_vs_naive", "qed": "qed_mae_ratio_vs_naive"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/molecules/qm9.yaml"), help="for a generator trained here")
    ap.add_argument("--generator-run", default=str(ROOT / "runs/bench_qm9"))
    ap.add_argument("--generator-steps", type=int, default=10000, help="only when the generator run is missing")
    ap.add_argument("--generator-override", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--properties", nargs="+", default=["xtb_gap", "logp"], choices=sorted(BAR_NAME))
    ap.add_argument("--regressor-dir", default=str(ROOT / "runs/bench_guided"), help="holds PROPERTY_regressor runs")
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

    gen_dir = Path(args.generator_run)
    timings = {}
    if not (gen_dir / "checkpoints" / "last").exists():  # a generator run given is used as it is
        cfg = load_config(args.config, [f"run_dir={gen_dir}", "trainer.progress=false", *tiny,
                                        *(["data.max_molecules=300"] if args.smoke else []),
                                        f"trainer.max_steps={args.generator_steps}", *args.generator_override])
        t0 = time.perf_counter()
        train(cfg)
        timings["generator_train_seconds"] = time.perf_counter() - t0
    generator = load_run(gen_dir, "auto")
    elements = tuple(generator.config.data.elements)
    sizes = draw_sizes(np.bincount(load_training_table(generator.config.data).sizes), args.n,
                       torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    plain = sample_molecules(generator.model, sizes, solver, args.steps, seed=2, batch_size=100)
    unguided_seconds = time.perf_counter() - t0
    valid0 = oracle_scores(plain, elements, args.properties[0])[0]

    per_property, regressor_configs, bars = {}, {}, []
    for name in args.properties:
        reg_dir = Path(args.regressor_dir) / f"{name}_regressor"
        cfg = load_config(gen_dir / "config.yaml", [
            f"run_dir={reg_dir}", "trainer.progress=false", "task.kind=property", "task.noisy=true",
            f"data.properties=[{name}]", f"data.max_molecules={args.regressor_molecules}", *tiny,
            f"trainer.max_steps={args.regressor_steps}", *args.regressor_override])
        t0 = time.perf_counter()
        train(cfg, resume=(reg_dir / "checkpoints" / "last").exists())  # a finished run trains nothing
        timings[f"{name}_regressor_train_seconds"] = time.perf_counter() - t0
        regressor = load_run(reg_dir, "auto")
        regressor_configs[name] = {"steps": regressor.step, "config": regressor.config.to_dict()}
        labels = load_training_table(regressor.config.data).properties[name]
        targets = [float(np.round(np.percentile(labels, q), 2)) for q in (10, 50, 90)]
        norm = regressor.domain.meta(regressor).norms[name]
        values0 = oracle_scores(plain, elements, name)[1]
        per_scale = {}
        for scale in args.scales:
            rows = []
            for target in targets:
                guide = regressor_guidance(regressor.model, {name: norm.normalise(target)}, scale)
                t0 = time.perf_counter()
                guided = sample_molecules(generator.model, sizes, solver, args.steps, seed=2, batch_size=100,
                                          gradient_guidance=(guide,))
                seconds = time.perf_counter() - t0
                valid, values = oracle_scores(guided, elements, name)
                mae, scored = scored_mae(valid, values, target)
                naive, naive_scored = scored_mae(valid0, values0, target)
                rows.append({"target": target, "guided_mae": mae, "guided_scored": scored, "unguided_mae": naive,
                             "unguided_scored": naive_scored, "guided_validity": float(valid.mean()),
                             "sampling_seconds": round(seconds, 2)})
                print({"property": name, "scale": scale, **rows[-1]}, flush=True)
            ratios = [r["guided_mae"] / r["unguided_mae"] for r in rows]
            per_scale[f"{scale:g}"] = {"targets": rows, "mae_ratio_vs_naive": float(np.mean(ratios)),
                                       "validity": float(np.mean([r["guided_validity"] for r in rows]))}
        finite = {k: v for k, v in per_scale.items() if np.isfinite(v["mae_ratio_vs_naive"])}
        best_key = min(finite, key=lambda k: finite[k]["mae_ratio_vs_naive"]) if finite else next(iter(per_scale))
        per_property[name] = {"targets": targets, "oracle_column": ORACLE_COLUMN[name], "results": per_scale,
                              "best_scale": best_key}
        bars.append(bar(BAR_NAME[name], per_scale[best_key]["mae_ratio_vs_naive"], "<=", 0.5))
    first = per_property[args.properties[0]]
    bars.append(bar("validity_drop_points",
                    100.0 * (float(valid0.mean()) - first["results"][first["best_scale"]]["validity"]), "<=", 10.0))
    payload = {
        "settings": {"generator_run": str(gen_dir), "generator_steps": generator.step, "regressors": regressor_configs,
                     "n_per_target": args.n, "scales": args.scales, "solver": solver, "steps": args.steps,
                     "smoke": args.smoke, "targets_from": "10th / 50th / 90th percentiles of each regressor's labels",
                     "oracles": {"xtb_gap": "GFN2-xTB (tblite) HOMO-LUMO gap in eV of the largest valid "
                                             "fragment at its generated geometry, implicit H placed by RDKit",
                                 "logp": "RDKit Wildman-Crippen logP of the largest valid fragment",
                                 "qed": "RDKit QED of the largest valid fragment"},
                     "scored": "valid molecules only (EDM's validity); validity_drop_points at the first property's "
                               "best scale",
                     **timings},
        "unguided": {"validity": float(valid0.mean()), "sampling_seconds": round(unguided_seconds, 2)},
        "results": per_property,
        "bars": bars,
    }
    folder = {"folder": args.results_dir} if args.results_dir else {}
    print("wrote", write_results("molecules_guided", payload, packages=("sciffusion", "torch", "numpy", "rdkit", "tblite"),
                                 **folder))


if __name__ == "__main__":
    main()
