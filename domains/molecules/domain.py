"""The molecules domain adapter (registered as ``molecules``): 3-D molecular graphs on the shared core.

Fields: ``pos`` (ragged ``(N, 3)``, a zero-centre-of-mass Gaussian process), ``types`` (ragged ``(N,)``, a
categorical process over the elements) and optionally ``charges`` (a categorical process over
:data:`~sciffusion.domains.molecules.dataset.CHARGES`). Data: QM9 from ``qm9pack`` with EDM's split (the
embedded default), or a user's SMILES / SDF file (RDKit conformers, cached). Commands: ``train``, ``sample``
(SDF + PNG grid + CSV), ``evaluate`` (EDM's metrics).
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sciffusion.config import Config, ConfigError
from sciffusion.domain import Domain, Run, TrainSetup, read_run_summary
from sciffusion.domains.molecules.dataset import CHARGES, MoleculeDataset, PropertyNorm, draw_sizes, size_histogram
from sciffusion.domains.molecules.qm9 import (
    PROPERTIES,
    PROPERTY_RANGES,
    QM9_DECODER,
    MoleculeTable,
    cache_dir,
    load_qm9_split,
)
from sciffusion.domains.molecules.oracle import DESCRIPTOR_LABELS, ORACLES, XTB_LABELS
from sciffusion.domains.molecules.oracle import LABELS as ORACLE_LABELS
from sciffusion.domains.molecules.property_models import PropertyModel
from sciffusion.model import DiffusionModel, diffusion_model_from_config
from sciffusion.outputs import OutputError, check_file, publish_together
from sciffusion.registry import DOMAINS, DomainError
from sciffusion.reps.graph import ragged_from_sizes
from sciffusion.train.batches import NodeBudgetBatchSampler
from sciffusion.train.checkpoint import write_json_atomic

log = logging.getLogger(__name__)

META_FILE = "molecules.json"  # what sampling needs of the training data, written next to the run's config
QM9_PORTIONS = ("all", "first_half", "second_half")


@dataclass
class MoleculesData:
    """``data:`` section of a molecules config.

    ``source``: ``qm9`` (EDM's training split from ``qm9pack``; ``portion`` first_half / second_half are EDM's
    halves for the conditional protocol), ``smiles`` (a CSV with a ``smiles`` column, or one SMILES per line) or
    ``sdf`` (3-D records), from ``path``. ``elements``: the element of each type index (QM9: H, C, N, O, F); a
    user file's molecules with other elements are skipped. ``max_molecules``: use only the first so many
    (after a seeded shuffle; 0 = all). ``properties``: conditioning properties (QM9: gap, homo, lumo, mu, alpha,
    Cv). ``charges``: model formal charges as a third field. ``max_nodes``: atoms per training batch (0: batches
    of ``trainer.batch_size`` molecules).
    """

    source: Literal["qm9", "smiles", "sdf"] = "qm9"
    path: str = ""
    portion: Literal["all", "first_half", "second_half"] = "all"
    elements: list[str] = field(default_factory=lambda: list(QM9_DECODER))
    max_molecules: int = 0
    properties: list[str] = field(default_factory=list)
    charges: bool = False
    max_nodes: int = 0
    conformer_seed: int = 0

    def __post_init__(self) -> None:
        if self.source != "qm9" and not self.path:
            raise ConfigError(f"'data.path' is required for data.source '{self.source}'")
        if self.source == "qm9" and self.path:
            raise ConfigError("'data.path' is for data.source smiles / sdf; qm9 comes from the qm9pack package")
        if self.max_molecules < 0 or self.max_nodes < 0:
            raise ConfigError("'data.max_molecules' and 'data.max_nodes' must be >= 0")
        if len(set(self.elements)) != len(self.elements) or not self.elements:
            raise ConfigError(f"'data.elements' must be distinct element symbols, got {self.elements}")
        if self.source == "qm9":
            if self.elements != list(QM9_DECODER):
                raise ConfigError(f"'data.elements' for QM9 must be {list(QM9_DECODER)} (EDM's order)")
            unknown = sorted(set(self.properties) - set(PROPERTIES) - set(ORACLE_LABELS))
            if unknown:
                raise ConfigError(f"'data.properties': unknown {', '.join(unknown)} (QM9 has {', '.join(PROPERTIES)}; "
                                  f"oracle labels: {', '.join(ORACLE_LABELS)})")
        elif self.properties:
            raise ConfigError("'data.properties' needs data.source qm9 (user files carry no property columns)")
        if self.portion != "all" and self.source != "qm9":
            raise ConfigError("'data.portion' is EDM's QM9 halves; it needs data.source qm9")


@dataclass
class MoleculesTask:
    """``task:`` section. ``kind: generate`` (default) trains a generator; ``kind: property`` trains a property
    model of ``data.properties`` (:class:`~sciffusion.domains.molecules.property_models.PropertyModel`, the
    ``egnn`` net as its backbone): with ``noisy: false`` on clean molecules (EDM's classifier of the conditional
    protocol), with ``noisy: true`` on molecules corrupted by the config's ``processes`` (a regressor for
    ``sciffusion design GENERATOR_RUN --regressor THIS_RUN``; the generator must use the same processes)."""

    kind: Literal["generate", "property"] = "generate"
    noisy: bool = True


def edm_half(table: MoleculeTable, portion: str) -> MoleculeTable:
    """EDM's halves of the training split for the conditional protocol (``qm9_first_half`` / ``qm9_second_half``):
    a fixed permutation (``np.random.seed(42)``) of the training molecules, split in the middle."""
    if portion == "all":
        return table
    # EDM's qm9/data/utils.py: np.random.seed(42); permutation of its train.npz rows (ascending molecule ids, as ours)
    perm = np.random.RandomState(42).permutation(len(table))
    half = len(table) // 2
    return table.subset(np.sort(perm[:half] if portion == "first_half" else perm[half:]))


def load_training_table(data: MoleculesData) -> MoleculeTable:
    """The training molecules of a ``data:`` section."""
    if data.source == "qm9":
        table = edm_half(load_qm9_split("train"), data.portion)
    else:
        table = load_user_molecules(Path(data.path), data.source, tuple(data.elements), data.conformer_seed)
    if data.max_molecules and data.max_molecules < len(table):
        rows = np.random.RandomState(data.conformer_seed).permutation(len(table))[:data.max_molecules]
        table = table.subset(np.sort(rows))
    if set(data.properties) & set(ORACLE_LABELS):
        table = with_oracle_labels(table, [name for name in data.properties if name in ORACLE_LABELS])
    if len(table) == 0:
        raise ValueError(f"no training molecules in data.source {data.source}")
    return table


def with_oracle_labels(table: MoleculeTable, names: list[str]) -> MoleculeTable:
    """``table`` with the oracles' labels ``names`` of its molecules as properties: GFN2-xTB's on their DFT
    geometries (computed once, cached) and RDKit's descriptors of their EDM molecules; molecules with a NaN label
    among ``names`` (xTB failed, or not EDM-valid) are dropped (counted in the log)."""
    from sciffusion.domains.molecules.oracle import cached_xtb_labels, descriptor_labels

    molecules = [table.molecule(i) for i in range(len(table))]
    labels: dict[str, np.ndarray] = {}
    if set(names) & set(XTB_LABELS):
        labels |= cached_xtb_labels(table.ids, molecules, cache_dir() / "qm9_xtb_labels.npz", table.decoder)
    if set(names) & set(DESCRIPTOR_LABELS):
        labels |= descriptor_labels(molecules, table.decoder)
    table = replace(table, properties={**table.properties, **labels})
    ok = np.all([np.isfinite(labels[name]) for name in names], axis=0)
    if not ok.all():
        log.info("oracle labels: %d of %d molecules dropped (no value for %s)", int((~ok).sum()), len(table),
                 ", ".join(names))
    return table.subset(np.flatnonzero(ok))


def property_norms(data: MoleculesData, table: MoleculeTable) -> dict[str, PropertyNorm]:
    """Mean and mean absolute deviation of each conditioning property: of the training molecules, or, on EDM's
    halves, of the validation split (EDM's ``compute_mean_mad`` for ``qm9_*_half``, generator and classifier; the
    xTB labels are not part of that protocol and use the training molecules)."""
    edm = data.source == "qm9" and data.portion != "all"
    valid = load_qm9_split("valid") if edm and set(data.properties) & set(PROPERTIES) else None
    return {name: PropertyNorm.of((valid if valid is not None and name in PROPERTIES else table).properties[name])
            for name in data.properties}


def load_user_molecules(path: Path, source: str, elements: tuple[str, ...], seed: int) -> MoleculeTable:
    """A user's SMILES file (RDKit ETKDG + MMFF conformers, cached) or SDF file as a table; molecules that cannot
    be used are skipped and counted in the log."""
    from sciffusion.domains.molecules.io import cached_conformers, read_sdf

    if not path.is_file():
        raise FileNotFoundError(f"data.path {path} does not exist")
    if source == "smiles":
        conformers, skipped = cached_conformers(path, cache_dir() / "conformers", seed, allowed_elements=elements)
    else:
        conformers, skipped = read_sdf(path, allowed_elements=elements)
    if skipped:
        log.info("%s: skipped %s", path, ", ".join(f"{count} ({reason})" for reason, count in sorted(skipped.items())))
    if not conformers:
        raise ValueError(f"{path}: no usable molecules ({sum(skipped.values())} skipped)")
    sizes = np.array([c.n_atoms for c in conformers], dtype=np.int64)
    return MoleculeTable(np.concatenate([c.positions for c in conformers]).astype(np.float32),
                         np.concatenate([c.types(elements) for c in conformers]),
                         np.concatenate([c.charges for c in conformers]).astype(np.int64),
                         np.concatenate([[0], np.cumsum(sizes)]), {}, tuple(c.smiles for c in conformers),
                         np.array([c.source_index for c in conformers], dtype=np.int64), elements)


def training_reference_smiles(data: MoleculesData, table: MoleculeTable) -> set[str]:
    """EDM's novelty reference: the SMILES of the training molecules rebuilt from their geometries with EDM's bond
    rules (:func:`~sciffusion.domains.molecules.metrics.dataset_smiles`), cached per data section."""
    from sciffusion.domains.molecules.metrics import dataset_smiles

    key = f"{data.source}_{data.portion}_{data.max_molecules}_{data.conformer_seed}_{len(table)}"
    path = cache_dir() / f"reference_smiles_{key}.txt" if data.source == "qm9" else None
    if path is not None and path.is_file():
        return set(path.read_text().split())
    smiles = dataset_smiles([table.molecule(i) for i in range(len(table))], table.decoder)
    if path is not None:
        from sciffusion.train.checkpoint import write_text_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, "\n".join(sorted(smiles)) + "\n")
    return smiles


def describe_molecules(molecules: list["SampledMolecule"], elements: tuple[str, ...]) -> tuple[list[dict[str, Any]], list]:
    """Per molecule a row (EDM's SMILES of the largest fragment or empty, valid, stable, stable-atom fraction,
    atoms, fragments) and an RDKit Mol with the 3-D coordinates and EDM's bonds (for the SDF)."""
    from sciffusion.domains.molecules.io import mol_from_arrays
    from sciffusion.domains.molecules.metrics import bond_order_matrix, check_stability, molecule_smiles

    rows, mols = [], []
    for m in molecules:
        smiles, fragments = molecule_smiles(m.positions, m.types, elements)
        stable, stable_atoms, n_atoms = check_stability(m.positions, m.types, elements)
        orders = bond_order_matrix(m.positions, m.types, elements, sort_pair_by_type=True)
        pairs = np.argwhere(np.triu(orders) > 0)
        mols.append(mol_from_arrays(m.positions, m.types, elements, charges=m.charges, bonds=pairs,
                                    bond_orders=orders[pairs[:, 0], pairs[:, 1]] if len(pairs) else None))
        rows.append({"smiles": smiles or "", "valid": smiles is not None, "stable": bool(stable),
                     "stable_atom_fraction": stable_atoms / max(n_atoms, 1), "atoms": n_atoms,
                     "fragments": fragments})
    return rows, mols


@dataclass(frozen=True)
class TrainingMeta:
    """What sampling needs of the training data: elements, atom-count histogram, property normalisation, and the
    training SMILES (for novelty)."""

    elements: tuple[str, ...]
    size_histogram: tuple[int, ...]
    norms: dict[str, PropertyNorm]
    charges: bool

    def to_dict(self) -> dict[str, Any]:
        return {"elements": list(self.elements), "size_histogram": list(self.size_histogram),
                "norms": {k: {"mean": v.mean, "mad": v.mad} for k, v in self.norms.items()}, "charges": self.charges}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainingMeta":
        return cls(tuple(raw["elements"]), tuple(int(c) for c in raw["size_histogram"]),
                   {k: PropertyNorm(float(v["mean"]), float(v["mad"])) for k, v in raw["norms"].items()},
                   bool(raw["charges"]))


def node_fields(data: MoleculesData) -> list[str]:
    return ["pos", "types", *(["charges"] if data.charges else [])]


def check_processes(cfg: Config, processes: dict[str, Any]) -> None:
    """The categorical fields must have as many classes as the data has elements / charge classes."""
    expected = {"types": len(cfg.data.elements), "charges": len(CHARGES)}
    for name, classes in expected.items():
        process = processes.get(name)
        if process is not None and getattr(process, "num_classes", None) != classes:
            raise ConfigError(f"'processes.{name}' must be a categorical process with num_classes {classes}, got "
                              f"{getattr(process, 'num_classes', type(process).__name__)}")
    if not getattr(processes["pos"], "zero_com", False):
        raise ConfigError("'processes.pos' must keep the centre of mass at zero: use name 'zero_com'")


@dataclass
class SampledMolecule:
    """One generated molecule: positions ``(n, 3)`` Angstrom, type indices ``(n,)``, formal charges ``(n,)``."""

    positions: np.ndarray
    types: np.ndarray
    charges: np.ndarray


@torch.no_grad()
def sample_molecules(model: DiffusionModel, sizes: torch.Tensor, solver: str | dict[str, str], steps: int,
                     seed: int, batch_size: int, properties: torch.Tensor | None = None, guidance_scale: float = 1.0,
                     gradient_guidance: tuple = ()) -> list[SampledMolecule]:
    """Molecules with the given atom counts ``sizes`` ``(M,)``; ``properties`` ``(M, P)`` normalised conditions."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    fields = list(model.processes)
    out: list[SampledMolecule] = []
    for start in range(0, len(sizes), batch_size):
        chunk = sizes[start:start + batch_size]
        index = ragged_from_sizes(chunk, device)
        shapes = {"pos": (len(index), 3), **{name: (len(index),) for name in fields if name != "pos"}}
        cond = None if properties is None else {"properties": properties[start:start + batch_size].to(device)}
        x = model.sample(shapes, cond=cond, solver=solver, steps=steps, generator=generator,
                         index={name: index for name in fields}, guidance_scale=guidance_scale,
                         gradient_guidance=gradient_guidance)
        offsets = np.concatenate([[0], np.cumsum(chunk.numpy())])
        pos, types = x["pos"].double().cpu().numpy(), x["types"].cpu().numpy()
        charges = (np.asarray(CHARGES)[x["charges"].cpu().numpy()] if "charges" in x else np.zeros_like(types))
        for lo, hi in zip(offsets[:-1], offsets[1:]):
            out.append(SampledMolecule(pos[lo:hi], types[lo:hi], charges[lo:hi]))
    return out


def molecules_output(out: str | None, run: Run, default: str) -> Path:
    """``--out``: an ``.sdf`` file (its ``.png`` grid and ``.csv`` table are written beside it)."""
    path = Path(out) if out else run.run_dir / default
    return check_file(path, "--out", (".sdf",))


@DOMAINS.register("molecules", help="3-D molecules: zero-CoM positions + categorical atom types (embedded default: QM9 "
                                    "from qm9pack, EDM's split)")
class MoleculesDomain(Domain):
    name = "molecules"
    data_config = MoleculesData
    extra_sections = {"task": MoleculesTask}
    variable_size = True  # --length: atoms per molecule

    def build_model(self, cfg: Config) -> DiffusionModel:
        if cfg.net is None:
            raise ConfigError("a molecules config needs a 'net' section (egnn or e3nn_tp)")
        fields = node_fields(cfg.data)
        processes, weights = cfg.build_processes(fields)
        check_processes(cfg, processes)
        categorical = {"types": len(cfg.data.elements), **({"charges": len(CHARGES)} if cfg.data.charges else {})}
        task: MoleculesTask = cfg.section("task")
        if task.kind == "property":
            from sciffusion.domains.molecules.property_models import PropertyRegressor

            if not cfg.data.properties:
                raise ConfigError("task.kind 'property' needs the properties to learn: data.properties=[gap, ...]")
            if cfg.net.name != "egnn":
                raise ConfigError(f"task.kind 'property' uses the egnn network as its backbone, got '{cfg.net.name}'")
            regressor = PropertyRegressor(cfg.net.build(categorical=categorical, num_properties=0),
                                          len(cfg.data.properties))
            return PropertyModel(regressor, processes, tuple(cfg.data.properties), task.noisy)
        net = cfg.net.build(categorical=categorical, num_properties=len(cfg.data.properties))
        return diffusion_model_from_config(net, processes, cfg.loss, weights)

    def setup(self, cfg: Config) -> TrainSetup:
        data: MoleculesData = cfg.data
        model = self.build_model(cfg)
        table = load_training_table(data)
        dataset = MoleculeDataset(table, data.charges, tuple(data.properties), norms=property_norms(data, table))
        meta = TrainingMeta(tuple(data.elements), tuple(int(c) for c in size_histogram(table.sizes)), dataset.norms,
                            data.charges)
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / META_FILE, {**meta.to_dict(), "train_smiles_count": len(table)})
        log.info("molecules: %d training molecules (%s), %d atoms", len(table), data.source, int(table.sizes.sum()))

        def node_budget(first_step: int, last_step: int, rank: int, world: int) -> NodeBudgetBatchSampler:
            return NodeBudgetBatchSampler(dataset.sizes, data.max_nodes, cfg.seed, first_step, last_step, rank, world)

        return TrainSetup(model=model, dataset=dataset, collate=dataset.collate(),
                          batch_sampler=node_budget if data.max_nodes > 0 else None)

    # -- commands ------------------------------------------------------------------------------------
    @staticmethod
    def check_generator(run: Run) -> None:
        if isinstance(run.model, PropertyModel):
            raise ValueError(f"{run.run_dir} is a property model (task.kind property), not a generator: use it as "
                             f"`sciffusion design GENERATOR_RUN --regressor {run.run_dir} --target NAME=VALUE`")

    def meta(self, run: Run) -> TrainingMeta:
        return read_run_summary(run.run_dir, META_FILE, TrainingMeta.from_dict)

    def draw(self, run: Run, args: argparse.Namespace, meta: TrainingMeta, n: int, seed: int) -> torch.Tensor:
        """Atom counts: ``--length`` for every molecule, or draws from the training histogram."""
        length = getattr(args, "length", None)
        if length is not None:
            if length >= len(meta.size_histogram) * 2:
                log.warning("--length %d is far beyond the training molecules (at most %d atoms)", length,
                            len(meta.size_histogram) - 1)
            return torch.full((n,), int(length), dtype=torch.long)
        return draw_sizes(np.asarray(meta.size_histogram), n, torch.Generator().manual_seed(seed + 1))

    def sample(self, run: Run, args: argparse.Namespace) -> None:
        """``--out mols.sdf`` (default ``RUN_DIR/samples/molecules.sdf``) with ``mols.png`` (2-D depictions of the
        first 48) and ``mols.csv`` (SMILES, validity, stability per molecule) beside it."""
        self.check_generator(run)
        sc = run.sample_config(args)
        out = molecules_output(getattr(args, "out", None), run, "samples/molecules.sdf")
        meta = self.meta(run)
        if run.config.data.properties:
            raise ValueError("this run is property-conditioned: use `sciffusion design RUN_DIR --target NAME=VALUE`")
        sizes = self.draw(run, args, meta, sc.n, sc.seed)
        molecules = sample_molecules(run.model, sizes, sc.solver, sc.steps, sc.seed, sc.batch_size)
        rows, mols = describe_molecules(molecules, meta.elements)
        write_outputs(out, mols, rows)
        valid = sum(r["valid"] for r in rows)
        print(f"wrote {out} ({len(rows)} molecules, {valid} valid) and {out.with_suffix('.png').name}, "
              f"{out.with_suffix('.csv').name}")

    def evaluate(self, run: Run, args: argparse.Namespace) -> dict[str, Any]:
        """EDM's metrics on ``--n`` samples (atom / molecule stability, validity, uniqueness, novelty against the
        training SMILES) and distribution distances to the test split."""
        from sciffusion.domains.molecules.metrics import distribution_distances, evaluate

        self.check_generator(run)
        sc = run.sample_config(args)
        meta = self.meta(run)
        data: MoleculesData = run.config.data
        if data.properties:
            raise ValueError("this run is property-conditioned: `evaluate` scores unconditional samples; use "
                             "`sciffusion design RUN_DIR --target NAME=VALUE` (or benchmarks/molecules_conditional.py)")
        train = load_training_table(data)
        sizes = self.draw(run, args, meta, sc.n, sc.seed)
        molecules = sample_molecules(run.model, sizes, sc.solver, sc.steps, sc.seed, sc.batch_size)
        generated = [(m.positions, m.types) for m in molecules]
        metrics = evaluate(generated, meta.elements, training_reference_smiles(data, train))
        metrics.pop("smiles", None)
        if data.source == "qm9":
            test = load_qm9_split("test")
            reference = [test.molecule(i) for i in range(min(len(test), max(sc.n, 1000)))]
            metrics["distances_to_test"] = distribution_distances(generated, reference, meta.elements)
        return {"solver": sc.solver, "steps": sc.steps, "n_samples": len(molecules), **metrics}

    def design(self, run: Run, args: argparse.Namespace, targets: dict[str, float]) -> None:
        """``--target NAME=VALUE`` on a run conditioned on those properties (classifier-free guidance with
        ``--guidance-scale``; 1 = the conditional model): ``--out designs.sdf`` with ``.csv`` / ``.png`` beside it,
        each design scored by the physics oracle (GFN2-xTB gap and dipole, RDKit QED / logP / TPSA), and
        ``designs_targets.png``, the oracle's value against the target. With ``--regressor RUN`` (a noise-aware
        property model trained with this run's processes) an unconditional run is steered by gradient guidance
        instead, of strength ``--guidance-scale``."""
        self.check_generator(run)
        sc = run.sample_config(args)
        data: MoleculesData = run.config.data
        regressor_dir = getattr(args, "regressor", None)
        out = molecules_output(getattr(args, "out", None), run, "designs/designs.sdf")
        meta = self.meta(run)
        if regressor_dir is None:  # classifier-free guidance on a conditional run
            check_design_targets(targets, data.properties, require_all=True)
            sizes = self.draw(run, args, meta, sc.n, sc.seed)
            normalised = [meta.norms[name].normalise(targets[name]) for name in data.properties]
            properties = torch.tensor(normalised, dtype=torch.float32).expand(sc.n, len(normalised)).contiguous()
            molecules = sample_molecules(run.model, sizes, sc.solver, sc.steps, sc.seed, sc.batch_size,
                                         properties=properties, guidance_scale=sc.guidance_scale)
        else:  # gradient guidance of an unconditional run by a noise-aware regressor
            guide = self.regressor_guide(run, regressor_dir, targets, sc.guidance_scale)
            sizes = self.draw(run, args, meta, sc.n, sc.seed)  # after the checks: a refused design draws nothing
            molecules = sample_molecules(run.model, sizes, sc.solver, sc.steps, sc.seed, sc.batch_size,
                                         gradient_guidance=(guide,))
        rows, mols = describe_molecules(molecules, meta.elements)
        score_with_oracles(molecules, rows, meta.elements, targets)
        plot = out.with_name(f"{out.stem}_targets.png")
        write_outputs(out, mols, rows, extra={plot: lambda path: plot_targets(path, rows, targets)})
        summary = ", ".join(f"{name}: target {value:g}, oracle MAE {design_mae(rows, name, value):.3g}"
                            for name, value in targets.items() if name in ORACLE_COLUMN)
        print(f"wrote {out} ({len(rows)} designs, {sum(r['valid'] for r in rows)} valid; {summary}) and "
              f"{out.with_suffix('.csv').name}, {out.with_suffix('.png').name}, {plot.name}")


    def regressor_guide(self, run: Run, regressor_dir: str, targets: dict[str, float], scale: float) -> Any:
        """The gradient guidance of ``--regressor RUN``: a noisy property model trained with this run's processes."""
        from sciffusion.domain import load_run
        from sciffusion.domains.molecules.property_models import regressor_guidance

        if run.config.data.properties:
            raise DomainError("--regressor guides an unconditional run; this one is conditioned on "
                              f"{', '.join(run.config.data.properties)} (design it without --regressor)")
        reg = load_run(regressor_dir, device=run.device)
        if not isinstance(reg.model, PropertyModel) or not reg.model.noisy:
            raise DomainError(f"--regressor {regressor_dir}: not a noise-aware property model (train one with "
                              "task.kind=property task.noisy=true)")
        if reg.config.to_dict().get("processes") != run.config.to_dict().get("processes"):
            raise DomainError(f"--regressor {regressor_dir} was trained with other processes than {run.run_dir}; "
                              "its noisy inputs would not match the sampler's")
        check_design_targets(targets, list(reg.model.properties), require_all=False)
        norms = self.meta(reg).norms
        return regressor_guidance(reg.model, {k: norms[k].normalise(v) for k, v in targets.items()}, scale)


# property a model learns -> the design table's column of the oracle that checks it on the generated molecule (xTB's
# gap is not the DFT (B3LYP) gap of QM9: for `gap` the MAE is between a DFT-unit target and a GFN2 value; the
# xtb_* labels are the oracle's own quantity; logp / qed are RDKit's, of the valid designs)
ORACLE_COLUMN = {"gap": "xtb_gap_eV", "mu": "xtb_dipole_D", "xtb_gap": "xtb_gap_eV", "xtb_dipole": "xtb_dipole_D",
                 "logp": "logp", "qed": "qed"}


def target_range(name: str) -> tuple[float, float, str]:
    """The sensible range and unit of a design target."""
    if name in ORACLES:
        return ORACLES[name].low, ORACLES[name].high, ORACLES[name].unit
    low, high = PROPERTY_RANGES[name]
    return low, high, PROPERTIES[name][2]


def check_design_targets(targets: dict[str, float], conditioned: list[str], require_all: bool) -> None:
    """Every target must be a property the run is conditioned on (or the regressor predicts), inside its
    sensible range; with ``require_all`` every conditioning property needs a target."""
    if not conditioned:
        raise DomainError("this run is unconditional (data.properties is empty): train one with "
                          "data.properties=[gap] (classifier-free guidance), or guide it with --regressor RUN "
                          "(a property model trained with task.kind=property)")
    unknown = sorted(set(targets) - set(conditioned))
    if unknown:
        raise DomainError(f"unknown target {', '.join(unknown)}: this run is conditioned on {', '.join(conditioned)}")
    missing = sorted(set(conditioned) - set(targets))
    if require_all and missing:
        raise DomainError(f"give a --target for every conditioning property; missing {', '.join(missing)}")
    for name, value in targets.items():
        low, high, unit = target_range(name)
        if not low <= value <= high:
            raise DomainError(f"--target {name}={value:g} is outside the sensible range [{low:g}, {high:g}] {unit}")


def score_with_oracles(molecules: list[SampledMolecule], rows: list[dict[str, Any]], elements: tuple[str, ...], targets: dict[str, float]) -> None:
    """Add the oracles' values and each target to each row. Both oracles score the molecule a valid design's
    SMILES names, EDM's largest fragment: RDKit QED / logP / TPSA of that SMILES, and the GFN2-xTB gap (eV) and
    dipole (D) of that fragment at its generated geometry, with its implicit hydrogens placed by RDKit
    (:func:`~sciffusion.domains.molecules.oracle.largest_fragment_geometry`; ``xtb_atoms`` and
    ``xtb_added_hydrogens`` say what xTB saw). Invalid designs and xTB failures get NaN and the reason."""
    from rdkit import Chem

    from sciffusion.domains.molecules.oracle import largest_fragment_geometry, rdkit_descriptors, xtb_batch

    geometries = [largest_fragment_geometry(m.positions, m.types, elements) if row["valid"] else None
                  for m, row in zip(molecules, rows)]
    scored = [i for i, g in enumerate(geometries) if g is not None]
    results = dict(zip(scored, xtb_batch([geometries[i][:2] for i in scored], None)))
    for i, row in enumerate(rows):
        row.update({f"target_{name}": value for name, value in targets.items()})
        result, geometry = results.get(i), geometries[i]
        row.update({"xtb_gap_eV": result.gap if result else float("nan"),
                    "xtb_dipole_D": result.dipole if result else float("nan"),
                    "xtb_ok": bool(result and result.ok),
                    "xtb_failure": ("not valid" if result is None else "" if result.ok else result.reason),
                    "xtb_atoms": len(geometry[1]) if geometry else 0,
                    "xtb_added_hydrogens": geometry[2] if geometry else 0})
        valid = Chem.MolFromSmiles(row["smiles"]) if row["valid"] else None  # EDM's valid (largest) fragment
        descriptors = rdkit_descriptors(valid) if valid is not None else {}
        for key in ("qed", "logp", "tpsa"):
            row[key] = descriptors.get(key, float("nan"))


def oracle_values(rows: list[dict[str, Any]], name: str) -> np.ndarray:
    """The oracle's values for target ``name`` of the valid designs it scored (xTB failures are NaN)."""
    values = np.array([r[ORACLE_COLUMN[name]] for r in rows if r["valid"]], dtype=float)
    return values[np.isfinite(values)]


def design_mae(rows: list[dict[str, Any]], name: str, target: float) -> float:
    """Mean |oracle - target| over the valid designs the oracle scored (NaN if none)."""
    values = oracle_values(rows, name)
    return float(np.mean(np.abs(values - target))) if len(values) else float("nan")


def plot_targets(path: Path, rows: list[dict[str, Any]], targets: dict[str, float]) -> None:
    """One panel per target with an oracle: the oracle's value of each valid design against the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in targets if n in ORACLE_COLUMN]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4 * max(len(names), 1), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        column = ORACLE_COLUMN[name]
        ax.hist(oracle_values(rows, name), bins=30, color="#4477aa")
        ax.axvline(targets[name], color="#cc3311", label=f"target {targets[name]:g}")
        ax.set_xlabel(f"{column} ({'RDKit' if name in DESCRIPTOR_LABELS else 'GFN2-xTB'})")
        ax.set_ylabel("valid designs")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def write_outputs(out: Path, mols: list, rows: list[dict[str, Any]], extra: dict[Path, Any] | None = None) -> None:
    """The SDF (with each row's values as tags), its PNG grid, its CSV table and any ``extra`` files
    (``{path: write(temporary_path)}``), published together."""
    from sciffusion.domains.molecules.io import write_grid_png, write_sdf

    if not rows:
        raise OutputError("no molecules to write")
    extra = extra or {}
    with publish_together([out, out.with_suffix(".png"), out.with_suffix(".csv"), *extra]) as (sdf, png, table, *more):
        for temp, write in zip(more, extra.values()):
            write(temp)
        write_sdf(sdf, mols, rows)
        shown = [(m, str(r.get("smiles") or "invalid")) for m, r in zip(mols, rows)][:48]
        write_grid_png(png, [m for m, _ in shown], [legend for _, legend in shown])
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        table.write_text(buffer.getvalue())
