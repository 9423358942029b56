"""Domain adapters: how one kind of scientific data plugs into the shared trainer and CLI.

A domain lives in ``domains/<name>/`` (imported as ``sciffusion.domains.<name>``) and registers a
:class:`Domain` subclass under its name::

    from sciffusion.registry import DomainError, DomainUnavailable, discover_domain_names, get_domain, import_all_domains
    from sciffusion.domain import Domain, TrainSetup

    @DOMAINS.register("images")
    class ImagesDomain(Domain):
        name = "images"
        data_config = ImagesData              # dataclass validating the config's `data:` section
        extra_sections = {}                   # optional: {"impute": ImputeConfig, ...}

        def setup(self, cfg):                 # -> TrainSetup(model, dataset, collate, sample_hook)
        def build_model(self, cfg):           # same architecture, used to load a run
        def sample(self, run, args):          # `sciffusion sample RUN_DIR ...`
        def evaluate(self, run, args):        # `sciffusion evaluate RUN_DIR` -> metrics dict
        def design(self, run, args, targets): # optional: `sciffusion design RUN_DIR --target NAME=VALUE ...`
        def add_commands(self, subparsers):   # optional extra verbs; each sets `func=callable(args)`

The model in :class:`TrainSetup` must provide ``training_loss(batch, rng) -> scalar tensor`` and
draw every random number of a step from ``rng`` (a :class:`sciffusion.rng.StepRandom`).
Domains are imported lazily: only the domain a config names is imported for training.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from sciffusion.config import Config, ConfigError, SampleConfig, config_from_dict, from_dict, read_yaml, to_dict
from sciffusion.outputs import IMAGE_SUFFIXES, OutputError, check_folder
from sciffusion.registry import DomainError, DomainUnavailable, discover_domain_names, get_domain, import_all_domains
from sciffusion.train.checkpoint import EMA_FILE, MODEL_FILE, find_checkpoint, load_meta, load_module_weights
from sciffusion.train.distributed import resolve_device

T = TypeVar("T")

__all__ = [
    "Domain",
    "DomainError",
    "DomainUnavailable",
    "Run",
    "RunError",
    "TrainSetup",
    "discover_domain_names",
    "get_domain",
    "import_all_domains",
    "load_run",
    "read_run_summary",
]


class RunError(ValueError):
    """A folder that is not (yet) a loadable run."""


@dataclass
class TrainSetup:
    """What a domain hands the trainer.

    Attributes:
        model: module with ``training_loss(batch, rng) -> torch.Tensor`` (a scalar).
        dataset: map-style dataset; item ``i`` is whatever ``collate`` batches. Item ``i`` should
            be a pure function of ``i`` (draw augmentation in ``training_loss`` from ``rng``) so
            that resumed and multi-process runs see exactly the same data.
        collate: list of items -> batch (default ``torch.utils.data.default_collate``).
        sample_hook: ``(ema_model, step, samples_dir)``, called on rank 0 every
            ``trainer.sample_every`` steps to write samples and plots.
        batch_sampler: ``(first_step, last_step, rank, world) -> sampler`` yielding this rank's item indices for
            each step (default: :class:`~sciffusion.train.batches.StepBatchSampler` with ``trainer.batch_size``;
            ragged data can use :class:`~sciffusion.train.batches.NodeBudgetBatchSampler`). Every rank must get
            the same number of items per step.
    """

    model: torch.nn.Module
    dataset: torch.utils.data.Dataset
    collate: Callable[[list], Any] | None = None
    sample_hook: Callable[[torch.nn.Module, int, Path], None] | None = None
    batch_sampler: Callable[[int, int, int, int], torch.utils.data.Sampler] | None = None


class Domain:
    """Base class for domain adapters (see the module docstring)."""

    name: str = ""
    data_config: type | None = None
    extra_sections: dict[str, type] = {}
    variable_size: bool = False  # samples vary in size: the sampling commands take --length
    scores_against_truth: bool = False  # `evaluate --input --truth` scores an imputation of a user's file
    sampling_options: tuple[str, ...] = ()  # domain-specific sampling options it reads: "composition", "motif"

    def check_sampling_args(self, args: argparse.Namespace) -> None:
        """Refuse sampling options this domain does not use (one line, exit code 2)."""
        if getattr(args, "length", None) is not None and not self.variable_size:
            raise DomainError(f"--length: samples of domain '{self.name}' have a fixed size")
        if getattr(args, "truth", None) is not None and not self.scores_against_truth:
            raise DomainError(f"--input/--truth: domain '{self.name}' does not impute user files")
        for option in ("composition", "motif"):
            if getattr(args, option, None) is not None and option not in self.sampling_options:
                raise DomainError(f"--{option}: domain '{self.name}' does not take it")

    def setup(self, cfg: Config) -> TrainSetup:
        """Build the training data and the model from a validated config."""
        raise NotImplementedError(f"domain '{self.name}' does not implement setup")

    def build_model(self, cfg: Config) -> torch.nn.Module:
        """Build the (untrained) model of ``cfg``, the same architecture ``setup`` trains."""
        raise NotImplementedError(f"domain '{self.name}' does not implement build_model")

    def sample(self, run: "Run", args: argparse.Namespace) -> None:
        """Write samples of a trained run (``args`` carries ``--n``, ``--solver``, ``--out``, ...)."""
        raise DomainError(f"domain '{self.name}' does not support 'sample'")

    def evaluate(self, run: "Run", args: argparse.Namespace) -> dict[str, Any]:
        """Compute the domain's metrics for a trained run; the CLI writes them to ``RUN_DIR/metrics.json``."""
        raise DomainError(f"domain '{self.name}' does not support 'evaluate'")

    def design(self, run: "Run", args: argparse.Namespace, targets: dict[str, float]) -> None:
        """``sciffusion design RUN_DIR --target NAME=VALUE ...``: write designs steered toward ``targets``
        (an unknown property name is a :class:`DomainError`)."""
        raise DomainError(f"domain '{self.name}' does not support 'design'")

    def add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        """Add extra CLI verbs: ``p = subparsers.add_parser(...); p.set_defaults(func=callable)``."""
        return None


@dataclass
class Run:
    """A trained run folder, loaded.

    Attributes:
        run_dir: the folder.
        config: its resolved config (``run_dir`` set to where the folder is now).
        domain: the domain adapter.
        model: EMA weights when the run has them (else the raw weights), eval mode, on ``device``.
        device: where ``model`` lives.
        step: training step of the checkpoint.
        checkpoint: the checkpoint folder the weights came from.
        has_ema: whether ``model`` holds EMA weights.
    """

    run_dir: Path
    config: Config
    domain: Domain
    model: torch.nn.Module
    device: torch.device
    step: int
    checkpoint: Path
    has_ema: bool

    def raw_model(self) -> torch.nn.Module:
        """A fresh model with the raw (non-EMA) weights, eval mode, on ``device``."""
        model = self.domain.build_model(self.config)
        load_module_weights(model, self.checkpoint / MODEL_FILE)
        return model.to(self.device).eval()

    def sample_config(self, args: argparse.Namespace | None = None) -> SampleConfig:
        """``config.sample`` with the command-line values that were given (not ``None``) applied."""
        values = to_dict(self.config.sample)
        for key in ("n", "solver", "steps", "batch_size", "guidance_scale", "eta", "seed"):
            given = getattr(args, key, None) if args is not None else None
            if given is not None:
                values[key] = parse_solver(given) if key == "solver" else given
        return from_dict(SampleConfig, values, "sample")

    def output_dir(self, args: argparse.Namespace | None = None, default: str = "samples") -> Path:
        """``--out`` if given, else ``RUN_DIR/<default>``: a folder (not created here). An existing file,
        a file in the way or an image-file name is refused with :class:`~sciffusion.outputs.OutputError`."""
        out = getattr(args, "out", None) if args is not None else None
        path = Path(out) if out else self.run_dir / default
        if out and path.suffix.lower() in IMAGE_SUFFIXES:
            raise OutputError(f"--out {path}: domain '{self.domain.name}' writes a folder here, not a {path.suffix} file")
        return check_folder(path, "--out" if out else "output folder")


def read_run_summary(run_dir: Path, filename: str, parse: Callable[[dict[str, Any]], T]) -> T:
    """A run's training-data summary (the JSON a domain's ``setup`` writes beside the config: elements, size
    histogram, normalisations, ...), parsed by ``parse``; a missing or corrupted file is a one-line ``ValueError``."""
    path = Path(run_dir) / filename
    try:
        return parse(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: the run's training-data summary (retrain, or copy it back)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is corrupted ({e})") from None


def parse_solver(text: str) -> str | dict[str, str]:
    """``--solver`` text: one solver name, or per field ``field=name,field=name``."""
    if "=" not in text:
        return text
    out: dict[str, str] = {}
    for item in text.split(","):
        field, sep, name = (part.strip() for part in item.partition("="))
        if not sep or not field or not name:
            raise ValueError(f"--solver '{text}': give one solver name or field=solver pairs separated by commas")
        out[field] = name
    return out


def load_run(run_dir: str | Path, device: str | torch.device = "auto") -> Run:
    """Load a run folder written by the trainer: config, domain, model with EMA weights."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is a file, not a run folder")
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunError(f"{run_dir} is not a run folder (no config.yaml)")
    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        raise RunError(f"{run_dir} has no checkpoint yet ({run_dir / 'checkpoints' / 'last'}); train it first")
    step = load_meta(ckpt)["step"]
    raw = read_yaml(config_path)
    raw["run_dir"] = str(run_dir)
    try:
        cfg = config_from_dict(raw, source=str(config_path))
    except ConfigError as e:
        raise RunError(f"{config_path}: {e}") from None
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    domain = get_domain(cfg.domain)
    model = domain.build_model(cfg)
    has_ema = (ckpt / EMA_FILE).is_file()
    load_module_weights(model, ckpt / (EMA_FILE if has_ema else MODEL_FILE))
    model.to(dev).eval()
    return Run(run_dir=run_dir, config=cfg, domain=domain, model=model, device=dev, step=step, checkpoint=ckpt, has_ema=has_ema)
