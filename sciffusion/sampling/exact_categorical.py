"""An exact target for categorical solvers: a finite set of sequences with its exact denoiser, and the distance.

The data are ``M`` distinct sequences ``y_j`` of length ``L`` (classes in ``[0, K)``) with weights ``pi_j``:
``x0 = y_J`` with ``P(J = j) = pi_j``. A categorical process corrupts each entry independently,
``p_t(x | x0) = kappa(t) [x = x0] + (1 - kappa(t)) p_src(x)`` (:class:`~sciffusion.processes.categorical.CategoricalProcess`),
so given ``J = j`` the noised sequence has likelihood ``prod_l p_t(x_l | y_jl)``. Bayes' rule gives the posterior over
the targets and, summing it over the targets that hold class ``k`` at position ``l``, the clean-class posterior:

    w_j(x_t, t) = pi_j prod_l p_t(x_t,l | y_j,l) / sum_i pi_i prod_l p_t(x_t,l | y_i,l),
    p(x0_l = k | x_t) = sum_j w_j [y_j,l = k],       exact logits: log sum_j w_j [y_j,l = k].

A solver driven by :meth:`FiniteSequenceTarget.logits` therefore sees a perfect network, and every error it makes
is its own (time discretisation, independent moves of several entries in one step) or sampling noise.

States the path cannot produce (a solver revealed incompatible classes in one step) have no posterior; the exact
model is extended to them in the way the path's structure fixes on every reachable state: with the mask source a
revealed entry is its own clean class (``p(x0_l = x_t,l | x_t) = 1``), and a zero likelihood factor is floored at
``1e-300``, so the masked entries see the targets with the fewest contradictions (on reachable states this changes
nothing to float64 precision). Without the first rule a solver that resamples revealed entries (flow_matching's
Euler solver does) would be handed a corrector that a network trained on the path never provides.

:meth:`FiniteSequenceTarget.total_variation` measures sampled sequences against the target distribution
(sequences outside the target set count fully) and :meth:`FiniteSequenceTarget.tv_floor` is the expected value of
that distance for ``n`` exact samples (its sampling-noise floor).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sciffusion.processes.categorical import CategoricalProcess

ZERO_LIKELIHOOD_FLOOR = 1e-300


class FiniteSequenceTarget:
    """``M`` distinct sequences ``(M, L)`` with positive weights ``(M,)`` (normalised here, kept in float64).

    Args:
        sequences: long ``(M, L)``, classes ``>= 0``, rows distinct.
        weights: ``(M,)`` positive.
    """

    def __init__(self, sequences: Tensor | Sequence[Sequence[int]], weights: Tensor | Sequence[float]) -> None:
        y = torch.as_tensor(sequences)
        w = torch.as_tensor(weights, dtype=torch.float64)
        if y.dim() != 2 or y.dtype.is_floating_point or w.dim() != 1 or w.shape[0] != y.shape[0]:
            raise ValueError(f"expected integer sequences (M, L) and weights (M,), got {tuple(y.shape)} {y.dtype} "
                             f"and {tuple(w.shape)}")
        if not bool((w > 0).all()):
            raise ValueError("target weights must be positive")
        if bool((y < 0).any()):
            raise ValueError("target classes must be >= 0")
        if torch.unique(y, dim=0).shape[0] != y.shape[0]:
            raise ValueError("target sequences must be distinct")
        self.sequences = y.long()
        self.probs = w / w.sum()

    def _check(self, process: CategoricalProcess) -> None:
        if int(self.sequences.max()) >= process.num_classes:
            raise ValueError(f"target classes reach {int(self.sequences.max())}, outside the process's "
                             f"num_classes = {process.num_classes}")

    def posterior(self, process: CategoricalProcess, x_t: Tensor, t: Tensor) -> Tensor:
        """``w_j(x_t, t)``: the posterior over the targets, ``(B, M)`` float64, for states ``x_t`` long ``(B, L)``
        and times ``t`` ``(B,)`` (or a scalar)."""
        self._check(process)
        kappa = process.kappa(torch.as_tensor(t, dtype=torch.float64, device=x_t.device)).reshape(-1, 1)
        p_src = process.source_probs(device=x_t.device)[x_t]  # (B, L): p_src(x_t,l)
        # each factor is one of two values: log p_t(x_t,l | y = x_t,l) or log p_t(x_t,l | y != x_t,l)
        log_match = torch.log((kappa + (1 - kappa) * p_src).clamp_min(ZERO_LIKELIHOOD_FLOOR))
        log_other = torch.log(((1 - kappa) * p_src).clamp_min(ZERO_LIKELIHOOD_FLOOR))
        gain = F.one_hot(x_t, process.vocab_size).to(torch.float64) * (log_match - log_other).unsqueeze(-1)
        targets = F.one_hot(self.sequences.to(x_t.device), process.vocab_size).to(torch.float64)  # (M, L, V)
        log_w = (torch.log(self.probs.to(x_t.device)) + log_other.sum(-1, keepdim=True)
                 + gain.flatten(1) @ targets.flatten(1).T)
        return torch.softmax(log_w, dim=-1)

    def clean_probs(self, process: CategoricalProcess, x_t: Tensor, t: Tensor) -> Tensor:
        """``p(x0_l = k | x_t) = sum_j w_j [y_j,l = k]``: ``(B, L, K)`` float64 (with the mask source, one-hot at
        revealed entries)."""
        onehot = F.one_hot(self.sequences.to(x_t.device), process.num_classes).to(torch.float64)  # (M, L, K)
        probs = torch.einsum("bm,mlk->blk", self.posterior(process, x_t, t), onehot)
        if process.mask_index is None:
            return probs
        revealed = x_t != process.mask_index
        copy = F.one_hot(x_t.clamp_max(process.num_classes - 1), process.num_classes).to(torch.float64)
        return torch.where(revealed.unsqueeze(-1), copy, probs)

    def logits(self, process: CategoricalProcess, x_t: Tensor, t: Tensor) -> Tensor:
        """The exact network output: ``log p(x0_l = k | x_t)``, ``(B, L, K)`` float64 (``-inf`` for classes no
        compatible target holds there)."""
        return torch.log(self.clean_probs(process, x_t, t))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact draws, long ``(n, L)``."""
        return self.sequences[torch.multinomial(self.probs, n, replacement=True, generator=generator)]

    def total_variation(self, samples: Tensor) -> float:
        """``1/2 sum_x |q_n(x) - pi(x)|`` between the empirical distribution ``q_n`` of ``samples`` (long ``(n, L)``)
        and the target; sequences outside the target set count with their full empirical mass."""
        if samples.dim() != 2 or samples.shape[1] != self.sequences.shape[1]:
            raise ValueError(f"samples must be (n, {self.sequences.shape[1]}), got {tuple(samples.shape)}")
        rows = torch.cat([self.sequences, samples.cpu().long()])
        _, group = torch.unique(rows, dim=0, return_inverse=True)
        m, n = self.sequences.shape[0], samples.shape[0]
        groups = int(group.max()) + 1
        empirical = torch.bincount(group[m:], minlength=groups).to(torch.float64) / n
        target = torch.zeros(groups, dtype=torch.float64).index_add_(0, group[:m], self.probs)
        return 0.5 * float((empirical - target).abs().sum())

    def tv_floor(self, n: int) -> float:
        """Expected :meth:`total_variation` of ``n`` exact samples: ``1/2 sum_j E|c_j / n - pi_j|``,
        ``c_j ~ Binomial(n, pi_j)``, by de Moivre's mean absolute deviation
        ``E|c - n p| = 2 v C(n, v) p^v (1 - p)^(n - v + 1)``, ``v = floor(n p) + 1``."""
        total = 0.0
        for p in self.probs.tolist():
            v = math.floor(n * p) + 1
            if v > n:
                continue
            log_mad = (math.log(2 * v) + math.lgamma(n + 1) - math.lgamma(v + 1) - math.lgamma(n - v + 1)
                       + v * math.log(p) + (n - v + 1) * math.log1p(-p))
            total += math.exp(log_mad) / n
        return 0.5 * total
