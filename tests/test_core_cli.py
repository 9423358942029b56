"""Core config and CLI of the geometric-core issue: per-field ``processes:``, the ``design`` verb, domain verbs
that clash, and the solver x process listing."""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _toy_domain import write_toy_config  # noqa: E402

from sciffusion.cli import main  # noqa: E402
from sciffusion.config import ConfigError, config_from_dict  # noqa: E402
from sciffusion.domain import Domain, parse_solver  # noqa: E402
from sciffusion.processes import VPProcess  # noqa: E402
from sciffusion.processes.gaussian import EDMProcess  # noqa: E402
from sciffusion.registry import DOMAINS  # noqa: E402


def _raw(**sections) -> dict:
    return {"domain": "toy", "net": {"name": "_toy_mlp"}, **sections}


def test_processes_section_builds_each_field_with_its_weight_and_round_trips() -> None:
    raw = _raw(processes={"pos": {"name": "zero_com", "path": "edm", "weight": 2.0},
                          "lattice": {"name": "vp", "schedule": "linear"}})
    cfg = config_from_dict(raw)
    processes, weights = cfg.build_processes(["pos", "lattice"])
    assert isinstance(processes["pos"], EDMProcess) and processes["pos"].zero_com
    assert isinstance(processes["lattice"], VPProcess) and not processes["lattice"].zero_com
    assert weights == {"pos": 2.0, "lattice": 1.0}
    assert config_from_dict(cfg.to_dict()) == cfg
    one = config_from_dict(_raw(process={"name": "vp"}))
    assert list(one.build_processes(["x"])[0]) == ["x"]


@pytest.mark.parametrize("raw,message", [
    (_raw(process={"name": "vp"}, processes={"a": {"name": "vp"}}), "not both"),
    (_raw(processes={"a": {"name": "vp", "weight": 0}}), "'processes.a.weight' must be a finite number > 0"),
    (_raw(processes={"a": {"name": "nope"}}), "'processes.a.name': unknown process 'nope'"),
    (_raw(processes={"a": {"name": "vp", "schedul": "linear"}}), "unknown key 'processes.a.schedul'"),
    (_raw(processes={"a": "vp"}), "'processes.a' must be a mapping"),
    (_raw(sample={"solver": "nope"}), "unknown solver 'nope'"),
    (_raw(sample={"solver": {"a": "nope"}}), "unknown solver 'nope'"),
])
def test_bad_process_and_solver_config_is_one_line(raw, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict(raw)
    assert "\n" not in str(err.value)


def test_processes_must_name_the_domain_fields() -> None:
    cfg = config_from_dict(_raw(processes={"pos": {"name": "vp"}, "extra": {"name": "vp"}}))
    with pytest.raises(ConfigError, match="missing types; unknown extra"):
        cfg.build_processes(["pos", "types"])
    with pytest.raises(ConfigError, match="give one process each"):
        config_from_dict(_raw(process={"name": "vp"})).build_processes(["pos", "types"])


def test_solver_text_per_field() -> None:
    assert parse_solver("ddim") == "ddim"
    assert parse_solver("pos=dpmpp_2m, types=heun") == {"pos": "dpmpp_2m", "types": "heun"}
    with pytest.raises(ValueError, match="field=solver pairs"):
        parse_solver("pos=,types=heun")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("design")
    path = write_toy_config(tmp / "toy.yaml", tmp / "run", trainer={"max_steps": 2})
    assert main(["train", str(path)]) == 0
    return tmp / "run"


def test_design_verb_dispatches_to_the_domain(toy_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "designs"
    assert main(["design", str(toy_run), "--target", "y=0.5", "--n", "4", "--out", str(out)]) == 0
    with open(out / "designs.csv") as f:
        assert len(list(csv.reader(f))) == 5


@pytest.mark.parametrize("argv,message", [
    (["--target", "z=1"], "unknown property z for domain 'toy' (known: y)"),
    ([], "design needs at least one --target NAME=VALUE"),
    (["--target", "y=1", "--target", "y=2"], "names a property more than once"),
    (["--target", "y=nan"], "must be a finite number"),
    (["--target", "y"], "expected NAME=VALUE"),
])
def test_design_bad_targets_are_one_line_exit_2(toy_run: Path, tmp_path: Path, capsys, argv, message) -> None:
    before = sorted(p.name for p in toy_run.iterdir())
    assert main(["design", str(toy_run), *argv, "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sciffusion: error:") and message in err, err
    assert not (tmp_path / "d").exists() and sorted(p.name for p in toy_run.iterdir()) == before


def test_design_on_a_domain_without_it(tmp_path: Path, capsys, monkeypatch) -> None:
    import _toy_domain

    monkeypatch.delattr(_toy_domain.ToyDomain, "design")
    path = write_toy_config(tmp_path / "toy.yaml", tmp_path / "run", trainer={"max_steps": 1})
    assert main(["train", str(path)]) == 0
    capsys.readouterr()
    assert main(["design", str(tmp_path / "run"), "--target", "y=1"]) == 2
    assert capsys.readouterr().err == "sciffusion: error: domain 'toy' does not support 'design'\n"


def test_two_domains_with_the_same_verb_do_not_break_the_cli(monkeypatch, capsys) -> None:
    class Clash(Domain):
        name = "toy_clash"

        def add_commands(self, subparsers: argparse._SubParsersAction) -> None:
            subparsers.add_parser("toy-info")  # the toy domain's verb

    monkeypatch.setitem(DOMAINS._entries, "toy_clash", type(DOMAINS.get("toy"))("toy_clash", Clash, None, "clash"))
    assert main(["toy-info", "--help"]) == 0
    capsys.readouterr()
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "toy_clash (its commands clash with existing ones" in err


def test_list_shows_which_solver_drives_which_process(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    start = out.index("solvers by process (default first):")
    rows = {line.split()[0]: line.split(None, 1)[1] for line in out[start + 1:] if line.startswith("  ")}
    assert rows["vp"].startswith("dpmpp_2m") and "heun" in rows["vp"] and "zero_com" in rows


def test_yaml_round_trip_of_a_multi_field_config(tmp_path: Path) -> None:
    raw = _raw(processes={"pos": {"name": "zero_com", "path": "flow", "options": {"prediction": "velocity"}}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = config_from_dict(yaml.safe_load(path.read_text()))
    assert cfg.build_processes(["pos"])[0]["pos"].name == "flow"
