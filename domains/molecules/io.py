"""Molecules <-> files through RDKit: SMILES and SDF to 3-D conformers, conformers to SDF and PNG.

Reading never lets one bad record kill a long job: invalid SMILES, elements outside a caller-given set, too many
atoms, molecules RDKit cannot embed, SDF records RDKit cannot read or that have no 3-D coordinates are each
skipped and counted by reason (a ``skipped`` dict reason -> count, also logged as one summary line).

Skip reasons: ``invalid_smiles``, ``unsupported_element``, ``too_many_atoms``, ``embed_failed``,
``rdkit_error`` (anything else RDKit raised for that molecule), ``unreadable_record`` (an SDF record RDKit
returns as None, e.g. one it cannot sanitise) and ``no_3d_coordinates`` (an SDF record with no conformer, with
every coordinate zero, or flagged 2D with every z zero).

Writing a generated molecule that RDKit cannot sanitise: :func:`mol_from_arrays` keeps it *unsanitised*
(atoms, formal charges, coordinates and whatever bonds it found; tag ``sciffusion_sanitized`` = 0) and
:func:`write_sdf` writes it as it is; only if RDKit cannot write even that does it write the atoms alone (tag
``sciffusion_sdf_fallback`` = ``atoms_only``). Read such records back with ``SDMolSupplier(..., sanitize=False)``.
"""
from __future__ import annotations

import hashlib
import io as _io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sciffusion.extras import require
from sciffusion.train.checkpoint import atomic_path

from sciffusion.domains.molecules.qm9 import QM9_DECODER

require("rdkit", "molecules", "Molecule I/O")
from rdkit import Chem, rdBase  # noqa: E402
from rdkit.Chem import AllChem, Draw, rdDepictor, rdDetermineBonds  # noqa: E402
from rdkit.Chem.Draw import rdMolDraw2D  # noqa: E402

log = logging.getLogger(__name__)

_PT = Chem.GetPeriodicTable()
_BOND_TYPE = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE, 4: Chem.BondType.AROMATIC}
_BOND_ORDER = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3, Chem.BondType.AROMATIC: 4}
#: Bumped whenever the cache layout or the conformer recipe changes (part of the cache key).
CACHE_VERSION = 1


@dataclass
class Conformer:
    """One molecule with 3-D coordinates.

    ``positions`` (n, 3) float64 Angstrom; ``symbols`` the n element symbols; ``charges`` (n,) int64 formal
    charges; ``smiles`` the canonical SMILES (hydrogens implicit, stereo from the input); ``bonds`` (m, 2) int64
    atom indices with ``bond_orders`` (m,) int64: 1, 2, 3 (Kekule form), 4 aromatic (only where RDKit could not
    kekulise), 0 any other kind; ``force_field`` the optimiser used: ``MMFF``, ``UFF`` (no MMFF parameters),
    ``none`` (neither had parameters: the raw ETKDG geometry) or ``sdf`` (read from a file); ``source_index``
    the molecule's index in the input list or file.
    """

    positions: np.ndarray
    symbols: tuple[str, ...]
    charges: np.ndarray
    smiles: str
    bonds: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    bond_orders: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    force_field: str = "none"
    source_index: int = -1
    name: str = ""

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)

    @property
    def numbers(self) -> np.ndarray:
        """Atomic numbers (n,)."""
        return np.array([_PT.GetAtomicNumber(s) for s in self.symbols], dtype=np.int64)

    def types(self, decoder: Sequence[str] = QM9_DECODER) -> np.ndarray:
        """Atom types (n,) as indices into ``decoder``; ``ValueError`` for an element it lacks."""
        index = {s: i for i, s in enumerate(decoder)}
        missing = sorted(set(self.symbols) - set(index))
        if missing:
            raise ValueError(f"elements {missing} are not in the decoder {tuple(decoder)}")
        return np.array([index[s] for s in self.symbols], dtype=np.int64)

    def to_mol(self) -> Chem.Mol:
        """An RDKit Mol from these atoms, charges, coordinates and the stored bonds (see :func:`mol_from_arrays`)."""
        return mol_from_arrays(self.positions, list(self.symbols), charges=self.charges, bonds=self.bonds,
                               bond_orders=self.bond_orders)


# ------------------------------------------------------------------------------------------ RDKit Mol <-> arrays


def _bond_arrays(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    kek = Chem.Mol(mol)
    try:
        Chem.Kekulize(kek, clearAromaticFlags=True)
    except Exception:  # keep the aromatic flags where there is no Kekule form
        kek = mol
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in kek.GetBonds()], dtype=np.int64)
    orders = np.array([_BOND_ORDER.get(b.GetBondType(), 0) for b in kek.GetBonds()], dtype=np.int64)
    return bonds.reshape(-1, 2), orders


def _canonical_smiles(mol: Chem.Mol) -> str:
    try:
        return Chem.MolToSmiles(Chem.RemoveHs(mol))
    except Exception:
        return Chem.MolToSmiles(mol)


def _conformer_from_mol(mol: Chem.Mol, smiles: str, force_field: str, index: int, name: str = "") -> Conformer:
    bonds, orders = _bond_arrays(mol)
    return Conformer(
        positions=np.array(mol.GetConformer().GetPositions(), dtype=np.float64).reshape(-1, 3),
        symbols=tuple(a.GetSymbol() for a in mol.GetAtoms()),
        charges=np.array([a.GetFormalCharge() for a in mol.GetAtoms()], dtype=np.int64),
        smiles=smiles, bonds=bonds, bond_orders=orders, force_field=force_field, source_index=index, name=name)


def mol_from_arrays(positions: np.ndarray, types: Sequence[int] | Sequence[str] | np.ndarray,
                    decoder: Sequence[str] = QM9_DECODER, charges: Sequence[int] | np.ndarray | None = None,
                    bonds: np.ndarray | None = None, bond_orders: np.ndarray | None = None, *,
                    determine_bonds: bool = True) -> Chem.Mol:
    """An RDKit Mol with a 3-D conformer from plain arrays; never raises for bad chemistry.

    ``types`` are indices into ``decoder`` or element symbols; every hydrogen must be an explicit atom (no
    implicit hydrogens are added). With ``bonds`` (m, 2) (and ``bond_orders``, default single) those bonds are
    used; otherwise, with ``determine_bonds``, RDKit's ``rdDetermineBonds.DetermineBonds`` finds connectivity
    and bond orders for the total charge ``sum(charges)`` (falling back to connectivity alone, then to no bonds).
    The Mol is sanitised (stereo assigned from 3-D) when RDKit can; otherwise it is returned unsanitised.
    The int property ``sciffusion_sanitized`` says which (1 / 0).
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    arr = np.asarray(types)
    symbols = [str(s) for s in arr] if arr.dtype.kind in "USO" else [decoder[int(i)] for i in arr]
    formal = np.zeros(len(symbols), dtype=np.int64) if charges is None else np.asarray(charges, dtype=np.int64)
    rw = Chem.RWMol()
    for symbol, charge in zip(symbols, formal):
        atom = Chem.Atom(symbol)
        atom.SetFormalCharge(int(charge))
        atom.SetNoImplicit(True)
        rw.AddAtom(atom)
    conf = Chem.Conformer(len(symbols))
    for i, xyz in enumerate(pos):
        conf.SetAtomPosition(i, xyz.tolist())
    conf.Set3D(True)
    rw.AddConformer(conf, assignId=True)
    block = rdBase.BlockLogs()
    if bonds is not None:
        bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        orders = np.ones(len(bonds), dtype=np.int64) if bond_orders is None else np.asarray(bond_orders)
        for (i, j), order in zip(bonds, orders):
            rw.AddBond(int(i), int(j), _BOND_TYPE.get(int(order), Chem.BondType.UNSPECIFIED))
        mol = rw.GetMol()
    else:
        mol = rw.GetMol()
        if determine_bonds and len(symbols) > 1:
            for attempt in (lambda m: rdDetermineBonds.DetermineBonds(m, charge=int(formal.sum())),
                            rdDetermineBonds.DetermineConnectivity):
                trial = Chem.Mol(mol)
                try:
                    attempt(trial)
                except Exception:
                    continue
                mol = trial
                break
    sanitized = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(sanitized)
        Chem.AssignStereochemistryFrom3D(sanitized)
        mol = sanitized
        ok = 1
    except Exception:
        mol.UpdatePropertyCache(strict=False)
        Chem.FastFindRings(mol)
        ok = 0
    del block
    mol.SetIntProp("sciffusion_sanitized", ok)
    return mol


# ------------------------------------------------------------------------------------------ SMILES / SDF -> 3-D


def _log_summary(what: str, kept: int, total: int, skipped: Mapping[str, int], extra: str = "") -> None:
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "none"
    log.info("%s: kept %d of %d; skipped %d (%s)%s", what, kept, total, total - kept, reasons, extra)


def _element_problem(mol: Chem.Mol, allowed: set[str] | None, max_atoms: int | None) -> str | None:
    if allowed is not None and any(a.GetSymbol() not in allowed for a in mol.GetAtoms()):
        return "unsupported_element"
    if max_atoms is not None and mol.GetNumAtoms() > max_atoms:
        return "too_many_atoms"
    return None


def conformers_from_smiles(smiles_list: Iterable[str], seed: int, max_atoms: int | None = None,
                           allowed_elements: Iterable[str] | None = None, *, mmff_max_iters: int = 2000,
                           max_embed_attempts: int = 0) -> tuple[list[Conformer], dict[str, int]]:
    """One 3-D conformer per SMILES: ``Chem.AddHs``, ETKDGv3 embedding with ``randomSeed=seed``, then MMFF94
    optimisation (UFF where MMFF has no parameters, the raw ETKDG geometry where neither has; both logged and
    recorded in :attr:`Conformer.force_field`).

    ``allowed_elements``: element symbols allowed, hydrogens included (e.g. :data:`QM9_DECODER`; ``None``: any);
    ``max_atoms``: the most atoms, hydrogens included (``None``: no limit); ``max_embed_attempts``: ETKDG's
    ``maxIterations`` (0: RDKit's default). Returns ``(conformers, skipped)``, ``skipped`` mapping each skip
    reason (see the module doc) to its count; never raises for one molecule.
    """
    allowed = None if allowed_elements is None else set(allowed_elements)
    out: list[Conformer] = []
    skipped: Counter[str] = Counter()
    force_fields: Counter[str] = Counter()
    total = 0
    block = rdBase.BlockLogs()
    for index, smiles in enumerate(smiles_list):
        total += 1
        try:
            mol = Chem.MolFromSmiles(smiles) if isinstance(smiles, str) and smiles.strip() else None
            if mol is None or mol.GetNumAtoms() == 0:
                skipped["invalid_smiles"] += 1
                continue
            canonical = Chem.MolToSmiles(mol)
            mol = Chem.AddHs(mol)
            problem = _element_problem(mol, allowed, max_atoms)
            if problem:
                skipped[problem] += 1
                continue
            params = AllChem.ETKDGv3()
            params.randomSeed = int(seed)
            if max_embed_attempts:
                params.maxIterations = int(max_embed_attempts)
            if AllChem.EmbedMolecule(mol, params) < 0:
                skipped["embed_failed"] += 1
                continue
            if AllChem.MMFFHasAllMoleculeParams(mol):
                AllChem.MMFFOptimizeMolecule(mol, maxIters=mmff_max_iters)
                ff = "MMFF"
            elif AllChem.UFFHasAllMoleculeParams(mol):
                AllChem.UFFOptimizeMolecule(mol, maxIters=mmff_max_iters)
                ff = "UFF"
            else:
                ff = "none"
            out.append(_conformer_from_mol(mol, canonical, ff, index))
            force_fields[ff] += 1
        except Exception:  # RDKit raised for this molecule: skip it, keep the job going
            skipped["rdkit_error"] += 1
    del block
    if force_fields["UFF"] or force_fields["none"]:
        log.warning("conformers_from_smiles: %d molecules had no MMFF94 parameters and were optimised with UFF; "
                    "%d had neither and keep their ETKDG geometry", force_fields["UFF"], force_fields["none"])
    _log_summary("conformers_from_smiles", len(out), total, skipped,
                 f"; force fields: {dict(sorted(force_fields.items()))}")
    return out, dict(skipped)


def read_sdf(path: str | Path, allowed_elements: Iterable[str] | None = None,
             max_atoms: int | None = None) -> tuple[list[Conformer], dict[str, int]]:
    """The 3-D molecules of an SDF file (``Chem.SDMolSupplier(removeHs=False)``; coordinates as in the file,
    Angstrom). Records RDKit cannot read, or without 3-D coordinates, or with elements outside
    ``allowed_elements`` / more than ``max_atoms`` atoms are skipped; returns ``(conformers, skipped)``."""
    allowed = None if allowed_elements is None else set(allowed_elements)
    out: list[Conformer] = []
    skipped: Counter[str] = Counter()
    total = 0
    block = rdBase.BlockLogs()
    supplier = Chem.SDMolSupplier(str(path), removeHs=False)
    for index in range(len(supplier)):
        total += 1
        try:
            mol = supplier[index]
            if mol is None:
                skipped["unreadable_record"] += 1
                continue
            if mol.GetNumConformers() == 0:
                skipped["no_3d_coordinates"] += 1
                continue
            xyz = np.array(mol.GetConformer().GetPositions(), dtype=np.float64).reshape(-1, 3)
            if not np.any(xyz) or (not mol.GetConformer().Is3D() and not np.any(xyz[:, 2])):
                skipped["no_3d_coordinates"] += 1
                continue
            problem = _element_problem(mol, allowed, max_atoms)
            if problem:
                skipped[problem] += 1
                continue
            name = mol.GetProp("_Name") if mol.HasProp("_Name") else ""
            out.append(_conformer_from_mol(mol, _canonical_smiles(mol), "sdf", index, name))
        except Exception:
            skipped["rdkit_error"] += 1
    del block
    _log_summary(f"read_sdf {path}", len(out), total, skipped)
    return out, dict(skipped)


def read_smiles_file(path: str | Path) -> list[str]:
    """The SMILES of a text file: the first whitespace-separated field of each line; blank lines, ``#``
    comments and a first-line header ``smiles`` are left out."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out = []
    for k, line in enumerate(lines):
        fields = line.split()
        if not fields or fields[0].startswith("#") or (k == 0 and fields[0].lower() == "smiles"):
            continue
        out.append(fields[0])
    return out


# ------------------------------------------------------------------------------------------ the .npz cache


def _str_array(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=np.str_) if len(values) else np.zeros(0, dtype="<U1")


def save_conformers_npz(path: str | Path, conformers: Sequence[Conformer], skipped: Mapping[str, int],
                        key: str = "") -> Path:
    """Write conformers as a ``.npz`` of plain arrays (ragged atoms and bonds flat, with offsets), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atom_counts = [c.n_atoms for c in conformers]
    bond_counts = [len(c.bonds) for c in conformers]
    arrays = {
        "key": np.array(key, dtype=np.str_),
        "atom_offsets": np.concatenate([[0], np.cumsum(atom_counts)]).astype(np.int64),
        "bond_offsets": np.concatenate([[0], np.cumsum(bond_counts)]).astype(np.int64),
        "positions": (np.concatenate([c.positions for c in conformers]) if conformers
                      else np.zeros((0, 3))).astype(np.float64),
        "numbers": np.concatenate([c.numbers for c in conformers] or [np.zeros(0)]).astype(np.int64),
        "charges": np.concatenate([c.charges for c in conformers] or [np.zeros(0)]).astype(np.int64),
        "bonds": (np.concatenate([c.bonds for c in conformers]) if conformers
                  else np.zeros((0, 2))).astype(np.int64).reshape(-1, 2),
        "bond_orders": np.concatenate([c.bond_orders for c in conformers] or [np.zeros(0)]).astype(np.int64),
        "smiles": _str_array([c.smiles for c in conformers]),
        "force_field": _str_array([c.force_field for c in conformers]),
        "name": _str_array([c.name for c in conformers]),
        "source_index": np.array([c.source_index for c in conformers], dtype=np.int64),
        "skipped_reasons": _str_array(list(skipped)),
        "skipped_counts": np.array(list(skipped.values()), dtype=np.int64),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    return path


def load_conformers_npz(path: str | Path, key: str | None = None) -> tuple[list[Conformer], dict[str, int]]:
    """Read what :func:`save_conformers_npz` wrote (``allow_pickle=False``). ``ValueError`` if the file is not
    such a cache, is inconsistent, or (given ``key``) was written for another key."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {name: z[name] for name in z.files}
    except Exception as err:
        raise ValueError(f"{path}: not a readable .npz ({type(err).__name__}: {err})") from None
    try:
        if key is not None and str(data["key"]) != key:
            raise ValueError("written for other input or settings")
        atom_off, bond_off = data["atom_offsets"], data["bond_offsets"]
        m = len(data["smiles"])
        positions, numbers, charges = data["positions"], data["numbers"], data["charges"]
        bonds, orders = data["bonds"], data["bond_orders"]
        consistent = (
            atom_off.ndim == 1 and bond_off.ndim == 1 and len(atom_off) == m + 1 and len(bond_off) == m + 1
            and atom_off[0] == 0 and bond_off[0] == 0 and np.all(np.diff(atom_off) >= 0)
            and np.all(np.diff(bond_off) >= 0) and positions.shape == (atom_off[-1], 3)
            and numbers.shape == charges.shape == (atom_off[-1],) and bonds.shape == (bond_off[-1], 2)
            and orders.shape == (bond_off[-1],) and len(data["force_field"]) == len(data["name"]) == m
            and len(data["source_index"]) == m and len(data["skipped_reasons"]) == len(data["skipped_counts"])
            and np.all(np.isfinite(positions)))
        if not consistent:
            raise ValueError("inconsistent arrays")
        conformers = []
        for k in range(m):
            a0, a1, b0, b1 = int(atom_off[k]), int(atom_off[k + 1]), int(bond_off[k]), int(bond_off[k + 1])
            local_bonds = bonds[b0:b1].astype(np.int64)
            if local_bonds.size and (local_bonds.min() < 0 or local_bonds.max() >= a1 - a0):
                raise ValueError("bond index out of range")
            conformers.append(Conformer(
                positions=positions[a0:a1].astype(np.float64), charges=charges[a0:a1].astype(np.int64),
                symbols=tuple(_PT.GetElementSymbol(int(z)) for z in numbers[a0:a1]), smiles=str(data["smiles"][k]),
                bonds=local_bonds, bond_orders=orders[b0:b1].astype(np.int64),
                force_field=str(data["force_field"][k]), source_index=int(data["source_index"][k]),
                name=str(data["name"][k])))
        skipped = {str(r): int(c) for r, c in zip(data["skipped_reasons"], data["skipped_counts"])}
    except (KeyError, IndexError, TypeError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid conformer cache ({err})") from None
    return conformers, skipped


def conformer_cache_key(smiles_file: str | Path, seed: int, max_atoms: int | None = None,
                        allowed_elements: Iterable[str] | None = None, mmff_max_iters: int = 2000,
                        max_embed_attempts: int = 0) -> str:
    """SHA-256 of the input file's bytes and the settings (and the RDKit version and the cache layout)."""
    settings = {"version": CACHE_VERSION, "rdkit": rdBase.rdkitVersion, "seed": int(seed),
                "max_atoms": max_atoms, "mmff_max_iters": int(mmff_max_iters),
                "max_embed_attempts": int(max_embed_attempts),
                "allowed_elements": None if allowed_elements is None else sorted(set(allowed_elements))}
    digest = hashlib.sha256(Path(smiles_file).read_bytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def cached_conformers(smiles_file: str | Path, cache_dir: str | Path, seed: int, max_atoms: int | None = None,
                      allowed_elements: Iterable[str] | None = None, *, mmff_max_iters: int = 2000,
                      max_embed_attempts: int = 0) -> tuple[list[Conformer], dict[str, int]]:
    """:func:`conformers_from_smiles` of a SMILES file (:func:`read_smiles_file`), cached in ``cache_dir`` as
    ``conformers-<key>.npz`` keyed by :func:`conformer_cache_key`. A cache file that cannot be read or does
    not match is recomputed and rewritten (atomically), never trusted."""
    allowed = None if allowed_elements is None else sorted(set(allowed_elements))
    key = conformer_cache_key(smiles_file, seed, max_atoms, allowed, mmff_max_iters, max_embed_attempts)
    path = Path(cache_dir) / f"conformers-{key[:24]}.npz"
    if path.exists():
        try:
            conformers, skipped = load_conformers_npz(path, key)
            log.info("cached_conformers: %d conformers from %s", len(conformers), path)
            return conformers, skipped
        except ValueError as err:
            log.warning("cached_conformers: recomputing: %s", err)
    conformers, skipped = conformers_from_smiles(read_smiles_file(smiles_file), seed, max_atoms, allowed,
                                                 mmff_max_iters=mmff_max_iters,
                                                 max_embed_attempts=max_embed_attempts)
    save_conformers_npz(path, conformers, skipped, key)
    return conformers, skipped


# ------------------------------------------------------------------------------------------ molecules -> files


def _prop_text(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return repr(value)
    return str(value).replace("\r", " ").replace("\n\n", "\n")


def _molblock_record(mol: Chem.Mol, kekulize: bool) -> str:
    sio = _io.StringIO()
    writer = Chem.SDWriter(sio)
    writer.SetKekulize(kekulize)
    writer.write(mol)
    writer.flush()
    text = sio.getvalue()
    writer.close()
    return text


def write_sdf(path: str | Path, mols: Sequence[Chem.Mol | None],
              properties: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write ``mols`` (explicit hydrogens and 3-D coordinates as they are) to an SDF file, atomically, with
    ``properties[k]`` as SDF tags of record k (set with ``SetProp``; floats at full precision).

    A Mol RDKit cannot write normally is written without kekulisation, then as atoms only (tag
    ``sciffusion_sdf_fallback``); ``None`` becomes an empty record, so that records and properties stay aligned.
    """
    path = Path(path)
    if properties is not None and len(properties) != len(mols):
        raise ValueError(f"write_sdf: {len(mols)} molecules but {len(properties)} property dicts")
    records = []
    block = rdBase.BlockLogs()
    for k, mol in enumerate(mols):
        m = Chem.Mol() if mol is None else Chem.Mol(mol)
        for name, value in (properties[k] if properties is not None else {}).items():
            m.SetProp(str(name), _prop_text(value))
        text = None
        for kekulize in (True, False):
            try:
                text = _molblock_record(m, kekulize)
                if not kekulize:
                    m.SetProp("sciffusion_sdf_fallback", "not_kekulized")
                    text = _molblock_record(m, kekulize)
                break
            except Exception:
                continue
        if text is None:
            atoms = Chem.RWMol(m)
            for bond in list(atoms.GetBonds())[::-1]:
                atoms.RemoveBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
            atoms = atoms.GetMol()
            atoms.UpdatePropertyCache(strict=False)
            atoms.SetProp("sciffusion_sdf_fallback", "atoms_only")
            text = _molblock_record(atoms, False)
            log.warning("write_sdf: record %d written as atoms only (RDKit could not write its bonds)", k)
        records.append(text)
    del block
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(records))
        f.flush()
        os.fsync(f.fileno())
    return path


def _drawable(mol: Chem.Mol | None) -> Chem.Mol:
    """A copy with hydrogens removed, 2-D coordinates and drawing preparation done (unsanitised if need be)."""
    if mol is None:
        return Chem.Mol()
    m = Chem.Mol(mol)
    try:
        m = Chem.RemoveHs(m)
    except Exception:
        try:
            m = Chem.RemoveHs(m, sanitize=False)
        except Exception:
            pass
        m.UpdatePropertyCache(strict=False)
        Chem.FastFindRings(m)
    m.RemoveAllConformers()
    rdDepictor.Compute2DCoords(m)
    for kekulize in (True, False):
        try:
            return rdMolDraw2D.PrepareMolForDrawing(m, kekulize=kekulize)
        except Exception:
            continue
    return m


def write_grid_png(path: str | Path, mols: Sequence[Chem.Mol | None], legends: Sequence[str] | None = None,
                   mols_per_row: int = 4, sub_img_size: tuple[int, int] = (250, 250)) -> Path:
    """A PNG grid of 2-D depictions (``Draw.MolsToGridImage``) of copies of ``mols`` with hydrogens removed and
    2-D coordinates computed; written atomically."""
    path = Path(path)
    block = rdBase.BlockLogs()
    drawn = [_drawable(m) for m in mols]
    options = rdMolDraw2D.MolDrawOptions()
    options.prepareMolsBeforeDrawing = False
    png = Draw.MolsToGridImage(drawn, molsPerRow=max(1, int(mols_per_row)), subImgSize=tuple(sub_img_size),
                               legends=list(legends) if legends is not None else None, returnPNG=True,
                               drawOptions=options)
    del block
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if isinstance(png, (bytes, bytearray)):
            Path(tmp).write_bytes(png)
        else:  # a PIL image where RDKit was built without Cairo
            png.save(tmp, format="PNG")
    return path


_COLOURS = {"H": "#f2f2f2", "C": "#404040", "N": "#3050f8", "O": "#ff0d0d", "F": "#7fd03b", "S": "#e0c030",
            "Cl": "#1ff01f", "P": "#ff8000", "Br": "#a62929"}
_COVALENT_RADIUS = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66, "F": 0.57, "S": 1.05, "Cl": 1.02, "P": 1.07,
                    "Br": 1.20, "Si": 1.11, "B": 0.84, "I": 1.39}


def distance_bonds(positions: np.ndarray, symbols: Sequence[str], tolerance: float = 1.15) -> np.ndarray:
    """(m, 2) atom pairs closer than ``tolerance`` times the sum of their covalent radii."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    radii = np.array([_COVALENT_RADIUS.get(s, 0.8) for s in symbols])
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    i, j = np.nonzero(np.triu(dist < tolerance * (radii[:, None] + radii[None]), k=1))
    return np.stack([i, j], axis=1).astype(np.int64)


def write_3d_png(path: str | Path, positions: Sequence[np.ndarray], types: Sequence[Sequence[int] | np.ndarray],
                 decoder: Sequence[str] = QM9_DECODER, bonds: Sequence[np.ndarray | None] | None = None,
                 titles: Sequence[str] | None = None, mols_per_row: int = 4) -> Path:
    """A matplotlib (Agg) 3-D view of a few molecules: atoms as spheres coloured by element, bonds as lines.

    ``positions[k]`` (n, 3) Angstrom and ``types[k]`` (n,) indices into ``decoder`` (or element symbols);
    ``bonds[k]`` (m, 2) atom pairs, or ``None`` (the whole argument or one entry) to draw the pairs closer than
    1.15 times their covalent radii. Written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the 3d projection)

    path = Path(path)
    count = len(positions)
    cols = max(1, min(int(mols_per_row), count))
    rows = max(1, -(-count // cols))
    fig = Figure(figsize=(3.0 * cols, 3.0 * rows))
    FigureCanvasAgg(fig)
    for k in range(count):
        pos = np.asarray(positions[k], dtype=np.float64).reshape(-1, 3)
        t = np.asarray(types[k])
        symbols = [str(s) for s in t] if t.dtype.kind in "USO" else [decoder[int(i)] for i in t]
        pairs = bonds[k] if bonds is not None else None
        pairs = distance_bonds(pos, symbols) if pairs is None else np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        ax = fig.add_subplot(rows, cols, k + 1, projection="3d")
        for i, j in pairs:
            ax.plot(*pos[[i, j]].T, color="#808080", linewidth=1.5)
        sizes = [60 if s == "H" else 140 for s in symbols]
        ax.scatter(*pos.T, c=[_COLOURS.get(s, "#ff69b4") for s in symbols], s=sizes, edgecolors="black",
                   linewidths=0.4, depthshade=True)
        if len(pos):
            centre, half = pos.mean(0), max(float(np.abs(pos - pos.mean(0)).max()), 1.0)
            for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
                setter(c - half, c + half)
        ax.set_box_aspect((1, 1, 1))
        ax.set_axis_off()
        if titles is not None and k < len(titles):
            ax.set_title(str(titles[k]), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path
