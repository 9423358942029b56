"""PyPOTS' CSDI as the imputation benchmarks' peer: our CPU model's size, trained for a wall-clock budget."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch


def train_pypots_csdi(x_train: np.ndarray, budget_min: float, chunk: int) -> tuple[Any, dict[str, Any]]:
    """PyPOTS ``CSDI`` at the size of ``configs/timeseries/pm25_cpu.yaml`` (2 layers, 4 heads, 32 channels,
    embeddings 64 / 16 / 64, 50 quad steps 1e-4..0.5, batch 16, its default random targets), fed one-epoch ``fit``
    calls on ``chunk`` shuffled windows of ``x_train`` ``(W, L, K)`` (NaN = missing; its optimizer persists) until
    ``budget_min`` minutes are spent (so it can overrun by one chunk). Returns the model and what it cost."""
    from pypots.imputation import CSDI

    torch.manual_seed(0)
    model = CSDI(n_steps=x_train.shape[1], n_features=x_train.shape[2], n_layers=2, n_heads=4, n_channels=32,
                 d_time_embedding=64, d_feature_embedding=16, d_diffusion_embedding=64, n_diffusion_steps=50,
                 target_strategy="random", schedule="quad", beta_start=1e-4, beta_end=0.5, batch_size=16, epochs=1,
                 device="cpu", verbose=False)
    rng = np.random.default_rng(0)
    start, steps, order, cursor = time.perf_counter(), 0, rng.permutation(len(x_train)), 0
    while time.perf_counter() - start < budget_min * 60:
        if cursor + chunk > len(order):
            order, cursor = rng.permutation(len(x_train)), 0
        rows = order[cursor:cursor + chunk]
        cursor += chunk
        model.fit({"X": x_train[rows]})
        steps += int(np.ceil(len(rows) / 16))
    return model, {"train_seconds": time.perf_counter() - start, "train_steps": steps, "windows": int(len(x_train)),
                   "chunk": chunk}
