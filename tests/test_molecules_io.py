"""RDKit I/O: SMILES/SDF -> 3-D conformers (skips counted), the .npz cache, SDF and PNG writers."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rdkit")

from rdkit import Chem  # noqa: E402
from rdkit.Chem import AllChem, rdDetermineBonds  # noqa: E402

from sciffusion.domains.molecules import io as mio  # noqa: E402
from sciffusion.domains.molecules.io import (  # noqa: E402
    Conformer, cached_conformers, conformers_from_smiles, load_conformers_npz, mol_from_arrays, read_sdf,
    read_smiles_file, write_3d_png, write_grid_png, write_sdf)
from sciffusion.domains.molecules.oracle import QM9_DECODER  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KNOWN = ["CCO", "c1ccccc1", "CC(=O)O", "[NH3+]CC(=O)[O-]", "C[C@@H](C(=O)O)N"]


def canonical(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


@pytest.fixture(scope="module")
def known() -> list[Conformer]:
    conformers, skipped = conformers_from_smiles(KNOWN, seed=7, allowed_elements=QM9_DECODER)
    assert skipped == {} and len(conformers) == len(KNOWN)
    return conformers


def test_conformers_carry_positions_symbols_charges_and_canonical_smiles(known: list[Conformer]) -> None:
    for smiles, conf in zip(KNOWN, known):
        assert conf.smiles == canonical(smiles)
        n = Chem.AddHs(Chem.MolFromSmiles(smiles)).GetNumAtoms()
        assert conf.positions.shape == (n, 3) and conf.positions.dtype == np.float64
        assert len(conf.symbols) == n and conf.charges.shape == (n,)
        assert conf.force_field == "MMFF" and conf.source_index == KNOWN.index(smiles)
        assert np.any(conf.positions[:, 2] != 0)  # really 3-D
        types = conf.types(QM9_DECODER)
        assert [QM9_DECODER[t] for t in types] == list(conf.symbols)
    zwitterion = known[3]
    charged = {s: int(q) for s, q in zip(zwitterion.symbols, zwitterion.charges) if q}
    assert charged == {"N": 1, "O": -1} and zwitterion.charges.sum() == 0
    # MMFF geometry is sane: every C-H bond of ethanol near 1.09 A
    ethanol = known[0].to_mol()
    pos = known[0].positions
    ch = [np.linalg.norm(pos[b.GetBeginAtomIdx()] - pos[b.GetEndAtomIdx()]) for b in ethanol.GetBonds()
          if {b.GetBeginAtom().GetSymbol(), b.GetEndAtom().GetSymbol()} == {"C", "H"}]
    assert len(ch) == 5 and all(1.07 < d < 1.11 for d in ch)


@pytest.mark.parametrize("k", range(len(KNOWN)))
def test_round_trip_through_determine_bonds(known: list[Conformer], k: int) -> None:
    """SMILES -> conformer -> (positions, types) -> bonds perceived from 3-D -> the same canonical SMILES."""
    conf = known[k]
    types = conf.types(QM9_DECODER)
    # with RDKit directly, from the atoms and coordinates alone
    rw = Chem.RWMol()
    for t in types:
        rw.AddAtom(Chem.Atom(QM9_DECODER[t]))
    xyz = Chem.Conformer(len(types))
    for i, p in enumerate(conf.positions):
        xyz.SetAtomPosition(i, p.tolist())
    rw.AddConformer(xyz, assignId=True)
    mol = rw.GetMol()
    rdDetermineBonds.DetermineBonds(mol, charge=int(conf.charges.sum()))
    Chem.AssignStereochemistryFrom3D(mol)
    assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == canonical(KNOWN[k])
    # through this module: bonds from 3-D, and the stored connectivity
    built = mol_from_arrays(conf.positions, types, QM9_DECODER, charges=conf.charges)
    assert built.GetIntProp("sciffusion_sanitized") == 1
    assert Chem.MolToSmiles(Chem.RemoveHs(built)) == canonical(KNOWN[k])
    assert Chem.MolToSmiles(Chem.RemoveHs(conf.to_mol())) == canonical(KNOWN[k])


def test_same_seed_same_conformer() -> None:
    a, _ = conformers_from_smiles(["CCCO"], seed=3)
    b, _ = conformers_from_smiles(["CCCO"], seed=3)
    c, _ = conformers_from_smiles(["CCCO"], seed=4)
    np.testing.assert_array_equal(a[0].positions, b[0].positions)
    assert not np.allclose(a[0].positions, c[0].positions)


def test_bad_inputs_are_skipped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    smiles = ["CCO", "C1CC", "not a smiles", "", None, "C[Si](C)(C)C", "C1#CC1", "CCCCCCCCCC", "O"]
    with caplog.at_level(logging.INFO, logger="sciffusion.domains.molecules.io"):
        conformers, skipped = conformers_from_smiles(smiles, seed=0, max_atoms=20, allowed_elements=QM9_DECODER)
    assert [c.smiles for c in conformers] == ["CCO", "O"]
    assert [c.source_index for c in conformers] == [0, 8]
    # decane has 32 atoms with hydrogens; cyclopropyne cannot be embedded
    assert skipped == {"invalid_smiles": 4, "unsupported_element": 1, "embed_failed": 1, "too_many_atoms": 1}
    summary = [r.getMessage() for r in caplog.records if "kept 2 of 9" in r.getMessage()]
    assert len(summary) == 1 and "invalid_smiles=4" in summary[0] and "\n" not in summary[0]
    # silicon passes when allowed
    conformers, skipped = conformers_from_smiles(["C[Si](C)(C)C"], seed=0)
    assert skipped == {} and "Si" in conformers[0].symbols


def test_uff_fallback_and_no_force_field_are_recorded(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sciffusion.domains.molecules.io"):
        conformers, skipped = conformers_from_smiles(["CB(C)C", "FS(F)(F)(F)(F)F", "CC"], seed=0)
    assert skipped == {}
    assert [c.force_field for c in conformers] == ["UFF", "none", "MMFF"]
    assert any("UFF" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def _smiles_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "input.smi"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_smiles_file(tmp_path: Path) -> None:
    path = _smiles_file(tmp_path, ["smiles name", "CCO ethanol", "", "# a comment", "c1ccccc1"])
    assert read_smiles_file(path) == ["CCO", "c1ccccc1"]


def test_cache_is_written_once_reused_and_not_trusted_when_corrupt(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    smi = _smiles_file(tmp_path, ["CCO", "xyz", "[NH3+]CC(=O)[O-]", "c1ccccc1"])
    cache = tmp_path / "cache"
    calls = []
    real = mio.conformers_from_smiles

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mio, "conformers_from_smiles", counting)
    first, skipped = cached_conformers(smi, cache, seed=1, allowed_elements=QM9_DECODER)
    files = list(cache.glob("*.npz"))
    assert len(calls) == 1 and len(files) == 1 and skipped == {"invalid_smiles": 1}
    assert not [p for p in cache.iterdir() if p.suffix != ".npz"]  # no temp file left behind
    # arrays only: loads with allow_pickle=False, nothing of dtype object
    with np.load(files[0], allow_pickle=False) as z:
        assert all(z[name].dtype != object for name in z.files)

    second, skipped2 = cached_conformers(smi, cache, seed=1, allowed_elements=QM9_DECODER)
    assert len(calls) == 1 and skipped2 == skipped
    assert len(second) == len(first) == 3
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.charges, b.charges)
        np.testing.assert_array_equal(a.bonds, b.bonds)
        np.testing.assert_array_equal(a.bond_orders, b.bond_orders)
        assert (a.symbols, a.smiles, a.force_field, a.source_index) == (b.symbols, b.smiles, b.force_field,
                                                                        b.source_index)
    assert Chem.MolToSmiles(Chem.RemoveHs(second[1].to_mol())) == "[NH3+]CC(=O)[O-]"

    # other settings or other input bytes: another key, computed anew
    cached_conformers(smi, cache, seed=2, allowed_elements=QM9_DECODER)
    assert len(calls) == 2 and len(list(cache.glob("*.npz"))) == 2

    # a corrupted cache file is recomputed and rewritten, not trusted
    files[0].write_bytes(b"PK\x03\x04 this is not a zip archive")
    third, _ = cached_conformers(smi, cache, seed=1, allowed_elements=QM9_DECODER)
    assert len(calls) == 3 and len(third) == 3
    load_conformers_npz(files[0])  # valid again
    # a cache whose arrays disagree (truncated positions) is not trusted either
    with np.load(files[0], allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    arrays["positions"] = arrays["positions"][:-1]
    with open(files[0], "wb") as f:
        np.savez(f, **arrays)
    cached_conformers(smi, cache, seed=1, allowed_elements=QM9_DECODER)
    assert len(calls) == 4
    cached_conformers(smi, cache, seed=1, allowed_elements=QM9_DECODER)
    assert len(calls) == 4

    smi.write_text("CCO\nCCN\n")
    cached_conformers(smi, cache, seed=1, allowed_elements=QM9_DECODER)
    assert len(calls) == 5


def test_load_rejects_a_cache_of_another_key(tmp_path: Path) -> None:
    conformers, _ = conformers_from_smiles(["CCO"], seed=0)
    path = mio.save_conformers_npz(tmp_path / "c.npz", conformers, {}, key="abc")
    assert len(load_conformers_npz(path, key="abc")[0]) == 1
    with pytest.raises(ValueError, match="other input or settings"):
        load_conformers_npz(path, key="xyz")


def test_write_sdf_round_trip(tmp_path: Path, known: list[Conformer]) -> None:
    mols = [c.to_mol() for c in known]
    props = [{"xtb_gap": 1.0 / (k + 3), "name": f"mol{k}", "count": k, "np_value": np.float32(0.5)}
             for k in range(len(mols))]
    path = write_sdf(tmp_path / "out" / "mols.sdf", mols, props)
    assert [p.name for p in path.parent.iterdir()] == ["mols.sdf"]  # written atomically: no temp file left
    back = list(Chem.SDMolSupplier(str(path), removeHs=False))
    assert len(back) == len(mols)
    for conf, mol, prop in zip(known, back, props):
        assert mol is not None
        assert tuple(a.GetSymbol() for a in mol.GetAtoms()) == conf.symbols
        assert [a.GetFormalCharge() for a in mol.GetAtoms()] == conf.charges.tolist()
        np.testing.assert_allclose(mol.GetConformer().GetPositions(), conf.positions, atol=1e-4)
        assert float(mol.GetProp("xtb_gap")) == prop["xtb_gap"]
        assert mol.GetProp("name") == prop["name"] and int(mol.GetProp("count")) == prop["count"]
        assert float(mol.GetProp("np_value")) == 0.5
        assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == conf.smiles
    # and this module's reader gives the same conformers
    again, skipped = read_sdf(path)
    assert skipped == {} and [c.smiles for c in again] == [c.smiles for c in known]
    np.testing.assert_allclose(again[2].positions, known[2].positions, atol=1e-4)


def test_unsanitisable_generated_molecule_is_still_written(tmp_path: Path) -> None:
    """A pentavalent carbon: RDKit cannot sanitise it; it is kept unsanitised and written with its bonds."""
    pos = np.array([[0, 0, 0], [1.5, 0, 0], [-1.5, 0, 0], [0, 1.5, 0], [0, -1.5, 0], [0, 0, 1.5]])
    bonds = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [0, 5]])
    bad = mol_from_arrays(pos, [1] * 6, QM9_DECODER, bonds=bonds)
    assert bad.GetIntProp("sciffusion_sanitized") == 0
    path = write_sdf(tmp_path / "gen.sdf", [bad, None], [{"score": 1.5}, {"score": 2.5}])
    strict = list(Chem.SDMolSupplier(str(path), removeHs=False))
    assert strict[0] is None  # a sanitising reader refuses it, as it should
    raw = list(Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False))
    assert raw[0].GetNumAtoms() == 6 and raw[0].GetNumBonds() == 5
    np.testing.assert_allclose(raw[0].GetConformer().GetPositions(), pos, atol=1e-4)
    assert raw[0].GetProp("sciffusion_sanitized") == "0" and float(raw[0].GetProp("score")) == 1.5
    assert raw[1].GetNumAtoms() == 0 and float(raw[1].GetProp("score")) == 2.5  # None -> an empty record
    # this module's reader skips the record RDKit cannot read, and the atom-less one
    conformers, skipped = read_sdf(path)
    assert conformers == [] and skipped == {"unreadable_record": 1, "no_3d_coordinates": 1}


def test_mol_from_arrays_never_raises_on_nonsense() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        mol = mol_from_arrays(rng.normal(size=(9, 3)) * 1.2, rng.integers(0, 5, size=9), QM9_DECODER)
        assert mol.GetNumAtoms() == 9 and mol.GetNumConformers() == 1
    assert mol_from_arrays(np.zeros((1, 3)), [1]).GetNumAtoms() == 1


def _molblock(name: str, flag: str, coords: list[tuple[float, float, float]]) -> str:
    atoms = "".join(f"{x:10.4f}{y:10.4f}{z:10.4f} {s:<3} 0  0  0  0  0  0  0  0  0  0  0  0\n"
                    for (x, y, z), s in zip(coords, ["O", "H", "H"]))
    return (f"{name}\n     RDKit          {flag}\n\n  3  2  0  0  0  0  0  0  0  0999 V2000\n{atoms}"
            "  1  2  1  0\n  1  3  1  0\nM  END\n$$$$\n")


def test_read_sdf_skips_records_without_3d_coordinates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    water3d = [(0.0, 0.0, 0.1173), (0.0, 0.7572, -0.4692), (0.0, -0.7572, -0.4692)]
    flat = [(0.0, 0.0, 0.0), (0.7572, 0.5865, 0.0), (-0.7572, 0.5865, 0.0)]
    text = (_molblock("good", "3D", water3d) + _molblock("no coordinates", "3D", [(0, 0, 0)] * 3)
            + _molblock("depiction", "2D", flat) + "garbage\nnot a mol block\n$$$$\n"
            + _molblock("planar but 3D", "3D", flat))
    path = tmp_path / "mixed.sdf"
    path.write_text(text)
    with caplog.at_level(logging.INFO, logger="sciffusion.domains.molecules.io"):
        conformers, skipped = read_sdf(path, allowed_elements=QM9_DECODER)
    assert [c.name for c in conformers] == ["good", "planar but 3D"]
    assert [c.source_index for c in conformers] == [0, 4]
    assert skipped == {"no_3d_coordinates": 2, "unreadable_record": 1}
    np.testing.assert_allclose(conformers[0].positions, water3d, atol=1e-6)
    assert conformers[0].smiles == "O" and conformers[0].force_field == "sdf"
    assert any("kept 2 of 5" in r.getMessage() for r in caplog.records)
    # elements outside the allowed set are skipped too
    _, skipped = read_sdf(path, allowed_elements={"C", "H"})
    assert skipped["unsupported_element"] == 2


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_grid_png(tmp_path: Path, known: list[Conformer]) -> None:
    mols = [c.to_mol() for c in known]
    pos = np.array([[0, 0, 0], [1.5, 0, 0], [-1.5, 0, 0], [0, 1.5, 0], [0, -1.5, 0], [0, 0, 1.5]])
    bad = mol_from_arrays(pos, [1] * 6, bonds=np.array([[0, 1], [0, 2], [0, 3], [0, 4], [0, 5]]))
    path = write_grid_png(tmp_path / "grid.png", mols + [bad, None], legends=KNOWN + ["bad", "none"],
                          mols_per_row=3, sub_img_size=(200, 200))
    assert _png_size(path) == (600, 600)
    assert path.stat().st_size > 5000
    assert mols[0].GetNumAtoms() == known[0].n_atoms  # the caller's molecules keep their hydrogens


def test_3d_png(tmp_path: Path, known: list[Conformer]) -> None:
    positions = [c.positions for c in known[:3]]
    types = [c.types(QM9_DECODER) for c in known[:3]]
    path = write_3d_png(tmp_path / "three_d.png", positions, types, QM9_DECODER, titles=KNOWN[:3])
    width, height = _png_size(path)
    assert width > 200 and height > 200 and path.stat().st_size > 5000
    bonds = [known[0].bonds, None, np.zeros((0, 2), dtype=int)]
    path2 = write_3d_png(tmp_path / "given_bonds.png", positions, types, bonds=bonds, mols_per_row=2)
    assert _png_size(path2)[0] > 200
    inferred = mio.distance_bonds(known[0].positions, known[0].symbols)
    assert sorted(map(tuple, inferred.tolist())) == sorted(map(tuple, np.sort(known[0].bonds, 1).tolist()))


def test_embedding_uses_etkdg_v3_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = AllChem.EmbedMolecule

    def spy(mol, params):
        seen.append(params.randomSeed)
        return real(mol, params)

    monkeypatch.setattr(mio.AllChem, "EmbedMolecule", spy)
    conformers_from_smiles(["CC", "CO"], seed=11)
    assert seen == [11, 11]
