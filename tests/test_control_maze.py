"""PointMaze environments, scripted expert, generated data and bad input (control domain)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sciffusion.domains.control.datasets import (
    generate_maze_dataset,
    load_maze_dataset,
    load_pusht,
    save_maze_dataset,
)
from sciffusion.domains.control.evaluation import (
    ExpertAgent,
    run_maze_episodes,
    summarize,
)
from sciffusion.domains.control.maze import MAZES, ControlConfigError, get_maze
from sciffusion.domains.control.pusht import (
    make_pusht_env,
    pusht_features,
    pusht_keypoints,
)

from sciffusion.config import ConfigError, config_from_dict

# far start cells for each maze: the expert must cross the whole maze to the D4RL goal cell
FAR_STARTS = {"pointmaze-umaze": [[3, 1], [3, 3]], "pointmaze-medium": [[1, 1], [1, 6]], "pointmaze-large": [[1, 1], [5, 4]]}
STEPS = {"pointmaze-umaze": 200, "pointmaze-medium": 300, "pointmaze-large": 450}  # enough for the expert to arrive and settle


@pytest.mark.parametrize("name", sorted(MAZES))
def test_scripted_expert_solves_each_maze(name: str) -> None:
    spec = get_maze(name)
    res = run_maze_episodes(spec, ExpertAgent(spec), episodes=2, seed=0, start_cells=FAR_STARTS[name],
                            max_steps=STEPS[name])
    summary = summarize(res)
    assert summary["success_rate"] == 1.0
    # it stays on the goal once there: the final position is within the goal radius
    assert np.all(np.linalg.norm(res["paths"][:, -1, :2] - res["goals"], axis=1) <= 0.45)
    # the path never enters a wall block (ball radius 0.1)
    assert spec.wall_distance(res["paths"][:, :, :2]).min() >= 0.09


def test_maze_geometry_round_trip_and_shortest_path() -> None:
    spec = get_maze("pointmaze-umaze")
    for cell in spec.free_cells:
        assert spec.xy_to_cell(spec.cell_to_xy(cell)) == cell
    assert spec.shortest_path((3, 1), (1, 1)) == [(3, 1), (3, 2), (3, 3), (2, 3), (1, 3), (1, 2), (1, 1)]
    assert spec.normalized_score(spec.ref_max_score) == pytest.approx(100.0)
    assert spec.normalized_score(spec.ref_min_score) == pytest.approx(0.0)


def test_generated_dataset_is_saved_with_its_settings(tmp_path) -> None:
    data = generate_maze_dataset("pointmaze-umaze", 1500, seed=3)
    npz, meta = save_maze_dataset(data, tmp_path / "umaze")
    settings = json.loads(meta.read_text())
    assert settings["env"] == "pointmaze-umaze" and settings["n_steps"] == 1500 and settings["seed"] == 3
    assert settings["expert"]["action_noise"] > 0 and settings["expert"]["waypoint_jitter"] > 0
    back = load_maze_dataset(npz, "pointmaze-umaze")
    np.testing.assert_allclose(back.observations, data.observations, atol=1e-5)
    assert back.episode_ends[-1] == 1500 and back.terminals.mean() > 0.5
    # rewards are 1 exactly where the next position is within 0.45 m of the segment goal
    nxt = np.concatenate([back.observations[1:, :2], back.observations[-1:, :2]])
    inside = np.linalg.norm(nxt - back.goals, axis=1) <= 0.45
    ends = back.episode_ends - 1
    keep = np.ones(1500, bool)
    keep[ends] = False  # the next observation after a segment end belongs to the next segment
    assert (back.rewards[keep] == inside[keep]).mean() > 0.99
    # same seed, same data
    again = generate_maze_dataset("pointmaze-umaze", 1500, seed=3)
    np.testing.assert_array_equal(again.actions, data.actions)
    with pytest.raises(ControlConfigError, match="generated for 'pointmaze-umaze'"):
        load_maze_dataset(npz, "pointmaze-medium")


def test_bad_input_gives_clear_errors(tmp_path) -> None:
    with pytest.raises(ControlConfigError, match="unknown environment 'pointmaze-huge'"):
        get_maze("pointmaze-huge")
    with pytest.raises(ConfigError, match="'data.env'.*unknown environment"):
        config_from_dict({"domain": "control", "data": {"env": "cartpole"}})
    bad = tmp_path / "bad.npz"
    np.savez(bad, observations=np.zeros((10, 3)), actions=np.zeros((10, 2)), goals=np.zeros((10, 2)),
             rewards=np.zeros(10), episode_ends=np.array([10]), terminals=np.array([False]))
    with pytest.raises(ControlConfigError, match=r"'observations' must be \(N, 4\)"):
        load_maze_dataset(bad)
    pusht = tmp_path / "pusht.npz"
    np.savez(pusht, state=np.zeros((10, 4)), action=np.zeros((10, 2)), episode_ends=np.array([10]))
    with pytest.raises(ControlConfigError, match=r"'state' must be \(N, 5\)"):
        load_pusht(pusht)
    with pytest.raises(ControlConfigError, match="not found"):
        load_maze_dataset(tmp_path / "missing.npz")


def test_pusht_keypoints_match_the_simulator() -> None:
    env = make_pusht_env()
    for seed in (0, 7):
        state, _ = env.reset(seed=seed)
        sim = env.get_keypoints(env._block_shapes)
        ours = pusht_keypoints(state).reshape(8, 2)
        # same 8 corners (pymunk may list them in another order)
        dist = np.linalg.norm(sim[:, None] - ours[None], axis=-1)
        assert dist.min(axis=1).max() < 1e-6
    assert pusht_features(state, "keypoints").shape == (18,)
    assert pusht_features(state, "state").shape == (6,)
    env.close()
