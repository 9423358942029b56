"""The proteins domain adapter (registered as ``proteins``): backbones as residue frames on the shared core.

Fields (ragged, one row per residue, torch-geometric's ``batch`` as the index): ``trans`` ``(N, 3)``, CA positions in
units of ``data.trans_scale`` Angstrom, centred per chain, on a zero-centre-of-mass Gaussian process (FrameFlow's
R^3 flow); ``rots`` ``(N, 3, 3)``, the N-CA-C frames (:mod:`~sciffusion.domains.proteins.frames`), on the ``so3``
process (geodesic flow as FrameFlow, or IGSO(3) as FrameDiff). Conditioning: ``residue_pos`` ``(N,)``, each residue's
position along its chain (jumps at chain breaks). Data: every protein chain of the PDB / mmCIF files in
``data.dir`` (default: the 50 single chains with reference DSSP shipped in the ``mdanalysistests`` wheel), cut into
crops of at most ``data.max_length`` residues. Commands: ``train``, ``sample`` (PDB files + CSV), ``design`` (motif
scaffolding by inpainting, ``--motif FILE:CONTIG``; guidance toward ``--target helix= / strand= / rg=``),
``evaluate`` (the offline metrics of :mod:`~sciffusion.domains.proteins.metrics`).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from sciffusion.config import Config, ConfigError
from sciffusion.domain import Domain, Run, TrainSetup, read_run_summary
from sciffusion.domains.proteins.frames import backbone_atoms, frames_from_backbone, ideal_backbone
from sciffusion.domains.proteins.io import (
    Chain,
    MotifSegment,
    MotifSpec,
    ScaffoldRange,
    StructureError,
    motif_atoms,
    parse_motif_spec,
    pdb_lines,
    read_structure,
)
from sciffusion.guidance import GradientGuidance, Inpaint, Project
from sciffusion.model import AuxLoss, DiffusionModel, diffusion_model_from_config
from sciffusion.outputs import publish_together
from sciffusion.processes.base import segment_mean
from sciffusion.processes.gaussian import EDMProcess, GaussianProcess
from sciffusion.processes.so3 import GeodesicFlowProcess, IGSO3Process, SO3Process
from sciffusion.registry import DOMAINS, DomainError
from sciffusion.reps.graph import collate_graphs, ragged_from_sizes
from sciffusion.train.batches import NodeBudgetBatchSampler
from sciffusion.train.checkpoint import write_json_atomic

log = logging.getLogger(__name__)

META_FILE = "proteins.json"  # what sampling needs of the training data, written next to the run's config
FIELDS = ("trans", "rots")
STRUCTURE_GLOBS = ("*.pdb", "*.pdb.gz", "*.ent", "*.ent.gz", "*.cif", "*.cif.gz", "*.mmcif", "*.mmcif.gz")
TARGETS = {"helix": (0.0, 1.0, "fraction"), "strand": (0.0, 1.0, "fraction"), "rg": (5.0, 60.0, "A")}


def packaged_structures() -> Path:
    """The folder of the ``mdanalysistests`` wheel holding 50 single-chain PDB files with reference DSSP strings."""
    import importlib.util

    spec = importlib.util.find_spec("MDAnalysisTests")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("data.dir is empty and the embedded default needs the mdanalysistests package: "
                         "pip install 'sciffusion[proteins]' (or give data.dir=FOLDER of PDB / mmCIF files)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "dssp"


@dataclass
class ProteinsData:
    """``data:`` section of a proteins config.

    ``dir``: a folder of PDB / mmCIF files (``.gz`` too); empty: the embedded default, the 50 single chains
    (``?????.pdb.gz``) of the ``mdanalysistests`` wheel. Every protein chain of at least ``min_length`` residues is
    used; chains longer than ``max_length`` are cut into crops of ``max_length`` residues every ``crop_stride``
    residues (and one ending at the last residue); ``extra_crops``: more crop lengths (at least ``min_length``), cut
    the same way from every chain longer than them (so that shorter backbones are in the trained range). ``trans_scale``: Angstrom per unit of the ``trans`` field
    (FrameFlow: 10, coordinates in nm). ``break_jump``: the residue-position jump across a chain break.
    ``max_residues``: residues per training batch (0: batches of ``trainer.batch_size`` crops). ``max_files``: use
    only the first so many files in name order (0: all).
    """

    dir: str = ""
    min_length: int = 40
    max_length: int = 128
    crop_stride: int = 32
    extra_crops: list[int] = field(default_factory=list)
    trans_scale: float = 10.0
    break_jump: int = 32
    max_residues: int = 0
    max_files: int = 0

    def __post_init__(self) -> None:
        if self.min_length < 2 or self.max_length < self.min_length:
            raise ConfigError(f"need 2 <= data.min_length <= data.max_length, got {self.min_length}, {self.max_length}")
        if any(not self.min_length <= c < self.max_length for c in self.extra_crops):
            raise ConfigError(f"'data.extra_crops' must lie in [data.min_length, data.max_length), got {self.extra_crops}")
        if self.crop_stride < 1 or self.break_jump < 1:
            raise ConfigError("'data.crop_stride' and 'data.break_jump' must be >= 1")
        if not (math.isfinite(self.trans_scale) and self.trans_scale > 0):
            raise ConfigError(f"'data.trans_scale' must be a finite number > 0 (Angstrom per unit), got {self.trans_scale}")
        if self.max_residues < 0 or self.max_files < 0:
            raise ConfigError("'data.max_residues' and 'data.max_files' must be >= 0")
        if self.max_residues and self.max_residues < self.max_length:
            raise ConfigError(f"'data.max_residues' ({self.max_residues}) must hold one crop of data.max_length "
                              f"({self.max_length})")


def structure_files(data: ProteinsData) -> list[Path]:
    """The structure files of a ``data:`` section, in name order."""
    if data.dir:
        folder = Path(data.dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"data.dir {folder} is not a folder")
        files = sorted({p for pattern in STRUCTURE_GLOBS for p in folder.glob(pattern)})
    else:
        files = sorted(packaged_structures().glob("?????.pdb.gz"))
    if data.max_files:
        files = files[:data.max_files]
    if not files:
        raise ValueError(f"no PDB / mmCIF files in {data.dir or packaged_structures()}")
    return files


def load_chains(data: ProteinsData) -> tuple[list[Chain], Counter]:
    """The usable chains of the data and the reasons files or chains were skipped (counted)."""
    chains: list[Chain] = []
    skipped: Counter = Counter()
    for path in structure_files(data):
        try:
            structure = read_structure(path)
        except StructureError as e:
            skipped[str(e).split(": ", 1)[-1].split(" (")[0]] += 1
            log.info("skipped %s", e)
            continue
        for reason, count in structure.dropped.items():
            skipped[f"dropped {reason}"] += count
        for chain in structure.chains:
            if len(chain) < data.min_length:
                skipped[f"chains shorter than data.min_length ({data.min_length})"] += 1
            else:
                chains.append(chain)
    if not chains:
        raise ValueError(f"no protein chain of at least {data.min_length} residues in {data.dir or 'the embedded default'}"
                         f" ({', '.join(f'{k}: {v}' for k, v in skipped.items()) or 'nothing read'})")
    return chains, skipped


def crop_windows(length: int, max_length: int, stride: int, extra: Sequence[int] = ()) -> list[tuple[int, int]]:
    """``(start, end)`` windows of a chain: the whole chain when it fits, else crops of ``max_length`` every
    ``stride`` residues plus one ending at the last residue; the same for each ``extra`` crop length below
    ``length``."""
    out = [(0, length)] if length <= max_length else []
    for size in sorted({max_length, *extra}):
        if size >= length:
            continue
        starts = list(range(0, length - size + 1, stride))
        if starts[-1] != length - size:
            starts.append(length - size)
        out += [(s, s + size) for s in starts]
    return out


class FramesDataset(torch.utils.data.Dataset):
    """Crops of chains as torch-geometric ``Data`` items: ``trans`` ``(n, 3)`` float32 (CA, centred, in units of
    ``trans_scale`` A), ``rots`` ``(n, 3, 3)`` float32, ``residue_pos`` ``(n,)`` long. Item ``i`` is a pure function
    of ``i``."""

    def __init__(self, chains: Sequence[Chain], data: ProteinsData) -> None:
        self.data = data
        self.frames = []
        for chain in chains:
            atoms = torch.from_numpy(chain.atoms)
            rots, trans = frames_from_backbone(atoms[:, 0], atoms[:, 1], atoms[:, 2])
            self.frames.append((rots, trans, torch.from_numpy(chain.residue_index(data.break_jump))))
        self.windows = [(c, s, e) for c, chain in enumerate(chains)
                        for s, e in crop_windows(len(chain), data.max_length, data.crop_stride, data.extra_crops)]
        self.sizes = [e - s for _, s, e in self.windows]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Any:
        from torch_geometric.data import Data

        c, s, e = self.windows[i]
        rots, trans, pos = self.frames[c]
        ca = trans[s:e]
        return Data(trans=((ca - ca.mean(dim=0)) / self.data.trans_scale).float(), rots=rots[s:e].float(),
                    residue_pos=pos[s:e] - pos[s], num_nodes=e - s)

    def collate(self) -> Any:
        return partial(collate_graphs, node_fields=FIELDS, cond_fields=("residue_pos",))


@dataclass(frozen=True)
class TrainingMeta:
    """What sampling needs of the training data: the Angstrom scale, the crop-length histogram, the chains' names."""

    trans_scale: float
    length_histogram: tuple[int, ...]
    chains: tuple[str, ...]

    @property
    def length_range(self) -> tuple[int, int]:
        nonzero = np.flatnonzero(self.length_histogram)
        return int(nonzero.min()), int(nonzero.max())

    def to_dict(self) -> dict[str, Any]:
        return {"trans_scale": self.trans_scale, "length_histogram": list(self.length_histogram),
                "chains": list(self.chains)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainingMeta":
        return cls(float(raw["trans_scale"]), tuple(int(c) for c in raw["length_histogram"]), tuple(raw["chains"]))


@dataclass
class BackboneLoss:
    """``backbone_loss:`` section: FrameFlow's auxiliary losses on the predicted clean frames, added to the fields'
    losses for training times ``t < t_max`` (FrameFlow: 0.75 in this time, its ``aux_loss_t_pass`` 0.25) with weight
    ``weight`` (0: off). Both compare the ideal N, CA, C atoms of the predicted and true frames in units of the
    ``trans`` field, divided by ``max(t, t_clip)`` as FrameFlow's translation loss: the squared atom errors summed
    per residue over coordinates and averaged over the three atoms, and the squared errors of the distances between
    atoms of one chain closer than ``cutoff`` Angstrom in the true structure (consecutive CA-CA, N-C across the
    peptide bond, neighbours in space; FrameFlow's pairs) or in the predicted one (atoms placed too close: clashes),
    averaged over those pairs; each averaged per sample."""

    weight: float = 0.0
    t_max: float = 0.75
    t_clip: float = 0.1
    cutoff: float = 6.0

    def __post_init__(self) -> None:
        if not (self.weight >= 0 and 0 < self.t_max <= 1 and 0 < self.t_clip <= 1 and self.cutoff > 0):
            raise ConfigError("backbone_loss needs weight >= 0, 0 < t_max <= 1, 0 < t_clip <= 1 and cutoff > 0, got "
                              f"{self.weight}, {self.t_max}, {self.t_clip}, {self.cutoff}")


def backbone_loss(section: BackboneLoss, trans_scale: float) -> AuxLoss:
    """The core's ``aux_loss(x0_hat, x0, t, index) -> (B,)`` of :class:`BackboneLoss` (``trans`` ``(N, 3)`` in units
    of ``trans_scale`` Angstrom, ``rots`` ``(N, 3, 3)``, rows of each sample in chain order)."""
    cutoff = section.cutoff / trans_scale

    def loss(x0_hat: dict[str, Tensor], x0: dict[str, Tensor], t: Tensor, index: dict[str, Tensor]) -> Tensor:
        idx = index["trans"]
        samples = t.shape[0]
        pred = torch.stack(ideal_backbone(x0_hat["rots"], x0_hat["trans"]), dim=1)  # (N, 3 atoms, 3)
        true = torch.stack(ideal_backbone(x0["rots"], x0["trans"]), dim=1)
        atom = segment_mean(((pred - true) ** 2).sum(dim=(1, 2)), idx, samples) / 3
        dist = pred.new_zeros(samples)
        for b in range(samples):
            p, q = pred[idx == b].reshape(-1, 3), true[idx == b].reshape(-1, 3)
            d_true, d_pred = torch.cdist(q, q), torch.cdist(p, p)
            near = ((d_true < cutoff) | (d_pred.detach() < cutoff)) & ~torch.eye(len(q), dtype=torch.bool, device=q.device)
            dist[b] = ((d_pred - d_true)[near] ** 2).sum() / near.sum().clamp_min(1)
        scale = t.to(pred.dtype).clamp_min(section.t_clip) ** 2
        return section.weight * (t < section.t_max).to(pred.dtype) * (atom + dist) / scale

    return loss


def check_processes(processes: dict[str, Any]) -> None:
    """``trans`` must be a zero-CoM Gaussian process predicting ``x0`` and ``rots`` an SO(3) process whose output the
    net can give."""
    trans, rots = processes["trans"], processes["rots"]
    if not (isinstance(trans, GaussianProcess) and trans.zero_com):
        raise ConfigError("'processes.trans' must keep the centre of mass at zero: use name 'zero_com'")
    if trans.prediction != "x0":
        raise ConfigError(f"'processes.trans' must predict x0 (the net outputs clean frames), got '{trans.prediction}'")
    if not isinstance(rots, SO3Process):
        raise ConfigError("'processes.rots' must be the so3 process (kind geodesic_flow or igso3)")
    if isinstance(rots, IGSO3Process) and isinstance(trans, EDMProcess):
        raise ConfigError("so3 kind igso3 needs the raw time as the net's input: use a trans path other than edm")


def rot_output(process: SO3Process) -> dict[str, Any]:
    """The net's ``rot_output`` (and IGSO(3) process) for the ``rots`` process."""
    if isinstance(process, GeodesicFlowProcess):
        return {"rot_output": process.output}
    return {"rot_output": "igso3_score", "igso3": process}


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------
@dataclass
class Layout:
    """Where a motif sits in one design: ``length`` residues, motif rows ``rows`` ``(m,)`` with their frames
    ``trans`` ``(m, 3)`` (units, centred on the motif's centroid) and ``rots`` ``(m, 3, 3)``; ``contig`` says the
    layout in RFdiffusion's notation."""

    length: int
    rows: np.ndarray
    trans: np.ndarray
    rots: np.ndarray
    contig: str


def motif_constraints(layouts: Sequence[Layout], index: Tensor, dtype: torch.dtype) -> list[Any]:
    """The core constraints that keep each layout's motif: every sample translated so that its motif rows' centroid
    is at the origin (where the known motif is centred; a rigid shift the network is equivariant to, so the
    scaffold keeps its place around the motif), then the motif rows' frames inpainted (:class:`Inpaint`, known
    values noised to the current time)."""
    total = len(index)
    known_t = torch.zeros(total, 3, dtype=dtype)
    known_r = torch.eye(3, dtype=dtype).expand(total, 3, 3).clone()
    mask = torch.zeros(total, dtype=torch.bool)
    offset = 0
    for layout in layouts:
        rows = torch.as_tensor(layout.rows + offset)
        known_t[rows] = torch.as_tensor(layout.trans, dtype=dtype)
        known_r[rows] = torch.as_tensor(layout.rots, dtype=dtype)
        mask[rows] = True
        offset += layout.length
    known_t, known_r, mask, index = (v.to(index.device) for v in (known_t, known_r, mask, index))
    samples = int(index.max()) + 1
    motif_index = index[mask]

    def centre_on_motif(state: dict[str, Tensor]) -> dict[str, Tensor]:
        trans = state["trans"]
        shift = segment_mean(trans[mask], motif_index, samples)
        return {**state, "trans": trans - shift[index]}

    return [Project(centre_on_motif), Inpaint({"trans": known_t, "rots": known_r},
                                              {"trans": mask[:, None], "rots": mask[:, None, None]})]


@torch.no_grad()
def sample_frames(model: DiffusionModel, lengths: Sequence[int], solver: str | dict[str, str], steps: int, seed: int,
                  batch_size: int, layouts: Sequence[Layout] | None = None,
                  guides: Sequence[GradientGuidance] = ()) -> list[tuple[np.ndarray, np.ndarray]]:
    """Backbones of the given ``lengths``: per sample ``(rots (L, 3, 3), trans (L, 3) in model units)`` float64.
    ``layouts`` (one per sample) keep motifs by inpainting; ``guides`` steer by gradient guidance."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(lengths), batch_size):
        chunk = list(lengths[start:start + batch_size])
        index = ragged_from_sizes(chunk, device)
        cond = {"residue_pos": torch.cat([torch.arange(n) for n in chunk]).to(device)}
        constraints = motif_constraints(layouts[start:start + batch_size], index, next(model.parameters()).dtype) \
            if layouts is not None else []
        x = model.sample({"trans": (len(index), 3), "rots": (len(index), 3, 3)}, cond=cond, solver=solver, steps=steps,
                         generator=generator, index={"trans": index, "rots": index}, constraints=constraints,
                         gradient_guidance=guides)
        rots, trans = x["rots"].double().cpu().numpy(), x["trans"].double().cpu().numpy()
        offsets = np.concatenate([[0], np.cumsum(chunk)])
        out.extend((rots[lo:hi], trans[lo:hi]) for lo, hi in zip(offsets[:-1], offsets[1:]))
    return out


def atoms_of(rots: np.ndarray, trans_angstrom: np.ndarray) -> np.ndarray:
    """Ideal N, CA, C, O ``(L, 4, 3)`` of one chain's frames (translations in Angstrom)."""
    return backbone_atoms(torch.from_numpy(rots), torch.from_numpy(trans_angstrom)).numpy()


# ------------------------------------------------------------------------------------------------
# Guidance toward secondary structure or radius of gyration
# ------------------------------------------------------------------------------------------------
HELIX_I3, STRAND_I2, STRAND_I3, SOFT_WIDTH = 6.0, 6.0, 8.5, 0.2


def soft_secondary_structure(ca: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Differentiable per-residue helix and strand indicators from CA geometry (Angstrom) ``(N, 3)``, rows of each
    chain in order (``index`` ``(N,)``): helix where ``|CA_i - CA_i+3|`` is below 6.0 A (a helix has 5.0-5.4),
    strand where ``|CA_i - CA_i+2|`` is above 6.0 A (helix 5.4-5.6, strand about 6.6) and ``|CA_i - CA_i+3|`` above
    8.5 A (strand about 10); sigmoids of width 0.2 A. Returns both ``(N,)`` (0 where ``i + 3`` leaves the chain) and
    the rows counted ``(N,)`` bool. Proxies: DSSP, from hydrogen bonds, is the judge."""
    n = len(ca)
    helix, strand = ca.new_zeros(n), ca.new_zeros(n)
    valid = torch.zeros(n, dtype=torch.bool, device=ca.device)
    if n > 3:
        same3 = index[3:] == index[:-3]
        d3 = (ca[3:] - ca[:-3]).norm(dim=-1)
        d2 = (ca[2:-1] - ca[:-3]).norm(dim=-1)
        helix[:-3] = torch.sigmoid((HELIX_I3 - d3) / SOFT_WIDTH) * same3
        strand[:-3] = (torch.sigmoid((d2 - STRAND_I2) / SOFT_WIDTH) * torch.sigmoid((d3 - STRAND_I3) / SOFT_WIDTH)
                       * same3)
        valid[:-3] = same3
    return helix, strand, valid


def guidance_loss(targets: dict[str, float], trans_scale: float):
    """``loss(x0_hat, x_t, t, index) -> (B,)``: residues times the squared relative error of each target (radius of
    gyration in A; helix / strand fractions of :func:`soft_secondary_structure`)."""

    def loss(x0: dict[str, Tensor], x_t: dict[str, Tensor], t: Tensor, index: dict[str, Tensor]) -> Tensor:
        idx = index["trans"]
        ca = x0["trans"] * trans_scale
        samples = t.shape[0]
        counts = torch.bincount(idx, minlength=samples).to(ca.dtype)
        total = ca.new_zeros(samples)
        if "rg" in targets:
            centre = segment_mean(ca, idx, samples)
            rg = segment_mean(((ca - centre[idx]) ** 2).sum(-1), idx, samples).clamp_min(1e-8).sqrt()
            total = total + ((rg - targets["rg"]) / targets["rg"]) ** 2
        if "helix" in targets or "strand" in targets:
            helix, strand, valid = soft_secondary_structure(ca, idx)
            n_valid = ca.new_zeros(samples).index_add_(0, idx, valid.to(ca.dtype)).clamp_min(1.0)
            for name, value in (("helix", helix), ("strand", strand)):
                if name in targets:
                    fraction = ca.new_zeros(samples).index_add_(0, idx, value) / n_valid
                    total = total + (fraction - targets[name]) ** 2
        return counts * total

    return loss


def check_targets(targets: dict[str, float]) -> None:
    """Known target names within their sensible ranges; helix + strand at most 1."""
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise DomainError(f"unknown target {', '.join(unknown)} (proteins know {', '.join(TARGETS)}: helix and strand "
                          "fractions, rg in Angstrom)")
    for name, value in targets.items():
        low, high, unit = TARGETS[name]
        if not low <= value <= high:
            raise DomainError(f"--target {name}={value:g} is outside [{low:g}, {high:g}] ({unit})")
    if targets.get("helix", 0.0) + targets.get("strand", 0.0) > 1.0:
        raise DomainError("--target helix + strand must be at most 1")


# ------------------------------------------------------------------------------------------------
# Motif layouts
# ------------------------------------------------------------------------------------------------
@dataclass
class Motif:
    """A motif read from its file: the spec, each segment's backbone ``(n_k, 4, 3)`` (Angstrom, file coordinates)."""

    spec: MotifSpec
    atoms: list[np.ndarray]

    @property
    def size(self) -> int:
        return sum(len(a) for a in self.atoms)

    def centroid(self) -> np.ndarray:
        """The motif's CA centroid ``(3,)`` in the file's coordinates (Angstrom)."""
        return np.concatenate(self.atoms)[:, 1].mean(axis=0)


def read_motif(text: str) -> Motif:
    """Parse ``--motif FILE:CONTIG`` and read the motif residues from the file (``ValueError`` on bad input)."""
    spec = parse_motif_spec(text)
    structure = read_structure(spec.path)
    return Motif(spec, [motif_atoms(structure, seg) for seg in spec.segments])


def draw_layout(motif: Motif, length: int | None, trans_scale: float, rng: np.random.Generator) -> Layout:
    """Scaffold lengths for one design: the contig's ranges (drawn until they sum to ``length`` when given), or,
    for a contig of motif segments only, ``length - motif`` residues split at random into the ends (>= 0) and the
    gaps between segments (>= 3)."""
    parts = list(motif.spec.parts)
    segments = len(motif.spec.segments)
    if not any(isinstance(p, ScaffoldRange) for p in parts):
        if length is None:
            raise DomainError("--motif with motif ranges only needs --length (or scaffold lengths in the contig, "
                              "e.g. FILE:5-15/A10-25/5-15)")
        free = length - motif.size - 3 * (segments - 1)
        if free < 0:
            raise DomainError(f"--length {length} cannot hold the motif's {motif.size} residues and 3 between segments")
        cuts = np.sort(rng.integers(0, free + 1, size=segments))
        gaps = np.diff(np.concatenate([[0], cuts, [free]]))
        gaps[1:-1] += 3
        filled: list[MotifSegment | int] = []
        for k, seg in enumerate(motif.spec.segments):
            filled += [int(gaps[k]), seg]
        filled.append(int(gaps[-1]))
    else:
        ranges = [p for p in parts if isinstance(p, ScaffoldRange)]
        for _ in range(10000):
            drawn = [int(rng.integers(r.low, r.high + 1)) for r in ranges]
            if length is None or sum(drawn) + motif.size == length:
                break
        else:
            raise DomainError(f"--length {length}: the contig's scaffold ranges cannot make it with the motif's "
                              f"{motif.size} residues")
        it = iter(drawn)
        filled = [next(it) if isinstance(p, ScaffoldRange) else p for p in parts]
    rows, trans, rots, contig, position = [], [], [], [], 0
    atoms_by_segment = dict(zip(motif.spec.segments, motif.atoms))
    centre = motif.centroid()
    for part in filled:
        if isinstance(part, int):
            position += part
            if part:
                contig.append(str(part))
            continue
        atoms = atoms_by_segment[part]
        r, x = frames_from_backbone(*(torch.from_numpy(atoms[:, k]) for k in range(3)))
        rows.append(np.arange(position, position + len(atoms)))
        trans.append((x.numpy() - centre) / trans_scale)
        rots.append(r.numpy())
        contig.append(f"{part.chain}{part.start}-{part.end}")
        position += len(atoms)
    return Layout(position, np.concatenate(rows), np.concatenate(trans), np.concatenate(rots), "/".join(contig))


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------
def write_backbones(folder: Path, stem: str, structures: list[np.ndarray], rows: list[dict[str, Any]],
                    summary: dict[str, Any], remarks: list[str]) -> list[Path]:
    """``folder/<stem>_<i>.pdb`` per backbone ``(L, 4, 3)``, ``folder/<stem>s.csv`` (one row each) and
    ``folder/<stem>s_summary.json``, published together; returns the PDB paths."""
    pdbs = [folder / f"{stem}_{i:03d}.pdb" for i in range(len(structures))]
    table, summary_path = folder / f"{stem}s.csv", folder / f"{stem}s_summary.json"
    with publish_together([*pdbs, table, summary_path]) as temps:
        for temp, atoms, row in zip(temps, structures, rows):
            temp.write_text(pdb_lines([("A", atoms)], [*remarks, f"length {len(atoms)}"]))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["file", *rows[0]])
        writer.writeheader()
        writer.writerows({"file": p.name, **r} for p, r in zip(pdbs, rows))
        temps[-2].write_text(buffer.getvalue())
        temps[-1].write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return pdbs


@DOMAINS.register("proteins", help="protein backbones as residue frames: zero-CoM CA positions + SO(3) rotations "
                                   "(embedded default: 50 chains from the mdanalysistests wheel)")
class ProteinsDomain(Domain):
    name = "proteins"
    data_config = ProteinsData
    variable_size = True  # --length: residues per backbone
    sampling_options = ("motif",)  # design --motif FILE:CONTIG
    extra_sections = {"backbone_loss": BackboneLoss}

    def build_model(self, cfg: Config) -> DiffusionModel:
        if cfg.net is None or cfg.net.name != "frame_ipa":
            raise ConfigError("a proteins config needs 'net: {name: frame_ipa, ...}'")
        processes, weights = cfg.build_processes(FIELDS)
        check_processes(processes)
        if isinstance(processes["trans"], EDMProcess) and cfg.net.kwargs()["time_scaled_updates"]:
            raise ConfigError("net.time_scaled_updates needs the raw time as the net's input: set it false for the "
                              "edm trans path")
        net = cfg.net.build(trans_scale=cfg.data.trans_scale, **rot_output(processes["rots"]))
        section: BackboneLoss = cfg.section("backbone_loss")
        aux = backbone_loss(section, cfg.data.trans_scale) if section.weight > 0 else None
        return diffusion_model_from_config(net, processes, cfg.loss, weights, aux)

    def setup(self, cfg: Config) -> TrainSetup:
        data: ProteinsData = cfg.data
        model = self.build_model(cfg)
        chains, skipped = load_chains(data)
        dataset = FramesDataset(chains, data)
        if skipped:
            log.info("proteins: skipped %s", "; ".join(f"{v} {k}" for k, v in sorted(skipped.items())))
        meta = TrainingMeta(data.trans_scale, tuple(int(c) for c in np.bincount(dataset.sizes)),
                            tuple(c.name for c in chains))
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / META_FILE, {**meta.to_dict(), "skipped": dict(skipped)})
        log.info("proteins: %d chains, %d crops of %d-%d residues", len(chains), len(dataset), *meta.length_range)

        def node_budget(first_step: int, last_step: int, rank: int, world: int) -> NodeBudgetBatchSampler:
            return NodeBudgetBatchSampler(dataset.sizes, data.max_residues, cfg.seed, first_step, last_step, rank, world)

        return TrainSetup(model=model, dataset=dataset, collate=dataset.collate(),
                          batch_sampler=node_budget if data.max_residues > 0 else None)

    # -- commands ------------------------------------------------------------------------------------
    def meta(self, run: Run) -> TrainingMeta:
        return read_run_summary(run.run_dir, META_FILE, TrainingMeta.from_dict)

    def lengths(self, args: argparse.Namespace, meta: TrainingMeta, n: int, seed: int) -> list[int]:
        """``--length`` for every sample (a warning outside the trained range), or draws from the crop lengths."""
        low, high = meta.length_range
        length = getattr(args, "length", None)
        if length is not None:
            if not low <= length <= high:
                log.warning("warning: --length %d is outside the trained range %d-%d residues", length, low, high)
            return [int(length)] * n
        probs = np.asarray(meta.length_histogram, dtype=float)
        return [int(v) for v in np.random.default_rng(seed + 1).choice(len(probs), size=n, p=probs / probs.sum())]

    def sample(self, run: Run, args: argparse.Namespace) -> None:
        """``--out DIR`` (default ``RUN_DIR/samples``): ``sample_000.pdb``, ... (N, CA, C, O of ideal geometry),
        ``samples.csv`` with each backbone's metrics and ``samples_summary.json``."""
        from sciffusion.domains.proteins.metrics import backbone_metrics, summarize

        if getattr(args, "motif", None) is not None:
            raise DomainError("--motif: scaffold a motif with `sciffusion design RUN_DIR --motif FILE:CONTIG`")
        sc = run.sample_config(args)
        out = run.output_dir(args, "samples")
        meta = self.meta(run)
        lengths = self.lengths(args, meta, sc.n, sc.seed)
        frames = sample_frames(run.model, lengths, sc.solver, sc.steps, sc.seed, sc.batch_size)
        structures = [atoms_of(r, x * meta.trans_scale) for r, x in frames]
        rows = [backbone_metrics(a) for a in structures]
        summary = {"solver": sc.solver, "steps": sc.steps, "seed": sc.seed,
                   **summarize(rows, [a[:, 1] for a in structures])}
        write_backbones(out, "sample", structures, rows, summary, [f"sciffusion sample {run.run_dir} step {run.step}"])
        print(f"wrote {len(structures)} backbones to {out} (CA-CA within 0.1 A: {summary['ca_ca_within_0p1']:.3f}, "
              f"clash rate {summary['clash_rate']:.3f}, helix+strand {summary['ss_fraction']:.3f})")

    def evaluate(self, run: Run, args: argparse.Namespace) -> dict[str, Any]:
        """The offline metrics of ``--n`` samples (at ``--length`` or drawn lengths) with novelty against the training
        chains, and the same metrics of the training chains (the natural reference row)."""
        from sciffusion.domains.proteins.metrics import backbone_metrics, summarize

        sc = run.sample_config(args)
        meta = self.meta(run)
        chains, _ = load_chains(run.config.data)
        lengths = self.lengths(args, meta, sc.n, sc.seed)
        frames = sample_frames(run.model, lengths, sc.solver, sc.steps, sc.seed, sc.batch_size)
        structures = [atoms_of(r, x * meta.trans_scale) for r, x in frames]
        rows = [backbone_metrics(a) for a in structures]
        natural = [backbone_metrics(c.atoms, c.break_before) for c in chains]
        reference = [c.atoms[:, 1] for c in chains]
        return {"solver": sc.solver, "steps": sc.steps, "n_samples": len(rows),
                "samples": summarize(rows, [a[:, 1] for a in structures], reference),
                "natural_training_chains": summarize(natural, reference, by_length=False),
                "designability": "not computed: needs ProteinMPNN + ESMFold (model weights, not available offline)"}

    def design(self, run: Run, args: argparse.Namespace, targets: dict[str, float]) -> None:
        """Motif scaffolding (``--motif FILE:CONTIG``, the motif's frames kept by inpainting) and / or guidance toward
        ``--target helix=F`` / ``strand=F`` (fractions) / ``rg=A`` (gradient guidance of strength
        ``--guidance-scale`` on the predicted clean CA positions, 10 sub-steps; for ``rg`` keep it near 10: larger
        steps overshoot the radius). ``--out DIR`` (default ``RUN_DIR/designs``):
        ``design_000.pdb``, ... (a motif design in the motif file's coordinates), ``designs.csv``,
        ``designs_summary.json``."""
        from sciffusion.domains.proteins.metrics import backbone_metrics, motif_rmsd, summarize

        check_targets(targets)
        sc = run.sample_config(args)
        out = run.output_dir(args, "designs")
        meta = self.meta(run)
        motif_text = getattr(args, "motif", None)
        try:
            motif = read_motif(motif_text) if motif_text else None
        except StructureError as e:
            raise DomainError(str(e)) from None
        rng = np.random.default_rng(sc.seed)
        layouts = None
        if motif is not None:
            layouts = [draw_layout(motif, getattr(args, "length", None), meta.trans_scale, rng) for _ in range(sc.n)]
            low, high = meta.length_range
            outside = sorted({lay.length for lay in layouts if not low <= lay.length <= high})
            if outside:
                log.warning("warning: design length(s) %s outside the trained range %d-%d residues",
                            ", ".join(map(str, outside)), low, high)
            lengths = [lay.length for lay in layouts]
        else:
            if not targets:
                raise DomainError("design needs --motif FILE:CONTIG and / or --target helix= / strand= / rg=")
            lengths = self.lengths(args, meta, sc.n, sc.seed)
        guides = [GradientGuidance(guidance_loss(targets, meta.trans_scale), scale=sc.guidance_scale, fields=["trans"],
                                   through_model=False, substeps=10)] if targets else []
        frames = sample_frames(run.model, lengths, sc.solver, sc.steps, sc.seed, sc.batch_size, layouts, guides)
        shift = motif.centroid() if motif is not None else np.zeros(3)
        structures = [atoms_of(r, x * meta.trans_scale + shift) for r, x in frames]
        rows = []
        for i, atoms in enumerate(structures):
            row = backbone_metrics(atoms)
            if layouts is not None:
                placed = atoms[layouts[i].rows]
                row.update({"contig": layouts[i].contig, **motif_rmsd(placed, np.concatenate(motif.atoms))})
            row.update({f"target_{k}": v for k, v in targets.items()})
            rows.append(row)
        summary = {"solver": sc.solver, "steps": sc.steps, "seed": sc.seed, "targets": targets,
                   "motif": motif_text, "guidance_scale": sc.guidance_scale if targets else None,
                   **summarize(rows, [a[:, 1] for a in structures])}
        if layouts is not None:
            summary["motif_rmsd"] = float(np.mean([r["motif_rmsd"] for r in rows]))
            summary["motif_rmsd_placed"] = float(np.mean([r["motif_rmsd_placed"] for r in rows]))
        if "rg" in targets:
            summary["rg_mean"] = float(np.mean([r["rg"] for r in rows]))
        write_backbones(out, "design", structures, rows, summary, [f"sciffusion design {run.run_dir} step {run.step}"])
        described = [f"motif RMSD {summary['motif_rmsd']:.3f} A"] if layouts is not None else []
        described += [f"{k}: target {v:g}, got {summary['rg_mean'] if k == 'rg' else summary[f'{k}_fraction']:.3g}"
                      for k, v in targets.items()]
        print(f"wrote {len(structures)} designs to {out} ({'; '.join(described)})")
