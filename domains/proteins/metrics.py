"""Offline metrics of protein backbones (no model weights, no internet).

* Geometry: consecutive CA-CA distances (3.80 A for a trans peptide) and the fraction within 0.1 A of it; clash rate
  (the fraction of residues with a CA closer than 3.0 A to a CA that is not a chain neighbour, ``|i - j| >= 2``);
  radius of gyration of the CAs against length, as a ratio to natural proteins' ``2.2 N^0.38`` A (Skolnick et al.'s
  fit of globular proteins) and as measured on the natural reference structures.
* Secondary structure: DSSP's helix / strand / loop fractions (``pydssp``: the DSSP hydrogen-bond energy on N, CA, C,
  O with hydrogens placed as DSSP does; three classes H, E, -).
* Diversity: mean pairwise TM-score (``tmtools``' TM-align on CAs; a pair's score is the mean of its two
  normalisations) and the number of clusters when samples with TM-score above 0.6 are linked (single linkage, as
  Genie2 counts them); novelty: each sample's largest TM-score (normalised by the sample's length) to the training
  structures.
* Motif RMSD: N, CA, C of the scaffolded motif against the motif's atoms in its file, after optimal superposition
  (Kabsch) and as placed.

**Designability** (the fraction of backbones whose ProteinMPNN sequences ESMFold refolds within 2 A) needs the
ProteinMPNN and ESMFold weights and is not computed here.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

CA_CA = 3.80
CA_CA_TOLERANCE = 0.1
CLASH_DISTANCE = 3.0
TM_CLUSTER_THRESHOLD = 0.6
RG_PREFACTOR, RG_EXPONENT = 2.2, 0.38


def consecutive_ca_distances(ca: np.ndarray, break_before: np.ndarray | None = None) -> np.ndarray:
    """Distances between bonded consecutive CAs ``(L - 1 - breaks,)`` of ``ca`` ``(L, 3)``; ``break_before``
    ``(L,)`` bool drops the steps into a chain break."""
    d = np.linalg.norm(np.diff(ca, axis=0), axis=1)
    return d if break_before is None else d[~np.asarray(break_before, dtype=bool)[1:]]


def ca_ca_within(ca: np.ndarray, tolerance: float = CA_CA_TOLERANCE, break_before: np.ndarray | None = None) -> float:
    """Fraction of consecutive CA-CA distances within ``tolerance`` of 3.80 A."""
    d = consecutive_ca_distances(ca, break_before)
    return float(np.mean(np.abs(d - CA_CA) <= tolerance)) if len(d) else float("nan")


def clash_rate(ca: np.ndarray, distance: float = CLASH_DISTANCE) -> float:
    """Fraction of residues of ``ca`` ``(L, 3)`` with a non-neighbour (``|i - j| >= 2``) CA within ``distance`` A."""
    d = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
    i, j = np.indices(d.shape)
    close = (d < distance) & (np.abs(i - j) >= 2)
    return float(np.mean(close.any(axis=1)))


def radius_of_gyration(ca: np.ndarray) -> float:
    """Radius of gyration of the CAs ``(L, 3)`` in A."""
    return float(np.sqrt(((ca - ca.mean(axis=0)) ** 2).sum(axis=1).mean()))


def natural_rg(length: int | np.ndarray) -> np.ndarray | float:
    """Radius of gyration (A) of a natural globular protein of ``length`` residues, ``2.2 N^0.38``."""
    return RG_PREFACTOR * np.asarray(length, dtype=float) ** RG_EXPONENT


def dssp_string(atoms: np.ndarray) -> str:
    """DSSP's three-class string (H, E, -) of one chain's N, CA, C, O ``(L, 4, 3)`` (pydssp)."""
    import pydssp
    import torch

    return "".join(pydssp.assign(torch.from_numpy(np.asarray(atoms, dtype=np.float64)), out_type="c3"))


def ss_fractions(dssp: str) -> dict[str, float]:
    """Helix, strand and loop fractions of a DSSP string; ``ss`` is helix + strand."""
    n = max(len(dssp), 1)
    helix, strand = dssp.count("H") / n, dssp.count("E") / n
    return {"helix": helix, "strand": strand, "loop": 1.0 - helix - strand, "ss": helix + strand}


def tm_score(ca_a: np.ndarray, ca_b: np.ndarray) -> tuple[float, float]:
    """TM-align of two CA traces ``(La, 3)``, ``(Lb, 3)``: the TM-scores normalised by ``La`` and by ``Lb``
    (poly-glycine sequences: the alignment is structural only)."""
    import tmtools

    a = np.ascontiguousarray(ca_a, dtype=np.float64)
    b = np.ascontiguousarray(ca_b, dtype=np.float64)
    result = tmtools.tm_align(a, b, "G" * len(a), "G" * len(b))
    return float(result.tm_norm_chain1), float(result.tm_norm_chain2)


def pairwise_tm(cas: Sequence[np.ndarray]) -> np.ndarray:
    """Symmetric matrix ``(M, M)`` of pair TM-scores (mean of the two normalisations; 1 on the diagonal)."""
    m = len(cas)
    out = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            out[i, j] = out[j, i] = float(np.mean(tm_score(cas[i], cas[j])))
    return out


def single_linkage_clusters(tm: np.ndarray, threshold: float = TM_CLUSTER_THRESHOLD) -> int:
    """Clusters of samples linked when their TM-score exceeds ``threshold`` (single linkage: connected components)."""
    m = len(tm)
    parent = list(range(m))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(m):
        for j in range(i + 1, m):
            if tm[i, j] > threshold:
                parent[root(i)] = root(j)
    return len({root(i) for i in range(m)})


def diversity(cas: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean pairwise TM-score and the number (and fraction) of single-linkage clusters at TM 0.6."""
    if len(cas) < 2:
        return {"mean_pairwise_tm": float("nan"), "clusters": float(len(cas)), "cluster_fraction": float("nan")}
    tm = pairwise_tm(cas)
    clusters = single_linkage_clusters(tm)
    return {"mean_pairwise_tm": float(tm[np.triu_indices(len(cas), 1)].mean()), "clusters": float(clusters),
            "cluster_fraction": clusters / len(cas)}


def novelty(cas: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> np.ndarray:
    """Per sample, the largest TM-score (normalised by the sample) to any reference trace ``(M,)``."""
    return np.array([max(tm_score(ca, ref)[0] for ref in reference) for ca in cas])


def kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD of points ``a`` ``(n, 3)`` to ``b`` ``(n, 3)`` after the optimal rotation and translation."""
    a0, b0 = a - a.mean(axis=0), b - b.mean(axis=0)
    u, _, vt = np.linalg.svd(a0.T @ b0)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(((a0 @ rot - b0) ** 2).sum(axis=1).mean()))


def motif_rmsd(generated: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """N, CA, C RMSD (A) of a scaffolded motif ``(n, 4, 3)`` against the file's motif ``(n, 4, 3)``: superposed
    (``motif_rmsd``) and as placed (``motif_rmsd_placed``)."""
    a, b = generated[:, :3].reshape(-1, 3), reference[:, :3].reshape(-1, 3)
    return {"motif_rmsd": kabsch_rmsd(a, b), "motif_rmsd_placed": float(np.sqrt(((a - b) ** 2).sum(axis=1).mean()))}


def backbone_metrics(atoms: np.ndarray, break_before: np.ndarray | None = None) -> dict[str, Any]:
    """Per-structure metrics of one chain's N, CA, C, O ``(L, 4, 3)``: length, CA-CA mean / within 0.1 A, clash rate,
    radius of gyration and its ratio to natural proteins, DSSP string and fractions."""
    ca = atoms[:, 1]
    dssp = dssp_string(atoms)
    d = consecutive_ca_distances(ca, break_before)
    rg = radius_of_gyration(ca)
    return {"length": len(ca), "ca_ca_mean": float(d.mean()) if len(d) else float("nan"),
            "ca_ca_within_0p1": ca_ca_within(ca, break_before=break_before), "clash_rate": clash_rate(ca),
            "rg": rg, "rg_ratio_natural": rg / float(natural_rg(len(ca))), "dssp": dssp,
            **{f"{k}_fraction": v for k, v in ss_fractions(dssp).items()}}


def summarize(rows: Sequence[dict[str, Any]], cas: Sequence[np.ndarray], reference: Sequence[np.ndarray] | None = None,
              by_length: bool = True) -> dict[str, Any]:
    """Means of the per-structure metrics, diversity (within each length when ``by_length``, then averaged, as
    FrameFlow / Genie2 report it) and novelty against ``reference`` traces."""
    keys = ("ca_ca_within_0p1", "ca_ca_mean", "clash_rate", "rg_ratio_natural", "helix_fraction", "strand_fraction",
            "ss_fraction")
    out: dict[str, Any] = {"n": len(rows), **{k: float(np.mean([r[k] for r in rows])) for k in keys}}
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["length"] if by_length else 0, []).append(i)
    per_group = [diversity([cas[i] for i in members]) for members in groups.values() if len(members) > 1]
    if per_group:
        out["mean_pairwise_tm"] = float(np.mean([g["mean_pairwise_tm"] for g in per_group]))
        out["cluster_fraction"] = float(np.mean([g["cluster_fraction"] for g in per_group]))
        out["clusters"] = float(sum(g["clusters"] for g in per_group))
    if reference:
        out["novelty_max_tm"] = float(np.mean(novelty(cas, reference)))
    return out
