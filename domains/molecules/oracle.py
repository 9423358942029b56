"""Physics and chemistry oracles for molecules: GFN2-xTB (through ``tblite``) and RDKit descriptors.

A molecule in plain arrays is ``positions`` (n, 3) in Angstrom, ``types`` (n,) integer indices into a decoder of
element symbols (QM9 with hydrogens: :data:`QM9_DECODER`) or the element symbols themselves, and optionally
``charges`` (n,) integer formal charges.

Units
-----
* xTB HOMO, LUMO and HOMO-LUMO gap: eV (tblite gives Hartree; 1 Hartree = :data:`HARTREE_TO_EV` eV).
* xTB dipole moment: Debye (tblite gives e*bohr; 1 e*bohr = :data:`E_BOHR_TO_DEBYE` D).
* xTB total energy: Hartree, as tblite gives it.
* tblite takes positions in Bohr: :func:`xtb_properties` converts (1 bohr = :data:`BOHR_IN_ANGSTROM` Angstrom).

A failed xTB calculation (SCF not converged, a tblite error, a NaN, atoms on top of each other, an element GFN2
does not cover, ...) is never raised: it is an :class:`XtbResult` with ``ok=False`` and the reason.

``tblite`` and ``rdkit`` are imported when first needed; a missing one is a one-line
:class:`sciffusion.extras.MissingDependency` naming the install command.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sciffusion.domains.molecules.qm9 import QM9_DECODER
from sciffusion.extras import require

log = logging.getLogger(__name__)


#: CODATA 2018: 1 Hartree in eV.
HARTREE_TO_EV = 27.211386245988
#: CODATA 2018: the Bohr radius in Angstrom.
BOHR_IN_ANGSTROM = 0.529177210903
#: 1 e*bohr (atomic unit of electric dipole moment, 8.4783536255e-30 C m) in Debye (1 D = 1e-21 / c C m).
E_BOHR_TO_DEBYE = 2.541746473

#: Element symbols by atomic number, 1..86 (GFN2-xTB is parametrised up to radon).
ELEMENTS: tuple[str, ...] = tuple("""
H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr Nb
Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au
Hg Tl Pb Bi Po At Rn""".split())
ATOMIC_NUMBER: dict[str, int] = {symbol: z for z, symbol in enumerate(ELEMENTS, start=1)}

#: An orbital counts as occupied when it holds more than this many electrons (spin-summed occupations: 2 for a
#: closed shell, 1 for a singly occupied orbital; tblite's Fermi smearing gives tiny fractions elsewhere).
OCCUPIED_THRESHOLD = 0.5


# --------------------------------------------------------------------------------------------------- GFN2-xTB


@dataclass(frozen=True)
class XtbResult:
    """One molecule's GFN2-xTB single point. With ``ok=False`` the numbers are NaN and ``reason`` says why."""

    ok: bool
    reason: str = ""
    energy: float = math.nan  # total energy, Hartree
    gap: float = math.nan  # HOMO-LUMO gap, eV
    homo: float = math.nan  # highest occupied orbital energy, eV
    lumo: float = math.nan  # lowest unoccupied orbital energy, eV
    dipole: float = math.nan  # |dipole moment|, Debye
    dipole_vector: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # Debye, centroid as origin
    charge: int = 0  # total charge (sum of the formal charges)
    uhf: int = 0  # unpaired electrons given to tblite: 0 for an even electron count, else 1
    n_electrons: int = 0
    n_atoms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def atomic_numbers(types: Sequence[int] | Sequence[str] | np.ndarray,
                   decoder: Sequence[str] | None = QM9_DECODER) -> np.ndarray:
    """Atomic numbers of ``types``: integer indices into ``decoder`` (``decoder=None``: already atomic
    numbers), or element symbols. Raises ``ValueError`` on an unknown index or symbol."""
    arr = np.asarray(types)
    if arr.ndim != 1:
        raise ValueError(f"types must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind in "USO":
        symbols = [str(s) for s in arr]
    elif arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
        idx = arr.astype(np.int64)
        if decoder is None:
            if idx.size and (idx.min() < 1 or idx.max() > len(ELEMENTS)):
                raise ValueError(f"atomic numbers must be in 1..{len(ELEMENTS)}, got {sorted(set(idx.tolist()))}")
            return idx
        if idx.size and (idx.min() < 0 or idx.max() >= len(decoder)):
            raise ValueError(f"atom type out of range for decoder {tuple(decoder)}: {sorted(set(idx.tolist()))}")
        symbols = [decoder[i] for i in idx]
    else:
        raise ValueError(f"types must be integers or element symbols, got dtype {arr.dtype}")
    unknown = sorted({s for s in symbols if s not in ATOMIC_NUMBER})
    if unknown:
        raise ValueError(f"elements not covered by GFN2-xTB (H..Rn): {unknown}")
    return np.array([ATOMIC_NUMBER[s] for s in symbols], dtype=np.int64)


def _failure(reason: str, **info: Any) -> XtbResult:
    return XtbResult(ok=False, reason=reason, **info)


def xtb_properties(positions: np.ndarray, types: Sequence[int] | Sequence[str] | np.ndarray,
                   charges: Sequence[int] | np.ndarray | None = None, decoder: Sequence[str] | None = QM9_DECODER,
                   *, accuracy: float = 1.0, max_iter: int = 250, min_distance: float = 0.5) -> XtbResult:
    """GFN2-xTB single point of one molecule, in vacuum; never raises.

    ``positions`` (n, 3) in Angstrom (converted to Bohr for tblite); ``types`` (n,) indices into ``decoder``
    (or element symbols; ``decoder=None``: atomic numbers); ``charges`` (n,) formal charges, whose sum is the
    total charge (default neutral). The electron count is ``sum(Z) - charge``; tblite gets ``uhf=0`` unpaired
    electrons when it is even, else ``uhf=1`` (recorded in the result). Positions are shifted so that their
    centroid is the origin (the dipole of a charged molecule depends on the origin; a neutral one's does not).
    Two atoms closer than ``min_distance`` Angstrom are a failure without calling tblite (tblite itself refuses
    only coincident atoms, and returns absurd numbers, e.g. a 140 eV gap, for atoms 0.35 A apart).

    HOMO is the highest-energy orbital with more than :data:`OCCUPIED_THRESHOLD` electrons, LUMO the
    lowest-energy one with at most that; gap = LUMO - HOMO in eV.
    """
    try:
        pos = np.asarray(positions, dtype=np.float64)
        numbers = atomic_numbers(types, decoder)
        if pos.ndim != 2 or pos.shape[1] != 3 or pos.shape[0] != numbers.shape[0]:
            return _failure(f"bad shapes: positions {pos.shape}, types {numbers.shape}")
        n = int(numbers.shape[0])
        if charges is None:
            formal = np.zeros(n, dtype=np.int64)
        else:
            formal = np.asarray(charges)
            if formal.shape != (n,):
                return _failure(f"bad shapes: charges {formal.shape}, types {numbers.shape}", n_atoms=n)
            formal = formal.astype(np.int64)
    except (ValueError, TypeError) as err:
        return _failure(f"bad input: {err}")
    charge = int(formal.sum())
    n_electrons = int(numbers.sum()) - charge
    uhf = n_electrons % 2
    info = dict(charge=charge, uhf=uhf, n_electrons=n_electrons, n_atoms=n)
    if n == 0:
        return _failure("no atoms", **info)
    if n_electrons <= 0:
        return _failure(f"no electrons (sum Z={int(numbers.sum())}, charge={charge})", **info)
    if not np.all(np.isfinite(pos)):
        return _failure("non-finite positions", **info)
    if n > 1:
        diff = pos[:, None, :] - pos[None, :, :]
        dist = np.sqrt((diff ** 2).sum(-1))
        dist[np.diag_indices(n)] = np.inf
        i, j = np.unravel_index(np.argmin(dist), dist.shape)
        if dist[i, j] < min_distance:
            return _failure(f"atoms {min(i, j)} and {max(i, j)} are {dist[i, j]:.3g} A apart "
                            f"(< min_distance {min_distance} A)", **info)
    pos = pos - pos.mean(axis=0)
    interface = require("tblite.interface", "molecules", "The GFN2-xTB oracle")
    try:
        calc = interface.Calculator("GFN2-xTB", numbers, pos / BOHR_IN_ANGSTROM, charge=float(charge), uhf=uhf)
        calc.set("verbosity", 0)
        calc.set("accuracy", float(accuracy))
        calc.set("max-iter", int(max_iter))
        res = calc.singlepoint()
        energy = float(res.get("energy"))
        dipole_au = np.asarray(res.get("dipole"), dtype=np.float64).reshape(3)
        eps = np.asarray(res.get("orbital-energies"), dtype=np.float64)
        occ = np.asarray(res.get("orbital-occupations"), dtype=np.float64)
    except Exception as err:  # tblite raises TBLiteRuntimeError / TBLiteValueError; anything else is a failure too
        message = " ".join(str(err).split()) or type(err).__name__
        return _failure(f"tblite: {message}", **info)
    if eps.ndim == 2:  # a spin-polarised calculation gives (2, norb): take both channels
        eps, occ = eps.reshape(-1), occ.reshape(-1)
    occupied = occ > OCCUPIED_THRESHOLD
    if not occupied.any() or occupied.all():
        return _failure("no occupied or no unoccupied orbital", energy=energy, **info)
    homo = float(eps[occupied].max()) * HARTREE_TO_EV
    lumo = float(eps[~occupied].min()) * HARTREE_TO_EV
    dipole_d = dipole_au * E_BOHR_TO_DEBYE
    values = (energy, homo, lumo, *dipole_d.tolist())
    if not all(math.isfinite(v) for v in values):
        return _failure("tblite returned NaN or inf", **info)
    return XtbResult(ok=True, energy=energy, gap=lumo - homo, homo=homo, lumo=lumo,
                     dipole=float(np.linalg.norm(dipole_d)), dipole_vector=tuple(float(v) for v in dipole_d), **info)


def _unpack(molecule: Any) -> tuple[Any, Any, Any]:
    """(positions, types, charges) of a tuple ``(positions, types[, charges])``, a mapping with those keys, or an
    object with ``positions`` and ``symbols`` (or ``types``) and optionally ``charges`` attributes."""
    if isinstance(molecule, Mapping):
        types = molecule["types"] if "types" in molecule else molecule["symbols"]
        return molecule["positions"], types, molecule.get("charges")
    if isinstance(molecule, (tuple, list)):
        if len(molecule) == 2:
            return molecule[0], molecule[1], None
        return molecule[0], molecule[1], molecule[2]
    types = getattr(molecule, "symbols", None)
    if types is None:
        types = molecule.types
    return molecule.positions, types, getattr(molecule, "charges", None)


def _xtb_job(job: tuple[Any, Sequence[str] | None, dict[str, Any]]) -> XtbResult:
    molecule, decoder, kwargs = job
    try:
        positions, types, charges = _unpack(molecule)
    except (KeyError, AttributeError, IndexError, TypeError) as err:
        return _failure(f"bad molecule record: {err!r}")
    return xtb_properties(positions, types, charges, decoder, **kwargs)


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def xtb_batch(molecules: Iterable[Any], decoder: Sequence[str] | None = QM9_DECODER, *, workers: int = 0,
              **kwargs: Any) -> list[XtbResult]:
    """:func:`xtb_properties` of each molecule, in order; never raises for one molecule's failure.

    Each molecule is a tuple ``(positions, types[, charges])``, a mapping with keys ``positions``, ``types`` (or
    ``symbols``) and optionally ``charges``, or an object with those attributes (e.g.
    :class:`sciffusion.domains.molecules.io.Conformer`). ``workers`` > 1 evaluates in that many spawned
    processes (each with ``OMP_NUM_THREADS=1`` unless set); 0 or 1 evaluates here, sequentially. A worker
    process that dies (e.g. a crash inside tblite's Fortran) fails the molecules it had not returned.
    ``kwargs`` go to :func:`xtb_properties`.
    """
    jobs = [(m, decoder, kwargs) for m in molecules]
    if workers <= 1 or len(jobs) <= 1:
        results = [_xtb_job(job) for job in jobs]
    else:
        import multiprocessing

        results = []
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init) as pool:
            futures = [pool.submit(_xtb_job, job) for job in jobs]
            for future in futures:
                try:
                    results.append(future.result())
                except BrokenProcessPool:
                    results.append(_failure("xTB worker process died"))
                except Exception as err:  # e.g. a record that cannot be pickled
                    results.append(_failure(f"xTB worker error: {err!r}"))
    died = sum(r.reason == "xTB worker process died" for r in results)
    if died:
        log.warning("xTB: the worker pool died; %d molecules were not evaluated (with workers > 1, call from an "
                    "importable script under `if __name__ == \"__main__\":`)", died)
    failed = sum(not r.ok for r in results)
    if failed:
        reasons: dict[str, int] = {}
        for r in results:
            if not r.ok:
                key = r.reason.split(":")[0]
                reasons[key] = reasons.get(key, 0) + 1
        log.info("xTB: %d of %d molecules failed (%s)", failed, len(results),
                 ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())))
    return results


def largest_fragment_geometry(positions: np.ndarray, types: Sequence[int] | np.ndarray,
                              decoder: Sequence[str] = QM9_DECODER) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The 3-D molecule a valid design's SMILES names, for the physics oracle: EDM's molecule of a generated
    geometry (its bonds from the bond-length tables, :func:`~sciffusion.domains.molecules.metrics.build_molecule`),
    sanitised; its largest fragment (the first on ties, as EDM's validity takes it) with the generated
    positions; and the implicit hydrogens that sanitisation gave under-bonded atoms placed by RDKit
    (``AddHs(addCoords=True)``). Returns ``(positions (m, 3) Angstrom, atomic numbers (m,), hydrogens added)``,
    or None where EDM's molecule does not sanitise (not valid). Without this, xTB would see every stray atom and
    radical fragment of the sample (open shells, near-zero gaps) while RDKit's descriptors see the SMILES."""
    from sciffusion.domains.molecules.metrics import build_molecule, mol2smiles

    chem = _rdkit("the oracle geometry")
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    mol = build_molecule(pos, types, decoder)
    if mol2smiles(mol) is None:
        return None
    conf = chem.Conformer(mol.GetNumAtoms())
    for i, xyz in enumerate(pos):
        conf.SetAtomPosition(i, xyz.tolist())
    mol.AddConformer(conf, assignId=True)
    fragments = chem.GetMolFrags(mol, asMols=True)
    largest = max(fragments, key=lambda m: m.GetNumAtoms())
    n_before = largest.GetNumAtoms()
    with_h = chem.AddHs(largest, addCoords=True)
    xyz = with_h.GetConformer().GetPositions()
    numbers = np.array([a.GetAtomicNum() for a in with_h.GetAtoms()], dtype=np.int64)
    return xyz, numbers, with_h.GetNumAtoms() - n_before


# --------------------------------------------------------------------------------------------------- RDKit


def _rdkit(purpose: str) -> Any:
    return require("rdkit.Chem", "molecules", purpose)


def qed(mol: Any) -> float:
    """RDKit's QED drug-likeness (``rdkit.Chem.QED.qed``), in [0, 1]."""
    _rdkit("QED")
    from rdkit.Chem import QED

    return float(QED.qed(mol))


def logp(mol: Any) -> float:
    """Wildman-Crippen logP (``Crippen.MolLogP``)."""
    _rdkit("logP")
    from rdkit.Chem import Crippen

    return float(Crippen.MolLogP(mol))


def tpsa(mol: Any) -> float:
    """Topological polar surface area in Angstrom^2 (``rdMolDescriptors.CalcTPSA``)."""
    _rdkit("TPSA")
    from rdkit.Chem import rdMolDescriptors

    return float(rdMolDescriptors.CalcTPSA(mol))


def mol_weight(mol: Any) -> float:
    """Average molecular weight in g/mol, hydrogens (implicit and explicit) included (``Descriptors.MolWt``)."""
    _rdkit("Molecular weight")
    from rdkit.Chem import Descriptors

    return float(Descriptors.MolWt(mol))


def rdkit_descriptors(mol: Any) -> dict[str, float]:
    """QED, logP, TPSA (Angstrom^2) and molecular weight (g/mol) of a sanitised RDKit Mol.
    Raises ``ValueError`` for ``None`` (what RDKit's parsers return for bad input)."""
    if mol is None:
        raise ValueError("rdkit_descriptors needs an RDKit Mol, got None")
    return {"qed": qed(mol), "logp": logp(mol), "tpsa": tpsa(mol), "mol_weight": mol_weight(mol)}


# --------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class OracleProperty:
    """An oracle property: ``fn`` reads it from ``source`` (``"xtb"``: an :class:`XtbResult`, so that one xTB run
    gives every xTB property; ``"rdkit"``: an RDKit Mol), in ``unit``, with a sensible range ``[low, high]``."""

    name: str
    fn: Callable[[Any], float]
    unit: str
    low: float
    high: float
    source: str
    description: str

    def __call__(self, obj: Any) -> float:
        return self.fn(obj)

    @property
    def range(self) -> tuple[float, float]:
        return (self.low, self.high)


def _field(name: str) -> Callable[[XtbResult], float]:
    def read(result: XtbResult) -> float:
        return float(getattr(result, name)) if result.ok else math.nan

    read.__name__ = f"xtb_{name}"
    return read


ORACLES: dict[str, OracleProperty] = {p.name: p for p in (
    OracleProperty("xtb_gap", _field("gap"), "eV", 0.0, 30.0, "xtb", "GFN2-xTB HOMO-LUMO gap"),
    OracleProperty("xtb_dipole", _field("dipole"), "Debye", 0.0, 30.0, "xtb", "GFN2-xTB dipole moment magnitude"),
    OracleProperty("xtb_energy", _field("energy"), "Hartree", -1000.0, 0.0, "xtb", "GFN2-xTB total energy"),
    OracleProperty("qed", qed, "", 0.0, 1.0, "rdkit", "RDKit QED drug-likeness"),
    OracleProperty("logp", logp, "", -20.0, 20.0, "rdkit", "Wildman-Crippen logP"),
    OracleProperty("tpsa", tpsa, "Angstrom^2", 0.0, 500.0, "rdkit", "topological polar surface area"),
    OracleProperty("mol_weight", mol_weight, "g/mol", 0.0, 2000.0, "rdkit", "average molecular weight"),
)}


def get_oracle(name: str) -> OracleProperty:
    """The registered property ``name``; ``ValueError`` (one line, listing the known names) otherwise."""
    try:
        return ORACLES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown oracle property {name!r}; known: {', '.join(sorted(ORACLES))}") from None


def check_target(name: str, value: float) -> float:
    """``value`` as a float if ``name`` is a known oracle property and ``value`` is inside its sensible range;
    otherwise ``ValueError`` with a one-line message."""
    prop = get_oracle(name)
    unit = f" {prop.unit}" if prop.unit else ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"target for {name} must be a number, got {value!r}") from None
    if not (prop.low <= number <= prop.high):  # NaN fails this too
        raise ValueError(f"target {name}={value!r}{unit} is outside its sensible range "
                         f"[{prop.low:g}, {prop.high:g}]{unit}")
    return number


# ------------------------------------------------------------------------------------------- oracle labels
XTB_LABELS = ("xtb_gap", "xtb_dipole")  # what GFN2-xTB gives every training molecule on its own geometry
DESCRIPTOR_LABELS = ("logp", "qed")  # RDKit descriptors of every training molecule, read as designs are scored
LABELS = XTB_LABELS + DESCRIPTOR_LABELS


def descriptor_labels(molecules: Sequence[tuple[np.ndarray, np.ndarray]],
                      decoder: Sequence[str] = QM9_DECODER) -> dict[str, np.ndarray]:
    """RDKit logP and QED of each molecule ``(positions, types)``, found the way a generated molecule's are (EDM's
    bonds from the geometry, sanitised, its largest fragment re-read from SMILES): ``{"logp": (M,), "qed": (M,)}``,
    NaN where the molecule is not EDM-valid."""
    from sciffusion.domains.molecules.metrics import molecule_smiles

    chem = _rdkit("descriptor labels")
    values = {name: np.full(len(molecules), math.nan) for name in DESCRIPTOR_LABELS}
    for k, (positions, types) in enumerate(molecules):
        smiles, _ = molecule_smiles(positions, types, tuple(decoder))
        mol = chem.MolFromSmiles(smiles) if smiles is not None else None
        if mol is not None:
            values["logp"][k], values["qed"][k] = logp(mol), qed(mol)
    return values


def cached_xtb_labels(ids: np.ndarray, molecules: Sequence[tuple[np.ndarray, np.ndarray]], path: Path,
                      decoder: Sequence[str] = QM9_DECODER, workers: int = 0) -> dict[str, np.ndarray]:
    """GFN2-xTB gap (eV) and dipole (D) of each molecule ``(positions, types)`` on its given geometry, NaN where
    xTB fails: ``{"xtb_gap": (M,), "xtb_dipole": (M,)}`` in the order of ``ids`` ``(M,)``. Computed once per id and
    kept in ``path`` (an ``.npz`` of ``ids``, ``xtb_gap``, ``xtb_dipole``; written atomically, extended when new
    ids are asked for)."""
    from sciffusion.train.checkpoint import atomic_path

    ids = np.asarray(ids, dtype=np.int64)
    known: dict[int, tuple[float, float]] = {}
    if path.is_file():
        with np.load(path) as f:
            known = {int(i): (float(g), float(d)) for i, g, d in zip(f["ids"], f["xtb_gap"], f["xtb_dipole"])}
    todo = [k for k, i in enumerate(ids) if int(i) not in known]
    if todo:
        log.info("GFN2-xTB labels: %d molecules to compute (%d cached)", len(todo), len(ids) - len(todo))
        results = xtb_batch([(*molecules[k], np.zeros(len(molecules[k][1]), dtype=np.int64)) for k in todo], decoder,
                            workers=workers)
        for k, r in zip(todo, results):
            known[int(ids[k])] = (r.gap, r.dipole) if r.ok else (math.nan, math.nan)
        order = sorted(known)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=np.array(order, dtype=np.int64), xtb_gap=np.array([known[i][0] for i in order]),
                     xtb_dipole=np.array([known[i][1] for i in order]))
    return {"xtb_gap": np.array([known[int(i)][0] for i in ids]), "xtb_dipole": np.array([known[int(i)][1] for i in ids])}
