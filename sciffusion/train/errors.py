"""Training errors (importable without torch, so the CLI can report them cheaply)."""
from __future__ import annotations

__all__ = ["ResumeError", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN/Inf; the message names the step and the last checkpoint."""


class ResumeError(ValueError):
    """``--resume`` / fresh-start conflicts with what the run folder holds."""
