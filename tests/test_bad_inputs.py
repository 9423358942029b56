"""Bad inputs on the command line: each is one ``sciffusion: error:`` line, exit code 2, no traceback, no new file.

Classes (issue 15): damaged checkpoints and metadata; net settings the network cannot take; a run
folder or output path that is an existing file; inputs that used to exit 0 with a wrong result
(non-finite guidance, zero counts, extreme values, output suffixes a command cannot write); outputs
into missing folders. Plus: ``impute`` refuses non-finite samples, the output is quiet and pickle-free.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _series_data import write_series_csv  # noqa: E402
from _toy_domain import write_toy_config  # noqa: E402

from sciffusion.cli import main  # noqa: E402
from sciffusion.tasks.impute import ImputationModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "images" / "digits.yaml")
WEATHER = str(ROOT / "configs" / "timeseries" / "weather.yaml")
UMAZE = str(ROOT / "configs" / "control" / "pointmaze_umaze.yaml")
PUSHT = str(ROOT / "configs" / "control" / "pusht_dp.yaml")
TINY_IMAGES = ["net.channels=8", "trainer.max_steps=2", "trainer.batch_size=8", "trainer.checkpoint_every=0",
               "trainer.log_every=1", "trainer.progress=false", "trainer.device=cpu", "sample.steps=2", "sample.n=10"]
TINY_CSDI = {"name": "csdi", "channels": 8, "layers": 1, "heads": 2, "ff_dim": 16, "diffusion_embedding_dim": 16,
             "time_embedding_dim": 16, "feature_embedding_dim": 4, "dropout": 0.0}
SAFETY = ["trainer.max_steps=1", "trainer.progress=false", "trainer.device=cpu"]  # a wrongly accepted setting fails fast
QUICK = {"max_steps": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 0, "progress": False, "device": "cpu"}


# ------------------------------------------------------------------------------------ helpers


def files(*folders: Path) -> set[Path]:
    """Every path (files and folders) under ``folders``."""
    return {p for folder in folders if folder.exists() for p in folder.rglob("*")} | {f for f in folders if f.exists()}


def fails(argv: list[str], capsys: pytest.CaptureFixture[str], *watched: Path) -> str:
    """Run the CLI on ``argv``; require exit 2, one error line and nothing new in the working folder and ``watched``."""
    folders = (Path.cwd(), *watched)
    before = files(*folders)
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sciffusion: error: "), (code, err)
    assert files(*folders) == before, f"new files: {sorted(map(str, files(*folders) - before))}"
    return lines[0]


DAMAGES = {"truncated": lambda data: data[: len(data) // 2], "empty": lambda data: b"",
           "garbage": lambda data: b"\x00not a checkpoint\xff" * 40}


def damaged_copy(run: Path, dest: Path, name: str, damage: str) -> Path:
    """A copy of ``run`` with ``checkpoints/last/<name>`` damaged (a ``DAMAGES`` key, or new text); returns the file."""
    shutil.copytree(run, dest)
    path = dest / "checkpoints" / "last" / name
    path.write_bytes(DAMAGES[damage](path.read_bytes()) if damage in DAMAGES else damage.encode())
    return path


# ------------------------------------------------------------------------------------ tiny runs


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny images run (``images``) and a tiny timeseries run (``series``, trained on ``train.csv``)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    assert main(["train", DIGITS, f"run_dir={root / 'images'}", *TINY_IMAGES]) == 0
    write_series_csv(root / "train.csv", n=120, seed=1)
    config = {
        "domain": "timeseries", "seed": 0, "run_dir": str(root / "series"),
        "data": {"source": "csv", "path": str(root / "train.csv"), "window": 12, "stride": 4, "test_fraction": 0.2},
        "net": TINY_CSDI, "process": {"name": "vp", "schedule": "quad", "num_train_steps": 20, "beta_end": 0.5},
        "trainer": QUICK, "sample": {"solver": "ddim", "steps": 2, "n": 4, "batch_size": 64},
    }
    (root / "series.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(root / "series.yaml")]) == 0
    write_series_csv(root / "gaps.csv", n=30, seed=2)
    return root


@pytest.fixture(scope="session")
def planner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PointMaze U-Maze planner run."""
    pytest.importorskip("gymnasium_robotics")
    root = tmp_path_factory.mktemp("bad_inputs_planner")
    config = {
        "domain": "control", "seed": 0, "run_dir": str(root / "run"),
        "data": {"env": "pointmaze-umaze", "generate_steps": 1000, "cache": str(root / "data")},
        "task": {"kind": "planner", "horizon": 8, "stride": 8},
        "net": {"name": "temporal_unet1d", "dim": 8, "dim_mults": [1, 2]},
        "process": {"name": "vp", "schedule": "cosine", "prediction": "x0", "num_train_steps": 32},
        "trainer": {**QUICK, "batch_size": 4}, "sample": {"solver": "ddim", "steps": 2}, "control": {"episodes": 1},
    }
    (root / "planner.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(root / "planner.yaml")]) == 0
    return root / "run"


@pytest.fixture(autouse=True)
def work_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in an empty working folder (``fails`` checks that nothing appears in it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCIFFUSION_CACHE", str(tmp_path / ".cache"))
    return tmp_path


# ------------------------------------------------------------------------------------ damaged checkpoints


META_DAMAGE = ["{not json", "[1, 2]", '{"format": "sciffusion-checkpoint/1"}', '{"format": "sciffusion-checkpoint/1", "step": "two"}']


@pytest.mark.parametrize("command", ["sample", "evaluate"])
@pytest.mark.parametrize("name,damage", [("ema.safetensors", d) for d in ("truncated", "empty", "garbage")]
                         + [("meta.json", d) for d in META_DAMAGE])
def test_damaged_checkpoint_on_sample_and_evaluate(runs: Path, tmp_path: Path, capsys, command: str, name: str, damage: str) -> None:
    run = tmp_path / "run"
    path = damaged_copy(runs / "images", run, name, damage)
    assert str(path) in fails([command, run, "--n", "10", "--steps", "1"], capsys, run)


@pytest.mark.parametrize("name,damage", [("model.safetensors", d) for d in ("truncated", "empty", "garbage")]
                         + [("optimizer.safetensors", "truncated"), ("optimizer.safetensors", "garbage"),
                            ("ema.safetensors", "truncated"), ("meta.json", META_DAMAGE[2])])
def test_damaged_checkpoint_on_train_resume(runs: Path, tmp_path: Path, capsys, name: str, damage: str) -> None:
    run = tmp_path / "run"
    path = damaged_copy(runs / "images", run, name, damage)
    assert str(path) in fails(["train", run / "config.yaml", f"run_dir={run}", "trainer.max_steps=4", "--resume"], capsys, run)


def test_damaged_run_config_and_series_metadata_name_their_file(runs: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "images"
    shutil.copytree(runs / "images", run)
    (run / "config.yaml").write_text("seed: 0\n")
    assert str(run / "config.yaml") in fails(["sample", run], capsys, run)
    series = tmp_path / "series"
    shutil.copytree(runs / "series", series)
    (series / "series.json").write_text('{"features": ["temp"]}')
    line = fails(["impute", series, "--input", runs / "gaps.csv", "--output", "out.csv"], capsys, series)
    assert str(series / "series.json") in line


# ------------------------------------------------------------------------------------ net settings


@pytest.mark.parametrize("override,key", [
    ("net.channels=7", "net.channels"),  # 7 x 2 channels at the attention level, 4 attention heads
    ("net.channel_mults=[]", "net.channel_mults"),
    ("net.channel_mults=[1, 0]", "net.channel_mults"),
    ("net.attention_levels=[3]", "net.attention_levels"),
    ("net.channel_mults=[1, 1, 1, 1, 1]", "net.channel_mults"),  # deeper than 8x8 images allow
    ("net.blocks_per_level=0", "net.blocks_per_level"),
    ("net.in_channels=3", "net.in_channels"),
    ("net.dropout=1.5", "net.dropout"),
    ("sample.guidance_scale=.nan", "sample.guidance_scale"),
])
def test_unet2d_settings_the_net_cannot_take(tmp_path: Path, capsys, override: str, key: str) -> None:
    assert f"'{key}'" in fails(["train", DIGITS, f"run_dir={tmp_path / 'run'}", *SAFETY, override], capsys)


@pytest.mark.parametrize("override,key", [
    ("net.heads=5", "net.channels"),  # 32 channels, 5 heads
    ("net.layers=0", "net.layers"),
    ("net.channels=0", "net.channels"),
    ("net.dropout=-0.1", "net.dropout"),
    ("net.time_scale=0", "net.time_scale"),
])
def test_csdi_settings_the_net_cannot_take(tmp_path: Path, capsys, override: str, key: str) -> None:
    assert f"'{key}'" in fails(["train", WEATHER, f"run_dir={tmp_path / 'run'}", *SAFETY, override], capsys)


@pytest.mark.parametrize("override,key", [
    ("net.dim_mults=[]", "net.dim_mults"),
    ("net.kernel_size=4", "net.kernel_size"),
    ("net.dim=0", "net.dim"),
    ("net.cond_dims={obs: 0}", "net.cond_dims"),
    ("net={name: temporal_transformer, d_model: 30, n_heads: 4}", "net.d_model"),
    ("net={name: temporal_transformer, n_layers: 0}", "net.n_layers"),
    ("net={name: temporal_value, kernel_size: 2}", "net.kernel_size"),
    ("task.horizon=30", "task.horizon"),  # three U-Net levels need a multiple of 4
])
def test_temporal_net_settings_the_net_cannot_take(tmp_path: Path, capsys, override: str, key: str) -> None:
    pytest.importorskip("gymnasium")
    safety = [*SAFETY, "data.generate_steps=1000", f"data.cache={tmp_path / 'data'}"]
    assert f"'{key}'" in fails(["train", UMAZE, f"run_dir={tmp_path / 'run'}", *safety, override], capsys)


def test_guidance_keys_the_net_does_not_take(tmp_path: Path, capsys) -> None:
    pytest.importorskip("gymnasium")
    line = fails(["train", PUSHT, f"run_dir={tmp_path / 'run'}", *SAFETY, "net.cfg_keys=[goal]"], capsys)
    assert "'cfg_keys' names ['goal'], which the network does not take" in line


# ------------------------------------------------------------------------------------ paths that are files


def test_run_dir_and_out_that_are_existing_files(runs: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("a file\n")
    taken = tmp_path / "taken"
    assert "is an existing file" in fails(["train", DIGITS, f"run_dir={taken}"], capsys)
    assert "is an existing file" in fails(["train", DIGITS, f"run_dir={taken / 'run'}"], capsys)
    assert "is a file, not a run folder" in fails(["sample", taken], capsys)
    assert "is a file, not a run folder" in fails(["evaluate", taken], capsys)
    assert "is an existing file" in fails(["sample", runs / "images", "--out", taken], capsys, runs / "images")
    assert "is an existing file" in fails(["sample", runs / "images", "--out", taken / "grid.png"], capsys, runs / "images")
    (tmp_path / "folder.csv").mkdir()
    assert "is an existing folder" in fails(["impute", runs / "series", "--input", runs / "gaps.csv", "--output",
                                            tmp_path / "folder.csv"], capsys, runs / "series")


# ------------------------------------------------------------------------------------ wrong results that exited 0


@pytest.mark.parametrize("args,message", [
    (["--guidance-scale", "nan"], "argument --guidance-scale: must be a finite number"),
    (["--guidance-scale", "inf"], "argument --guidance-scale: must be a finite number"),
    (["--n", "0"], "argument --n: must be >= 1"),
    (["--n", "-3"], "argument --n: must be >= 1"),
    (["--steps", "0"], "argument --steps: must be >= 1"),
    (["--steps", "two"], "argument --steps: must be an integer"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["--eta", "-1"], "argument --eta: must be >= 0"),
    (["--solver", "magic"], "unknown solver 'magic'"),
    (["--out", "grid.jpg"], "give a .png file or a folder"),
    (["--out", "grid.gif"], "give a .png file or a folder"),
])
@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_sample_and_evaluate_refuse_bad_settings(runs: Path, capsys, command: str, args: list[str], message: str) -> None:
    if command == "evaluate" and args[0] == "--out":
        message = "unrecognized arguments"
    assert message in fails([command, runs / "images", *args], capsys, runs / "images")


def test_impute_refuses_extreme_values_and_zero_counts(runs: Path, tmp_path: Path, capsys) -> None:
    frame = pd.read_csv(runs / "gaps.csv")
    frame.loc[5, "wind"] = 1e300
    frame.to_csv(tmp_path / "extreme.csv", index=False)
    base = ["impute", runs / "series", "--output", tmp_path / "out.csv"]
    line = fails([*base, "--input", tmp_path / "extreme.csv"], capsys, runs / "series")
    assert "feature 'wind' holds 1e+300" in line and "training standard deviations" in line
    assert "refusing to overwrite the input file" in fails(
        ["impute", runs / "series", "--input", tmp_path / "extreme.csv", "--output", tmp_path / "extreme.csv"], capsys)
    for flag in ("--samples", "--steps", "--batch-size"):
        assert f"argument {flag}: must be >= 1" in fails([*base, "--input", runs / "gaps.csv", flag, "0"], capsys, runs / "series")


@pytest.mark.parametrize("args,message", [
    (["--episodes", "0"], "argument --episodes: must be >= 1"),
    (["--steps", "0"], "argument --steps: must be >= 1"),
    (["--mode", "receding", "--replan-every", "0"], "argument --replan-every: must be >= 1"),
    (["--render", "rollout.png"], "--render rollout.png: unsupported file type ('.png'; use .gif)"),
    (["--render", "rollout"], "unsupported file type (no suffix; use .gif)"),
    (["--out", "plots.png"], "writes a folder here, not a .png file"),
    (["--solver", "magic"], "unknown solver 'magic'"),
])
def test_plan_refuses_bad_settings(planner: Path, capsys, args: list[str], message: str) -> None:
    assert message in fails(["plan", planner, *args], capsys, planner)


def test_plan_out_and_render_in_the_way_of_files(planner: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("a file\n")
    assert "is an existing file" in fails(["plan", planner, "--out", tmp_path / "taken"], capsys, planner)
    assert "is an existing file" in fails(["plan", planner, "--render", tmp_path / "taken" / "x.gif"], capsys, planner)
    assert "is an existing file" in fails(["sample", planner, "--out", tmp_path / "taken"], capsys, planner)
    assert "writes a folder here, not a .png file" in fails(["sample", planner, "--out", "plans.png"], capsys, planner)


def test_a_path_error_deep_inside_a_command_is_one_line(runs: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from sciffusion.domains.images.domain import ImagesDomain

    def blocked(self: ImagesDomain, run: object, args: object) -> None:
        raise NotADirectoryError(20, "Not a directory", "grids/samples.png")

    monkeypatch.setattr(ImagesDomain, "sample", blocked)
    assert fails(["sample", runs / "images"], capsys) == "sciffusion: error: grids/samples.png: part of the path is a file, not a folder"


# ------------------------------------------------------------------------------------ outputs of impute


@pytest.mark.parametrize("flag,path,message", [
    ("--plot", "missing/plot.png", "folder missing does not exist"),
    ("--save-samples", "missing/samples.npz", "folder missing does not exist"),
    ("--plot", "plot.jpg", "unsupported file type ('.jpg'; use .png)"),
    ("--save-samples", "samples.csv", "unsupported file type ('.csv'; use .npz)"),
    ("--plot-features", "temp,gust", "unknown features ['gust']"),
])
def test_impute_checks_every_output_before_it_works(runs: Path, capsys, flag: str, path: str, message: str) -> None:
    line = fails(["impute", runs / "series", "--input", runs / "gaps.csv", "--output", "out.csv", flag, path], capsys, runs / "series")
    assert message in line and ".out.csv." not in line, "the message names the user's paths, not a temporary"


def test_impute_reports_non_finite_samples_as_an_error(runs: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ImputationModel.impute

    def broken(self: ImputationModel, values: torch.Tensor, cond_mask: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        draws = real(self, values, cond_mask, *args, **kwargs)
        draws[:, :, 1] = float("nan")  # every sample of feature 'dew' (gaps at rows 20-27: windows 2 and 3 of 3)
        return draws

    monkeypatch.setattr(ImputationModel, "impute", broken)
    line = fails(["impute", runs / "series", "--input", runs / "gaps.csv", "--output", "out.csv", "--plot", "plot.png",
                  "--save-samples", "samples.npz", "--no-calibrate"], capsys, runs / "series")
    assert "non-finite samples for feature 'dew' in window 2 of 3" in line and "2024-03-01 12:00:00" in line
    # with calibration the first imputation is the calibration's (dew hidden in every window): it fails there
    line = fails(["impute", runs / "series", "--input", runs / "gaps.csv", "--output", "out.csv"], capsys, runs / "series")
    assert "non-finite samples for feature 'dew'" in line


def test_impute_writes_all_outputs_together(runs: Path, capsys) -> None:
    code = main(["impute", str(runs / "series"), "--input", str(runs / "gaps.csv"), "--output", "out.csv", "--plot", "plot.png",
                 "--save-samples", "samples.npz"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in Path.cwd().iterdir()) == ["out.csv", "out.csv.json", "out_reliability.png", "plot.png",
                                                            "samples.npz"]
    assert pd.read_csv("out.csv")[["temp", "dew", "wind"]].notna().all().all()


# ------------------------------------------------------------------------------------ quiet, pickle-free output


def test_sample_writes_the_png_only_and_evaluate_prints_once(runs: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from sciffusion.domains.images import domain as images

    assert main(["sample", str(runs / "images"), "--n", "10", "--steps", "1", "--out", "grids"]) == 0
    assert sorted(p.name for p in Path("grids").iterdir()) == ["samples.png"]
    assert main(["sample", str(runs / "images"), "--n", "10", "--steps", "1", "--out", "one.png"]) == 0
    assert sorted(p.name for p in Path.cwd().iterdir()) == ["grids", "one.png"]
    quick = images.train_classifier
    monkeypatch.setattr(images, "train_classifier", lambda split: quick(split, epochs=1))
    capsys.readouterr()
    assert main(["evaluate", str(runs / "images"), "--n", "20", "--steps", "1"]) == 0
    assert capsys.readouterr().out.count('"class_accuracy"') == 1


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path: Path, capsys) -> None:
    config = write_toy_config(tmp_path / "toy.yaml", tmp_path / "run", trainer={"progress": True, "max_steps": 20})
    assert main(["train", str(config)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "step/s" not in err and "it/s" not in err and len(err) < 1000, err
