"""The crystals domain: the representation is the same for an equivalent cell (another origin, permuted sites, a rotated
Cartesian frame, a supercell-free other cell choice), the lattice numbers invert exactly, CIF round trips through
pymatgen, the periodic net is invariant to a common fractional shift and equivariant to permutations (float64), bad
files and compositions fail or are skipped with their reason, and a tiny structure-prediction and de novo run train,
sample, evaluate and design through the CLI."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pymatgen")
pytest.importorskip("torch_geometric")

from pymatgen.core import Lattice, Structure  # noqa: E402

from sciffusion.cli import main  # noqa: E402
from sciffusion.domains.materials.crystal import (  # noqa: E402
    CrystalError,
    canonical_structure,
    from_structures,
    lattice_features,
    lattice_parameters,
    parse_cif,
    parse_composition,
    read_csv_crystals,
    write_cif,
)
from sciffusion.domains.materials.nets import CrystalGNN, all_pairs  # noqa: E402
from sciffusion.nets.equivariance import assert_equivariant, random_rotation  # noqa: E402
from sciffusion.reps.graph import ragged_from_sizes  # noqa: E402

PEROV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "crystals" / "perov_5"


def _srtio3(a: float = 3.905) -> Structure:
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _triclinic() -> Structure:
    lattice = Lattice.from_parameters(4.1, 5.3, 6.2, 78.0, 95.0, 104.0)
    return Structure(lattice, ["Li", "Fe", "O", "O"], [[0.1, 0.2, 0.3], [0.6, 0.4, 0.9], [0.3, 0.8, 0.5], [0.85, 0.15, 0.05]])


def _site_set(structure: Structure) -> list[tuple[str, tuple[float, ...]]]:
    """Sites as (element, fractional coordinates relative to the first site of the first element, wrapped), sorted."""
    sites = sorted(structure, key=lambda s: s.specie.symbol)
    origin = sites[0].frac_coords
    return sorted((s.specie.symbol, tuple(np.round(np.mod(s.frac_coords - origin + 1e-7, 1.0) - 1e-7, 5))) for s in sites)


# -- representation ---------------------------------------------------------------------------------------------
def test_equivalent_cells_give_the_same_representation() -> None:
    base = canonical_structure(_triclinic())
    rotation = random_rotation(torch.Generator().manual_seed(3)).numpy()
    crystal = _triclinic()
    rotated = Structure(Lattice(crystal.lattice.matrix @ rotation.T), crystal.species, crystal.frac_coords)
    shifted = crystal.copy()
    shifted.translate_sites(list(range(len(shifted))), [0.37, 0.11, 0.52], frac_coords=True, to_unit_cell=True)
    permuted = Structure(crystal.lattice, [crystal.species[i] for i in (2, 0, 3, 1)], crystal.frac_coords[[2, 0, 3, 1]])
    other_cell = Structure(Lattice(crystal.lattice.matrix[[1, 2, 0]]), crystal.species, crystal.frac_coords[:, [1, 2, 0]])
    for variant in (rotated, shifted, permuted, other_cell):
        canon = canonical_structure(variant)
        np.testing.assert_allclose(canon.lattice.parameters, base.lattice.parameters, atol=1e-6)
        assert _site_set(canon) == _site_set(base)
    table, skipped = from_structures([crystal, rotated])
    assert skipped == {}
    features = lattice_features(table.lengths, table.angles, table.sizes)
    np.testing.assert_allclose(features[0], features[1], atol=1e-9)


def test_lattice_numbers_invert_exactly() -> None:
    lengths = np.array([[3.9, 3.9, 3.9], [4.1, 5.3, 6.2], [2.5, 2.5, 4.0]])
    angles = np.array([[90.0, 90.0, 90.0], [78.0, 95.0, 104.0], [90.0, 90.0, 120.0]])
    sizes = np.array([5, 4, 2])
    back_lengths, back_angles = lattice_parameters(lattice_features(lengths, angles, sizes), sizes)
    np.testing.assert_allclose(back_lengths, lengths, rtol=1e-10)
    np.testing.assert_allclose(back_angles, angles, atol=1e-8)
    # the log-length numbers are per cube root of the atom count: a doubled cell with twice the atoms has the same numbers
    doubled = lattice_features(np.array([[3.9 * 2 ** (1 / 3)] * 3]), np.array([[90.0] * 3]), np.array([10]))
    np.testing.assert_allclose(doubled, lattice_features(lengths[:1], angles[:1], sizes[:1]), atol=1e-12)


def test_cif_round_trip(tmp_path: Path) -> None:
    crystal = canonical_structure(_triclinic())
    for symprec in (None, 0.1):
        path = tmp_path / f"x_{symprec}.cif"
        write_cif(path, crystal, symprec=symprec)
        back = canonical_structure(parse_cif(path.read_text()))
        np.testing.assert_allclose(back.lattice.parameters, crystal.lattice.parameters, atol=1e-5)
        assert _site_set(back) == _site_set(crystal)


def test_bad_structures_are_refused_or_skipped(tmp_path: Path) -> None:
    with pytest.raises(CrystalError, match="malformed CIF"):
        parse_cif("data_x\n_cell_length_a 3.0\nnot a cif at all")
    disordered = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    with pytest.raises(CrystalError, match="partial occupancies"):
        canonical_structure(disordered)
    big = _srtio3().copy()
    big.make_supercell([2, 2, 2])
    table, skipped = from_structures([_srtio3(), disordered, big, None], max_atoms=20)
    assert len(table) == 1
    assert skipped == {"partial occupancies (a disordered structure) are not supported": 1,
                       "more than 20 atoms per cell": 1, "unreadable": 1}
    path = tmp_path / "crystals.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["material_id", "cif", "gap"])
        writer.writerow(["good", str(write_cif_text(_srtio3())), "1.5"])
        writer.writerow(["bad", "garbage", "2.0"])
    table, skipped = read_csv_crystals(path, properties=["gap"])
    assert len(table) == 1 and table.ids == ("good",) and skipped == {"malformed CIF": 1}
    np.testing.assert_allclose(table.properties["gap"], [1.5])
    with pytest.raises(ValueError, match="no column energy"):
        read_csv_crystals(path, properties=["energy"])


def write_cif_text(structure: Structure) -> str:
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(structure))


def test_compositions() -> None:
    elements = ("Sr", "Ti", "O", "Ba")
    assert sorted(parse_composition("SrTiO3", elements, 20)) == ["O", "O", "O", "Sr", "Ti"]
    assert len(parse_composition("Sr2Ti2O6", elements, 20)) == 10
    for text, message in (("Sr(Ti", "not a chemical formula"), ("SrTiXq3", "unknown element Xq"), ("SrZrO3", "Zr"), ("Sr8Ti8O24", "40 atoms"),
                          ("Sr0.5TiO3", "fractional")):
        with pytest.raises(CrystalError, match=message):
            parse_composition(text, elements, 20)


# -- the network ------------------------------------------------------------------------------------------------
def test_all_pairs_per_sample() -> None:
    index = torch.tensor([1, 0, 1, 2, 0, 1])
    edges = all_pairs(index)
    assert edges.shape == (2, 2 * 2 + 3 * 3 + 1)
    pairs = {tuple(p) for p in edges.T.tolist()}
    expected = {(i, j) for i in range(6) for j in range(6) if index[i] == index[j]}
    assert pairs == expected


@pytest.mark.parametrize("generate_types", [False, True])
def test_net_symmetries_float64(generate_types: bool) -> None:
    torch.manual_seed(0)
    net = CrystalGNN(hidden=32, n_layers=2, num_freqs=4, num_types=6, generate_types=generate_types,
                     num_properties=1).double()
    sizes = [3, 5, 1]
    index = ragged_from_sizes(sizes)
    gen = torch.Generator().manual_seed(1)
    frac = torch.rand(len(index), 3, generator=gen, dtype=torch.float64)
    lattice = torch.randn(len(sizes), 6, generator=gen, dtype=torch.float64)
    types = torch.randint(0, 6, (len(index),), generator=gen)
    t = torch.rand(len(sizes), generator=gen, dtype=torch.float64)
    props = torch.randn(len(sizes), 1, generator=gen, dtype=torch.float64)

    def fn(fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = {"frac_coords": fields["frac_coords"], "lattice": lattice}
        cond = {"properties": props}
        if generate_types:
            x["atom_types"] = fields["atom_types"]
        else:
            cond["atom_types"] = fields["atom_types"]
        out = net(x, t, cond, index={"frac_coords": index})
        return {"frac_coords": out["frac_coords"], "lattice_rows": out["lattice"][index],
                **({"atom_types_logits": out["atom_types"]} if generate_types else {})}

    errors = assert_equivariant(fn, {"frac_coords": frac, "atom_types": types},
                                {"frac_coords": "fractional", "atom_types": "scalar"}, {},
                                index={"frac_coords": index, "atom_types": index, "lattice_rows": index,
                                       "atom_types_logits": index},
                                transforms=("frac_shift", "permutation"), atol=1e-10)
    assert set(errors) == {"frac_shift", "permutation"}
    # an unwrapped coordinate (x + 1) is the same point of the torus: the same outputs
    moved = fn({"frac_coords": frac + torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64), "atom_types": types})
    for name, value in fn({"frac_coords": frac, "atom_types": types}).items():
        torch.testing.assert_close(moved[name], value, atol=1e-10, rtol=0)
    # crystals of a batch do not interact: the last crystal alone gives its rows of the batched output
    alone = net({"frac_coords": frac[-1:], "lattice": lattice[-1:], **({"atom_types": types[-1:]} if generate_types else {})},
                t[-1:], {"properties": props[-1:], **({} if generate_types else {"atom_types": types[-1:]})},
                index={"frac_coords": torch.zeros(1, dtype=torch.long)})
    batched = fn({"frac_coords": frac, "atom_types": types})
    torch.testing.assert_close(alone["frac_coords"], batched["frac_coords"][-1:], atol=1e-10, rtol=0)


def test_rotated_frame_gives_the_same_network_output() -> None:
    from sciffusion.domains.materials.crystal import Standardiser

    crystal = _triclinic()
    rotation = random_rotation(torch.Generator().manual_seed(5)).numpy()
    rotated = Structure(Lattice(crystal.lattice.matrix @ rotation.T), crystal.species, crystal.frac_coords)
    table, _ = from_structures([crystal, rotated])
    features = torch.from_numpy(Standardiser((0.0,) * 6, (1.0,) * 6).normalise(
        lattice_features(table.lengths, table.angles, table.sizes)))
    torch.manual_seed(0)
    net = CrystalGNN(hidden=16, n_layers=2, num_freqs=3, num_types=3).double()
    types = torch.tensor([0, 1, 2, 2])
    outs = []
    for k in range(2):
        lo, hi = table.offsets[k], table.offsets[k + 1]
        frac = torch.from_numpy(table.frac_coords[lo:hi])
        order = np.argsort([z for z in table.atomic_numbers[lo:hi]], kind="stable")
        outs.append(net({"frac_coords": frac[order], "lattice": features[k:k + 1]}, torch.tensor([0.3], dtype=torch.float64),
                        {"atom_types": types}, index={"frac_coords": torch.zeros(4, dtype=torch.long)}))
    torch.testing.assert_close(outs[0]["lattice"], outs[1]["lattice"], atol=1e-10, rtol=0)
    torch.testing.assert_close(outs[0]["frac_coords"], outs[1]["frac_coords"], atol=1e-10, rtol=0)


def test_dropped_condition_equals_no_condition() -> None:
    torch.manual_seed(0)
    net = CrystalGNN(hidden=16, n_layers=1, num_freqs=2, num_types=3, generate_types=True, num_properties=2)
    index = ragged_from_sizes([2, 3])
    x = {"frac_coords": torch.rand(5, 3), "lattice": torch.randn(2, 6), "atom_types": torch.randint(0, 4, (5,))}
    t = torch.rand(2)
    cond = {"properties": torch.randn(2, 2)}
    dropped = net.drop_condition(cond, torch.tensor([True, True]))
    a = net(x, t, dropped, index={"frac_coords": index})
    b = net(x, t, None, index={"frac_coords": index})
    c = net(x, t, cond, index={"frac_coords": index})
    torch.testing.assert_close(a["lattice"], b["lattice"])
    assert not torch.allclose(a["lattice"], c["lattice"])


# -- end to end through the CLI ---------------------------------------------------------------------------------
def _crystal_csv(path: Path) -> Path:
    """A small CSV of rock-salt and perovskite cells with a made-up property column (the lattice constant)."""
    rows = []
    for k, a in enumerate(np.linspace(3.7, 4.3, 12)):
        for formula, structure in (("SrTiO3", _srtio3(a)),
                                   ("NaCl", Structure(Lattice.cubic(a + 1.5), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))):
            rows.append({"material_id": f"{formula}_{k}", "cif": write_cif_text(structure), "a_const": a})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["material_id", "cif", "a_const"])
        writer.writeheader()
        writer.writerows(rows)
    return path


TINY = ["net.hidden=16", "net.n_layers=1", "net.num_freqs=2", "trainer.max_steps=30", "trainer.batch_size=8",
        "trainer.log_every=10", "trainer.checkpoint_every=30", "sample.steps=4", "sample.n=3"]


def test_csp_train_sample_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _crystal_csv(tmp_path / "cells.csv")
    run = tmp_path / "csp"
    assert main(["train", "configs/materials/perov5_csp.yaml", f"run_dir={run}", f"data.path={data}",
                 f"data.test_path={data}", "evaluate.workers=1", "evaluate.test_crystals=4", *TINY]) == 0
    meta = json.loads((run / "materials.json").read_text())
    assert meta["elements"] == ["O", "Na", "Cl", "Ti", "Sr"] and meta["size_histogram"][2] == 12
    out = tmp_path / "srtio3"
    assert main(["sample", str(run), "--composition", "SrTiO3", "--n", "3", "--out", str(out)]) == 0
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["formula"] for r in rows] == ["SrTiO3"] * 3
    assert all(r["atoms"] == "5" for r in rows) and (out / "cells.png").stat().st_size > 0
    back = canonical_structure(parse_cif((out / rows[0]["cif"]).read_text()))
    assert back.composition.reduced_formula == "SrTiO3"
    guided = tmp_path / "guided"
    assert main(["design", str(run), "--composition", "SrTiO3", "--n", "2", "--target", "chgnet_energy=-12",
                 "--out", str(guided)]) == 0
    with (guided / "summary.csv").open() as f:
        designs = list(csv.DictReader(f))
    assert [d["target_chgnet_energy"] for d in designs] == ["-12.0", "-12.0"]
    assert all(np.isfinite(float(d["chgnet_energy_eV_per_atom"])) or d["chgnet_failure"] for d in designs)
    assert main(["evaluate", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "csp" and metrics["test_crystals"] == 4
    assert 0.0 <= metrics["match_rate_1"] <= 1.0
    # a composition the run cannot represent, and a de novo-only option: one line, exit 2, nothing written
    capsys.readouterr()
    assert main(["sample", str(run), "--composition", "BaTiO3", "--out", str(tmp_path / "x")]) == 2
    assert "Ba" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["sample", str(run), "--length", "5", "--out", str(tmp_path / "x")]) == 2
    assert main(["sample", str(run), "--motif", "a.pdb:A1-5", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    # the run's training-data summary damaged, then gone: one line each, exit 2
    capsys.readouterr()
    (run / "materials.json").write_text("{")
    assert main(["sample", str(run), "--composition", "SrTiO3", "--out", str(tmp_path / "x")]) == 2
    assert "materials.json is corrupted" in capsys.readouterr().err
    (run / "materials.json").unlink()
    assert main(["sample", str(run), "--composition", "SrTiO3", "--out", str(tmp_path / "x")]) == 2
    assert "materials.json is missing" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_denovo_design_with_property(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _crystal_csv(tmp_path / "cells.csv")
    run = tmp_path / "denovo"
    assert main(["train", "configs/materials/perov5_denovo.yaml", f"run_dir={run}", f"data.path={data}",
                 f"data.test_path={data}", "processes.atom_types.num_classes=5", "data.properties=[a_const]",
                 "loss.cond_drop_prob=0.2", *TINY]) == 0
    out = tmp_path / "designs"
    assert main(["design", str(run), "--target", "a_const=4.0", "--n", "4", "--guidance-scale", "2",
                 "--out", str(out)]) == 0
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(float(r["target_a_const"]) == 4.0 for r in rows)
    assert all(1 <= int(r["atoms"]) <= 5 for r in rows)
    capsys.readouterr()
    assert main(["design", str(run), "--target", "dir_gap=2", "--out", str(tmp_path / "y")]) == 2
    assert "unknown dir_gap" in capsys.readouterr().err
    assert main(["sample", str(run), "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()


def test_wrong_num_classes_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _crystal_csv(tmp_path / "cells.csv")
    assert main(["train", "configs/materials/perov5_denovo.yaml", f"run_dir={tmp_path / 'r'}", f"data.path={data}",
                 *TINY]) == 2
    assert "num_classes 5" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not PEROV.is_dir(), reason="needs ../shared/data/crystals/perov_5")
def test_perov5_reads_whole() -> None:
    table, skipped = read_csv_crystals(PEROV / "test.csv", properties=["heat_ref", "dir_gap"])
    assert len(table) == 3785 and skipped == {}
    assert set(table.sizes.tolist()) == {5}
    assert np.isfinite(table.properties["dir_gap"]).all()


def test_chgnet_energy_loss_gradient_is_the_force() -> None:
    """The guidance loss's gradient in fractional coordinates equals the finite-difference slope of CHGNet's total
    energy (eV per unit fractional coordinate), and the loss is 0 below the target."""
    from sciffusion.domains.materials.crystal import Standardiser
    from sciffusion.domains.materials.guidance import chgnet_energy_loss
    from sciffusion.domains.materials.oracle import chgnet_energies

    pytest.importorskip("chgnet")
    crystal = _srtio3(3.95)
    crystal.translate_sites([1], [0.0, 0.0, 0.03], frac_coords=True)  # Ti off centre: a force along c
    table, _ = from_structures([crystal])
    norm = Standardiser.of(lattice_features(table.lengths, table.angles, table.sizes))
    lattice = torch.from_numpy(norm.normalise(lattice_features(table.lengths, table.angles, table.sizes)))
    frac = torch.from_numpy(table.frac_coords).requires_grad_(True)
    species = [str(s.specie) for s in table.structure(0)]
    index = torch.zeros(5, dtype=torch.long)
    loss = chgnet_energy_loss(frac, lattice, index, species, norm.mean, norm.spread, target=-20.0, max_grad=1e9)
    (grad,) = torch.autograd.grad(loss.sum(), frac)
    ti = species.index("Ti")

    def total_energy(dz: float) -> float:
        moved = table.structure(0).copy()
        moved.translate_sites([ti], [0.0, 0.0, dz], frac_coords=True)
        return chgnet_energies([moved])[0].energy * 5

    slope = (total_energy(1e-3) - total_energy(-1e-3)) / 2e-3
    assert abs(float(grad[ti, 2]) - slope) < 0.05 * abs(slope) + 0.05, (float(grad[ti, 2]), slope)
    assert float(loss[0]) == pytest.approx(5 * (chgnet_energies([table.structure(0)])[0].energy + 20.0), rel=1e-5)
    below = chgnet_energy_loss(frac, lattice, index, species, norm.mean, norm.spread, target=5.0)
    assert float(below[0]) == 0.0
