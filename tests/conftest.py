"""Test helpers shared by every module: data that lives beside the repository, in ``../shared/data``."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(relpath: str) -> Path:
    """``../shared/data/<relpath>``; skips the calling test when this machine does not have it (a user's
    clone has no ``../shared``; CI and the developers' machines do)."""
    path = SHARED_DATA / relpath
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{relpath}: not on this machine")
    return path
