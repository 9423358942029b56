"""Structure files: PDB / mmCIF reading (first model, standard residues, skip reasons), PDB writing read back by
biopython, motif specifications, and DSSP against the reference strings of the MDAnalysis test suite."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("Bio")

from conftest import shared_data  # noqa: E402

from sciffusion.domains.proteins.frames import backbone_atoms, frames_from_backbone  # noqa: E402
from sciffusion.domains.proteins.io import (  # noqa: E402
    MotifSegment,
    ScaffoldRange,
    StructureError,
    motif_atoms,
    parse_motif_spec,
    pdb_lines,
    read_structure,
)


def packaged() -> Path:
    from sciffusion.domains.proteins.domain import packaged_structures

    try:
        return packaged_structures()
    except ValueError:
        pytest.skip("needs the mdanalysistests package (the proteins extra)")


def atom_line(serial: int, name: str, resname: str, chain: str, resnum: int, xyz: tuple[float, float, float],
              record: str = "ATOM") -> str:
    return (f"{record:<6s}{serial:5d}  {name:<3s} {resname} {chain}{resnum:4d}    {xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}"
            f"  1.00  0.00           {name[0]}")


def tiny_chain(resnums: list[int], skip: dict[int, str] | None = None, chain: str = "A") -> list[str]:
    """An extended poly-alanine backbone with residue numbers ``resnums``; ``skip`` drops an atom of a residue."""
    lines, serial = [], 1
    for k, r in enumerate(resnums):
        base = np.array([3.8 * k, 0.0, 0.0])
        for name, off in (("N", (-1.0, 0.5, 0)), ("CA", (0, 0, 0)), ("C", (1.2, 0.6, 0)), ("O", (1.3, 1.8, 0))):
            if (skip or {}).get(r) == name:
                continue
            lines.append(atom_line(serial, name, "ALA", chain, r, tuple(base + off)))
            serial += 1
    return lines


def test_pdb_write_biopython_read_round_trip(tmp_path: Path) -> None:
    from Bio.PDB import PDBParser

    g = torch.Generator().manual_seed(0)
    rots = torch.linalg.qr(torch.randn(30, 3, 3, generator=g, dtype=torch.float64))[0]
    rots = rots * torch.det(rots)[:, None, None]  # proper rotations
    trans = torch.zeros(30, 3, dtype=torch.float64)
    trans[:, 0] = 3.8 * torch.arange(30)  # consecutive CAs 3.8 A apart: no chain break
    atoms = backbone_atoms(rots, trans).numpy()
    path = tmp_path / "backbone.pdb"
    path.write_text(pdb_lines([("A", atoms)], ["test"]))
    parsed = PDBParser(QUIET=True).get_structure("x", str(path))
    residues = list(parsed[0]["A"])
    assert len(residues) == 30 and [a.get_id() for a in residues[0]] == ["N", "CA", "C", "O"]
    read = np.array([[res[a].coord for a in ("N", "CA", "C", "O")] for res in residues])
    assert np.abs(read - atoms).max() < 6e-4  # 3 decimals
    again = read_structure(path).chains[0]
    assert len(again) == 30 and not again.break_before.any()


def test_mmcif_and_pdb_give_the_same_chain(tmp_path: Path) -> None:
    from Bio.PDB import MMCIFIO, PDBParser

    src = packaged() / "1lpbA.pdb.gz"
    with gzip.open(src, "rt") as f:
        (tmp_path / "x.pdb").write_text(f.read())
    writer = MMCIFIO()
    writer.set_structure(PDBParser(QUIET=True).get_structure("x", str(tmp_path / "x.pdb")))
    writer.save(str(tmp_path / "x.cif"))
    from_pdb, from_cif = read_structure(src).chains[0], read_structure(tmp_path / "x.cif").chains[0]
    assert len(from_pdb) == len(from_cif) == 85
    assert np.allclose(from_pdb.atoms, from_cif.atoms, atol=1e-3, equal_nan=True)


def test_bad_structures_have_clear_reasons(tmp_path: Path) -> None:
    (tmp_path / "ligand.pdb").write_text("\n".join([atom_line(1, "C1", "LIG", "A", 1, (0, 0, 0), "HETATM"),
                                                    atom_line(2, "O", "HOH", "A", 2, (3, 0, 0), "HETATM")]) + "\nEND\n")
    with pytest.raises(StructureError, match="no protein"):
        read_structure(tmp_path / "ligand.pdb")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(StructureError, match="unsupported file type"):
        read_structure(tmp_path / "notes.txt")
    (tmp_path / "garbage.cif").write_text("this is not mmCIF\n")
    with pytest.raises(StructureError, match="garbage.cif"):
        read_structure(tmp_path / "garbage.cif")
    with pytest.raises(StructureError, match="no such file"):
        read_structure(tmp_path / "missing.pdb")


def test_missing_atoms_models_and_hetero_are_counted(tmp_path: Path) -> None:
    model = tiny_chain([1, 2, 3, 4, 5, 6], skip={3: "CA"})
    het = [atom_line(99, "O", "HOH", "A", 101, (50.0, 0, 0), "HETATM")]
    text = "MODEL        1\n" + "\n".join(model + het) + "\nENDMDL\nMODEL        2\n" + "\n".join(model) + "\nENDMDL\nEND\n"
    (tmp_path / "ens.pdb").write_text(text)
    s = read_structure(tmp_path / "ens.pdb")
    chain = s.chains[0]
    assert chain.resnums.tolist() == [1, 2, 4, 5, 6]
    assert chain.break_before.tolist() == [False, False, True, False, False]
    assert chain.residue_index(32).tolist() == [0, 1, 33, 34, 35]
    assert s.dropped["residues missing backbone atoms (N, CA or C)"] == 1
    assert s.dropped["water"] == 1
    assert s.dropped["models after the first (2 models)"] == 1


def test_motif_specs(tmp_path: Path) -> None:
    spec = parse_motif_spec("dir/m.pdb:A10-25,B40-45")
    assert spec.path == Path("dir/m.pdb") and spec.parts == (MotifSegment("A", 10, 25), MotifSegment("B", 40, 45))
    spec = parse_motif_spec("m.pdb:5-15/A10-25/10")
    assert spec.parts == (ScaffoldRange(5, 15), MotifSegment("A", 10, 25), ScaffoldRange(10, 10))
    for bad in ("m.pdb", "m.pdb:", "m.pdb:5-15", "m.pdb:A25-10", "m.pdb:A1-x"):
        with pytest.raises(ValueError, match="--motif"):
            parse_motif_spec(bad)
    (tmp_path / "m.pdb").write_text("\n".join(tiny_chain(list(range(1, 11)), skip={7: "N"})) + "\nEND\n")
    s = read_structure(tmp_path / "m.pdb")
    assert motif_atoms(s, MotifSegment("A", 2, 5)).shape == (4, 4, 3)
    with pytest.raises(StructureError, match="A11, A12"):
        motif_atoms(s, MotifSegment("A", 9, 12))
    with pytest.raises(StructureError, match="A7"):
        motif_atoms(s, MotifSegment("A", 5, 8))
    with pytest.raises(StructureError, match="no protein chain 'B'"):
        motif_atoms(s, MotifSegment("B", 1, 3))


def test_dssp_matches_the_reference_of_a_shared_structure() -> None:
    """pydssp on ``../shared/data/proteins/1lpbA.pdb.gz`` against the MDAnalysis suite's reference DSSP string."""
    from sciffusion.domains.proteins.metrics import dssp_string

    structure = shared_data("proteins/1lpbA.pdb.gz")
    reference = (packaged() / "1lpbA.pdb.dssp").read_text().split()[0]
    got = dssp_string(read_structure(structure).chains[0].atoms)
    assert got == reference
    assert got.count("E") == 25 and got.count("H") == 8


def test_dssp_agrees_on_every_packaged_structure() -> None:
    """Over the 50 packaged chains: 39 match exactly, the rest differ in at most 3 residues (hydrogen placement)."""
    from sciffusion.domains.proteins.metrics import dssp_string

    agree, exact = [], 0
    for path in sorted(packaged().glob("?????.pdb.gz")):
        reference = (path.parent / (path.name[:-3] + ".dssp")).read_text().split()[0]
        got = dssp_string(np.concatenate([c.atoms for c in read_structure(path).chains]))
        assert len(got) == len(reference)
        exact += got == reference
        agree.append(np.mean([a == b for a, b in zip(got, reference)]))
    assert len(agree) == 50 and exact >= 39 and min(agree) > 0.97


def test_frames_of_a_structure_keep_ca(tmp_path: Path) -> None:
    chain = read_structure(packaged() / "2xcjA.pdb.gz").chains[0]
    atoms = torch.from_numpy(chain.atoms)
    rots, trans = frames_from_backbone(atoms[:, 0], atoms[:, 1], atoms[:, 2])
    assert torch.equal(trans, atoms[:, 1])
