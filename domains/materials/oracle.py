"""CHGNet as the physics oracle for crystals: energies, forces and stress, and relaxation, offline.

CHGNet (pip ``chgnet``; the pretrained weights ship inside the wheel, :data:`CHGNET_MODEL` = "0.3.0", so nothing is
downloaded) is a universal machine-learned potential trained on the Materials Project relaxation trajectories
(MPtrj, PBE / PBE+U). Loading and relaxing print nothing here (CHGNet's banner and ASE's optimiser log are
swallowed).

Units: energy per atom in eV/atom (CHGNet's ``e``), forces in eV/Angstrom, stress in GPa (CHGNet's sign
convention), RMSD in Angstrom.

Failures are results, never exceptions, in :func:`chgnet_energies` and :func:`relax`: a structure CHGNet cannot
take (an isolated atom with no neighbour within CHGNet's 6 Angstrom graph cutoff, an element it does not know,
a non-finite coordinate, a non-finite prediction, an optimiser error) is an entry with ``ok=False`` and the
reason. :func:`chgnet_forces` (one structure, for guidance) raises a ValueError with the reason instead.

RMSD of a relaxation, as MatterGen reports it (``avg_rmsd_from_relaxation``: ``compute_rmsd_angstrom`` in
``mattergen/evaluation/utils/utils.py``, github.com/microsoft/mattergen): the generated structure is first
symmetrised and reduced as MatterGen's ``preprocess_structure`` does (spglib-refined cell, its primitive cell, LLL
reduction); then pymatgen's ``StructureMatcher(ltol=0.5, stol=0.5, angle_tol=10, primitive_cell=True, scale=False,
attempt_supercell=True, allow_subset=False)`` (MatterGen's ``RMSDStructureMatcher``) aligns the relaxed structure
to it, and its ``get_rms_dist`` (the root-mean-square displacement of matched sites after removing the mean
translation, normalised by ``(V/N)^(1/3)``) is converted back to Angstrom by multiplying by ``(V/N)^(1/3)``. When
the matcher finds no alignment within ``stol``, MatterGen reports ``stol`` in those units (0.5 (V/N)^(1/3)): so
do we, with ``rmsd_matched=False``. One difference: MatterGen takes ``(V/N)^(1/3)`` from the average of the two
cells' lattice parameters and the relaxed cell's N, which is wrong by the ratio of atom counts when the
symmetry preprocessing shrank the generated cell to a smaller primitive cell; here V/N is the mean of the two
cells' volumes per atom (the same to second order in the strain when the counts agree).

``displacement_rmsd`` is the plain alternative that needs no matching (relaxation keeps the order of the sites):
each site's fractional displacement wrapped into [-0.5, 0.5), minus the mean displacement (a rigid shift), in
Cartesian coordinates of the relaxed lattice, root mean square over sites. It includes the displacement that a
change of cell shape induces, so it is larger than MatterGen's RMSD for cells that strain a lot.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sciffusion.extras import require

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: The pretrained CHGNet shipped in the ``chgnet`` wheel that every function here uses.
CHGNET_MODEL = "0.3.0"
#: MatterGen's ``MAX_RMSD``: the ``stol`` of its RMSD matcher, and the RMSD (in (V/N)^(1/3) units) it reports when
#: the relaxed structure cannot be aligned to the generated one.
MATTERGEN_MAX_RMSD = 0.5
#: Structures per CHGNet forward pass in :func:`chgnet_energies`.
DEFAULT_BATCH_SIZE = 32

_EXTRA = "materials"


@dataclass
class OracleResult:
    """CHGNet's energy of one structure: ``energy`` in eV/atom (NaN when ``ok`` is False), ``reason`` why not
    (empty when ok)."""

    energy: float
    ok: bool
    reason: str = ""


@dataclass
class RelaxResult:
    """A CHGNet relaxation of one structure (energies in eV/atom, lengths in Angstrom, forces in eV/Angstrom).

    ``structure``: the relaxed structure (None when not ok); ``initial_energy`` / ``final_energy``: CHGNet's energy
    of the given and of the relaxed structure; ``rmsd`` / ``rmsd_matched``: MatterGen's RMSD between the two
    (module docstring); ``displacement_rmsd``: the site-by-site RMSD; ``steps``: optimiser steps taken;
    ``converged``: the optimiser met ``fmax`` before the step limit; ``max_force``: largest atomic force on the
    relaxed structure; ``reason``: why not ok (empty when ok). NaN fields when not ok."""

    structure: Structure | None
    initial_energy: float
    final_energy: float
    rmsd: float
    rmsd_matched: bool
    displacement_rmsd: float
    steps: int
    converged: bool
    max_force: float
    ok: bool
    reason: str = ""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow stdout, stderr and warnings (CHGNet's banner, its isolated-atom notes, ASE's optimiser log)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@functools.lru_cache(maxsize=4)
def load_chgnet(device: str = "cpu") -> Any:
    """The pretrained CHGNet :data:`CHGNET_MODEL` from the ``chgnet`` wheel, on ``device``, in eval mode; cached.
    Its graph converter refuses structures with isolated atoms (they are recorded as failures)."""
    model_module = require("chgnet.model", _EXTRA, "the CHGNet oracle")
    with _quiet():
        model = model_module.CHGNet.load(model_name=CHGNET_MODEL, use_device=device, verbose=False)
    model.graph_converter.on_isolated_atoms = "error"
    return model.eval()


def _check_structure(structure: Structure) -> str:
    """Why CHGNet should not be given this structure ('' if it can): partial occupancies or non-finite numbers."""
    if not structure.is_ordered:
        return "partial occupancies (CHGNet needs one element per site)"
    if not (np.all(np.isfinite(structure.lattice.matrix)) and np.all(np.isfinite(structure.frac_coords))):
        return "non-finite lattice or coordinates"
    if len(structure) == 0:
        return "no atoms"
    return ""


def _graph(model: Any, structure: Structure) -> tuple[Any, str]:
    """CHGNet's crystal graph of ``structure``, or (None, reason)."""
    reason = _check_structure(structure)
    if reason:
        return None, reason
    try:
        with _quiet():
            return model.graph_converter(structure), ""
    except Exception as err:  # noqa: BLE001 -- isolated atoms, unknown elements, ... are recorded
        return None, f"CHGNet graph: {err}"


def _energies_of_graphs(model: Any, graphs: list[Any], batch_size: int) -> list[float | str]:
    """Energy per atom (eV/atom) of each graph, or the reason it failed; a failing batch is retried one graph at
    a time so that one bad structure does not take its batch with it."""
    try:
        with _quiet():
            preds = model.predict_graph(graphs, task="e", batch_size=batch_size)
        preds = [preds] if isinstance(preds, dict) else preds
        return [float(p["e"]) for p in preds]
    except Exception as err:  # noqa: BLE001
        if len(graphs) == 1:
            return [f"CHGNet prediction: {err}"]
        return [value for g in graphs for value in _energies_of_graphs(model, [g], 1)]


def chgnet_energies(structures: Sequence[Structure], *, batch_size: int = DEFAULT_BATCH_SIZE,
                    device: str = "cpu") -> list[OracleResult]:
    """CHGNet's energy per atom (eV/atom) of each structure, in order, predicted in batches of ``batch_size``;
    a structure CHGNet cannot take, or a non-finite prediction, is an :class:`OracleResult` with ``ok=False``."""
    model = load_chgnet(device)
    results: list[OracleResult | None] = [None] * len(structures)
    ready: list[tuple[int, Any]] = []
    for i, structure in enumerate(structures):
        graph, reason = _graph(model, structure)
        if graph is None:
            results[i] = OracleResult(math.nan, False, reason)
        else:
            ready.append((i, graph))
    for start in range(0, len(ready), batch_size):
        chunk = ready[start:start + batch_size]
        for (i, _), value in zip(chunk, _energies_of_graphs(model, [g for _, g in chunk], batch_size)):
            if isinstance(value, str):
                results[i] = OracleResult(math.nan, False, value)
            elif not math.isfinite(value):
                results[i] = OracleResult(math.nan, False, f"non-finite CHGNet energy {value}")
            else:
                results[i] = OracleResult(value, True)
    return [r for r in results if r is not None]


def chgnet_forces(structure: Structure, *, device: str = "cpu") -> tuple[float, np.ndarray, np.ndarray]:
    """CHGNet on one structure: ``(energy per atom eV/atom, forces (n, 3) eV/Angstrom, stress (3, 3) GPa)``.
    Raises ValueError with the reason when CHGNet cannot take the structure or predicts non-finite values."""
    model = load_chgnet(device)
    graph, reason = _graph(model, structure)
    if graph is None:
        raise ValueError(f"CHGNet cannot evaluate this structure: {reason}")
    with _quiet():
        pred = model.predict_graph(graph, task="efs")
    energy = float(pred["e"])
    forces = np.asarray(pred["f"], dtype=float).reshape(len(structure), 3)
    stress = np.asarray(pred["s"], dtype=float).reshape(3, 3)
    if not (math.isfinite(energy) and np.all(np.isfinite(forces)) and np.all(np.isfinite(stress))):
        raise ValueError("CHGNet predicted non-finite energy, forces or stress for this structure")
    return energy, forces, stress


def chgnet_energy_forces(structures: Sequence[Structure], *, batch_size: int = DEFAULT_BATCH_SIZE,
                         device: str = "cpu") -> list[tuple[float, np.ndarray] | None]:
    """CHGNet's ``(energy per atom eV/atom, forces (n, 3) eV/Angstrom)`` of each structure, predicted in batches
    (gradient guidance calls it at every solver step); ``None`` for a structure CHGNet cannot take or a non-finite
    prediction (a failing batch is retried one structure at a time)."""
    model = load_chgnet(device)
    out: list[tuple[float, np.ndarray] | None] = [None] * len(structures)
    ready = [(i, graph) for i, graph in ((i, _graph(model, s)[0]) for i, s in enumerate(structures)) if graph is not None]

    def predict(chunk: list[tuple[int, Any]]) -> None:
        try:
            with _quiet():
                preds = model.predict_graph([g for _, g in chunk], task="ef", batch_size=len(chunk))
        except Exception:  # noqa: BLE001 -- retried one by one below, a lone failure stays None
            if len(chunk) > 1:
                for item in chunk:
                    predict([item])
            return
        for (i, _), pred in zip(chunk, [preds] if isinstance(preds, dict) else preds):
            energy, forces = float(pred["e"]), np.asarray(pred["f"], dtype=float).reshape(-1, 3)
            if math.isfinite(energy) and np.all(np.isfinite(forces)):
                out[i] = (energy, forces)

    for start in range(0, len(ready), batch_size):
        predict(ready[start:start + batch_size])
    return out


def mattergen_reference(structure: Structure) -> Structure:
    """MatterGen's ``preprocess_structure``: the spglib-refined (symmetrised, default symprec 0.01 Angstrom)
    conventional cell, its primitive cell, LLL-reduced."""
    symmetry = require("pymatgen.symmetry.analyzer", _EXTRA, "the relaxation RMSD")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spglib's deprecation notes about its error handling
        refined = symmetry.SpacegroupAnalyzer(structure).get_refined_structure()
    return refined.get_primitive_structure().get_reduced_structure(reduction_algo="LLL")


@functools.lru_cache(maxsize=1)
def _rmsd_matcher() -> Any:
    matcher = require("pymatgen.analysis.structure_matcher", _EXTRA, "the relaxation RMSD")
    return matcher.StructureMatcher(ltol=0.5, stol=MATTERGEN_MAX_RMSD, angle_tol=10, primitive_cell=True,
                                    scale=False, attempt_supercell=True, allow_subset=False)


def relaxation_rmsd(generated: Structure, relaxed: Structure) -> tuple[float, bool]:
    """MatterGen's RMSD in Angstrom between a generated structure and its relaxed structure (module docstring):
    ``(rmsd, matched)``; unmatched pairs get MatterGen's cap ``0.5 (V/N)^(1/3)`` and ``matched=False``."""
    reference = mattergen_reference(generated)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        match = _rmsd_matcher().get_rms_dist(relaxed, reference)
    volume_per_atom = 0.5 * (relaxed.volume / len(relaxed) + reference.volume / len(reference))
    length = volume_per_atom ** (1.0 / 3.0)
    if match is None:
        return MATTERGEN_MAX_RMSD * length, False
    return float(match[0]) * length, True


def displacement_rmsd(generated: Structure, relaxed: Structure) -> float:
    """Site-by-site RMSD in Angstrom between ``generated`` and ``relaxed`` (same sites in the same order):
    minimum-image fractional displacements minus their mean, in Cartesian coordinates of the relaxed lattice."""
    if len(generated) != len(relaxed):
        raise ValueError(f"displacement_rmsd needs the same sites: {len(generated)} vs {len(relaxed)}")
    delta = relaxed.frac_coords - generated.frac_coords
    delta -= np.round(delta)
    delta -= delta.mean(axis=0)
    delta -= np.round(delta)
    cartesian = delta @ relaxed.lattice.matrix
    return float(np.sqrt(np.mean(np.sum(cartesian**2, axis=1))))


def _failed_relax(reason: str, initial_energy: float = math.nan) -> RelaxResult:
    return RelaxResult(None, initial_energy, math.nan, math.nan, False, math.nan, 0, False, math.nan, False, reason)


def relax(structures: Sequence[Structure], steps: int, fmax: float = 0.1, *, optimizer: str = "FIRE",
          relax_cell: bool = True, device: str = "cpu") -> list[RelaxResult]:
    """Relax each structure with CHGNet's ``StructOptimizer`` (ASE ``optimizer``, FIRE by default) for at most
    ``steps`` steps or until the largest force (and, with ``relax_cell``, the cell stress through ASE's
    ``FrechetCellFilter``) is below ``fmax`` eV/Angstrom. In order; a structure that fails (CHGNet cannot take
    it, the optimiser raises, a non-finite energy) is a :class:`RelaxResult` with ``ok=False``, never raised.
    ``initial_energy`` of a failure is still given when CHGNet could evaluate the input."""
    if steps < 1:
        raise ValueError(f"relax needs at least one step, got steps={steps}")
    dynamics = require("chgnet.model.dynamics", _EXTRA, "CHGNet relaxation")
    model = load_chgnet(device)
    with _quiet():
        relaxer = dynamics.StructOptimizer(model=model, optimizer_class=optimizer, use_device=device,
                                           on_isolated_atoms="error")
    initial = chgnet_energies(structures, device=device)
    results = []
    for structure, start in zip(structures, initial):
        if not start.ok:
            results.append(_failed_relax(start.reason))
            continue
        try:
            with _quiet():
                out = relaxer.relax(structure.copy(), fmax=fmax, steps=steps, relax_cell=relax_cell, verbose=False,
                                    assign_magmoms=False)
        except Exception as err:  # noqa: BLE001 -- recorded, as any CHGNet failure
            results.append(_failed_relax(f"relaxation: {err}", start.energy))
            continue
        final = out["final_structure"]
        trajectory = out["trajectory"]
        final_energy = float(trajectory.energies[-1]) / len(final)
        if not math.isfinite(final_energy):
            results.append(_failed_relax(f"non-finite CHGNet energy after relaxation {final_energy}", start.energy))
            continue
        # the trajectory holds the initial frame, one frame per step, and the final frame once more
        taken = len(trajectory.energies) - 2
        max_force = float(np.linalg.norm(np.asarray(trajectory.forces[-1]), axis=1).max())
        rmsd, matched = relaxation_rmsd(structure, final)
        results.append(RelaxResult(final, start.energy, final_energy, rmsd, matched,
                                   displacement_rmsd(structure, final), taken, taken < steps, max_force, True))
    return results
