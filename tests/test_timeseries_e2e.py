"""End to end on CPU: the CSDI net, batched imputation, `sciffusion train` + `sciffusion impute`."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _series_data import write_series_csv  # noqa: E402

from sciffusion.cli import main  # noqa: E402
from sciffusion.domains.timeseries.csdi import build_csdi  # noqa: E402
from sciffusion.domains.timeseries.domain import _mask_fn  # noqa: E402
from sciffusion.domains.timeseries.masks import MaskConfig  # noqa: E402
from sciffusion.model import DiffusionModel  # noqa: E402
from sciffusion.processes.gaussian import FlowProcess, VPProcess  # noqa: E402
from sciffusion.tasks.impute import ImputationModel  # noqa: E402

TINY_NET = {"name": "csdi", "channels": 8, "layers": 1, "heads": 2, "ff_dim": 16, "diffusion_embedding_dim": 16,
            "time_embedding_dim": 16, "feature_embedding_dim": 4, "dropout": 0.0}


def tiny_model(process) -> ImputationModel:
    torch.manual_seed(0)
    net = build_csdi(**{k: v for k, v in TINY_NET.items() if k != "name"}, num_features=3)
    return ImputationModel(DiffusionModel(net, {"values": process}), _mask_fn(MaskConfig(strategy="random")))


def cond_batch(batch: int = 2, features: int = 3, length: int = 10):
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(batch, features, length, generator=gen)
    cond = (torch.rand(batch, features, length, generator=gen) < 0.6).float()
    time = torch.arange(length, dtype=torch.float32).expand(batch, length)
    return values, cond, time


def test_csdi_net_ignores_the_noisy_state_on_conditioned_entries() -> None:
    net = build_csdi(**{k: v for k, v in TINY_NET.items() if k != "name"}, num_features=3).eval()
    values, cond, time = cond_batch()
    x = torch.randn_like(values)
    c = {"cond_values": values, "cond_mask": cond, "time": time}
    with torch.no_grad():
        out = net({"values": x}, torch.full((2,), 0.5), c)["values"]
        moved = net({"values": x + 5.0 * cond}, torch.full((2,), 0.5), c)["values"]
    assert out.shape == values.shape
    torch.testing.assert_close(out, moved)


@pytest.mark.parametrize("process,solver,steps", [(VPProcess("quad", num_train_steps=50, beta_end=0.5), "ddpm", 10),
                                                  (VPProcess("quad", num_train_steps=50, beta_end=0.5), "dpmpp_2m", 5),
                                                  (FlowProcess(), "euler", 4)])
def test_imputation_keeps_conditioning_entries_exactly(process, solver: str, steps: int) -> None:
    model = tiny_model(process).eval()
    values, cond, time = cond_batch()
    samples = model.impute(values, cond, time, n_samples=6, solver=solver, steps=steps, max_batch=12,
                           generator=torch.Generator().manual_seed(0))
    assert samples.shape == (6, 2, 3, 10)
    kept = cond.bool().expand_as(samples)
    assert torch.equal(samples[kept], (values * cond).expand_as(samples)[kept])
    assert float(samples[~kept].std()) > 0.05, "missing entries are sampled, not copied"
    # batches of 4 series split a window's samples and mix windows in one batch (rows 4..7): every row still
    # conditions on its own window
    again = model.impute(values, cond, time, n_samples=6, solver=solver, steps=steps, max_batch=4,
                         generator=torch.Generator().manual_seed(0))
    assert again.shape == samples.shape
    assert torch.equal(again[kept], samples[kept])
    assert float(again[~kept].std()) > 0.05


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ts")
    write_series_csv(root / "train.csv", n=240, seed=1)
    config = {
        "domain": "timeseries", "seed": 0, "run_dir": str(root / "run"),
        "data": {"source": "csv", "path": str(root / "train.csv"), "window": 12, "stride": 2, "test_fraction": 0.2},
        "mask": {"strategy": "mix"},
        "net": TINY_NET,
        "process": {"name": "vp", "schedule": "quad", "num_train_steps": 50, "beta_end": 0.5},
        "trainer": {"max_steps": 30, "batch_size": 8, "lr": 2e-3, "log_every": 10, "checkpoint_every": 30, "progress": False},
        "sample": {"solver": "dpmpp_2m", "steps": 4, "n": 8, "batch_size": 64},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(root / "config.yaml")]) == 0
    return root


def test_train_then_impute_a_csv(trained: Path, capsys) -> None:
    source = write_series_csv(trained / "new.csv", n=30, seed=2)
    out, plot = trained / "imputed.csv", trained / "imputed.png"
    code = main(["impute", str(trained / "run"), "--input", str(trained / "new.csv"), "--output", str(out), "--samples", "8",
                 "--steps", "4", "--plot", str(plot)])
    assert code == 0, capsys.readouterr().err
    result = pd.read_csv(out)
    features = ["temp", "dew", "wind"]
    assert list(result.columns[:4]) == ["time", *features]
    assert (result["time"] == source["time"]).all()
    observed = source[features].notna()
    for name in features:
        assert (result.loc[observed[name], name] == source.loc[observed[name], name]).all(), "observed values unchanged"
        quantiles = result[[f"{name}_q{q:02d}" for q in (5, 25, 50, 75, 95)]].to_numpy()
        assert (np.diff(quantiles, axis=1) >= -1e-9).all()
        np.testing.assert_allclose(result[f"{name}_q50"], result[name])
    assert result[features].notna().all().all()
    gap = ~observed["dew"]
    assert (result.loc[gap, "dew_q95"] - result.loc[gap, "dew_q05"] > 0).all(), "gaps get a real band"
    assert plot.stat().st_size > 1000
    assert f"imputed {int(source[features].isna().sum().sum())} missing entries" in capsys.readouterr().out


def test_evaluate_scores_held_out_entries_against_baselines(trained: Path) -> None:
    assert main(["evaluate", str(trained / "run"), "--n", "8", "--steps", "3"]) == 0
    import json

    metrics = json.loads((trained / "run" / "metrics.json").read_text())
    assert metrics["model"]["num_targets"] > 0
    assert 0.0 <= metrics["model"]["coverage90"] <= 1.0
    assert metrics["linear_interpolation"]["mae"] > 0 and metrics["feature_mean"]["mae"] > 0
    assert (trained / "run" / "evaluation.png").is_file()


def test_a_file_with_nothing_missing_is_copied_with_a_note(trained: Path, capsys) -> None:
    write_series_csv(trained / "full.csv", n=20, gaps=False)
    out = trained / "full_out.csv"
    assert main(["impute", str(trained / "run"), "--input", str(trained / "full.csv"), "--output", str(out)]) == 0
    assert out.read_bytes() == (trained / "full.csv").read_bytes()
    assert "no missing values" in capsys.readouterr().out


def test_a_feature_never_measured_in_the_file_is_imputed(trained: Path, capsys) -> None:
    write_series_csv(trained / "no_dew.csv", n=20, seed=4).assign(dew=np.nan).to_csv(trained / "no_dew.csv", index=False)
    out = trained / "no_dew_out.csv"
    assert main(["impute", str(trained / "run"), "--input", str(trained / "no_dew.csv"), "--output", str(out),
                 "--samples", "8", "--steps", "3"]) == 0, capsys.readouterr().err
    result = pd.read_csv(out)
    assert result["dew"].notna().all() and (result["dew_q95"] - result["dew_q05"] > 0).all()


@pytest.mark.parametrize("edit,message", [
    (lambda f: f.rename(columns={"wind": "gust"}), "columns do not match the trained model"),
    (lambda f: f.assign(temp=["warm"] + list(f["temp"][1:])), "feature column 'temp' is not numeric"),
    (lambda f: f.iloc[::-1], "not sorted"),
    (lambda f: pd.concat([f.iloc[:3], f.iloc[2:]]), "duplicated time stamp"),
])
def test_bad_input_exits_non_zero_and_writes_nothing(trained: Path, capsys, edit, message: str) -> None:
    frame = write_series_csv(trained / "base.csv", n=20, seed=3)
    edit(frame).to_csv(trained / "bad.csv", index=False)
    out = trained / "bad_out.csv"
    code = main(["impute", str(trained / "run"), "--input", str(trained / "bad.csv"), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()
    assert not list(trained.glob(".bad_out.csv*")), "no temp file left behind"
