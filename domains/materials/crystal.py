"""The ``crystal`` representation: a periodic structure as the core's fields, and files <-> structures.

One crystal of ``n`` atoms is a torch-geometric ``Data`` with

* ``frac_coords`` ``(n, 3)`` float32 in ``[0, 1)``: fractional coordinates, a point on the 3-torus per atom;
* ``atom_types`` ``(n,)`` long: indices into the run's element list (:attr:`CrystalTable.elements`);
* ``lattice`` ``(1, 6)`` float32: the cell as six numbers that do not depend on the Cartesian frame
  (:class:`LatticeCoder`): the log of each length divided by the cube root of the atom count, and each angle
  through a logit map of ``(59, 121)`` degrees, standardised with the training set's mean and spread;
* ``properties`` ``(1, P)`` float32 (optional): conditioning properties standardised the same way.

Every structure is first brought to CDVAE's canonical cell: the Niggli-reduced cell, rebuilt from its six lattice
parameters (pymatgen's standard orientation), fractional coordinates wrapped into ``[0, 1)``. So an equivalent
input (another origin, permuted sites, a rotated Cartesian frame, another cell of the same lattice) gives the same
lattice field, the same atoms as a set, and fractional coordinates that differ by a common shift, which the
network cannot see (:mod:`sciffusion.domains.materials.nets`).
"""
from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

ANGLE_LOW, ANGLE_HIGH = 59.0, 121.0  # the logit map's open interval (Niggli-reduced angles lie in [60, 120])
MIN_SPREAD = 0.05  # floor of the standardisation spread (a set of cubic cells has every angle at 90 degrees)


class CrystalError(ValueError):
    """A structure the representation cannot hold (the message says why, in one line)."""


# ------------------------------------------------------------------------------------------------
# Canonical cells and the lattice field
# ------------------------------------------------------------------------------------------------
def canonical_structure(structure: Any) -> Any:
    """CDVAE's ``build_crystal(niggli=True, primitive=False)``: the Niggli-reduced cell rebuilt from its lattice
    parameters, fractional coordinates in ``[0, 1)``. Refuses partial occupancies and empty structures."""
    from pymatgen.core import Lattice, Structure

    if len(structure) == 0:
        raise CrystalError("the structure has no atoms")
    if not structure.is_ordered:
        raise CrystalError("partial occupancies (a disordered structure) are not supported")
    reduced = structure.get_reduced_structure()
    lattice = Lattice.from_parameters(*reduced.lattice.parameters)
    frac = np.mod(reduced.frac_coords, 1.0)
    frac[frac >= 1.0] = 0.0
    return Structure(lattice, [site.specie.symbol for site in reduced], frac, coords_are_cartesian=False)


def lattice_features(lengths: np.ndarray, angles: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """Lengths ``(M, 3)`` Angstrom, angles ``(M, 3)`` degrees, atom counts ``(M,)`` -> raw features ``(M, 6)``:
    ``log(length / n^(1/3))`` and ``logit((angle - 59) / 62)``."""
    lengths, angles = np.asarray(lengths, dtype=np.float64), np.asarray(angles, dtype=np.float64)
    scaled = np.log(lengths / np.cbrt(np.asarray(n_atoms, dtype=np.float64))[:, None])
    u = np.clip((angles - ANGLE_LOW) / (ANGLE_HIGH - ANGLE_LOW), 1e-6, 1 - 1e-6)
    return np.concatenate([scaled, np.log(u / (1 - u))], axis=1)


def lattice_parameters(features: np.ndarray, n_atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`lattice_features`: raw features ``(M, 6)`` -> lengths ``(M, 3)``, angles ``(M, 3)``."""
    features = np.asarray(features, dtype=np.float64)
    lengths = np.exp(np.clip(features[:, :3], -10, 10)) * np.cbrt(np.asarray(n_atoms, dtype=np.float64))[:, None]
    angles = ANGLE_LOW + (ANGLE_HIGH - ANGLE_LOW) / (1 + np.exp(-np.clip(features[:, 3:], -30, 30)))
    return lengths, angles


@dataclass(frozen=True)
class Standardiser:
    """``(value - mean) / spread`` per column (spread floored at :data:`MIN_SPREAD`)."""

    mean: tuple[float, ...]
    spread: tuple[float, ...]

    @classmethod
    def of(cls, values: np.ndarray) -> "Standardiser":
        values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        return cls(tuple(float(v) for v in values.mean(0)), tuple(float(max(v, MIN_SPREAD)) for v in values.std(0)))

    def normalise(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - np.array(self.mean)) / np.array(self.spread)

    def denormalise(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) * np.array(self.spread) + np.array(self.mean)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "spread": list(self.spread)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Standardiser":
        return cls(tuple(float(v) for v in raw["mean"]), tuple(float(v) for v in raw["spread"]))


# ------------------------------------------------------------------------------------------------
# A table of crystals
# ------------------------------------------------------------------------------------------------
@dataclass
class CrystalTable:
    """Canonical crystals in flat arrays (row ``i`` of the per-crystal arrays is crystal ``i``).

    Attributes:
        frac_coords: ``(N, 3)`` float64 in ``[0, 1)``, all atoms.
        atomic_numbers: ``(N,)`` int64.
        offsets: ``(M + 1,)`` int64: crystal ``i`` holds rows ``offsets[i]:offsets[i + 1]``.
        lengths: ``(M, 3)`` Angstrom; angles: ``(M, 3)`` degrees.
        properties: name -> ``(M,)`` float64 (NaN where unknown).
        ids: ``(M,)`` an identifier per crystal (material id, file name, row number).
    """

    frac_coords: np.ndarray
    atomic_numbers: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    angles: np.ndarray
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    ids: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def elements(self) -> list[str]:
        """The elements present, by atomic number."""
        from pymatgen.core import Element

        return [Element.from_Z(int(z)).symbol for z in sorted(set(self.atomic_numbers.tolist()))]

    def structure(self, i: int) -> Any:
        """Crystal ``i`` as a pymatgen ``Structure``."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return make_structure(self.lengths[i], self.angles[i], self.atomic_numbers[lo:hi], self.frac_coords[lo:hi])

    def subset(self, rows: Sequence[int]) -> "CrystalTable":
        rows = np.asarray(rows, dtype=np.int64)
        return from_structures([self.structure(int(i)) for i in rows],
                               {k: v[rows] for k, v in self.properties.items()}, [self.ids[int(i)] for i in rows])[0]


def make_structure(lengths: Sequence[float], angles: Sequence[float], atomic_numbers: Sequence[int],
                   frac_coords: np.ndarray) -> Any:
    """A pymatgen ``Structure`` from lattice parameters (Angstrom, degrees), atomic numbers ``(n,)`` and fractional
    coordinates ``(n, 3)``."""
    from pymatgen.core import Lattice, Structure

    lattice = Lattice.from_parameters(*[float(v) for v in lengths], *[float(v) for v in angles])
    return Structure(lattice, [int(z) for z in atomic_numbers], np.asarray(frac_coords, dtype=np.float64),
                     coords_are_cartesian=False)


def from_structures(structures: Iterable[Any], properties: dict[str, np.ndarray] | None = None,
                    ids: Sequence[str] | None = None, max_atoms: int = 0) -> tuple[CrystalTable, dict[str, int]]:
    """Canonical crystals of ``structures`` (a ``None`` entry or a structure the representation cannot hold is
    skipped and counted by reason; its property rows are dropped too). ``max_atoms > 0`` skips larger cells."""
    properties = properties or {}
    frac, numbers, sizes, lengths, angles, kept, kept_ids = [], [], [], [], [], [], []
    skipped: Counter = Counter()
    for i, structure in enumerate(structures):
        if structure is None:
            skipped["unreadable"] += 1
            continue
        try:
            canon = canonical_structure(structure)
        except CrystalError as e:
            skipped[str(e)] += 1
            continue
        if max_atoms and len(canon) > max_atoms:
            skipped[f"more than {max_atoms} atoms per cell"] += 1
            continue
        frac.append(canon.frac_coords)
        numbers.append([site.specie.Z for site in canon])
        sizes.append(len(canon))
        lengths.append(canon.lattice.abc)
        angles.append(canon.lattice.angles)
        kept.append(i)
        kept_ids.append(str(ids[i]) if ids is not None else str(i))
    table = CrystalTable(
        np.concatenate(frac).astype(np.float64) if frac else np.zeros((0, 3)),
        np.concatenate([np.asarray(z, dtype=np.int64) for z in numbers]) if numbers else np.zeros(0, np.int64),
        np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        np.asarray(lengths, dtype=np.float64).reshape(-1, 3), np.asarray(angles, dtype=np.float64).reshape(-1, 3),
        {k: np.asarray(v, dtype=np.float64)[kept] for k, v in properties.items()}, tuple(kept_ids))
    return table, dict(skipped)


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def parse_cif(text: str) -> Any:
    """A CIF string -> pymatgen ``Structure`` (the first block); a malformed CIF is a :class:`CrystalError`."""
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_str(text, fmt="cif")
    except Exception as e:  # pymatgen raises ValueError, KeyError, IndexError, ... on bad CIFs
        raise CrystalError(f"malformed CIF ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None


def read_csv_crystals(path: Path, cif_column: str = "cif", properties: Sequence[str] = (),
                      id_column: str = "material_id", max_atoms: int = 0) -> tuple[CrystalTable, dict[str, int]]:
    """A CSV with a CIF column (Perov-5 / MP-20 layout: ``material_id, cif, <properties>``) -> crystals; rows with a
    malformed CIF or a structure the representation cannot hold are skipped and counted by reason."""
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in (cif_column, *properties) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(map(str, frame.columns))})")
    structures, skipped = [], Counter()
    for text in frame[cif_column]:
        try:
            structures.append(parse_cif(str(text)))
        except CrystalError as e:
            structures.append(None)
            skipped[str(e).split(" (")[0]] += 1
    ids = frame[id_column].astype(str).tolist() if id_column in frame.columns else [str(i) for i in range(len(frame))]
    values = {name: pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64) for name in properties}
    table, more = from_structures(structures, values, ids, max_atoms)
    skipped.update({k: v for k, v in more.items() if k != "unreadable"})
    return table, dict(skipped)


def read_cif_folder(path: Path, max_atoms: int = 0) -> tuple[CrystalTable, dict[str, int]]:
    """Every ``*.cif`` file of a folder (sorted by name) -> crystals, bad files skipped and counted by reason."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder of CIF files")
    files = sorted(path.glob("*.cif"))
    if not files:
        raise ValueError(f"{path}: no .cif files")
    structures, skipped = [], Counter()
    for file in files:
        try:
            structures.append(parse_cif(file.read_text(errors="replace")))
        except CrystalError as e:
            structures.append(None)
            skipped[str(e).split(" (")[0]] += 1
    table, more = from_structures(structures, {}, [f.name for f in files], max_atoms)
    skipped.update({k: v for k, v in more.items() if k != "unreadable"})
    return table, dict(skipped)


def bundled_structures() -> list[tuple[str, Any]]:
    """The structures that ship inside the pymatgen wheel (``pymatgen/util/structures/*.json``: Si, SiO2, LiFePO4,
    perovskites, ...), sorted by name, as ``(name, Structure)``: the embedded default of the README."""
    import pymatgen.util as util
    from pymatgen.core import Structure

    folder = Path(util.__file__).parent / "structures"
    out = []
    for file in sorted(folder.glob("*.json")):
        try:
            out.append((file.stem, Structure.from_file(file)))
        except Exception as e:  # a file pymatgen itself cannot read: not ours to fix
            log.info("pymatgen bundled structure %s skipped (%s)", file.name, e)
    return out


def write_cif(path: Path, structure: Any, symprec: float | None = 0.1) -> None:
    """A structure as CIF with pymatgen's writer (``symprec``: symmetrised with spglib at that tolerance, else P1)."""
    from pymatgen.io.cif import CifWriter

    try:
        writer = CifWriter(structure, symprec=symprec) if symprec else CifWriter(structure)
    except Exception:  # spglib cannot symmetrise (e.g. overlapping atoms): plain P1
        writer = CifWriter(structure)
    path.write_text(str(writer))


def space_group(structure: Any, symprec: float = 0.1) -> tuple[str, int]:
    """spglib's international symbol and number at ``symprec`` (``("", 0)`` if it fails)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
        return analyzer.get_space_group_symbol(), int(analyzer.get_space_group_number())
    except Exception:
        return "", 0


def parse_composition(text: str, elements: Sequence[str], max_atoms: int) -> list[str]:
    """A formula as written (``SrTiO3``: 5 atoms; ``Sr2Ti2O6``: 10) -> its atoms' element symbols, checked against the
    run's ``elements`` and ``max_atoms`` (one-line :class:`CrystalError` otherwise)."""
    from pymatgen.core import Composition, Element

    try:
        composition = Composition(text)
    except Exception:
        raise CrystalError(f"--composition {text!r} is not a chemical formula") from None
    atoms: list[str] = []
    for element, amount in composition.items():
        if not isinstance(element, Element):
            raise CrystalError(f"--composition {text!r}: unknown element {element}")
        if abs(amount - round(amount)) > 1e-8:
            raise CrystalError(f"--composition {text!r}: {element} has a fractional amount {amount:g}")
        atoms += [element.symbol] * int(round(amount))
    unknown = sorted(set(atoms) - set(elements))
    if unknown:
        raise CrystalError(f"--composition {text!r}: element(s) {', '.join(unknown)} not in this run's training "
                           f"elements ({', '.join(elements)})")
    if not atoms or len(atoms) > max_atoms:
        raise CrystalError(f"--composition {text!r} has {len(atoms)} atoms; this run takes 1 to {max_atoms} per cell")
    return atoms


__all__ = ["CrystalError", "CrystalTable", "Standardiser", "bundled_structures", "canonical_structure",
           "from_structures", "lattice_features", "lattice_parameters", "make_structure",
           "parse_cif", "parse_composition", "read_cif_folder", "read_csv_crystals", "space_group", "write_cif"]
