"""QM9 with its DFT geometries and properties, from the pip package ``qm9pack``, split as EDM splits it.

``qm9pack`` ships the 130,831 characterised molecules of QM9 (Ramakrishnan et al. 2014: 133,885 minus the 3,054
"uncharacterized" ones that EDM, following Cormorant, also excludes) as three CSV files with the B3LYP geometry
(``XYZ_Ang``, Angstrom), the elements and the properties. Its ``import`` needs ``pkg_resources``, so the CSVs are
read from the installed package folder.

EDM's split (``qm9/data/prepare/qm9.py`` of Hoogeboom et al. 2022): the included GDB-9 indices in ascending order,
``np.random.seed(0); perm = np.random.permutation(130831)``; the first 100,000 of ``perm`` are the training set,
the next 17,748 the validation set, the last 13,083 (``int(0.1 * 130831)``) the test set; each split is then
read in ascending index order.

Units as EDM's ``qm9_to_eV`` leaves them: HOMO, LUMO and gap in eV (Hartree x 27.2114), dipole ``mu`` in Debye,
polarisability ``alpha`` in Bohr^3, heat capacity ``Cv`` in cal/(mol K).

The parsed table is cached as a ``.npz`` of plain arrays (no pickle) under ``$SCIFFUSION_CACHE`` (default
``~/.cache/sciffusion``), written atomically.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

QM9_DECODER: tuple[str, ...] = ("H", "C", "N", "O", "F")  # EDM's order for QM9 with hydrogens
NUM_MOLECULES = 130_831
SPLIT_SIZES = {"train": 100_000, "valid": 17_748, "test": 13_083}
HARTREE_TO_EV = 27.2114  # EDM's conversion factor (qm9_to_eV)
# property name (EDM's) -> (qm9pack column, factor to EDM's unit, unit)
PROPERTIES: dict[str, tuple[str, float, str]] = {
    "gap": ("HOMO_LUMO_gap_au", HARTREE_TO_EV, "eV"),
    "homo": ("HOMO_au", HARTREE_TO_EV, "eV"),
    "lumo": ("LUMO_au", HARTREE_TO_EV, "eV"),
    "mu": ("Dipole_debye", 1.0, "D"),
    "alpha": ("Polarizability_bohr3", 1.0, "Bohr^3"),
    "Cv": ("Heatcapacity_Cv_cal_mol_K", 1.0, "cal/(mol K)"),
}
# a design target outside this range (EDM's units) is refused: QM9 spans well inside it
PROPERTY_RANGES: dict[str, tuple[float, float]] = {
    "gap": (0.0, 30.0), "homo": (-30.0, 5.0), "lumo": (-15.0, 15.0), "mu": (0.0, 30.0), "alpha": (0.0, 500.0),
    "Cv": (0.0, 200.0),
}
CSV_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
CACHE_VERSION = 1
_TRAILING_DOT = re.compile(r"(\d)\.(?=[,\]])")


class QM9Unavailable(RuntimeError):
    """The ``qm9pack`` package is not installed."""


@dataclass(frozen=True)
class MoleculeTable:
    """Many molecules as flat arrays (ragged by ``offsets``).

    Attributes:
        positions: ``(A, 3)`` float32 Angstrom, all atoms of all molecules, molecule after molecule.
        types: ``(A,)`` int64 indices into ``decoder``.
        charges: ``(A,)`` int64 formal charges (all 0 for QM9, which gives none per atom).
        offsets: ``(M + 1,)`` int64: molecule ``i`` is rows ``offsets[i]:offsets[i + 1]``.
        properties: ``{name: (M,) float64}`` in the units of :data:`PROPERTIES`.
        smiles: ``M`` SMILES strings (as the source gives them).
        ids: ``(M,)`` int64 source ids (QM9: the GDB-9 index, 1-based as in the file names).
        decoder: element symbol of each type index.
    """

    positions: np.ndarray
    types: np.ndarray
    charges: np.ndarray
    offsets: np.ndarray
    properties: dict[str, np.ndarray]
    smiles: tuple[str, ...]
    ids: np.ndarray
    decoder: tuple[str, ...] = QM9_DECODER

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        """Atoms per molecule ``(M,)``."""
        return np.diff(self.offsets)

    def molecule(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions ``(n, 3)`` and types ``(n,)`` of molecule ``i``."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.positions[lo:hi], self.types[lo:hi]

    def subset(self, rows: np.ndarray) -> "MoleculeTable":
        """The molecules ``rows`` (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        sizes = self.sizes[rows]
        atoms = np.concatenate([np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]) if len(rows) else \
            np.zeros(0, dtype=np.int64)
        return MoleculeTable(self.positions[atoms], self.types[atoms], self.charges[atoms],
                             np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                             {k: v[rows] for k, v in self.properties.items()}, tuple(self.smiles[r] for r in rows),
                             self.ids[rows], self.decoder)

    def to_npz(self, path: Path) -> None:
        """Write as plain arrays (atomically: a temporary file in the same folder, then renamed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, positions=self.positions, types=self.types, charges=self.charges, offsets=self.offsets,
                         smiles=np.array(self.smiles, dtype=np.str_), ids=self.ids, decoder=np.array(self.decoder),
                         property_names=np.array(list(self.properties)),
                         **{f"property_{k}": v for k, v in self.properties.items()})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def from_npz(cls, path: Path) -> "MoleculeTable":
        with np.load(path, allow_pickle=False) as z:
            names = [str(n) for n in z["property_names"]]
            return cls(z["positions"], z["types"], z["charges"], z["offsets"],
                       {n: z[f"property_{n}"] for n in names}, tuple(str(s) for s in z["smiles"]), z["ids"],
                       tuple(str(s) for s in z["decoder"]))


def qm9pack_folder() -> Path:
    """The installed ``qm9pack`` package's data folder (without importing it)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise QM9Unavailable("QM9 needs the pip package 'qm9pack' (pip install 'sciffusion[molecules]')")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def cache_dir() -> Path:
    return Path(os.environ.get("SCIFFUSION_CACHE", Path.home() / ".cache" / "sciffusion"))


def _parse_csvs(folder: Path) -> MoleculeTable:
    """Parse qm9pack's three CSVs (sorted by GDB-9 index)."""
    import pandas as pd

    columns = ["Index", "SMILES", "Elements", "XYZ_Ang", *(c for c, _, _ in PROPERTIES.values())]
    frame = pd.concat([pd.read_csv(folder / part, usecols=columns) for part in CSV_PARTS], ignore_index=True)
    frame = frame.sort_values("Index", kind="stable").reset_index(drop=True)
    code = {symbol: i for i, symbol in enumerate(QM9_DECODER)}
    elements = [json.loads(text.replace("'", '"')) for text in frame["Elements"]]
    coords = [json.loads(_TRAILING_DOT.sub(r"\1.0", text)) for text in frame["XYZ_Ang"]]  # "0." is not JSON
    sizes = np.array([len(e) for e in elements], dtype=np.int64)
    if any(len(c) != n for c, n in zip(coords, sizes)):
        raise ValueError("qm9pack: a molecule has different numbers of elements and coordinates")
    types = np.array([code[s] for e in elements for s in e], dtype=np.int64)
    positions = np.array([xyz for c in coords for xyz in c], dtype=np.float32).reshape(-1, 3)
    props = {name: frame[col].to_numpy(np.float64) * factor for name, (col, factor, _) in PROPERTIES.items()}
    return MoleculeTable(positions, types, np.zeros_like(types), np.concatenate([[0], np.cumsum(sizes)]),
                         props, tuple(frame["SMILES"].astype(str)), frame["Index"].to_numpy(np.int64))


def load_qm9() -> MoleculeTable:
    """All 130,831 molecules in ascending GDB-9 index, from the cache when it is there and sound."""
    version = metadata.version("qm9pack")
    path = cache_dir() / f"qm9pack_{version}_v{CACHE_VERSION}.npz"
    if path.is_file():
        try:
            table = MoleculeTable.from_npz(path)
            if len(table) == NUM_MOLECULES:
                return table
        except (OSError, ValueError, KeyError) as e:
            log.warning("QM9 cache %s is unreadable (%s): parsing the CSVs again", path, e)
    table = _parse_csvs(qm9pack_folder())
    if len(table) != NUM_MOLECULES:
        raise ValueError(f"qm9pack holds {len(table)} molecules, expected {NUM_MOLECULES}")
    table.to_npz(path)
    return table


def edm_split_rows(num_molecules: int = NUM_MOLECULES) -> dict[str, np.ndarray]:
    """EDM's train / valid / test rows into the ascending list of included molecules (each ascending)."""
    n_train, n_test = SPLIT_SIZES["train"], int(0.1 * num_molecules)
    n_valid = num_molecules - n_train - n_test
    perm = np.random.RandomState(0).permutation(num_molecules)  # = np.random.seed(0); np.random.permutation
    train, valid, test = np.split(perm, [n_train, n_train + n_valid])
    return {"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}


def load_qm9_split(split: str) -> MoleculeTable:
    """One of EDM's splits: ``train`` (100,000), ``valid`` (17,748) or ``test`` (13,083)."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown QM9 split '{split}' (known: {', '.join(SPLIT_SIZES)})")
    return load_qm9().subset(edm_split_rows()[split])
