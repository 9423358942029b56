"""Training logs: ``RUN_DIR/metrics.csv`` (always), TensorBoard (optional), a loss-curve PNG."""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from sciffusion.config import ConfigError
from sciffusion.train.checkpoint import atomic_path

__all__ = ["METRIC_FIELDS", "MetricsLog", "plot_metrics", "stderr_is_terminal"]

METRIC_FIELDS = ("step", "loss", "lr", "grad_norm", "samples_per_s")


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal: progress bars are drawn only then (a log file gets none)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


class MetricsLog:
    """Appends one row per logging window to ``metrics.csv``; mirrors it to TensorBoard if asked.

    A resumed run first drops rows past its checkpoint step (written by the interrupted process
    after its last checkpoint), so the CSV reads as one uninterrupted run.
    """

    def __init__(self, run_dir: str | Path, start_step: int, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = self._rows_up_to(start_step) if start_step > 0 else []
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(METRIC_FIELDS)
            writer.writerows(kept)
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.close()
                raise ConfigError("trainer.tensorboard=true needs the tensorboard package (pip install tensorboard)") from None
            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def _rows_up_to(self, step: int) -> list[list[str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        return [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]

    def write(self, step: int, loss: float, lr: float, grad_norm: float, samples_per_s: float) -> None:
        self._writer.writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{grad_norm:.6g}", f"{samples_per_s:.4g}"])
        self._file.flush()
        if self._tb is not None:
            for name, value in (("loss", loss), ("lr", lr), ("grad_norm", grad_norm), ("samples_per_s", samples_per_s)):
                self._tb.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_metrics(csv_path: str | Path, png_path: str | Path) -> None:
    """Plot loss (log scale) and learning rate against step from ``metrics.csv`` into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss.plot(steps, losses, lw=1.2)
    if all(v > 0 for v in losses):
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    ax_lr.plot(steps, [float(r["lr"]) for r in rows], lw=1.2, color="tab:orange")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    try:
        with atomic_path(png_path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
