"""Molecule sample metrics as EDM computes them (Hoogeboom et al. 2022, ``qm9/bond_analyze.py``,
``qm9/analyze.py``, ``qm9/rdkit_functions.py``), plus MiDi's connectivity count and distribution distances.

A molecule is a pair ``(positions, types)``: ``positions`` (n, 3) in Angstrom and ``types`` (n,) integer indices
into an atom decoder of element symbols (QM9 with hydrogens: :data:`QM9_DECODER` = ``("H", "C", "N", "O", "F")``).
Either may be a numpy array or a torch tensor; both are converted to numpy (float64 positions, int64 types).

Bonds come from interatomic distances only (EDM's rule, :func:`get_bond_order`): the distance in pm is compared
with tabulated single / double / triple bond lengths plus a margin. From the bond orders:

* **stability** (:func:`check_stability`): an atom is stable iff the sum of its bond orders is an allowed valence
  (:data:`ALLOWED_BONDS`); a molecule is stable iff all of its atoms are;
* **validity** (:func:`molecule_smiles`): the RDKit molecule built from the bonds (:func:`build_molecule`, no
  charges, hydrogens implicit where the valence is short) sanitizes; its SMILES is that of its largest fragment;
* **uniqueness** and **novelty** (:func:`smiles_metrics`, :func:`evaluate`) are counted on those SMILES.

EDM's quirks reproduced here:

* a pair of elements missing from the single-bond table raises ``KeyError`` unless ``check_exists=True`` (then it
  is "no bond"); a pair missing from the double (triple) table can at most be single (double);
* the triple-bond test is nested inside the double-bond one;
* the tables are symmetric except ``BONDS2["C"]["S"]`` (160 pm) which has no ``BONDS2["S"]["C"]``, so the pair's
  order matters: :func:`check_stability` asks ``(atom i, atom j)`` for ``i < j`` as EDM's loop does, while
  :func:`build_molecule` asks the pair sorted by type index as EDM's ``build_xae_molecule`` does (this never
  matters on QM9, which has no sulphur);
* validity needs the *whole* molecule to sanitize, but the SMILES kept is the largest fragment's (by atom count,
  the first such fragment on ties); the novelty reference of EDM (:func:`dataset_smiles`) is the *whole*
  molecule's SMILES of each training molecule;
* uniqueness and novelty are 0 when nothing is valid (EDM's ``evaluate``); here novelty is ``None`` when no
  training SMILES are given (EDM reports 0 then).

EDM computes distances in float32 (torch) for RDKit bonds and per pair in numpy for stability; here both use one
float64 pairwise distance matrix, which equals EDM's loop in float64.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.stats

from sciffusion.domains.molecules.qm9 import QM9_DECODER
from sciffusion.extras import require

Molecule = tuple[Any, Any]
"""``(positions (n, 3) Angstrom, types (n,) int)``, numpy arrays or torch tensors."""

# ------------------------------------------------------------------------------------------- EDM's tables

#: Typical single-bond lengths in pm (EDM's ``bonds1``), ``BONDS1[a][b]``.
BONDS1: dict[str, dict[str, int]] = {
    "H": {"H": 74, "C": 109, "N": 101, "O": 96, "F": 92, "B": 119, "Si": 148, "P": 144, "As": 152, "S": 134,
          "Cl": 127, "Br": 141, "I": 161},
    "C": {"H": 109, "C": 154, "N": 147, "O": 143, "F": 135, "Si": 185, "P": 184, "S": 182, "Cl": 177, "Br": 194,
          "I": 214},
    "N": {"H": 101, "C": 147, "N": 145, "O": 140, "F": 136, "Cl": 175, "Br": 214, "S": 168, "I": 222, "P": 177},
    "O": {"H": 96, "C": 143, "N": 140, "O": 148, "F": 142, "Br": 172, "S": 151, "P": 163, "Si": 163, "Cl": 164,
          "I": 194},
    "F": {"H": 92, "C": 135, "N": 136, "O": 142, "F": 142, "S": 158, "Si": 160, "Cl": 166, "Br": 178, "P": 156,
          "I": 187},
    "B": {"H": 119, "Cl": 175},
    "Si": {"Si": 233, "H": 148, "C": 185, "O": 163, "S": 200, "F": 160, "Cl": 202, "Br": 215, "I": 243},
    "Cl": {"Cl": 199, "H": 127, "C": 177, "N": 175, "O": 164, "P": 203, "S": 207, "B": 175, "Si": 202, "F": 166,
           "Br": 214},
    "S": {"H": 134, "C": 182, "N": 168, "O": 151, "S": 204, "F": 158, "Cl": 207, "Br": 225, "Si": 200, "P": 210,
          "I": 234},
    "Br": {"Br": 228, "H": 141, "C": 194, "O": 172, "N": 214, "Si": 215, "S": 225, "F": 178, "Cl": 214, "P": 222},
    "P": {"P": 221, "H": 144, "C": 184, "O": 163, "Cl": 203, "S": 210, "F": 156, "N": 177, "Br": 222},
    "I": {"H": 161, "C": 214, "Si": 243, "N": 222, "O": 194, "S": 234, "F": 187, "I": 266},
    "As": {"H": 152},
}

#: Typical double-bond lengths in pm (EDM's ``bonds2``; note ``C-S`` without ``S-C``).
BONDS2: dict[str, dict[str, int]] = {
    "C": {"C": 134, "N": 129, "O": 120, "S": 160},
    "N": {"C": 129, "N": 125, "O": 121},
    "O": {"C": 120, "N": 121, "O": 121, "P": 150},
    "P": {"O": 150, "S": 186},
    "S": {"P": 186},
}

#: Typical triple-bond lengths in pm (EDM's ``bonds3``).
BONDS3: dict[str, dict[str, int]] = {
    "C": {"C": 120, "N": 116, "O": 113},
    "N": {"C": 116, "N": 110},
    "O": {"C": 113},
}

#: Margins in pm added to the single / double / triple lengths (EDM tuned them on QM9).
MARGIN1, MARGIN2, MARGIN3 = 10, 5, 3

#: Allowed valences (sum of bond orders) per element; a list means any of its values (EDM's ``allowed_bonds``).
ALLOWED_BONDS: dict[str, int | list[int]] = {
    "H": 1, "C": 4, "N": 3, "O": 2, "F": 1, "B": 3, "Al": 3, "Si": 4, "P": [3, 5], "S": 4, "Cl": 1, "As": 3,
    "Br": 1, "I": 1, "Hg": [1, 2], "Bi": [3, 5],
}

#: RDKit bond type names by bond order (EDM's ``bond_dict``; index 4, aromatic, never comes from distances).
BOND_TYPE_NAMES: tuple[str | None, ...] = (None, "SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")


def get_bond_order(atom1: str, atom2: str, distance: float, check_exists: bool = False) -> int:
    """EDM's bond order (0 none, 1 single, 2 double, 3 triple) of elements ``atom1``-``atom2`` at ``distance``
    Angstrom: with ``d`` the distance in pm, 3 if ``d < BONDS3 + MARGIN3``, else 2 if ``d < BONDS2 + MARGIN2``,
    else 1 if ``d < BONDS1 + MARGIN1``, else 0; a pair missing from BONDS2 (BONDS3) stops at 1 (2).

    A pair missing from BONDS1 raises ``KeyError``, or gives 0 with ``check_exists=True``. The lookup is
    ``table[atom1][atom2]``, so the argument order matters where a table is asymmetric (only ``C``/``S`` in
    BONDS2)."""
    distance = 100 * float(distance)
    if check_exists and (atom1 not in BONDS1 or atom2 not in BONDS1[atom1]):
        return 0
    if not distance < BONDS1[atom1][atom2] + MARGIN1:
        return 0
    if atom2 not in BONDS2.get(atom1, {}) or not distance < BONDS2[atom1][atom2] + MARGIN2:
        return 1
    if atom2 in BONDS3.get(atom1, {}) and distance < BONDS3[atom1][atom2] + MARGIN3:
        return 3
    return 2


# ------------------------------------------------------------------------------------- inputs and bonds


def _to_numpy(x: Any, dtype: type) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def as_arrays(positions: Any, types: Any) -> tuple[np.ndarray, np.ndarray]:
    """``positions`` (n, 3) float64 and ``types`` (n,) int64 as numpy arrays; ``ValueError`` on other shapes."""
    pos, typ = _to_numpy(positions, np.float64), _to_numpy(types, np.int64)
    if pos.ndim != 2 or pos.shape[1] != 3 or typ.shape != (pos.shape[0],):
        raise ValueError(f"need positions (n, 3) and types (n,), got {pos.shape} and {typ.shape}")
    return pos, typ


def pairwise_distances(positions: np.ndarray) -> np.ndarray:
    """(n, n) Euclidean distances of ``positions`` (n, 3), as EDM's ``sqrt(sum((p1 - p2) ** 2))`` per pair."""
    diff = positions[:, None, :] - positions[None, :, :]
    return np.sqrt(np.sum(diff ** 2, axis=-1))


@lru_cache(maxsize=32)
def _thresholds(atom_decoder: tuple[str, ...], check_exists: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(K, K) thresholds in pm ``table[a][b] + margin`` for decoder indices a, b (``-inf`` where the pair is not in
    the table, so that no distance is below it) and the (K, K) mask of pairs that would raise ``KeyError``."""
    k = len(atom_decoder)
    tables = []
    for table, margin in ((BONDS1, MARGIN1), (BONDS2, MARGIN2), (BONDS3, MARGIN3)):
        thr = np.full((k, k), -np.inf)
        for a, ea in enumerate(atom_decoder):
            for b, eb in enumerate(atom_decoder):
                if eb in table.get(ea, {}):
                    thr[a, b] = table[ea][eb] + margin
        tables.append(thr)
    raises = np.isneginf(tables[0]) & (not check_exists)
    return tables[0], tables[1], tables[2], raises


def bond_order_matrix(positions: Any, types: Any, atom_decoder: Sequence[str] = QM9_DECODER, *,
                      sort_pair_by_type: bool = False, check_exists: bool = False) -> np.ndarray:
    """(n, n) symmetric int matrix of EDM bond orders (:func:`get_bond_order`, vectorised), zero diagonal.

    ``positions`` (n, 3) Angstrom, ``types`` (n,). The pair ``{i, j}`` is looked up as ``(atom i, atom j)`` for
    ``i < j`` (EDM's ``check_stability``), or with ``sort_pair_by_type`` as the pair sorted by type index (EDM's
    ``build_xae_molecule``). ``KeyError`` if a pair of elements in the molecule has no single-bond length (unless
    ``check_exists``), as EDM raises."""
    pos, typ = as_arrays(positions, types)
    n = len(typ)
    thr1, thr2, thr3, raises = _thresholds(tuple(atom_decoder), check_exists)
    i, j = np.triu_indices(n, k=1)
    a, b = typ[i], typ[j]
    if sort_pair_by_type:
        a, b = np.minimum(a, b), np.maximum(a, b)
    if raises[a, b].any():
        bad = np.flatnonzero(raises[a, b])[0]
        raise KeyError(f"no single-bond length for {atom_decoder[a[bad]]}-{atom_decoder[b[bad]]}")
    d = 100 * pairwise_distances(pos)[i, j]  # pm
    single, double, triple = d < thr1[a, b], d < thr2[a, b], d < thr3[a, b]
    order = np.where(single, np.where(double, np.where(triple, 3, 2), 1), 0)
    out = np.zeros((n, n), dtype=np.int64)
    out[i, j] = order
    out[j, i] = order
    return out


# ----------------------------------------------------------------------------------------------- stability


def _is_allowed(element: str, valence: int) -> bool:
    allowed = ALLOWED_BONDS[element]
    return valence == allowed if isinstance(allowed, int) else valence in allowed


def check_stability(positions: Any, types: Any, atom_decoder: Sequence[str] = QM9_DECODER,
                    check_exists: bool = False) -> tuple[bool, int, int]:
    """EDM's ``check_stability`` of one molecule, ``positions`` (n, 3) Angstrom, ``types`` (n,): returns
    ``(molecule_stable, stable_atoms, n_atoms)``. An atom is stable iff the sum of its bond orders equals its
    allowed valence (or is one of them, for a list in :data:`ALLOWED_BONDS`)."""
    pos, typ = as_arrays(positions, types)
    valence = bond_order_matrix(pos, typ, atom_decoder, check_exists=check_exists).sum(axis=1)
    stable = sum(_is_allowed(atom_decoder[t], int(v)) for t, v in zip(typ, valence))
    return stable == len(typ), int(stable), len(typ)


# ------------------------------------------------------------------------------------------ RDKit, SMILES


def _chem(purpose: str) -> Any:
    return require("rdkit.Chem", "molecules", purpose)


def build_molecule(positions: Any, types: Any, atom_decoder: Sequence[str] = QM9_DECODER,
                   check_exists: bool = False) -> Any:
    """EDM's ``build_molecule``: an unsanitized ``rdkit.Chem.RWMol`` with one atom per entry of ``types`` (n,)
    (neutral, no explicit hydrogens beyond the H atoms given) and a bond of EDM order for each bonded pair
    (:func:`bond_order_matrix` with the pair sorted by type), added as EDM does, ``(i, j)`` with ``j < i`` in
    row-major order."""
    chem = _chem("building an RDKit molecule")
    _, typ = as_arrays(positions, types)
    orders = bond_order_matrix(positions, types, atom_decoder, sort_pair_by_type=True, check_exists=check_exists)
    mol = chem.RWMol()
    for t in typ:
        mol.AddAtom(chem.Atom(atom_decoder[t]))
    for i, j in zip(*np.nonzero(np.tril(orders))):
        mol.AddBond(int(i), int(j), getattr(chem.rdchem.BondType, BOND_TYPE_NAMES[orders[i, j]]))
    return mol


def mol2smiles(mol: Any) -> str | None:
    """EDM's ``mol2smiles``: sanitize ``mol`` in place and return its canonical SMILES, or None if sanitization
    fails (RDKit's message about it is not logged)."""
    chem = _chem("SMILES")
    from rdkit import rdBase
    try:
        with rdBase.BlockLogs():
            chem.SanitizeMol(mol)
    except ValueError:  # RDKit's MolSanitizeException is a ValueError
        return None
    return chem.MolToSmiles(mol)


def num_fragments(mol: Any) -> int:
    """Number of connected components of ``mol``'s bond graph (no sanitization needed)."""
    return len(_chem("fragments").rdmolops.GetMolFrags(mol))


def molecule_smiles(positions: Any, types: Any, atom_decoder: Sequence[str] = QM9_DECODER,
                    check_exists: bool = False) -> tuple[str | None, int]:
    """EDM's validity of one molecule: ``(smiles, n_fragments)``. ``smiles`` is None if the whole molecule
    (:func:`build_molecule`) does not sanitize, else the SMILES of its largest fragment by atom count
    (``GetMolFrags(asMols=True)``, the first on ties); ``n_fragments`` counts the bond graph's components."""
    chem = _chem("molecule validity")
    mol = build_molecule(positions, types, atom_decoder, check_exists)
    n_frags = num_fragments(mol)
    if mol2smiles(mol) is None:
        return None, n_frags
    fragments = chem.rdmolops.GetMolFrags(mol, asMols=True)
    largest = max(fragments, default=mol, key=lambda m: m.GetNumAtoms())
    return mol2smiles(largest), n_frags


def dataset_smiles(molecules: Iterable[Molecule], atom_decoder: Sequence[str] = QM9_DECODER) -> set[str]:
    """EDM's novelty reference (``compute_qm9_smiles``): the SMILES of each whole molecule that sanitizes
    (not its largest fragment), as a set."""
    out = set()
    for positions, types in molecules:
        smiles = mol2smiles(build_molecule(positions, types, atom_decoder))
        if smiles is not None:
            out.add(smiles)
    return out


# --------------------------------------------------------------------------------------------- evaluation


def smiles_metrics(smiles: Sequence[str | None], train_smiles: set[str] | None = None) -> dict[str, Any]:
    """EDM's validity, uniqueness and novelty from one SMILES (or None, invalid) per generated molecule:
    ``validity = n_valid / n``, ``uniqueness = n_unique / n_valid`` (distinct valid SMILES),
    ``valid_and_unique = validity * uniqueness = n_unique / n`` and ``novelty = n_novel / n_unique`` (unique SMILES
    not in ``train_smiles``; None without ``train_smiles``). Uniqueness and novelty are 0 when nothing is valid,
    as in EDM. Also ``valid_smiles`` (input order) and ``unique_smiles`` (sorted)."""
    if len(smiles) == 0:
        raise ValueError("no molecules to score")
    valid = [s for s in smiles if s is not None]
    unique = sorted(set(valid))
    novel = None if train_smiles is None else [s for s in unique if s not in train_smiles]
    return {
        "n": len(smiles), "n_valid": len(valid), "validity": len(valid) / len(smiles),
        "n_unique": len(unique), "uniqueness": len(unique) / len(valid) if valid else 0.0,
        "valid_and_unique": len(unique) / len(smiles),
        "n_novel": None if novel is None else len(novel),
        "novelty": None if novel is None else (len(novel) / len(unique) if unique else 0.0),
        "valid_smiles": valid, "unique_smiles": unique,
    }


def evaluate(molecules: Sequence[Molecule], atom_decoder: Sequence[str] = QM9_DECODER,
             train_smiles: set[str] | None = None, check_exists: bool = False) -> dict[str, Any]:
    """EDM's sample metrics of ``molecules`` (pairs ``(positions (n, 3), types (n,))``), as fractions in [0, 1]:

    * ``atom_stability`` = stable atoms / all atoms, ``molecule_stability`` = stable molecules / ``n``
      (:func:`check_stability`);
    * ``validity``, ``uniqueness``, ``valid_and_unique`` (EDM's "V x U"), ``novelty`` (None without
      ``train_smiles``; EDM's reference set is :func:`dataset_smiles` of the training molecules): :func:`smiles_metrics`
      of the SMILES of :func:`molecule_smiles`;
    * MiDi's ``connected`` = molecules whose bond graph is one fragment / ``n`` (valid or not),
      ``mean_fragments``, ``max_fragments``; ``connected_validity`` = valid *and* one fragment / ``n``.

    Also the counts (``n``, ``n_atoms``, ``n_stable_atoms``, ``n_stable_molecules``, ``n_valid``, ``n_unique``,
    ``n_novel``, ``n_connected``, ``n_connected_valid``), ``smiles`` (one entry per input molecule, None where
    invalid), ``valid_smiles`` (EDM's ``valid`` list, in input order) and ``unique_smiles`` (sorted)."""
    if len(molecules) == 0:
        raise ValueError("evaluate needs at least one molecule")
    n_atoms = n_stable_atoms = n_stable_molecules = 0
    smiles, fragments = [], []
    for positions, types in molecules:
        mol_stable, stable, atoms = check_stability(positions, types, atom_decoder, check_exists)
        n_stable_molecules += int(mol_stable)
        n_stable_atoms += stable
        n_atoms += atoms
        s, n_frags = molecule_smiles(positions, types, atom_decoder, check_exists)
        smiles.append(s)
        fragments.append(n_frags)
    n = len(molecules)
    n_connected = sum(f == 1 for f in fragments)
    n_connected_valid = sum(f == 1 and s is not None for s, f in zip(smiles, fragments))
    return {
        "n_atoms": n_atoms, "n_stable_atoms": n_stable_atoms, "n_stable_molecules": n_stable_molecules,
        "atom_stability": n_stable_atoms / n_atoms if n_atoms else 0.0,
        "molecule_stability": n_stable_molecules / n,
        **smiles_metrics(smiles, train_smiles),
        "n_connected": n_connected, "connected": n_connected / n,
        "n_connected_valid": n_connected_valid, "connected_validity": n_connected_valid / n,
        "mean_fragments": float(np.mean(fragments)), "max_fragments": int(max(fragments)),
        "smiles": smiles,
    }


# ------------------------------------------------------------------------------- distribution distances


def bond_lengths_and_angles(molecules: Iterable[Molecule], atom_decoder: Sequence[str] = QM9_DECODER,
                            check_exists: bool = False
                            ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Geometry statistics of ``molecules`` with bonds by EDM's rule (:func:`bond_order_matrix`, pair sorted by
    type, any order > 0):

    * atom-type counts, (K,) for the K decoder entries;
    * bond lengths in Angstrom per element pair, key ``"A-B"`` with the symbols sorted alphabetically (``"C-H"``);
    * bond angles in degrees at each atom between each two of its bonded neighbours, per central element (a bond
      of zero length has no direction and gives no angle)."""
    counts = np.zeros(len(atom_decoder), dtype=np.int64)
    lengths: dict[str, list[np.ndarray]] = {}
    angles: dict[str, list[np.ndarray]] = {}
    for positions, types in molecules:
        pos, typ = as_arrays(positions, types)
        counts += np.bincount(typ, minlength=len(atom_decoder))
        bonded = bond_order_matrix(pos, typ, atom_decoder, sort_pair_by_type=True, check_exists=check_exists) > 0
        dist = pairwise_distances(pos)
        i, j = np.nonzero(np.triu(bonded))
        pair_keys = np.array(["-".join(sorted((atom_decoder[a], atom_decoder[b]))) for a, b in zip(typ[i], typ[j])])
        for key in np.unique(pair_keys):
            lengths.setdefault(str(key), []).append(dist[i, j][pair_keys == key])
        # unit[c, i]: direction from atom c to atom i; pairs (i, k), i < k, of bonded neighbours of c
        bonded &= dist > 0
        unit = np.divide(pos[None, :, :] - pos[:, None, :], dist[:, :, None], out=np.zeros((len(typ),) * 2 + (3,)),
                         where=bonded[:, :, None])
        cos = np.einsum("cix,ckx->cik", unit, unit)
        c, i, k = np.nonzero(bonded[:, :, None] & bonded[:, None, :] & np.triu(np.ones_like(bonded), 1)[None])
        deg = np.degrees(np.arccos(np.clip(cos[c, i, k], -1.0, 1.0)))
        for t in np.unique(typ[c]):
            angles.setdefault(atom_decoder[t], []).append(deg[typ[c] == t])
    return (counts, {key: np.concatenate(v) for key, v in sorted(lengths.items())},
            {key: np.concatenate(v) for key, v in sorted(angles.items())})


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation ``0.5 * sum |p - q|`` between histograms ``p`` and ``q`` (K,), each normalised first
    (NaN if one is empty)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def _w1_per_key(generated: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
                ) -> tuple[dict[str, float], float]:
    """W1 per key present on both sides (NaN where a side has none) and the mean weighted by the reference
    counts of the keys present on both sides (NaN if there is none)."""
    per_key, weights = {}, {}
    for key in sorted(set(generated) | set(reference)):
        g, r = generated.get(key, np.empty(0)), reference.get(key, np.empty(0))
        if len(g) and len(r):
            per_key[key] = float(scipy.stats.wasserstein_distance(g, r))
            weights[key] = len(r)
        else:
            per_key[key] = float("nan")
    total = sum(weights.values())
    mean = sum(per_key[k] * w for k, w in weights.items()) / total if total else float("nan")
    return per_key, float(mean)


def distribution_distances(generated: Sequence[Molecule], reference: Sequence[Molecule],
                           atom_decoder: Sequence[str] = QM9_DECODER, check_exists: bool = False) -> dict[str, Any]:
    """Distances between the geometry distributions of ``generated`` and ``reference`` (e.g. test) molecules,
    each a sequence of ``(positions (n, 3) Angstrom, types (n,))``, from :func:`bond_lengths_and_angles`:

    * ``atom_type_tv``: total variation between the atom-type histograms;
    * ``bond_length_w1``: {``"A-B"``: Wasserstein-1 in Angstrom between the bond-length samples of that element
      pair}, NaN where one side has no such bond; ``bond_length_w1_mean``: its mean weighted by the reference
      bond counts (over the pairs both sides have);
    * ``bond_angle_w1``: {central element: W1 in degrees between the bond-angle samples}, and
      ``bond_angle_w1_mean`` likewise weighted by the reference angle counts;
    * ``bond_counts`` and ``angle_counts``: {key: (generated count, reference count)}."""
    gen_atoms, gen_len, gen_ang = bond_lengths_and_angles(generated, atom_decoder, check_exists)
    ref_atoms, ref_len, ref_ang = bond_lengths_and_angles(reference, atom_decoder, check_exists)
    length_w1, length_mean = _w1_per_key(gen_len, ref_len)
    angle_w1, angle_mean = _w1_per_key(gen_ang, ref_ang)

    def counts(g: Mapping[str, np.ndarray], r: Mapping[str, np.ndarray]) -> dict[str, tuple[int, int]]:
        return {k: (len(g.get(k, ())), len(r.get(k, ()))) for k in sorted(set(g) | set(r))}

    return {
        "atom_type_tv": total_variation(gen_atoms, ref_atoms),
        "bond_length_w1": length_w1, "bond_length_w1_mean": length_mean,
        "bond_angle_w1": angle_w1, "bond_angle_w1_mean": angle_mean,
        "bond_counts": counts(gen_len, ref_len), "angle_counts": counts(gen_ang, ref_ang),
    }
