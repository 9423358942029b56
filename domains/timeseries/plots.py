"""Plots of imputed series: observed points, imputed median and the 90% band per feature."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sciffusion.train.checkpoint import atomic_path


def choose_features(observed: np.ndarray, count: int) -> list[int]:
    """Indices of the ``count`` features with the most missing entries (ties: first), from ``(K, N)`` bool."""
    missing = (~observed).sum(axis=1)
    return [int(k) for k in np.argsort(-missing, kind="stable")[:count]]


def plot_imputation(x: np.ndarray, features: list[str], observed: np.ndarray, median: np.ndarray, lower: np.ndarray,
                    upper: np.ndarray, chosen: list[int], path: str | os.PathLike, truth: np.ndarray | None = None,
                    title: str = "") -> None:
    """Write a PNG with one panel per chosen feature (atomic).

    Args:
        x: ``(N,)`` horizontal axis (time stamps or positions).
        observed: ``(K, N)`` bool, the entries the model conditioned on.
        median, lower, upper: ``(K, N)`` imputed median and the 5% / 95% quantiles.
        truth: optional ``(K, N)`` held-out true values (NaN where none), drawn as crosses.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.2 * len(chosen)), sharex=True, squeeze=False)
    for ax, k in zip(axes[:, 0], chosen):
        missing = ~observed[k]
        ax.fill_between(x, np.where(missing, lower[k], np.nan), np.where(missing, upper[k], np.nan), color="tab:blue",
                        alpha=0.25, linewidth=0, label="90% interval")
        ax.plot(x, np.where(missing, median[k], np.nan), color="tab:blue", linewidth=1.2, label="imputed median")
        ax.plot(x, np.where(observed[k], median[k], np.nan), ".", color="black", markersize=2.5, label="observed")
        if truth is not None:
            ax.plot(x, np.where(missing, truth[k], np.nan), "x", color="tab:red", markersize=3, label="held out")
        ax.set_ylabel(features[k], fontsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=4)
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    fig.autofmt_xdate()
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as temp:
            fig.savefig(temp, dpi=110)
    finally:
        plt.close(fig)
