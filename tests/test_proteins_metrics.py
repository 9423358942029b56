"""Offline backbone metrics: CA-CA geometry, clashes, radius of gyration, DSSP fractions, TM-score diversity and
novelty, motif RMSD; the natural reference row on shared structures."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sciffusion.domains.proteins.metrics import (
    ca_ca_within,
    clash_rate,
    consecutive_ca_distances,
    diversity,
    kabsch_rmsd,
    motif_rmsd,
    natural_rg,
    radius_of_gyration,
    single_linkage_clusters,
    ss_fractions,
    tm_score,
)


def helix_ca(n: int, shift: float = 0.0) -> np.ndarray:
    """An alpha-helix CA trace: radius 2.3 A, 100 degrees per residue, the rise that makes CA-CA 3.80 A (1.42 A)."""
    k = np.arange(n)
    angle = np.radians(100.0) * k
    rise = math.sqrt(3.8**2 - (2 * 2.3 * math.sin(np.radians(50.0))) ** 2)
    return np.stack([2.3 * np.cos(angle), 2.3 * np.sin(angle), rise * k + shift], axis=1)


def test_ca_ca_and_clashes() -> None:
    ca = helix_ca(20)
    d = consecutive_ca_distances(ca)
    assert np.allclose(d, 3.80, atol=1e-9)
    assert ca_ca_within(ca) == 1.0
    stretched = ca.copy()
    stretched[10:] += [0.0, 0.0, 0.5]  # one step 0.5 A longer
    assert math.isclose(ca_ca_within(stretched), 18 / 19)
    breaks = np.zeros(20, dtype=bool)
    breaks[10] = True
    assert ca_ca_within(stretched, break_before=breaks) == 1.0
    assert clash_rate(ca) == 0.0
    folded = ca.copy()
    folded[15] = folded[5] + [0.0, 0.0, 2.0]  # residues 5 and 15 at 2 A
    assert math.isclose(clash_rate(folded), 2 / 20)


def test_radius_of_gyration_and_natural_fit() -> None:
    pts = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    assert math.isclose(radius_of_gyration(pts), 1.0)
    assert math.isclose(float(natural_rg(100)), 2.2 * 100 ** 0.38)


def test_ss_fractions() -> None:
    f = ss_fractions("HHHHEE----")
    assert math.isclose(f["helix"], 0.4) and math.isclose(f["strand"], 0.2) and math.isclose(f["ss"], 0.6)
    assert math.isclose(f["loop"], 0.4)


def test_tm_score_diversity_and_clusters() -> None:
    pytest.importorskip("tmtools")
    a = helix_ca(40)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert min(tm_score(a, a @ rot.T + 5.0)) > 0.99
    rng = np.random.default_rng(0)
    coil = np.cumsum(rng.normal(size=(40, 3)) * 2.2, axis=0)
    assert max(tm_score(a, coil)) < 0.4
    tm = np.array([[1.0, 0.7, 0.1], [0.7, 1.0, 0.65], [0.1, 0.65, 1.0]])
    assert single_linkage_clusters(tm) == 1  # 0 - 1 - 2 linked in a chain
    tm[1, 2] = tm[2, 1] = 0.5
    assert single_linkage_clusters(tm) == 2
    div = diversity([a, a + 1.0, coil])
    assert div["clusters"] == 2 and 0.3 < div["mean_pairwise_tm"] < 0.6


def test_motif_rmsd() -> None:
    rng = np.random.default_rng(1)
    motif = rng.normal(size=(8, 4, 3)) * 3
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    moved = motif @ q.T + [1.0, 2.0, 3.0]
    got = motif_rmsd(moved, motif)
    assert got["motif_rmsd"] < 1e-9 and got["motif_rmsd_placed"] > 1.0
    assert math.isclose(kabsch_rmsd(motif[:, 1] + [0.1, 0, 0], motif[:, 1]), 0.0, abs_tol=1e-9)


def test_natural_reference_row_on_shared_structures() -> None:
    """Crystal structures pass the geometric bars (the benchmark's reference row)."""
    from conftest import shared_data

    from sciffusion.domains.proteins.io import read_structure
    from sciffusion.domains.proteins.metrics import backbone_metrics, summarize

    folder = shared_data("proteins")
    chains = [read_structure(p).chains[0] for p in sorted(folder.glob("[1-4]*.pdb.gz"))[:8]]
    rows = [backbone_metrics(c.atoms, c.break_before) for c in chains]
    summary = summarize(rows, [c.atoms[:, 1] for c in chains], by_length=False)
    assert summary["ca_ca_within_0p1"] > 0.95 and summary["clash_rate"] < 0.01
    assert summary["ss_fraction"] > 0.4 and 0.8 < summary["rg_ratio_natural"] < 1.3
    assert summary["mean_pairwise_tm"] < 0.5 and summary["clusters"] >= 6


def test_soft_secondary_structure_proxies() -> None:
    """The guidance's differentiable helix / strand indicators: an ideal helix reads as helix, an extended chain
    (CA-CA-CA 120 degrees, 6.6 A for i, i+2) as strand, per chain of a ragged batch."""
    import torch

    from sciffusion.domains.proteins.domain import soft_secondary_structure

    helix = torch.from_numpy(helix_ca(20))
    k = torch.arange(20, dtype=torch.float64)
    strand = torch.stack([3.3 * k, 1.9 * (k % 2), torch.zeros(20, dtype=torch.float64)], dim=1)  # zig-zag, CA-CA 3.8
    ca = torch.cat([helix, strand])
    index = torch.tensor([0] * 20 + [1] * 20)
    h, e, valid = soft_secondary_structure(ca, index)
    assert valid.sum() == 34 and not valid[17:20].any()  # i + 3 must stay in the chain
    assert float(h[:17].min()) > 0.95 and float(e[:17].max()) < 0.01
    assert float(e[20:37].min()) > 0.9 and float(h[20:37].max()) < 0.01
