"""Checkpoints as safetensors + JSON, written atomically; loading never unpickles anything.

Layout of ``RUN_DIR/checkpoints/last/``::

    model.safetensors       raw weights (``model.state_dict()``)
    ema.safetensors         EMA weights, same keys (absent when EMA is disabled)
    optimizer.safetensors   optimizer state tensors as ``state.<param id>.<name>``; the rest of
                            the optimizer state (param groups, non-tensor values) is JSON in the
                            file's metadata under ``structure``
    meta.json               step, resolved config, EMA count, grad-scaler state, versions, time

A checkpoint is written into ``checkpoints/.last.tmp`` and then renamed over ``last`` (the previous
one is first renamed to ``.last.old`` and deleted afterwards), so a process killed at any moment
leaves a complete checkpoint behind: :func:`find_checkpoint` falls back to ``.last.old`` in the one
window where ``last`` is missing.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

__all__ = [
    "atomic_path",
    "CheckpointError",
    "find_checkpoint",
    "flatten_optimizer_state",
    "library_versions",
    "load_meta",
    "load_module_weights",
    "load_optimizer",
    "save_checkpoint",
    "unflatten_optimizer_state",
    "write_json_atomic",
    "write_text_atomic",
]

FORMAT = "sciffusion-checkpoint/1"
MODEL_FILE, EMA_FILE, OPTIMIZER_FILE, META_FILE = "model.safetensors", "ema.safetensors", "optimizer.safetensors", "meta.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not fit the model."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """A temp file beside ``path`` for the caller to write; when the block ends it replaces ``path`` (with a new
    file's usual mode, 0o666 less the umask), and if the block raises it is removed and ``path`` is left as it was.

    ``suffix`` of the temp file defaults to ``path``'s (writers such as matplotlib pick the format from it).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path` (flushed to disk before it replaces ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def library_versions() -> dict[str, str]:
    """Versions of python, torch and the main libraries, for run metadata."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("sciffusion", "numpy", "safetensors"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # not installed as a distribution (e.g. running from a source tree)
            continue
    return versions


def _state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: tied weights share storage, which safetensors refuses; cpu: safetensors writes host memory
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into flat tensors and a JSON-able structure."""
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        state[str(pid)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                key = f"state.{pid}.{name}"
                tensors[key] = value.detach().to("cpu", copy=True).contiguous()
                state[str(pid)][name] = {"tensor": key}
            else:
                state[str(pid)][name] = {"value": value}
    return tensors, {"state": state, "param_groups": state_dict["param_groups"]}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], structure: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state` (lists stay lists; see :func:`load_optimizer`)."""
    state: dict[int, dict[str, Any]] = {}
    for pid, entries in structure["state"].items():
        state[int(pid)] = {name: tensors[e["tensor"]] if "tensor" in e else e["value"] for name, e in entries.items()}
    return {"state": state, "param_groups": structure["param_groups"]}


def save_checkpoint(
    run_dir: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema_model: torch.nn.Module | None,
    meta: dict[str, Any],
) -> Path:
    """Write ``RUN_DIR/checkpoints/last`` atomically; returns its path. ``meta`` must hold ``step``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp, last, old = root / ".last.tmp", root / "last", root / ".last.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_state_tensors(model), tmp / MODEL_FILE)
    if ema_model is not None:
        save_file(_state_tensors(ema_model), tmp / EMA_FILE)
    tensors, structure = flatten_optimizer_state(optimizer.state_dict())
    save_file(tensors, tmp / OPTIMIZER_FILE, metadata={"structure": json.dumps(structure)})
    full_meta = {"format": FORMAT, **meta, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": library_versions()}
    (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, default=_json_default) + "\n", encoding="utf-8")
    for child in tmp.iterdir():
        with open(child, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    if old.exists():
        shutil.rmtree(old)
    if last.exists():
        os.replace(last, old)
    os.replace(tmp, last)
    _fsync_dir(root)
    if old.exists():
        shutil.rmtree(old)
    return last


def _complete(path: Path) -> bool:
    return (path / META_FILE).is_file() and (path / MODEL_FILE).is_file() and (path / OPTIMIZER_FILE).is_file()


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's latest complete checkpoint folder, or ``None`` when it has none."""
    root = Path(run_dir) / "checkpoints"
    for candidate in (root / "last", root / ".last.old"):
        if _complete(candidate):
            return candidate
    return None


def load_meta(ckpt: str | Path) -> dict[str, Any]:
    """``ckpt/meta.json``, checked: a mapping of this format whose ``step``, ``config``, ``ema`` and
    ``scaler`` (those present; ``step`` always) have the types the loaders read."""
    path = Path(ckpt) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read checkpoint metadata {path}: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint metadata {path} must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (format: {meta.get('format')!r})")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint metadata {path} has no valid 'step' (got {step!r})")
    for key, types in (("config", (dict,)), ("ema", (dict,)), ("scaler", (dict, type(None)))):
        if key in meta and not isinstance(meta[key], types):
            raise CheckpointError(f"checkpoint metadata {path}: '{key}' must be a JSON object, got {type(meta[key]).__name__}")
    n_averaged = meta.get("ema", {}).get("n_averaged", 0)
    if isinstance(n_averaged, bool) or not isinstance(n_averaged, int) or n_averaged < 0:
        raise CheckpointError(f"checkpoint metadata {path}: 'ema.n_averaged' must be an integer >= 0, got {n_averaged!r}")
    return meta


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return CheckpointError(f"{path} is not a readable safetensors file ({reason}); the checkpoint is damaged")


def _abbrev(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" ... ({len(keys)} in all)" if len(keys) > 4 else "")


def load_module_weights(module: torch.nn.Module, path: str | Path, device: torch.device | str = "cpu") -> None:
    """Load a safetensors state dict into ``module`` (strict); mismatch -> one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        state = load_file(path, device=str(device))
    except (SafetensorError, OSError) as e:
        raise _unreadable(path, e) from None
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = ([f"missing {_abbrev(missing)}"] if missing else []) + ([f"unexpected {_abbrev(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(parts))
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise CheckpointError(f"{path} does not fit the model: '{k}' has shape {tuple(state[k].shape)}, model expects {tuple(own[k].shape)}")
    module.load_state_dict(state, strict=True)


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt: str | Path) -> None:
    """Restore an optimizer from ``ckpt/optimizer.safetensors`` (state moves to the params' device)."""
    path = Path(ckpt) / OPTIMIZER_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise _unreadable(path, e) from None
    if "structure" not in metadata:
        raise CheckpointError(f"{path} has no optimizer structure metadata")
    try:
        state = unflatten_optimizer_state(tensors, json.loads(metadata["structure"]))
        if not isinstance(state["param_groups"], list) or not all(isinstance(g, dict) for g in state["param_groups"]):
            raise TypeError("param_groups is not a list of objects")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{path} has damaged optimizer structure metadata ({type(e).__name__}: {e})") from None
    current = optimizer.state_dict()["param_groups"]
    if len(current) != len(state["param_groups"]):
        raise CheckpointError(f"{path} has {len(state['param_groups'])} parameter groups, the optimizer has {len(current)}")
    for saved, live in zip(state["param_groups"], current):
        for key, value in live.items():  # JSON turned tuples (e.g. betas) into lists
            if isinstance(value, tuple) and isinstance(saved.get(key), list):
                saved[key] = tuple(saved[key])
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not fit the optimizer ({type(e).__name__}: {e})") from None
