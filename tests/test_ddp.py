"""DistributedDataParallel: 2 CPU processes under torchrun equal 1 process with the combined batch."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from _toy_domain import write_toy_config  # noqa: E402

from sciffusion.config import load_config  # noqa: E402
from sciffusion.train import train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_two_gloo_processes_equal_one_process_with_the_combined_batch(tmp_path):
    # dropout off: its masks come from per-rank torch seeds; everything else is layout-independent
    settings = dict(net={"dropout": 0.0}, loss={"cond_drop_prob": 0.3},
                    trainer={"max_steps": 10, "batch_size": 8, "log_every": 2, "checkpoint_every": 5, "ema_decay": 0.5})
    single = write_toy_config(tmp_path / "single.yaml", tmp_path / "single", **settings)
    double = write_toy_config(tmp_path / "ddp.yaml", tmp_path / "ddp", **settings)

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "_toy_domain.py"), "train", str(double)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    train(load_config(single))  # the reference, while the workers start up
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert out.count("trained to step 10") == 1  # only rank 0 reports

    meta = json.loads((tmp_path / "ddp" / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 10
    for name in ("model", "ema", "optimizer"):
        ref = load_file(tmp_path / "single" / "checkpoints" / "last" / f"{name}.safetensors")
        got = load_file(tmp_path / "ddp" / "checkpoints" / "last" / f"{name}.safetensors")
        assert ref.keys() == got.keys()
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6, msg=f"{name}/{key}")
    ref_rows, ddp_rows = _rows(tmp_path / "single"), _rows(tmp_path / "ddp")
    assert [r["step"] for r in ddp_rows] == [str(s) for s in range(2, 11, 2)]  # one writer, no duplicate rows
    for a, b in zip(ref_rows, ddp_rows):
        assert abs(float(a["loss"]) - float(b["loss"])) <= 1e-5 * max(1.0, abs(float(a["loss"])))


def test_two_gloo_processes_equal_one_process_on_a_ragged_set_with_a_node_budget(tmp_path):
    """Ragged point clouds (2-6 points) batched by a node budget of 24 rows per step: each rank takes an equal
    share of the step's clouds and draws each cloud's noise from the cloud's own stream."""
    import yaml

    def config(name: str) -> Path:
        cfg = {"domain": "toy_cloud", "seed": 5, "run_dir": str(tmp_path / name),
               "net": {"name": "_toy_cloud_net", "hidden": 16},
               "process": {"name": "zero_com", "path": "vp", "options": {"schedule": "linear"}},
               "data": {"n": 40, "max_nodes": 24, "multiple": 2}, "loss": {"cond_drop_prob": 0.0, "weighting": "min_snr"},
               "trainer": {"max_steps": 8, "batch_size": 8, "lr": 0.01, "warmup_steps": 2, "log_every": 2,
                           "checkpoint_every": 4, "ema_decay": 0.5, "device": "cpu", "progress": False}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    single, double = config("single"), config("ddp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "_toy_domain.py"), "train", str(double)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    train(load_config(single))
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    for name in ("model", "ema", "optimizer"):
        ref = load_file(tmp_path / "single" / "checkpoints" / "last" / f"{name}.safetensors")
        got = load_file(tmp_path / "ddp" / "checkpoints" / "last" / f"{name}.safetensors")
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6, msg=f"{name}/{key}")
    for a, b in zip(_rows(tmp_path / "single"), _rows(tmp_path / "ddp")):
        assert abs(float(a["loss"]) - float(b["loss"])) <= 1e-5 * max(1.0, abs(float(a["loss"])))
