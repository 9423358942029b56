"""OGBench point-maze evaluation (the paper's protocol), its agents, training set-up and pictures.

Protocol: the maze's five evaluation tasks (``env.unwrapped.task_infos``), ``episodes`` episodes each,
reset with ``options={"task_id": t}``; the registered 1,000-step time limit; the episode ends at success
(the agent within 1.0 of the goal; ``terminate_at_goal``); success per task is the fraction of its
episodes that succeeded and the overall score is the mean over tasks. Episode ``i`` of task ``t`` seeds
numpy's global generator (the package draws start and goal noise from it) and the env reset with
``seed + 1000 * t + i``, so a seed fixes the whole evaluation. All episodes of one task run in lockstep,
so a planner plans for all of them in one batched call.

Agents (``reset(states (B, 2), goals (B, 2))``, ``act(states (B, 2), step) -> actions (B, 2)``):

* :class:`OracleAgent`: OGBench's BFS oracle without action noise;
* :class:`~sciffusion.domains.control.evaluation.BCAgent`: goal-conditioned BC (``(x, y, goal) -> action``);
* :class:`OGBenchPlannerAgent`: the diffusion planner (start and goal, or a waypoint, pinned by
  inpainting), receding-horizon replanning, and :class:`PursuitTracker` following the plan.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sciffusion.config import Config, FieldError
from sciffusion.domain import TrainSetup
from sciffusion.train.checkpoint import atomic_path

from .datasets import MazeDataset
from .evaluation import BCAgent, MazeAgent
from .maze import ControlConfigError
from .ogbench_data import FutureGoalPairs, OGBenchData, default_cache, load_dataset, load_or_generate
from .ogbench_env import GOAL_TOL, N_TASKS, STEP_SIZE, BFSOracle, dataset_spec, make_env
from .planning import MLPPolicy, TrajectoryPlanner
from .plots import write_gif
from .trajectory import fit_normalizer
from .waypoints import StateGraph


@dataclass
class OGBenchEval:
    """The ``ogbench`` config section: data generation size and closed-loop settings on OGBench mazes.

    Attributes:
        generate_episodes: training episodes to generate (null: OGBench's 1000 navigate / 5000 stitch).
        tasks: evaluation tasks (1-5).
        episodes: episodes per task (OGBench: 50).
        seed: evaluation seed (see the module docstring).
        replan_every: environment steps between plans (receding horizon).
        waypoints: compose short plans through waypoints on the data's state graph; false: every plan is
            pinned to the goal itself.
        reach: largest graph distance from the agent to the waypoint handed to the planner; ``data``: the median
            graph distance the training data covers in one plan's span (:meth:`StateGraph.typical_distance`).
        graph_cell, graph_link_steps: state-graph bin side and link gap (see :class:`StateGraph`).
        lookahead: distance along the plan the tracker aims at.
    """

    generate_episodes: int | None = None
    tasks: list[int] = field(default_factory=lambda: list(range(1, N_TASKS + 1)))
    episodes: int = 50
    seed: int = 0
    replan_every: int = 16
    waypoints: bool = True
    reach: float | Literal["data"] = 6.0
    graph_cell: float = 1.0
    graph_link_steps: int = 5
    lookahead: float = 1.0

    def __post_init__(self) -> None:
        check_tasks(self.tasks)
        for key in ("episodes", "replan_every", "graph_link_steps"):
            if getattr(self, key) < 1:
                raise FieldError(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("reach", "graph_cell", "lookahead"):
            if getattr(self, key) != "data" and getattr(self, key) <= 0:
                raise FieldError(key, f"must be > 0, got {getattr(self, key)}")
        if self.generate_episodes is not None and self.generate_episodes < 1:
            raise FieldError("generate_episodes", f"must be >= 1, got {self.generate_episodes}")


def check_tasks(tasks: list[int]) -> list[int]:
    """``tasks`` if every one is in 1-5 (and there is at least one), else a :class:`ControlConfigError`."""
    bad = [t for t in tasks if not 1 <= int(t) <= N_TASKS]
    if bad or not tasks:
        raise ControlConfigError(f"OGBench tasks are 1-{N_TASKS}, got {bad or 'none'}")
    return [int(t) for t in tasks]


# ------------------------------------------------------------------------------------ data and training


def run_data(cfg: Config, progress: bool = False) -> OGBenchData:
    """The training split a config names: ``data.path`` (an OGBench ``.npz``) or generated into ``data.cache``."""
    name = cfg.data.env
    if cfg.data.path is not None:
        return load_dataset(cfg.data.path, name)
    episodes = cfg.section("ogbench").generate_episodes
    folder = cfg.data.cache or default_cache(name, cfg.data.generate_seed, episodes)
    return load_or_generate(name, folder, cfg.data.generate_seed, episodes, progress)


def ogbench_setup(cfg: Config, model: torch.nn.Module, windows_cls: type) -> TrainSetup:
    """Training set-up on an OGBench data set: planner windows (``windows_cls``, the domain's
    ``PlannerWindows``) for a planner, future-goal pairs for GCBC. Normalisers are fitted on the data."""
    from sciffusion.train.logs import stderr_is_terminal

    data = run_data(cfg, progress=stderr_is_terminal())
    kind = cfg.data.normalizer
    if isinstance(model, TrajectoryPlanner):
        spec = model.spec
        longest = int(np.max(np.diff(np.concatenate([[0], data.episode_ends]))))
        if spec.span > longest:
            raise ControlConfigError(f"task.horizon x task.stride spans {spec.span} steps, longer than the data's "
                                     f"episodes ({longest} steps)")
        n = len(data.observations)
        maze_data = MazeDataset(data.observations, data.actions, np.zeros((n, 2)), np.zeros(n), data.episode_ends,
                                np.zeros(len(data.episode_ends), bool), data.settings)
        norm = fit_normalizer(kind, data.observations)
        model.norm.load(norm)
        action_norm = fit_normalizer(kind, data.actions)
        return TrainSetup(model=model, dataset=windows_cls(maze_data, spec, norm, action_norm, cfg.section("task")))
    if not isinstance(model, MLPPolicy):
        raise ControlConfigError("OGBench data trains task.kind 'planner' or 'bc'")
    goal_obs = np.concatenate([data.observations, data.observations], axis=1)
    obs_norm, action_norm = fit_normalizer(kind, goal_obs), fit_normalizer(kind, data.actions)
    model.obs_norm.load(obs_norm)
    model.action_norm.load(action_norm)
    return TrainSetup(model=model, dataset=FutureGoalPairs(data, obs_norm, action_norm))


# ------------------------------------------------------------------------------------ agents


class OracleAgent:
    """OGBench's scripted BFS oracle, noise-free: the unit direction to the next cell on a shortest path."""

    def __init__(self, oracle: BFSOracle) -> None:
        self.oracle = oracle
        self.goals = np.zeros((0, 2))

    def reset(self, states: np.ndarray, goals: np.ndarray) -> None:
        self.goals = goals.copy()

    def act(self, states: np.ndarray, step: int) -> np.ndarray:
        return np.stack([self.oracle.direction(s, g) for s, g in zip(states, self.goals)])


class PursuitTracker:
    """Follows plans ``(B, H, 2)`` of positions with the point agent (an action moves it by ``0.2 * action``).

    Each agent keeps a progress token (never decreasing); every step it moves to the nearest plan token
    at or after it, aims at the first later token at least ``lookahead`` away (or the last token) and
    moves straight at it, at full speed unless the aim point is closer than one step.
    """

    def __init__(self, lookahead: float) -> None:
        self.lookahead = lookahead
        self.plans = np.zeros((0, 1, 2))
        self.progress = np.zeros(0, dtype=np.int64)

    def set_plans(self, plans: np.ndarray) -> None:
        self.plans = np.asarray(plans, dtype=np.float64)[..., :2]
        self.progress = np.zeros(len(plans), dtype=np.int64)

    def act(self, states: np.ndarray) -> np.ndarray:
        """Actions ``(B, 2)`` in [-1, 1] for positions ``(B, 2)``."""
        b, h, _ = self.plans.shape
        d = np.linalg.norm(self.plans - states[:, None, :2], axis=-1)  # (B, H)
        tokens = np.arange(h)[None]
        masked = np.where(tokens >= self.progress[:, None], d, np.inf)
        self.progress = np.argmin(masked, axis=1)
        far = (tokens > self.progress[:, None]) & (d >= self.lookahead)
        aim = np.where(far.any(axis=1), np.argmax(far, axis=1), h - 1)
        offset = self.plans[np.arange(b), aim] - states[:, :2]
        dist = np.linalg.norm(offset, axis=1, keepdims=True)
        return np.clip(offset / np.maximum(dist, STEP_SIZE), -1.0, 1.0)


@dataclass
class OGBenchPlannerAgent:
    """Diffusion planner + pursuit tracker with receding-horizon replanning, optionally through waypoints.

    Args:
        planner: trained planner over positions ``(B, H, 2)``.
        tracker: follows the current plans.
        replan_every: environment steps between plans.
        graph: waypoint graph (None: every plan is pinned to the goal itself).
        reach: waypoint distance along the graph.
        solver, steps: core solver and its steps.
        clip_x0: clamp predicted clean plans (1 for ``limits``-normalised data), or None.
        seed: seeds the sampling noise.
    """

    planner: TrajectoryPlanner
    tracker: PursuitTracker
    replan_every: int = 16
    graph: StateGraph | None = None
    reach: float = 6.0
    solver: str = "dpmpp_2m"
    steps: int = 16
    clip_x0: float | None = 1.0
    seed: int = 0
    plan_seconds: list[float] = field(default_factory=list)
    first_plans: np.ndarray | None = None
    goals: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def plan(self, states: np.ndarray) -> np.ndarray:
        """Plans ``(B, H, 2)`` from ``states`` to the goals (or their waypoints)."""
        assert self.goals is not None
        targets = self.goals if self.graph is None else self.graph.waypoints(states, self.goals, self.reach)
        t0 = time.perf_counter()
        plans = self.planner.plan(torch.as_tensor(states, dtype=torch.float32), torch.as_tensor(targets, dtype=torch.float32),
                                  solver=self.solver, steps=self.steps, generator=self.generator, clip_x0=self.clip_x0)
        self.plan_seconds.append(time.perf_counter() - t0)
        return plans.cpu().numpy().astype(np.float64)

    def reset(self, states: np.ndarray, goals: np.ndarray) -> None:
        self.goals = goals.copy()
        plans = self.plan(states)
        self.first_plans = plans
        self.tracker.set_plans(plans)

    def act(self, states: np.ndarray, step: int) -> np.ndarray:
        if step > 0 and step % self.replan_every == 0:
            self.tracker.set_plans(self.plan(states))
        return self.tracker.act(states)


def planner_agent(planner: TrajectoryPlanner, ev: OGBenchEval, data: OGBenchData | None, solver: str, steps: int,
                  clip_x0: float | None, waypoints: bool | None = None) -> OGBenchPlannerAgent:
    """The planner agent a config describes; ``waypoints`` overrides ``ev.waypoints`` (the graph needs ``data``)."""
    use_graph = ev.waypoints if waypoints is None else waypoints
    graph = StateGraph(data.observations, data.episode_ends, ev.graph_cell, ev.graph_link_steps) if use_graph and data else None
    reach = ev.reach
    if reach == "data":  # without a graph there are no waypoints and the reach is unused
        reach = (graph.typical_distance(data.observations, data.episode_ends, planner.spec.span, seed=ev.seed)
                 if graph is not None else float("nan"))
    return OGBenchPlannerAgent(planner, PursuitTracker(ev.lookahead), ev.replan_every, graph, float(reach), solver, steps,
                               clip_x0, ev.seed)


# ------------------------------------------------------------------------------------ evaluation


def episode_seed(seed: int, task: int, episode: int) -> int:
    """Seed of episode ``episode`` of task ``task``."""
    return seed + 1000 * task + episode


def run_task(env_id: str, agent: MazeAgent, task: int, episodes: int, seed: int) -> dict[str, Any]:
    """Run ``episodes`` episodes of evaluation task ``task`` in lockstep.

    Returns ``success`` ``(B,)`` bool, ``steps`` ``(B,)`` (steps taken; the episode ends at success or
    after 1,000), ``paths`` ``(B, T + 1, 2)`` (the last position repeated after the end), ``goals`` ``(B, 2)``;
    :func:`evaluate_tasks` adds a planner's first plans ``(B, H, 2)`` as ``plans``.
    """
    check_tasks([task])
    envs = [make_env(env_id) for _ in range(episodes)]
    states, goals = np.zeros((episodes, 2)), np.zeros((episodes, 2))
    saved = np.random.get_state()
    try:
        for i, env in enumerate(envs):
            s = episode_seed(seed, task, i)
            np.random.seed(s)
            ob, info = env.reset(seed=s, options={"task_id": task})
            states[i], goals[i] = ob, info["goal"]
    finally:
        np.random.set_state(saved)
    limit = envs[0].spec.max_episode_steps
    paths = [states.copy()]
    active = np.ones(episodes, bool)
    success = np.zeros(episodes, bool)
    steps = np.zeros(episodes, np.int64)
    agent.reset(states.copy(), goals)
    for k in range(limit):
        actions = agent.act(states.copy(), k)
        for i in np.nonzero(active)[0]:
            ob, _, terminated, truncated, info = envs[i].step(actions[i])
            states[i] = ob
            steps[i] += 1
            if info["success"]:
                success[i] = True
            if terminated or truncated:
                active[i] = False
        paths.append(states.copy())
        if not active.any():
            break
    for env in envs:
        env.close()
    return {"success": success, "steps": steps, "paths": np.stack(paths, axis=1), "goals": goals}


def evaluate_tasks(env_id: str, agent: MazeAgent, tasks: list[int], episodes: int, seed: int) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Every task in ``tasks``: (metrics, raw results per task). Metrics hold ``success_per_task``,
    ``success`` (mean over tasks), mean steps of successful episodes and the wall time."""
    t0 = time.perf_counter()
    raw = {}
    for t in check_tasks(tasks):
        raw[t] = run_task(env_id, agent, t, episodes, seed)
        if isinstance(agent, OGBenchPlannerAgent):
            raw[t]["plans"] = agent.first_plans
    per_task = {f"task{t}": float(np.mean(r["success"])) for t, r in raw.items()}
    steps_ok = [int(s) for r in raw.values() for s, ok in zip(r["steps"], r["success"]) if ok]
    metrics = {"env": env_id, "tasks": list(raw), "episodes_per_task": episodes, "seed": seed,
               "success": float(np.mean(list(per_task.values()))), "success_per_task": per_task,
               "mean_steps_successful": float(np.mean(steps_ok)) if steps_ok else None,
               "wall_seconds": round(time.perf_counter() - t0, 1)}
    if isinstance(agent, OGBenchPlannerAgent):
        metrics.update(plan_calls=len(agent.plan_seconds), plan_seconds_per_call=float(np.mean(agent.plan_seconds)),
                       waypoints=agent.graph is not None, solver=agent.solver, solver_steps=agent.steps)
    return metrics, raw


def oracle_agent(env_id: str) -> OracleAgent:
    """The noise-free BFS oracle on ``env_id``'s maze."""
    return OracleAgent(BFSOracle(make_env(env_id).unwrapped))


# ------------------------------------------------------------------------------------ pictures


def _draw(ax: Any, maze_map: np.ndarray) -> None:
    from matplotlib.patches import Rectangle

    for i, j in zip(*np.nonzero(maze_map)):
        ax.add_patch(Rectangle((4 * j - 6, 4 * i - 6), 4, 4, color="#8c6d4f", lw=0))
    ax.set_xlim(-6, 4 * maze_map.shape[1] - 6)
    ax.set_ylim(-6, 4 * maze_map.shape[0] - 6)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_paths(env_id: str, raw: dict[int, dict[str, Any]], out: str | Path, per_task: int = 3) -> Path:
    """Executed paths (solid; green reached, red missed), first plans (dashed, ``raw[t]["plans"]`` when
    present), starts and goals on the maze map, one panel per task with ``per_task`` episodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maze_map = make_env(env_id).unwrapped.maze_map
    tasks = list(raw)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.6 * maze_map.shape[0] / maze_map.shape[1] + 0.4),
                             squeeze=False)
    for ax, t in zip(axes[0], tasks):
        _draw(ax, maze_map)
        r = raw[t]
        for k in range(min(per_task, len(r["paths"]))):
            end = int(r["steps"][k]) + 1
            if r.get("plans") is not None:
                ax.plot(r["plans"][k, :, 0], r["plans"][k, :, 1], "--", color="#1f77b4", lw=1)
            ax.plot(r["paths"][k, :end, 0], r["paths"][k, :end, 1], "-", lw=1.2,
                    color="#2ca02c" if r["success"][k] else "#d62728")
            ax.plot(*r["paths"][k, 0], "o", color="black", ms=4)
            ax.plot(*r["goals"][k], "*", color="#d62728", ms=10)
        ax.set_title(f"task {t}: {np.mean(r['success']):.2f}", fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def rollout_gif(env_id: str, path: np.ndarray, goal: np.ndarray, out: str | Path, plan: np.ndarray | None = None,
                every: int = 10) -> Path:
    """Animated GIF of one episode: positions ``(T + 1, 2)`` moving on the maze map toward ``goal`` ``(2,)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    maze_map = make_env(env_id).unwrapped.maze_map
    fig, ax = plt.subplots(figsize=(4, 4 * maze_map.shape[0] / maze_map.shape[1]))
    frames = []
    for k in list(range(0, len(path), every)) + [len(path) - 1]:
        ax.clear()
        _draw(ax, maze_map)
        ax.add_patch(Circle(goal, GOAL_TOL, color="#d62728", alpha=0.3, lw=0))
        if plan is not None:
            ax.plot(plan[:, 0], plan[:, 1], "--", color="#1f77b4", lw=1)
        ax.plot(path[: k + 1, 0], path[: k + 1, 1], "-", color="#2ca02c", lw=1.2)
        ax.plot(*path[k], "o", color="#2ca02c", ms=6)
        ax.set_title(f"step {k}", fontsize=8)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return write_gif(frames, out, fps=20)


# ------------------------------------------------------------------------------------ runs and commands


def evaluate_model(model: torch.nn.Module, cfg: Config, tasks: list[int] | None = None, episodes: int | None = None,
                   seed: int | None = None, solver: str | None = None, steps: int | None = None,
                   waypoints: bool | None = None) -> tuple[dict[str, Any], dict[int, dict[str, Any]], OGBenchPlannerAgent | None]:
    """OGBench evaluation of a trained planner or GCBC policy; ``None`` arguments take the config's values.
    Returns (metrics, raw results per task, the planner agent or None)."""
    from sciffusion.registry import SOLVERS

    ev: OGBenchEval = cfg.section("ogbench")
    env_id = dataset_spec(cfg.data.env).env_id
    tasks = check_tasks(ev.tasks if tasks is None else tasks)
    episodes = ev.episodes if episodes is None else episodes
    if episodes < 1:
        raise ControlConfigError(f"episodes must be >= 1, got {episodes}")
    seed = ev.seed if seed is None else seed
    if isinstance(model, TrajectoryPlanner):
        solver = cfg.sample.solver if solver is None else solver
        SOLVERS.get(solver)
        use_graph = ev.waypoints if waypoints is None else waypoints
        agent: Any = planner_agent(model, ev, run_data(cfg) if use_graph else None, solver,
                                   cfg.sample.steps if steps is None else steps,
                                   1.0 if cfg.data.normalizer == "limits" else None, use_graph)
    elif isinstance(model, MLPPolicy):
        agent = BCAgent(model)
    else:
        raise ControlConfigError("OGBench evaluation needs a planner or a bc run")
    metrics, raw = evaluate_tasks(env_id, agent, tasks, episodes, seed)
    metrics["method"] = "planner" if isinstance(model, TrajectoryPlanner) else "gcbc"
    if isinstance(agent, OGBenchPlannerAgent) and agent.graph is not None:
        metrics["reach"] = agent.reach
    return metrics, raw, agent if isinstance(agent, OGBenchPlannerAgent) else None


def parse_tasks(text: str | None) -> list[int] | None:
    """``--task``: ``3``, ``1,4`` or ``1..5`` (None: the config's tasks); each in 1-5."""
    if text is None:
        return None
    try:
        if ".." in text:
            lo, hi = (int(v) for v in text.split(".."))
            tasks = list(range(lo, hi + 1))
        else:
            tasks = [int(v) for v in text.split(",")]
    except ValueError:
        raise ControlConfigError(f"--task takes a task number 1-{N_TASKS}, a list '1,3' or a range '1..5', got '{text}'") from None
    return check_tasks(tasks)


def add_data_command(subparsers: Any) -> None:
    """``sciffusion ogbench-data NAME --out DIR``: generate an OGBench point-maze data set offline."""
    from sciffusion.cli import positive_int

    p = subparsers.add_parser("ogbench-data", help="generate an OGBench point-maze data set offline (control domain)",
                              description="Generate <NAME>.npz and <NAME>-val.npz in OGBench's layout with the oracle of "
                                          "OGBench's generate_locomaze.py, plus <NAME>.json with the settings.")
    p.add_argument("name", help="data set, e.g. pointmaze-large-stitch-v0")
    p.add_argument("--out", default="data_cache/ogbench", help="output folder (default data_cache/ogbench)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=positive_int, help="training episodes (default OGBench's: 1000 navigate, 5000 stitch)")
    p.set_defaults(func=_cmd_data)


def _cmd_data(args: Any) -> int:
    from sciffusion.train.logs import stderr_is_terminal

    from .ogbench_data import generate_dataset, save_dataset

    dataset_spec(args.name)
    train, val, settings = generate_dataset(args.name, args.seed, args.episodes, progress=stderr_is_terminal())
    path = save_dataset(args.out, args.name, train, val, settings)
    print(f"wrote {path} ({len(train['observations'])} steps) and its -val split ({len(val['observations'])} steps)")
    return 0
