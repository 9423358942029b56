"""GFN2-xTB (tblite) and RDKit oracles: reference numbers from fixed geometries, failures as results, targets."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("tblite.interface")
pytest.importorskip("rdkit")

from rdkit import Chem  # noqa: E402
from rdkit.Chem import QED, Crippen, Descriptors, rdMolDescriptors  # noqa: E402

from sciffusion.domains.molecules import oracle  # noqa: E402
from sciffusion.domains.molecules.oracle import (  # noqa: E402
    BOHR_IN_ANGSTROM, E_BOHR_TO_DEBYE, HARTREE_TO_EV, ORACLES, QM9_DECODER, XtbResult, atomic_numbers, check_target,
    largest_fragment_geometry, rdkit_descriptors, xtb_batch, xtb_properties)

H, C, N, O, F = range(5)  # QM9_DECODER indices


def water() -> tuple[np.ndarray, np.ndarray]:
    """Experimental gas-phase geometry: O-H 0.9572 A, H-O-H 104.52 degrees."""
    half, r = np.deg2rad(104.52) / 2, 0.9572
    pos = np.array([[0, 0, 0], [r * np.sin(half), 0, r * np.cos(half)], [-r * np.sin(half), 0, r * np.cos(half)]])
    return pos, np.array([O, H, H])


def methane() -> tuple[np.ndarray, np.ndarray]:
    """Ideal tetrahedron, C-H 1.087 A."""
    d = 1.087 / np.sqrt(3)
    pos = np.array([[0, 0, 0], [d, d, d], [d, -d, -d], [-d, d, -d], [-d, -d, d]])
    return pos, np.array([C, H, H, H, H])


def benzene() -> tuple[np.ndarray, np.ndarray]:
    """D6h in the xy plane: C-C 1.397 A, C-H 1.084 A."""
    ang = np.arange(6) * np.pi / 3
    ring = np.stack([np.cos(ang), np.sin(ang), np.zeros(6)], axis=1)
    return np.concatenate([1.397 * ring, 2.481 * ring]), np.array([C] * 6 + [H] * 6)


# GFN2-xTB (tblite 0.8.0, accuracy 1, default electronic temperature) on the geometries above, computed once.
REFERENCE = {  # name: (gap eV, dipole D, energy Hartree)
    "water": (14.653450027, 2.269981563, -5.070369444),
    "methane": (17.108943070, 0.0, -4.175158342),
    "benzene": (4.802957089, 0.0, -15.878663604),
}
GEOMETRY = {"water": water, "methane": methane, "benzene": benzene}


def test_unit_constants() -> None:
    assert HARTREE_TO_EV == pytest.approx(27.211386, abs=1e-6)
    assert E_BOHR_TO_DEBYE == pytest.approx(2.541746, abs=1e-6)
    assert BOHR_IN_ANGSTROM == pytest.approx(0.529177, abs=1e-6)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_xtb_reference_values(name: str) -> None:
    pos, types = GEOMETRY[name]()
    res = xtb_properties(pos, types)
    gap, dipole, energy = REFERENCE[name]
    assert res.ok, res.reason
    assert res.gap == pytest.approx(gap, abs=1e-4)
    assert res.dipole == pytest.approx(dipole, abs=1e-4)
    assert res.energy == pytest.approx(energy, abs=1e-6)
    assert res.gap == pytest.approx(res.lumo - res.homo)
    assert res.homo < res.lumo
    assert (res.charge, res.uhf, res.n_atoms) == (0, 0, len(types))
    assert res.n_electrons == int(atomic_numbers(types).sum())
    assert np.linalg.norm(res.dipole_vector) == pytest.approx(res.dipole)


def test_water_dipole_is_physical_and_along_the_symmetry_axis() -> None:
    res = xtb_properties(*water())
    assert 2.0 < res.dipole < 2.5
    vx, vy, vz = res.dipole_vector
    assert abs(vx) < 1e-6 and abs(vy) < 1e-6 and abs(vz) == pytest.approx(res.dipole)


def test_element_symbols_and_atomic_numbers_give_the_same_result() -> None:
    pos, types = water()
    by_index = xtb_properties(pos, types)
    by_symbol = xtb_properties(pos, ["O", "H", "H"])
    by_number = xtb_properties(pos, [8, 1, 1], decoder=None)
    assert by_index.gap == pytest.approx(by_symbol.gap, abs=1e-9) == pytest.approx(by_number.gap, abs=1e-9)


def test_translation_and_rotation_invariance() -> None:
    pos, types = benzene()
    theta = 0.7
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    moved = xtb_properties(pos @ rot.T + np.array([3.0, -2.0, 5.0]), types)
    assert moved.gap == pytest.approx(REFERENCE["benzene"][0], abs=1e-4)
    assert moved.dipole == pytest.approx(0.0, abs=1e-4)


def test_bohr_angstrom_mixup_fails_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the positions handed to tblite in Angstrom (no conversion), the reference test would fail."""
    pos, types = water()
    monkeypatch.setattr(oracle, "BOHR_IN_ANGSTROM", 1.0)
    wrong = xtb_properties(pos, types)
    gap, dipole, _ = REFERENCE["water"]
    assert wrong.ok
    assert abs(wrong.gap - gap) > 1.0 and abs(wrong.dipole - dipole) > 0.1
    # and the other way round: Angstrom coordinates multiplied by the conversion twice
    monkeypatch.setattr(oracle, "BOHR_IN_ANGSTROM", BOHR_IN_ANGSTROM ** 2)
    wrong = xtb_properties(pos, types)
    assert not wrong.ok or abs(wrong.gap - gap) > 1.0


def test_open_shell_and_charged_molecules() -> None:
    # methyl radical: 9 electrons -> one unpaired electron
    radical = np.array([[0, 0, 0], [1.08, 0, 0], [-0.54, 0.9353, 0], [-0.54, -0.9353, 0]])
    res = xtb_properties(radical, [C, H, H, H])
    assert res.ok and res.uhf == 1 and res.n_electrons == 9 and res.gap > 0
    # ammonium: formal charge +1 on N -> total charge +1, 10 electrons, closed shell
    d = 1.03 / np.sqrt(3)
    nh4 = np.array([[0, 0, 0], [d, d, d], [d, -d, -d], [-d, d, -d], [-d, -d, d]])
    res = xtb_properties(nh4, [N, H, H, H, H], charges=[1, 0, 0, 0, 0])
    assert res.ok and (res.charge, res.uhf, res.n_electrons) == (1, 0, 10)
    assert res.dipole == pytest.approx(0.0, abs=1e-3)  # centroid as origin: symmetric cation has no dipole


@pytest.mark.parametrize("case", ["all_zero", "two_atoms_same_place", "nan", "bad_type", "bad_shape",
                                  "not_converged", "no_atoms", "unknown_symbol"])
def test_failures_are_results_not_exceptions(case: str) -> None:
    pos, types = water()
    args = {
        "all_zero": (np.zeros((3, 3)), types),
        "two_atoms_same_place": (np.array([pos[0], pos[1], pos[1]]), types),
        "nan": (np.where(np.arange(9).reshape(3, 3) == 4, np.nan, pos), types),
        "bad_type": (pos, np.array([O, H, 7])),
        "bad_shape": (pos[:2], types),
        "not_converged": (pos, types),
        "no_atoms": (np.zeros((0, 3)), np.zeros(0, dtype=int)),
        "unknown_symbol": (pos, ["O", "H", "Xx"]),
    }[case]
    kwargs = {"max_iter": 1} if case == "not_converged" else {}
    res = xtb_properties(*args, **kwargs)
    assert isinstance(res, XtbResult) and not res.ok and res.reason
    assert math.isnan(res.gap) and math.isnan(res.dipole)
    if case == "not_converged":
        assert "SCF" in res.reason


def test_close_contacts() -> None:
    pos, types = water()
    squeezed = pos * 0.3  # O-H 0.29 A: below the default min_distance (0.5 A)
    res = xtb_properties(squeezed, types)
    assert not res.ok and "min_distance" in res.reason
    # with our check off, tblite refuses coincident atoms itself, and the refusal is a result too
    res = xtb_properties(np.zeros((3, 3)), types, min_distance=0.0)
    assert not res.ok and res.reason.startswith("tblite:")
    # a real short bond passes: H2 at 0.74 A
    h2 = xtb_properties(np.array([[0, 0, 0], [0.74, 0, 0]]), [H, H])
    assert h2.ok and h2.dipole == pytest.approx(0.0, abs=1e-6)


def test_batch_keeps_order_and_isolates_failures() -> None:
    w, m = water(), methane()
    molecules = [w, (np.zeros((3, 3)), w[1]), {"positions": m[0], "types": m[1]}, "not a molecule"]
    results = xtb_batch(molecules)
    assert [r.ok for r in results] == [True, False, True, False]
    assert results[0].gap == pytest.approx(REFERENCE["water"][0], abs=1e-4)
    assert results[2].gap == pytest.approx(REFERENCE["methane"][0], abs=1e-4)


def test_batch_with_worker_processes() -> None:
    results = xtb_batch([water(), methane(), (np.zeros((3, 3)), water()[1])], workers=2)
    assert [r.ok for r in results] == [True, True, False]
    assert results[0].dipole == pytest.approx(REFERENCE["water"][1], abs=1e-4)
    assert results[1].gap == pytest.approx(REFERENCE["methane"][0], abs=1e-4)


ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def test_descriptors_of_aspirin_equal_rdkit() -> None:
    mol = Chem.MolFromSmiles(ASPIRIN)
    d = rdkit_descriptors(mol)
    assert d["qed"] == QED.qed(mol)
    assert d["logp"] == Crippen.MolLogP(mol)
    assert d["tpsa"] == rdMolDescriptors.CalcTPSA(mol)
    assert d["mol_weight"] == Descriptors.MolWt(mol)
    # and the known numbers for aspirin (C9H8O4)
    assert d["mol_weight"] == pytest.approx(180.159, abs=1e-3)
    assert d["tpsa"] == pytest.approx(63.6, abs=1e-6)
    assert d["logp"] == pytest.approx(1.3101, abs=1e-3)
    assert 0.5 < d["qed"] < 0.6
    # explicit hydrogens change neither
    assert rdkit_descriptors(Chem.AddHs(mol))["mol_weight"] == pytest.approx(d["mol_weight"])
    with pytest.raises(ValueError):
        rdkit_descriptors(None)


def test_registry_units_ranges_and_functions() -> None:
    assert ORACLES["xtb_gap"].unit == "eV" and ORACLES["xtb_gap"].range == (0.0, 30.0)
    assert ORACLES["xtb_dipole"].unit == "Debye" and ORACLES["xtb_dipole"].range == (0.0, 30.0)
    assert ORACLES["qed"].range == (0.0, 1.0)
    assert ORACLES["logp"].range == (-20.0, 20.0)
    assert ORACLES["tpsa"].range == (0.0, 500.0)
    res = xtb_properties(*water())
    assert ORACLES["xtb_gap"](res) == res.gap and ORACLES["xtb_dipole"](res) == res.dipole
    assert math.isnan(ORACLES["xtb_gap"](xtb_properties(np.zeros((3, 3)), water()[1])))
    mol = Chem.MolFromSmiles(ASPIRIN)
    assert ORACLES["qed"](mol) == QED.qed(mol)
    for prop in ORACLES.values():
        assert prop.low < prop.high and prop.source in ("xtb", "rdkit")


def test_check_target() -> None:
    assert check_target("xtb_gap", 5) == 5.0
    assert check_target("qed", 0.9) == 0.9
    assert check_target("logp", -3) == -3.0
    with pytest.raises(ValueError, match="unknown oracle property 'gap'") as err:
        check_target("gap", 5.0)
    message = str(err.value)
    assert "\n" not in message and all(name in message for name in ("xtb_gap", "xtb_dipole", "qed", "logp", "tpsa"))
    for name, value in [("xtb_gap", 31.0), ("xtb_gap", -1.0), ("xtb_dipole", 40.0), ("qed", 1.5), ("logp", 25),
                        ("tpsa", -5), ("qed", float("nan"))]:
        with pytest.raises(ValueError, match="outside its sensible range") as err:
            check_target(name, value)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="must be a number"):
        check_target("qed", "high")


def test_qm9_decoder() -> None:
    assert QM9_DECODER == ("H", "C", "N", "O", "F")
    assert atomic_numbers([0, 1, 2, 3, 4]).tolist() == [1, 6, 7, 8, 9]


def test_cached_xtb_labels_compute_once_and_mark_failures(tmp_path, monkeypatch) -> None:
    """Labels equal the oracle's values on each geometry, a failing geometry is NaN, and a second call (with one
    new id) computes only the new molecule."""
    from sciffusion.domains.molecules.oracle import cached_xtb_labels

    w, m = water(), methane()
    broken = (np.zeros((2, 3)), np.array([0, 0]))  # two H atoms on top of each other
    path = tmp_path / "labels.npz"
    labels = cached_xtb_labels(np.array([5, 7, 9]), [w, broken, m], path)
    direct = xtb_properties(*w)
    assert labels["xtb_gap"][0] == pytest.approx(direct.gap, abs=1e-9)
    assert labels["xtb_dipole"][0] == pytest.approx(direct.dipole, abs=1e-9)
    assert math.isnan(labels["xtb_gap"][1]) and math.isfinite(labels["xtb_gap"][2])
    calls = []
    real = oracle.xtb_batch
    monkeypatch.setattr(oracle, "xtb_batch", lambda mols, *a, **k: calls.append(len(mols)) or real(mols, *a, **k))
    again = cached_xtb_labels(np.array([9, 5, 11]), [m, w, w], path)
    assert calls == [1]  # only id 11 was new
    np.testing.assert_allclose(again["xtb_gap"], [labels["xtb_gap"][2], labels["xtb_gap"][0], labels["xtb_gap"][0]])


def test_oracle_geometry_is_the_largest_fragment_with_its_hydrogens() -> None:
    pos, types = methane()
    whole = largest_fragment_geometry(pos, types)
    assert whole is not None and whole[2] == 0
    np.testing.assert_allclose(whole[0], pos)
    assert whole[1].tolist() == [6, 1, 1, 1, 1]
    # a stray hydrogen 10 A away and a water molecule 8 A away are left out: methane (5 atoms) is the largest
    far = np.concatenate([pos, [[10.0, 10.0, 10.0]], water()[0] + np.array([8.0, 0.0, 0.0])])
    only = largest_fragment_geometry(far, np.concatenate([types, [H], water()[1]]))
    np.testing.assert_allclose(only[0], pos)
    assert only[1].tolist() == [6, 1, 1, 1, 1]
    # a bare carbon gets the four hydrogens its SMILES (C, methane) implies, at bonding distances
    bare = largest_fragment_geometry(pos[:1], types[:1])
    assert bare[2] == 4 and bare[1].tolist() == [6, 1, 1, 1, 1]
    bond = np.linalg.norm(bare[0][1:] - bare[0][0], axis=1)
    assert np.all((bond > 0.95) & (bond < 1.2))
    assert xtb_properties(bare[0], bare[1], decoder=None).ok
    # a fluorine bonded to two carbons does not sanitise: not valid, no geometry
    assert largest_fragment_geometry(np.array([[-1.35, 0, 0], [0.0, 0, 0], [1.35, 0, 0]]), np.array([C, F, C])) is None
