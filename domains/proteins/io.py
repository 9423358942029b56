"""Protein structure files: PDB / mmCIF (optionally gzipped) read with biopython, backbones written as PDB.

Reading keeps the first model, the 20 standard amino acids of ``ATOM`` records (``HETATM`` records -- ligands,
water, modified residues -- are dropped and counted) and, per residue, the backbone atoms N, CA, C, O (O may be
missing; a residue without N, CA or C is dropped, counted, and leaves a chain break). Each chain becomes a
:class:`Chain`; a chain break is a gap in the residue numbers or a CA-CA distance above ``BREAK_CA_CA``.
A file that cannot be used raises :class:`StructureError` whose message is one line naming the file and the reason.
"""
from __future__ import annotations

import gzip
import io
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STANDARD = ("ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU", "LYS", "MET", "PHE", "PRO",
            "SER", "THR", "TRP", "TYR", "VAL")
BACKBONE = ("N", "CA", "C", "O")
BREAK_CA_CA = 4.2  # Angstrom: a longer CA-CA step is not a peptide bond
PDB_SUFFIXES = (".pdb", ".ent")
CIF_SUFFIXES = (".cif", ".mmcif")


class StructureError(ValueError):
    """A structure file that cannot be used (one line: the file and the reason)."""


@dataclass
class Chain:
    """One chain's residues with a complete N-CA-C backbone.

    Attributes:
        name: ``<file stem>_<chain id>``.
        chain_id: the chain identifier in the file.
        atoms: ``(L, 4, 3)`` float64 N, CA, C, O in Angstrom (O is NaN where the file has none).
        resnums: ``(L,)`` residue numbers in the file.
        resnames: three-letter residue names.
        break_before: ``(L,)`` bool, residue ``i`` is not bonded to ``i - 1`` (False for the first).
    """

    name: str
    chain_id: str
    atoms: np.ndarray
    resnums: np.ndarray
    resnames: list[str]
    break_before: np.ndarray

    def __len__(self) -> int:
        return len(self.resnums)

    def residue_index(self, jump: int) -> np.ndarray:
        """Positions along the chain ``(L,)`` int64: +1 per residue, +``jump`` across a chain break."""
        steps = np.where(self.break_before, jump, 1)
        steps[0] = 0
        return np.cumsum(steps).astype(np.int64)


@dataclass
class Structure:
    """The protein chains of a file's first model, and what reading dropped.

    ``dropped``: reason -> count (hetero residues, non-standard residues, residues missing backbone atoms, extra
    models)."""

    path: Path
    chains: list[Chain]
    dropped: Counter = field(default_factory=Counter)

    def chain(self, chain_id: str) -> Chain:
        for c in self.chains:
            if c.chain_id == chain_id:
                return c
        known = ", ".join(c.chain_id for c in self.chains) or "none"
        raise StructureError(f"{self.path}: no protein chain '{chain_id}' (protein chains: {known})")


def _open_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def structure_format(path: Path) -> str:
    """``pdb`` or ``cif`` from the file name (a ``.gz`` suffix is looked through)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in PDB_SUFFIXES:
        return "pdb"
    if suffix in CIF_SUFFIXES:
        return "cif"
    raise StructureError(f"{path}: unsupported file type ({suffix or 'no suffix'}; use .pdb, .ent, .cif or .mmcif, "
                         "optionally .gz)")


def read_structure(path: str | Path) -> Structure:
    """Read a PDB or mmCIF file (see the module docstring); raises :class:`StructureError`."""
    from Bio.PDB import MMCIFParser, PDBParser
    from Bio.PDB.PDBExceptions import PDBConstructionWarning

    path = Path(path)
    if not path.is_file():
        raise StructureError(f"{path}: no such file")
    kind = structure_format(path)
    text = _open_text(path)
    parser = PDBParser(QUIET=True) if kind == "pdb" else MMCIFParser(QUIET=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PDBConstructionWarning)
            parsed = parser.get_structure(path.name.split(".")[0], io.StringIO(text))
    except Exception as e:  # biopython raises many kinds on malformed files
        raise StructureError(f"{path}: not a readable {kind.upper()} file ({type(e).__name__}: {e})") from None
    models = list(parsed)
    if not models:
        raise StructureError(f"{path}: no protein (no atoms in the file)")
    dropped: Counter = Counter()
    if len(models) > 1:
        dropped[f"models after the first ({len(models)} models)"] += len(models) - 1
    chains = []
    stem = path.name.split(".")[0]
    for ch in models[0]:
        rows, nums, names = [], [], []
        for res in ch:
            hetflag, number, _icode = res.id
            if hetflag.strip():
                dropped["water" if hetflag == "W" else "hetero residues (HETATM)"] += 1
                continue
            if res.get_resname() not in STANDARD:
                dropped["non-standard residues"] += 1
                continue
            missing = [a for a in BACKBONE[:3] if a not in res]
            if missing:
                dropped["residues missing backbone atoms (N, CA or C)"] += 1
                nums.append(None)
                continue
            rows.append([res[a].coord if a in res else np.full(3, np.nan) for a in BACKBONE])
            nums.append(number)
            names.append(res.get_resname())
        if not rows:
            continue
        atoms = np.asarray(rows, dtype=np.float64)
        kept = [n for n in nums if n is not None]
        gap_before = _gaps(nums)
        ca = atoms[:, 1]
        long_step = np.r_[False, np.linalg.norm(np.diff(ca, axis=0), axis=1) > BREAK_CA_CA]
        step = np.diff(np.asarray(kept))
        number_gap = np.r_[False, (step != 0) & (step != 1)]  # 0: an insertion code (52, 52A)
        chains.append(Chain(f"{stem}_{ch.id}", str(ch.id), atoms, np.asarray(kept, dtype=np.int64), names,
                            long_step | number_gap | gap_before))
    if not chains:
        raise StructureError(f"{path}: no protein (no standard amino acid with N, CA and C atoms in the first model)")
    return Structure(path, chains, dropped)


def _gaps(nums: list[int | None]) -> np.ndarray:
    """For the kept residues (``nums`` entries not None): a dropped residue came right before ``(L,)`` bool."""
    out, pending = [], False
    for n in nums:
        if n is None:
            pending = True
            continue
        out.append(pending and bool(out))
        pending = False
    return np.asarray(out, dtype=bool)


def pdb_lines(chains: list[tuple[str, np.ndarray]], remarks: list[str] = ()) -> str:
    """PDB text of backbones: ``chains`` is ``[(chain_id, atoms (L, 4, 3) N, CA, C, O)]``, residues written as GLY
    numbered from 1, one ``TER`` per chain."""
    out = [f"REMARK 250 {r}"[:80] for r in remarks]
    serial = 1
    for chain_id, atoms in chains:
        for i, residue in enumerate(np.asarray(atoms, dtype=np.float64)):
            for name, xyz in zip(BACKBONE, residue):
                element = name[0]
                out.append(f"ATOM  {serial:5d}  {name:<3s} GLY {chain_id}{i + 1:4d}    "
                           f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00  0.00          {element:>2s}")
                serial += 1
        out.append(f"TER   {serial:5d}      GLY {chain_id}{len(atoms):4d}")
        serial += 1
    out.append("END")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
# Motif specifications (RFdiffusion's contig style)
# ------------------------------------------------------------------------------------------------
_MOTIF = re.compile(r"^([A-Za-z0-9])(-?\d+)(?:-(-?\d+))?$")
_SCAFFOLD = re.compile(r"^(\d+)(?:-(\d+))?$")


@dataclass(frozen=True)
class MotifSegment:
    """Residues ``start..end`` (inclusive, file numbering) of chain ``chain``."""

    chain: str
    start: int
    end: int


@dataclass(frozen=True)
class ScaffoldRange:
    """A scaffold segment of ``low..high`` residues (inclusive)."""

    low: int
    high: int


@dataclass(frozen=True)
class MotifSpec:
    """``FILE:CONTIG``: the file and its contig, motif segments and scaffold ranges in chain order. A contig with
    motif segments only leaves the scaffold lengths to be drawn."""

    path: Path
    parts: tuple[MotifSegment | ScaffoldRange, ...]

    @property
    def segments(self) -> list[MotifSegment]:
        return [p for p in self.parts if isinstance(p, MotifSegment)]


def parse_motif_spec(text: str) -> MotifSpec:
    """``motif.pdb:A10-25,A40-45`` or, with scaffold lengths as RFdiffusion's contigs,
    ``motif.pdb:5-15/A10-25/10-20/A40-45/5-15`` (``,`` and ``/`` both separate); raises ``ValueError``."""
    path, sep, contig = text.rpartition(":")
    if not sep or not path or not contig:
        raise ValueError(f"--motif {text!r}: expected FILE:CONTIG, e.g. motif.pdb:A10-25 or motif.pdb:5-15/A10-25/10-20")
    parts: list[MotifSegment | ScaffoldRange] = []
    for token in filter(None, re.split(r"[,/]", contig.replace(" ", ""))):
        if m := _SCAFFOLD.match(token):
            low, high = int(m.group(1)), int(m.group(2) or m.group(1))
            if low > high:
                raise ValueError(f"--motif {text!r}: scaffold range {token} has low > high")
            parts.append(ScaffoldRange(low, high))
        elif m := _MOTIF.match(token):
            start, end = int(m.group(2)), int(m.group(3) if m.group(3) is not None else m.group(2))
            if start > end:
                raise ValueError(f"--motif {text!r}: motif range {token} has start > end")
            parts.append(MotifSegment(m.group(1), start, end))
        else:
            raise ValueError(f"--motif {text!r}: cannot read {token!r} (a motif range is A10-25, a scaffold length 5-15)")
    if not any(isinstance(p, MotifSegment) for p in parts):
        raise ValueError(f"--motif {text!r}: no motif range (e.g. A10-25)")
    return MotifSpec(Path(path), tuple(parts))


def motif_atoms(structure: Structure, segment: MotifSegment) -> np.ndarray:
    """The backbone ``(n, 4, 3)`` of a motif segment; every residue must be present with N, CA and C."""
    chain = structure.chain(segment.chain)
    where = {int(r): i for i, r in enumerate(chain.resnums)}
    missing = [r for r in range(segment.start, segment.end + 1) if r not in where]
    if missing:
        shown = ", ".join(f"{segment.chain}{r}" for r in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise StructureError(f"{structure.path}: motif residue(s) {shown} not in the file with N, CA and C atoms "
                             f"(chain {segment.chain} has {chain.resnums.min()}-{chain.resnums.max()})")
    rows = [where[r] for r in range(segment.start, segment.end + 1)]
    if any(chain.break_before[i] for i in rows[1:]):
        raise StructureError(f"{structure.path}: motif segment {segment.chain}{segment.start}-{segment.end} has a "
                             "chain break inside it")
    return chain.atoms[rows]
