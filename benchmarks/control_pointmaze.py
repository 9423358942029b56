"""PointMaze U-Maze / Medium / Large: Diffuser-style planner vs scripted expert vs MLP behaviour cloning.

For each maze (all in one run): generate (or load the cached) 1e6-step offline data set of the scripted
waypoint expert, train the planner (configs/control/pointmaze_<maze>.yaml) and a goal-conditioned MLP
BC baseline on it through the core Trainer, then run 50 episodes with fixed seeds for

    (a) planner, plan once + tracking controller      (b) planner with receding-horizon replanning
    (c) scripted expert (noise-free)                   (d) MLP behaviour cloning

On U-Maze also: plan latency of 256-step DDPM vs our solver at <= 20 NFE (same model, same run, with
their success rates), and a forbidden region added at test time only (cost guidance), reporting the
fraction of episodes whose executed path avoids it and their success.

    python benchmarks/control_pointmaze.py [--mazes umaze,medium,large] [--episodes 50] [--train-steps N] [--merge]
    python benchmarks/control_pointmaze.py --smoke [--results-dir DIR]   # minutes: the whole script at tiny settings

The forbidden region's guidance settings (scale, cost margin, gradient sub-steps) are chosen by a pilot
on episode seeds ``--pilot-seed ..`` (disjoint from the evaluation seeds), among ``REGION_GRID``, by the
rule in ``pick_region_guidance``; the pilot table is written beside the result.

Writes ``benchmarks/results/control_pointmaze.json``. ``--merge`` reruns only ``--mazes`` and keeps the
other mazes' entries and bars from the existing file; each maze's entry records the run that produced it
(``produced_by``: date, git commit, files changed but not committed, command). ``--smoke`` checks that the
script runs end to end: tiny data, training, episodes and pilot, with data, runs and results in a new temp
folder (never ``benchmarks/results``).
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
from sciffusion.domains.control.config import ForbiddenRegion
from sciffusion.domains.control.controllers import TrackingConfig
from sciffusion.domains.control.datasets import load_or_generate_maze_dataset
from sciffusion.domains.control.evaluation import (
    BCAgent,
    ExpertAgent,
    PlannerAgent,
    run_maze_episodes,
    summarize,
)
from sciffusion.domains.control.maze import get_maze
from sciffusion.domains.control.plots import plot_maze_paths

from sciffusion.config import load_config
from sciffusion.domain import load_run
from sciffusion.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
DIFFUSER = {"umaze": 113.9, "medium": 121.5, "large": 123.0}  # Janner et al. 2022, Table 1 (D4RL maze2d)
REWARD = "sparse: 1 for every step that ends with the ball within 0.45 m of the goal, else 0 (gymnasium-robotics)"
FORMULA = "normalized_score = 100 * (return - ref_min) / (ref_max - ref_min), D4RL reference returns"
# U-Maze forbidden region: the inner (left) half of the vertical corridor, cell (2, 3) (centre x = 1.0,
# y = 0.0), where unguided plans hug the wall corner; the right half (x in [1.0, 1.5]) stays free
REGION_CENTER, REGION_RADIUS = [0.75, 0.0], 0.25
REGION_STARTS = [[3, 1], [3, 2]]  # bottom row: every path to the goal (1, 1) passes the corridor
# guidance settings tried by the pilot: (scale, cost margin, gradient sub-steps per correction)
REGION_GRID = [(s, m, k) for k in (1, 50) for m in (0.1, 0.15) for s in (100.0, 500.0, 2000.0)]
PILOT_EPISODES = 100
UMAZE_ONLY_BARS = ("plan_speedup_vs_ddpm256", "avoid_rate_guided", "success_guided")
LATENCY_REPEATS = 7
# --smoke: generated steps, planner and BC training steps, episodes (evaluation and pilot), pilot grid size, latency repeats
SMOKE = {"data_steps": 5000, "train_steps": 20, "bc_steps": 20, "episodes": 2, "pilot_episodes": 2, "pilot_grid": 1,
         "latency_repeats": 1}


def region(margin: float = 0.15, scale: float = 1.0, substeps: int = 1) -> ForbiddenRegion:
    """The U-Maze forbidden disc with the given cost margin and guidance settings."""
    return ForbiddenRegion(center=REGION_CENTER, radius=REGION_RADIUS, margin=margin, scale=scale, substeps=substeps)


def pick_region_guidance(table: list[dict[str, Any]], floor: float = 0.98) -> dict[str, Any]:
    """The pilot rule: among settings whose pilot avoid rate and success rate are both >= ``floor``, the one
    with the highest normalized score (fastest to the goal); if none qualifies, the highest avoid rate
    x success rate."""
    ok = [r for r in table if r["avoid_rate"] >= floor and r["success_rate"] >= floor]
    if ok:
        return max(ok, key=lambda r: r["normalized_score"])
    return max(table, key=lambda r: (r["avoid_rate"] * r["success_rate"], r["normalized_score"]))


def produced_by() -> dict[str, Any]:
    """Date, git commit, files changed but not committed, and the command line of this run."""
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return ""
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "git_commit": git("rev-parse", "--short", "HEAD") or None,
            "uncommitted_changes": [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()],
            "command": " ".join(["python", *sys.argv])}


def bar_maze(b: dict[str, Any]) -> str | None:
    """The maze a bar belongs to (recorded in ``maze``; inferred from the name in older files)."""
    if "maze" in b:
        return b["maze"]
    if b["name"] in UMAZE_ONLY_BARS:
        return "umaze"
    return next((m for m in DIFFUSER if b["name"].endswith(f"_{m}")), None)


def plan_latencies(planner, configs: list[tuple[str, int]], repeats: int, spec) -> list[float]:
    """Median seconds of one plan (batch 1, fixed start -> the maze's goal) per (solver, steps), interleaved."""
    start = torch.tensor([[*spec.cell_to_xy(spec.free_cells[-1]), 0.0, 0.0]], dtype=torch.float32)
    goal = torch.tensor([[*spec.cell_to_xy(spec.goal_cell), 0.0, 0.0]], dtype=torch.float32)
    times: list[list[float]] = [[] for _ in configs]
    for r in range(repeats):
        for i, (solver, steps) in enumerate(configs):
            t0 = time.perf_counter()
            planner.plan(start, goal, solver=solver, steps=steps, generator=torch.Generator().manual_seed(r), clip_x0=1.0)
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def train_run(config: Path, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    cfg = load_config(config, [f"run_dir={run_dir}", "trainer.progress=false", *overrides])
    t0 = time.perf_counter()
    result = train(cfg, resume=(run_dir / "checkpoints" / "last").exists())
    return {"config": str(config.relative_to(ROOT)), "overrides": overrides, "steps": result.step,
            "final_loss": result.loss, "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
            "batch_size": cfg.trainer.batch_size, "net": cfg.to_dict().get("net"), "task": cfg.to_dict().get("task")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mazes", default="umaze,medium,large")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0, help="episode i uses env seed seed + i")
    ap.add_argument("--data-steps", type=int, default=1_000_000)
    ap.add_argument("--train-steps", type=int, default=None, help="planner training steps (default: the config's)")
    ap.add_argument("--bc-steps", type=int, default=20_000)
    ap.add_argument("--work", default=None, help="runs and plots (default: runs/bench_control_pointmaze; with --smoke a new "
                                                 "temp folder)")
    ap.add_argument("--results-dir", default=None, help="where control_pointmaze.json goes (default: benchmarks/results; "
                                                        "with --smoke the work folder)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids spinning on a shared CPU)")
    ap.add_argument("--pilot-seed", type=int, default=1000, help="first episode seed of the region-guidance pilot")
    ap.add_argument("--merge", action="store_true", help="rerun only --mazes; keep the other mazes' entries and bars "
                                                          "from the existing results file")
    ap.add_argument("--smoke", action="store_true", help="run everything at tiny settings (replacing --data-steps, "
                                                         f"--train-steps, --bc-steps, --episodes): {SMOKE}")
    args = ap.parse_args()
    pilot_episodes, pilot_grid, latency_repeats = PILOT_EPISODES, REGION_GRID, LATENCY_REPEATS
    if args.smoke:
        args.data_steps, args.train_steps, args.bc_steps, args.episodes = (SMOKE[k] for k in ("data_steps", "train_steps",
                                                                                               "bc_steps", "episodes"))
        pilot_episodes, pilot_grid, latency_repeats = SMOKE["pilot_episodes"], REGION_GRID[:SMOKE["pilot_grid"]], SMOKE["latency_repeats"]
    if args.pilot_seed < args.seed + args.episodes and args.seed < args.pilot_seed + pilot_episodes:
        ap.error("the pilot seeds must not overlap the evaluation seeds")
    run_info = produced_by()
    torch.set_num_threads(args.threads)
    work = Path(args.work or (tempfile.mkdtemp(prefix="control_pointmaze_smoke_") if args.smoke
                              else ROOT / "runs/bench_control_pointmaze"))
    results_dir = Path(args.results_dir or (work if args.smoke else RESULTS))
    cache_dir = work / "data_cache" if args.smoke else ROOT / "data_cache"
    results: dict[str, Any] = {}
    bars = []
    for maze in args.mazes.split(","):
        name = f"pointmaze-{maze}"
        spec = get_maze(name)
        cache = cache_dir / f"{name}-{args.data_steps}-s0"
        t0 = time.perf_counter()
        data = load_or_generate_maze_dataset(name, args.data_steps, 0, cache)
        data_info = {k: data.settings[k] for k in ("n_steps", "seed", "expert", "n_segments", "n_terminal_segments", "generation_seconds")}
        data_info["load_seconds"] = round(time.perf_counter() - t0, 1)
        data_overrides = [f"data.generate_steps={args.data_steps}", "data.generate_seed=0", f"data.cache={cache}"]
        config = ROOT / f"configs/control/pointmaze_{maze}.yaml"
        planner_overrides = data_overrides + ([f"trainer.max_steps={args.train_steps}"] if args.train_steps else [])
        planner_train = train_run(config, planner_overrides, work / f"{maze}_planner")
        bc_overrides = data_overrides + ["task.kind=bc", f"trainer.max_steps={args.bc_steps}", "trainer.batch_size=256",
                                         "trainer.lr=0.001", "trainer.ema_decay=0.999"]
        bc_train = train_run(config, bc_overrides, work / f"{maze}_bc")
        planner = load_run(work / f"{maze}_planner", "cpu")
        bc = load_run(work / f"{maze}_bc", "cpu")
        cfg = planner.config
        control, sample = cfg.section("control"), cfg.sample
        tracking = TrackingConfig(control.kp, control.gain, control.max_speed)
        row: dict[str, Any] = {"produced_by": run_info, "data": data_info, "planner_training": planner_train, "bc_training": bc_train,
                               "solver": sample.solver, "solver_steps": sample.steps, "replan_every": control.replan_every}

        def planner_agent(mode: str, planner=planner, tracking=tracking, control=control, sample=sample, cfg=cfg,
                          **kw: Any) -> PlannerAgent:
            return PlannerAgent(planner.model, tracking, mode=mode, replan_every=control.replan_every,
                                solver=kw.pop("solver", sample.solver), steps=kw.pop("steps", sample.steps), seed=kw.pop("seed", args.seed),
                                clip_x0=1.0 if cfg.data.normalizer == "limits" else None, **kw)

        runs = {
            "a_planner_tracking": planner_agent("open_loop"),
            "b_planner_receding": planner_agent("receding"),
            "c_expert": ExpertAgent(spec),
            "d_mlp_bc": BCAgent(bc.model),
        }
        for key, agent in runs.items():
            res = run_maze_episodes(spec, agent, args.episodes, args.seed)
            row[key] = summarize(res)
            if isinstance(agent, PlannerAgent):
                row[key]["plan_calls"] = len(agent.plan_seconds)
                row[key]["plan_seconds_per_call_batched"] = float(np.mean(agent.plan_seconds))
                if key == "a_planner_tracking":
                    plot_maze_paths(spec, res["paths"], agent.first_plans, res["goals"], work / f"{maze}_paths.png", res["success"])
            print(maze, key, row[key], flush=True)
        score = row["b_planner_receding"]["normalized_score"]
        bars.append({**bar(f"success_{maze}", row["b_planner_receding"]["success_rate"], ">=", 0.95), "maze": maze})
        bars.append({**bar(f"score_ratio_vs_diffuser_{maze}", score / DIFFUSER[maze], ">=", 1.0), "maze": maze})

        if maze == "umaze":
            # latency: DDPM with all 256 training steps vs ours (<= 20 NFE), same model, same run, interleaved
            lat_ddpm, lat_ours = plan_latencies(planner.model, [("ddpm", 256), (sample.solver, sample.steps)], latency_repeats, spec)
            ddpm_res = summarize(run_maze_episodes(spec, planner_agent("open_loop", solver="ddpm", steps=256), args.episodes, args.seed))
            row["latency"] = {"ddpm256_seconds": lat_ddpm, "ours_seconds": lat_ours, "ours_solver": sample.solver,
                              "ours_nfe": sample.steps, "speedup": lat_ddpm / lat_ours,
                              "success_ddpm256_open_loop": ddpm_res["success_rate"],
                              "success_ours_open_loop": row["a_planner_tracking"]["success_rate"],
                              "score_ddpm256_open_loop": ddpm_res["normalized_score"]}
            bars.append({**bar("plan_speedup_vs_ddpm256", lat_ddpm / lat_ours, ">=", 10.0), "maze": maze})
            # forbidden region at test time only (the planner never saw it): unguided vs cost-guided planner,
            # starts in the bottom row. Guidance settings: pilot on seeds disjoint from the evaluation's.
            pilot = []
            for scale, margin, substeps in pilot_grid:
                res = run_maze_episodes(spec, planner_agent("receding", forbidden=region(margin, scale, substeps), seed=args.pilot_seed),
                                        pilot_episodes, args.pilot_seed, start_cells=REGION_STARTS, region=region())
                s = summarize(res)
                pilot.append({"guidance_scale": scale, "cost_margin": margin, "substeps": substeps,
                              **{k: s[k] for k in ("avoid_rate", "success_rate", "normalized_score")}})
                print("pilot", pilot[-1], flush=True)
            chosen = pick_region_guidance(pilot)
            guided = region(chosen["cost_margin"], chosen["guidance_scale"], chosen["substeps"])
            region_rows = {}
            for label, reg in (("unguided", None), ("guided", guided)):
                agent = planner_agent("receding", forbidden=reg)
                res = run_maze_episodes(spec, agent, args.episodes, args.seed, start_cells=REGION_STARTS, region=guided)
                region_rows[label] = summarize(res)
                plot_maze_paths(spec, res["paths"], agent.first_plans, res["goals"], work / f"umaze_region_{label}.png",
                                res["success"], guided)
                print("region", label, region_rows[label], flush=True)
            row["forbidden_region"] = {
                "region": {"center": guided.center, "radius": guided.radius, "cost_margin": guided.margin,
                           "guidance_scale": guided.scale, "substeps": guided.substeps},
                "avoided": "the ball's centre never entered the disc (radius, not radius + margin) over the whole episode",
                "starts": REGION_STARTS, "mode": "receding", "test_time_only": "the planner was trained without the region",
                "settings_selection": {
                    "rule": "pilot on episode seeds disjoint from the evaluation's; among the grid's settings with pilot "
                            "avoid_rate >= 0.98 and success_rate >= 0.98, the highest pilot normalized score",
                    "pilot_episode_seeds": f"{args.pilot_seed}..{args.pilot_seed + pilot_episodes - 1}",
                    "pilot_sampling_seed": args.pilot_seed, "chosen": chosen, "pilot": pilot},
                **region_rows}
            bars.append({**bar("avoid_rate_guided", region_rows["guided"]["avoid_rate"], ">=", 0.9), "maze": maze})
            bars.append({**bar("success_guided", region_rows["guided"]["success_rate"], ">=", 0.9), "maze": maze})
        results[maze] = row

    if args.merge:
        old_file = results_dir / "control_pointmaze.json"
        old = json.loads(old_file.read_text()) if old_file.exists() else {"results": {}, "bars": []}
        rerun = set(results)
        for maze, entry in old.get("results", {}).items():
            if maze not in rerun:
                # an entry from an older file without a record of its run: attribute it to that file's run
                entry.setdefault("produced_by", {"date": old.get("date"), "git_commit": old.get("versions", {}).get("git_commit"),
                                                 "note": "kept by --merge from the previous results file"})
                results[maze] = entry
        kept = [{**b, "maze": bar_maze(b)} for b in old.get("bars", []) if bar_maze(b) not in rerun]
        bars = [b for m in [*DIFFUSER] for b in [*bars, *kept] if b.get("maze") == m]
        results = {m: results[m] for m in DIFFUSER if m in results}
    path = write_results("control_pointmaze", {
        "settings": {"episodes": args.episodes, "episode_seeds": f"{args.seed}..{args.seed + args.episodes - 1}",
                     "protocol": "D4RL maze2d-style: fixed D4RL goal cell (U (1,1), Medium (6,6), Large (7,9)), start cell "
                                 "uniform over free cells >= 0.5 m from the goal, +-0.25 m uniform noise on both "
                                 "(gymnasium-robotics reset); episode length 300/600/800 steps; no termination at the goal",
                     "reward": REWARD, "normalized_score_formula": FORMULA,
                     "reference_returns": {m: [get_maze(f'pointmaze-{m}').ref_min_score, get_maze(f'pointmaze-{m}').ref_max_score]
                                           for m in DIFFUSER},
                     "success": "the ball came within 0.45 m of the goal at least once",
                     "bars_use": "(b) planner with receding-horizon replanning",
                     "torch_threads": args.threads,
                     **({"smoke": SMOKE} if args.smoke else {}),
                     "provenance": "per maze: results.<maze>.produced_by (git commit and uncommitted files at the start of the "
                                   "run that produced it); the top-level versions.git_commit is HEAD when this file was written",
                     "merge": (f"--merge: {', '.join(args.mazes.split(','))} rerun by this run; the other mazes' entries and "
                               "bars were kept from the previous file (see each maze's produced_by)") if args.merge else None,
                     "compute": "CPU only, 2 cores shared with other jobs; budgets are the configs' trainer.max_steps"},
        "anchors": {"diffuser_normalized_score_d4rl_maze2d": DIFFUSER,
                    "note": "paper numbers on D4RL maze2d (mujoco-py, 0.5 m goal radius, fixed-goal eval), not re-run here"},
        "results": results,
        "bars": bars,
    }, packages=("sciffusion", "torch", "numpy", "gymnasium", "gymnasium-robotics", "mujoco"), folder=results_dir)
    print(f"results: {path}", flush=True)


if __name__ == "__main__":
    main()
