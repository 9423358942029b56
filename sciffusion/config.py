"""Typed configuration: a YAML file plus dotted overrides, validated into dataclasses.

A config file looks like::

    domain: images
    seed: 0
    data: {...}                 # validated by the domain's ``data_config`` dataclass
    net: {name: unet2d, ...}    # ``name`` looked up in ``sciffusion.registry.NETS``; other keys
                                # validated by that entry's ``config`` dataclass
    process: {name: vp, ...}    # same with PROCESSES (the one-field form), or per field:
    processes:                  #   {field: {name: ..., weight: <loss weight, default 1>, <process keys>}}
      pos: {name: zero_com, path: edm}
      atom_types: {name: categorical, num_classes: 5, weight: 0.4}
    loss: {...}                 # LossConfig
    trainer: {...}              # TrainerConfig
    sample: {...}               # SampleConfig
    <extra>: {...}              # sections a domain declares in ``Domain.extra_sections``

Every problem is a :class:`ConfigError` whose message is one line naming the dotted key or the
file, e.g. ``config error: unknown key 'trainer.max_stpes' (did you mean 'max_steps'?)``.
Components are found by name in registries; a config never names an import path.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import importlib
import importlib.util
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, Union

import yaml

from sciffusion.registry import NETS, PROCESSES, SOLVERS, DomainError, Registry, get_domain

__all__ = [
    "Component",
    "Config",
    "ConfigError",
    "FieldError",
    "LossConfig",
    "SampleConfig",
    "TrainerConfig",
    "apply_overrides",
    "config_from_dict",
    "from_dict",
    "load_components",
    "load_config",
    "to_dict",
]

CORE_COMPONENT_PACKAGES = ("sciffusion.processes", "sciffusion.sampling", "sciffusion.guidance", "sciffusion.nets")


class ConfigError(ValueError):
    """Invalid configuration. ``str(error)`` is a single line starting with ``config error:``."""

    def __init__(self, message: str) -> None:
        super().__init__("config error: " + " ".join(message.split("\n")))


class FieldError(ValueError):
    """Raised from a config dataclass's ``__post_init__`` to reject one field's value.

    ``from_dict`` turns it into a :class:`ConfigError` naming the full dotted key, e.g.
    ``FieldError("cond_drop_prob", "must be in [0, 1], got 1.5")`` inside the ``loss`` section
    becomes ``config error: 'loss.cond_drop_prob' must be in [0, 1], got 1.5``.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"'{key}' {message}")
        self.key, self.message = key, message


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise FieldError(key, message)


# --------------------------------------------------------------------------------------------
# Standard sections
# --------------------------------------------------------------------------------------------


@dataclass
class LossConfig:
    """How the denoising loss is weighted over time and how training times are drawn."""

    weighting: Literal["uniform", "min_snr", "edm", "velocity"] = "uniform"
    min_snr_gamma: float = 5.0  # the cap of the x0-space weight of min_snr and velocity
    time_sampler: Literal["uniform", "logit_normal", "log_normal", "discrete"] = "uniform"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    log_normal_mean: float = -1.2
    log_normal_std: float = 1.2
    cond_drop_prob: float = 0.1

    def __post_init__(self) -> None:
        _check(self.min_snr_gamma > 0, "min_snr_gamma", f"must be > 0, got {self.min_snr_gamma}")
        _check(self.logit_normal_std > 0, "logit_normal_std", f"must be > 0, got {self.logit_normal_std}")
        _check(self.log_normal_std > 0, "log_normal_std", f"must be > 0, got {self.log_normal_std}")
        _check(0.0 <= self.cond_drop_prob <= 1.0, "cond_drop_prob", f"must be in [0, 1], got {self.cond_drop_prob}")


@dataclass
class TrainerConfig:
    """Optimisation, precision, logging and checkpointing of :class:`sciffusion.train.Trainer`.

    ``batch_size`` is the *global* batch: under DDP each of ``W`` processes takes ``batch_size / W``.
    ``grad_clip`` of ``None`` or ``0`` disables clipping (the norm is still logged and checked).
    ``ema_decay`` of ``0`` disables the EMA model. ``checkpoint_every`` / ``sample_every`` of ``0``
    mean "only at the end" / "never". ``progress`` draws a progress bar, and only when stderr is a terminal.
    ``max_minutes`` > 0 is a wall-clock budget for one invocation: when it is spent, the current step finishes,
    a checkpoint is saved and training stops as after SIGINT (``--resume`` continues exactly).
    """

    max_steps: int = 1000
    max_minutes: float = 0.0
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 50
    sample_every: int = 0
    checkpoint_every: int = 500
    num_workers: int = 0
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "max_steps", f"must be >= 1, got {self.max_steps}")
        _check(self.max_minutes >= 0, "max_minutes", f"must be >= 0 (0: no budget), got {self.max_minutes}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(all(0.0 <= b < 1.0 for b in self.betas), "betas", f"must lie in [0, 1), got {list(self.betas)}")
        _check(self.eps > 0, "eps", f"must be > 0, got {self.eps}")
        _check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.grad_clip is None or self.grad_clip >= 0, "grad_clip", f"must be >= 0 or null, got {self.grad_clip}")
        _check(0.0 <= self.ema_decay < 1.0, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        _check(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        _check(self.sample_every >= 0, "sample_every", f"must be >= 0, got {self.sample_every}")
        _check(self.checkpoint_every >= 0, "checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        _check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")


@dataclass
class Component:
    """A registry entry chosen by name, with its validated keyword arguments.

    ``params`` is an instance of the entry's ``config`` dataclass (or a plain dict when the entry
    declares none). ``build(**extra)`` calls the registered builder with ``params`` plus ``extra``
    (e.g. sizes the domain knows from its data).
    """

    name: str
    params: Any
    registry: Registry[Any] = field(repr=False, compare=False)

    def kwargs(self) -> dict[str, Any]:
        """The builder's keyword arguments (shallow: nested dataclasses stay objects)."""
        if dataclasses.is_dataclass(self.params):
            return {f.name: getattr(self.params, f.name) for f in dataclasses.fields(self.params)}
        return dict(self.params)

    def build(self, **extra: Any) -> Any:
        return self.registry.build(self.name, **{**self.kwargs(), **extra})


@dataclass
class SampleConfig:
    """Defaults for ``sciffusion sample`` / ``evaluate`` / ``design`` (each overridable on the command line).

    ``solver`` is one solver for every field, or ``{field: solver}`` (a field left out gets its process's
    default). Guidance is chosen per command (``--guidance-scale``, a domain's targets), not here.
    """

    solver: Annotated[str, SOLVERS] | dict[str, Annotated[str, SOLVERS]] = "ddim"
    steps: int = 50
    n: int = 64
    batch_size: int = 256
    guidance_scale: float = 1.0
    eta: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        _check(self.n >= 1, "n", f"must be >= 1, got {self.n}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(math.isfinite(self.guidance_scale), "guidance_scale", f"must be a finite number, got {self.guidance_scale}")
        _check(math.isfinite(self.eta) and self.eta >= 0, "eta", f"must be a finite number >= 0, got {self.eta}")


@dataclass
class Config:
    """A whole validated run configuration (see the module docstring for the file layout)."""

    domain: str
    seed: int
    run_dir: str
    data: Any
    net: Component | None
    process: Component | None
    loss: LossConfig
    trainer: TrainerConfig
    sample: SampleConfig
    extra: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)
    processes: dict[str, Component] = field(default_factory=dict)
    process_weights: dict[str, float] = field(default_factory=dict)

    def build_processes(self, fields: Sequence[str]) -> tuple[dict[str, Any], dict[str, float]]:
        """The process and loss weight of each of a domain's ``fields``: from ``processes:`` (which must name
        exactly these fields), or, for a one-field domain, from ``process:``."""
        fields = list(fields)
        if self.processes:
            missing, unknown = sorted(set(fields) - set(self.processes)), sorted(set(self.processes) - set(fields))
            if missing or unknown:
                parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])
                raise ConfigError(f"'processes' must name the fields {', '.join(fields)} of domain '{self.domain}' ({'; '.join(parts)})")
            return ({name: self.processes[name].build() for name in fields},
                    {name: self.process_weights.get(name, 1.0) for name in fields})
        if self.process is None:
            raise ConfigError(f"domain '{self.domain}' needs a 'process' (or 'processes') section")
        if len(fields) != 1:
            raise ConfigError(f"domain '{self.domain}' has fields {', '.join(fields)}: give one process each under 'processes'")
        return {fields[0]: self.process.build()}, {fields[0]: 1.0}

    def section(self, name: str) -> Any:
        """A domain's extra section (``cfg.section("impute")``) or a standard one by name."""
        if name in self.extra:
            return self.extra[name]
        if name in _TOP_LEVEL_KEYS:
            return getattr(self, name)
        raise KeyError(f"config has no section '{name}'")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready dict that :func:`config_from_dict` reads back to an equal config."""
        out: dict[str, Any] = {"domain": self.domain, "seed": self.seed, "run_dir": self.run_dir, "data": to_dict(self.data)}
        for key in ("net", "process"):
            comp = getattr(self, key)
            if comp is not None:
                out[key] = to_dict(comp)
        if self.processes:
            out["processes"] = {name: {**to_dict(comp), "weight": self.process_weights.get(name, 1.0)}
                                for name, comp in self.processes.items()}
        out.update(loss=to_dict(self.loss), trainer=to_dict(self.trainer), sample=to_dict(self.sample))
        for key, value in self.extra.items():
            out[key] = to_dict(value)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_TOP_LEVEL_KEYS = ("domain", "seed", "run_dir", "data", "net", "process", "processes", "loss", "trainer", "sample")


# --------------------------------------------------------------------------------------------
# Generic validation
# --------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """``str 'abc'``, ``int 3``, ``list [1, 2]``, ``mapping`` — for 'got ...' in messages."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    name = {list: "list", tuple: "list"}.get(type(value), type(value).__name__)
    return f"{name} {text}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any value"
    if origin is Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, collections.abc.Sequence) or tp in (list, tuple):
        return "list"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp) or tp is Component:
        return "mapping"
    if tp is Path:
        return "path (str)"
    return getattr(tp, "__name__", str(tp))


def _unknown_key_message(key: str, where: str, known: Sequence[str]) -> str:
    dotted = f"{where}.{key}" if where else key
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else "known: " + (", ".join(known) or "none")
    return f"unknown key '{dotted}' ({hint})"


_SCI_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the type annotation ``tp``; return the converted value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail() -> typing.NoReturn:
        raise ConfigError(f"'{where}' must be {_type_name(tp)}, got {_describe(value)}")

    if tp is Any or tp is object:
        return value
    if origin is Annotated:
        inner, registry = args[0], next((a for a in args[1:] if isinstance(a, Registry)), None)
        if registry is None:
            return _coerce(inner, value, where)
        if inner is Component:
            return component_from_dict(registry, value, where)
        name = _coerce(inner, value, where)
        if registry.names() and name not in registry:
            raise ConfigError(f"'{where}': unknown {registry.kind} '{name}' (known: {', '.join(registry.names())})")
        return name
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return _coerce(members[0], value, where)
        errors: list[tuple[Any, ConfigError]] = []
        for member in members:
            try:
                return _coerce(member, value, where)
            except ConfigError as e:
                errors.append((member, e))
        # a mapping failed as the mapping member, a scalar as a scalar one: that member's own message is the useful one
        same_kind = [e for member, e in errors if (_type_name(member) == "mapping") == isinstance(value, dict)]
        if len(same_kind) == 1 and "must be" not in str(same_kind[0]).split("' ", 1)[-1][:8]:
            raise same_kind[0]
        fail()
    if origin is Literal:
        if value in args and all(type(value) is type(a) for a in args if a == value):
            return value
        fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _SCI_FLOAT.match(value.strip()):  # PyYAML reads "1e-4" as a string
            return float(value)
        fail()
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        fail()
    if origin is list or tp is list or origin is collections.abc.Sequence:
        if not isinstance(value, (list, tuple)):
            fail()
        item = args[0] if args else Any
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            fail()
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"'{where}' must be a list of {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            fail()
        key_tp, val_tp = args if args else (Any, Any)
        return {_coerce(key_tp, k, f"{where}.{k}"): _coerce(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        fail()
    raise TypeError(f"config type {tp!r} at '{where}' is not supported by from_dict")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Validate a mapping into the dataclass ``cls`` (recursively); ``where`` is the dotted prefix.

    Handles nested dataclasses, ``Optional``/unions, ``Literal``, ``list``/``tuple``/``dict``,
    int -> float promotion and ``Annotated[str | Component, <Registry>]`` names. Raises
    :class:`ConfigError` naming the offending dotted key.
    """
    label = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"'{label}' must be a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown_key_message(str(key), where, list(fields)))
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        dotted = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key '{dotted}'")
    try:
        return cls(**kwargs)
    except FieldError as e:
        dotted = f"{where}.{e.key}" if where else e.key
        raise ConfigError(f"'{dotted}' {e.message}") from None


def component_from_dict(registry: Registry[Any], data: Any, where: str) -> Component:
    """``{name: ..., **params}`` -> :class:`Component`, params validated by the entry's dataclass."""
    if isinstance(data, Component):
        return data
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        raise ConfigError(f"'{where}' must be a mapping with a 'name' key, got {_describe(data)}")
    if "name" not in data:
        raise ConfigError(f"missing key '{where}.name' (known {registry.kind}s: {', '.join(registry.names()) or 'none'})")
    name = data["name"]
    if not isinstance(name, str):
        raise ConfigError(f"'{where}.name' must be str, got {_describe(name)}")
    if name not in registry:
        raise ConfigError(f"'{where}.name': unknown {registry.kind} '{name}' (known: {', '.join(registry.names()) or 'none'})")
    entry = registry.get(name)
    rest = {k: v for k, v in data.items() if k != "name"}
    params = from_dict(entry.config, rest, where) if entry.config is not None else _coerce(dict[str, Any], rest, where)
    return Component(name=name, params=params, registry=registry)


def to_dict(obj: Any) -> Any:
    """Dataclasses / Components / tuples / Paths -> plain dicts, lists and scalars."""
    if isinstance(obj, Component):
        return {"name": obj.name, **to_dict(obj.params)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------------------------
# Files, overrides, whole configs
# --------------------------------------------------------------------------------------------

_KEY_PATH = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$")


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a copy of ``raw``."""
    out = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not _KEY_PATH.match(key):
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. trainer.max_steps=200)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"override '{item}': cannot parse value {text!r} as YAML") from None
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{'.'.join(parts[: i + 1])}' is {_describe(child)}, not a section")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; missing file / bad YAML / non-mapping -> one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"invalid YAML in {path}{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"top level of {path} must be a mapping, got {_describe(raw)}")
    return raw


_components_loaded = False


def load_components() -> None:
    """Import the core component packages so their registry entries exist (once per process)."""
    global _components_loaded
    if _components_loaded:
        return
    for module in CORE_COMPONENT_PACKAGES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    _components_loaded = True


def config_from_dict(raw: dict[str, Any], source: str | None = None, default_run_dir: str | None = None) -> Config:
    """Validate a raw mapping (already overridden) into a :class:`Config`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping, got {_describe(raw)}")
    if "domain" not in raw:
        raise ConfigError("missing key 'domain'")
    name = raw["domain"]
    if not isinstance(name, str):
        raise ConfigError(f"'domain' must be str, got {_describe(name)}")
    try:
        domain = get_domain(name)
    except DomainError as e:
        raise ConfigError(f"'domain': {e}") from None
    load_components()

    extra_types: dict[str, type] = dict(getattr(domain, "extra_sections", {}) or {})
    clash = set(extra_types) & set(_TOP_LEVEL_KEYS)
    if clash:
        raise ConfigError(f"domain '{name}' declares extra sections that shadow standard ones: {sorted(clash)}")
    known = list(_TOP_LEVEL_KEYS) + list(extra_types)
    for key in raw:
        if key not in known:
            raise ConfigError(_unknown_key_message(str(key), "", known))

    seed = _coerce(int, raw.get("seed", 0), "seed")
    run_dir = raw.get("run_dir") or default_run_dir or f"runs/{name}"
    run_dir = str(_coerce(str, run_dir, "run_dir"))
    data_cls = getattr(domain, "data_config", None)
    data = from_dict(data_cls, raw.get("data"), "data") if data_cls is not None else _coerce(dict[str, Any], raw.get("data") or {}, "data")
    net = component_from_dict(NETS, raw["net"], "net") if raw.get("net") is not None else None
    process = component_from_dict(PROCESSES, raw["process"], "process") if raw.get("process") is not None else None
    processes, weights = _field_processes(raw.get("processes"))
    if process is not None and processes:
        raise ConfigError("give either 'process' (one field) or 'processes' (per field), not both")
    extra = {key: from_dict(cls, raw.get(key), key) for key, cls in extra_types.items()}
    return Config(
        domain=name,
        seed=seed,
        run_dir=run_dir,
        data=data,
        net=net,
        process=process,
        loss=from_dict(LossConfig, raw.get("loss"), "loss"),
        trainer=from_dict(TrainerConfig, raw.get("trainer"), "trainer"),
        sample=from_dict(SampleConfig, raw.get("sample"), "sample"),
        extra=extra,
        source=source,
        processes=processes,
        process_weights=weights,
    )


def _field_processes(raw: Any) -> tuple[dict[str, Component], dict[str, float]]:
    """``processes: {field: {name, weight, ...}}`` -> components and loss weights (weight > 0, default 1)."""
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"'processes' must be a non-empty mapping of field -> process, got {_describe(raw)}")
    components, weights = {}, {}
    for name, spec in raw.items():
        where = f"processes.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"'{where}' must be a mapping with a 'name' key, got {_describe(spec)}")
        weight = _coerce(float, spec.get("weight", 1.0), f"{where}.weight")
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"'{where}.weight' must be a finite number > 0, got {weight}")
        components[str(name)] = component_from_dict(PROCESSES, {k: v for k, v in spec.items() if k != "weight"}, where)
        weights[str(name)] = weight
    return components, weights


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read ``path``, apply dotted ``overrides`` and validate. ``run_dir`` defaults to ``runs/<stem>``."""
    raw = apply_overrides(read_yaml(path), overrides)
    return config_from_dict(raw, source=str(path), default_run_dir=f"runs/{Path(path).stem}")
