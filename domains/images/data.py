"""Images: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; UCI, shipped in the wheel)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Dataset

DIGITS_MAX = 16.0  # pixel values are integers 0..16


@dataclass
class DigitsSplit:
    """Images scaled to [-1, 1], ``(N, 1, 8, 8)`` float32, and labels ``(N,)`` int64."""

    images: Tensor
    labels: Tensor


def to_unit_range(pixels: np.ndarray) -> Tensor:
    """Digits pixels 0..16 ``(N, 64)`` -> ``(N, 1, 8, 8)`` in [-1, 1]."""
    return torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / DIGITS_MAX * 2 - 1


def load_digits_splits(test_fraction: float = 0.2, seed: int = 0) -> tuple[DigitsSplit, DigitsSplit]:
    """Stratified train / test split of the digits (1,437 / 360 images with the defaults)."""
    data = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(data.data, data.target, test_size=test_fraction, random_state=seed,
                                              stratify=data.target)
    return (DigitsSplit(to_unit_range(x_tr), torch.as_tensor(y_tr, dtype=torch.long)),
            DigitsSplit(to_unit_range(x_te), torch.as_tensor(y_te, dtype=torch.long)))


class LabelledImages(Dataset):
    """Items in the DiffusionModel batch format: ``{"fields": {"image": (1, 8, 8)}, "cond": {"label": ()}}``."""

    def __init__(self, split: DigitsSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, i: int) -> dict:
        return {"fields": {"image": self.split.images[i]}, "cond": {"label": self.split.labels[i]}}
