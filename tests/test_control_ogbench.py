"""OGBench point mazes: offline data generation in OGBench's layout, the evaluation protocol, bad inputs,
and a tiny train + plan end to end on pointmaze-medium-stitch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ogbench")

from sciffusion.cli import main as cli_main
from sciffusion.config import config_from_dict
from sciffusion.domain import load_run
from sciffusion.domains.control.maze import ControlConfigError
from sciffusion.domains.control.ogbench_data import (
    FutureGoalPairs,
    OGBenchData,
    check_dataset_file,
    generate_dataset,
    load_dataset,
    save_dataset,
)
from sciffusion.domains.control.ogbench_env import (
    BFSOracle,
    cells_at_distance,
    dataset_spec,
    make_env,
    maze_cells,
    task_infos,
)
from sciffusion.domains.control.ogbench_eval import (
    PursuitTracker,
    evaluate_model,
    oracle_agent,
    parse_tasks,
    run_task,
)
from sciffusion.domains.control.planning import MLPPolicy, TrajectoryPlanner
from sciffusion.domains.control.trajectory import fit_normalizer
from sciffusion.domains.control.waypoints import StateGraph
from sciffusion.train.trainer import train

MEDIUM_STITCH = "pointmaze-medium-stitch-v0"


@pytest.fixture(scope="module")
def stitch_files(tmp_path_factory) -> Path:
    """12 training + 1 validation stitch episodes on the medium maze, saved in OGBench's layout."""
    folder = tmp_path_factory.mktemp("ogbench_data")
    train_arrays, val_arrays, settings = generate_dataset(MEDIUM_STITCH, seed=3, episodes=12)
    return save_dataset(folder, MEDIUM_STITCH, train_arrays, val_arrays, settings)


def test_generator_layout_and_episode_structure(stitch_files: Path) -> None:
    with np.load(stitch_files) as f:
        arrays = {k: f[k] for k in f.files}
    assert sorted(arrays) == ["actions", "observations", "qpos", "qvel", "terminals"]
    assert arrays["observations"].shape == (12 * 201, 2) and arrays["observations"].dtype == np.float32
    assert arrays["actions"].shape == (12 * 201, 2) and arrays["terminals"].dtype == bool
    # terminals: True exactly on the last step of every 201-step episode (truncated, never terminated)
    np.testing.assert_array_equal(np.nonzero(arrays["terminals"])[0], np.arange(1, 13) * 201 - 1)
    # the point's observation is its position: qpos before the step; actions in [-1, 1] move it <= 0.2 per axis
    np.testing.assert_allclose(arrays["qpos"], arrays["observations"], atol=1e-6)
    assert np.abs(arrays["actions"]).max() <= 1.0
    steps = np.abs(np.diff(arrays["observations"], axis=0))[~arrays["terminals"][:-1]]
    assert steps.max() <= 0.2 + 1e-4
    with np.load(str(stitch_files).replace(".npz", "-val.npz")) as f:
        assert f["observations"].shape == (201, 2)  # num_episodes // 10 validation episodes
    settings = json.loads(stitch_files.with_suffix(".json").read_text())
    assert settings["noise"] == 0.5 and settings["max_episode_steps"] == 201 and settings["num_episodes"] == 12


def test_stitch_goals_are_four_cells_away(stitch_files: Path) -> None:
    env = make_env("pointmaze-medium-v0").unwrapped
    with np.load(stitch_files) as f:
        obs = f["observations"].reshape(12, 201, 2)
    hits = 0
    for ep in obs:
        start, end = env.xy_to_ij(ep[0]), env.xy_to_ij(ep[-1])
        hits += end in cells_at_distance(env.maze_map, start, 4)
    assert hits >= 10  # the noisy agent ends in (or at the edge of) its goal cell, 4 BFS moves from the start


def test_generation_is_deterministic_and_navigate_episodes_are_long() -> None:
    a, _, _ = generate_dataset("pointmaze-large-navigate-v0", seed=1, episodes=1)
    b, _, _ = generate_dataset("pointmaze-large-navigate-v0", seed=1, episodes=1)
    assert a["observations"].shape == (1001, 2)
    np.testing.assert_array_equal(a["observations"], b["observations"])
    assert dataset_spec("pointmaze-giant-navigate-v0").episodes == 1000
    assert (dataset_spec(MEDIUM_STITCH).episodes, dataset_spec(MEDIUM_STITCH).episode_steps) == (5000, 201)


def test_vertex_cells_exclude_hallways() -> None:
    maze_map = make_env("pointmaze-medium-v0").unwrapped.maze_map
    free, vertex = maze_cells(maze_map)
    assert len(free) == 26 and (3, 3) in free
    assert (3, 3) not in vertex  # free left and right, walls above and below: a hallway
    assert (1, 1) in vertex and len(vertex) < len(free)


def test_loader_goes_through_ogbench(stitch_files: Path) -> None:
    data = load_dataset(stitch_files, MEDIUM_STITCH)
    assert data.observations.shape == (12 * 201, 2)
    np.testing.assert_array_equal(data.episode_ends, np.arange(1, 13) * 201)
    assert data.settings["dataset"] == MEDIUM_STITCH


def test_mismatched_data_files_are_refused(tmp_path: Path, stitch_files: Path) -> None:
    bad = tmp_path / "ant.npz"
    np.savez(bad, observations=np.zeros((10, 29), np.float32), actions=np.zeros((10, 8), np.float32),
             terminals=np.ones(10, bool))
    with pytest.raises(ControlConfigError, match="do not match pointmaze-medium-v0"):
        check_dataset_file(bad, MEDIUM_STITCH)
    with np.load(stitch_files) as f:
        arrays = {k: f[k] for k in f.files}
    far = tmp_path / "far.npz"
    np.savez(far, **{**arrays, "observations": arrays["observations"] + 40.0})
    with pytest.raises(ControlConfigError, match="leave the medium maze"):
        check_dataset_file(far, MEDIUM_STITCH)
    with pytest.raises(ControlConfigError, match="unknown OGBench data set"):
        dataset_spec("pointmaze-huge-stitch-v0")


def test_tasks_match_the_package() -> None:
    infos = task_infos("pointmaze-large-v0")
    assert [(t["init_ij"], t["goal_ij"]) for t in infos] == [((1, 1), (7, 10)), ((5, 4), (7, 1)), ((7, 4), (1, 10)),
                                                             ((3, 8), (5, 4)), ((1, 1), (5, 4))]
    agent = oracle_agent("pointmaze-large-v0")
    res = run_task("pointmaze-large-v0", agent, 2, episodes=4, seed=0)
    init, goal = np.array(infos[1]["init_xy"]), np.array(infos[1]["goal_xy"])
    assert np.abs(res["paths"][:, 0] - init).max() <= 1.0 and np.abs(res["goals"] - goal).max() <= 1.0
    again = run_task("pointmaze-large-v0", agent, 2, episodes=4, seed=0)
    np.testing.assert_array_equal(res["goals"], again["goals"])  # fixed seeds


def test_success_rule_and_episode_end() -> None:
    env = make_env("pointmaze-medium-v0")
    env.reset(seed=0, options={"task_id": 1})
    goal = np.array([20.0, 20.0])  # the centre of the goal cell (6, 6): 2.0 from the walls
    env.unwrapped.set_goal(goal_xy=goal)
    env.unwrapped.set_xy(goal + np.array([0.95, 0.0]))
    _, reward, terminated, _, info = env.step(np.zeros(2))
    assert info["success"] == 1.0 and terminated and reward == 1.0
    env.unwrapped.set_xy(goal + np.array([1.05, 0.0]))
    _, _, terminated, _, info = env.step(np.zeros(2))
    assert info["success"] == 0.0 and not terminated
    # in the evaluation loop an episode stops at success: its last position is within 1.0 of the goal
    res = run_task("pointmaze-medium-v0", oracle_agent("pointmaze-medium-v0"), 1, episodes=3, seed=0)
    for k in range(3):
        end = res["paths"][k, res["steps"][k]]
        assert res["success"][k] == (np.linalg.norm(end - res["goals"][k]) <= 1.0)
        assert res["success"][k] or res["steps"][k] == 1000


def test_oracle_solves_each_task_in_most_episodes() -> None:
    agent = oracle_agent("pointmaze-medium-v0")
    for task in range(1, 6):
        res = run_task("pointmaze-medium-v0", agent, task, episodes=10, seed=0)
        assert res["success"].mean() >= 0.7, task


def test_oracle_direction_is_a_unit_vector_to_the_next_cell() -> None:
    env = make_env("pointmaze-medium-v0").unwrapped
    oracle = BFSOracle(env)
    d = oracle.direction(np.array([0.0, 0.0]), np.array([20.0, 20.0]))  # cell (1, 1) -> (6, 6): next is (2, 1)
    np.testing.assert_allclose(d, [0.0, 1.0], atol=1e-6)


def test_task_parsing() -> None:
    assert parse_tasks("1..5") == [1, 2, 3, 4, 5] and parse_tasks("2,4") == [2, 4] and parse_tasks(None) is None
    for bad in ("0", "6", "1..7", "x"):
        with pytest.raises(ControlConfigError):
            parse_tasks(bad)


def test_state_graph_waypoints_follow_the_data() -> None:
    # an L-shaped corridor walked by one episode: (0,0) -> (10,0) -> (10,10)
    leg1 = np.stack([np.linspace(0, 10, 51), np.zeros(51)], axis=1)
    leg2 = np.stack([np.full(50, 10.0), np.linspace(0.2, 10, 50)], axis=1)
    obs = np.concatenate([leg1, leg2])
    graph = StateGraph(obs, np.array([len(obs)]), cell=1.0, link_steps=5)
    w = graph.waypoints(np.array([[0.1, 0.1]]), np.array([[10.0, 10.0]]), reach=6.0)[0]
    assert abs(w[1]) < 1.0 and 4.5 <= w[0] <= 7.0  # along the first leg, not straight at the goal
    near = graph.waypoints(np.array([[10.0, 6.0]]), np.array([[10.0, 9.5]]), reach=6.0)[0]
    np.testing.assert_allclose(near, [10.0, 9.5])  # within reach: the goal itself
    # 0.2 per step: 20 steps cover 4 units along the corridor, a corner pair too (graph, not straight-line, distance)
    assert abs(graph.typical_distance(obs, np.array([len(obs)]), span=21) - 4.0) < 0.5
    corner = graph.dist[graph.nearest(np.array([[8.0, 0.0]]))[0], graph.nearest(np.array([[10.0, 2.0]]))[0]]
    assert abs(corner - 4.0) < 0.5
    assert np.isnan(graph.typical_distance(obs, np.array([len(obs)]), span=len(obs) + 1))


def test_pursuit_tracker_moves_at_full_speed_toward_the_plan() -> None:
    tracker = PursuitTracker(lookahead=1.0)
    plan = np.stack([np.linspace(0, 5, 11), np.zeros(11)], axis=1)[None]
    tracker.set_plans(plan)
    a = tracker.act(np.array([[0.0, 0.5]]))
    assert np.linalg.norm(a) == pytest.approx(1.0) and a[0, 0] > 0.8
    tracker.set_plans(np.zeros((1, 4, 2)))
    np.testing.assert_allclose(tracker.act(np.array([[0.1, 0.0]])), [[-0.5, 0.0]])  # slows down on the last token


def test_future_goal_pairs_use_later_states_of_the_same_episode() -> None:
    obs = np.arange(10, dtype=np.float64).repeat(2).reshape(10, 2)  # two 5-step episodes
    data = OGBenchData(obs, np.zeros((10, 2)), np.array([5, 10]), {})
    norm = fit_normalizer("identity", np.concatenate([obs, obs], axis=1))
    pairs = FutureGoalPairs(data, norm, fit_normalizer("identity", np.zeros((10, 2))), repeats=4)
    assert len(pairs) == 8 * 4  # the last state of each episode has no later goal
    for i in range(len(pairs)):
        item = pairs[i]
        state, goal = item["obs"][0], item["obs"][2]
        assert state < goal and (state < 5) == (goal < 5)


# ------------------------------------------------------------------------------------ end to end


def tiny_config(run_dir: Path, cache: Path, **task: object) -> dict:
    return {
        "domain": "control", "seed": 0, "run_dir": str(run_dir),
        "data": {"env": MEDIUM_STITCH, "cache": str(cache), "generate_seed": 2},
        "task": {"kind": "planner", "horizon": 8, "stride": 8, "goal_condition": True, **task},
        "net": {"name": "temporal_unet1d", "dim": 8, "dim_mults": [1, 2]},
        "process": {"name": "vp", "schedule": "cosine", "prediction": "x0", "num_train_steps": 64},
        "trainer": {"max_steps": 30, "batch_size": 16, "lr": 1e-3, "ema_decay": 0.9, "checkpoint_every": 0,
                    "log_every": 10, "progress": False},
        "sample": {"solver": "dpmpp_2m", "steps": 4, "seed": 0},
        "ogbench": {"generate_episodes": 30, "episodes": 2, "replan_every": 50},
    }


@pytest.fixture(scope="module")
def planner_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ogbench_run")
    result = train(config_from_dict(tiny_config(root / "run", root / "data")))
    assert result.step == 30 and np.isfinite(result.loss)
    return root / "run"


def test_tiny_planner_pins_start_and_goal(planner_run: Path) -> None:
    planner = load_run(planner_run).model
    assert isinstance(planner, TrajectoryPlanner) and planner.spec.state_dim == 2
    start, goal = torch.tensor([[0.5, -0.3], [12.0, 8.0]]), torch.tensor([[4.0, 4.0], [16.0, 12.0]])
    plans = planner.plan(start, goal, steps=4, generator=torch.Generator().manual_seed(0), clip_x0=1.0)
    assert plans.shape == (2, 8, 2)
    torch.testing.assert_close(plans[:, 0], start, atol=1e-4, rtol=0)
    torch.testing.assert_close(plans[:, -1], goal, atol=1e-4, rtol=0)


def test_plan_command_end_to_end(planner_run: Path, tmp_path: Path) -> None:
    gif, out = tmp_path / "out.gif", tmp_path / "plans"
    code = cli_main(["plan", str(planner_run), "--env", "pointmaze-medium-v0", "--task", "3", "--episodes", "2",
                     "--render", str(gif), "--out", str(out)])
    assert code == 0 and gif.stat().st_size > 0 and (out / "paths.png").exists()
    metrics = json.loads((out / "plan_metrics.json").read_text())
    assert metrics["tasks"] == [3] and metrics["episodes_per_task"] == 2 and metrics["waypoints"] is True
    assert 0.0 <= metrics["success"] <= 1.0 and metrics["success"] == metrics["success_per_task"]["task3"]
    assert metrics["plan_calls"] >= 1


def test_plan_bad_inputs_exit_2(planner_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv in (["plan", str(planner_run), "--env", "pointmaze-huge-v0"],
                 ["plan", str(planner_run), "--env", "pointmaze-large-v0"],
                 ["plan", str(planner_run), "--task", "6"],
                 ["ogbench-data", "pointmaze-huge-stitch-v0", "--out", str(tmp_path)]):
        capsys.readouterr()
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error" in err, err
    assert not (planner_run / "plans").exists()


def test_training_on_a_mismatched_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "ant.npz"
    np.savez(bad, observations=np.zeros((10, 29), np.float32), actions=np.zeros((10, 8), np.float32),
             terminals=np.ones(10, bool))
    np.savez(tmp_path / "ant-val.npz", observations=np.zeros((10, 29), np.float32))
    cfg = tmp_path / "bad.yaml"
    raw = tiny_config(tmp_path / "run", tmp_path / "cache")
    raw["data"]["path"] = str(bad)
    import yaml

    cfg.write_text(yaml.safe_dump(raw))
    assert cli_main(["train", str(cfg)]) == 2
    assert "do not match pointmaze-medium-v0" in capsys.readouterr().err


def test_gcbc_trains_and_evaluates(tmp_path: Path, planner_run: Path) -> None:
    raw = tiny_config(tmp_path / "gcbc", planner_run.parent / "data", kind="bc", bc_hidden=32)
    cfg = config_from_dict(raw)
    result = train(cfg)
    assert result.step == 30
    run = load_run(tmp_path / "gcbc")
    assert isinstance(run.model, MLPPolicy) and run.model.obs_norm.shift.numel() == 4
    metrics, raw_res, agent = evaluate_model(run.model, run.config, [3], 2, 0)
    assert agent is None and metrics["method"] == "gcbc" and raw_res[3]["paths"].shape[0] == 2


@pytest.mark.slow
def test_benchmark_smoke(tmp_path: Path) -> None:
    """``benchmarks/control_ogbench.py --smoke`` end to end; every bar of the issue is reported."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "control_ogbench.py"), "--smoke", "--datasets",
                           "pointmaze-large-stitch-v0", "--work", str(tmp_path / "work"), "--results-dir", str(tmp_path)],
                          cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = json.loads((tmp_path / "control_ogbench.json").read_text())
    assert [b["name"] for b in out["bars"]] == ["success_large_stitch", "success_giant_stitch", "success_medium_navigate",
                                                "planner_minus_gcbc_large_stitch"]
    row = out["results"]["pointmaze-large-stitch-v0"]
    assert 0.0 <= row["a_planner_waypoints"]["success"] <= 1.0 and len(row["plan_latency_batch1"]) == 4
