"""The materials domain adapter (registered as ``materials``): periodic crystals on the shared core.

Fields: ``frac_coords`` (ragged ``(N, 3)``, a torus process), ``lattice`` (dense ``(B, 6)``, a Gaussian process on the
frame-free lattice numbers of :mod:`~sciffusion.domains.materials.crystal`) and, for de novo generation,
``atom_types`` (ragged ``(N,)``, a categorical process over the run's elements). ``task.kind: csp`` (crystal
structure prediction) gives the atom types to the network as a condition instead. Data: a CSV with a CIF column
(Perov-5, MP-20 layout), a folder of CIF files, or the structures that ship inside pymatgen (the embedded default).
Commands: ``train``, ``sample`` (CIF files, a CSV summary with spglib symmetry and validity, a PNG of a few cells;
``--composition`` for structure prediction), ``evaluate`` (CDVAE / DiffCSP metrics on the test data), ``design``
(classifier-free guidance toward property targets).
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from sciffusion.config import Config, ConfigError
from sciffusion.domain import Domain, Run, TrainSetup, read_run_summary
from sciffusion.domains.materials.crystal import (
    CrystalError,
    CrystalTable,
    Standardiser,
    bundled_structures,
    from_structures,
    lattice_features,
    lattice_parameters,
    make_structure,
    parse_composition,
    read_cif_folder,
    read_csv_crystals,
    space_group,
    write_cif,
)
from sciffusion.domains.materials.nets import FRAC, LATTICE, PROPERTIES, TYPES
from sciffusion.model import DiffusionModel, diffusion_model_from_config
from sciffusion.outputs import publish_together
from sciffusion.processes import CategoricalProcess, GaussianProcess, TorusProcess
from sciffusion.registry import DOMAINS, DomainError
from sciffusion.reps.graph import collate_graphs, ragged_from_sizes
from sciffusion.train.batches import NodeBudgetBatchSampler
from sciffusion.train.checkpoint import write_json_atomic

log = logging.getLogger(__name__)

META_FILE = "materials.json"  # what sampling needs of the training data, written next to the run's config
ENERGY_TARGET = "chgnet_energy"  # design target: CHGNet energy per atom (eV/atom), reached by gradient guidance


@dataclass
class MaterialsData:
    """``data:`` section of a materials config.

    ``source``: ``csv`` (a CSV with a CIF column ``cif_column``, e.g. Perov-5's ``val.csv``), ``cif_dir`` (a folder
    of ``*.cif``) or ``pymatgen`` (the embedded default: the structures inside the pymatgen wheel, its bundled test
    structures and the AFLOW prototype library) from ``path``. ``test_path``: the held-out crystals ``evaluate`` and
    the benchmarks score against (same kind as ``source``; for ``pymatgen`` a seeded 10 % of the structures).
    ``properties``: CSV columns to condition on (classifier-free guidance; ``design --target``). ``max_atoms``: larger
    cells are skipped (counted). ``elements``: the element classes (default: those of the training crystals).
    ``max_nodes``: atoms per training batch (0: batches of ``trainer.batch_size`` crystals).
    """

    source: Literal["csv", "cif_dir", "pymatgen"] = "pymatgen"
    path: str = ""
    test_path: str = ""
    cif_column: str = "cif"
    id_column: str = "material_id"
    properties: list[str] = field(default_factory=list)
    max_atoms: int = 20
    elements: list[str] = field(default_factory=list)
    max_crystals: int = 0
    max_nodes: int = 0
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.source != "pymatgen" and not self.path:
            raise ConfigError(f"'data.path' is required for data.source '{self.source}'")
        if self.source == "pymatgen" and (self.path or self.test_path):
            raise ConfigError("'data.path' / 'data.test_path' are for data.source csv / cif_dir; pymatgen's "
                              "structures come from the installed package")
        if self.max_atoms < 1:
            raise ConfigError(f"'data.max_atoms' must be >= 1, got {self.max_atoms}")
        if self.max_crystals < 0 or self.max_nodes < 0:
            raise ConfigError("'data.max_crystals' and 'data.max_nodes' must be >= 0")
        if self.properties and self.source != "csv":
            raise ConfigError("'data.properties' are CSV columns: they need data.source csv")
        if len(set(self.elements)) != len(self.elements):
            raise ConfigError(f"'data.elements' must be distinct element symbols, got {self.elements}")


@dataclass
class MaterialsTask:
    """``task:`` section. ``kind: csp`` predicts coordinates and lattice of a given composition (DiffCSP's task);
    ``kind: denovo`` generates atom types too (the atom count drawn from the training histogram)."""

    kind: Literal["csp", "denovo"] = "csp"


@dataclass
class MaterialsDesign:
    """``design:`` section. ``energy_scale``: strength of the CHGNet energy guidance (``--target chgnet_energy=E``,
    eV/atom: the coordinates are steered until CHGNet's energy is at or below ``E``); ``energy_substeps``: gradient
    sub-steps per solver step."""

    energy_scale: float = 0.05
    energy_substeps: int = 2

    def __post_init__(self) -> None:
        if not (self.energy_scale > 0) or self.energy_substeps < 1:
            raise ConfigError("'design': energy_scale > 0 and energy_substeps >= 1")


@dataclass
class MaterialsEvaluate:
    """``evaluate:`` section (also ``sciffusion evaluate``'s settings). ``test_crystals``: how many test crystals
    (0: all). ``samples_per_composition``: structure-prediction samples per test composition (DiffCSP: 1 and 20).
    ``workers``: processes for the structure matching."""

    test_crystals: int = 0
    samples_per_composition: int = 1
    workers: int = 1

    def __post_init__(self) -> None:
        if self.test_crystals < 0 or self.samples_per_composition < 1 or self.workers < 1:
            raise ConfigError("'evaluate': test_crystals >= 0, samples_per_composition >= 1 and workers >= 1")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def pymatgen_split(max_atoms: int, seed: int) -> tuple[CrystalTable, CrystalTable]:
    """The embedded default: pymatgen's bundled structures and AFLOW prototypes with at most ``max_atoms`` atoms,
    a seeded 90 / 10 split into training and test crystals."""
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY

    named = bundled_structures() + [(entry["tags"]["mineral"] or entry["tags"]["aflow"], entry["snl"].structure)
                                    for entry in AFLOW_PROTOTYPE_LIBRARY]
    table, skipped = from_structures([s for _, s in named], {}, [name for name, _ in named], max_atoms)
    if skipped:
        log.info("pymatgen structures: skipped %s", ", ".join(f"{v} ({k})" for k, v in sorted(skipped.items())))
    order = np.random.RandomState(seed).permutation(len(table))
    n_test = max(1, len(table) // 10)
    return table.subset(np.sort(order[n_test:])), table.subset(np.sort(order[:n_test]))


def read_crystals(data: MaterialsData, path: str) -> CrystalTable:
    """The crystals of ``path`` read as ``data.source`` says (skips counted in the log)."""
    source = Path(path)
    if data.source == "csv":
        table, skipped = read_csv_crystals(source, data.cif_column, data.properties, data.id_column, data.max_atoms)
    else:
        table, skipped = read_cif_folder(source, data.max_atoms)
    if skipped:
        log.info("%s: skipped %s", source, ", ".join(f"{v} ({k})" for k, v in sorted(skipped.items())))
    if len(table) == 0:
        raise ValueError(f"{source}: no usable crystals ({sum(skipped.values())} skipped)")
    return table


def load_tables(data: MaterialsData, with_test: bool = True) -> tuple[CrystalTable, CrystalTable | None]:
    """Training and test crystals of a ``data:`` section (test: ``None`` when no ``test_path`` is given, or not
    read when ``with_test`` is false)."""
    if data.source == "pymatgen":
        train, test = pymatgen_split(data.max_atoms, data.split_seed)
    else:
        train = read_crystals(data, data.path)
        test = read_crystals(data, data.test_path) if data.test_path and with_test else None
    if data.max_crystals and data.max_crystals < len(train):
        rows = np.random.RandomState(data.split_seed).permutation(len(train))[:data.max_crystals]
        train = train.subset(np.sort(rows))
    return train, test


@dataclass(frozen=True)
class TrainingMeta:
    """What sampling needs of the training data: element classes, atom-count histogram, the lattice and property
    standardisations and the training compositions (structure prediction without ``--composition`` draws them)."""

    elements: tuple[str, ...]
    size_histogram: tuple[int, ...]
    lattice: Standardiser
    properties: dict[str, Standardiser]
    compositions: tuple[str, ...]

    @property
    def max_atoms(self) -> int:
        return len(self.size_histogram) - 1

    def to_dict(self) -> dict[str, Any]:
        return {"elements": list(self.elements), "size_histogram": list(self.size_histogram),
                "lattice": self.lattice.to_dict(), "properties": {k: v.to_dict() for k, v in self.properties.items()},
                "compositions": list(self.compositions)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainingMeta":
        return cls(tuple(raw["elements"]), tuple(int(c) for c in raw["size_histogram"]),
                   Standardiser.from_dict(raw["lattice"]),
                   {k: Standardiser.from_dict(v) for k, v in raw["properties"].items()}, tuple(raw["compositions"]))


def element_classes(data: MaterialsData, table: CrystalTable) -> tuple[str, ...]:
    """``data.elements``, or the training crystals' elements; a training crystal with another element is an error."""
    present = table.elements()
    if not data.elements:
        return tuple(present)
    unknown = sorted(set(present) - set(data.elements))
    if unknown:
        raise ConfigError(f"'data.elements' lacks {', '.join(unknown)}, present in the training crystals")
    return tuple(data.elements)


def type_indices(atomic_numbers: np.ndarray, elements: Sequence[str]) -> np.ndarray:
    """Atomic numbers ``(n,)`` -> indices into ``elements`` (an element not in it is a :class:`CrystalError`)."""
    from pymatgen.core import Element

    lookup = {Element(symbol).Z: i for i, symbol in enumerate(elements)}
    missing = sorted({int(z) for z in atomic_numbers} - set(lookup))
    if missing:
        raise CrystalError(f"element(s) {', '.join(Element.from_Z(z).symbol for z in missing)} not in this run's "
                           f"elements ({', '.join(elements)})")
    return np.array([lookup[int(z)] for z in atomic_numbers], dtype=np.int64)


def make_meta(data: MaterialsData, table: CrystalTable) -> TrainingMeta:
    elements = element_classes(data, table)
    features = lattice_features(table.lengths, table.angles, table.sizes)
    properties = {}
    for name in data.properties:
        values = table.properties[name]
        if not np.isfinite(values).any():
            raise ValueError(f"property '{name}' has no finite value in the training crystals")
        properties[name] = Standardiser.of(values[np.isfinite(values)])
    compositions = tuple(sorted({table.structure(i).composition.formula.replace(" ", "") for i in range(len(table))}))
    return TrainingMeta(elements, tuple(int(c) for c in np.bincount(table.sizes, minlength=data.max_atoms + 1)),
                        Standardiser.of(features), properties, compositions)


class CrystalDataset(torch.utils.data.Dataset):
    """Items of a :class:`CrystalTable` as ``crystal`` graphs (see :mod:`~sciffusion.domains.materials.crystal`):
    ``frac_coords`` ``(n, 3)``, ``atom_types`` ``(n,)``, ``lattice`` ``(1, 6)`` standardised and, when
    conditioned, ``properties`` ``(1, P)`` standardised (NaN where a crystal lacks the value: that crystal trains
    the unconditional model only)."""

    def __init__(self, table: CrystalTable, meta: TrainingMeta, task: str, properties: Sequence[str]) -> None:
        self.table, self.task, self.properties = table, task, tuple(properties)
        self.types = type_indices(table.atomic_numbers, meta.elements)
        self.lattice = meta.lattice.normalise(lattice_features(table.lengths, table.angles, table.sizes)).astype(np.float32)
        self.normalised = (np.stack([meta.properties[p].normalise(table.properties[p]) for p in properties], axis=1)
                           .astype(np.float32) if properties else None)
        self.sizes = table.sizes.tolist()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> Any:
        from torch_geometric.data import Data

        lo, hi = int(self.table.offsets[i]), int(self.table.offsets[i + 1])
        frac = self.table.frac_coords[lo:hi].astype(np.float32)
        frac[frac >= 1] = 0.0  # float32 rounds 1 - 1e-9 up to 1
        item = Data(frac_coords=torch.from_numpy(frac),
                    atom_types=torch.from_numpy(self.types[lo:hi]), lattice=torch.from_numpy(self.lattice[i:i + 1]),
                    num_nodes=hi - lo)
        if self.normalised is not None:
            item.properties = torch.from_numpy(self.normalised[i:i + 1])
        return item

    def collate(self) -> Any:
        return partial(collate_crystals, generate_types=self.task == "denovo", conditioned=bool(self.properties))


def collate_crystals(items: list, generate_types: bool, conditioned: bool) -> dict[str, Any]:
    """The trainer's batch: ragged ``frac_coords`` (and ``atom_types`` when generated), dense ``lattice``; the cond
    holds the properties ``(B, P)`` and, for structure prediction, the given atom types ``(N,)``."""
    nodes = [FRAC, TYPES] if generate_types else [FRAC]
    batch = collate_graphs(items, node_fields=nodes, item_fields=[LATTICE],
                           cond_fields=[PROPERTIES] if conditioned else [])
    if not generate_types:
        from torch_geometric.data import Batch

        batch.setdefault("cond", {})[TYPES] = Batch.from_data_list(items)[TYPES]
    return batch


def field_names(task: str) -> list[str]:
    return [FRAC, LATTICE, *([TYPES] if task == "denovo" else [])]


def check_processes(processes: dict[str, Any], num_types: int) -> None:
    if not isinstance(processes[FRAC], TorusProcess):
        raise ConfigError("'processes.frac_coords' must be a torus process (name: torus)")
    if not isinstance(processes[LATTICE], GaussianProcess) or getattr(processes[LATTICE], "zero_com", False):
        raise ConfigError("'processes.lattice' must be a Gaussian process (flow, vp, ve or edm)")
    if TYPES in processes and (not isinstance(processes[TYPES], CategoricalProcess)
                               or processes[TYPES].num_classes != num_types):
        raise ConfigError(f"'processes.atom_types' must be a categorical process with num_classes {num_types} "
                          "(the run's element count)")


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------
@dataclass
class SampledCrystal:
    """One generated crystal: lattice lengths (A) / angles (degrees), element symbols ``(n,)``, fractional
    coordinates ``(n, 3)``."""

    lengths: np.ndarray
    angles: np.ndarray
    species: list[str]
    frac_coords: np.ndarray

    def structure(self) -> Any | None:
        """As a pymatgen ``Structure`` (``None`` when the lattice is degenerate)."""
        try:
            return make_structure(self.lengths, self.angles, [_atomic_number(s) for s in self.species], self.frac_coords)
        except Exception:
            return None


def _atomic_number(symbol: str) -> int:
    from pymatgen.core import Element

    return Element(symbol).Z


@torch.no_grad()
def sample_crystals(model: DiffusionModel, meta: TrainingMeta, sizes: Sequence[int],
                    compositions: Sequence[Sequence[str]] | None, solver: str | dict[str, str], steps: int, seed: int,
                    batch_size: int, properties: torch.Tensor | None = None, guidance_scale: float = 1.0,
                    guides: Callable[[torch.Tensor | None], Sequence[Any]] | None = None,
                    progress: bool = False) -> list[SampledCrystal]:
    """Crystals with ``sizes[i]`` atoms; ``compositions[i]`` (element symbols, one per atom) for structure prediction
    (``None``: de novo, the model draws the types); ``properties`` ``(M, P)`` standardised conditions; ``guides``:
    given a batch's atom types ``(N,)`` (``None`` de novo), its gradient guidance terms."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    generate_types = TYPES in model.processes
    if not generate_types and compositions is None:
        raise ValueError("a structure-prediction run needs the compositions to sample")
    out: list[SampledCrystal] = []
    for start in range(0, len(sizes), batch_size):
        chunk = list(sizes[start:start + batch_size])
        index = ragged_from_sizes(chunk, device)
        shapes = {FRAC: (len(index), 3), LATTICE: (len(chunk), 6), **({TYPES: (len(index),)} if generate_types else {})}
        cond: dict[str, torch.Tensor] = {}
        if compositions is not None and not generate_types:
            atoms = [s for c in compositions[start:start + batch_size] for s in c]
            cond[TYPES] = torch.as_tensor([meta.elements.index(s) for s in atoms], dtype=torch.long, device=device)
        if properties is not None:
            cond[PROPERTIES] = properties[start:start + batch_size].to(device)
        ragged = {FRAC: index, **({TYPES: index} if generate_types else {})}
        gradient_guidance = tuple(guides(cond.get(TYPES))) if guides is not None else ()
        x = model.sample(shapes, cond=cond or None, solver=solver, steps=steps, generator=generator, index=ragged,
                         guidance_scale=guidance_scale, gradient_guidance=gradient_guidance, progress=progress)
        raw = meta.lattice.denormalise(x[LATTICE].double().cpu().numpy())
        lengths, angles = lattice_parameters(raw, np.asarray(chunk))
        frac = x[FRAC].double().cpu().numpy()
        if generate_types:
            species_rows = [meta.elements[int(k)] for k in x[TYPES].cpu().numpy()]
        else:
            species_rows = atoms
        offsets = np.concatenate([[0], np.cumsum(chunk)])
        for b, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
            out.append(SampledCrystal(lengths[b], angles[b], species_rows[lo:hi], frac[lo:hi]))
    return out


def describe(crystals: Sequence[SampledCrystal]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Per crystal a summary row (formula, atoms, lattice, volume, density, spglib space group, CDVAE's structural
    and compositional validity) and its pymatgen structure (``None`` when degenerate)."""
    from sciffusion.domains.materials.metrics import compositional_validity, structure_validity

    rows, structures = [], []
    for i, crystal in enumerate(crystals):
        structure = crystal.structure()
        symbol, number = space_group(structure) if structure is not None else ("", 0)
        struct_ok = bool(structure is not None and structure_validity(structure))
        comp_ok = bool(structure is not None and compositional_validity(structure))
        rows.append({"index": i, "formula": structure.composition.reduced_formula if structure is not None else "",
                     "atoms": len(crystal.species), "a": crystal.lengths[0], "b": crystal.lengths[1],
                     "c": crystal.lengths[2], "alpha": crystal.angles[0], "beta": crystal.angles[1],
                     "gamma": crystal.angles[2], "volume": structure.volume if structure is not None else float("nan"),
                     "density": structure.density if structure is not None else float("nan"),
                     "space_group": symbol, "space_group_number": number, "structural_valid": struct_ok,
                     "compositional_valid": comp_ok, "valid": struct_ok and comp_ok})
        structures.append(structure)
    return rows, structures


def plot_cells(path: Path, structures: Sequence[Any], titles: Sequence[str], count: int = 8) -> None:
    """A PNG of the first ``count`` cells in 3-D: the cell's edges and its atoms coloured by element."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(s, t) for s, t in zip(structures, titles) if s is not None][:count]
    cols = min(4, max(len(shown), 1))
    rows = (max(len(shown), 1) + cols - 1) // cols
    fig = plt.figure(figsize=(3.2 * cols, 3.2 * rows))
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if np.abs(corners[a] - corners[b]).sum() == 1]
    cmap = plt.get_cmap("tab10")
    for n, (structure, title) in enumerate(shown):
        ax = fig.add_subplot(rows, cols, n + 1, projection="3d")
        cart = corners @ structure.lattice.matrix
        for a, b in edges:
            ax.plot(*zip(cart[a], cart[b]), color="0.6", lw=0.8)
        symbols = sorted({site.specie.symbol for site in structure})
        for k, symbol in enumerate(symbols):
            xyz = np.array([site.coords for site in structure if site.specie.symbol == symbol])
            ax.scatter(*xyz.T, s=60, color=cmap(k % 10), label=symbol, depthshade=False)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def write_crystals(out: Path, structures: Sequence[Any], rows: list[dict[str, Any]]) -> None:
    """``out/`` with one CIF per crystal (``crystal_0000.cif``; pymatgen's writer, symmetrised by spglib at 0.1 A),
    ``summary.csv`` and ``cells.png``, published together (on failure nothing is left half-written)."""
    if not rows:
        raise ValueError("no crystals to write")
    for row, structure in zip(rows, structures):
        row["cif"] = f"crystal_{row['index']:04d}.cif" if structure is not None else ""
    written = [(row["cif"], structure) for row, structure in zip(rows, structures) if structure is not None]
    paths = [out / "summary.csv", out / "cells.png", *(out / name for name, _ in written)]
    with publish_together(paths) as (summary, png, *cifs):
        for temp, (_, structure) in zip(cifs, written):
            write_cif(temp, structure)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        summary.write_text(buffer.getvalue())
        plot_cells(png, structures, [f"{r['formula']} {r['space_group']}" for r in rows])


# ------------------------------------------------------------------------------------------------
# The domain
# ------------------------------------------------------------------------------------------------
@DOMAINS.register("materials", help="periodic crystals: fractional coordinates on the torus, a frame-free lattice, "
                                    "atom types (structure prediction and de novo; embedded default: pymatgen's "
                                    "bundled structures and AFLOW prototypes)")
class MaterialsDomain(Domain):
    name = "materials"
    data_config = MaterialsData
    extra_sections = {"task": MaterialsTask, "evaluate": MaterialsEvaluate, "design": MaterialsDesign}
    variable_size = True  # --length: atoms per cell (de novo)
    sampling_options = ("composition",)

    def build_model(self, cfg: Config, meta: TrainingMeta | None = None) -> DiffusionModel:
        if cfg.net is None or cfg.net.name != "crystal_gnn":
            raise ConfigError("a materials config needs 'net: {name: crystal_gnn, ...}'")
        task: MaterialsTask = cfg.section("task")
        meta = meta or self.meta_of(Path(cfg.run_dir))
        processes, weights = cfg.build_processes(field_names(task.kind))
        check_processes(processes, len(meta.elements))
        net = cfg.net.build(num_types=len(meta.elements), generate_types=task.kind == "denovo",
                            num_properties=len(cfg.data.properties), lattice_mean=meta.lattice.mean,
                            lattice_spread=meta.lattice.spread)
        return diffusion_model_from_config(net, processes, cfg.loss, weights)

    def setup(self, cfg: Config) -> TrainSetup:
        data: MaterialsData = cfg.data
        task: MaterialsTask = cfg.section("task")
        train, _ = load_tables(data, with_test=False)
        meta = make_meta(data, train)
        model = self.build_model(cfg, meta)
        dataset = CrystalDataset(train, meta, task.kind, data.properties)
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / META_FILE, meta.to_dict())
        log.info("materials: %d training crystals (%s), %d atoms, %d elements", len(train), data.source,
                 int(train.sizes.sum()), len(meta.elements))

        def node_budget(first_step: int, last_step: int, rank: int, world: int) -> NodeBudgetBatchSampler:
            return NodeBudgetBatchSampler(dataset.sizes, data.max_nodes, cfg.seed, first_step, last_step, rank, world)

        return TrainSetup(model=model, dataset=dataset, collate=dataset.collate(),
                          batch_sampler=node_budget if data.max_nodes > 0 else None)

    @staticmethod
    def meta_of(run_dir: Path) -> TrainingMeta:
        return read_run_summary(run_dir, META_FILE, TrainingMeta.from_dict)

    # -- what to sample ------------------------------------------------------------------------------
    def compositions(self, run: Run, args: argparse.Namespace, meta: TrainingMeta, n: int, seed: int) -> tuple[list[int], list[list[str]] | None]:
        """Atom counts and, for structure prediction, the atoms of each sample: ``--composition`` for every sample,
        else (structure prediction) training compositions drawn at random or (de novo) counts from the training
        histogram, or ``--length``."""
        task: MaterialsTask = run.config.section("task")
        text = getattr(args, "composition", None)
        length = getattr(args, "length", None)
        if text is not None:
            if task.kind != "csp":
                raise DomainError("--composition needs a structure-prediction run (task.kind csp); this run generates "
                                  "the atom types itself")
            atoms = parse_composition(text, meta.elements, meta.max_atoms)
            return [len(atoms)] * n, [atoms] * n
        rng = np.random.RandomState(seed)
        if task.kind == "csp":
            if length is not None:
                raise DomainError("--length: a structure-prediction run takes --composition (the atoms of the cell)")
            drawn = [parse_composition(meta.compositions[k], meta.elements, meta.max_atoms)
                     for k in rng.randint(len(meta.compositions), size=n)]
            return [len(a) for a in drawn], drawn
        if length is not None:
            if length > meta.max_atoms:
                raise DomainError(f"--length {length}: this run's cells have at most {meta.max_atoms} atoms")
            return [int(length)] * n, None
        hist = np.asarray(meta.size_histogram, dtype=float)
        return rng.choice(len(hist), size=n, p=hist / hist.sum()).tolist(), None

    def sample(self, run: Run, args: argparse.Namespace) -> None:
        """``--out DIR`` (default ``RUN_DIR/samples``): CIF files, ``summary.csv`` and ``cells.png``."""
        sc = run.sample_config(args)
        meta = self.meta_of(run.run_dir)
        if run.config.data.properties:
            raise ValueError("this run is property-conditioned: use `sciffusion design RUN_DIR --target NAME=VALUE`")
        out = run.output_dir(args)
        sizes, compositions = self.compositions(run, args, meta, sc.n, sc.seed)
        crystals = sample_crystals(run.model, meta, sizes, compositions, sc.solver, sc.steps, sc.seed, sc.batch_size)
        rows, structures = describe(crystals)
        write_crystals(out, structures, rows)
        print(f"wrote {out}/ ({len(rows)} crystals, {sum(r['valid'] for r in rows)} valid; summary.csv, cells.png)")

    def evaluate(self, run: Run, args: argparse.Namespace) -> dict[str, Any]:
        """Structure prediction: DiffCSP's match rate and RMSE on the test crystals; de novo: CDVAE's validity,
        coverage and property EMDs of ``--n`` samples against the test crystals."""
        from sciffusion.domains.materials.benchmarking import evaluate_csp, evaluate_denovo

        sc = run.sample_config(args)
        meta = self.meta_of(run.run_dir)
        data: MaterialsData = run.config.data
        settings: MaterialsEvaluate = run.config.section("evaluate")
        _, test = load_tables(data)
        if test is None:
            raise ValueError("evaluate needs held-out crystals: set data.test_path")
        if settings.test_crystals and settings.test_crystals < len(test):
            test = test.subset(np.arange(settings.test_crystals))
        task: MaterialsTask = run.config.section("task")
        if task.kind == "csp":
            metrics = evaluate_csp(run.model, meta, test, settings.samples_per_composition, sc.solver, sc.steps,
                                   sc.seed, sc.batch_size, settings.workers)
        else:
            metrics = evaluate_denovo(run.model, meta, test, sc.n, sc.solver, sc.steps, sc.seed, sc.batch_size,
                                      settings.workers)
        return {"task": task.kind, "solver": sc.solver, "steps": sc.steps, **metrics}

    def design(self, run: Run, args: argparse.Namespace, targets: dict[str, float]) -> None:
        """``--target NAME=VALUE`` for every property the run is conditioned on (classifier-free guidance of strength
        ``--guidance-scale``) and / or ``--target chgnet_energy=E`` (eV/atom; gradient guidance of the coordinates by
        CHGNet's forces until its energy is at or below ``E``, strength ``design.energy_scale``). ``--out DIR`` as
        ``sample`` writes, each row with its targets and, with an energy target, its CHGNet energy."""
        sc = run.sample_config(args)
        meta = self.meta_of(run.run_dir)
        conditioned = list(run.config.data.properties)
        if getattr(args, "regressor", None) is not None:
            raise DomainError("--regressor: the materials domain designs with classifier-free guidance of a "
                              "property-conditioned run and with --target chgnet_energy=E")
        properties_wanted = {k: v for k, v in targets.items() if k != ENERGY_TARGET}
        energy_target = targets.get(ENERGY_TARGET)
        unknown = sorted(set(properties_wanted) - set(conditioned))
        missing = sorted(set(conditioned) - set(properties_wanted))
        if unknown or (missing and properties_wanted) or (not conditioned and energy_target is None):
            known = ", ".join([*conditioned, f"{ENERGY_TARGET} (CHGNet, eV/atom)"])
            raise DomainError(f"design targets: {known}" + (f"; unknown {', '.join(unknown)}" if unknown else "")
                              + (f"; missing {', '.join(missing)}" if missing and properties_wanted else ""))
        if energy_target is not None and not -15.0 <= energy_target <= 5.0:
            raise DomainError(f"--target {ENERGY_TARGET}={energy_target:g} is outside [-15, 5] eV/atom")
        out = run.output_dir(args, default="designs")
        sizes, compositions = self.compositions(run, args, meta, sc.n, sc.seed)
        properties = None
        if properties_wanted:
            values = [float(meta.properties[name].normalise(np.array([targets[name]]))[0]) for name in conditioned]
            properties = torch.tensor(values, dtype=torch.float32).expand(sc.n, len(values)).contiguous()
        guides = None
        if energy_target is not None:
            from sciffusion.domains.materials.guidance import chgnet_energy_guidance

            settings: MaterialsDesign = run.config.section("design")
            guides = lambda types: (chgnet_energy_guidance(  # noqa: E731
                meta.elements, meta.lattice.mean, meta.lattice.spread, energy_target, settings.energy_scale, types,
                settings.energy_substeps),)
        crystals = sample_crystals(run.model, meta, sizes, compositions, sc.solver, sc.steps, sc.seed, sc.batch_size,
                                   properties=properties, guidance_scale=sc.guidance_scale, guides=guides)
        rows, structures = describe(crystals)
        if energy_target is not None:
            from sciffusion.domains.materials.oracle import chgnet_energies

            scored = [i for i, s in enumerate(structures) if s is not None]
            energies = dict(zip(scored, chgnet_energies([structures[i] for i in scored])))
            for i, row in enumerate(rows):
                result = energies.get(i)
                row["chgnet_energy_eV_per_atom"] = result.energy if result is not None else float("nan")
                row["chgnet_failure"] = ("degenerate cell" if result is None else result.reason)
        for row in rows:
            row.update({f"target_{name}": value for name, value in targets.items()})
        write_crystals(out, structures, rows)
        print(f"wrote {out}/ ({len(rows)} designs toward {', '.join(f'{k}={v:g}' for k, v in targets.items())}, "
              f"{sum(r['valid'] for r in rows)} valid)")


def composition_atoms(table: CrystalTable, i: int) -> list[str]:
    """The element symbols of crystal ``i``'s atoms (its composition for structure prediction)."""
    from pymatgen.core import Element

    lo, hi = int(table.offsets[i]), int(table.offsets[i + 1])
    return [Element.from_Z(int(z)).symbol for z in table.atomic_numbers[lo:hi]]


__all__ = ["CrystalDataset", "MaterialsDomain", "SampledCrystal", "TrainingMeta", "composition_atoms", "describe",
           "load_tables", "sample_crystals"]
