"""Image grids as PNG."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from sciffusion.train.checkpoint import atomic_path  # noqa: E402


def save_grid(images: Tensor, path: str | Path, rows: int, title: str = "", row_labels: list[str] | None = None) -> Path:
    """Save ``images`` (N, 1, H, W) in [-1, 1] as a ``rows`` x ceil(N / rows) grid PNG (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = -(-len(images) // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6 + 0.6, rows * 0.6 + 0.5), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if k < len(images):
            ax.imshow(images[k, 0].clamp(-1, 1).cpu().numpy(), cmap="gray_r", vmin=-1, vmax=1)
        if row_labels and k % cols == 0:
            ax.set_ylabel(row_labels[k // cols], rotation=0, labelpad=8, va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path
