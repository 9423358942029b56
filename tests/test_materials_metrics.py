"""CDVAE / DiffCSP crystal metrics (``sciffusion.domains.materials.metrics``) on hand-made structures, known
compositions, equivalent cells of one crystal, and Perov-5 test structures (from ``../shared``, skipped without it)."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

pytest.importorskip("pymatgen.core")
pytest.importorskip("smact")
pytest.importorskip("matminer")

from pymatgen.core import Lattice, Structure  # noqa: E402

from sciffusion.domains.materials import metrics as M  # noqa: E402
from conftest import shared_data  # noqa: E402

# ------------------------------------------------------------------------------------------------ structures


def srtio3() -> Structure:
    """Cubic perovskite SrTiO3, a = 3.905 A (Pm-3m)."""
    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def nacl() -> Structure:
    """Rock salt, conventional cell, a = 5.64 A."""
    return Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
                     [[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5],
                      [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])


def cu3au() -> Structure:
    """L1_2 Cu3Au, a = 3.75 A: an all-metal alloy (no charge-neutral oxidation states needed)."""
    return Structure(Lattice.cubic(3.75), ["Au", "Cu", "Cu", "Cu"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def close_pair(distance: float) -> Structure:
    """Na and Cl ``distance`` A apart along x in a 5 A cube."""
    return Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [distance / 5.0, 0, 0]])


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def equivalent_cells(s: Structure) -> dict[str, Structure]:
    """The same crystal written three other ways: sites permuted, origin shifted, Cartesian frame rotated."""
    perm = np.random.default_rng(0).permutation(len(s))
    rot = rotation(np.array([1.0, 2.0, 3.0]), 0.7)
    return {
        "permuted": Structure(s.lattice, [s.species[i] for i in perm], s.frac_coords[perm]),
        "shifted": Structure(s.lattice, s.species, (s.frac_coords + [0.31, 0.17, 0.62]) % 1.0),
        "rotated": Structure(Lattice(s.lattice.matrix @ rot.T), s.species, s.frac_coords),
    }


def distorted(s: Structure) -> Structure:
    """c stretched by 60 % and the first site moved by a third of the cell: not the same crystal."""
    lattice = Lattice(s.lattice.matrix @ np.diag([1.0, 1.0, 1.6]))
    coords = s.frac_coords.copy()
    coords[0] += [0.33, 0.0, 0.0]
    return Structure(lattice, s.species, coords)


# ------------------------------------------------------------------------------------------------ validity


def test_structure_validity_on_hand_made_cells():
    assert not M.structure_validity(close_pair(0.3))
    assert M.structure_validity(close_pair(0.5))  # CDVAE: invalid only below the cutoff
    assert M.structure_validity(close_pair(0.6))
    assert not M.structure_validity(close_pair(0.6), cutoff=0.7)
    assert M.structure_validity(nacl()) and M.structure_validity(srtio3()) and M.structure_validity(cu3au())
    # minimum image: 0.2 A apart across the cell boundary
    assert not M.structure_validity(Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0.01, 0, 0], [0.97, 0, 0]]))
    assert not M.structure_validity(Structure(Lattice.cubic(0.4), ["Na"], [[0, 0, 0]]))  # 0.064 A^3 < 0.1
    assert M.structure_validity(Structure(Lattice.cubic(3.0), ["Na"], [[0, 0, 0]]))  # one site: no pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nan_cell = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [np.nan, 0.5, 0.5]])
    assert not M.structure_validity(nan_cell)


def test_smact_validity_rules():
    assert M.smact_validity(["Na", "Cl"], [1, 1])
    assert M.smact_validity(["Na", "Cl"], [4, 4])  # counts are divided by their gcd
    assert not M.smact_validity(["Na", "Cl"], [1, 2])  # NaCl2: no neutral oxidation states
    assert M.smact_validity(["Sr", "Ti", "O"], [1, 1, 3])
    assert M.smact_validity(["Fe", "O"], [2, 3]) and M.smact_validity(["Fe", "O"], [4, 6])
    assert M.smact_validity(["Cu", "Zn"], [3, 1])  # all-metal rule
    assert not M.smact_validity(["Cu", "Zn"], [3, 1], include_alloys=False)
    assert M.smact_validity(["Si"], [7])  # a single element
    # Na2Cl is neutral only as Na(-1)2 Cl(+2): an anion less electronegative than the cation fails Pauling
    assert M.smact_validity(["Na", "Cl"], [2, 1], use_pauling_test=False)
    assert not M.smact_validity(["Na", "Cl"], [2, 1])
    assert not M.smact_validity(["Xx", "O"], [1, 1])  # an element smact does not know
    with pytest.raises(ValueError, match="one count per symbol"):
        M.smact_validity(["Na", "Cl"], [1])


def test_smact_validity_reproduces_smact_221_as_cdvae_called_it():
    """The cases where smact 4.x's defaults answer differently from the smact 2.2.1 CDVAE used (checked against
    CDVAE's function on the 2.2.1 sources: identical on all 7,572 Perov-5 val + test formulas and 3,000 random
    compositions)."""
    # Pm has no Pauling electronegativity: a cation-anion pair with it raised TypeError in 2.2.1 -> "passes"
    assert M.smact_validity(["Pm", "Cl"], [1, 3])
    # ... but a same-sign pair with it (Ba+2, Pm+3, compared first) failed
    assert not M.smact_validity(["Ba", "Pm", "Cl"], [1, 1, 5])
    # Zr's electronegativity was 0.33 in 2.2.1 (1.33 since 2023): Zr(+) Na(-) H(+) passes with 0.33
    assert M.smact_validity(["Zr", "H", "Na"], [1, 1, 1])
    assert M.SMACT_221_PAULING == {"Zr": 0.33}
    assert M.SMACT_221_OXIDATION_STATES["Ir"][0] == -2
    # Fe's 2.2.1 list (smact14) has negative states; smact 4's default list does not
    assert M._smact_element("Fe")[0] == (-2, -1, 1, 2, 3, 4, 5, 6)


def test_compositional_validity_of_structures():
    assert M.compositional_validity(nacl())
    assert M.compositional_validity(srtio3())
    assert M.compositional_validity(cu3au())
    nacl2 = Structure(Lattice.cubic(5.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    assert not M.compositional_validity(nacl2)
    assert M.validity(nacl2) == (True, False)
    assert M.validity(close_pair(0.3)) == (False, True)
    assert M.validity(None) == (False, False)
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match="partial occupancies"):
        M.compositional_validity(disordered)


# ------------------------------------------------------------------------------------------------ CSP matching


@pytest.mark.parametrize("make", [srtio3, nacl])
def test_equivalent_cells_match_with_zero_rmse(make):
    target = make()
    cells = equivalent_cells(target)
    result = M.csp_match([[c] for c in cells.values()] + [[distorted(target)]], [target] * 4)
    per_target = result["rmse_per_target_1"]
    assert all(r is not None and r < 1e-6 for r in per_target[:3]), per_target
    assert per_target[3] is None
    assert result["match_rate_1"] == pytest.approx(0.75)
    assert result["rmse_1"] < 1e-6


def test_csp_match_one_and_many_samples():
    s, n = srtio3(), nacl()
    moved = srtio3()
    moved.translate_sites([1], [0.03, 0.0, 0.0])  # Ti off centre by 0.12 A: matches with a small RMSE
    predictions = [
        [distorted(s), equivalent_cells(s)["rotated"], None],  # only the second sample matches
        [None, moved],                                         # a failed first sample
        [moved, equivalent_cells(s)["shifted"]],               # both match: k = all takes the smaller RMSE
        [srtio3()],                                            # wrong composition for the target: no match
    ]
    targets = [s, s, s, n]
    result = M.csp_match(predictions, targets)
    rms_moved = result["rmse_per_target_1"][2]
    assert 0.01 < rms_moved < 0.1
    assert result["rmse_per_target_1"] == [None, None, rms_moved, None]
    assert result["match_rate_1"] == pytest.approx(0.25)
    assert result["rmse_1"] == pytest.approx(rms_moved)
    k = result["rmse_per_target_k"]
    assert k[0] < 1e-6 and k[1] == pytest.approx(rms_moved) and k[2] < 1e-6 and k[3] is None
    assert result["match_rate_k"] == pytest.approx(0.75)
    assert result["rmse_k"] == pytest.approx(rms_moved / 3, abs=1e-6)
    assert result["k"] == 3 and result["n_targets"] == 4
    assert result["valid_sample_fraction"] == pytest.approx(6 / 8)  # the None samples


def test_csp_validity_gates():
    """Na-Cl pairs 0.45 A (structurally invalid) and 0.55 A (valid) apart in a 5 A cube match each other. DiffCSP
    gates k = 1 on both structures and k = all on the samples only; "both", "pred" and "none" as named."""
    invalid, valid = close_pair(0.45), close_pair(0.55)
    gates = ("diffcsp", "both", "pred", "none")
    invalid_target = {g: M.csp_match([[valid]], [invalid], gate=g) for g in gates}
    assert [invalid_target[g]["match_rate_1"] for g in gates] == [0.0, 0.0, 1.0, 1.0]
    assert [invalid_target[g]["match_rate_k"] for g in gates] == [1.0, 0.0, 1.0, 1.0]
    assert invalid_target["diffcsp"]["n_valid_targets"] == 0
    invalid_sample = {g: M.csp_match([[invalid]], [valid], gate=g) for g in gates}
    assert [invalid_sample[g]["match_rate_1"] for g in gates] == [0.0, 0.0, 0.0, 1.0]
    assert [invalid_sample[g]["match_rate_k"] for g in gates] == [0.0, 0.0, 0.0, 1.0]
    assert invalid_sample["none"]["rmse_1"] == pytest.approx(invalid_target["none"]["rmse_1"])
    with pytest.raises(ValueError, match="validity gate"):
        M.csp_match([[valid]], [valid], gate="loose")
    with pytest.raises(ValueError, match="one list of samples per target"):
        M.csp_match([[valid]], [valid, valid])


# ------------------------------------------------------------------------------------------------ coverage, EMDs


def test_cdvae_composition_scaler_file():
    data = json.loads(M.SCALER_PATH.read_text())
    assert len(data["means"]) == len(data["stds"]) == len(data["feature_labels"]) == 132
    assert data["means"][0] == pytest.approx(21.194441759304013)  # CDVAE CompScalerMeans[0]
    assert data["stds"][-1] == pytest.approx(85.980205895116)  # CDVAE CompScalerStds[-1]
    assert data["feature_labels"] == M._magpie_featurizer().feature_labels()
    means = np.asarray(data["means"])
    x = means.copy()
    x[5] = np.nan
    x[7] += 2 * data["stds"][7]
    scaled = M.scale_composition_fingerprints(x[None])
    assert scaled.shape == (1, 132)
    expected = np.zeros(132)
    expected[7] = 2.0
    np.testing.assert_allclose(scaled[0], expected, atol=1e-9)


def test_fingerprints_shapes_and_invariance():
    s = srtio3()
    fp = M.structure_fingerprint(s)
    assert fp.shape == (61,)
    comp = M.composition_fingerprint(s)
    assert comp.shape == (132,)
    assert comp[0] == 8.0 and comp[1] == 38.0  # minimum and maximum atomic number: O, Sr
    for cell in equivalent_cells(s).values():
        np.testing.assert_allclose(M.structure_fingerprint(cell), fp, atol=1e-6)
    struct_fps, comp_fps = M.fingerprints([s, None])
    assert struct_fps[1] is None and comp_fps[1] is None
    np.testing.assert_allclose(struct_fps[0], fp)


def test_coverage_counts():
    a, b = np.zeros(61), np.full(61, 0.1)  # 0.78 apart: beyond the 0.2 structural cutoff
    c = M._comp_scaler()[0]  # the scaler's means: scaled to the origin
    far = c + 10 * M._comp_scaler()[1]  # 10 std away in every feature
    result = M.coverage([a, b, None], [c, c, None], [a, a, b], [c, far, c], struc_cutoff=0.2, comp_cutoff=4.0)
    # reference 0 (a, c) and 2 (b, c) are covered; reference 1 has a composition 10 * sqrt(132) away
    assert result["cov_recall"] == pytest.approx(2 / 3)
    # generated a and b each have a reference within both cutoffs; the None sample stays in the denominator
    assert result["cov_precision"] == pytest.approx(2 / 3)
    assert result["amsd_precision"] == pytest.approx(0.0)
    assert result["amcd_recall"] == pytest.approx(10 * math.sqrt(132) / 3)


def test_denovo_metrics_on_a_small_set():
    reference = [srtio3(), nacl()]
    generated = [srtio3(), equivalent_cells(nacl())["rotated"], None, close_pair(0.3)]
    result = M.denovo_metrics(generated, reference, dataset="perov_5")
    assert result["comp_valid"] == pytest.approx(0.75)  # None invalid; the 0.3 A pair is NaCl
    assert result["struct_valid"] == pytest.approx(0.5)
    assert result["valid"] == pytest.approx(0.5)
    assert result["n_valid"] == 2 and result["n_emd_samples_used"] == 2
    assert result["wdist_density"] == pytest.approx(0.0, abs=1e-9)
    assert result["wdist_num_elems"] == pytest.approx(0.0, abs=1e-9)
    assert result["cov_recall"] == pytest.approx(1.0)
    assert result["cov_precision"] == pytest.approx(0.5)  # 2 of 4 generated are near a reference structure
    assert result["n_reference_fingerprint_failures"] == 0
    with pytest.raises(ValueError, match="unknown dataset"):
        M.denovo_metrics(generated, reference, dataset="qm9")


def test_denovo_emd_uses_a_seeded_subset_of_valid_samples():
    reference = [srtio3()]
    scaled = [Structure(Lattice.cubic(3.905 * f), srtio3().species, srtio3().frac_coords) for f in (1.0, 1.1, 1.2)]
    fps = M.fingerprints(reference)
    one = M.denovo_metrics(scaled, reference, n_emd_samples=1, seed=3, reference_fingerprints=fps)
    again = M.denovo_metrics(scaled, reference, n_emd_samples=1, seed=3, reference_fingerprints=fps)
    assert one["n_emd_samples_used"] == 1 and one["wdist_density"] == again["wdist_density"]
    densities = sorted(s.density for s in scaled)
    assert any(one["wdist_density"] == pytest.approx(abs(d - reference[0].density)) for d in densities)
    full = M.denovo_metrics(scaled, reference, reference_fingerprints=fps)
    assert full["n_emd_samples_used"] == 3
    assert full["wdist_density"] == pytest.approx(np.mean([abs(d - reference[0].density) for d in densities]))


# ------------------------------------------------------------------------------------------------ Perov-5


def _perov5_test(n: int) -> list[Structure]:
    import pandas as pd

    frame = pd.read_csv(shared_data("crystals/perov_5/test.csv"), nrows=n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [Structure.from_str(cif, fmt="cif") for cif in frame["cif"]]


def test_perov5_test_structures_validity_and_self_match():
    structures = _perov5_test(300)
    flags = [M.validity(s) for s in structures]
    assert all(st for st, _ in flags)
    comp_invalid = [s.composition.reduced_formula for s, (_, co) in zip(structures, flags) if not co]
    assert comp_invalid == ["CsRbN3", "In2O2F", "Cs2O3"]  # SMACT-invalid Perov-5 test compositions
    shifted = [[equivalent_cells(s)["shifted"]] for s in structures[:100]]
    ungated = M.csp_match(shifted, structures[:100], gate="none")
    assert ungated["match_rate_1"] == 1.0 and ungated["rmse_1"] < 1e-6
    # the shifted copy of a SMACT-invalid target is invalid too: any gate leaves those 2 of 100 unmatched
    n_valid = sum(all(f) for f in flags[:100])
    assert n_valid == 98
    for gate in ("diffcsp", "pred"):
        gated = M.csp_match(shifted, structures[:100], gate=gate)
        assert gated["match_rate_1"] == gated["match_rate_k"] == pytest.approx(n_valid / 100)
    assert gated["valid_sample_fraction"] == pytest.approx(0.98)


@pytest.mark.slow
def test_parallel_matching_equals_serial():
    structures = _perov5_test(40)
    predictions = [[equivalent_cells(s)["rotated"], distorted(s)] for s in structures]
    serial = M.csp_match(predictions, structures, workers=1)
    parallel = M.csp_match(predictions, structures, workers=2)
    assert serial == parallel
