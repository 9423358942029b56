"""OGBench point mazes with OGBench's protocol: diffusion planner vs goal-conditioned BC vs the scripted oracle.

For each data set (``--datasets``, default ``pointmaze-medium-stitch-v0,pointmaze-large-stitch-v0``), all in one
run and on the same data: generate the data set offline as OGBench's ``generate_locomaze.py`` does (or load
the cached one), train the planner (``configs/control/ogbench_pointmaze_<maze>_<kind>.yaml``) and GCBC
(OGBench's settings: 3 x 512 MLP, goals = uniformly drawn later states of the same episode) through the core
Trainer, then evaluate on the maze's five tasks (``--episodes`` per task, 1,000 steps, success within 1.0,
the episode ends at success, mean over tasks, fixed seeds):

    (a) planner: start and waypoint pinned by inpainting, waypoints on the data's state graph, receding horizon
    (b) planner without waypoints: every plan pinned to the goal itself (what the diffusion model does alone)
    (c) GCBC                                                  (d) scripted BFS oracle (noise-free)

plus the plan latency (batch 1) per solver and NFE for the planner.

    python benchmarks/control_ogbench.py [--datasets ...] [--episodes 50] [--train-steps N] [--bc-steps N]
    python benchmarks/control_ogbench.py --smoke     # minutes: tiny data, training and episodes, in a temp folder

Writes ``benchmarks/results/control_ogbench.json`` (``--smoke``: the work folder).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, bar, write_results
from sciffusion.domains.control.ogbench_data import default_cache, load_or_generate
from sciffusion.domains.control.ogbench_env import dataset_spec
from sciffusion.domains.control.ogbench_eval import evaluate_model, evaluate_tasks, oracle_agent, plot_paths

from sciffusion.config import load_config
from sciffusion.domain import load_run
from sciffusion.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
# OGBench paper (Park et al. 2024), success %, 8 seeds; CompDiffuser (Luo et al. 2025) on its own 100 start-goal pairs
ANCHORS = {
    "source": "OGBench paper (Park et al. 2024, Table 2), success in %, mean over 8 seeds; CompDiffuser (its own 100 "
              "start-goal pairs per maze, not OGBench's tasks). Paper numbers, not re-run here.",
    "pointmaze-medium-stitch-v0": {"GCBC": 23, "HIQL": 74, "QRL": 80, "CompDiffuser": 100},
    "pointmaze-large-stitch-v0": {"GCBC": 7, "HIQL": 13, "QRL": 84, "CompDiffuser": 100},
    "pointmaze-giant-stitch-v0": {"GCBC": 0, "HIQL": 0, "QRL": 50, "CompDiffuser": 68},
    "pointmaze-medium-navigate-v0": {"GCBC": 9, "HIQL": 79, "QRL": 82},
    "pointmaze-large-navigate-v0": {"GCBC": 29, "HIQL": 58, "QRL": 86},
    "pointmaze-giant-navigate-v0": {"GCBC": 1, "HIQL": 46, "QRL": 68},
}
BARS = [("success_large_stitch", "pointmaze-large-stitch-v0", 0.85), ("success_giant_stitch", "pointmaze-giant-stitch-v0", 0.5),
        ("success_medium_navigate", "pointmaze-medium-navigate-v0", 0.85)]
LATENCY = [("dpmpp_2m", 8), ("dpmpp_2m", 16), ("ddim", 16), ("ddpm", 64)]
GCBC_OVERRIDES = ["task.kind=bc", "task.bc_hidden=512", "task.bc_layers=3", "trainer.batch_size=256", "trainer.lr=0.0003",
                  "trainer.warmup_steps=0", "trainer.ema_decay=0.999"]
SMOKE = {"data_episodes": 40, "train_steps": 20, "bc_steps": 20, "episodes": 2, "latency_repeats": 1}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip() or None
    except OSError:
        return None


def train_run(config: Path, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    cfg = load_config(config, [f"run_dir={run_dir}", "trainer.progress=false", *overrides])
    t0 = time.perf_counter()
    result = train(cfg, resume=(run_dir / "checkpoints" / "last").exists())
    return {"config": str(config.relative_to(ROOT)), "overrides": overrides, "steps": result.step, "final_loss": result.loss,
            "wall_seconds_this_call": round(time.perf_counter() - t0, 1), "batch_size": cfg.trainer.batch_size}


def plan_latency(planner: torch.nn.Module, start: np.ndarray, goal: np.ndarray, repeats: int) -> list[dict[str, Any]]:
    """Median seconds of one plan (batch 1) per (solver, steps), interleaved."""
    s, g = torch.tensor(start[None], dtype=torch.float32), torch.tensor(goal[None], dtype=torch.float32)
    times: list[list[float]] = [[] for _ in LATENCY]
    for r in range(repeats + 1):
        for i, (solver, steps) in enumerate(LATENCY):
            t0 = time.perf_counter()
            planner.plan(s, g, solver=solver, steps=steps, generator=torch.Generator().manual_seed(r), clip_x0=1.0)
            if r:  # the first round warms up
                times[i].append(time.perf_counter() - t0)
    return [{"solver": solver, "nfe": steps, "seconds": statistics.median(t)} for (solver, steps), t in zip(LATENCY, times)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="pointmaze-medium-stitch-v0,pointmaze-large-stitch-v0")
    ap.add_argument("--episodes", type=int, default=50, help="episodes per task (OGBench: 50)")
    ap.add_argument("--direct-episodes", type=int, default=None, help="episodes per task of (b) (default --episodes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-steps", type=int, default=None, help="planner training steps (default: the config's)")
    ap.add_argument("--bc-steps", type=int, default=20_000)
    ap.add_argument("--work", default=None, help="runs and plots (default runs/bench_control_ogbench)")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reach", type=lambda text: text if text == "data" else float(text), default=None,
                    help="waypoint reach for the evaluation, a graph distance or 'data' (the median distance the data "
                         "covers in one plan's span); default: the run config's ogbench.reach")
    ap.add_argument("--merge", action="store_true", help="keep the other data sets' entries of the existing results file "
                                                          "(each entry records the command and commit that produced it)")
    ap.add_argument("--smoke", action="store_true", help=f"tiny settings in a temp folder: {SMOKE}")
    args = ap.parse_args()
    data_episodes, repeats = None, 5
    if args.smoke:
        data_episodes, args.train_steps, args.bc_steps, args.episodes = (SMOKE[k] for k in ("data_episodes", "train_steps",
                                                                                             "bc_steps", "episodes"))
        repeats = SMOKE["latency_repeats"]
    direct_episodes = args.direct_episodes or args.episodes
    torch.set_num_threads(args.threads)
    work = Path(args.work or (tempfile.mkdtemp(prefix="control_ogbench_smoke_") if args.smoke else ROOT / "runs/bench_control_ogbench"))
    results_dir = Path(args.results_dir or (work if args.smoke else RESULTS))
    results: dict[str, Any] = {}
    old_file = results_dir / "control_ogbench.json"
    if args.merge and old_file.exists():
        old = json.loads(old_file.read_text())
        results = {k: v for k, v in old["results"].items() if k not in args.datasets.split(",")}
        for entry in results.values():
            entry.setdefault("produced_by", {"date": old["date"], "git_commit": old["versions"].get("git_commit"),
                                             "episodes_per_task": old["settings"]["episodes_per_task"]})
    produced_by = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
                   "episodes_per_task": args.episodes, "command": " ".join(["python", *sys.argv])}
    for name in args.datasets.split(","):
        spec = dataset_spec(name)
        env_id = spec.env_id
        cache = (work / "data_cache" / name) if args.smoke else ROOT / default_cache(name, 0, None)
        t0 = time.perf_counter()
        data = load_or_generate(name, cache, 0, data_episodes)
        data_info = {k: data.settings.get(k) for k in ("num_episodes", "num_val_episodes", "max_episode_steps", "noise", "seed",
                                                       "generation_seconds", "protocol")}
        data_info.update(train_states=len(data.observations), load_seconds=round(time.perf_counter() - t0, 1), cache=str(cache))
        config = ROOT / f"configs/control/ogbench_pointmaze_{spec.maze}_{spec.kind}.yaml"
        common = [f"data.cache={cache}", "data.generate_seed=0"] + ([f"ogbench.generate_episodes={data_episodes}"] if data_episodes else [])
        planner_train = train_run(config, common + ([f"trainer.max_steps={args.train_steps}"] if args.train_steps else []),
                                  work / f"{name}_planner")
        gcbc_train = train_run(config, common + GCBC_OVERRIDES + [f"trainer.max_steps={args.bc_steps}"], work / f"{name}_gcbc")
        planner, gcbc = load_run(work / f"{name}_planner", "cpu"), load_run(work / f"{name}_gcbc", "cpu")
        ev = planner.config.section("ogbench")
        if args.reach is not None:
            ev.reach = args.reach
        row: dict[str, Any] = {"produced_by": produced_by, "data": data_info, "planner_training": planner_train, "gcbc_training": gcbc_train,
                               "planner_settings": {"horizon": planner.model.spec.horizon, "stride": planner.model.spec.stride,
                                                    "solver": planner.config.sample.solver, "solver_steps": planner.config.sample.steps,
                                                    "replan_every": ev.replan_every, "reach": ev.reach, "lookahead": ev.lookahead,
                                                    "graph_cell": ev.graph_cell, "graph_link_steps": ev.graph_link_steps}}
        runs = [("a_planner_waypoints", lambda: evaluate_model(planner.model, planner.config, episodes=args.episodes, seed=args.seed,
                                                               waypoints=True)),
                ("b_planner_direct", lambda: evaluate_model(planner.model, planner.config, episodes=direct_episodes, seed=args.seed,
                                                            waypoints=False)),
                ("c_gcbc", lambda: evaluate_model(gcbc.model, gcbc.config, episodes=args.episodes, seed=args.seed)),
                ("d_oracle", lambda: (*evaluate_tasks(env_id, oracle_agent(env_id), ev.tasks, args.episodes, args.seed), None))]
        for key, fn in runs:
            metrics, raw, _ = fn()
            row[key] = metrics
            plot_paths(env_id, raw, work / f"{name}_{key}_paths.png")
            print(name, key, metrics["success"], metrics["success_per_task"], flush=True)
        task1 = raw[next(iter(raw))]
        row["plan_latency_batch1"] = plan_latency(planner.model, task1["paths"][0, 0], task1["goals"][0], repeats)
        row["planner_minus_gcbc"] = row["a_planner_waypoints"]["success"] - row["c_gcbc"]["success"]
        results[name] = row
        path = write(results, args, direct_episodes, results_dir)  # after every data set, so a cut run keeps what it finished
    print(f"results: {path}", flush=True)


def write(results: dict[str, Any], args: argparse.Namespace, direct_episodes: int, results_dir: Path) -> Path:
    """Bars and settings for the data sets in ``results``; writes ``control_ogbench.json``."""
    bars = []
    for bar_name, name, target in BARS:
        if name in results:
            bars.append(bar(bar_name, results[name]["a_planner_waypoints"]["success"], ">=", target))
        else:
            bars.append({"name": bar_name, "value": None, "op": ">=", "target": target, "met": False,
                         "note": f"{name} not run at this budget"})
    if "pointmaze-large-stitch-v0" in results:
        bars.append(bar("planner_minus_gcbc_large_stitch", results["pointmaze-large-stitch-v0"]["planner_minus_gcbc"], ">=", 0.5))
    else:
        bars.append({"name": "planner_minus_gcbc_large_stitch", "value": None, "op": ">=", "target": 0.5, "met": False,
                     "note": "pointmaze-large-stitch-v0 not run"})
    return write_results("control_ogbench", {
        "settings": {
            "datasets": list(results), "datasets_this_call": args.datasets.split(","), "episodes_per_task": args.episodes,
            "episodes_per_task_direct": direct_episodes,
            "seed": args.seed, "tasks": "the package's five evaluation tasks per maze (env.unwrapped.task_infos)",
            "protocol": "OGBench: 1,000-step episodes (registered TimeLimit), success = within 1.0 of the goal, the episode "
                        "ends at success, success per task = fraction of its episodes, overall = mean over tasks; episode i "
                        "of task t seeds numpy's global generator and env.reset with seed + 1000 t + i",
            "data": "generated offline as OGBench's data_gen_scripts/generate_locomaze.py (point agent: BFS oracle, action noise "
                    "0.5; navigate 1,000 x 1,001 steps; stitch 5,000 x 201 steps to a cell 4 BFS moves away; + a tenth "
                    "validation episodes); the same training split for every method",
            "gcbc": "OGBench's GCBC: 3 x 512 MLP, goal = a uniformly drawn later state of the same episode, MSE (constant-std "
                    f"Gaussian); trained here with overrides {GCBC_OVERRIDES} for --bc-steps steps",
            "bars_use": "(a) planner with waypoints",
            "differences_from_protocol": [
                "CPU budget: short training (planner and GCBC steps in results.<dataset>.*_training), versus OGBench's 1M "
                "GCBC steps at batch 1024 and its 8 seeds; one training seed here",
                "only the data sets in settings.datasets were run (the others not at this budget)",
                "episodes per task: results.<dataset>.produced_by.episodes_per_task (OGBench: 50)"],
            "torch_threads": args.threads,
            **({"smoke": SMOKE} if args.smoke else {}),
            "compute": "CPU only, 2 cores shared with other jobs"},
        "anchors": ANCHORS,
        "results": results,
        "bars": bars,
    }, packages=("sciffusion", "torch", "numpy", "ogbench", "gymnasium", "mujoco"), folder=results_dir)


if __name__ == "__main__":
    main()
