"""The control domain adapter (registered as ``control``): planners, Diffusion Policy and BC baselines.

``task.kind`` picks what a config trains:

* ``planner`` (PointMaze): Diffuser over state (or state-action) windows ``(H, S [+ A])``, start and
  goal pinned by inpainting, optional value network, return conditioning and inverse dynamics;
* ``policy`` (Push-T or PointMaze): Diffusion Policy, action chunks conditioned on ``To`` observations;
* ``bc``: an MLP behaviour-cloning baseline on the same data.

Everything trains through :class:`sciffusion.train.Trainer` (the models implement ``training_loss``)
and samples through the core solvers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from sciffusion.cli import positive_int
from sciffusion.config import Config
from sciffusion.domain import Domain, DomainError, Run, TrainSetup
from sciffusion.model import diffusion_model_from_config
from sciffusion.domains.control.value_net import TemporalValueNet
from sciffusion.outputs import check_file, publish_together
from sciffusion.registry import DOMAINS, SOLVERS
from sciffusion.domains.control.trajectory import (
    EpisodeWindows,
    Normalizer,
    TrajectorySpec,
    fit_normalizer,
)
from sciffusion.domains.control.planning import (
    ChunkedActor,
    DiffusionPolicy,
    InverseDynamics,
    MLPPolicy,
    TrajectoryPlanner,
)
from sciffusion.train.checkpoint import write_json_atomic
from sciffusion.train.logs import stderr_is_terminal

from .config import ControlData, ControlEval, ForbiddenRegion, TaskConfig
from .controllers import TrackingConfig
from .datasets import (
    MazeDataset,
    load_maze_dataset,
    load_or_generate_maze_dataset,
    load_pusht,
)
from .evaluation import BCAgent, PlannerAgent, run_maze_episodes, summarize
from .maze import MAZES, ControlConfigError, get_maze
from .ogbench_env import OGBENCH_DATASETS, STATE_DIM as OGBENCH_STATE_DIM
from .ogbench_eval import OGBenchEval, add_data_command, ogbench_setup
from .plots import frame_strip, maze_rollout_gif, plot_maze_paths, write_gif
from .pusht import evaluate_pusht, pusht_features, pusht_obs_dim

MAZE_STATE_DIM, MAZE_ACTION_DIM, MAZE_GOAL_DIM = 4, 2, 2
PUSHT_ACTION_DIM = 2


# ------------------------------------------------------------------------------------ data sets


def maze_data(data: ControlData) -> MazeDataset:
    """The PointMaze data set of a config: ``data.path`` if given, else generated (and cached)."""
    if data.path is not None:
        return load_maze_dataset(data.path, data.env)
    cache = data.cache or f"data_cache/{data.env}-{data.generate_steps}-s{data.generate_seed}"
    return load_or_generate_maze_dataset(data.env, data.generate_steps, data.generate_seed, cache,
                                         progress=stderr_is_terminal())


class PlannerWindows(torch.utils.data.Dataset):
    """Normalised planner windows from a PointMaze data set.

    Segments that reached their goal are absorbing: windows may run past their end, repeating the goal
    state with zero velocity (and zero action). Item::

        {"fields": {"traj": (H, S [+ A])}, "valid": (H,), "value": (), "actions": (H, A),
         "cond": {"returns": (1,), "start": (S,), "goal": (S,)}}   # optional parts only when the task needs them
    """

    def __init__(self, data: MazeDataset, spec: TrajectorySpec, norm: Normalizer, action_norm: Normalizer, task: TaskConfig) -> None:
        self.windows = EpisodeWindows({"obs": data.observations, "act": data.actions, "rew": data.rewards[:, None]},
                                      data.episode_ends, spec.horizon, spec.stride, terminals=data.terminals,
                                      absorbing_terminal=True, zero_on_pad={"obs": (2, 4), "act": (0, 2)})
        self.spec, self.norm, self.action_norm, self.task = spec, norm, action_norm, task
        self.discounts = task.discount ** np.arange(spec.horizon)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        w = self.windows[i]
        traj = self.spec.join(w["obs"], w["act"])
        item: dict[str, Any] = {"fields": {"traj": self.norm.normalize(traj).astype(np.float32)}, "valid": w["valid"]}
        ret = np.float32((self.discounts * w["rew"][:, 0]).sum() / self.discounts.sum())
        if self.task.value:
            item["value"] = ret
        cond = {}
        if self.task.returns_condition:
            cond["returns"] = np.array([ret], dtype=np.float32)
        if self.task.goal_condition:
            states = item["fields"]["traj"][:, : self.spec.state_dim]
            cond["start"], cond["goal"] = states[0].copy(), states[-1].copy()
        if cond:
            item["cond"] = cond
        if self.task.inverse_dynamics:
            item["actions"] = self.action_norm.normalize(w["act"]).astype(np.float32)
        return item


class ChunkWindows(torch.utils.data.Dataset):
    """Diffusion Policy windows: ``{"fields": {"action": (Tp, A)}, "cond": {"obs": (To, O)}}``, normalised.

    Windows start up to ``To - 1`` steps before an episode (first observation repeated) and end up to
    ``Ta - 1`` steps after it (last action repeated), as in Diffusion Policy's sampler.
    """

    def __init__(self, obs: np.ndarray, actions: np.ndarray, episode_ends: np.ndarray, task: TaskConfig,
                 obs_norm: Normalizer, action_norm: Normalizer) -> None:
        self.windows = EpisodeWindows({"obs": obs, "act": actions}, episode_ends, task.pred_horizon, 1,
                                      pad_before=task.obs_horizon - 1, pad_after=task.action_horizon - 1)
        self.to, self.obs_norm, self.action_norm = task.obs_horizon, obs_norm, action_norm

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        w = self.windows[i]
        return {"fields": {"action": self.action_norm.normalize(w["act"]).astype(np.float32)},
                "cond": {"obs": self.obs_norm.normalize(w["obs"][: self.to]).astype(np.float32)}}


class StepPairs(torch.utils.data.Dataset):
    """Behaviour-cloning pairs ``{"obs": (O,), "action": (A,)}``, normalised."""

    def __init__(self, obs: np.ndarray, actions: np.ndarray, obs_norm: Normalizer, action_norm: Normalizer) -> None:
        self.obs = obs_norm.normalize(obs).astype(np.float32)
        self.actions = action_norm.normalize(actions).astype(np.float32)

    def __len__(self) -> int:
        return len(self.obs)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"obs": self.obs[i], "action": self.actions[i]}


def policy_observations(cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observation features ``(N, O)``, actions ``(N, A)`` and episode ends for ``policy`` / ``bc`` tasks."""
    if cfg.data.env == "pusht":
        demos = load_pusht(cfg.data.path)
        return pusht_features(demos.state, cfg.section("task").obs), demos.action, demos.episode_ends
    data = maze_data(cfg.data)
    return np.concatenate([data.observations, data.goals], axis=1), data.actions, data.episode_ends


def observation_dim(cfg: Config) -> int:
    if cfg.data.env in OGBENCH_DATASETS:
        return 2 * OGBENCH_STATE_DIM  # position and goal position
    return pusht_obs_dim(cfg.section("task").obs) if cfg.data.env == "pusht" else MAZE_STATE_DIM + MAZE_GOAL_DIM


# ------------------------------------------------------------------------------------ the domain


def _net_kwargs(cfg: Config, **wanted: Any) -> dict[str, Any]:
    """Only the sizes the chosen net's config declares (e.g. ``horizon`` for the transformer)."""
    entry = cfg.net.registry.get(cfg.net.name)
    names = {f.name for f in dataclasses.fields(entry.config)} if entry.config is not None else set(wanted)
    return {k: v for k, v in wanted.items() if k in names}


def _check_horizon(cfg: Config, horizon: int, key: str) -> None:
    """A temporal U-Net halves the sequence at every level after the first, so ``horizon`` must divide evenly."""
    mults = getattr(cfg.net.params, "dim_mults", None)
    if cfg.net.name == "temporal_unet1d" and mults and horizon % 2 ** (len(mults) - 1):
        raise ControlConfigError(f"'{key}' ({horizon}) must be divisible by {2 ** (len(mults) - 1)} for a temporal_unet1d "
                                 f"with {len(mults)} levels (net.dim_mults {list(mults)})")


def trajectory_spec(cfg: Config) -> TrajectorySpec:
    task: TaskConfig = cfg.section("task")
    state_dim = OGBENCH_STATE_DIM if cfg.data.env in OGBENCH_DATASETS else MAZE_STATE_DIM
    return TrajectorySpec(state_dim, MAZE_ACTION_DIM if task.use_actions else 0, task.horizon, task.stride)


@DOMAINS.register("control", help="trajectory planning (Diffuser) and Diffusion Policy: PointMaze (generated data), Push-T")
class ControlDomain(Domain):
    name = "control"
    data_config = ControlData
    extra_sections: ClassVar[dict[str, type]] = {"task": TaskConfig, "control": ControlEval, "ogbench": OGBenchEval}

    # -- models -------------------------------------------------------------------------------
    def build_model(self, cfg: Config) -> nn.Module:
        task: TaskConfig = cfg.section("task")
        env = cfg.data.env
        if task.kind == "bc":
            act_dim = PUSHT_ACTION_DIM if env == "pusht" else MAZE_ACTION_DIM
            return MLPPolicy(observation_dim(cfg), act_dim, task.bc_hidden, task.bc_layers)
        if cfg.net is None or cfg.process is None:
            raise ControlConfigError(f"task.kind '{task.kind}' needs the 'net' and 'process' sections")
        _check_horizon(cfg, task.pred_horizon if task.kind == "policy" else task.horizon,
                       "task.pred_horizon" if task.kind == "policy" else "task.horizon")
        if task.kind == "policy":
            obs_dim = observation_dim(cfg)
            act_dim = PUSHT_ACTION_DIM if env == "pusht" else MAZE_ACTION_DIM
            net = cfg.net.build(**_net_kwargs(cfg, transition_dim=act_dim, horizon=task.pred_horizon,
                                              cond_dims={"obs": task.obs_horizon * obs_dim}, field="action"))
            diffusion = diffusion_model_from_config(net, {"action": cfg.process.build()}, cfg.loss)
            return DiffusionPolicy(diffusion, obs_dim, act_dim, task.obs_horizon, task.pred_horizon, task.action_horizon,
                                   clip_x0=1.0 if cfg.data.normalizer == "limits" else None)
        if env not in MAZES and env not in OGBENCH_DATASETS:
            raise ControlConfigError(f"task.kind 'planner' supports the PointMaze environments, not '{env}'")
        spec = trajectory_spec(cfg)
        cond_dims = {"returns": 1} if task.returns_condition else {}
        if task.goal_condition:
            cond_dims.update(start=spec.state_dim, goal=spec.state_dim)
        net = cfg.net.build(**_net_kwargs(cfg, transition_dim=spec.transition_dim, horizon=spec.horizon,
                                          cond_dims=cond_dims, cfg_keys=["returns"] if task.returns_condition else [],
                                          field="traj"))
        diffusion = diffusion_model_from_config(net, {"traj": cfg.process.build()}, cfg.loss)
        value = TemporalValueNet(spec.transition_dim, spec.horizon, task.value_dim) if task.value else None
        inv = InverseDynamics(MAZE_STATE_DIM, MAZE_ACTION_DIM) if task.inverse_dynamics else None
        return TrajectoryPlanner(diffusion, spec, value, inv, task.returns_condition,
                                 MAZE_ACTION_DIM if task.inverse_dynamics else 0, goal_condition=task.goal_condition)

    def setup(self, cfg: Config) -> TrainSetup:
        task: TaskConfig = cfg.section("task")
        model = self.build_model(cfg)
        kind = cfg.data.normalizer
        if cfg.data.env in OGBENCH_DATASETS:
            return ogbench_setup(cfg, model, PlannerWindows)
        if task.kind == "planner":
            maze = get_maze(cfg.data.env)
            spec = trajectory_spec(cfg)
            if spec.span > maze.max_episode_steps:
                raise ControlConfigError(f"task.horizon x task.stride spans {spec.span} steps, longer than a "
                                         f"{maze.name} episode ({maze.max_episode_steps} steps)")
            data = maze_data(cfg.data)
            norm = fit_normalizer(kind, spec.join(data.observations, data.actions))
            action_norm = fit_normalizer(kind, data.actions)
            model.norm.load(norm)
            if model.action_norm is not None:
                model.action_norm.load(action_norm)
            return TrainSetup(model=model, dataset=PlannerWindows(data, spec, norm, action_norm, task))
        obs, actions, ends = policy_observations(cfg)
        if obs.shape[1] != model.obs_norm.shift.numel() or actions.shape[1] != model.action_norm.shift.numel():
            raise ControlConfigError(f"data has observations of {obs.shape[1]} and actions of {actions.shape[1]} values; "
                                     f"the model expects {model.obs_norm.shift.numel()} and {model.action_norm.shift.numel()}")
        obs_norm, action_norm = fit_normalizer(kind, obs), fit_normalizer(kind, actions)
        model.obs_norm.load(obs_norm)
        model.action_norm.load(action_norm)
        if task.kind == "bc":
            return TrainSetup(model=model, dataset=StepPairs(obs, actions, obs_norm, action_norm))
        return TrainSetup(model=model, dataset=ChunkWindows(obs, actions, ends, task, obs_norm, action_norm))

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, run: Run, args: argparse.Namespace) -> dict[str, Any]:
        """Closed-loop metrics of a run (``--episodes`` overrides ``control.episodes``)."""
        if run.config.data.env in OGBENCH_DATASETS:
            return _evaluate_ogbench(run, args, run.run_dir / "eval")
        control: ControlEval = run.config.section("control")
        episodes = getattr(args, "episodes", None)
        episodes = control.episodes if episodes is None else episodes
        seed = getattr(args, "seed", None)
        pusht = run.config.data.env == "pusht"
        metrics, res = evaluate_run(run.model, run.config, episodes=episodes, seed=control.seed if seed is None else seed,
                                    solver=getattr(args, "solver", None), steps=getattr(args, "steps", None),
                                    frames_for=0 if pusht else None)
        out = run.run_dir / "eval"
        if pusht:
            metrics["strip"] = str(frame_strip(res["frames"], out / "episode0_strip.png"))
        else:
            maze = get_maze(run.config.data.env)
            metrics["paths_plot"] = str(plot_maze_paths(maze, res["paths"], res.get("plans"), res["goals"], out / "paths.png",
                                                        res["success"], control.forbidden))
        metrics["step"] = run.step
        return metrics

    def sample(self, run: Run, args: argparse.Namespace) -> None:
        """Plans (planner runs) for ``--n`` evaluation starts: ``plans.npz`` + ``plans.png``."""
        task: TaskConfig = run.config.section("task")
        if task.kind != "planner":
            raise DomainError("control 'sample' draws plans from planner runs; use 'sciffusion evaluate' for policies")
        sc = run.sample_config(args)
        out = run.output_dir(args, "samples")
        maze = get_maze(run.config.data.env)
        from .evaluation import reset_episodes

        envs, states, goals = reset_episodes(maze, sc.n, sc.seed)
        for env in envs:
            env.close()
        agent = _planner_agent(run.model, run.config, sc.solver, sc.steps, sc.seed)
        agent.goals = goals
        plans = agent._plan(states)
        with publish_together([out / "plans.npz", out / "plans.png"]) as (npz, png):
            np.savez(npz, plans=plans, starts=states, goals=goals)
            plot_maze_paths(maze, plans[:, :, :4], None, goals, png)
        print(f"wrote {out / 'plans.npz'} and {out / 'plans.png'}")

    def add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        p = subparsers.add_parser("plan", help="run a trained planner closed loop in PointMaze (control domain)",
                                  description="Plan and execute episodes with a trained planner run; writes metrics, "
                                              "a planned-vs-executed plot and optionally a GIF.")
        p.add_argument("run_dir", help="planner run folder written by `sciffusion train`")
        p.add_argument("--env", help="environment (must be the one the run was trained on), e.g. pointmaze-medium or "
                                     "pointmaze-large-v0 (OGBench)")
        p.add_argument("--episodes", type=positive_int, help="episodes (default: control.episodes; OGBench: per task, "
                                                             "default ogbench.episodes)")
        p.add_argument("--task", help="OGBench evaluation task(s): 3, 1,4 or 1..5 (default: ogbench.tasks)")
        p.add_argument("--no-waypoints", action="store_true", dest="no_waypoints",
                       help="OGBench: pin every plan to the goal itself (no waypoints on the data's state graph)")
        p.add_argument("--mode", choices=["open_loop", "receding"], help="plan once and track, or replan")
        p.add_argument("--replan-every", type=positive_int, dest="replan_every", help="steps between replans (receding)")
        p.add_argument("--solver", help="sampling solver (default: sample.solver)")
        p.add_argument("--steps", type=positive_int, help="solver steps (default: sample.steps)")
        p.add_argument("--seed", type=int, help="first episode seed (default: control.seed)")
        p.add_argument("--render", help="write an animated GIF of the first episode to this .gif file")
        p.add_argument("--out", help="output folder for paths.png and plan_metrics.json (default: RUN_DIR/plans)")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.set_defaults(func=_cmd_plan)
        add_data_command(subparsers)


# ------------------------------------------------------------------------------------ helpers


def _planner_agent(model: TrajectoryPlanner, cfg: Config, solver: str, steps: int, seed: int,
                   mode: str | None = None, replan_every: int | None = None, forbidden: ForbiddenRegion | None = None) -> PlannerAgent:
    control: ControlEval = cfg.section("control")
    return PlannerAgent(model, TrackingConfig(control.kp, control.gain, control.max_speed),
                        mode=control.mode if mode is None else mode,
                        replan_every=control.replan_every if replan_every is None else replan_every, solver=solver, steps=steps,
                        value_scale=control.value_scale, forbidden=forbidden if forbidden is not None else control.forbidden,
                        target_return=control.target_return, guidance_scale=cfg.sample.guidance_scale,
                        clip_x0=1.0 if cfg.data.normalizer == "limits" else None, seed=seed)


class ChunkPolicyAgent:
    """Diffusion Policy on PointMaze: observations are ``(state, goal)``."""

    def __init__(self, policy: DiffusionPolicy, solver: str, steps: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.actor = ChunkedActor(lambda hist: policy.act(hist, solver, steps, gen), policy.obs_horizon)
        self.goals = np.zeros((0, 2))

    def reset(self, states: np.ndarray, goals: np.ndarray) -> None:
        self.goals = goals.copy()
        self.actor.reset(np.concatenate([states, goals], axis=1))

    def act(self, states: np.ndarray, step: int) -> np.ndarray:
        if step > 0:
            self.actor.observe(np.concatenate([states, self.goals], axis=1))
        return np.clip(self.actor.act(), -1.0, 1.0)


def chunk_latency(policy: DiffusionPolicy, obs: np.ndarray, solver: str, steps: int, repeats: int = 5) -> float:
    """Median seconds to predict one action chunk for one observation history ``(To, O)``."""
    hist = torch.as_tensor(obs[None], dtype=torch.float32)
    policy.predict_chunk(hist, solver, steps)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.predict_chunk(hist, solver, steps)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def evaluate_run(model: nn.Module, cfg: Config, episodes: int, seed: int, solver: str | None = None, steps: int | None = None,
                 mode: str | None = None, replan_every: int | None = None, frames_for: int | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Closed-loop evaluation of any control model. Returns (metrics, raw per-episode results).

    ``solver``, ``steps``, ``mode`` and ``replan_every`` default (``None``) to the config's values;
    counts below 1 and unknown solvers are refused before any episode runs.
    """
    task: TaskConfig = cfg.section("task")
    control: ControlEval = cfg.section("control")
    solver = cfg.sample.solver if solver is None else solver
    steps = cfg.sample.steps if steps is None else steps
    for name, value in (("episodes", episodes), ("steps", steps), ("replan_every", replan_every)):
        if value is not None and value < 1:
            raise ControlConfigError(f"{name} must be >= 1, got {value}")
    SOLVERS.get(solver)
    env = cfg.data.env
    metrics: dict[str, Any] = {"env": env, "task": task.kind, "episodes": episodes, "seed": seed}
    if env == "pusht":
        if isinstance(model, DiffusionPolicy):
            gen = torch.Generator().manual_seed(seed)
            actor = ChunkedActor(lambda hist: model.act(hist, solver, steps, gen), model.obs_horizon)
            started = [False]

            def act_fn(states: np.ndarray) -> np.ndarray:
                feats = pusht_features(states, task.obs)
                if not started[0]:
                    actor.reset(feats)
                    started[0] = True
                else:
                    actor.observe(feats)
                return actor.act()

            metrics.update(solver=solver, solver_steps=steps)
        else:
            def act_fn(states: np.ndarray) -> np.ndarray:
                return model.act(torch.as_tensor(pusht_features(states, task.obs), dtype=torch.float32)).cpu().numpy()

        res = evaluate_pusht(act_fn, episodes, seed, frames_for=frames_for)
        metrics.update(mean_max_coverage=float(np.mean(res["max_coverage"])), success_rate=float(np.mean(res["success"])),
                       wall_seconds=float(res["seconds"]))
        if isinstance(model, DiffusionPolicy):
            metrics["chunk_latency_s"] = chunk_latency(model, np.zeros((model.obs_horizon, model.obs_dim)) + model.obs_norm.shift.cpu().numpy(), solver, steps)
        return metrics, res
    maze = get_maze(env)
    if isinstance(model, TrajectoryPlanner):
        agent: Any = _planner_agent(model, cfg, solver, steps, seed, mode, replan_every)
        metrics.update(mode=agent.mode, solver=solver, solver_steps=steps)
    elif isinstance(model, DiffusionPolicy):
        agent = ChunkPolicyAgent(model, solver, steps, seed)
    else:
        agent = BCAgent(model)
    res = run_maze_episodes(maze, agent, episodes, seed, control.start_cells, region=control.forbidden)
    metrics.update(summarize(res))
    if isinstance(agent, PlannerAgent):
        metrics["plan_calls"] = len(agent.plan_seconds)
        metrics["plan_seconds_per_call"] = float(np.mean(agent.plan_seconds))
        res["plans"] = agent.first_plans
    return metrics, res


def _cmd_plan(args: argparse.Namespace) -> int:
    from sciffusion.domain import load_run

    run = load_run(args.run_dir, device=args.device)
    if run.config.domain != "control":
        raise DomainError(f"{args.run_dir} is a '{run.config.domain}' run; 'plan' needs a control planner run")
    task: TaskConfig = run.config.section("task")
    if task.kind != "planner":
        raise DomainError(f"{args.run_dir} trains a '{task.kind}'; 'plan' needs a planner (use 'sciffusion evaluate')")
    if run.config.data.env in OGBENCH_DATASETS:
        return _plan_ogbench(run, args)
    if args.task is not None or args.no_waypoints:
        raise ControlConfigError("--task and --no-waypoints apply to OGBench runs only")
    if args.env is not None:
        get_maze(args.env)
        if args.env != run.config.data.env:
            raise ControlConfigError(f"{args.run_dir} was trained on '{run.config.data.env}', not '{args.env}'")
    control: ControlEval = run.config.section("control")
    episodes = control.episodes if args.episodes is None else args.episodes
    seed = control.seed if args.seed is None else args.seed
    out = run.output_dir(args, "plans")
    render = check_file(args.render, "--render", (".gif",)) if args.render else None
    targets = [out / "paths.png", out / "plan_metrics.json"] + ([render] if render is not None else [])
    metrics, res = evaluate_run(run.model, run.config, episodes, seed, args.solver, args.steps, args.mode, args.replan_every)
    maze = get_maze(run.config.data.env)
    metrics["step"] = run.step
    with publish_together(targets) as temps:
        plot_maze_paths(maze, res["paths"], res.get("plans"), res["goals"], temps[0], res["success"], control.forbidden)
        write_json_atomic(temps[1], metrics)
        if render is not None:
            plans = res.get("plans")
            maze_rollout_gif(maze, res["paths"][0], None if plans is None else plans[0], res["goals"][0], temps[2],
                             region=control.forbidden)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'paths.png'}" + (f" and {args.render}" if args.render else ""))
    return 0


def _evaluate_ogbench(run: Run, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """OGBench evaluation of a run (planner or GCBC): metrics + ``paths.png`` under ``out``."""
    from .ogbench_eval import evaluate_model, parse_tasks, plot_paths

    metrics, raw, agent = evaluate_model(run.model, run.config, parse_tasks(getattr(args, "task", None)),
                                         getattr(args, "episodes", None), getattr(args, "seed", None),
                                         getattr(args, "solver", None), getattr(args, "steps", None),
                                         False if getattr(args, "no_waypoints", False) else None)
    metrics["paths_plot"] = str(plot_paths(metrics["env"], raw, out / "paths.png"))
    metrics["step"] = run.step
    return metrics


def _plan_ogbench(run: Run, args: argparse.Namespace) -> int:
    """``sciffusion plan`` on an OGBench run: the evaluation tasks, ``paths.png``, ``plan_metrics.json``, a GIF."""
    from .ogbench_env import check_env_id, dataset_spec
    from .ogbench_eval import evaluate_model, parse_tasks, plot_paths, rollout_gif

    env_id = dataset_spec(run.config.data.env).env_id
    if args.env is not None and check_env_id(args.env) != env_id:
        raise ControlConfigError(f"{args.run_dir} was trained on '{run.config.data.env}' ({env_id}), not '{args.env}'")
    tasks = parse_tasks(args.task)
    out = run.output_dir(args, "plans")
    render = check_file(args.render, "--render", (".gif",)) if args.render else None
    targets = [out / "paths.png", out / "plan_metrics.json"] + ([render] if render is not None else [])
    metrics, raw, _ = evaluate_model(run.model, run.config, tasks, args.episodes, args.seed, args.solver, args.steps,
                                     False if args.no_waypoints else None)
    metrics["step"] = run.step
    with publish_together(targets) as temps:
        plot_paths(env_id, raw, temps[0])
        write_json_atomic(temps[1], metrics)
        if render is not None:
            first = raw[next(iter(raw))]
            end = int(first["steps"][0]) + 1
            rollout_gif(env_id, first["paths"][0, :end], first["goals"][0], temps[2],
                        None if first.get("plans") is None else first["plans"][0])
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'paths.png'}" + (f" and {args.render}" if args.render else ""))
    return 0


__all__ = ["ControlDomain", "evaluate_run", "maze_data", "trajectory_spec", "write_gif"]
