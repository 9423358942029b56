"""Push-T closed loop with Diffusion Policy (CNN U-Net, keypoint observations, To/Tp/Ta = 2/16/8).

Trains ``configs/control/pusht_dp.yaml`` on the human demonstrations in
``../shared/data/planning/pusht`` for a stated wall-clock budget (the ``sciffusion train`` command run
under ``timeout``; the newest checkpoint's EMA weights are evaluated), or reuses a trained run, then
runs 50 seeded episodes of at most 300 steps in gym-pusht and reports the mean of per-episode maximum
coverage and the success rate (coverage > 0.95) separately, plus the latency of one action chunk for
several solvers and NFE.

    python benchmarks/control_pusht.py [--budget-min 120] [--run-dir runs/bench_pusht_dp] [--reuse]

Writes ``benchmarks/results/control_pusht.json`` (``--results-dir`` elsewhere). A tiny end-to-end check:
``--max-steps 20 --episodes 2 --run-dir DIR/run --gif DIR/rollout.gif --results-dir DIR``.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, bar, write_results
from sciffusion.domains.control.datasets import load_pusht
from sciffusion.domains.control.domain import chunk_latency, evaluate_run
from sciffusion.domains.control.plots import write_gif
from sciffusion.domains.control.pusht import pusht_features

from sciffusion.domain import load_run
from sciffusion.train.checkpoint import find_checkpoint, load_meta

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = {"diffusion_policy_cnn_state_max_coverage": 0.95, "diffusion_policy_cnn_state_avg_coverage": 0.91,
           "cleandiffuser_chiunet_coverage": 0.99}
LATENCY_SOLVERS = [("ddim", 5), ("ddim", 10), ("dpmpp_2m", 5), ("dpmpp_2m", 10), ("ddpm", 100)]


def train_with_budget(config: Path, run_dir: Path, budget_s: int, overrides: list[str]) -> dict[str, Any]:
    """``sciffusion train`` under ``timeout``: training stops at the budget; checkpoints survive."""
    cmd = ["timeout", str(budget_s), sys.executable, "-m", "sciffusion", "train", str(config), f"run_dir={run_dir}",
           "trainer.progress=false", *overrides]
    if (run_dir / "checkpoints" / "last").exists():
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, check=False)
    return {"command": " ".join(cmd[2:]), "exit_code": proc.returncode, "wall_seconds": round(time.perf_counter() - t0, 1),
            "stopped_by_budget": proc.returncode == 124}


def training_seconds(run_dir: Path, batch_size: int) -> float | None:
    """Wall time covered by metrics.csv rows (samples / throughput), a lower bound without checkpoint pauses."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    rows = list(csv.DictReader(path.open()))
    total, prev = 0.0, 0
    for r in rows:
        step = int(r["step"])
        total += (step - prev) * batch_size / max(float(r["samples_per_s"]), 1e-9)
        prev = step
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/control/pusht_dp.yaml"))
    ap.add_argument("--run-dir", default=str(ROOT / "runs/bench_pusht_dp"))
    ap.add_argument("--budget-min", type=float, default=120.0, help="training wall-clock budget (minutes)")
    ap.add_argument("--reuse", action="store_true", help="evaluate the existing run without training")
    ap.add_argument("--train-command", default=None, help="with --reuse: the command that trained the run (recorded)")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=100000, help="episode i uses env seed seed + i")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None,
                    help="override trainer.max_steps (so that the wall-clock budget, not the step cap, ends training)")
    ap.add_argument("--gif", default=str(ROOT / "runs/bench_pusht_dp/rollout.gif"))
    ap.add_argument("--results-dir", default=str(RESULTS), help="where control_pusht.json goes (default: benchmarks/results)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    gif = Path(args.gif).resolve()
    overrides = [] if args.max_steps is None else [f"trainer.max_steps={args.max_steps}"]
    training: dict[str, Any] = {"overrides": overrides, "load_average_1_5_15_before": [round(x, 2) for x in os.getloadavg()]}
    if not args.reuse:  # a reused run records only what it knows: its command (--train-command) and its checkpoint
        training["budget_minutes"] = args.budget_min
        training.update(train_with_budget(Path(args.config), run_dir, int(args.budget_min * 60), overrides))
        training["load_average_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    elif args.train_command:
        training["command"] = args.train_command
    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        raise SystemExit(f"no checkpoint in {run_dir}")
    run = load_run(run_dir, "cpu")
    meta = load_meta(ckpt)
    cfg = run.config
    training.update(steps=int(meta["step"]), max_steps=cfg.trainer.max_steps, batch_size=cfg.trainer.batch_size, samples_seen=int(meta["step"]) * cfg.trainer.batch_size,
                    epochs=int(meta["step"]) * cfg.trainer.batch_size / len(load_pusht(cfg.data.path).state),
                    training_seconds_from_metrics=training_seconds(run_dir, cfg.trainer.batch_size), ema=run.has_ema)
    evals = {}
    for solver, steps in (("ddim", 10), ("dpmpp_2m", 5)):
        metrics, res = evaluate_run(run.model, cfg, args.episodes, args.seed, solver=solver, steps=steps,
                                    frames_for=0 if solver == "ddim" else None)
        evals[f"{solver}_{steps}"] = {k: v for k, v in metrics.items() if k not in ("env", "task")}
        evals[f"{solver}_{steps}"]["per_episode_max_coverage"] = [round(float(c), 4) for c in res["max_coverage"]]
        if res["frames"]:
            write_gif(res["frames"], gif, fps=10)
        print(solver, steps, {k: v for k, v in metrics.items() if k != "per_episode_max_coverage"}, flush=True)
    task = cfg.section("task")
    demo = load_pusht(cfg.data.path)
    hist = pusht_features(demo.state[:task.obs_horizon], task.obs)
    latency = [{"solver": s, "nfe": n, "seconds_per_chunk": chunk_latency(run.model, hist, s, n)} for s, n in LATENCY_SOLVERS]
    primary = evals["ddim_10"]
    write_results("control_pusht", {
        "settings": {"episodes": args.episodes, "episode_seeds": f"{args.seed}..{args.seed + args.episodes - 1}",
                     "max_steps": 300, "score": "mean over episodes of the maximum coverage reached",
                     "success": "maximum coverage > 0.95", "observations": task.obs, "To_Tp_Ta": [task.obs_horizon, task.pred_horizon, task.action_horizon],
                     "primary_solver": "ddim, 10 steps", "net": cfg.to_dict().get("net"), "process": cfg.to_dict().get("process"),
                     "data": "206 human demonstrations (25,650 steps), Diffusion Policy pusht_cchi_v7_replay",
                     "compute": "CPU only, 2 cores shared with other jobs, torch threads 1; no GPU in this session"},
        "training": training,
        "results": evals,
        "chunk_latency": latency,
        "anchors": {**ANCHORS, "note": "paper numbers (GPU, ~hours of training, 256-1024-channel U-Net), not re-run here"},
        "bars": [bar("mean_coverage", primary["mean_max_coverage"], ">=", 0.80)],
        "gif": (str(gif.relative_to(ROOT)) if gif.is_relative_to(ROOT) else str(gif)) if gif.exists() else None,
    }, packages=("sciffusion", "torch", "numpy", "gymnasium", "gym-pusht", "pymunk"), folder=args.results_dir)


if __name__ == "__main__":
    main()
