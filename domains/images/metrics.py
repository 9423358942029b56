"""Sample quality for digits: accuracy of a classifier trained on real data, and Frechet distance in its
feature space (the digits analogue of FID), with the real-train-vs-real-test distance as the floor."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import Tensor, nn

from sciffusion.domains.images.data import DigitsSplit


class DigitsClassifier(nn.Module):
    """Small CNN: ``(B, 1, 8, 8)`` in [-1, 1] -> logits (B, 10); ``features`` gives the (B, 128) penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(64 * 4, 128)
        self.head = nn.Linear(128, 10)

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_classifier(train: DigitsSplit, epochs: int = 15, seed: int = 0) -> DigitsClassifier:
    """Deterministic training on the real train split (with small shifts as augmentation)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    n = len(train.labels)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, 64):
            idx = perm[i:i + 64]
            x = train.images[idx]
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3)) if torch.rand((), generator=gen) < 0.5 else x
            loss = F.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(classifier: DigitsClassifier, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` (N, 1, 8, 8) classified as ``labels`` (N,)."""
    return float((classifier(images.clamp(-1, 1)).argmax(1) == labels).float().mean())


@torch.no_grad()
def frechet_distance(classifier: DigitsClassifier, a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to classifier features of image sets ``a`` and ``b``."""
    fa = classifier.features(a.clamp(-1, 1)).double().numpy()
    fb = classifier.features(b.clamp(-1, 1)).double().numpy()
    return gaussian_frechet(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))


def gaussian_frechet(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2})`` (Dowson & Landau 1982)."""
    eps = 1e-9 * np.eye(len(cov1))
    covmean = np.asarray(linalg.sqrtm((cov1 + eps) @ (cov2 + eps))).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))
