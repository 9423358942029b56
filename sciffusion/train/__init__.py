"""Training: the shared trainer, checkpoints, deterministic batches, DDP set-up and logs.

Names are imported on first access, so ``sciffusion.train.errors`` stays importable without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "atomic_path": "checkpoint",
    "find_checkpoint": "checkpoint",
    "load_meta": "checkpoint",
    "load_module_weights": "checkpoint",
    "save_checkpoint": "checkpoint",
    "write_json_atomic": "checkpoint",
    "write_text_atomic": "checkpoint",
    "ResumeError": "errors",
    "TrainingDiverged": "errors",
    "TrainResult": "trainer",
    "Trainer": "trainer",
    "ema_decay_at": "trainer",
    "lr_at": "trainer",
    "seed_everything": "trainer",
    "train": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sciffusion.train' has no attribute '{name}'")
    return getattr(importlib.import_module(f"sciffusion.train.{_EXPORTS[name]}"), name)
