"""EDM's conditional protocol on QM9 (Hoogeboom et al. 2022, ``eval_conditional_qm9.py``), per property:

1. a property classifier (``task.kind: property``, ``noisy: false``; EDM's L1 loss) trained on the first half of
   the training split (``data.portion: first_half``, EDM's ``qm9_first_half``);
2. a generator conditioned on the property (classifier-free guidance training) on the second half;
3. ``n`` molecules generated with EDM's contexts: atom counts from the second half's histogram, each property
   drawn given the atom count (EDM's ``DistributionProperty``: 1000 bins per count);
4. the classifier's MAE on them against their contexts, with, in the same run: the L-bound (the classifier on the
   second half's molecules and their labels), the U-bound (the same with shuffled labels) and the "#atoms"
   baseline (the property predicted from the atom count alone: the first half's median per count).

    python benchmarks/molecules_conditional.py [--properties gap mu] [--classifier-steps N] [--generator-steps N]
                                               [--n 1000] [--work runs/bench_cond] [--reuse] [--smoke]

Normalisation: mean / mean absolute deviation of the validation split, as EDM's ``compute_mean_mad`` does for the
halves. Writes ``benchmarks/results/molecules_conditional.json`` (or ``--results-dir``). Bar:
``gap_mae_ratio_vs_atoms_baseline`` < 1 (the conditional MAE of the gap over the "#atoms" baseline's).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, bar, versions, write_results  # noqa: E402

from sciffusion.config import load_config  # noqa: E402
from sciffusion.domain import load_run  # noqa: E402
from sciffusion.domains.molecules.dataset import draw_sizes  # noqa: E402
from sciffusion.domains.molecules.domain import load_training_table, sample_molecules  # noqa: E402
from sciffusion.domains.molecules.property_models import (  # noqa: E402
    PropertyGivenSize,
    atoms_baseline,
    predict_properties,
)
from sciffusion.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# meV for the orbital energies (EDM's table), the property's own unit otherwise
REPORT_SCALE = {"gap": 1000.0, "homo": 1000.0, "lumo": 1000.0, "mu": 1.0, "alpha": 1.0, "Cv": 1.0}
REPORT_UNIT = {"gap": "meV", "homo": "meV", "lumo": "meV", "mu": "D", "alpha": "Bohr^3", "Cv": "cal/(mol K)"}
ANCHORS = {
    "note": "paper numbers (EDM Table 3 and later papers; classifier MAE on 10,000 conditional samples), not run here",
    "gap_meV": {"U-bound": 1470, "#atoms": 866, "EDM": 655, "GeoLDM": 587, "EEGSDE": 542, "L-bound": 64},
    "mu_D": {"U-bound": 1.616, "#atoms": 1.053, "EDM": 1.111, "GeoLDM": 1.108, "EEGSDE": 0.777, "L-bound": 0.043},
}


def train_run(config: str, run_dir: Path, overrides: list[str], reuse: bool) -> float | None:
    """Train (or resume) a run; ``None`` seconds when an existing run is reused."""
    if reuse and (run_dir / "checkpoints" / "last").exists():
        return None
    cfg = load_config(config, [f"run_dir={run_dir}", "trainer.progress=false", *overrides])
    t0 = time.perf_counter()
    train(cfg, resume=(run_dir / "checkpoints" / "last").exists())
    return time.perf_counter() - t0


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred) - np.asarray(truth))))


def evaluate_property(prop: str, args: argparse.Namespace) -> dict:
    work = Path(args.work)
    scale = REPORT_SCALE[prop]
    common = [f"data.properties=[{prop}]", *args.override]
    clf_dir, gen_dir = work / f"{prop}_classifier", work / f"{prop}_generator"
    clf_seconds = train_run(args.config, clf_dir, [*common, "data.portion=first_half", "task.kind=property",
                                                   "task.noisy=false", f"net.n_layers={args.classifier_layers}",
                                                   f"trainer.max_steps={args.classifier_steps}",
                                                   *args.classifier_override], args.reuse)
    gen_dir_seconds = train_run(args.config, gen_dir, [*common, "data.portion=second_half", "loss.cond_drop_prob=0.1",
                                                       f"trainer.max_steps={args.generator_steps}",
                                                       *args.generator_override], args.reuse)
    classifier, generator = load_run(clf_dir, "auto"), load_run(gen_dir, "auto")
    first, second = load_training_table(classifier.config.data), load_training_table(generator.config.data)
    norm = generator.domain.meta(generator).norms[prop]
    clf_norm = classifier.domain.meta(classifier).norms[prop]

    def classify(molecules: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        return clf_norm.denormalise(predict_properties(classifier.model, molecules)[:, 0])

    # L-bound and U-bound: the classifier on the second half's molecules (EDM: all of them)
    held = second if args.n_data <= 0 else second.subset(np.sort(np.random.default_rng(0).permutation(len(second))[:args.n_data]))
    data_pred = classify([held.molecule(i) for i in range(len(held))])
    labels = held.properties[prop]
    shuffled = labels[np.random.default_rng(1).permutation(len(labels))]
    # EDM's contexts: atom counts from the second half's histogram, the property given the count
    sizes = draw_sizes(np.bincount(second.sizes), args.n, torch.Generator().manual_seed(3))
    given = PropertyGivenSize.of(second.sizes, second.properties[prop])
    contexts = given.sample(sizes.numpy(), np.random.default_rng(4))
    rows = {}
    for scale_cfg in args.guidance_scales:
        t0 = time.perf_counter()
        molecules = sample_molecules(generator.model, sizes, args.solver, args.steps, seed=5, batch_size=250,
                                     properties=torch.as_tensor(norm.normalise(contexts), dtype=torch.float32)[:, None],
                                     guidance_scale=scale_cfg)
        seconds = time.perf_counter() - t0
        pred = classify([(m.positions, m.types) for m in molecules])
        rows[f"cfg_{scale_cfg:g}"] = {"mae": mae(pred, contexts) * scale, "sampling_seconds": round(seconds, 2)}
    atoms = atoms_baseline(first.sizes, first.properties[prop], sizes.numpy())
    best = min(rows.values(), key=lambda r: r["mae"])
    return {"unit": REPORT_UNIT[prop], "classifier_train_steps": classifier.step, "generator_train_steps": generator.step,
            "classifier_train_seconds": clf_seconds, "generator_train_seconds": gen_dir_seconds,
            "classifier_config": classifier.config.to_dict(), "generator_config": generator.config.to_dict(),
            "n_samples": args.n, "n_data_molecules": len(held),
            "L_bound": mae(data_pred, labels) * scale, "U_bound": mae(data_pred, shuffled) * scale,
            "atoms_baseline": mae(atoms, contexts) * scale, "conditional": rows, "best_conditional_mae": best["mae"],
            "ratio_vs_atoms_baseline": best["mae"] / (mae(atoms, contexts) * scale)}


def kept_results(path: Path, args: argparse.Namespace) -> dict:
    """Other properties' results from an earlier run of this script with the same sampling settings."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    same = {"n_samples": args.n, "solver": args.solver, "steps": args.steps, "guidance_scales": args.guidance_scales,
            "smoke": args.smoke}
    differing = {k: earlier["settings"].get(k) for k, v in same.items() if earlier["settings"].get(k) != v}
    if differing:
        raise SystemExit(f"--keep-existing: {path} was sampled with other settings {differing}")
    commit = earlier.get("versions", {}).get("git_commit")
    return {prop: {"date": earlier["date"], "git_commit": commit, **r}
            for prop, r in earlier["results"].items() if prop not in args.properties}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/molecules/qm9.yaml"))
    ap.add_argument("--properties", nargs="+", default=["gap", "mu"])
    ap.add_argument("--work", default=str(ROOT / "runs/bench_cond"))
    ap.add_argument("--classifier-steps", type=int, default=10000)
    ap.add_argument("--classifier-layers", type=int, default=7, help="EDM's classifier: 7 layers, hidden 128")
    ap.add_argument("--generator-steps", type=int, default=10000)
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="both runs (repeat)")
    ap.add_argument("--classifier-override", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--generator-override", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--n", type=int, default=1000, help="conditional samples per property (EDM: 10,000)")
    ap.add_argument("--n-data", type=int, default=0, help="second-half molecules for the bounds (0: all, as EDM)")
    ap.add_argument("--solver", default="pos=heun,types=sequential_reveal")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs in --work")
    ap.add_argument("--smoke", action="store_true", help="tiny runs (seconds): checks the script, measures nothing")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--keep-existing", action="store_true",
                    help="keep the results file's other properties (their runs must share --n, --solver, --steps and "
                         "--guidance-scales; each property records its own date and commit)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.smoke:
        args.override = [*args.override, "data.max_molecules=300", "data.max_nodes=200", "net.hidden=16",
                         "trainer.warmup_steps=1", "trainer.checkpoint_every=4", "trainer.log_every=2"]
        args.classifier_steps = args.generator_steps = 4
        args.classifier_layers, args.n, args.n_data, args.steps = 2, 8, 50, 4
        args.override.append("net.n_layers=2")
    args.solver = dict(part.split("=", 1) for part in args.solver.split(","))

    results_path = Path(args.results_dir or RESULTS) / "molecules_conditional.json"
    per_property = kept_results(results_path, args) if args.keep_existing else {}
    for prop in args.properties:
        per_property[prop] = {**evaluate_property(prop, args), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                               "git_commit": versions(())["git_commit"]}
    for prop, r in per_property.items():
        print(prop, {k: r[k] for k in ("L_bound", "best_conditional_mae", "atoms_baseline", "U_bound")}, flush=True)
    gap = per_property.get("gap")
    payload = {
        "settings": {"properties": list(per_property), "n_samples": args.n, "solver": args.solver, "steps": args.steps,
                     "guidance_scales": args.guidance_scales, "smoke": args.smoke,
                     "differences_from_edm": [
                         f"{args.n} conditional samples per property, not 10,000",
                         "CPU training budgets (see each property's train steps); EDM trains its classifier 1000 "
                         "epochs and its generator ~2000 epochs on a GPU",
                         "the classifier reuses the generator's EGNN blocks (coordinate updates included, features "
                         "invariant); EDM's classifier EGNN updates no coordinates",
                         "the generator is trained with condition dropout 0.1 (classifier-free guidance); scale 1 is "
                         "the plain conditional model, as EDM samples",
                         "the #atoms baseline is the L1-optimal predictor from the atom count (first half's median "
                         "per count), EDM trains a small network on the count"]},
        "anchors": ANCHORS,
        "results": per_property,
        "bars": [bar("gap_mae_ratio_vs_atoms_baseline", gap["ratio_vs_atoms_baseline"] if gap else float("nan"),
                     "<", 1.0)],
    }
    folder = {"folder": args.results_dir} if args.results_dir else {}
    print("wrote", write_results("molecules_conditional", payload, packages=("sciffusion", "torch", "numpy", "rdkit"),
                                 **folder))


if __name__ == "__main__":
    main()
