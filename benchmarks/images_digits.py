"""Digits (8x8, 10 classes): train on a stated CPU budget, then class accuracy and Frechet distance of
class-conditional samples vs NFE for DDIM, DPM-Solver++(2M) and Heun, with and without CFG.

    python benchmarks/images_digits.py [--max-steps 2000] [--per-class 50] [--run-dir runs/bench_digits]

Writes ``benchmarks/results/images_digits.json`` (or ``--results-dir``). Bars, CFG scale 2 at an NFE budget of
20: ``cond_accuracy_cfg_nfe20`` >= 0.95 (DPM-Solver++(2M), 20 steps) and ``heun_cond_accuracy_cfg_nfe20`` >= 0.95
(Heun, 10 steps = 19 NFE).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bar, write_results  # noqa: E402

from sciffusion.config import load_config  # noqa: E402
from sciffusion.domain import load_run  # noqa: E402
from sciffusion.domains.images.data import load_digits_splits  # noqa: E402
from sciffusion.domains.images.domain import cached_classifier, class_conditional_samples  # noqa: E402
from sciffusion.domains.images.metrics import accuracy, frechet_distance  # noqa: E402
from sciffusion.sampling import nfe, steps_for_nfe  # noqa: E402
from sciffusion.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/images/digits.yaml"))
    ap.add_argument("--max-steps", type=int, default=None, help="training steps (default: the config's)")
    ap.add_argument("--per-class", type=int, default=50, help="samples per class for each metric")
    ap.add_argument("--nfes", default="5,10,20,50")
    ap.add_argument("--scales", default="1,2")
    ap.add_argument("--run-dir", default=str(ROOT / "runs/bench_digits"))
    ap.add_argument("--reuse", action="store_true", help="evaluate an existing run instead of training")
    ap.add_argument("--results-dir", default=None, help="where to write images_digits.json (default: benchmarks/results)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    overrides = [f"run_dir={args.run_dir}", "trainer.progress=false"]
    if args.max_steps:
        overrides.append(f"trainer.max_steps={args.max_steps}")
    cfg = load_config(args.config, overrides)
    train_seconds = None
    if not args.reuse:
        t0 = time.perf_counter()
        train(cfg, resume=Path(args.run_dir, "checkpoints", "last").exists())
        train_seconds = time.perf_counter() - t0
    run = load_run(args.run_dir, "cpu")
    data = run.config.data
    train_split, test = load_digits_splits(data.test_fraction, data.split_seed)
    clf = cached_classifier(data)
    floor = frechet_distance(clf, train_split.images, test.images)

    rows = []
    for solver in ("ddim", "dpmpp_2m", "heun"):
        for budget in (int(v) for v in args.nfes.split(",")):
            steps = steps_for_nfe(solver, budget)
            for scale in (float(v) for v in args.scales.split(",")):
                t0 = time.perf_counter()
                images, labels = class_conditional_samples(run.model, args.per_class, solver, steps, scale, seed=1)
                seconds = time.perf_counter() - t0
                row = {"solver": solver, "nfe_budget": budget, "steps": steps, "nfe": nfe(solver, steps), "guidance_scale": scale,
                       "accuracy": accuracy(clf, images, labels), "frechet_distance": frechet_distance(clf, images, test.images),
                       "sampling_seconds": round(seconds, 3)}
                rows.append(row)
                print(row, flush=True)
    def at_budget_20(solver: str) -> dict:
        return next(r for r in rows if r["solver"] == solver and r["nfe_budget"] == 20 and r["guidance_scale"] == 2.0)

    headline, heun = at_budget_20("dpmpp_2m"), at_budget_20("heun")
    payload = {
        "settings": {"config": cfg.to_dict(), "train_steps": cfg.trainer.max_steps, "samples_per_class": args.per_class,
                     "classifier": "CNN trained on the real train split (sciffusion.domains.images.metrics)",
                     "split": "stratified 80/20 of sklearn digits, seed 0 (1,437 train / 360 test)",
                     "headline": "dpmpp_2m, 20 steps, CFG scale 2; heun at the same budget: 10 steps (19 NFE)",
                     "heun_ode_coordinates": "straight-line (sigma / (alpha + sigma)), see GaussianProcess.ode_coords_of"},
        "training_seconds": train_seconds,
        "classifier_accuracy_real_test": accuracy(clf, test.images, test.labels),
        "frechet_floor_train_vs_test": floor,
        "results": rows,
        "bars": [bar("cond_accuracy_cfg_nfe20", headline["accuracy"], ">=", 0.95),
                 bar("heun_cond_accuracy_cfg_nfe20", heun["accuracy"], ">=", 0.95)],
    }
    folder = {"folder": args.results_dir} if args.results_dir else {}
    print("wrote", write_results("images_digits", payload, **folder))


if __name__ == "__main__":
    main()
