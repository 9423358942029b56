"""Protein backbones on SE(3) frames (FrameFlow's recipe on the shared core): train on a stated CPU budget, then the
offline metrics of unconditional backbones of lengths 50-150 at NFE 100 and 20, motif scaffolding of 5 motifs taken
from the benchmark structures, and guidance toward a helix fraction and a radius of gyration, next to the same
metrics of the natural training chains (the reference row).

    python benchmarks/proteins_frames.py [--data ../shared/data/proteins] [--run-dir runs/bench_proteins] [--reuse]
                                         [--budget-min 30] [--max-steps 3000] [--n 10] [--lengths 50,60,...,150]
                                         [--override KEY=VALUE ...] [--results-dir DIR]

Training: ``configs/proteins/frames.yaml`` on every chain of ``--data`` (crops of 160 residues and extra crops of
50, 80 and 110, so that lengths 50-150 are in the trained range), one process, ``trainer.max_minutes`` the budget.
Sampling: Euler on both fields (the geodesic step on SO(3)), one fixed seed per setting; backbones per second counts
the sampler only (the metrics are timed apart). Guidance: helix fraction 0.7 (strength 50) and radius of gyration
13 A (strength 10: with 10 sub-steps a larger strength overshoots the radius and diverges) at length 100. Metrics: :mod:`sciffusion.domains.proteins.metrics` (pydssp, tmtools);
diversity within each length (mean pairwise TM-score; single-linkage clusters at TM 0.6 as Genie2), novelty as the
largest TM-score to any training chain. Motif RMSD is that of the generated backbone (N, CA, C of ideal geometry
against the file's atoms, superposed): the field's motif RMSD after refolding a designed sequence with ESMFold, and
designability, need ProteinMPNN + ESMFold weights and are not computed. Writes
``benchmarks/results/proteins_frames.json`` (or ``--results-dir``).
Bars (at NFE 100): ``ca_ca_within_0p1`` >= 0.95, ``clash_rate`` <= 0.01, ``ss_fraction`` (helix + strand) >= 0.5,
``mean_pairwise_tm`` <= 0.5, ``motif_rmsd`` <= 1.0 A (mean over the 5 motifs).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bar, write_results  # noqa: E402

from sciffusion.config import load_config  # noqa: E402
from sciffusion.domain import load_run  # noqa: E402
from sciffusion.domains.proteins.domain import (  # noqa: E402
    atoms_of,
    draw_layout,
    guidance_loss,
    load_chains,
    read_motif,
    sample_frames,
)
from sciffusion.domains.proteins.metrics import backbone_metrics, motif_rmsd, summarize  # noqa: E402
from sciffusion.guidance import GradientGuidance  # noqa: E402
from sciffusion.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [100, 20]  # Euler steps = NFE
MOTIFS = [  # (file, contig): RFdiffusion's benchmark motifs where the example file holds them, else a helix
    ("rfd_5TPN.pdb.gz", "20-40/A163-181/20-40"),
    ("rfd_1YCR.pdb.gz", "20-40/B19-27/20-40"),
    ("rfd_3IOL.pdb.gz", "20-40/B17-29/20-40"),
    ("rfd_1qys.pdb.gz", "15-30/A47-53/3-10/A57-73/15-30"),
    ("rfd_2KL8.pdb.gz", "20-40/A12-26/20-40"),
]
ANCHORS = {
    "note": "paper numbers (designability = ProteinMPNN + ESMFold self-consistency, scRMSD < 2 A), as the issue lists "
            "them; not run here and not comparable to any number of this file (designability is not computed "
            "offline); each paper reports diversity in its own way (pairwise TM-score or cluster fraction)",
    "FrameFlow (Yim et al. 2023)": {"designability": 0.886},
    "Genie2 (Lin et al. 2024)": {"designability": 0.952},
    "RFdiffusion (Watson et al. 2023)": {"designability": 0.944},
    "Proteina (Geffner et al. 2025)": {"designability": 0.982},
}
KEYS = ("ca_ca_within_0p1", "ca_ca_mean", "clash_rate", "rg_ratio_natural", "helix_fraction", "strand_fraction",
        "ss_fraction", "mean_pairwise_tm", "clusters", "cluster_fraction", "novelty_max_tm")


def training_overrides(args: argparse.Namespace) -> list[str]:
    return [f"data.dir={args.data}", "data.max_length=160", "data.extra_crops=[50,80,110]", "data.max_residues=640",
            f"trainer.max_steps={args.max_steps}", f"trainer.max_minutes={args.budget_min}", "trainer.log_every=25",
            "trainer.checkpoint_every=250", f"run_dir={args.run_dir}", *args.override]


def training_seconds(run_dir: Path) -> float:
    """Wall time of the training run from its files: the config is written at the start, the last checkpoint at
    the end."""
    last = run_dir / "checkpoints" / "last"
    newest = max(p.stat().st_mtime for p in last.iterdir())
    return float(newest - (run_dir / "config.yaml").stat().st_mtime)


def sample_and_score(model: torch.nn.Module, lengths: list[int], steps: int, seed: int, batch: int, scale: float,
                     guides: tuple = ()) -> tuple[list[np.ndarray], list[dict[str, Any]], float]:
    """Backbones (N, CA, C, O in A), their per-structure metrics, and the sampler's seconds."""
    start = time.perf_counter()
    frames = sample_frames(model, lengths, {"trans": "euler", "rots": "euler"}, steps, seed, batch, guides=guides)
    seconds = time.perf_counter() - start
    structures = [atoms_of(r, x * scale) for r, x in frames]
    return structures, [backbone_metrics(a) for a in structures], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/proteins/frames.yaml"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/proteins"))
    ap.add_argument("--run-dir", default=str(ROOT / "runs/bench_proteins"))
    ap.add_argument("--reuse", action="store_true", help="evaluate the existing run in --run-dir instead of training")
    ap.add_argument("--budget-min", type=float, default=30.0, help="training wall-clock budget (trainer.max_minutes)")
    ap.add_argument("--max-steps", type=int, default=3000, help="trainer.max_steps (the LR schedule's length)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="config override (repeat)")
    ap.add_argument("--n", type=int, default=10, help="samples per length")
    ap.add_argument("--lengths", default=",".join(str(n) for n in range(50, 151, 10)))
    ap.add_argument("--motif-n", type=int, default=5, help="designs per motif")
    ap.add_argument("--guided-n", type=int, default=10, help="samples per guidance setting (length 100)")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--results-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    run_dir = Path(args.run_dir)

    if not args.reuse:
        cfg = load_config(args.config, training_overrides(args))
        start = time.perf_counter()
        result = train(cfg)
        print(f"trained {result.step} steps in {time.perf_counter() - start:.0f} s", flush=True)
    run = load_run(run_dir, device="cpu")
    cfg = run.config
    scale = cfg.data.trans_scale
    lengths = [int(v) for v in args.lengths.split(",")]
    wanted = [n for n in lengths for _ in range(args.n)]

    chains, skipped = load_chains(cfg.data)
    reference = [c.atoms[:, 1] for c in chains]
    natural_rows = [backbone_metrics(c.atoms, c.break_before) for c in chains]
    natural = summarize(natural_rows, reference, by_length=False)
    print("natural training chains:", {k: round(natural[k], 3) for k in KEYS if k in natural}, flush=True)

    results = []
    for steps in SETTINGS:
        structures, rows, seconds = sample_and_score(run.model, wanted, steps, 0, args.batch_size, scale)
        cas = [a[:, 1] for a in structures]
        summary = summarize(rows, cas, reference if steps == SETTINGS[0] else None)
        per_length = {n: summarize([r for r in rows if r["length"] == n], [c for c, r in zip(cas, rows) if r["length"] == n])
                      for n in lengths}
        entry = {"nfe": steps, "solver": "euler / euler (geodesic)", "n": len(rows),
                 "backbones_per_s": len(rows) / seconds, "sampling_seconds": seconds,
                 **{k: summary[k] for k in KEYS if k in summary},
                 "per_length": {str(n): {k: v[k] for k in KEYS if k in v} for n, v in per_length.items()}}
        results.append(entry)
        print(f"NFE {steps}:", {k: round(entry[k], 3) for k in KEYS + ("backbones_per_s",) if k in entry}, flush=True)

    motif_rows = []
    data_dir = Path(cfg.data.dir)
    for file, contig in MOTIFS:
        motif = read_motif(f"{data_dir / file}:{contig}")
        rng = np.random.default_rng(0)
        layouts = [draw_layout(motif, None, scale, rng) for _ in range(args.motif_n)]
        frames = sample_frames(run.model, [lay.length for lay in layouts], {"trans": "euler", "rots": "euler"},
                               SETTINGS[0], 0, args.batch_size, layouts)
        centre = motif.centroid()
        structures = [atoms_of(r, x * scale + centre) for r, x in frames]
        truth = np.concatenate(motif.atoms)
        rmsds = [motif_rmsd(a[lay.rows], truth) for a, lay in zip(structures, layouts)]
        rows = [backbone_metrics(a) for a in structures]
        scaffold = summarize(rows, [a[:, 1] for a in structures], by_length=False)
        motif_rows.append({"file": file, "contig": contig, "motif_residues": motif.size, "n": len(layouts),
                           "lengths": [lay.length for lay in layouts],
                           "motif_rmsd": float(np.mean([r["motif_rmsd"] for r in rmsds])),
                           "motif_rmsd_placed": float(np.mean([r["motif_rmsd_placed"] for r in rmsds])),
                           **{f"design_{k}": scaffold[k] for k in ("ca_ca_within_0p1", "clash_rate", "ss_fraction")}})
        print("motif", file, contig, round(motif_rows[-1]["motif_rmsd"], 4), flush=True)

    guided = []
    base_structures, base_rows, _ = sample_and_score(run.model, [100] * args.guided_n, SETTINGS[0], 1, args.batch_size,
                                                     scale)
    base = summarize(base_rows, [a[:, 1] for a in base_structures])
    base_rg = float(np.mean([r["rg"] for r in base_rows]))
    for targets, strength in (({"helix": 0.7}, 50.0), ({"rg": 13.0}, 10.0)):  # rg: larger steps overshoot
        guide = GradientGuidance(guidance_loss(targets, scale), scale=strength, fields=["trans"], through_model=False,
                                 substeps=10)
        structures, rows, _ = sample_and_score(run.model, [100] * args.guided_n, SETTINGS[0], 1, args.batch_size, scale,
                                               (guide,))
        got = summarize(rows, [a[:, 1] for a in structures])
        guided.append({"targets": targets, "guidance_scale": strength, "length": 100, "n": len(rows),
                       "unguided": {"helix_fraction": base["helix_fraction"], "rg": base_rg,
                                    "ca_ca_within_0p1": base["ca_ca_within_0p1"]},
                       "guided": {"helix_fraction": got["helix_fraction"], "rg": float(np.mean([r["rg"] for r in rows])),
                                  "ca_ca_within_0p1": got["ca_ca_within_0p1"]}})
        print("guided", guided[-1], flush=True)

    main_row = results[0]
    bars = [bar("ca_ca_within_0p1", main_row["ca_ca_within_0p1"], ">=", 0.95),
            bar("clash_rate", main_row["clash_rate"], "<=", 0.01),
            bar("ss_fraction", main_row["ss_fraction"], ">=", 0.5),
            bar("mean_pairwise_tm", main_row["mean_pairwise_tm"], "<=", 0.5),
            bar("motif_rmsd", float(np.mean([m["motif_rmsd"] for m in motif_rows])), "<=", 1.0)]
    payload = {
        "settings": {"config": cfg.to_dict(), "data": str(data_dir), "chains": len(chains), "skipped": dict(skipped),
                     "training_budget_minutes": cfg.trainer.max_minutes, "training_steps": run.step,
                     "training_seconds_from_files": training_seconds(run_dir), "threads": torch.get_num_threads(),
                     "lengths": lengths, "samples_per_length": args.n, "seed": 0,
                     "motif_rmsd_note": "RMSD of the generated backbone's motif (N, CA, C, ideal geometry) to the file's "
                                        "atoms; inpainting keeps the motif frames exactly, so this measures ideal vs "
                                        "real geometry, not a refolded design (ESMFold not available offline)",
                     "designability": "not computed: needs ProteinMPNN + ESMFold (model weights, not available offline)"},
        "reference_natural_training_chains": {"n": natural["n"], **{k: natural[k] for k in KEYS if k in natural}},
        "anchors": ANCHORS,
        "results": results,
        "motif_scaffolding": motif_rows,
        "guidance": guided,
        "bars": bars,
    }
    path = write_results("proteins_frames", payload, packages=("sciffusion", "torch", "numpy", "biopython", "pydssp",
                                                                "tmtools"),
                         **({"folder": args.results_dir} if args.results_dir else {}))
    print(f"wrote {path}")
    for b in bars:
        print(f"  {b['name']}: {b['value']:.4g} {b['op']} {b['target']} -> {'met' if b['met'] else 'unmet'}")


if __name__ == "__main__":
    main()
