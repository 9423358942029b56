"""Pictures: planned vs executed paths on the maze map, rollout GIFs (PointMaze and Push-T frames)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sciffusion.extras import require
from sciffusion.train.checkpoint import atomic_path

from .config import ForbiddenRegion
from .maze import MazeSpec


def _draw_maze(ax, spec: MazeSpec, region: ForbiddenRegion | None = None) -> None:
    from matplotlib.patches import Circle, Rectangle

    for (i, j) in zip(*np.nonzero(spec.wall_array)):
        c = spec.cell_to_xy((i, j))
        ax.add_patch(Rectangle((c[0] - 0.5, c[1] - 0.5), 1, 1, color="#8c6d4f"))
    if region is not None:
        ax.add_patch(Circle(region.center, region.radius, color="#d62728", alpha=0.35, lw=0))
    ax.set_xlim(-spec.n_cols / 2, spec.n_cols / 2)
    ax.set_ylim(-spec.n_rows / 2, spec.n_rows / 2)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def plot_maze_paths(spec: MazeSpec, paths: np.ndarray, plans: np.ndarray | None, goals: np.ndarray, out: str | Path,
                    success: Sequence[bool] | None = None, region: ForbiddenRegion | None = None, max_panels: int = 12) -> Path:
    """Grid of episodes: planned path (dashed, dots at plan tokens) vs executed path (solid).

    Args:
        paths: executed states ``(B, T + 1, >=2)``.
        plans: first plans ``(B, H, >=2)`` or None.
        goals: ``(B, 2)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(max_panels, len(paths))
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows * spec.n_rows / spec.n_cols + 0.3), squeeze=False)
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        if k >= n:
            ax.axis("off")
            continue
        _draw_maze(ax, spec, region)
        if plans is not None:
            ax.plot(plans[k, :, 0], plans[k, :, 1], "--", color="#1f77b4", lw=1.2, label="plan")
            ax.plot(plans[k, :, 0], plans[k, :, 1], ".", color="#1f77b4", ms=3)
        ax.plot(paths[k, :, 0], paths[k, :, 1], "-", color="#2ca02c", lw=1.5, label="executed")
        ax.plot(*paths[k, 0, :2], "o", color="black", ms=5)
        ax.plot(*goals[k], "*", color="#d62728", ms=12)
        if success is not None:
            ax.set_title(f"episode {k}: {'reached' if success[k] else 'missed'}", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="lower right")
    out = Path(out)
    _save(fig, out)
    plt.close(fig)
    return out


def maze_rollout_gif(spec: MazeSpec, path: np.ndarray, plan: np.ndarray | None, goal: np.ndarray, out: str | Path,
                     every: int = 10, region: ForbiddenRegion | None = None) -> Path:
    """Animated GIF of one episode (the ball moving along its executed path, plan underneath)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = []
    fig, ax = plt.subplots(figsize=(3.5, 3.5 * spec.n_rows / spec.n_cols))
    for k in range(0, len(path), every):
        ax.clear()
        _draw_maze(ax, spec, region)
        if plan is not None:
            ax.plot(plan[:, 0], plan[:, 1], "--", color="#1f77b4", lw=1)
        ax.plot(path[: k + 1, 0], path[: k + 1, 1], "-", color="#2ca02c", lw=1.5)
        ax.plot(*path[k, :2], "o", color="#2ca02c", ms=8)
        ax.plot(*goal, "*", color="#d62728", ms=12)
        ax.set_title(f"step {k}", fontsize=8)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return write_gif(frames, out, fps=20)


def write_gif(frames: Sequence[np.ndarray], out: str | Path, fps: int = 10) -> Path:
    """Write RGB frames ``(H, W, 3)`` uint8 as a looping GIF (atomically)."""
    imageio = require("imageio.v2", "control", "writing a GIF")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".gif") as tmp:
        imageio.mimsave(tmp, [np.asarray(f, dtype=np.uint8) for f in frames], duration=1.0 / fps, loop=0)
    return out


def frame_strip(frames: Sequence[np.ndarray], out: str | Path, panels: int = 8, size: int = 160) -> Path:
    """A PNG strip of ``panels`` evenly spaced frames (e.g. one Push-T episode), each ``size`` pixels wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not frames:
        raise ValueError("no frames to draw")
    idx = np.linspace(0, len(frames) - 1, min(panels, len(frames))).round().astype(int)
    fig, axes = plt.subplots(1, len(idx), figsize=(size / 80 * len(idx), size / 80), squeeze=False)
    for ax, i in zip(axes[0], idx):
        ax.imshow(frames[i])
        ax.set_title(f"step {i}", fontsize=7)
        ax.axis("off")
    out = Path(out)
    _save(fig, out)
    plt.close(fig)
    return out
