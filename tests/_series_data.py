"""Test data for the time-series tests: a small hourly CSV with natural-looking gaps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_series_csv(path: Path, n: int = 60, seed: int = 0, gaps: bool = True) -> pd.DataFrame:
    """Three hourly features; with ``gaps``, ``temp`` has random gaps and ``dew`` a block of gaps at rows 20-27."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    frame = pd.DataFrame({
        "time": pd.date_range("2024-03-01", periods=n, freq="h").strftime("%Y-%m-%dT%H:%M:%S"),
        "temp": np.round(10 + 3 * np.sin(t / 5) + 0.3 * rng.normal(size=n), 3),
        "dew": np.round(5 + 3 * np.sin(t / 5 + 0.3) + 0.3 * rng.normal(size=n), 3),
        "wind": np.round(np.abs(4 + rng.normal(size=n)), 3),
    })
    if gaps:
        frame.loc[rng.random(n) < 0.15, "temp"] = np.nan
        frame.loc[20:27, "dew"] = np.nan
    frame.to_csv(path, index=False)
    return frame
