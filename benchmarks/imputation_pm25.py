"""AQI-36 (PM2.5) imputation benchmark: sciffusion's CSDI vs PyPOTS' CSDI vs interpolation vs mean.

CSDI's protocol: test months 3/6/9/12, 36-hour non-overlapping windows (the last window of a month
aligned to its end, already-covered points not scored twice), targets = entries present in
``pm25_ground.txt`` and absent from ``pm25_missing.txt`` (20,434), metrics on targets only in
original units, 100 samples, point estimate = sample median, CRPS = CSDI's 19-quantile CRPS.

Both diffusion models get the same architecture size, batch size, learning rate and the same
wall-clock training budget, on the same machine, trained at the same time (one thread each) so
that both see the same machine load:

* ours: ``sciffusion train configs/timeseries/pm25_cpu.yaml trainer.max_minutes=BUDGET`` (the real CLI in a
  subprocess; the trainer saves and stops when the budget is spent); the last checkpoint (EMA weights) is used;
* PyPOTS ``CSDI``: trained in chunks of shuffled windows (one-epoch ``fit`` calls on random subsets,
  its optimizer persists) until the budget is spent.

Sampling cost on a CPU is the bottleneck (100 samples x 50 steps per window), so the
model-vs-model comparison uses a fixed, evenly spread subset of test windows (stated in the JSON),
and our fast solver also runs on a larger subset (``--large-per-month 0`` skips it). ``--full-test`` also
samples our model on all 82 test windows with both the fast solver and 50-step ancestral sampling; the
fast-solver CRPS and coverage bars then use the whole test set. Interpolation and mean use the whole test
set and the subsets. A phase imputes all 82 test windows with 100 samples through the same chunked pipeline
(1 solver step) to measure peak memory; the last one (``calibration``) imputes the whole test set with the fast
solver before and after ``impute``'s conformal calibration, fitted on the test windows' own observed entries only:
the coverage and ``calibrated_crps_ratio_vs_uncalibrated`` bars use it. Usage::

    python benchmarks/imputation_pm25.py [--budget-min 50] [--full-test] [--pypots-path DIR] [--work DIR]
    python benchmarks/imputation_pm25.py --phase pilot --work DIR --run-dir DIR/ours_run   # choose the fast solver
    python benchmarks/imputation_pm25.py --phase report --work DIR     # rebuild the JSON from DIR
    python benchmarks/imputation_pm25.py --phase calibration_pilot --run-dir RUN --work DIR  # calibration grouping
    python benchmarks/imputation_pm25.py --phase calibration --run-dir RUN --work DIR --update-results \
        --calibration-note "..."   # the calibration phase alone, into the published JSON
    python benchmarks/imputation_pm25.py --budget-min 0.5 --samples 2 --compare-per-month 1 --large-per-month 1 \
        --timing-rounds 1 --results-dir DIR                           # a tiny end-to-end check (minutes)

``--pypots-path`` adds a folder to PyPOTS' ``sys.path`` (e.g. one holding the ``transformers`` /
``huggingface-hub`` versions it pins, when the main environment has newer ones).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
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
CONFIG = ROOT / "configs" / "timeseries" / "pm25_cpu.yaml"
DATA = ROOT.parent / "shared" / "data" / "timeseries" / "pm25"
WINDOW = 36
ANCHORS = [
    {"name": "CSDI (Tashiro et al. 2021), paper", "mae": 9.60, "crps": 0.108, "note": "paper number, GPU, 200 epochs, full-size model"},
    {"name": "PriSTI (Liu et al. 2023), paper", "mae": 9.03, "crps": 0.0997, "note": "paper number, GPU, 200 epochs"},
]


# ------------------------------------------------------------------------------------ data


def windows_of(segments, conds, normalizer):
    """Non-overlapping windows of ``segments`` with their conditioning masks (CSDI's evaluation layout: the last
    window of a segment aligned to its end, already-covered points not rescored): dict of stacked tensors with the
    original values (``raw``) and the target mask, plus the windows object."""
    from sciffusion.domains.timeseries.series import SeriesWindows

    windows = SeriesWindows(segments, normalizer, WINDOW, stride=WINDOW, cond_masks=conds)
    stack = windows.stacked()
    raw = []  # original values per window (K, L)
    for seg, start, _ in windows.windows:
        raw.append(np.nan_to_num(segments[seg].values[:, start:start + WINDOW]))
    stack["raw"] = torch.as_tensor(np.stack(raw))
    target = stack["observed_mask"] * (1 - stack["cond_mask"])
    positions = torch.arange(WINDOW)
    target = target * (positions[None, None, :] >= stack["skip"][:, None, None]).to(target.dtype)
    stack["target_mask"] = target
    return windows, stack


def test_windows():
    """All CSDI test windows: the split, the windows and their stacked tensors (W, ...)."""
    from sciffusion.domains.timeseries.datasets import load_pm25

    data = load_pm25(DATA)
    windows, stack = windows_of(data.test, data.test_cond, data.normalizer)
    return data, windows, stack


def subset(windows, per_month: int) -> list[int]:
    """``per_month`` evenly spread window indices in each test month (fixed, no randomness)."""
    chosen = []
    for seg in np.unique(windows.windows[:, 0]):
        idx = np.flatnonzero(windows.windows[:, 0] == seg)
        picks = np.linspace(0, len(idx) - 1, per_month + 2)[1:-1].round().astype(int)
        chosen.extend(int(idx[p]) for p in picks)
    return chosen


def solver_label(solver: str, steps: int, eta: float) -> str:
    return f"{solver}_{steps}" + (f"_eta{eta:g}" if eta else "")


def metrics_of(samples: np.ndarray, stack, rows: list[int]) -> dict:
    from sciffusion.domains.timeseries.metrics import summary

    return summary(torch.as_tensor(samples, dtype=torch.float64), stack["raw"][rows], stack["target_mask"][rows])


# ------------------------------------------------------------------------------------ phases


def phase_ours_eval(args) -> None:
    """Sample with our trained run: fast solver and 50-step ancestral on the comparison subset,
    fast solver on the larger subset. Writes samples and timings; records peak RSS."""
    from sciffusion.domain import load_run

    torch.set_num_threads(args.threads)
    data, windows, stack = test_windows()
    run = load_run(args.run_dir, device="cpu")
    model, norm = run.model, data.normalizer
    out = {}
    plans = [("fast_compare", args.compare, args.fast_solver, args.fast_steps, args.fast_eta),
             ("ddim10_compare", args.compare, "ddim", 10, 0.0),
             ("ancestral_compare", args.compare, "ddpm", 50, 0.0)]
    if args.large:
        plans.append(("fast_large", args.large, args.fast_solver, args.fast_steps, args.fast_eta))
    if args.full_test:
        everything = list(range(stack["values"].shape[0]))
        plans += [("fast_full", everything, args.fast_solver, args.fast_steps, args.fast_eta),
                  ("ancestral_full", everything, "ddpm", 50, 0.0)]
    for name, rows, solver, steps, eta in plans:
        done = Path(args.work) / f"ours_{name}.json"
        if done.is_file() and (Path(args.work) / f"ours_{name}.npy").is_file():  # resumed: keep what was measured
            out[name] = json.loads(done.read_text())
            continue
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        draws = model.impute(stack["values"][rows], stack["cond_mask"][rows], stack["time"][rows], args.samples, solver,
                             steps, eta=eta, max_batch=args.max_batch, generator=generator)
        seconds = time.perf_counter() - start
        samples = norm.inverse(draws.double()).numpy()
        np.save(Path(args.work) / f"ours_{name}.npy", samples.astype(np.float32))
        out[name] = {"solver": solver, "steps": steps, "eta": eta, "windows": len(rows), "seconds": seconds}
        done.write_text(json.dumps(out[name]))
        print(f"ours {name}: {len(rows)} windows, {seconds:.1f} s", flush=True)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    (Path(args.work) / "ours_eval.json").write_text(json.dumps(out))


PILOT_SOLVERS = [("ddpm", 50, 0.0), ("ddim", 10, 0.0), ("ddim", 10, 0.5), ("ddim", 10, 1.0), ("dpmpp_2m", 8, 0.0),
                 ("dpmpp_2m", 10, 0.0)]


def validation_windows():
    """Windows of the validation month (January: trained on by neither model, never a test month), with the
    test months' target rule: the split and the stacked tensors."""
    from sciffusion.domains.timeseries.datasets import load_pm25, pm25_month

    data = load_pm25(DATA)
    segment, cond = pm25_month(DATA, 1)
    return data, windows_of([segment], [cond], data.normalizer)[1]


CRPS_RATIO_LIMIT = 1.03  # the fast-solver bar: CRPS at most 3% above 50-step ancestral sampling


PILOT_RULE = "the lowest CRPS among the <= 10-NFE candidates; the config's sample section is set to it"


def choose_fast_solver(found: dict[str, dict]) -> str:
    """:data:`PILOT_RULE` applied to the pilot's scores (label -> metrics)."""
    fast = {name: row for name, row in found.items() if name != solver_label("ddpm", 50, 0.0)}
    return min(fast, key=lambda name: fast[name]["crps"])


def phase_pilot(args) -> None:
    """Choose the fast solver on validation-month windows (:func:`choose_fast_solver`): CRPS of each <= 10-NFE
    candidate relative to 50-step ancestral sampling, and 90% coverage, on a trained run (``--run-dir``). Writes
    results/imputation_pm25_pilot.json."""
    from sciffusion.domain import load_run

    torch.set_num_threads(args.threads)
    data, stack = validation_windows()
    total = stack["values"].shape[0]
    rows = list(range(total)) if not args.pilot_windows else list(range(0, total, max(1, total // args.pilot_windows)))[:args.pilot_windows]
    model = load_run(args.run_dir, device="cpu").model
    found = {}
    for solver, steps, eta in PILOT_SOLVERS:
        start = time.perf_counter()
        draws = model.impute(stack["values"][rows], stack["cond_mask"][rows], stack["time"][rows], args.samples, solver,
                             steps, eta=eta, max_batch=args.max_batch, generator=torch.Generator().manual_seed(0))
        scores = metrics_of(data.normalizer.inverse(draws.double()).numpy(), stack, rows)
        found[solver_label(solver, steps, eta)] = {**scores, "seconds": time.perf_counter() - start}
        print(solver_label(solver, steps, eta), found[solver_label(solver, steps, eta)], flush=True)
    reference = found[solver_label("ddpm", 50, 0.0)]["crps"]
    for row in found.values():
        row["crps_ratio_vs_ancestral50"] = row["crps"] / reference
    chosen = choose_fast_solver(found)
    meta = json.loads((Path(args.run_dir) / "checkpoints" / "last" / "meta.json").read_text())
    write_results("imputation_pm25_pilot", {
        "torch_threads": args.threads, "run": {"config": str(CONFIG.relative_to(ROOT)), "checkpoint_step": int(meta["step"])},
        "windows": {"month": 1, "rows": rows, "targets": int(stack["target_mask"][rows].sum())},
        "samples": args.samples, "solvers": found,
        "chosen": {"solver": chosen, "rule": PILOT_RULE}},
        packages=("sciffusion", "torch", "numpy", "pandas"), folder=args.results_dir)


def phase_rss_full(args) -> None:
    """Impute the whole test set (82 windows) with ``args.samples`` samples through the same chunked
    pipeline, keeping every sample, with a 1-step DDIM: memory does not depend on the step count,
    so this measures the peak resident memory of a full-test-set run at a fraction of its time."""
    from sciffusion.domain import load_run

    torch.set_num_threads(args.threads)
    data, _, stack = test_windows()
    model = load_run(args.run_dir, device="cpu").model
    start = time.perf_counter()
    draws = model.impute(stack["values"], stack["cond_mask"], stack["time"], args.samples, "ddim", 1,
                         max_batch=args.max_batch, generator=torch.Generator().manual_seed(0))
    samples = data.normalizer.inverse(draws.double()).float()
    info = {"windows": int(samples.shape[1]), "samples": int(samples.shape[0]), "solver": "ddim", "steps": 1,
            "seconds": time.perf_counter() - start, "max_batch": args.max_batch,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    (Path(args.work) / "rss_full.json").write_text(json.dumps(info))
    print(f"full test set: {info}", flush=True)


def phase_timing(args) -> None:
    """Speed of the fast solver vs 50-step ancestral sampling, measured back to back in one process on one window
    with ``args.samples`` samples: ``args.timing_rounds`` rounds of (fast, ancestral), then fast once more, so that
    both see the same machine load; the speedup uses the fastest run of each (timeit's advice: slower runs are
    other jobs' interference, not the code)."""
    from sciffusion.domain import load_run

    torch.set_num_threads(args.threads)
    _, _, stack = test_windows()
    model = load_run(args.run_dir, device="cpu").model
    rows = args.compare[:1]
    runs: dict[str, list[float]] = {}
    fast = (args.fast_solver, args.fast_steps, args.fast_eta)
    order = [fast, ("ddpm", 50, 0.0)] * args.timing_rounds + [fast]
    for solver, steps, eta in order:
        start = time.perf_counter()
        model.impute(stack["values"][rows], stack["cond_mask"][rows], stack["time"][rows], args.samples, solver, steps,
                     eta=eta, max_batch=args.max_batch, generator=torch.Generator().manual_seed(0))
        runs.setdefault(solver_label(solver, steps, eta), []).append(time.perf_counter() - start)
        print(f"timing {solver_label(solver, steps, eta)}: {runs[solver_label(solver, steps, eta)][-1]:.1f} s", flush=True)
    info = {"windows": len(rows), "samples": args.samples, "order": [solver_label(*o) for o in order], "seconds": runs,
            "statistic": "fastest run of each"}
    (Path(args.work) / "timing.json").write_text(json.dumps(info))


BATCH_SIZES = (400, 100, 25)  # series per network batch compared by phase_batch_timing


def phase_batch_timing(args) -> None:
    """Per-window time of the fast solver on one window with ``args.samples`` samples at several network batch sizes,
    two interleaved rounds, fastest of each: why the CPU config samples in small batches."""
    from sciffusion.domain import load_run

    torch.set_num_threads(args.threads)
    _, _, stack = test_windows()
    model = load_run(args.run_dir, device="cpu").model
    rows = args.compare[:1]
    runs: dict[str, list[float]] = {}
    for size in BATCH_SIZES * 2:
        start = time.perf_counter()
        model.impute(stack["values"][rows], stack["cond_mask"][rows], stack["time"][rows], args.samples, args.fast_solver,
                     args.fast_steps, eta=args.fast_eta, max_batch=size, generator=torch.Generator().manual_seed(0))
        runs.setdefault(str(size), []).append(time.perf_counter() - start)
        print(f"batch {size}: {runs[str(size)][-1]:.1f} s", flush=True)
    info = {"solver": solver_label(args.fast_solver, args.fast_steps, args.fast_eta), "windows": len(rows),
            "samples": args.samples, "seconds_by_max_batch": runs, "statistic": "fastest run of each"}
    (Path(args.work) / "batch_timing.json").write_text(json.dumps(info))


def phase_pypots(args) -> None:
    """Train PyPOTS' CSDI for the wall-clock budget, then sample the comparison subset."""
    if args.pypots_path:
        sys.path.insert(0, args.pypots_path)
    torch.set_num_threads(args.threads)
    from _pypots import train_pypots_csdi

    from sciffusion.domains.timeseries.series import SeriesWindows

    data, windows, stack = test_windows()
    train = SeriesWindows(data.train, data.normalizer, WINDOW, stride=1).stacked()
    x_train = np.where(train["observed_mask"].bool().numpy(), train["values"].numpy(), np.nan).transpose(0, 2, 1)
    model, trained = train_pypots_csdi(x_train, args.budget_min, args.pypots_chunk)
    train_seconds, steps = trained["train_seconds"], trained["train_steps"]
    print(f"pypots trained {steps} steps in {train_seconds:.0f} s", flush=True)
    rows = args.compare
    x_test = np.where(stack["cond_mask"][rows].bool().numpy(), stack["values"][rows].numpy(), np.nan).transpose(0, 2, 1)
    torch.manual_seed(0)
    start = time.perf_counter()
    result = model.predict({"X": x_test}, n_sampling_times=args.samples)
    seconds = time.perf_counter() - start
    imputed = np.asarray(result["imputation"])  # (W, S, L, K)
    expected = (len(rows), args.samples, WINDOW, x_test.shape[2])
    if imputed.shape != expected:
        raise SystemExit(f"PyPOTS returned imputations of shape {imputed.shape}, expected {expected}")
    samples = data.normalizer.inverse(torch.as_tensor(imputed.transpose(1, 0, 3, 2), dtype=torch.float64)).numpy()
    np.save(Path(args.work) / "pypots_compare.npy", samples.astype(np.float32))
    import pypots

    info = {"train_seconds": train_seconds, "train_steps": steps, "impute_seconds": seconds, "windows": len(rows),
            "chunk": args.pypots_chunk,
            "version": pypots.__version__, "output_shape": list(imputed.shape)}
    (Path(args.work) / "pypots.json").write_text(json.dumps(info))


def phase_calibration(args) -> None:
    """The whole test set (82 windows, 20,434 targets) with the fast solver, before and after the conformal
    calibration that ``sciffusion impute`` applies: factors from the test windows' own observed entries only (the
    entries of ``pm25_missing.txt``, hidden in other windows' gap patterns), never from the targets."""
    import argparse as _argparse

    from sciffusion.domain import load_run
    from sciffusion.domains.timeseries.calibration import reliability
    from sciffusion.domains.timeseries.datasets import load_pm25
    from sciffusion.domains.timeseries.domain import SeriesMeta, calibrate_on_input, impute_series
    from sciffusion.domains.timeseries.metrics import summary

    if (Path(args.work) / "calibration.json").is_file():  # resumed: keep what was measured
        return
    torch.set_num_threads(args.threads)
    data = load_pm25(DATA)
    run = load_run(args.run_dir, device="cpu")
    meta = SeriesMeta.read(args.run_dir)
    sc = run.sample_config(_argparse.Namespace(n=args.samples, solver=args.fast_solver, steps=args.fast_steps,
                                               eta=args.fast_eta, batch_size=args.max_batch, seed=0))
    inputs = [s.with_values(np.where(c, s.values, np.nan)) for s, c in zip(data.test, data.test_cond)]
    start = time.perf_counter()
    calibration = calibrate_on_input(run.model, inputs, meta, sc, run.config.section("impute"))
    calibration_seconds = time.perf_counter() - start
    start = time.perf_counter()
    imputations = [impute_series(run.model, x, x.observed_mask, meta, sc.n, sc.solver, sc.steps, [0.5], sc.eta,
                                 sc.batch_size, sc.seed, keep_samples=True) for x in inputs]
    impute_seconds = time.perf_counter() - start
    samples = torch.as_tensor(np.concatenate([imp.samples for imp in imputations], axis=2))
    truth = np.concatenate([np.nan_to_num(s.values) for s in data.test], axis=1)
    mask = np.concatenate([s.observed_mask & ~c for s, c in zip(data.test, data.test_cond)], axis=1)
    calibrated = calibration.apply(samples)
    step = json.loads((Path(args.run_dir) / "checkpoints" / "last" / "meta.json").read_text())["step"]
    out = {"run_dir": str(args.run_dir), "checkpoint_step": step, "solver": sc.solver, "steps": sc.steps,
           "samples": sc.n, "targets": int(mask.sum()),
           "calibration_from": "the test windows' observed entries (pm25_missing.txt) hidden in the gap pattern of "
                               "another test window; the targets are never seen",
           "uncalibrated": summary(samples, truth, mask.astype(float)),
           "calibrated": summary(calibrated, truth, mask.astype(float)),
           "reliability": {"levels": calibration.levels.tolist(), "uncalibrated": reliability(samples, truth, mask).tolist(),
                           "calibrated": reliability(calibrated, truth, mask).tolist()},
           "calibration": calibration.to_json(meta.features),
           "calibration_seconds": calibration_seconds, "impute_seconds": impute_seconds}
    (Path(args.work) / "calibration.json").write_text(json.dumps(out, default=float))
    print(f"calibration: coverage90 {out['uncalibrated']['coverage90']:.3f} -> {out['calibrated']['coverage90']:.3f}, "
          f"crps {out['uncalibrated']['crps']:.4f} -> {out['calibrated']['crps']:.4f}", flush=True)


CALIBRATION_CANDIDATES = [  # (spread bins, shrinkage in entries): per-feature factors, shrunk, pooled; spread bins
    (0, 0.0), (0, 300.0), (0, 1e9), (3, 0.0), (5, 0.0), (10, 0.0)]
UNIFORM_SCALES = [0.8, 0.9, 1.0, 1.1, 1.2, 1.3]
CALIBRATION_RULE = ("the lowest CRPS among the candidates whose calibrated 50 % and 90 % coverage lie in the issue's "
                    "bands (0.45-0.55, 0.87-0.93), else the lowest CRPS; the impute section's defaults are set to it")


def phase_calibration_pilot(args) -> None:
    """Choose the calibration's grouping (``impute.calibration_spread_bins``, ``calibration_shrinkage``) on the
    validation month (January, never trained on, never a test month) as :data:`CALIBRATION_RULE` says: January's
    own observed entries calibrate, its CSDI targets score. The imputations are kept in ``--work`` (a rerun only
    refits). Writes results/imputation_pm25_calibration_pilot.json."""
    import argparse as _argparse

    from sciffusion.domain import load_run
    from sciffusion.domains.timeseries.calibration import CALIBRATION_QUANTILES, fit_calibration
    from sciffusion.domains.timeseries.datasets import pm25_month
    from sciffusion.domains.timeseries.domain import SeriesMeta, calibration_set, impute_series
    from sciffusion.domains.timeseries.metrics import summary

    torch.set_num_threads(args.threads)
    segment, cond = pm25_month(DATA, 1)
    run = load_run(args.run_dir, device="cpu")
    meta = SeriesMeta.read(args.run_dir)
    settings = run.config.section("impute")
    sc = run.sample_config(_argparse.Namespace(n=args.samples, solver=args.fast_solver, steps=args.fast_steps,
                                               eta=args.fast_eta, batch_size=args.max_batch, seed=0))
    kept = Path(args.work) / "calibration_pilot.npz"
    if kept.is_file():
        arrays = np.load(kept)
        found, samples = (arrays["quantiles"], arrays["values"], arrays["hidden"]), torch.as_tensor(arrays["samples"])
    else:
        given = segment.with_values(np.where(cond, segment.values, np.nan))
        found = calibration_set(run.model, [given], meta, sc)
        samples = torch.as_tensor(impute_series(run.model, given, cond, meta, sc.n, sc.solver, sc.steps, [0.5], sc.eta,
                                                sc.batch_size, sc.seed, keep_samples=True).samples)
        np.savez(kept, quantiles=found[0], values=found[1], hidden=found[2], samples=samples.numpy())
    truth, mask = np.nan_to_num(segment.values), (segment.observed_mask & ~cond).astype(float)
    rows = {"uncalibrated": summary(samples, truth, mask)}
    for bins, shrinkage in CALIBRATION_CANDIDATES:
        calibration = fit_calibration(*found, meta.normalizer.std, settings.calibration_min_entries,
                                      CALIBRATION_QUANTILES, shrinkage, bins)
        row = {**summary(calibration.apply(samples), truth, mask), "spread_bins": bins, "shrinkage": shrinkage}
        row["crps_ratio_vs_uncalibrated"] = row["crps"] / rows["uncalibrated"]["crps"]
        rows[f"spread_bins={bins},shrinkage={shrinkage:g}"] = row
        print(f"spread bins {bins}, shrinkage {shrinkage:g}: {row}", flush=True)
    median = samples.median(dim=0).values
    scan = {f"{scale:g}": {k: v for k, v in summary(median + scale * (samples - median), truth, mask).items()
                           if k in ("crps", "coverage50", "coverage90")} for scale in UNIFORM_SCALES}
    candidates = {k: r for k, r in rows.items() if k != "uncalibrated"}
    inside = {k: r for k, r in candidates.items()
              if 0.45 <= r["coverage50"] <= 0.55 and 0.87 <= r["coverage90"] <= 0.93} or candidates
    chosen = min(inside, key=lambda k: inside[k]["crps"])
    step = json.loads((Path(args.run_dir) / "checkpoints" / "last" / "meta.json").read_text())["step"]
    write_results("imputation_pm25_calibration_pilot", {
        "torch_threads": args.threads,
        "run": {"config": str(CONFIG.relative_to(ROOT)), "run_dir": str(args.run_dir), "checkpoint_step": int(step)},
        "month": 1, "targets": int(mask.sum()), "calibration_entries": int(found[2].sum()),
        "solver": sc.solver, "steps": sc.steps, "samples": sc.n, "min_entries": settings.calibration_min_entries,
        "results": rows,
        "uniform_scale_scan": {"what": "the uncalibrated samples' spread about their median times one scale for every "
                                       "entry and level: where CRPS is lowest against where coverage reaches its level",
                               "results": scan},
        "chosen": {"candidate": chosen, "spread_bins": rows[chosen]["spread_bins"],
                   "shrinkage": rows[chosen]["shrinkage"], "rule": CALIBRATION_RULE}},
        packages=("sciffusion", "torch", "numpy", "pandas"), folder=args.results_dir)


def calibration_bars(cal: dict) -> list[dict]:
    """The calibrated fast solver on the whole test set."""
    after, before = cal["calibrated"], cal["uncalibrated"]
    return [bar("coverage90_min", after["coverage90"], ">=", 0.87), bar("coverage90_max", after["coverage90"], "<=", 0.93),
            bar("coverage50_min", after["coverage50"], ">=", 0.45), bar("coverage50_max", after["coverage50"], "<=", 0.55),
            bar("calibrated_crps_ratio_vs_uncalibrated", after["crps"] / before["crps"], "<=", 1.0)]


def update_published_calibration(args) -> None:
    """Put ``calibration.json`` into the published results beside the earlier phases' numbers (another trained
    model of the same config and budget when the earlier run folder is gone: stated in the section)."""
    path = Path(args.results_dir) / "imputation_pm25.json"
    published = json.loads(path.read_text())
    cal = json.loads((Path(args.work) / "calibration.json").read_text())
    from _common import versions

    cal["provenance"] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                         "git_commit": versions(())["git_commit"], "model_note": args.calibration_note}
    published.setdefault("results", {})["calibration_full_test"] = cal
    published.setdefault("earlier_phases", {k: published[k] for k in ("date", "machine", "versions")})
    settings = published.setdefault("settings", {})
    if "coverage_bars_from" in settings and "uncalibrated_coverage_from" not in settings:
        settings["uncalibrated_coverage_from"] = settings["coverage_bars_from"]
    settings["coverage_bars_from"] = ("results.calibration_full_test: the calibrated fast solver on the whole test "
                                      "set, with its own model (see its provenance)")
    new = calibration_bars(cal)
    names = [b["name"] for b in published["bars"]]
    at = names.index("coverage90_min") if "coverage90_min" in names else len(names)  # where the report puts them
    kept = [b for b in published["bars"] if b["name"] not in {n["name"] for n in new}]
    published["bars"] = kept[:at] + new + kept[at:]
    write_results("imputation_pm25", {k: v for k, v in published.items() if k not in ("benchmark", "date", "machine",
                                                                                          "versions")},
                  packages=("sciffusion", "torch", "numpy", "pandas"), folder=args.results_dir)
    print(json.dumps(published["bars"], indent=2))


def train_ours(args) -> dict:
    """``sciffusion train`` in a subprocess with the budget as ``trainer.max_minutes`` (the trainer saves and stops
    when it is spent)."""
    run_dir = Path(args.work) / "ours_run"
    cmd = [sys.executable, "-m", "sciffusion", "train", str(CONFIG), f"run_dir={run_dir}", "trainer.progress=false",
           "trainer.checkpoint_every=10", "trainer.log_every=10", f"trainer.max_minutes={args.budget_min}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    with open(Path(args.work) / "ours_train.log", "w") as log:
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
        seconds = time.perf_counter() - start
    meta = json.loads((run_dir / "checkpoints" / "last" / "meta.json").read_text())
    return {"run_dir": str(run_dir), "train_seconds": seconds, "checkpoint_step": int(meta["step"]), "command": " ".join(cmd)}


def spawn(args, phase: str) -> subprocess.Popen:
    """Start this script's ``phase`` in a subprocess (same settings)."""
    cmd = [sys.executable, __file__, "--phase", phase, "--work", args.work, "--budget-min", str(args.budget_min),
           "--threads", str(args.threads), "--samples", str(args.samples), "--fast-solver", args.fast_solver,
           "--fast-steps", str(args.fast_steps), "--fast-eta", str(args.fast_eta), "--compare-per-month", str(args.compare_per_month),
           "--large-per-month", str(args.large_per_month), "--max-batch", str(args.max_batch), "--timing-rounds", str(args.timing_rounds),
           "--pypots-chunk", str(args.pypots_chunk), "--run-dir", str(Path(args.work) / "ours_run")]
    if args.pypots_path:
        cmd += ["--pypots-path", args.pypots_path]
    if args.full_test:
        cmd.append("--full-test")
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))


def wait(proc: subprocess.Popen, name: str) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"benchmark phase {name} failed with exit code {proc.returncode}")


# ------------------------------------------------------------------------------------ report


def report(args, ours_train: dict) -> dict:
    from sciffusion.domains.timeseries.domain import linear_interpolation, point_scores
    from sciffusion.domains.timeseries.metrics import mae, rmse

    data, windows, stack = test_windows()
    work = Path(args.work)
    ours = json.loads((work / "ours_eval.json").read_text())
    pyp = json.loads((work / "pypots.json").read_text())
    compare, large = args.compare, args.large
    res = {
        "ours_ancestral50_compare": metrics_of(np.load(work / "ours_ancestral_compare.npy"), stack, compare),
        "ours_fast_compare": metrics_of(np.load(work / "ours_fast_compare.npy"), stack, compare),
        "ours_ddim10_compare": metrics_of(np.load(work / "ours_ddim10_compare.npy"), stack, compare),
        "pypots_csdi_compare": metrics_of(np.load(work / "pypots_compare.npy"), stack, compare),
    }
    if large:
        res["ours_fast_large"] = metrics_of(np.load(work / "ours_fast_large.npy"), stack, large)
    everything = list(range(stack["values"].shape[0]))
    full = all((work / f"ours_{name}_full.npy").is_file() for name in ("fast", "ancestral"))
    if full:  # the whole test set (CSDI's protocol, 20,434 targets): the fast-solver and coverage bars use it
        res["ours_ancestral50_full"] = metrics_of(np.load(work / "ours_ancestral_full.npy"), stack, everything)
        res["ours_fast_full"] = metrics_of(np.load(work / "ours_fast_full.npy"), stack, everything)
    full_points = {
        "linear_interpolation": [linear_interpolation(s, c) for s, c in zip(data.test, data.test_cond)],
        "feature_mean": [np.broadcast_to(data.normalizer.mean[:, None], s.values.shape) for s in data.test],
    }
    baselines = {name: point_scores(data.test, data.test_cond, pts) for name, pts in full_points.items()}
    # the same baselines on the subsets (cut from the whole-month point imputations)
    for name, pts in full_points.items():
        per_window = np.stack([pts[seg][:, start:start + WINDOW] for seg, start, _ in windows.windows])
        for label, rows in (("compare", compare), ("large", large)) if large else (("compare", compare),):
            baselines[f"{name}_{label}"] = {"mae": mae(per_window[rows], stack["raw"][rows], stack["target_mask"][rows]),
                                            "rmse": rmse(per_window[rows], stack["raw"][rows], stack["target_mask"][rows])}
    anc, pypots = res["ours_ancestral50_compare"], res["pypots_csdi_compare"]
    # the fast-solver bars use the configured fast solver (chosen on the validation month); ddim 10 is reported beside it
    fast_key = "fast_compare"
    fast_bar_keys = ("ours_fast_full", "ours_ancestral50_full") if full else ("ours_fast_compare", "ours_ancestral50_compare")
    t_anc = ours["ancestral_compare"]["seconds"] / ours["ancestral_compare"]["windows"]
    t_fast = ours[fast_key]["seconds"] / ours[fast_key]["windows"]
    timing_path = work / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    batch_timing_path = work / "batch_timing.json"
    batch_timing = json.loads(batch_timing_path.read_text()) if batch_timing_path.is_file() else None
    if timing is not None:  # back-to-back measurement under the same load wins over the sequential subset runs
        fast_name = solver_label(ours[fast_key]["solver"], ours[fast_key]["steps"], ours[fast_key].get("eta", 0.0))
        speedup = float(np.min(timing["seconds"][solver_label("ddpm", 50, 0.0)]) / np.min(timing["seconds"][fast_name]))
        timing["speedup_of_means"] = float(np.mean(timing["seconds"][solver_label("ddpm", 50, 0.0)])
                                           / np.mean(timing["seconds"][fast_name]))
    else:
        speedup = t_anc / t_fast
    coverage_key = "ours_fast_full" if full else "ours_fast_large" if large else f"ours_{fast_key}"
    calibration = json.loads((work / "calibration.json").read_text())
    bars = [
        bar("mae_ratio_vs_pypots_csdi", anc["mae"] / pypots["mae"], "<", 1.0),
        bar("crps_ratio_vs_pypots_csdi", anc["crps"] / pypots["crps"], "<", 1.0),
        bar("fast_solver_crps_ratio_vs_ancestral50", res[fast_bar_keys[0]]["crps"] / res[fast_bar_keys[1]]["crps"], "<=",
            CRPS_RATIO_LIMIT),
        bar("fast_solver_speedup_vs_ancestral50", speedup, ">=", 5.0),
        *calibration_bars(calibration),
    ]
    rss_full_path = work / "rss_full.json"
    rss_full = json.loads(rss_full_path.read_text()) if rss_full_path.is_file() else None
    peak_rss = max(ours["peak_rss_gb"], rss_full["peak_rss_gb"]) if rss_full else ours["peak_rss_gb"]
    bars.append(bar("peak_rss_gb", peak_rss, "<=", 4.0))
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "settings": {
            "compute": {"torch_threads": args.threads, "load_average_at_report": load,
                        "note": "CPU only; the cores were shared with other jobs, so wall-clock numbers are noisy"},
            "protocol": "CSDI AQI-36: test months 3,6,9,12; 36-h non-overlapping windows (last window of a month aligned "
                        "to its end, covered points not rescored); targets = in ground, not in missing; 100 samples; "
                        "median point estimate; CSDI 19-quantile CRPS normalised by sum |target|",
            "test_targets_total": int(stack["target_mask"].sum()),
            "training_budget_minutes_each": args.budget_min,
            "model_size_both": {"channels": 32, "layers": 2, "heads": 4, "time_embedding": 64, "feature_embedding": 16,
                                "diffusion_embedding": 64, "diffusion_steps": 50, "schedule": "quad 1e-4..0.5"},
            "batch_size": 16, "lr": 1e-3,
            "ours": {"config": str(CONFIG.relative_to(ROOT)), "mask": "mix (CSDI)",
                     "training_times": "discrete: the 50 schedule times, as CSDI (loss.time_sampler)", **ours_train},
            "pypots": {"target_strategy": "random (its default)", "train_seconds": pyp["train_seconds"],
                       "train_steps": pyp["train_steps"], "chunk_windows_per_fit": pyp.get("chunk", args.pypots_chunk),
                       "note": "training stops at the first chunk boundary after the budget, so it can overrun by one chunk",
                       **({"rerun_note": pyp["rerun_note"]} if "rerun_note" in pyp else {})},
            "samples": args.samples,
            "fast_solver": {"solver": args.fast_solver, "steps": args.fast_steps, "eta": args.fast_eta,
                            "chosen": "the config's sample section, set from a pilot on validation-month windows "
                                      "(January, never a test month; benchmarks/results/imputation_pm25_pilot.json)"},
            "compare_subset": {"windows": compare, "per_month": args.compare_per_month,
                               "targets": int(stack["target_mask"][compare].sum())},
            "large_subset": {"windows": large, "per_month": args.large_per_month,
                             "targets": int(stack["target_mask"][large].sum())} if large else None,
            "uncalibrated_coverage_from": coverage_key,
            "coverage_bars_from": "calibration_full_test: the calibrated fast solver on the whole test set",
            "fast_solver_crps_bar_from": list(fast_bar_keys),
            "full_test_set": {"windows": len(everything), "targets": int(stack["target_mask"].sum())} if full else None,
            "why_subsets": "100 samples x 50 steps per window is ~5,000 network calls per window; on 2 shared CPU cores "
                           "PyPOTS and ours are compared on a fixed subset; --full-test samples ours on the whole test set",
        },
        "results": {
            **res,
            "calibration_full_test": calibration,
            "baselines": baselines,
            "timing": {
                "ours_train_seconds": ours_train["train_seconds"], "pypots_train_seconds": pyp["train_seconds"],
                "ours_ancestral50_seconds_per_window": t_anc, "ours_fast_seconds_per_window": t_fast,
                "ours_ddim10_seconds_per_window": ours["ddim10_compare"]["seconds"] / ours["ddim10_compare"]["windows"],
                **({"ours_fast_large_seconds_per_window": ours["fast_large"]["seconds"] / ours["fast_large"]["windows"]}
                   if large else {}),
                **({f"ours_{name}_full_seconds_per_window": ours[f"{name}_full"]["seconds"] / ours[f"{name}_full"]["windows"]
                    for name in ("fast", "ancestral")} if full else {}),
                "pypots_seconds_per_window": pyp["impute_seconds"] / pyp["windows"],
                "back_to_back_timing": timing,
                "fast_solver_by_network_batch": batch_timing,
                "speedup_note": "the speedup bar uses back_to_back_timing when present (same load for both solvers, fastest run of each); "
                                "the per-window subset timings above ran one after the other while the machine's load changed",
            },
            "peak_rss_gb_note": "max of the peak resident memory of (a) the process that imputed (chunked, max batch "
                                f"{args.max_batch} series) the {len(large)}+{len(compare)} subset windows with {args.samples} samples "
                                "and (b) the process that imputed all 82 test windows with 100 samples through the same "
                                "pipeline with a 1-step DDIM (memory does not depend on the step count)",
            "ours_eval_peak_rss_gb": ours["peak_rss_gb"],
            "ours_eval_note": ours.get("note"),
            "full_test_set_rss_run": rss_full,
            "earlier_full_test_set_rss_runs": [json.loads(p.read_text()) for p in sorted(work.glob("rss_full_*.json"))],
        },
        "anchors": ANCHORS,
        "bars": bars,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=["all", "pilot", "ours_eval", "pypots", "timing", "batch_timing", "rss_full",
                                            "calibration", "calibration_pilot", "report"], default="all",
                        help="all: the whole benchmark; report: rebuild the JSON from --work")
    parser.add_argument("--work", default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--budget-min", type=float, default=50.0, help="training wall-clock minutes for each model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1 is fastest on shared cores)")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--fast-solver", default=None, help="default: the config's sample.solver")
    parser.add_argument("--fast-steps", type=int, default=None, help="default: the config's sample.steps")
    parser.add_argument("--fast-eta", type=float, default=None, help="default: the config's sample.eta")
    parser.add_argument("--compare-per-month", type=int, default=3)
    parser.add_argument("--large-per-month", type=int, default=6)
    parser.add_argument("--timing-rounds", type=int, default=3, help="rounds of (fast, ancestral) in the timing phase")
    parser.add_argument("--max-batch", type=int, default=None, help="series per network batch (default: the config's sample.batch_size)")
    parser.add_argument("--pypots-chunk", type=int, default=160, help="windows per one-epoch PyPOTS fit call (10 steps)")
    parser.add_argument("--pypots-path", default=None, help="extra sys.path entry for PyPOTS' own dependencies")
    parser.add_argument("--full-test", action="store_true", help="also sample all 82 test windows with the fast solver and "
                        "with 50-step ancestral sampling (about an hour on one core); the fast-solver and coverage bars then use them")
    parser.add_argument("--pilot-windows", type=int, default=0, help="validation windows of the pilot, evenly spaced (0: all)")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--update-results", action="store_true",
                        help="with --phase calibration: add its numbers and bars to the published results JSON")
    parser.add_argument("--calibration-note", default="", help="with --update-results: which trained model it used")
    parser.add_argument("--results-dir", default=str(RESULTS), help="where the results JSON goes (default: benchmarks/results)")
    args = parser.parse_args()
    from sciffusion.config import load_config

    sample = load_config(CONFIG).sample
    args.fast_solver = args.fast_solver or sample.solver
    args.fast_steps = args.fast_steps or sample.steps
    args.fast_eta = sample.eta if args.fast_eta is None else args.fast_eta
    args.max_batch = args.max_batch or sample.batch_size
    args.work = args.work or tempfile.mkdtemp(prefix="imputation_pm25_")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    _, windows, _ = test_windows()
    args.compare = subset(windows, args.compare_per_month)
    args.large = [i for i in subset(windows, args.large_per_month) if i not in args.compare] if args.large_per_month else []
    if args.phase == "pilot":
        return phase_pilot(args)
    if args.phase == "ours_eval":
        return phase_ours_eval(args)
    if args.phase == "pypots":
        return phase_pypots(args)
    if args.phase == "rss_full":
        return phase_rss_full(args)
    if args.phase == "batch_timing":
        return phase_batch_timing(args)
    if args.phase == "timing":
        return phase_timing(args)
    if args.phase == "calibration_pilot":
        return phase_calibration_pilot(args)
    if args.phase == "calibration":
        phase_calibration(args)
        return update_published_calibration(args) if args.update_results else None
    if args.phase == "report":
        return write_report(args, json.loads((Path(args.work) / "ours_train.json").read_text()))
    print(f"work folder {args.work}", flush=True)
    pypots = spawn(args, "pypots")  # trains for the same budget at the same time, under the same machine load
    ours_train = train_ours(args)
    (Path(args.work) / "ours_train.json").write_text(json.dumps(ours_train))
    print(f"ours trained to step {ours_train['checkpoint_step']} in {ours_train['train_seconds']:.0f} s", flush=True)
    ours_eval = spawn(args, "ours_eval")
    wait(ours_eval, "ours_eval")
    wait(pypots, "pypots")
    wait(spawn(args, "timing"), "timing")
    wait(spawn(args, "batch_timing"), "batch_timing")
    wait(spawn(args, "rss_full"), "rss_full")
    wait(spawn(args, "calibration"), "calibration")
    write_report(args, ours_train)


def write_report(args, ours_train: dict) -> None:
    result = report(args, ours_train)
    write_results("imputation_pm25", result, packages=("sciffusion", "torch", "numpy", "pandas", "pypots"), folder=args.results_dir)
    print(json.dumps(result["bars"], indent=2))


if __name__ == "__main__":
    main()
