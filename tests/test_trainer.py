"""Trainer: LR schedule, EMA, deterministic batches, exact resume after SIGKILL, clean stop on SIGTERM, NaN stop."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from _toy_domain import ToyDataset, ToyDomain, ToyModel, write_toy_config  # noqa: E402

from sciffusion.cli import main  # noqa: E402
from sciffusion.config import TrainerConfig, load_config  # noqa: E402
from sciffusion.domain import TrainSetup  # noqa: E402
from sciffusion.train import ResumeError, Trainer, TrainingDiverged, ema_decay_at, find_checkpoint, lr_at, train  # noqa: E402
from sciffusion.train.batches import StepBatchSampler  # noqa: E402
from sciffusion.train.checkpoint import flatten_optimizer_state, load_optimizer, save_checkpoint, unflatten_optimizer_state  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _checkpoint_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = run_dir / "checkpoints" / "last"
    out = {}
    for name in ("model", "ema", "optimizer"):
        out.update({f"{name}/{k}": v for k, v in load_file(ckpt / f"{name}.safetensors").items()})
    return out


def _losses(run_dir: Path) -> list[tuple[int, str]]:
    with open(run_dir / "metrics.csv") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


# ---------------------------------------------------------------------------- schedules


def test_lr_warmup_then_cosine_values():
    tc = TrainerConfig(max_steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert [lr_at(s, tc) for s in (1, 5, 10)] == [0.1, 0.5, 1.0]
    assert lr_at(11, tc) == 1.0  # first post-warm-up step uses the full rate
    assert lr_at(61, tc) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lr_at(110, tc) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lr_at(36, tc) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    const = TrainerConfig(max_steps=50, lr=0.3, warmup_steps=4, lr_schedule="constant")
    assert [lr_at(s, const) for s in (2, 4, 5, 50)] == [0.15, 0.3, 0.3, 0.3]
    assert lr_at(1, TrainerConfig(max_steps=5, lr=0.2, warmup_steps=0)) == 0.2


def test_ema_decay_warmup():
    assert ema_decay_at(1, 0.999, warmup=True) == pytest.approx(2 / 11)
    assert ema_decay_at(50, 0.999, warmup=True) == pytest.approx(51 / 60)
    assert ema_decay_at(10**6, 0.999, warmup=True) == 0.999
    assert ema_decay_at(1, 0.999, warmup=False) == 0.999


class _RecordingModel(ToyModel):
    """Records the weights at the start of every step (= the weights after the previous step)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.snapshots: list[list[torch.Tensor]] = []

    def training_loss(self, batch, rng):
        self.snapshots.append([p.detach().clone() for p in self.parameters()])
        return super().training_loss(batch, rng)


def test_ema_matches_hand_computation(tmp_path):
    path = write_toy_config(tmp_path / "toy.yaml", tmp_path / "run", trainer={"max_steps": 6, "ema_decay": 0.8, "checkpoint_every": 0})
    cfg = load_config(path)
    base = ToyDomain().build_model(cfg)
    model = _RecordingModel(base.net, cfg.loss.cond_drop_prob)
    trainer = Trainer(cfg, TrainSetup(model=model, dataset=ToyDataset(cfg.data)))
    trainer.fit()
    weights = model.snapshots[1:] + [[p.detach().clone() for p in model.parameters()]]  # after steps 1..6
    ema = [w.clone() for w in weights[0]]  # the first update copies
    for n, current in enumerate(weights[1:], start=1):
        d = min(0.8, (1 + n) / (10 + n))
        ema = [d * e + (1 - d) * w for e, w in zip(ema, current)]
    names = [name for name, _ in model.named_parameters()]
    got = list(trainer.ema_model.parameters())
    assert int(trainer.ema.n_averaged) == 6
    for e, g in zip(ema, got):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-7)
    saved = load_file(tmp_path / "run" / "checkpoints" / "last" / "ema.safetensors")
    for name, e in zip(names, ema):
        torch.testing.assert_close(saved[name], e, rtol=0, atol=1e-7)
    assert not torch.equal(got[0], weights[-1][0])  # EMA really lags the raw weights


# ---------------------------------------------------------------------------- batches


def test_batches_are_a_pure_function_of_seed_and_step():
    a = StepBatchSampler(20, 4, seed=3, first_step=1, last_step=10)
    b = StepBatchSampler(20, 4, seed=3, first_step=6, last_step=10)
    assert list(a)[5:] == list(b)  # a resumed sampler yields the same steps
    epoch = sorted(i for step in range(1, 6) for i in a.global_indices(step))
    assert epoch == list(range(20))  # each epoch is a permutation
    assert a.global_indices(1) != StepBatchSampler(20, 4, seed=4, first_step=1, last_step=1).global_indices(1)
    ranks = [StepBatchSampler(20, 4, seed=3, first_step=1, last_step=10, rank=r, world=2) for r in range(2)]
    for step in range(1, 11):
        assert ranks[0].indices(step) + ranks[1].indices(step) == a.global_indices(step)
    small = StepBatchSampler(3, 5, seed=0, first_step=1, last_step=3)  # batch larger than the data set
    flat = [i for step in range(1, 4) for i in small.global_indices(step)]
    assert [sorted(flat[k:k + 3]) for k in (0, 3, 6, 9, 12)] == [[0, 1, 2]] * 5


# ---------------------------------------------------------------------------- checkpoints


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, structure = flatten_optimizer_state(opt.state_dict())
    assert set(tensors) == {f"state.{i}.{k}" for i in (0, 1) for k in ("step", "exp_avg", "exp_avg_sq")}
    json.dumps(structure)
    back = unflatten_optimizer_state(tensors, structure)
    assert torch.equal(back["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])

    save_checkpoint(tmp_path, model=model, optimizer=opt, ema_model=None, meta={"step": 1})
    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    load_optimizer(fresh, tmp_path / "checkpoints" / "last")
    assert fresh.param_groups[0]["betas"] == (0.8, 0.95) and fresh.param_groups[0]["lr"] == 0.1
    for p in model.parameters():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh.state[p][key], opt.state[p][key])

    # a kill between the two renames leaves only .last.old: it is still found
    os.replace(tmp_path / "checkpoints" / "last", tmp_path / "checkpoints" / ".last.old")
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoints" / ".last.old"


# ---------------------------------------------------------------------------- resume


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    settings = dict(
        net={"dropout": 0.2},  # dropout exercises the per-step torch.manual_seed
        data={"step_sleep": 0.05},
        trainer={"max_steps": 24, "checkpoint_every": 4, "log_every": 2, "warmup_steps": 5},
    )
    full_cfg = write_toy_config(tmp_path / "full.yaml", tmp_path / "full", **settings)
    killed_cfg = write_toy_config(tmp_path / "killed.yaml", tmp_path / "killed", **settings)

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "_toy_domain.py"), "train", str(killed_cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    train(load_config(full_cfg))  # the uninterrupted reference, while the subprocess starts up
    meta = tmp_path / "killed" / "checkpoints" / "last" / "meta.json"
    deadline = time.time() + 90
    step = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            step = json.loads(meta.read_text())["step"]
        except (OSError, ValueError):
            step = 0
        if step >= 8:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    killed_at = json.loads(meta.read_text())["step"]
    assert 8 <= killed_at < 24

    result = train(load_config(killed_cfg), resume=True)
    assert result.resumed_from == killed_at and result.step == 24

    full, resumed = _checkpoint_tensors(tmp_path / "full"), _checkpoint_tensors(tmp_path / "killed")
    assert full.keys() == resumed.keys() and any(k.startswith("ema/") for k in full)
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "full")  # rows past the kill were dropped


def test_sigterm_finishes_the_step_saves_it_and_resume_equals_uninterrupted(tmp_path):
    settings = dict(data={"step_sleep": 0.05}, trainer={"max_steps": 60, "checkpoint_every": 1000, "log_every": 1})
    full_cfg = write_toy_config(tmp_path / "full.yaml", tmp_path / "full", **settings)
    stopped_cfg = write_toy_config(tmp_path / "stopped.yaml", tmp_path / "stopped", **settings)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "_toy_domain.py"), "train", str(stopped_cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    train(load_config(full_cfg))
    metrics = tmp_path / "stopped" / "metrics.csv"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) > 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()  # a requested stop is a normal end (a `set -e` script goes on)
    assert "stopped by SIGTERM after step" in stderr.decode()
    assert "note: stopped by SIGTERM at step" in stdout.decode() and "--resume" in stdout.decode()
    stopped_at = json.loads((tmp_path / "stopped" / "checkpoints" / "last" / "meta.json").read_text())["step"]
    assert 5 <= stopped_at < 60 and _losses(tmp_path / "stopped")[-1][0] == stopped_at  # no step lost

    result = train(load_config(stopped_cfg), resume=True)
    assert result.resumed_from == stopped_at and result.step == 60
    full, resumed = _checkpoint_tensors(tmp_path / "full"), _checkpoint_tensors(tmp_path / "stopped")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_stop_request_leaves_ignored_signals_ignored():
    from sciffusion.train.trainer import StopRequest

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stop = StopRequest().install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a background job's SIGINT stays ignored
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop.restore()
        assert signal.getsignal(signal.SIGTERM) is not stop._handle
    finally:
        signal.signal(signal.SIGINT, before)


def test_existing_run_needs_resume_and_a_matching_model(tmp_path, capsys):
    path = write_toy_config(tmp_path / "toy.yaml", tmp_path / "run", trainer={"max_steps": 4})
    train(load_config(path))
    with pytest.raises(ResumeError, match="already holds a checkpoint \\(step 4\\); pass --resume"):
        train(load_config(path))
    assert main(["train", str(path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"sciffusion: error: run folder {tmp_path / 'run'} already holds")
    result = train(load_config(path, ["trainer.max_steps=6"]), resume=True)
    assert (result.resumed_from, result.step) == (4, 6)


def test_resume_refuses_a_different_architecture(tmp_path, capsys):
    path = write_toy_config(tmp_path / "toy.yaml", tmp_path / "run", trainer={"max_steps": 2})
    train(load_config(path))
    assert main(["train", str(path), "net.hidden=8", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"sciffusion: error: cannot resume {tmp_path / 'run'}: 'net.hidden' differs from the checkpoint's config")


# ---------------------------------------------------------------------------- NaN


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, capsys):
    common = dict(trainer={"max_steps": 10, "checkpoint_every": 5, "lr_schedule": "constant", "warmup_steps": 0})
    bad = write_toy_config(tmp_path / "bad.yaml", tmp_path / "bad", data={"nan_at_step": 7}, **common)
    assert main(["train", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"sciffusion: error: training stopped: non-finite loss (nan) at step 7; "
        f"the last good checkpoint is {tmp_path / 'bad' / 'checkpoints' / 'last'} (step 5)"
    )
    meta = json.loads((tmp_path / "bad" / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["step"] == 5
    # the kept checkpoint equals a clean run stopped at step 5 (constant LR, so max_steps does not matter)
    clean = write_toy_config(tmp_path / "clean.yaml", tmp_path / "clean", trainer={**common["trainer"], "max_steps": 5})
    train(load_config(clean))
    kept, reference = _checkpoint_tensors(tmp_path / "bad"), _checkpoint_tensors(tmp_path / "clean")
    assert all(torch.equal(kept[k], reference[k]) for k in reference)
    assert all(torch.isfinite(v.float()).all() for v in kept.values())


def test_bf16_autocast_on_cpu_trains(tmp_path):
    path = write_toy_config(tmp_path / "toy.yaml", tmp_path / "run", trainer={"max_steps": 3, "precision": "bf16"})
    result = train(load_config(path))
    assert result.step == 3 and math.isfinite(result.loss)
    assert json.loads((tmp_path / "run" / "checkpoints" / "last" / "meta.json").read_text())["precision"] == "bf16"
    weights = load_file(tmp_path / "run" / "checkpoints" / "last" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in weights.values())  # autocast keeps fp32 master weights


class _InfGradModel(ToyModel):
    """Finite loss, but at ``bad_step`` the gradient is NaN (d sqrt(x)/dx at 0 is inf, times 0)."""

    bad_step = 3

    def training_loss(self, batch, rng):
        loss = super().training_loss(batch, rng)
        if rng.step == self.bad_step:
            first = next(self.parameters())
            loss = loss + (first * 0.0).sqrt().sum()
        return loss


def test_nan_gradient_with_finite_loss_also_stops(tmp_path):
    path = write_toy_config(tmp_path / "toy.yaml", tmp_path / "run", trainer={"max_steps": 6, "checkpoint_every": 2})
    cfg = load_config(path)
    model = _InfGradModel(ToyDomain().build_model(cfg).net, 0.0)
    with pytest.raises(TrainingDiverged, match=r"^training stopped: non-finite gradient norm \(nan\) at step 3; the last good checkpoint is .* \(step 2\)$"):
        Trainer(cfg, TrainSetup(model=model, dataset=ToyDataset(cfg.data))).fit()
    assert json.loads((tmp_path / "run" / "checkpoints" / "last" / "meta.json").read_text())["step"] == 2


def test_atomic_path_replaces_on_success_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    from sciffusion.train.checkpoint import atomic_path

    target = tmp_path / "out.png"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".png" and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == (0o666 & ~umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_max_minutes_budget_stops_saves_and_resume_equals_uninterrupted(tmp_path):
    settings = dict(data={"step_sleep": 0.05}, trainer={"max_steps": 40, "checkpoint_every": 1000, "log_every": 1})
    full = train(load_config(write_toy_config(tmp_path / "full.yaml", tmp_path / "full", **settings)))
    assert full.stopped is None and full.step == 40
    budget = dict(settings, trainer={**settings["trainer"], "max_minutes": 0.01})  # 0.6 s: about 12 steps
    cfg = write_toy_config(tmp_path / "budget.yaml", tmp_path / "budget", **budget)
    stopped = train(load_config(cfg))
    assert stopped.stopped == "max_minutes" and 2 <= stopped.step < 40
    assert json.loads((tmp_path / "budget" / "checkpoints" / "last" / "meta.json").read_text())["step"] == stopped.step
    resumed = train(load_config(cfg, ["trainer.max_minutes=0"]), resume=True)
    assert resumed.resumed_from == stopped.step and resumed.step == 40 and resumed.stopped is None
    a, b = _checkpoint_tensors(tmp_path / "full"), _checkpoint_tensors(tmp_path / "budget")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _losses(tmp_path / "budget") == _losses(tmp_path / "full")
