"""Diffusion Policy: To/Tp/Ta indexing (as the README diagram), training through the Trainer, closed loop."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sciffusion.domains.control.domain import ChunkWindows
from sciffusion.domains.control.pusht import evaluate_pusht, pusht_features

from sciffusion.cli import main as cli_main
from sciffusion.config import config_from_dict
from sciffusion.domain import get_domain, load_run
from sciffusion.domains.control.trajectory import IdentityNormalizer, TrajectoryError
from sciffusion.domains.control.planning import ChunkedActor, DiffusionPolicy, MLPPolicy
from sciffusion.train.trainer import train

TO, TP, TA = 2, 16, 8


def test_chunk_windows_match_the_readme_diagram() -> None:
    """Chunk index To-1 holds the action of the current step t; the history holds steps t-1, t."""
    from sciffusion.domains.control.config import TaskConfig

    n = 40
    obs = np.arange(n, dtype=np.float64)[:, None] * np.ones((1, 3))  # o_t = t
    act = 1000 + np.arange(n, dtype=np.float64)[:, None] * np.ones((1, 2))  # a_t = 1000 + t
    task = TaskConfig(kind="policy", obs_horizon=TO, pred_horizon=TP, action_horizon=TA)
    ident_o, ident_a = IdentityNormalizer.fit(obs), IdentityNormalizer.fit(act)
    ds = ChunkWindows(obs, act, np.array([n]), task, ident_o, ident_a)
    first = ds[0]  # starts To-1 = 1 step before the episode: the first observation is repeated
    np.testing.assert_array_equal(first["cond"]["obs"][:, 0], [0, 0])
    assert first["fields"]["action"][TO - 1, 0] == 1000  # current step t = 0
    for i in (1, 10, len(ds) - 1):
        item = ds[i]
        t = int(item["cond"]["obs"][-1, 0])  # the newest observation is step t
        assert item["cond"]["obs"][0, 0] == max(t - 1, 0)
        np.testing.assert_array_equal(item["fields"]["action"][TO - 1:TO - 1 + TA, 0], 1000 + np.minimum(np.arange(t, t + TA), n - 1))
    # windows end at most Ta-1 steps after the episode (last action repeated)
    last = ds[len(ds) - 1]
    assert int(last["cond"]["obs"][-1, 0]) == n - 1 - (TP - TO) + (TA - 1)  # newest obs of the last window
    assert last["fields"]["action"][-1, 0] == 1000 + n - 1


def test_policy_executes_indices_to_minus_1_to_to_plus_ta_minus_2() -> None:
    calls: list[np.ndarray] = []

    def chunk_fn(hist: torch.Tensor) -> torch.Tensor:
        calls.append(hist.numpy().copy())
        k = len(calls)
        full = torch.arange(TP, dtype=torch.float32)[None, :, None].repeat(hist.shape[0], 1, 2) + 100 * k
        return full[:, TO - 1:TO - 1 + TA]  # what DiffusionPolicy.act returns: the executed slice

    actor = ChunkedActor(chunk_fn, TO)
    actor.reset(np.zeros((1, 3)))
    executed = []
    for step in range(2 * TA):
        if step > 0:
            actor.observe(np.full((1, 3), float(step)))
        executed.append(actor.act()[0, 0])
    # chunk 1 executes its indices 1..8, then chunk 2 (predicted at step Ta) its indices 1..8
    assert executed == [100 + i for i in range(TO - 1, TO - 1 + TA)] + [200 + i for i in range(TO - 1, TO - 1 + TA)]
    assert len(calls) == 2
    np.testing.assert_array_equal(calls[0][0, :, 0], [0, 0])  # first history: o_0 repeated
    np.testing.assert_array_equal(calls[1][0, :, 0], [TA - 1, TA])  # at step t = Ta: o_{t-1}, o_t


def test_diffusion_policy_act_is_the_executed_slice_of_the_chunk() -> None:
    from sciffusion.model import DiffusionModel
    from sciffusion.domains.control.temporal_unet import TemporalUNet1D
    from sciffusion.processes import VPProcess

    net = TemporalUNet1D(2, dim=8, dim_mults=(1, 2), cond_dims={"obs": TO * 3}, field="action")
    policy = DiffusionPolicy(DiffusionModel(net, {"action": VPProcess(num_train_steps=50)}), 3, 2, TO, TP, TA)
    assert policy.executed_slice() == slice(1, 9)
    hist = torch.randn(4, TO, 3)
    chunk = policy.predict_chunk(hist, "ddim", 5, torch.Generator().manual_seed(0))
    acts = policy.act(hist, "ddim", 5, torch.Generator().manual_seed(0))
    assert chunk.shape == (4, TP, 2) and acts.shape == (4, TA, 2)
    torch.testing.assert_close(acts, chunk[:, 1:9])
    # with clip_x0 = 1 (limits-normalised actions) chunks stay inside the normalised box, even untrained
    clipped = DiffusionPolicy(policy.diffusion, 3, 2, TO, TP, TA, clip_x0=1.0)
    assert clipped.predict_chunk(hist, "ddim", 5).abs().max() <= 1.0 + 1e-5
    with pytest.raises(TrajectoryError, match="To - 1 \\+ Ta <= Tp"):
        DiffusionPolicy(policy.diffusion, 3, 2, obs_horizon=4, pred_horizon=8, action_horizon=8)


def _synthetic_pusht(path: Path) -> Path:
    """Push-T-format demos (state, action, episode_ends) drawn around the real ranges."""
    rng = np.random.default_rng(0)
    n = 400
    state = np.concatenate([rng.uniform(50, 450, (n, 4)), rng.uniform(0, 6.28, (n, 1))], axis=1)
    action = state[:, :2] + rng.normal(0, 10, (n, 2))
    np.savez(path, state=state.astype(np.float32), action=action.astype(np.float32), episode_ends=np.array([150, 300, 400]))
    return path


def _policy_config(tmp_path: Path, data_path: Path, kind: str = "policy") -> dict:
    cfg = {
        "domain": "control", "seed": 0, "run_dir": str(tmp_path / kind),
        "data": {"env": "pusht", "path": str(data_path)},
        "task": {"kind": kind, "obs": "keypoints", "obs_horizon": TO, "pred_horizon": TP, "action_horizon": TA,
                 "bc_hidden": 32, "bc_layers": 2},
        "loss": {"cond_drop_prob": 0.0},
        "trainer": {"max_steps": 20, "batch_size": 16, "lr": 1e-3, "ema_decay": 0.9, "checkpoint_every": 0, "progress": False},
        "sample": {"solver": "ddim", "steps": 4},
        "control": {"episodes": 1, "seed": 0},
    }
    if kind == "policy":
        cfg["net"] = {"name": "temporal_unet1d", "dim": 8, "dim_mults": [1, 2]}
        cfg["process"] = {"name": "vp", "schedule": "cosine", "prediction": "eps", "num_train_steps": 50}
    return cfg


@pytest.mark.parametrize("kind", ["policy", "bc"])
def test_pusht_policy_trains_and_runs_closed_loop_deterministically(tmp_path: Path, kind: str) -> None:
    data = _synthetic_pusht(tmp_path / "demos.npz")
    cfg = config_from_dict(_policy_config(tmp_path, data, kind))
    result = train(cfg)
    assert result.step == 20 and np.isfinite(result.loss)
    run = load_run(cfg.run_dir)
    assert isinstance(run.model, DiffusionPolicy if kind == "policy" else MLPPolicy)
    # the normalisers travel with the checkpoint: actions come back in pixels
    obs = torch.as_tensor(pusht_features(np.array([[200.0, 200.0, 300.0, 300.0, 1.0]]), "keypoints"), dtype=torch.float32)
    if kind == "policy":
        a = run.model.act(obs[:, None].repeat(1, TO, 1), "ddim", 4)
        assert a.shape == (1, TA, 2)
    else:
        a = run.model.act(obs)
    assert float(a.abs().max()) > 20.0

    def short_eval():
        gen = torch.Generator().manual_seed(0)
        if kind == "policy":
            actor = ChunkedActor(lambda h: run.model.act(h, "ddim", 4, gen), TO)
            started = []

            def act_fn(states: np.ndarray) -> np.ndarray:
                feats = pusht_features(states, "keypoints")
                if started:
                    actor.observe(feats)
                else:
                    actor.reset(feats)
                    started.append(1)
                return actor.act()
        else:
            def act_fn(states: np.ndarray) -> np.ndarray:
                return run.model.act(torch.as_tensor(pusht_features(states, "keypoints"), dtype=torch.float32)).numpy()
        return evaluate_pusht(act_fn, episodes=2, seed=3, max_steps=12)

    r1, r2 = short_eval(), short_eval()
    np.testing.assert_array_equal(r1["max_coverage"], r2["max_coverage"])
    assert r1["steps"].tolist() == [12, 12] or r1["success"].any()


def test_policy_data_dimension_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, state=np.zeros((50, 5)), action=np.zeros((50, 3)), episode_ends=np.array([50]))
    cfg = config_from_dict(_policy_config(tmp_path, bad))
    with pytest.raises(ValueError, match="'action' must be \\(N, 2\\)"):
        get_domain("control").setup(cfg)


def test_evaluate_command_reports_pusht_metrics_and_a_frame_strip(tmp_path: Path) -> None:
    data = _synthetic_pusht(tmp_path / "demos.npz")
    cfg = config_from_dict(_policy_config(tmp_path, data, "bc"))
    train(cfg)
    assert cli_main(["evaluate", str(cfg.run_dir)]) == 0
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert {"mean_max_coverage", "success_rate", "wall_seconds"} <= set(metrics) and metrics["episodes"] == 1
    assert 0.0 <= metrics["mean_max_coverage"] <= 1.0
    assert (Path(cfg.run_dir) / "eval" / "episode0_strip.png").stat().st_size > 0
