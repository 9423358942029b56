"""Config validation: typed sections, dotted overrides, one-line errors naming the key or file."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _toy_domain import write_toy_config  # noqa: E402  (registers the toy domain)

from sciffusion.cli import main  # noqa: E402
from sciffusion.config import (  # noqa: E402
    ConfigError,
    FieldError,
    SampleConfig,
    TrainerConfig,
    apply_overrides,
    config_from_dict,
    from_dict,
    load_config,
)
from sciffusion.registry import Registry  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WIDGETS: Registry[object] = Registry("widget")
WIDGETS.register("spinner")(lambda: "spinner")


@dataclass
class Inner:
    k: int
    xs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.k < 0:
            raise FieldError("k", f"must be >= 0, got {self.k}")


@dataclass
class Outer:
    inner: Inner
    mode: Literal["a", "b"] = "a"
    scale: Optional[float] = None
    table: dict[str, int] = field(default_factory=dict)
    pair: tuple[int, str] = (1, "x")
    widget: Annotated[str, WIDGETS] = "spinner"


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_from_dict_converts_nested_types_and_promotes_int_to_float():
    out = from_dict(Outer, {"inner": {"k": 3, "xs": [1, 2.5, "1e-3"]}, "mode": "b", "scale": 2, "table": {"a": 1}, "pair": [4, "y"]}, "outer")
    assert out == Outer(Inner(3, [1.0, 2.5, 0.001]), "b", 2.0, {"a": 1}, (4, "y"))
    assert isinstance(out.inner.xs[0], float) and isinstance(out.scale, float)
    assert from_dict(Outer, {"inner": {"k": 0}, "scale": None}, "outer").scale is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"k": 1}, "mdoe": "a"}, "config error: unknown key 'outer.mdoe' (did you mean 'mode'?)"),
        ({"inner": {"k": "one"}}, "config error: 'outer.inner.k' must be int, got str 'one'"),
        ({"inner": {"k": True}}, "config error: 'outer.inner.k' must be int, got bool True"),
        ({"inner": {"k": 1, "xs": [1.0, "x"]}}, "config error: 'outer.inner.xs[1]' must be float, got str 'x'"),
        ({"inner": {"k": -1}}, "config error: 'outer.inner.k' must be >= 0, got -1"),
        ({}, "config error: missing key 'outer.inner'"),
        ({"inner": {"k": 1}, "mode": "c"}, "config error: 'outer.mode' must be one of 'a', 'b', got str 'c'"),
        ({"inner": {"k": 1}, "scale": "big"}, "config error: 'outer.scale' must be float, got str 'big'"),
        ({"inner": {"k": 1}, "table": {"a": 1.5}}, "config error: 'outer.table.a' must be int, got float 1.5"),
        ({"inner": {"k": 1}, "pair": [1]}, "config error: 'outer.pair' must be a list of 2 items, got 1"),
        ({"inner": 5}, "config error: 'outer.inner' must be a mapping, got int 5"),
        ({"inner": {"k": 1}, "widget": "wheel"}, "config error: 'outer.widget': unknown widget 'wheel' (known: spinner)"),
    ],
)
def test_from_dict_errors_name_the_dotted_key(data, message):
    assert _error(from_dict, Outer, data, "outer") == message


def test_trainer_defaults_and_range_checks():
    tc = from_dict(TrainerConfig, {"lr": 1, "betas": [0.9, 0.99], "grad_clip": None}, "trainer")
    assert tc.lr == 1.0 and isinstance(tc.lr, float) and tc.betas == (0.9, 0.99) and tc.grad_clip is None
    assert _error(from_dict, TrainerConfig, {"ema_decay": 1.0}, "trainer") == "config error: 'trainer.ema_decay' must be in [0, 1), got 1.0"
    assert "'sample.steps' must be >= 1" in _error(from_dict, SampleConfig, {"steps": 0}, "sample")


def test_overrides_parse_yaml_scalars_and_create_sections():
    raw = apply_overrides({"trainer": {"lr": 0.1}}, ["trainer.max_steps=200", "trainer.lr=3e-4", "trainer.betas=[0.8, 0.9]", "loss.weighting=min_snr", "trainer.grad_clip=null"])
    assert raw == {"trainer": {"lr": "3e-4", "max_steps": 200, "betas": [0.8, 0.9], "grad_clip": None}, "loss": {"weighting": "min_snr"}}
    assert "must look like section.key=value" in _error(apply_overrides, {}, ["trainer.max_steps"])
    assert "'trainer.lr' is float 0.1, not a section" in _error(apply_overrides, {"trainer": {"lr": 0.1}}, ["trainer.lr.x=1"])


def test_load_config_resolves_the_whole_file(tmp_path):
    path = write_toy_config(tmp_path / "toy.yaml", tmp_path / "run", report={"label": "hello"})
    cfg = load_config(path, ["trainer.max_steps=5", "trainer.lr=1e-3", "net.hidden=4", "data.n=10"])
    assert cfg.domain == "toy" and cfg.trainer.max_steps == 5 and cfg.trainer.lr == 1e-3
    assert cfg.net.name == "_toy_mlp" and cfg.net.params.hidden == 4 and cfg.data.n == 10
    assert cfg.extra["report"].label == "hello" and cfg.section("report") is cfg.extra["report"]
    assert cfg.net.build(dim=2).net[0].out_features == 4
    again = config_from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict() and again == cfg


def test_default_run_dir_is_runs_slash_stem(tmp_path):
    path = write_toy_config(tmp_path / "my_exp.yaml", tmp_path / "unused")
    raw = path.read_text().replace(f"run_dir: {tmp_path / 'unused'}\n", "")
    path.write_text(raw)
    assert load_config(path).run_dir == "runs/my_exp"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.max_stpes=3"], "config error: unknown key 'trainer.max_stpes' (did you mean 'max_steps'?)"),
        (["trainer.lr=abc"], "config error: 'trainer.lr' must be float, got str 'abc'"),
        (["trainr.lr=0.1"], "config error: unknown key 'trainr' (did you mean 'trainer'?)"),
        (["net.hiden=3"], "config error: unknown key 'net.hiden' (did you mean 'hidden'?)"),
        (["net.name=nope"], "config error: 'net.name': unknown net 'nope' (known: "),
        (["domain=nope"], "config error: 'domain': unknown domain 'nope' (known: "),
        (["trainer.precision=fp64"], "config error: 'trainer.precision' must be one of 'fp32', 'bf16', 'fp16', got str 'fp64'"),
        (["loss.cond_drop_prob=1.5"], "config error: 'loss.cond_drop_prob' must be in [0, 1], got 1.5"),
        (["report.lable=x"], "config error: unknown key 'report.lable' (did you mean 'label'?)"),
        (["data.n=0"], "config error: 'data.n' must be >= 1, got 0"),
    ],
)
def test_config_errors(tmp_path, overrides, message):
    path = write_toy_config(tmp_path / "toy.yaml", tmp_path / "run")
    assert _error(load_config, path, overrides).startswith(message)


def test_file_errors(tmp_path):
    assert _error(load_config, tmp_path / "x.yaml") == f"config error: file not found: {tmp_path / 'x.yaml'}"
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: toy\ntrainer: {max_steps: [1,\n")
    assert _error(load_config, bad).startswith(f"config error: invalid YAML in {bad} (line ")
    bad.write_text("- 1\n- 2\n")
    assert _error(load_config, bad) == f"config error: top level of {bad} must be a mapping, got list [1, 2]"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["trainer.max_stpes=3"], "sciffusion: error: config error: unknown key 'trainer.max_stpes' (did you mean 'max_steps'?)"),
        (["trainer.lr=abc"], "sciffusion: error: config error: 'trainer.lr' must be float, got str 'abc'"),
        (["net.name=nope"], "sciffusion: error: config error: 'net.name': unknown net 'nope'"),
        (None, "sciffusion: error: config error: file not found: missing.yaml"),
    ],
)
def test_cli_config_error_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, overrides, expected):
    monkeypatch.chdir(tmp_path)
    path = write_toy_config(tmp_path / "toy.yaml", Path("runs/toy"))
    argv = ["train", str(path), *overrides] if overrides is not None else ["train", "missing.yaml"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(expected), err
    assert not (tmp_path / "runs").exists()


def test_python_m_sciffusion_reports_missing_file_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "sciffusion", "train", "configs/x.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "sciffusion: error: config error: file not found: configs/x.yaml\n"
    assert list(tmp_path.iterdir()) == []
