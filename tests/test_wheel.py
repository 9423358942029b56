"""A built wheel, installed into a fresh virtual environment, holds every package: the core imports and every
domain imports and is listed (a package without ``__init__.py`` would be missing from the wheel).

The fresh environment sees this environment's third-party packages through a path entry (so nothing is
downloaded), but not its editable install of sciffusion: sciffusion comes from the wheel alone.
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOMAINS = ("control", "images", "timeseries")


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "data_cache", "*.egg-info",
                                                                "__pycache__", ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp),
                            str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp.glob("sciffusion-*.whl"))
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # third-party packages from this environment (a plain path entry: its .pth files, the editable hook among
    # them, are not processed)
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", purelib,
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    return python


def _run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_the_wheel_has_every_package_and_domain(wheel_env: Path, tmp_path: Path) -> None:
    code = ("import sciffusion, sciffusion.reps, sciffusion.tasks, sciffusion.tasks.impute, sciffusion.reps.graph, "
            "sciffusion.sampling, sciffusion.processes, sciffusion.guidance, sciffusion.train, sciffusion.nets; "
            + "".join(f"import sciffusion.domains.{d}; " for d in DOMAINS)
            + "print(sciffusion.__file__)")
    out = _run(wheel_env, "-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(REPO) not in out.stdout and "site-packages" in out.stdout  # the wheel's copy, not the checkout
    listed = _run(wheel_env, "-m", "sciffusion", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    lines = listed.stdout.splitlines()
    domains = lines[lines.index("domains:") + 1:lines.index("nets:")]
    for name in DOMAINS:
        row = next(line for line in domains if line.split()[0] == name)
        assert "unavailable" not in row, row
    assert any(line.split()[:1] == ["unet2d"] for line in lines)  # a domain's net, registered from the wheel
    data = _run(wheel_env, "-c", "import importlib.resources as r; print(r.files('sciffusion.domains.materials')"
                ".joinpath('cdvae_comp_scaler.json').is_file())", cwd=tmp_path)
    assert data.stdout.strip() == "True", data.stderr[-2000:]  # package data (CDVAE's scaler) ships in the wheel
