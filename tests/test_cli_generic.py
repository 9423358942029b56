"""The CLI verbs with the toy domain: train -> sample -> evaluate, list, domain verbs, bad run folders."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from _toy_domain import write_toy_config  # noqa: E402

from sciffusion.cli import main  # noqa: E402
from sciffusion.domain import load_run  # noqa: E402


def test_train_sample_evaluate_and_domain_verb(tmp_path, capsys):
    run = tmp_path / "run"
    path = write_toy_config(tmp_path / "toy.yaml", run, trainer={"max_steps": 6, "sample_every": 3, "tensorboard": True},
                            report={"label": "cli"})
    assert main(["train", str(path), "trainer.lr=0.02"]) == 0
    assert capsys.readouterr().out.strip() == f"trained to step 6; run folder: {run}"
    assert (run / "config.yaml").read_text().count("lr: 0.02") == 1  # the resolved config, overrides applied
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000003.txt", "step_000006.txt"]
    assert (run / "loss.png").stat().st_size > 0 and any((run / "tensorboard").iterdir())
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4", "6"] and set(rows[0]) == {"step", "loss", "lr", "grad_norm", "samples_per_s"}

    loaded = load_run(run, device="cpu")
    ema = load_file(run / "checkpoints" / "last" / "ema.safetensors")
    assert loaded.step == 6 and loaded.has_ema and not loaded.model.training
    assert all(torch.equal(v, ema[k]) for k, v in loaded.model.state_dict().items())
    raw = load_file(run / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.equal(v, raw[k]) for k, v in loaded.raw_model().state_dict().items())

    out = tmp_path / "samples"
    assert main(["sample", str(run), "--n", "5", "--seed", "3", "--out", str(out)]) == 0
    with open(out / "samples.csv") as f:
        assert len(list(csv.reader(f))) == 1 + 5

    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["label"] == "cli" and 0 <= metrics["mse"] < 10
    assert json.loads(capsys.readouterr().out) == metrics

    assert main(["toy-info", str(run)]) == 0
    assert capsys.readouterr().out.strip() == "toy run at step 6"


def test_list_shows_configs_and_registries(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "toy").mkdir(parents=True)
    write_toy_config(tmp_path / "configs" / "toy" / "small.yaml", tmp_path / "run")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    sections = [line for line in out.splitlines() if not line.startswith(" ")]
    assert sections[:2] == ["configs:", "domains:"] and {"nets:", "processes:", "solvers:", "guidance:"} <= set(sections)
    assert any(line.split() == ["configs/toy/small.yaml", "toy"] for line in out.splitlines())
    assert any(line.split()[:1] == ["toy"] and "test-only" in line for line in out.splitlines())
    assert any(line.split()[:1] == ["_toy_mlp"] for line in out.splitlines())


def test_bad_run_folders_and_commands_are_one_line_errors(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"sciffusion: error: run folder not found: {tmp_path / 'nope'}\n"
    assert main(["evaluate", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"sciffusion: error: {tmp_path} is not a run folder (no config.yaml)\n"
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sciffusion: error: unknown command 'frobnicate' (commands: ") and "toy-info" in err
