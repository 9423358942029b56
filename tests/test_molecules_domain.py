"""The molecules domain end to end: QM9 loading (counts, EDM's split, units), the config section, a tiny
train + sample + evaluate through the CLI, user SMILES files, and bad input (one line, exit code 2)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("rdkit")
pytest.importorskip("torch_geometric")

from sciffusion.cli import main  # noqa: E402
from sciffusion.config import ConfigError, config_from_dict  # noqa: E402
from sciffusion.domains.molecules.dataset import MoleculeDataset, PropertyNorm, draw_sizes, size_histogram  # noqa: E402
from sciffusion.domains.molecules.domain import edm_half  # noqa: E402
from sciffusion.domains.molecules.qm9 import NUM_MOLECULES, QM9_DECODER, edm_split_rows, load_qm9, load_qm9_split  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# EDM's atom-count histogram of its QM9 training split (configs/datasets_config.py, qm9 with H)
EDM_TRAIN_HISTOGRAM = {22: 3393, 17: 13025, 23: 4848, 21: 9970, 19: 13832, 20: 9482, 16: 10644, 13: 3060, 15: 7796,
                       25: 1506, 18: 13364, 12: 1689, 11: 807, 24: 539, 14: 5136, 26: 48, 7: 16, 10: 362, 8: 49,
                       9: 124, 27: 266, 4: 4, 29: 25, 6: 9, 5: 5, 3: 1}


@pytest.fixture(scope="module")
def qm9():
    pytest.importorskip("pandas")
    try:
        return load_qm9()
    except RuntimeError as e:  # qm9pack missing
        pytest.skip(str(e))


def test_qm9_counts_split_and_units(qm9) -> None:
    assert len(qm9) == NUM_MOLECULES == 130_831
    assert int(qm9.sizes.sum()) == len(qm9.positions) == len(qm9.types)
    assert bool(np.all(np.diff(qm9.ids) > 0))
    rows = edm_split_rows()
    assert {k: len(v) for k, v in rows.items()} == {"train": 100_000, "valid": 17_748, "test": 13_083}
    assert len(np.unique(np.concatenate(list(rows.values())))) == NUM_MOLECULES
    train = load_qm9_split("train")
    counts = np.bincount(train.sizes)
    assert {i: int(c) for i, c in enumerate(counts) if c} == EDM_TRAIN_HISTOGRAM  # EDM's split, exactly
    methane = 0  # GDB-9 index 1: CH4, gap 0.5048 Hartree, no dipole
    assert qm9.ids[methane] == 1 and qm9.smiles[methane] == "C"
    pos, types = qm9.molecule(methane)
    assert [QM9_DECODER[t] for t in types] == ["C", "H", "H", "H", "H"]
    assert np.linalg.norm(pos[1] - pos[0]) == pytest.approx(1.0919, abs=1e-3)  # C-H, Angstrom
    assert qm9.properties["gap"][methane] == pytest.approx(0.5048 * 27.2114)  # eV, as EDM converts
    assert qm9.properties["mu"][methane] == pytest.approx(0.0)
    assert qm9.properties["alpha"][methane] == pytest.approx(13.21)  # Bohr^3
    assert qm9.properties["Cv"][methane] == pytest.approx(6.469)
    with pytest.raises(ValueError, match="unknown QM9 split"):
        load_qm9_split("training")


def test_edm_halves_partition_the_training_split(qm9) -> None:
    train = load_qm9_split("train")
    first, second = edm_half(train, "first_half"), edm_half(train, "second_half")
    assert len(first) == len(second) == 50_000
    assert not set(first.ids.tolist()) & set(second.ids.tolist())


def test_dataset_items_are_centred_and_normalised(qm9) -> None:
    table = qm9.subset(np.arange(50))
    data = MoleculeDataset(table, properties=("gap",))
    item = data[7]
    assert item.pos.shape == (table.sizes[7], 3) and item.types.dtype == torch.long
    assert item.pos.mean(dim=0).abs().max() < 1e-5
    norm = data.norms["gap"]
    assert norm.mad == pytest.approx(float(np.mean(np.abs(table.properties["gap"] - norm.mean))))
    assert float(item.properties[0, 0]) == pytest.approx((table.properties["gap"][7] - norm.mean) / norm.mad, rel=1e-5)
    batch = data.collate()([data[i] for i in range(4)])
    assert batch["fields"]["pos"].shape == (int(table.sizes[:4].sum()), 3)
    assert batch["cond"]["properties"].shape == (4, 1) and batch["num_samples"] == 4
    assert torch.equal(batch["index"]["pos"], batch["index"]["types"])
    assert PropertyNorm(1.0, 2.0).denormalise(PropertyNorm(1.0, 2.0).normalise(5.0)) == 5.0
    with pytest.raises(ValueError, match="unknown property"):
        MoleculeDataset(table, properties=("nope",))


def test_sizes_drawn_from_the_histogram() -> None:
    hist = size_histogram([3, 3, 5, 5, 5, 5])
    draws = draw_sizes(hist, 20_000, torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) == {3, 5}
    assert float((draws == 5).double().mean()) == pytest.approx(2 / 3, abs=0.02)


@pytest.mark.parametrize("data,message", [
    ({"source": "smiles"}, "'data.path' is required"),
    ({"source": "qm9", "path": "x.csv"}, "'data.path' is for data.source smiles"),
    ({"properties": ["gapp"]}, "unknown gapp"),
    ({"elements": ["C", "H"]}, "EDM's order"),
    ({"source": "smiles", "path": "x.smi", "properties": ["gap"]}, "needs data.source qm9"),
    ({"bogus": 1}, "unknown key 'data.bogus'"),
])
def test_bad_data_section_is_one_line(data: dict, message: str) -> None:
    raw = yaml.safe_load((ROOT / "configs/molecules/qm9.yaml").read_text())
    raw["data"] = data
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict(raw)
    assert "\n" not in str(err.value)


def _tiny_config(tmp_path: Path, **data) -> Path:
    raw = yaml.safe_load((ROOT / "configs/molecules/qm9.yaml").read_text())
    raw["run_dir"] = str(tmp_path / "run")
    raw["data"] = {"max_molecules": 300, "max_nodes": 200, **data}
    raw["net"].update(hidden=16, n_layers=2)
    raw["trainer"].update(max_steps=6, warmup_steps=1, log_every=3, checkpoint_every=6, progress=False, device="cpu")
    raw["sample"].update(steps=4, n=6, batch_size=4)
    path = tmp_path / "qm9_tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_sample_evaluate_end_to_end(tmp_path: Path, qm9, capsys) -> None:
    from rdkit import Chem

    config = _tiny_config(tmp_path)
    assert main(["train", str(config)]) == 0
    run = tmp_path / "run"
    meta = json.loads((run / "molecules.json").read_text())
    assert meta["elements"] == list(QM9_DECODER) and sum(meta["size_histogram"]) == 300
    out = tmp_path / "out" / "mols.sdf"
    assert main(["sample", str(run), "--n", "5", "--out", str(out), "--length", "9"]) == 0
    records = [m for m in Chem.SDMolSupplier(str(out), removeHs=False, sanitize=False)]
    assert len(records) == 5 and all(m.GetNumAtoms() == 9 for m in records)
    for m in records:  # zero centre of mass, as sampled
        coords = m.GetConformer().GetPositions()
        assert np.abs(coords.mean(axis=0)).max() < 1e-3
        assert m.HasProp("valid") and m.HasProp("stable_atom_fraction")
    assert out.with_suffix(".png").stat().st_size > 1000
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert rows[0].startswith("smiles,valid,stable") and len(rows) == 6
    capsys.readouterr()
    assert main(["evaluate", str(run), "--n", "6"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("atom_stability", "molecule_stability", "validity", "uniqueness", "valid_and_unique", "novelty",
                "connected_validity", "distances_to_test"):
        assert key in metrics, key
    assert 0.0 <= metrics["atom_stability"] <= 1.0 and metrics["n_samples"] == 6


def test_bad_sampling_input_is_one_line_exit_2(tmp_path: Path, qm9, capsys) -> None:
    config = _tiny_config(tmp_path)
    assert main(["train", str(config)]) == 0
    run = tmp_path / "run"
    for args, message in [(["--out", str(tmp_path / "mols.png")], "unsupported file type"),
                          (["--solver", "pos=dfm_euler"], "cannot drive field 'pos'")]:
        capsys.readouterr()
        assert main(["sample", str(run), "--n", "2", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert not (tmp_path / "mols.png").exists() and not (run / "samples").exists()
    (run / "molecules.json").write_text("{not json")
    assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "m.sdf")]) == 2
    assert "corrupted" in capsys.readouterr().err and not (tmp_path / "m.sdf").exists()


def test_user_smiles_file_trains_and_skips_bad_lines(tmp_path: Path, caplog, monkeypatch) -> None:
    monkeypatch.setenv("SCIFFUSION_CACHE", str(tmp_path / "cache"))  # the conformer cache
    smiles = tmp_path / "mols.smi"
    smiles.write_text("smiles\nCCO\nc1ccccc1\nnot_a_smiles\nCC(=O)O\nC[Si](C)C\nOCC(N)=O\n")
    config = _tiny_config(tmp_path, source="smiles", path=str(smiles), max_molecules=0, max_nodes=0)
    raw = yaml.safe_load(config.read_text())
    raw["trainer"]["batch_size"] = 2
    config.write_text(yaml.safe_dump(raw))
    with caplog.at_level("INFO"):
        assert main(["train", str(config)]) == 0
    assert "invalid_smiles" in caplog.text and "unsupported_element" in caplog.text
    meta = json.loads((tmp_path / "run" / "molecules.json").read_text())
    assert meta["train_smiles_count"] == 4  # ethanol, benzene, acetic acid, glycolamide
    (tmp_path / "b").mkdir()
    assert len(list((tmp_path / "cache" / "conformers").glob("*.npz"))) == 1
    missing = _tiny_config(tmp_path / "b", source="smiles", path=str(tmp_path / "absent.smi"))
    assert main(["train", str(missing)]) == 2


def test_design_on_a_conditional_run_scores_designs_with_the_oracle(tmp_path: Path, qm9, capsys) -> None:
    pytest.importorskip("tblite.interface")
    config = _tiny_config(tmp_path, properties=["gap"])
    raw = yaml.safe_load(config.read_text())
    raw["loss"] = {"cond_drop_prob": 0.2}
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config)]) == 0
    run = tmp_path / "run"
    out = tmp_path / "d" / "designs.sdf"
    assert main(["design", str(run), "--target", "gap=6.5", "--n", "4", "--guidance-scale", "2", "--out", str(out)]) == 0
    rows = out.with_suffix(".csv").read_text().splitlines()
    header = rows[0].split(",")
    for column in ("target_gap", "xtb_gap_eV", "xtb_dipole_D", "xtb_ok", "qed"):
        assert column in header
    assert len(rows) == 5 and all(r.split(",")[header.index("target_gap")] == "6.5" for r in rows[1:])
    assert (tmp_path / "d" / "designs_targets.png").stat().st_size > 1000
    for args, message in [(["--target", "gap=66"], "outside the sensible range"),
                          (["--target", "qed=0.5"], "unknown target qed"),
                          (["--target", "gap=6", "--out", str(tmp_path / "x.csv")], "unsupported file type")]:
        capsys.readouterr()
        assert main(["design", str(run), "--n", "2", *args]) == 2
        assert message in capsys.readouterr().err
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "2"]) == 2
    assert "property-conditioned" in capsys.readouterr().err


def test_regressor_guided_design_on_an_unconditional_run(tmp_path: Path, qm9, capsys) -> None:
    """A noise-aware property model trained by the core trainer (task.kind property) steers an unconditional
    run through `design --regressor`; a clean classifier, a property run used as a generator, and a regressor
    of other processes are refused in one line."""
    pytest.importorskip("tblite.interface")
    for sub in "grcu":
        (tmp_path / sub).mkdir()
    generator = _tiny_config(tmp_path / "g")
    assert main(["train", str(generator)]) == 0
    regressor = _tiny_config(tmp_path / "r", properties=["gap"])
    raw = yaml.safe_load(regressor.read_text())
    raw["task"] = {"kind": "property", "noisy": True}
    regressor.write_text(yaml.safe_dump(raw))
    assert main(["train", str(regressor)]) == 0
    gen_run, reg_run = tmp_path / "g" / "run", tmp_path / "r" / "run"
    out = tmp_path / "d" / "guided.sdf"
    assert main(["design", str(gen_run), "--regressor", str(reg_run), "--target", "gap=6.0", "--n", "3",
                 "--guidance-scale", "5", "--out", str(out)]) == 0
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert len(rows) == 4 and "target_gap" in rows[0] and "xtb_gap_eV" in rows[0]
    raw["task"]["noisy"] = False
    raw["run_dir"] = str(tmp_path / "c" / "run")
    (tmp_path / "c" / "cfg.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "c" / "cfg.yaml")]) == 0
    raw["task"]["noisy"] = True
    raw["processes"]["types"]["source"] = "uniform"
    raw["run_dir"] = str(tmp_path / "u" / "run")
    (tmp_path / "u" / "cfg.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "u" / "cfg.yaml")]) == 0
    for args, message in [(["design", str(gen_run), "--regressor", str(tmp_path / "c" / "run"), "--target", "gap=6"],
                           "not a noise-aware property model"),
                          (["design", str(gen_run), "--regressor", str(tmp_path / "u" / "run"), "--target", "gap=6"],
                           "other processes"),
                          (["design", str(gen_run), "--regressor", str(reg_run), "--target", "mu=2"], "unknown target mu"),
                          (["design", str(gen_run), "--target", "gap=6"], "--regressor RUN"),
                          (["sample", str(reg_run), "--n", "2"], "is a property model")]:
        capsys.readouterr()
        assert main([*args, "--n", "2", "--out", str(tmp_path / "x" / "m.sdf")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not (tmp_path / "x").exists()


def test_xtb_labels_are_qm9_properties(tmp_path: Path, qm9, monkeypatch) -> None:
    """`data.properties: [xtb_gap]` trains on GFN2-xTB gaps of the DFT geometries (cached), in the oracle's unit;
    design targets for it are checked against the oracle's range."""
    pytest.importorskip("tblite.interface")
    from sciffusion.domains.molecules.domain import MoleculesData, check_design_targets, load_training_table
    from sciffusion.domains.molecules.oracle import xtb_properties
    from sciffusion.registry import DomainError

    monkeypatch.setenv("SCIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("sciffusion.domains.molecules.qm9.load_qm9", lambda: qm9)  # the module's parsed table
    data = MoleculesData(max_molecules=40, properties=["xtb_gap"])
    table = load_training_table(data)
    assert 38 <= len(table) <= 40 and np.isfinite(table.properties["xtb_gap"]).all()
    assert table.properties["xtb_gap"][0] == pytest.approx(xtb_properties(*table.molecule(0)).gap, abs=1e-9)
    assert (tmp_path / "cache" / "qm9_xtb_labels.npz").is_file()
    check_design_targets({"xtb_gap": 5.0}, ["xtb_gap"], require_all=True)
    with pytest.raises(DomainError, match="outside the sensible range"):
        check_design_targets({"xtb_gap": 50.0}, ["xtb_gap"], require_all=True)
    with pytest.raises(ConfigError, match="oracle labels: xtb_gap, xtb_dipole, logp, qed"):
        MoleculesData(properties=["xtb_energy_gap"])


def test_descriptor_labels_read_molecules_as_designs_are_scored(tmp_path: Path, qm9, monkeypatch) -> None:
    """`data.properties: [logp]`: RDKit's Crippen logP of each training molecule's EDM molecule (bonds from its
    geometry), equal to RDKit's value for the same molecule read from SMILES; not-valid molecules get NaN."""
    pytest.importorskip("rdkit")
    from rdkit import Chem
    from rdkit.Chem import AllChem, Crippen, QED

    from sciffusion.domains.molecules.domain import MoleculesData, load_training_table
    from sciffusion.domains.molecules.oracle import descriptor_labels

    ethanol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(ethanol, randomSeed=0)
    AllChem.MMFFOptimizeMolecule(ethanol)
    positions = ethanol.GetConformer().GetPositions()
    types = np.array([QM9_DECODER.index(a.GetSymbol()) for a in ethanol.GetAtoms()])
    far = positions * 3.0  # no bonds: fragments of single atoms, not one valid molecule
    labels = descriptor_labels([(positions, types), (far, types)])
    reference = Chem.MolFromSmiles("CCO")
    assert labels["logp"][0] == pytest.approx(Crippen.MolLogP(reference), abs=1e-12)
    assert labels["qed"][0] == pytest.approx(QED.qed(reference), abs=1e-12)

    monkeypatch.setenv("SCIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("sciffusion.domains.molecules.qm9.load_qm9", lambda: qm9)
    table = load_training_table(MoleculesData(max_molecules=40, properties=["logp"]))
    assert 35 <= len(table) <= 40 and np.isfinite(table.properties["logp"]).all()
    assert table.properties["logp"][0] == pytest.approx(descriptor_labels([table.molecule(0)])["logp"][0])
