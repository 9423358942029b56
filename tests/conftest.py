"""Test helpers shared by every module: one intra-op thread, and data that lives beside the repository, in
``../shared/data``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(relpath: str) -> Path:
    """``../shared/data/<relpath>``; skips the calling test when this machine does not have it (a user's
    clone has no ``../shared``; CI and the developers' machines do)."""
    path = SHARED_DATA / relpath
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{relpath}: not on this machine")
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors: one intra-op thread (on a busy 2-core machine a second thread makes each small op wait for a
    descheduled worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
