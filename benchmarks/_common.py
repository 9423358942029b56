"""Shared helpers for benchmark scripts: machine description and results files with bars."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from sciffusion.train.checkpoint import atomic_path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Where a benchmark ran: CPU model, cores, accelerator, OS, Python."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "os": platform.platform(), "python": platform.python_version(),
            "hostname": platform.node()}


def versions(packages: Iterable[str] = ("sciffusion", "torch", "numpy", "scipy", "diffusers")) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        out["git_commit"] = None
    return out


def bar(name: str, value: float, op: str, target: float) -> dict[str, Any]:
    """A pass/fail bar; ``op`` is one of <, <=, >, >=."""
    ok = {"<": value < target, "<=": value <= target, ">": value > target, ">=": value >= target}[op]
    return {"name": name, "value": value, "op": op, "target": target, "met": bool(ok)}


def write_results(name: str, payload: dict[str, Any], packages: Iterable[str] = ("sciffusion", "torch", "numpy", "scipy"),
                  folder: str | Path = RESULTS) -> Path:
    """Write ``<folder>/<name>.json`` (default ``benchmarks/results``) atomically with machine, date and versions added."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": name, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            "versions": versions(packages), **payload}
    path = folder / f"{name}.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(body, indent=2, default=float) + "\n")
    return path
