"""EDM's molecule metrics (``sciffusion.domains.molecules.metrics``) on hand-picked distances, hand-made molecules
and real QM9 DFT geometries (from the ``qm9pack`` package's CSV files)."""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sciffusion.domains.molecules import metrics as M

pytest.importorskip("rdkit")
from rdkit import Chem  # noqa: E402

DECODER = M.QM9_DECODER
ENCODER = {e: i for i, e in enumerate(DECODER)}


# ------------------------------------------------------------------------------------------------ QM9 data


def _qm9_csv(part: int) -> Path:
    spec = importlib.util.find_spec("qm9pack")  # not imported: its __init__ needs pkg_resources
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the qm9pack package (QM9 geometries)")
    return Path(spec.submodule_search_locations[0]) / "data" / f"qm9_part{part}.csv"


def _read_qm9(part: int, nrows: int | None = None) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """QM9 molecules ``(positions (n, 3) Angstrom, types (n,) in DECODER)`` and their SMILES, in file order."""
    df = pd.read_csv(_qm9_csv(part), usecols=["Elements", "XYZ_Ang", "SMILES"], nrows=nrows)
    molecules = []
    for elements, xyz in zip(df["Elements"], df["XYZ_Ang"]):
        types = np.array([ENCODER[e.strip(" '\"")] for e in elements.strip("[]").split(",")])
        coordinates = [float(v) for v in xyz.replace("[", "").replace("]", "").split(",")]  # "1." is not JSON
        molecules.append((np.array(coordinates, dtype=np.float64).reshape(-1, 3), types))
    return molecules, list(df["SMILES"])


@lru_cache(maxsize=1)
def qm9_first(n: int = 2000) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    return _read_qm9(1, n)


def named(index: int) -> tuple[np.ndarray, np.ndarray]:
    """QM9 molecule by row: 0 methane, 1 ammonia, 2 water, 3 acetylene, 7 methanol."""
    return qm9_first()[0][index]


def heavy_smiles(smiles: str) -> str:
    """Canonical SMILES without explicit hydrogens and stereochemistry, to compare with QM9's own SMILES."""
    mol = Chem.RemoveHs(Chem.MolFromSmiles(smiles))
    Chem.RemoveStereochemistry(mol)
    return Chem.MolToSmiles(mol)


# --------------------------------------------------------------------------------------- tables, bond order


def test_tables_are_edms() -> None:
    # checksums (sum of entries, number of entries) and a few entries of EDM's tables
    for table, total, count in ((M.BONDS1, 20056, 117), (M.BONDS2, 1952, 14), (M.BONDS3, 688, 6)):
        assert (sum(sum(row.values()) for row in table.values()), sum(len(row) for row in table.values())) == \
            (total, count)
    assert (M.BONDS1["C"]["H"], M.BONDS1["C"]["C"], M.BONDS1["N"]["H"], M.BONDS1["O"]["H"], M.BONDS1["H"]["H"]) == \
        (109, 154, 101, 96, 74)
    assert (M.BONDS2["C"]["C"], M.BONDS2["C"]["O"], M.BONDS3["C"]["C"], M.BONDS3["N"]["N"]) == (134, 120, 120, 110)
    assert (M.MARGIN1, M.MARGIN2, M.MARGIN3) == (10, 5, 3)
    assert [M.ALLOWED_BONDS[e] for e in DECODER] == [1, 4, 3, 2, 1] and M.ALLOWED_BONDS["P"] == [3, 5]
    # symmetric, except EDM's double C-S bond with no S-C entry
    asymmetric = {(a, b) for t in (M.BONDS1, M.BONDS2, M.BONDS3) for a in t for b in t[a]
                  if t.get(b, {}).get(a) != t[a][b]}
    assert asymmetric == {("C", "S")}


@pytest.mark.parametrize(("a", "b", "angstrom", "order"), [
    ("C", "C", 1.53, 1), ("C", "C", 1.34, 2), ("C", "C", 1.20, 3), ("C", "C", 1.70, 0),
    ("C", "C", 1.6399, 1), ("C", "C", 1.6401, 0),   # single below 154 + 10 pm
    ("C", "C", 1.3899, 2), ("C", "C", 1.3901, 1),   # double below 134 + 5 pm
    ("C", "C", 1.2299, 3), ("C", "C", 1.2301, 2),   # triple below 120 + 3 pm
    ("C", "H", 1.09, 1), ("H", "C", 1.185, 1), ("C", "H", 1.195, 0), ("C", "H", 0.5, 1),  # no double C-H
    ("C", "O", 1.43, 1), ("C", "O", 1.22, 2), ("O", "C", 1.15, 3),
    ("C", "N", 1.16, 3), ("N", "N", 1.12, 3), ("N", "N", 1.25, 2), ("O", "O", 1.25, 2),
    ("C", "F", 1.44, 1), ("C", "F", 1.46, 0), ("H", "H", 0.74, 1), ("H", "H", 0.85, 0),
    ("N", "H", 1.10, 1), ("N", "H", 1.12, 0), ("O", "H", 0.97, 1), ("O", "H", 1.07, 0),
    ("C", "S", 1.62, 2), ("S", "C", 1.62, 1),       # EDM's asymmetric table: the argument order matters
])
def test_get_bond_order_around_thresholds(a: str, b: str, angstrom: float, order: int) -> None:
    assert M.get_bond_order(a, b, angstrom) == order
    assert M.get_bond_order(a, b, torch.tensor(angstrom, dtype=torch.float64)) == order


def test_missing_pair_raises_unless_check_exists() -> None:
    for a, b in (("B", "C"), ("Hg", "H"), ("C", "As")):
        with pytest.raises(KeyError):
            M.get_bond_order(a, b, 1.0)
        assert M.get_bond_order(a, b, 1.0, check_exists=True) == 0
    decoder = ("H", "B", "C")
    pos, types = np.array([[0.0, 0, 0], [1.5, 0, 0]]), np.array([1, 2])
    with pytest.raises(KeyError, match="B-C"):
        M.check_stability(pos, types, decoder)
    assert M.bond_order_matrix(pos, types, decoder, check_exists=True).sum() == 0
    # a pair that is absent from the molecule does not raise
    assert M.check_stability(np.array([[0.0, 0, 0], [0.74, 0, 0]]), np.array([0, 0]), decoder) == (True, 2, 2)


def test_pair_order_of_stability_and_rdkit_bonds_is_edms() -> None:
    decoder = ("H", "C", "S")
    pos = np.array([[0.0, 0, 0], [1.62, 0, 0]])
    cs, sc = np.array([1, 2]), np.array([2, 1])
    assert M.bond_order_matrix(pos, cs, decoder)[0, 1] == 2  # check_stability asks (atom 0, atom 1)
    assert M.bond_order_matrix(pos, sc, decoder)[0, 1] == 1
    for types in (cs, sc):  # build_molecule asks the pair sorted by type index: (C, S)
        bond = M.build_molecule(pos, types, decoder).GetBondBetweenAtoms(0, 1)
        assert bond.GetBondType() == Chem.BondType.DOUBLE


def _edm_loop_orders(pos: np.ndarray, types: np.ndarray, sort_pair: bool) -> np.ndarray:
    """EDM's per-pair loop with :func:`get_bond_order`."""
    n = len(types)
    out = np.zeros((n, n), dtype=int)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = (min(types[i], types[j]), max(types[i], types[j])) if sort_pair else (types[i], types[j])
            dist = np.sqrt(np.sum((pos[i] - pos[j]) ** 2))
            out[i, j] = out[j, i] = M.get_bond_order(DECODER[a], DECODER[b], dist)
    return out


def test_vectorised_bond_orders_equal_edms_loop() -> None:
    molecules = qm9_first()[0][:150]
    rng = np.random.default_rng(0)
    noisy = [(p + rng.normal(0.0, 0.1, p.shape), t) for p, t in molecules]  # orders of every kind, near thresholds
    orders_seen = set()
    for pos, types in molecules + noisy:
        for sort_pair in (False, True):
            got = M.bond_order_matrix(pos, types, DECODER, sort_pair_by_type=sort_pair)
            np.testing.assert_array_equal(got, _edm_loop_orders(pos, types, sort_pair))
            orders_seen |= set(np.unique(got).tolist())
    assert orders_seen == {0, 1, 2, 3}


# ---------------------------------------------------------------------------------- stability, validity


@pytest.mark.parametrize(("index", "smiles"), [
    (0, "[H]C([H])([H])[H]"), (1, "[H]N([H])[H]"), (2, "[H]O[H]"), (3, "[H]C#C[H]"), (7, "[H]OC([H])([H])[H]"),
])
def test_small_molecules_are_stable_and_valid(index: int, smiles: str) -> None:
    pos, types = named(index)
    assert M.check_stability(pos, types) == (True, len(types), len(types))
    assert M.molecule_smiles(pos, types) == (smiles, 1)
    mol = M.build_molecule(pos, types)
    assert mol.GetNumAtoms() == len(types) and mol.GetNumBonds() == len(types) - 1  # trees
    assert M.mol2smiles(mol) == smiles


def test_qm9_first_2000_stability_validity() -> None:
    molecules, qm9_smiles = qm9_first()
    r = M.evaluate(molecules)
    print(f"QM9 first 2000: atoms stable {r['n_stable_atoms']}/{r['n_atoms']} = {r['atom_stability']:.4f}, "
          f"molecules stable {r['n_stable_molecules']}/2000 = {r['molecule_stability']:.4f}, "
          f"valid {r['validity']:.4f}, unique {r['uniqueness']:.4f}, connected {r['connected']:.4f}")
    # measured: 27592 / 27804 atoms, 1924 / 2000 molecules, 1940 valid and unique, 1999 one-fragment graphs
    assert r["n"] == 2000 and r["n_atoms"] == 27804
    assert r["atom_stability"] == pytest.approx(27592 / 27804, abs=4e-4)
    assert r["molecule_stability"] == pytest.approx(1924 / 2000, abs=1.5e-3)
    assert r["validity"] == pytest.approx(1940 / 2000, abs=1.5e-3)
    assert r["uniqueness"] == 1.0 and r["valid_and_unique"] == r["validity"]
    assert r["connected"] == pytest.approx(1999 / 2000) and r["connected_validity"] == r["validity"]
    assert r["novelty"] is None and r["n_novel"] is None
    # every stable molecule's graph is QM9's own molecule
    stable = [M.check_stability(p, t)[0] for p, t in molecules]
    matches = [s is not None and heavy_smiles(s) == heavy_smiles(q) for s, q in zip(r["smiles"], qm9_smiles)]
    assert all(m for m, st in zip(matches, stable) if st)
    assert sum(matches) == pytest.approx(1924, abs=3)


def test_novelty_against_edm_training_smiles() -> None:
    molecules = qm9_first()[0]
    train = M.dataset_smiles(molecules[:1000])
    r = M.evaluate(molecules[900:1100], train_smiles=train)
    # the SMILES of molecules 900..999 are in the training set, those of 1000..1099 are not (QM9 has no duplicates)
    assert r["n_novel"] == sum(s is not None for s in r["smiles"][100:])
    assert r["novelty"] == pytest.approx(r["n_novel"] / r["n_unique"])
    assert 0.4 < r["novelty"] < 0.6


def test_broken_geometry() -> None:
    pos, types = named(0)  # methane, carbon first
    one_h_away = pos.copy()
    one_h_away[4] += 5.0
    assert M.check_stability(one_h_away, types) == (False, 3, 5)  # the carbon and the lone H
    assert M.molecule_smiles(one_h_away, types) == ("[H]C([H])[H]", 2)  # CH3 (implicit H), not "[H]C([H])([H])[H]"
    exploded = pos * 1.5  # no bonds at all: RDKit still sanitizes it (implicit Hs), EDM calls it valid
    assert M.check_stability(exploded, types) == (False, 0, 5)
    assert M.molecule_smiles(exploded, types) == ("C", 5)
    assert M.dataset_smiles([(exploded, types)]) == {"C.[HH].[HH].[HH].[HH]"}  # whole molecule for novelty
    r = M.evaluate([(pos, types), (one_h_away, types), (exploded, types)])
    assert (r["n_stable_molecules"], r["n_stable_atoms"], r["n_atoms"]) == (1, 8, 15)
    assert r["validity"] == 1.0 and r["uniqueness"] == 1.0
    assert r["connected"] == r["connected_validity"] == pytest.approx(1 / 3)
    assert (r["mean_fragments"], r["max_fragments"]) == (pytest.approx(8 / 3), 5)


def _pentavalent_carbon() -> tuple[np.ndarray, np.ndarray]:
    """CH5 as a trigonal bipyramid with 1.09 Angstrom C-H: five single bonds on C, which RDKit rejects."""
    directions = np.array([[1, 0, 0], [-0.5, 0.866, 0], [-0.5, -0.866, 0], [0, 0, 1], [0, 0, -1]])
    directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    return np.vstack([np.zeros(3), 1.09 * directions]), np.array([1, 0, 0, 0, 0, 0])


def test_invalid_uniqueness_novelty_on_molecules() -> None:
    methane, water, ammonia = named(0), named(2), named(1)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0),
                                             dtype=torch.float64))[0]
    moved = (torch.as_tensor(methane[0]) @ rotation.T + 3.0, torch.as_tensor(methane[1]))  # torch inputs
    ch5 = _pentavalent_carbon()
    assert M.check_stability(*ch5) == (False, 5, 6) and M.molecule_smiles(*ch5) == (None, 1)
    molecules = [methane, moved, water, ammonia, ch5]
    r = M.evaluate(molecules, train_smiles={"[H]O[H]", "CC"})
    assert r["smiles"] == ["[H]C([H])([H])[H]", "[H]C([H])([H])[H]", "[H]O[H]", "[H]N([H])[H]", None]
    assert (r["n"], r["n_valid"], r["n_unique"], r["n_novel"]) == (5, 4, 3, 2)
    assert r["validity"] == 0.8 and r["uniqueness"] == 0.75 and r["valid_and_unique"] == pytest.approx(0.6)
    assert r["novelty"] == pytest.approx(2 / 3)
    assert r["atom_stability"] == pytest.approx(22 / 23) and r["molecule_stability"] == pytest.approx(0.8)
    assert r["connected"] == 1.0 and r["connected_validity"] == pytest.approx(0.8)
    assert M.evaluate(molecules)["novelty"] is None


def test_smiles_metrics_on_handmade_lists() -> None:
    r = M.smiles_metrics(["CCO", "CCO", "C", None, "N", None, "CCO", "O"], train_smiles={"C", "O", "CC"})
    assert (r["n"], r["n_valid"], r["n_unique"], r["n_novel"]) == (8, 6, 4, 2)
    assert r["validity"] == 0.75 and r["uniqueness"] == pytest.approx(4 / 6)
    assert r["valid_and_unique"] == pytest.approx(r["validity"] * r["uniqueness"]) == pytest.approx(0.5)
    assert r["novelty"] == 0.5 and r["unique_smiles"] == ["C", "CCO", "N", "O"]
    assert M.smiles_metrics(["C", "C"])["novelty"] is None
    nothing = M.smiles_metrics([None, None], train_smiles=set())
    assert (nothing["validity"], nothing["uniqueness"], nothing["valid_and_unique"], nothing["novelty"]) == (0, 0, 0, 0)
    with pytest.raises(ValueError):
        M.smiles_metrics([])


def test_numpy_and_torch_inputs_agree_and_shapes_are_checked() -> None:
    pos, types = named(7)
    as_torch = (torch.tensor(pos, dtype=torch.float32), torch.tensor(types))
    assert M.check_stability(*as_torch) == M.check_stability(pos, types) == (True, 6, 6)
    assert M.molecule_smiles(*as_torch) == M.molecule_smiles(pos.tolist(), types.tolist())
    with pytest.raises(ValueError):
        M.check_stability(pos[:, :2], types)
    with pytest.raises(ValueError):
        M.check_stability(pos, types[:-1])


# ------------------------------------------------------------------------------------ distribution distances


def test_distribution_distances_identical_sets_are_zero() -> None:
    molecules = qm9_first()[0][:300]
    d = M.distribution_distances(molecules, molecules)
    assert d["atom_type_tv"] == 0.0 and d["bond_length_w1_mean"] == 0.0 and d["bond_angle_w1_mean"] == 0.0
    assert set(d["bond_length_w1"]) >= {"C-C", "C-H", "C-N", "C-O", "H-N", "H-O"}
    assert set(d["bond_angle_w1"]) == {"C", "N", "O"}  # H and F have one neighbour
    assert all(v == 0.0 for v in list(d["bond_length_w1"].values()) + list(d["bond_angle_w1"].values()))


def test_scaled_positions_shift_bond_lengths_and_keep_angles() -> None:
    def graph(p: np.ndarray, t: np.ndarray) -> np.ndarray:
        return M.bond_order_matrix(p, t, sort_pair_by_type=True) > 0

    # the molecules none of whose bonds breaks at +1 %
    molecules = [(p, t) for p, t in qm9_first()[0][:300] if (graph(p, t) == graph(p * 1.01, t)).all()]
    assert len(molecules) == 299
    scaled = [(p * 1.01, t) for p, t in molecules]
    d = M.distribution_distances(scaled, molecules)
    assert all(g == r for g, r in d["bond_counts"].values())
    _, lengths, _ = M.bond_lengths_and_angles(molecules)
    for key, values in lengths.items():  # every length grows by 1 %: W1 is the mean shift
        assert d["bond_length_w1"][key] == pytest.approx(0.01 * values.mean(), abs=1e-9)
    assert d["bond_length_w1"]["C-H"] == pytest.approx(0.01093, abs=2e-5)
    weights = {k: r for k, (_, r) in d["bond_counts"].items()}
    expected = sum(0.01 * lengths[k].mean() * w for k, w in weights.items()) / sum(weights.values())
    assert d["bond_length_w1_mean"] == pytest.approx(expected, abs=1e-9)
    assert d["bond_angle_w1_mean"] == pytest.approx(0.0, abs=1e-6) and d["atom_type_tv"] == 0.0


def test_distribution_distances_on_small_molecules() -> None:
    methane, water = named(0), named(2)
    _, lengths, angles = M.bond_lengths_and_angles([methane, water])
    assert sorted(lengths) == ["C-H", "H-O"] and (len(lengths["C-H"]), len(lengths["H-O"])) == (4, 2)
    assert (len(angles["C"]), len(angles["O"])) == (6, 1)
    np.testing.assert_allclose(angles["C"], 109.4712, atol=0.01)  # tetrahedral methane
    o, h1, h2 = water[0]
    u, v = h1 - o, h2 - o
    assert angles["O"][0] == pytest.approx(np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))))
    assert angles["O"][0] == pytest.approx(103.72, abs=0.01)  # QM9's B3LYP water
    d = M.distribution_distances([methane], [water])
    # atom types (H, C, N, O, F): (4/5, 1/5, 0, 0, 0) against (2/3, 0, 0, 1/3, 0)
    assert d["atom_type_tv"] == pytest.approx(1 / 3)
    assert np.isnan(d["bond_length_w1"]["C-H"]) and np.isnan(d["bond_length_w1_mean"])
    assert d["bond_counts"] == {"C-H": (4, 0), "H-O": (0, 2)}


# ------------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_qm9_all_three_parts_stability_validity() -> None:
    """All 130,831 QM9 molecules that EDM uses (EDM's paper: 99.0 % atoms, 95.2 % molecules stable,
    97.7 % valid)."""
    results = {}
    molecules = []
    for part in (1, 2, 3):
        part_molecules, _ = _read_qm9(part)
        molecules += part_molecules
        if part == 1:
            results["part1"] = M.evaluate(part_molecules)
    results["all"] = M.evaluate(molecules)
    for name, r in results.items():
        print(f"QM9 {name} ({r['n']} molecules): atoms stable {r['n_stable_atoms']}/{r['n_atoms']} = "
              f"{r['atom_stability']:.4f}, molecules stable {r['n_stable_molecules']} = "
              f"{r['molecule_stability']:.4f}, valid {r['validity']:.4f}, V x U {r['valid_and_unique']:.4f}, "
              f"connected {r['connected']:.4f}")
    part1, everything = results["part1"], results["all"]
    assert part1["n"] == 43610 and everything["n"] == 130831
    # measured: part 1: 715957 / 723084 atoms, 40879 molecules, 42134 valid, 42108 unique
    assert part1["atom_stability"] == pytest.approx(0.99014, abs=1e-4)
    assert part1["molecule_stability"] == pytest.approx(0.93738, abs=3e-4)
    assert part1["validity"] == pytest.approx(0.96615, abs=3e-4)
    # measured: all: 2344065 / 2359210 atoms, 124650 molecules, 127792 valid, 127722 unique
    assert everything["atom_stability"] == pytest.approx(0.99358, abs=1e-4)
    assert everything["molecule_stability"] == pytest.approx(0.95276, abs=3e-4)
    assert everything["validity"] == pytest.approx(0.97677, abs=3e-4)
    assert everything["valid_and_unique"] == pytest.approx(0.97624, abs=3e-4)
