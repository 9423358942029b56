"""The ``sciffusion`` command line (also ``python -m sciffusion``).

    sciffusion train CONFIG [KEY=VALUE ...] [--resume]
    sciffusion sample RUN_DIR [--n N] [--solver S] [--steps K] [--guidance-scale G] [--out PATH]
    sciffusion evaluate RUN_DIR
    sciffusion list
    sciffusion <domain verb> ...          (e.g. impute, plan, design: added by domains)

Bad input (config, files, run folders) prints ``sciffusion: error: <one line>`` to stderr and exits
with code 2 before anything is written; a diverged training run exits with code 1. Set
``SCIFFUSION_DEBUG=1`` to get the Python traceback instead.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import typing
from pathlib import Path
from typing import Sequence

import yaml

import sciffusion.registry as registry
from sciffusion.config import load_components, load_config
from sciffusion.train.errors import TrainingDiverged

# torch and the domains are imported inside the commands, so that `train missing.yaml` fails fast

__all__ = ["build_parser", "finite_float", "main", "non_negative_float", "positive_int"]

CORE_COMMANDS = ("train", "sample", "evaluate", "design", "list")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts, steps, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan / inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``sciffusion: error: ...`` line (exit code 2)."""

    def error(self, message: str) -> typing.NoReturn:
        _error(f"{message} (see '{self.prog} --help')")
        raise SystemExit(2)


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the run's `sample:` config section)")
    g.add_argument("--n", type=positive_int, help="number of samples")
    g.add_argument("--solver", help="solver name for every field, or field=solver pairs separated by commas "
                                    "(see `sciffusion list` for which solver drives which process)")
    g.add_argument("--steps", type=positive_int, help="number of solver steps")
    g.add_argument("--batch-size", type=positive_int, dest="batch_size", help="samples per forward batch")
    g.add_argument("--guidance-scale", type=finite_float, dest="guidance_scale", help="classifier-free guidance scale (1 = off)")
    g.add_argument("--eta", type=non_negative_float, help="DDIM eta (0 = deterministic)")
    g.add_argument("--seed", type=int, help="sampling seed")
    g.add_argument("--length", type=positive_int, help="size of every sample, for domains whose samples vary in size "
                                                       "(atoms of a molecule, residues of a backbone; default: drawn "
                                                       "from the training data)")
    g.add_argument("--composition", help="crystals: every sample has this composition, e.g. SrTiO3 (structure "
                                         "prediction); default: drawn by the model")
    g.add_argument("--motif", help="proteins: FILE.pdb:A10-25[,A40-45] motif residues kept fixed while the scaffold "
                                   "is generated around them")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run the model")


def build_parser(with_domains: bool = True) -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The parser; with ``with_domains`` every importable domain adds its verbs.

    Returns the parser and ``{domain: reason}`` for domains that could not be imported.
    """
    parser = _Parser(prog="sciffusion", description="Diffusion and flow-matching models for scientific data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train the model of a config file", description="Train CONFIG; KEY=VALUE items override config keys (e.g. trainer.max_steps=200).")
    p.add_argument("config", help="YAML config file, e.g. configs/images/digits.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last if it exists")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("run_dir", help="run folder written by `sciffusion train`")
    _add_sampling_args(p)
    p.add_argument("--out", help="where to write (default: RUN_DIR/samples). images: a .png file, or a folder that gets "
                                 "samples.png; other domains: a folder. Other image suffixes (.jpg, ...) are refused")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("evaluate", help="compute a trained run's metrics into RUN_DIR/metrics.json",
                       description="Score a trained run on its own test split, or, with --input and --truth (domains "
                                   "that impute), the imputation of INPUT's gaps against TRUTH's values.")
    p.add_argument("run_dir", help="run folder written by `sciffusion train`")
    p.add_argument("--input", help="a file whose gaps are imputed (with --truth; writes RUN_DIR/metrics_TRUTH.json)")
    p.add_argument("--truth", help="the same data with the true values of (some of) INPUT's gaps")
    _add_sampling_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("design", help="sample designs steered toward target properties (domains that support it)",
                       description="Sample N designs from a trained run, steered toward each NAME=VALUE target "
                                   "property (the domain says which properties it knows), and write them to --out.")
    p.add_argument("run_dir", help="run folder written by `sciffusion train`")
    p.add_argument("--target", action="append", default=[], metavar="NAME=VALUE", type=_target,
                   help="a target property value (repeat for several)")
    p.add_argument("--regressor", metavar="RUN_DIR",
                   help="a property model run (noise-aware regressor) that steers an unconditional run by gradient "
                        "guidance (its strength: --guidance-scale); without it the run must be conditional (CFG)")
    _add_sampling_args(p)
    p.add_argument("--out", help="where to write the designs (default: RUN_DIR/designs)")
    p.set_defaults(func=_cmd_design)

    p = sub.add_parser("list", help="list configs and registered components")
    p.set_defaults(func=_cmd_list)

    failed: dict[str, str] = {}
    if with_domains:
        from sciffusion.domain import get_domain, import_all_domains

        failed = import_all_domains()
        for name in registry.DOMAINS.names():
            try:
                get_domain(name).add_commands(sub)
            except argparse.ArgumentError as e:  # a verb another domain (or the core) already has
                failed[name] = f"its commands clash with existing ones ({e})"
    return parser, failed


def _target(text: str) -> tuple[str, float]:
    """``NAME=VALUE`` -> ``(name, value)`` with a finite value."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    number = finite_float(value)
    return name.strip(), number


# ------------------------------------------------------------------------------------ commands


def env_rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)  # a missing file fails before torch is imported

    from sciffusion.train.trainer import train

    result = train(cfg, resume=args.resume)
    if env_rank() == 0:
        if result.stopped:
            print(f"note: stopped by {result.stopped} at step {result.step} of {cfg.trainer.max_steps}; the checkpoint "
                  f"is saved; continue with: sciffusion train {args.config} --resume (and the same overrides)")
        print(f"trained to step {result.step}; run folder: {result.run_dir}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from sciffusion.domain import load_run

    run = load_run(args.run_dir, device=args.device)
    run.domain.check_sampling_args(args)
    run.domain.sample(run, args)
    return 0


def _cmd_design(args: argparse.Namespace) -> int:
    from sciffusion.domain import load_run

    if not args.target and getattr(args, "motif", None) is None:
        raise ValueError("design needs at least one --target NAME=VALUE (or a --motif, for domains that scaffold motifs)")
    names = [name for name, _ in args.target]
    if len(set(names)) != len(names):
        raise ValueError(f"--target names a property more than once: {', '.join(names)}")
    run = load_run(args.run_dir, device=args.device)
    run.domain.check_sampling_args(args)
    run.domain.design(run, args, dict(args.target))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from sciffusion.domain import load_run
    from sciffusion.train.checkpoint import write_json_atomic

    if (args.input is None) != (args.truth is None):
        raise ValueError("evaluate: --input and --truth go together")
    run = load_run(args.run_dir, device=args.device)
    run.domain.check_sampling_args(args)
    metrics = run.domain.evaluate(run, args)
    if not isinstance(metrics, dict):
        raise TypeError(f"domain '{run.domain.name}' evaluate() returned {type(metrics).__name__}, expected a dict")
    name = f"metrics_{Path(args.truth).stem}.json" if args.truth else "metrics.json"
    write_json_atomic(run.run_dir / name, metrics)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def _config_roots() -> list[Path]:
    roots = [Path.cwd() / "configs", Path(__file__).resolve().parent.parent / "configs"]
    unique: list[Path] = []
    for root in roots:
        if root.is_dir() and root.resolve() not in [u.resolve() for u in unique]:
            unique.append(root)
    return unique


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _cmd_list(args: argparse.Namespace) -> int:
    from sciffusion.domain import import_all_domains

    failed = import_all_domains()
    load_components()
    lines = ["configs:"]
    found = [p for root in _config_roots() for p in sorted(root.rglob("*.yaml"))]
    for path in found:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            domain = raw.get("domain", "?") if isinstance(raw, dict) else "?"
        except (OSError, yaml.YAMLError):
            domain = "unreadable"
        lines.append(f"  {_display(path):<48} {domain}")
    if not found:
        lines.append("  (none found under ./configs)")
    lines.append("domains:")
    names = sorted(set(registry.DOMAINS.names()) | set(failed))
    width = max((len(n) for n in names), default=0) + 2
    for name in names:
        text = f"unavailable: {failed[name]}" if name in failed else registry.DOMAINS.get(name).help
        lines.append(f"  {name:<{width}}{text}")
    for title, reg in (("nets", registry.NETS), ("processes", registry.PROCESSES), ("solvers", registry.SOLVERS), ("guidance", registry.GUIDANCE)):
        lines.append(f"{title}:")
        width = max((len(n) for n in reg.names()), default=0) + 2
        lines.extend(f"  {e.name:<{width}}{e.builder().describe() if reg is registry.SOLVERS else e.help}" for e in reg.entries())
        if not reg.names():
            lines.append("  (none registered)")
    lines.append("solvers by process (default first):")
    lines.extend(_solvers_by_process())
    print("\n".join(lines))
    return 0


def _solvers_by_process() -> list[str]:
    """One line per registered process: the solvers that can drive it, its default first (a process is built
    with its config's defaults; one that needs settings, e.g. a number of classes, is built with small ones)."""
    from sciffusion.sampling import compatible_solvers

    lines = []
    width = max((len(n) for n in registry.PROCESSES.names()), default=0) + 2
    for entry in registry.PROCESSES.entries():
        try:
            process = entry.builder(**_default_settings(entry.config))
        except (TypeError, ValueError) as e:
            lines.append(f"  {entry.name:<{width}}(cannot build with default settings: {e})")
            continue
        names = compatible_solvers(process)
        ordered = [process.default_solver] + [n for n in names if n != process.default_solver]
        lines.append(f"  {entry.name:<{width}}{', '.join(ordered)}")
    return lines


def _default_settings(config: type | None) -> dict:
    """Keyword arguments of a process config's defaults; required integer fields (e.g. ``num_classes``) get 2."""
    import dataclasses

    if config is None:
        return {}
    out = {}
    for f in dataclasses.fields(config):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            out[f.name] = 2
    return {f.name: getattr(config(**out), f.name) for f in dataclasses.fields(config)}


# ------------------------------------------------------------------------------------ main


def _path_problem(error: OSError) -> str:
    """One line for a path the command cannot use (a file where a folder goes, no permission, ...)."""
    if error.filename is None:
        return str(error)
    what = {FileExistsError: "a file of that name already exists", NotADirectoryError: "part of the path is a file, not a folder",
            IsADirectoryError: "it is a folder, not a file", PermissionError: "permission denied"}
    reason = next((text for kind, text in what.items() if isinstance(error, kind)), error.strerror)
    return f"{error.filename}: {reason}"


def _error(message: object) -> None:
    if env_rank() == 0:
        print("sciffusion: error: " + " ".join(str(message).split()), file=sys.stderr)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (it may be replaced)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def _configure_logging() -> None:
    logger = logging.getLogger("sciffusion")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("sciffusion: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if env_rank() == 0 else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _configure_logging()
    debug = os.environ.get("SCIFFUSION_DEBUG", "") not in ("", "0")
    first = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser, failed = build_parser(with_domains=first not in CORE_COMMANDS)
        if first is not None and first not in CORE_COMMANDS and not argv[0].startswith("-"):
            known = sorted(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
            if first not in known:
                extra = "; unavailable domains: " + "; ".join(f"{k} ({v})" for k, v in failed.items()) if failed else ""
                _error(f"unknown command '{first}' (commands: {', '.join(known)}){extra}")
                return 2
        args = parser.parse_args(argv)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return 2
        return int(func(args) or 0)
    except SystemExit as e:  # argparse: --help (0) or usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except KeyboardInterrupt:
        _error("interrupted (resume training with --resume from the last checkpoint)")
        return 130
    except TrainingDiverged as e:
        if debug:
            raise
        _error(e)
        return 1
    except (ValueError, registry.RegistryError, FileNotFoundError) as e:
        if debug:
            raise
        _error(e)
        return 2
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        if debug:
            raise
        _error(_path_problem(e))
        return 2
    except (OSError, NotImplementedError) as e:
        if debug:
            raise
        _error(f"{type(e).__name__}: {e}")
        return 1
