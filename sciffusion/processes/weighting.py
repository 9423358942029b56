"""Loss weightings and minibatch optimal-transport coupling.

Every weighting is defined once in x0 space (``w(t) ||x0_hat - x0||^2``) and applied to the loss in the
network's own parametrization by dividing by that parametrization's x0-space weight, so ``uniform``
means "plain MSE on what the network predicts" for any prediction type.

* ``uniform``  — plain MSE of the prediction (DDPM's simple loss for eps, flow matching for velocity).
* ``min_snr``  — Min-SNR-gamma (Hang et al. 2023): x0-space weight ``min(SNR, gamma)``.
* ``edm``      — Karras et al. (2022): x0-space weight ``(s^2 + s_d^2) / (s s_d)^2`` with ``s = sigma/alpha``.
* ``velocity`` — the flow-matching vector-field loss (FrameFlow's translation loss): the x0-space weight of a
  velocity prediction, ``(d_alpha - d_sigma alpha / sigma)^2`` (``1 / t^2`` on the linear flow path), capped at
  ``gamma`` (FrameFlow: 100, its time clipped at 0.1), so that the low-noise end cannot take over the loss.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from sciffusion.processes.parametrization import Coefficients, x0_space_weight

WEIGHTINGS: tuple[str, ...] = ("uniform", "min_snr", "edm", "velocity")


def loss_weight(weighting: str, prediction: str, c: Coefficients, gamma: float = 5.0, sigma_data: float = 0.5) -> Tensor:
    """Multiplier for the squared error in ``prediction`` space (broadcast like ``c.alpha``); ``gamma`` caps the
    x0-space weight of ``min_snr`` and ``velocity``."""
    if weighting == "uniform":
        return torch.ones_like(c.alpha)
    native = x0_space_weight(prediction, c)
    snr = (c.alpha / c.sigma) ** 2
    if weighting == "min_snr":
        target = torch.clamp(snr, max=gamma)
    elif weighting == "edm":
        s = c.sigma / c.alpha
        target = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    elif weighting == "velocity":
        target = torch.clamp(x0_space_weight("velocity", c), max=gamma)
    else:
        raise ValueError(f"unknown loss weighting '{weighting}' (known: {', '.join(WEIGHTINGS)})")
    return torch.where(native > 0, target / native.clamp_min(1e-30), torch.ones_like(native))


def ot_pairing(x0: Tensor, noise: Tensor) -> Tensor:
    """Permutation ``perm`` (B,) such that pairing ``x0[i]`` with ``noise[perm[i]]`` minimises the total
    squared distance (exact assignment, Hungarian algorithm). Shapes: ``x0, noise`` (B, ...)."""
    a = x0.detach().reshape(len(x0), -1).double()
    b = noise.detach().reshape(len(noise), -1).double()
    cost = torch.cdist(a, b).pow(2).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return torch.as_tensor(perm, device=x0.device)
