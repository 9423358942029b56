"""Scoring a trained materials run on held-out crystals (``sciffusion evaluate`` and ``benchmarks/materials_*.py``).

* Structure prediction (:func:`evaluate_csp`): every test crystal's composition is sampled ``k`` times; DiffCSP's
  match rate and RMSE (pymatgen ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``) with the first sample and
  with all ``k`` (:func:`~sciffusion.domains.materials.metrics.csp_match`), over all test crystals.
* De novo generation (:func:`evaluate_denovo`): CDVAE's structural and compositional validity, coverage recall and
  precision and the EMDs of density and element count against the test crystals
  (:func:`~sciffusion.domains.materials.metrics.denovo_metrics`).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from sciffusion.domains.materials.crystal import CrystalTable
from sciffusion.domains.materials.domain import TrainingMeta, composition_atoms, sample_crystals
from sciffusion.model import DiffusionModel


def representable(table: CrystalTable, meta: TrainingMeta) -> np.ndarray:
    """``(M,)`` bool: the test crystals whose elements and size the run can hold (the others count as unmatched)."""
    elements = set(meta.elements)
    return np.array([set(composition_atoms(table, i)) <= elements and table.sizes[i] <= meta.max_atoms
                     for i in range(len(table))])


def evaluate_csp(model: DiffusionModel, meta: TrainingMeta, test: CrystalTable, samples_per_composition: int,
                 solver: str | dict[str, str], steps: int, seed: int, batch_size: int, workers: int = 1) -> dict[str, Any]:
    """Match rate / RMSE with 1 and ``samples_per_composition`` samples per test composition (see the module
    docstring), the sampling time and structures per second."""
    from sciffusion.domains.materials.metrics import csp_match

    ok = representable(test, meta)
    rows = np.flatnonzero(ok)
    atoms = [composition_atoms(test, int(i)) for i in rows]
    repeated = [a for a in atoms for _ in range(samples_per_composition)]
    start = time.perf_counter()
    crystals = sample_crystals(model, meta, [len(a) for a in repeated], repeated, solver, steps, seed, batch_size)
    seconds = time.perf_counter() - start
    predictions: list[list[Any]] = [[None] * samples_per_composition for _ in range(len(test))]
    for k, crystal in enumerate(crystals):
        predictions[int(rows[k // samples_per_composition])][k % samples_per_composition] = crystal.structure()
    targets = [test.structure(i) for i in range(len(test))]
    metrics = csp_match(predictions, targets, workers=workers)
    for key in ("rmse_per_target_1", "rmse_per_target_k"):
        metrics.pop(key)
    return {"test_crystals": len(test), "unrepresentable_test_crystals": int((~ok).sum()),
            "samples_per_composition": samples_per_composition, **metrics,
            "sampling_seconds": seconds, "structures_per_second": len(crystals) / max(seconds, 1e-9)}


def evaluate_denovo(model: DiffusionModel, meta: TrainingMeta, test: CrystalTable, n: int,
                    solver: str | dict[str, str], steps: int, seed: int, batch_size: int, workers: int = 1,
                    reference_fingerprints: Any = None) -> dict[str, Any]:
    """CDVAE's de novo metrics of ``n`` samples (atom counts from the training histogram) against the test crystals
    (``reference_fingerprints``: :func:`~sciffusion.domains.materials.metrics.fingerprints` of them, to reuse)."""
    from sciffusion.domains.materials.metrics import denovo_metrics

    hist = np.asarray(meta.size_histogram, dtype=float)
    sizes = np.random.RandomState(seed).choice(len(hist), size=n, p=hist / hist.sum()).tolist()
    start = time.perf_counter()
    crystals = sample_crystals(model, meta, sizes, None, solver, steps, seed, batch_size)
    seconds = time.perf_counter() - start
    generated = [c.structure() for c in crystals]
    reference = [test.structure(i) for i in range(len(test))]
    metrics = denovo_metrics(generated, reference, workers=workers, reference_fingerprints=reference_fingerprints)
    return {"samples": n, **metrics, "sampling_seconds": seconds,
            "structures_per_second": n / max(seconds, 1e-9)}
