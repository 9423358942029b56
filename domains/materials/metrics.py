"""Crystal-generation metrics as CDVAE and DiffCSP compute them, on pymatgen ``Structure`` objects.

Reimplemented from CDVAE's ``scripts/compute_metrics.py`` + ``scripts/eval_utils.py`` (github.com/txie-93/cdvae,
commit f857f598) and DiffCSP's copy of them (github.com/jiaor17/DiffCSP, commit 7121d159), which the paper
numbers (CDVAE, DiffCSP, FlowMM, ...) come from. Everything here takes structures, never a model's tensors.

Validity
--------
* :func:`structure_validity`: every pair of sites at least ``cutoff`` = 0.5 Angstrom apart (minimum-image
  distances, ``Structure.distance_matrix``) and a cell volume of at least 0.1 Angstrom^3. As CDVAE, a distance
  of exactly 0.5 is valid. Non-finite lattices or coordinates are invalid (DiffCSP's ``nan_value`` case).
* :func:`smact_validity` / :func:`compositional_validity`: CDVAE's SMACT screen, reproduced with the data and
  semantics of smact 2.2.1 (the version CDVAE's ``env.yml`` pins) on the installed smact 4.x, see below.
* A generated sample that is ``None`` (a failed sample) is invalid in every respect.

Structure prediction (CSP)
--------------------------
:func:`csp_match`: ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)`` (pymatgen's other defaults:
``primitive_cell=True, scale=True, attempt_supercell=False``), ``get_rms_dist(predicted, target)``; a pair
matches when it returns a value, and a matcher exception counts as no match (as CDVAE). The RMSE is pymatgen's:
the root-mean-square site displacement normalised by ``(V / N)^(1/3)`` of the average lattice, not Angstrom.
Match rates are over ALL targets; the RMSE is the mean over matched targets (NaN when none matched).

* k = 1: the first sample of each target (DiffCSP's ``RecEval``).
* k = all: a target matches if any of its samples that passes the gate matches; its RMSE is the smallest over
  matching samples (DiffCSP's ``RecEvalBatch``, ``--multi_eval``).

Validity gate (``gate``): in DiffCSP's code the two protocols gate differently. ``RecEval`` (k = 1) matches a
pair only when the predicted AND the true structure are valid (``c1.valid and c2.valid``; CDVAE's original
``RecEval`` checked only the prediction); ``RecEvalBatch`` (k = all) checks only each predicted sample
(``self.preds[j][i].valid``). ``gate="diffcsp"`` (default) reproduces exactly that; ``"both"`` and ``"pred"`` apply
one rule to both protocols; ``"none"`` matches every sample that is not ``None``. "Valid" here is structural AND
compositional validity, as ``Crystal.valid`` in their code. Their ``Crystal`` also turns ``valid`` off when
CrystalNN cannot fingerprint the structure; the CSP gate here leaves that out (CrystalNN costs about 10 ms a
site, hours over Perov-5's 3,785 x 20 samples, and fails on almost no structure that passes the distance check).

De novo generation
------------------
:func:`denovo_metrics` as CDVAE's / DiffCSP's ``GenEval``:

* ``comp_valid``, ``struct_valid``, ``valid``: fractions over all generated samples; ``valid`` is both, and as in
  their ``Crystal`` a structure CrystalNN cannot fingerprint is not ``valid``.
* Coverage (``compute_cov``): CrystalNN structural fingerprints (matminer ``CrystalNNFingerprint.from_preset("ops")``,
  61 site features averaged over the sites) and Magpie composition fingerprints (matminer
  ``ElementProperty.from_preset("magpie")``, 132 features) standardised with CDVAE's fixed scaler
  (``cdvae_comp_scaler.json``; NaN -> 0 after scaling). Euclidean distances between ALL generated samples with a
  fingerprint (invalid ones included, as CDVAE) and the reference set; recall = fraction of reference structures
  with a generated one within both cutoffs, precision = number of generated ones with a reference structure
  within both cutoffs / number of generated samples (failed fingerprints and ``None`` samples stay in that
  denominator). Cutoffs (struct, comp) from ``COV_Cutoffs``: perov_5 (0.2, 4), carbon_24 (0.2, 4), mp_20 (0.4, 10).
* EMDs (``scipy.stats.wasserstein_distance``) of density (g/cm^3) and of the number of distinct elements between
  ``n_emd_samples`` = 1,000 valid generated samples and all reference structures. CDVAE draws those 1,000 at random
  without replacement (``np.random.choice``, unseeded) and raises when fewer are valid; here the draw is seeded
  (``seed``) and with fewer valid samples all of them are used (``n_emd_samples_used`` says how many).

Differences from the reference code (all deliberate, none changes a number on their inputs)
-------------------------------------------------------------------------------------------
* smact 4.x vs the smact 2.2.1 CDVAE used: (1) ``neutral_ratios`` now returns the list of ratios, not
  ``(exists, ratios)``; CDVAE's ``cn_e, cn_r = neutral_ratios(...)`` would silently mis-unpack a two-ratio list.
  (2) ``Element.oxidation_states`` now defaults to the ICSD-24 list (Fe: +1..+6); 2.2.1's list is
  ``oxidation_states_smact14`` (Fe: -2, -1, +1..+6), identical to 2.2.1's file except Ir (2.2.1: -2, now -3) and the
  noble gases (2.2.1: empty list, now None). (3) ``pauling_eneg`` is identical except Zr (2.2.1: 0.33, a typo
  fixed in 2023; now 1.33). (4) ``pauling_test`` now fails any pair with a missing electronegativity; in 2.2.1 a
  cation-anion pair with a missing value raised ``TypeError``, which CDVAE's code catches as "passes", while
  other pairs with a missing value failed. This module uses the smact14 lists with the Ir and Zr values of 2.2.1
  and reimplements 2.2.1's Pauling test, so that it answers as CDVAE did.
* matminer >= 0.9 imputes missing Magpie values by default (``impute_nan=True``); CDVAE's matminer 0.7 left NaN,
  which the scaler then set to 0. The featuriser here is built with ``impute_nan=False``.
* DiffCSP's ``smact_validity`` declares a composition invalid when it has more than 1e7 oxidation-state
  combinations (CDVAE's has no such guard); kept, it only affects compositions of many elements.
* An element smact does not know, or a reference structure CrystalNN cannot fingerprint, would crash their
  scripts; here the first is compositionally invalid and the second is left out of the reference fingerprints
  (``n_reference_fingerprint_failures`` counts them).
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import multiprocessing
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from sciffusion.extras import require

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: Minimum interatomic distance (Angstrom) of a structurally valid crystal (CDVAE's ``structure_validity``).
MIN_DISTANCE = 0.5
#: Minimum cell volume (Angstrom^3) of a structurally valid crystal.
MIN_VOLUME = 0.1
#: CDVAE's / DiffCSP's ``StructureMatcher`` tolerances for structure prediction.
MATCHER_TOLERANCES: dict[str, float] = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}
#: CDVAE's coverage cutoffs ``COV_Cutoffs`` (structural, compositional fingerprint distance), by dataset folder
#: name (CDVAE keys them by its property-model names 'perovskite', 'carbon', 'mp20').
COV_CUTOFFS: dict[str, tuple[float, float]] = {"perov_5": (0.2, 4.0), "carbon_24": (0.2, 4.0), "mp_20": (0.4, 10.0)}
#: DiffCSP: a composition with more oxidation-state combinations than this is declared invalid.
MAX_OXIDATION_COMBINATIONS = 10**7
#: smact 2.2.1 values that smact 4.x changed (see the module docstring): oxidation states and Pauling
#: electronegativities.
SMACT_221_OXIDATION_STATES: dict[str, tuple[int, ...]] = {"Ir": (-2, -1, 1, 2, 3, 4, 5, 6, 7, 8)}
SMACT_221_PAULING: dict[str, float] = {"Zr": 0.33}

SCALER_PATH = Path(__file__).with_name("cdvae_comp_scaler.json")

Gate = Literal["diffcsp", "both", "pred", "none"]
_T = TypeVar("_T")
_R = TypeVar("_R")
_EXTRA = "materials"


# --------------------------------------------------------------------------------------------------- validity

def structure_validity(structure: Structure, cutoff: float = MIN_DISTANCE) -> bool:
    """CDVAE's structural validity: True when every pair of sites is at least ``cutoff`` Angstrom apart
    (minimum-image distances) and the cell volume is at least :data:`MIN_VOLUME` Angstrom^3. A single-site cell
    has no pair (its distance to its own periodic image is not checked, as CDVAE). Non-finite lattice or
    coordinates: False."""
    lattice = np.asarray(structure.lattice.matrix, dtype=float)
    if not (np.all(np.isfinite(lattice)) and np.all(np.isfinite(structure.frac_coords))):
        return False
    if structure.volume < MIN_VOLUME:
        return False
    if len(structure) < 2:
        return True
    dist = np.array(structure.distance_matrix, dtype=float)
    np.fill_diagonal(dist, np.inf)
    return bool(dist.min() >= cutoff)


@functools.lru_cache(maxsize=None)
def _smact_element(symbol: str) -> tuple[tuple[int, ...], float | None] | None:
    """(oxidation states, Pauling electronegativity) of ``symbol`` as smact 2.2.1 had them, or None when smact
    does not know the element."""
    smact = require("smact", _EXTRA, "compositional validity")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            element = smact.Element(symbol)
    except KeyError:  # smact: 'Elemental data for X not found.'
        return None
    states = SMACT_221_OXIDATION_STATES.get(symbol, tuple(element.oxidation_states_smact14 or ()))
    return tuple(states), SMACT_221_PAULING.get(symbol, element.pauling_eneg)


def _pauling_221(ox_states: Sequence[int], electronegativities: Sequence[float | None]) -> bool:
    """smact 2.2.1's ``pauling_test`` (``eneg_states_test``) as CDVAE called it, with CDVAE's ``except TypeError:
    passes``: over pairs of sites in order, a cation at least as electronegative as an anion fails; a
    cation-anion pair with a missing electronegativity passes the whole test (2.2.1 raised TypeError there); any
    other pair with a missing electronegativity fails."""
    for (ox1, en1), (ox2, en2) in itertools.combinations(zip(ox_states, electronegativities), 2):
        if (ox1 > 0 and ox2 < 0) or (ox1 < 0 and ox2 > 0):
            if en1 is None or en2 is None:
                return True
            if (ox1 > 0 and en1 >= en2) or (ox1 < 0 and en1 <= en2):
                return False
        elif en1 is None or en2 is None:
            return False
    return True


@functools.lru_cache(maxsize=65536)
def _smact_validity_cached(symbols: tuple[str, ...], counts: tuple[int, ...], use_pauling_test: bool,
                           include_alloys: bool) -> bool:
    smact = require("smact", _EXTRA, "compositional validity")
    if len(symbols) == 1:
        return True
    data = [_smact_element(s) for s in symbols]
    if any(d is None for d in data):
        return False
    if include_alloys and all(s in smact.metals for s in symbols):
        return True
    ox_lists = [d[0] for d in data]
    electronegativities = [d[1] for d in data]
    if math.prod(len(states) for states in ox_lists) > MAX_OXIDATION_COMBINATIONS:
        return False
    stoichs = [(c,) for c in counts]
    for ox_states in itertools.product(*ox_lists):
        # smact >= 3 returns the list of neutral ratios (2.2.1 returned (exists, ratios))
        if not smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=max(counts)):
            continue
        if not use_pauling_test or _pauling_221(ox_states, electronegativities):
            return True
    return False


def smact_validity(symbols: Sequence[str], counts: Sequence[int], use_pauling_test: bool = True,
                   include_alloys: bool = True) -> bool:
    """CDVAE's SMACT compositional validity of the composition ``symbols`` (element symbols) x ``counts``
    (atoms of each, any common factor). Counts of a repeated symbol are summed, then divided by their gcd.

    Rules, in CDVAE's order: a single element is valid; with ``include_alloys``, a composition of metals only
    (``smact.metals``) is valid; otherwise valid when some combination of the elements' oxidation states (smact
    2.2.1's lists) is charge neutral at exactly these counts (``smact.neutral_ratios``) and, with
    ``use_pauling_test``, passes smact 2.2.1's Pauling electronegativity test. An element smact does not know:
    invalid. More than :data:`MAX_OXIDATION_COMBINATIONS` combinations: invalid (DiffCSP)."""
    if len(symbols) != len(counts) or not symbols:
        raise ValueError(f"smact_validity needs one count per symbol, got {len(symbols)} symbols and "
                         f"{len(counts)} counts")
    total: Counter[str] = Counter()
    for symbol, count in zip(symbols, counts):
        if int(count) != count or count <= 0:
            raise ValueError(f"smact_validity needs positive integer counts, got {count!r} for {symbol}")
        total[str(symbol)] += int(count)
    ordered = sorted(total)
    values = [total[s] for s in ordered]
    divisor = math.gcd(*values)
    return _smact_validity_cached(tuple(ordered), tuple(v // divisor for v in values), bool(use_pauling_test),
                                  bool(include_alloys))


def _element_counts(structure: Structure) -> tuple[list[str], list[int]]:
    """Element symbols and integer atom counts of an ordered structure (oxidation states ignored)."""
    if not structure.is_ordered:
        raise ValueError("compositional validity needs an ordered structure (one element per site); this one has "
                         "partial occupancies")
    counts = Counter(site.specie.symbol for site in structure)
    symbols = sorted(counts)
    return symbols, [counts[s] for s in symbols]


def compositional_validity(structure: Structure) -> bool:
    """:func:`smact_validity` of the structure's composition (element counts of an ordered structure; a
    disordered one is a ValueError)."""
    symbols, counts = _element_counts(structure)
    return smact_validity(symbols, counts)


def validity(structure: Structure | None) -> tuple[bool, bool]:
    """``(structural, compositional)`` validity of one sample; ``None`` (a failed sample) is ``(False, False)``."""
    if structure is None:
        return False, False
    return structure_validity(structure), compositional_validity(structure)


# --------------------------------------------------------------------------------------------------- pools

def _pool_map(fn: Callable[[_T], _R], jobs: Sequence[_T], workers: int) -> list[_R]:
    """``[fn(job) for job in jobs]``, in ``workers`` spawned processes when ``workers`` > 1 (``fn`` must be a
    module-level function and each job picklable); in order."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in jobs]
    workers = min(workers, len(jobs))
    chunksize = max(1, len(jobs) // (workers * 16))
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init) as pool:
        return list(pool.map(fn, jobs, chunksize=chunksize))


def _worker_init() -> None:
    """One thread per worker process; no warnings from pymatgen / matminer in the workers."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.simplefilter("ignore")


# --------------------------------------------------------------------------------------------------- CSP

@functools.lru_cache(maxsize=8)
def _matcher(stol: float, angle_tol: float, ltol: float) -> Any:
    analysis = require("pymatgen.analysis.structure_matcher", _EXTRA, "structure matching")
    return analysis.StructureMatcher(stol=stol, angle_tol=angle_tol, ltol=ltol)


def _csp_job(job: tuple[Structure | None, Structure, bool, tuple[float, float, float]]) -> tuple[bool, float | None]:
    """One (prediction, target) pair: ``(prediction valid, normalised RMSE or None)``. The matcher runs on a valid
    prediction, or on any non-None one when ``gated`` is False."""
    pred, target, gated, (stol, angle_tol, ltol) = job
    if pred is None:
        return False, None
    ok = all(validity(pred))
    if gated and not ok:
        return False, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rms = _matcher(stol, angle_tol, ltol).get_rms_dist(pred, target)
    except Exception:  # noqa: BLE001 -- CDVAE / DiffCSP count a matcher exception as no match
        return ok, None
    return ok, None if rms is None else float(rms[0])


def csp_match(predictions: Sequence[Sequence[Structure | None]], targets: Sequence[Structure], *,
              gate: Gate = "diffcsp", workers: int = 1, stol: float = MATCHER_TOLERANCES["stol"],
              angle_tol: float = MATCHER_TOLERANCES["angle_tol"],
              ltol: float = MATCHER_TOLERANCES["ltol"]) -> dict[str, Any]:
    """Structure-prediction match rate and RMSE with 1 sample and with all samples per target (see the module
    docstring for the protocol and the validity ``gate``).

    ``predictions[i]`` holds the samples (``None`` = a failed sample) for ``targets[i]``, the first one being the
    k = 1 sample; targets may have different numbers of samples. ``workers`` > 1 matches the (sample, target)
    pairs in that many spawned processes (call from under ``if __name__ == "__main__":`` in a script).

    Returns a dict: ``match_rate_1``, ``rmse_1``, ``match_rate_k``, ``rmse_k`` (k = all samples; rates over all
    targets, RMSE the mean over matched targets, NaN if none matched, normalised by ``(V/N)^(1/3)``),
    ``k`` (most samples of a target), ``n_targets``, ``n_valid_targets``, ``valid_sample_fraction`` (over all
    samples), ``gate``, and per target ``rmse_per_target_1`` / ``rmse_per_target_k`` (None = no match).
    """
    if len(predictions) != len(targets):
        raise ValueError(f"csp_match needs one list of samples per target: {len(predictions)} lists for "
                         f"{len(targets)} targets")
    if gate not in ("diffcsp", "both", "pred", "none"):
        raise ValueError(f"unknown validity gate {gate!r}: use 'diffcsp', 'both', 'pred' or 'none'")
    if not targets:
        raise ValueError("csp_match needs at least one target")
    target_valid = [all(validity(t)) for t in targets]
    tolerances = (float(stol), float(angle_tol), float(ltol))
    index = [(i, j) for i, samples in enumerate(predictions) for j in range(len(samples))]
    jobs = [(predictions[i][j], targets[i], gate != "none", tolerances) for i, j in index]
    outcomes = _pool_map(_csp_job, jobs, workers)

    per_target: list[list[tuple[bool, float | None]]] = [[] for _ in targets]
    for (i, _), outcome in zip(index, outcomes):
        per_target[i].append(outcome)

    target_gate_1 = gate in ("diffcsp", "both")
    target_gate_k = gate == "both"
    rmse_1: list[float | None] = []
    rmse_k: list[float | None] = []
    for i, results in enumerate(per_target):
        first = results[0][1] if results else None
        rmse_1.append(first if (target_valid[i] or not target_gate_1) else None)
        matched = [rms for _, rms in results if rms is not None]
        rmse_k.append(min(matched) if matched and (target_valid[i] or not target_gate_k) else None)

    def summary(rmses: list[float | None]) -> tuple[float, float]:
        hits = [r for r in rmses if r is not None]
        return len(hits) / len(rmses), float(np.mean(hits)) if hits else float("nan")

    rate_1, mean_1 = summary(rmse_1)
    rate_k, mean_k = summary(rmse_k)
    n_samples = len(outcomes)
    return {
        "match_rate_1": rate_1, "rmse_1": mean_1, "match_rate_k": rate_k, "rmse_k": mean_k,
        "k": max((len(p) for p in predictions), default=0), "n_targets": len(targets),
        "n_valid_targets": int(sum(target_valid)),
        "valid_sample_fraction": (sum(ok for ok, _ in outcomes) / n_samples) if n_samples else float("nan"),
        "gate": gate, "rmse_per_target_1": rmse_1, "rmse_per_target_k": rmse_k,
    }


# --------------------------------------------------------------------------------------------------- fingerprints

@functools.lru_cache(maxsize=1)
def _crystalnn_featurizer() -> Any:
    fingerprint = require("matminer.featurizers.site.fingerprint", _EXTRA, "CrystalNN fingerprints")
    return fingerprint.CrystalNNFingerprint.from_preset("ops")


@functools.lru_cache(maxsize=1)
def _magpie_featurizer() -> Any:
    composite = require("matminer.featurizers.composition.composite", _EXTRA, "Magpie fingerprints")
    return composite.ElementProperty.from_preset("magpie", impute_nan=False)


def structure_fingerprint(structure: Structure) -> np.ndarray | None:
    """CDVAE's structural fingerprint: matminer's CrystalNN ``ops`` site fingerprint of every site, averaged over
    the sites, shape (61,); None when CrystalNN raises on some site."""
    featurizer = _crystalnn_featurizer()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites = [featurizer.featurize(structure, i) for i in range(len(structure))]
    except Exception:  # noqa: BLE001 -- CDVAE: a structure CrystalNN cannot fingerprint has no fingerprint
        return None
    return np.asarray(sites, dtype=float).mean(axis=0)


def composition_fingerprint(structure: Structure) -> np.ndarray:
    """CDVAE's composition fingerprint: matminer's Magpie ``ElementProperty`` of the element composition, shape
    (132,), NaN where an elemental property is missing (no imputation, as CDVAE's matminer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(_magpie_featurizer().featurize(structure.composition.element_composition), dtype=float)


def _fingerprint_job(structure: Structure | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Both fingerprints of one sample; (None, None) for a None sample or a failed CrystalNN fingerprint (CDVAE
    drops the composition fingerprint too)."""
    if structure is None:
        return None, None
    struct_fp = structure_fingerprint(structure)
    if struct_fp is None:
        return None, None
    return struct_fp, composition_fingerprint(structure)


def fingerprints(structures: Sequence[Structure | None], workers: int = 1
                 ) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Structural (61,) and composition (132,) fingerprints of each structure, in order; ``(None, None)`` where
    the sample is None or CrystalNN fails. ``workers`` > 1: spawned processes (about 10 ms per site on one
    core)."""
    pairs = _pool_map(_fingerprint_job, list(structures), workers)
    return [p[0] for p in pairs], [p[1] for p in pairs]


@functools.lru_cache(maxsize=1)
def _comp_scaler() -> tuple[np.ndarray, np.ndarray]:
    if not SCALER_PATH.exists():
        raise FileNotFoundError(f"CDVAE's composition scaler {SCALER_PATH} is missing: an install that left out the "
                                f"package's data files (package-data '*.json' of sciffusion.domains.materials)")
    data = json.loads(SCALER_PATH.read_text())
    return np.asarray(data["means"], dtype=float), np.asarray(data["stds"], dtype=float)


def scale_composition_fingerprints(fps: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """CDVAE's ``CompScaler.transform``: ``(fp - mean) / std`` with CDVAE's fixed means / stds
    (``cdvae_comp_scaler.json``), NaN -> 0. ``fps`` (n, 132) -> (n, 132)."""
    means, stds = _comp_scaler()
    x = np.asarray(fps, dtype=float).reshape(-1, means.shape[0])
    scaled = (x - means) / stds
    return np.where(np.isnan(scaled), 0.0, scaled)


def coverage(gen_struct_fps: Sequence[np.ndarray | None], gen_comp_fps: Sequence[np.ndarray | None],
             ref_struct_fps: Sequence[np.ndarray | None], ref_comp_fps: Sequence[np.ndarray | None],
             struc_cutoff: float, comp_cutoff: float) -> dict[str, float]:
    """CDVAE's ``compute_cov``. Generated samples with a None fingerprint are left out of the distances but stay
    in the precision denominator (``len(gen_struct_fps)``); reference structures with a None fingerprint are
    left out. Composition fingerprints are scaled with :func:`scale_composition_fingerprints`.

    Returns ``cov_recall``, ``cov_precision`` and the mean nearest-neighbour distances ``amsd_recall``,
    ``amsd_precision`` (structural) and ``amcd_recall``, ``amcd_precision`` (composition)."""
    n_generated = len(gen_struct_fps)
    gen = [(s, c) for s, c in zip(gen_struct_fps, gen_comp_fps) if s is not None and c is not None]
    ref = [(s, c) for s, c in zip(ref_struct_fps, ref_comp_fps) if s is not None and c is not None]
    if n_generated == 0 or not ref:
        raise ValueError(f"coverage needs generated samples and reference fingerprints: {n_generated} generated, "
                         f"{len(ref)} reference fingerprints")
    if not gen:
        nan = float("nan")
        return {"cov_recall": 0.0, "cov_precision": 0.0, "amsd_recall": nan, "amsd_precision": nan,
                "amcd_recall": nan, "amcd_precision": nan}
    distance = require("scipy.spatial.distance", _EXTRA, "coverage")
    struc = distance.cdist(np.array([s for s, _ in gen]), np.array([s for s, _ in ref]))
    comp = distance.cdist(scale_composition_fingerprints([c for _, c in gen]),
                          scale_composition_fingerprints([c for _, c in ref]))
    struc_recall, struc_precision = struc.min(axis=0), struc.min(axis=1)
    comp_recall, comp_precision = comp.min(axis=0), comp.min(axis=1)
    return {
        "cov_recall": float(np.mean((struc_recall <= struc_cutoff) & (comp_recall <= comp_cutoff))),
        "cov_precision": float(np.sum((struc_precision <= struc_cutoff) & (comp_precision <= comp_cutoff))
                               / n_generated),
        "amsd_recall": float(struc_recall.mean()), "amsd_precision": float(struc_precision.mean()),
        "amcd_recall": float(comp_recall.mean()), "amcd_precision": float(comp_precision.mean()),
    }


# --------------------------------------------------------------------------------------------------- de novo

def _density_and_elements(structures: Sequence[Structure]) -> tuple[np.ndarray, np.ndarray]:
    """Density (g/cm^3) and number of distinct species of each structure, shapes (n,), (n,)."""
    return (np.array([s.density for s in structures], dtype=float),
            np.array([len(set(s.species)) for s in structures], dtype=float))


def denovo_metrics(generated: Sequence[Structure | None], reference: Sequence[Structure], *,
                   dataset: str = "perov_5", n_emd_samples: int = 1000, seed: int = 0, workers: int = 1,
                   reference_fingerprints: tuple[Sequence[np.ndarray | None], Sequence[np.ndarray | None]]
                   | None = None) -> dict[str, Any]:
    """CDVAE's / DiffCSP's de novo generation metrics (see the module docstring) in one dict.

    ``generated``: the samples, ``None`` = a failed sample (invalid, no fingerprint, counted in every
    denominator). ``reference``: the test structures. ``dataset`` picks the coverage cutoffs
    (:data:`COV_CUTOFFS`). ``reference_fingerprints``: the output of :func:`fingerprints` on ``reference``, to
    reuse between calls (computing them for Perov-5's 3,785 test structures takes minutes on one core).
    ``workers`` > 1 computes fingerprints in spawned processes.

    Returns ``comp_valid``, ``struct_valid``, ``valid`` (fractions of all samples), ``wdist_density``,
    ``wdist_num_elems`` (on ``n_emd_samples_used`` valid samples vs all reference structures; NaN with no valid
    sample), ``cov_recall``, ``cov_precision``, ``amsd_*``, ``amcd_*`` (:func:`coverage`), and the counts
    ``n_generated``, ``n_valid``, ``n_emd_samples_used``, ``n_reference``, ``n_reference_fingerprint_failures``.
    """
    if dataset not in COV_CUTOFFS:
        raise ValueError(f"unknown dataset {dataset!r} for the coverage cutoffs; known: {sorted(COV_CUTOFFS)}")
    if not generated or not reference:
        raise ValueError(f"denovo_metrics needs generated and reference structures: {len(generated)} generated, "
                         f"{len(reference)} reference")
    stats = require("scipy.stats", _EXTRA, "property EMDs")
    flags = [validity(s) for s in generated]
    gen_struct, gen_comp = fingerprints(generated, workers)
    if reference_fingerprints is None:
        reference_fingerprints = fingerprints(reference, workers)
    ref_struct, ref_comp = reference_fingerprints
    if len(ref_struct) != len(reference) or len(ref_comp) != len(reference):
        raise ValueError(f"reference_fingerprints hold {len(ref_struct)} / {len(ref_comp)} entries for "
                         f"{len(reference)} reference structures")
    valid = [st and co and fp is not None for (st, co), fp in zip(flags, gen_struct)]
    valid_structures = [s for s, ok in zip(generated, valid) if ok]
    if len(valid_structures) > n_emd_samples:
        chosen = np.random.default_rng(seed).choice(len(valid_structures), n_emd_samples, replace=False)
        valid_structures = [valid_structures[i] for i in chosen]
    ref_density, ref_nelems = _density_and_elements(reference)
    if valid_structures:
        density, nelems = _density_and_elements(valid_structures)
        wdist_density = float(stats.wasserstein_distance(density, ref_density))
        wdist_nelems = float(stats.wasserstein_distance(nelems, ref_nelems))
    else:
        wdist_density = wdist_nelems = float("nan")
    struc_cutoff, comp_cutoff = COV_CUTOFFS[dataset]
    result: dict[str, Any] = {
        "comp_valid": float(np.mean([co for _, co in flags])),
        "struct_valid": float(np.mean([st for st, _ in flags])),
        "valid": float(np.mean(valid)),
        "wdist_density": wdist_density, "wdist_num_elems": wdist_nelems,
    }
    result.update(coverage(gen_struct, gen_comp, ref_struct, ref_comp, struc_cutoff, comp_cutoff))
    result.update({
        "n_generated": len(generated), "n_valid": int(sum(valid)), "n_emd_samples_used": len(valid_structures),
        "n_reference": len(reference),
        "n_reference_fingerprint_failures": int(sum(s is None for s in ref_struct)),
        "dataset": dataset,
    })
    return result
