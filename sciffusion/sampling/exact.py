"""Exact targets for testing solvers: a Gaussian mixture with its exact denoiser on any Gaussian path.

For data ``x0 ~ sum_k w_k N(mu_k, S_k)`` and a path ``x_t = alpha x0 + sigma eps`` the noised marginal is
again a mixture, ``p_t(x) = sum_k w_k N(x; alpha mu_k, alpha^2 S_k + sigma^2 I)``, and the posterior mean
``E[x0 | x_t]`` (the ideal denoiser), the ideal noise prediction ``E[eps | x_t]`` and the score
``grad log p_t`` are closed-form. Any solver driven by :meth:`GaussianMixture.denoiser` therefore sees a
perfect network, so every error it makes is the solver's (time discretisation, or sampling noise).

With eigen-decompositions ``S_k = U_k diag(l_k) U_k^T`` and ``z_k = U_k^T (x - alpha mu_k)``,
``d_k = alpha^2 l_k + sigma^2``:

* ``E[x0 | x_t, k]  = mu_k + U_k (alpha l_k / d_k * z_k)``,
* ``E[eps | x_t, k] = U_k (sigma / d_k * z_k)``,

both finite at ``alpha = 0`` (flow prior) and at ``sigma = 0`` (clean data), and averaged with the
component responsibilities ``r_k(x_t)``.

:class:`SlicedWasserstein` / :func:`sliced_wasserstein` compare sample sets (e.g. solver samples against fresh true samples);
:class:`SlicedW1ToMixture` measures a sample set against the mixture itself (no reference sample, no second noise).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from sciffusion.processes import GaussianProcess, Prediction

State = dict[str, Tensor]


class GaussianMixture:
    """A Gaussian mixture in ``D`` dimensions with ``K`` components and full covariances.

    Args:
        weights: mixture weights ``(K,)``, positive (normalised here).
        means: component means ``(K, D)``.
        covariances: component covariances ``(K, D, D)``, symmetric positive definite.
    All are stored in float64; outputs follow the dtype of the input points.
    """

    def __init__(self, weights: Tensor | Sequence[float], means: Tensor | Sequence[Sequence[float]],
                 covariances: Tensor | Sequence) -> None:
        w, mu, cov = (_as_float64(v) for v in (weights, means, covariances))
        if w.dim() != 1 or mu.dim() != 2 or cov.dim() != 3:
            raise ValueError(f"expected weights (K,), means (K, D), covariances (K, D, D); got "
                             f"{tuple(w.shape)}, {tuple(mu.shape)}, {tuple(cov.shape)}")
        k, d = mu.shape
        if w.shape[0] != k or cov.shape != (k, d, d):
            raise ValueError(f"mixture shapes disagree: weights {tuple(w.shape)}, means {tuple(mu.shape)}, "
                             f"covariances {tuple(cov.shape)}")
        if not bool((w > 0).all()):
            raise ValueError("mixture weights must be positive")
        if not torch.allclose(cov, cov.transpose(1, 2)):
            raise ValueError("mixture covariances must be symmetric")
        eigvals, eigvecs = torch.linalg.eigh(cov)
        if not bool((eigvals > 0).all()):
            raise ValueError("mixture covariances must be positive definite")
        self.weights = w / w.sum()
        self.means = mu
        self.covariances = cov
        self._eigvals = eigvals  # (K, D)
        self._chol = torch.linalg.cholesky(cov)
        self._log_weights = torch.log(self.weights)
        self._rotate = eigvecs.permute(1, 0, 2).reshape(mu.shape[1], -1)  # (D, K*D): x @ it = [U_k^T x]_k
        self._rotated_means = torch.einsum("kji,kj->ki", eigvecs, mu)  # (K, D): U_k^T mu_k

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    # -- the data distribution -------------------------------------------------------------------
    def mean(self) -> Tensor:
        """Mean of the mixture ``(D,)``."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Covariance of the mixture ``(D, D)`` (law of total covariance)."""
        m = self.mean()
        centred = self.means - m
        return torch.einsum("k,kij->ij", self.weights, self.covariances) + torch.einsum("k,ki,kj->ij", self.weights, centred, centred)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """``n`` independent draws ``(n, D)``."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[comp] + torch.einsum("nij,nj->ni", self._chol[comp], z)
        return x.to(dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """Log density of clean data at ``x`` ``(B, D)`` -> ``(B,)``."""
        one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        return self.noised_log_prob(x, one, torch.zeros_like(one))

    # -- the noised marginals and the ideal denoiser ---------------------------------------------
    def _components(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Per component ``k``: ``log w_k N(x_t; alpha mu_k, alpha^2 S_k + sigma^2 I)`` ``(B, K)``, the rotated
        residual ``z = U_k^T (x_t - alpha mu_k)`` ``(B, K, D)``, its variances ``d`` and ``alpha, sigma``
        reshaped to broadcast against ``d``: ``(B', K, D)``, ``(B', 1, 1)`` with ``B'`` 1 or ``B``."""
        x = x_t.to(torch.float64)
        a, s = _per_sample(alpha, sigma)
        k, dim = self.means.shape
        z = (x @ self._rotate).reshape(-1, k, dim) - a * self._rotated_means[None]  # (B, K, D)
        d = a**2 * self._eigvals[None] + s**2  # (B', K, D)
        if d.shape[0] == 1:  # one time for the whole batch: the quadratic form is a single matrix product
            quad = (z * z).flatten(1) @ _block_columns(1 / d[0])  # (B, K)
        else:
            quad = (z * z / d).sum(-1)
        log_n = -0.5 * quad - 0.5 * torch.log(d).sum(-1) - 0.5 * dim * math.log(2 * math.pi)
        return self._log_weights[None] + log_n, z, d, a, s

    def noised_log_prob(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """``log p_t(x_t)`` for points ``(B, D)`` at path coefficients ``alpha, sigma`` (B,) -> ``(B,)``."""
        log_joint = self._components(x_t, alpha, sigma)[0]
        return torch.logsumexp(log_joint, dim=1).to(x_t.dtype)

    def predict(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Prediction:
        """Exact ``E[x0 | x_t]`` and ``E[eps | x_t]`` for points ``(B, D)``; ``alpha, sigma`` are ``(B,)``.

        ``E[x0|x_t] = sum_k r_k (mu_k + U_k (alpha l_k / d_k) z_k)``, ``E[eps|x_t] = sum_k r_k U_k (sigma / d_k) z_k``.
        """
        log_joint, z, d, a, s = self._components(x_t, alpha, sigma)
        resp = torch.softmax(log_joint, dim=1)  # (B, K)
        back = self._rotate.T  # (K*D, D): maps stacked rotated coordinates back and sums over k
        x0_gain, eps_gain = a * self._eigvals[None] / d, s / d  # (B', K, D)
        if d.shape[0] == 1:
            rz = (resp[:, :, None] * z).flatten(1)  # (B, K*D)
            x0 = resp @ self.means + rz @ (x0_gain.reshape(-1, 1) * back)
            eps = rz @ (eps_gain.reshape(-1, 1) * back)
        else:
            rz = resp[:, :, None] * z
            x0 = resp @ self.means + (x0_gain * rz).flatten(1) @ back
            eps = (eps_gain * rz).flatten(1) @ back
        return Prediction(x0=x0.to(x_t.dtype), eps=eps.to(x_t.dtype))

    def score(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """``grad_x log p_t(x_t)`` ``(B, D)`` (needs ``sigma > 0`` or a clean density: ``-E[eps|x_t] / sigma``)."""
        pred = self.predict(x_t, alpha, sigma)
        return -pred.eps / sigma.to(x_t.dtype).reshape(-1, 1)

    def denoiser(self, process: GaussianProcess, field: str = "x"):
        """A perfect denoiser for :func:`sciffusion.sampling.solve`: ``(state, t (B,)) -> {field: Prediction}``.

        The state holds one dense field ``(B, D)`` on ``process``'s path.
        """

        def denoise(x: State, t: Tensor, path: dict | None = None) -> dict[str, Prediction]:
            alpha, sigma = process.alpha_sigma(t.to(torch.float64))
            return {field: self.predict(x[field], alpha, sigma)}

        return denoise


def reference_mixture(dim: int, components: int, seed: int = 0, spread: float = 2.0) -> GaussianMixture:
    """A fixed, reproducible test target: ``components`` anisotropic Gaussians in ``dim`` dimensions.

    Means are drawn from ``N(0, spread^2 I)``, covariances are ``0.3 A A^T / dim + 0.05 I`` with a Gaussian
    ``A`` (so the components are elongated in random directions), weights are uniform in ``[0.5, 1.5]``
    before normalisation. Everything comes from a generator seeded with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(components, dim, generator=gen, dtype=torch.float64)
    a = torch.randn(components, dim, dim, generator=gen, dtype=torch.float64)
    covariances = 0.3 * a @ a.transpose(1, 2) / dim + 0.05 * torch.eye(dim, dtype=torch.float64)
    weights = 0.5 + torch.rand(components, generator=gen, dtype=torch.float64)
    return GaussianMixture(weights, means, covariances)


def _per_sample(alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``alpha, sigma`` (B,) as float64 ``(B, 1, 1)``, or ``(1, 1, 1)`` when the whole batch shares one time
    (the usual case inside a solver), which keeps the per-component variances at ``(1, K, D)``."""
    a, s = alpha.to(torch.float64), sigma.to(torch.float64)
    if a.numel() > 1 and bool((a == a[0]).all()) and bool((s == s[0]).all()):
        a, s = a[:1], s[:1]
    return a.reshape(-1, 1, 1), s.reshape(-1, 1, 1)


def _block_columns(values: Tensor) -> Tensor:
    """``(K, D)`` -> ``(K*D, K)`` with ``values[k]`` in rows ``k*D .. k*D+D-1`` of column ``k``, zeros elsewhere."""
    k, dim = values.shape
    return (values[:, :, None] * torch.eye(k, dtype=values.dtype)[:, None, :]).reshape(k * dim, k)


def _as_float64(value: Tensor | Sequence) -> Tensor:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Tensor):
        return torch.stack([v.to(torch.float64) for v in value])
    return torch.as_tensor(value, dtype=torch.float64)


class SlicedWasserstein:
    """Sliced Wasserstein-``p`` distance of sample sets to a fixed reference set ``(N, D)``.

    ``(mean over random unit directions u of W_p^p(x u, reference u))^(1/p)``, each 1-D ``W_p`` from sorted
    projections (the reference's are sorted once). The directions come from a generator seeded with ``seed``.
    The default ``p = 1`` keeps the sampling noise of a finite set low on well-separated mixtures: a mass
    imbalance ``delta`` between modes a distance ``L`` apart costs ``delta L`` in ``W_1`` but
    ``sqrt(delta) L`` in ``W_2``.
    """

    def __init__(self, reference: Tensor, projections: int = 512, seed: int = 0, p: int = 1) -> None:
        if reference.dim() != 2:
            raise ValueError(f"sliced Wasserstein needs an (N, D) reference set, got shape {tuple(reference.shape)}")
        gen = torch.Generator().manual_seed(seed)
        dirs = torch.randn(projections, reference.shape[1], generator=gen, dtype=torch.float64)
        self.directions = dirs / dirs.norm(dim=1, keepdim=True)  # (P, D)
        self.p = p
        self._sorted_reference = self._project(reference)

    def _project(self, x: Tensor) -> np.ndarray:
        """``(P, N)`` sorted projections (numpy's row sort is several times faster than torch's here)."""
        return np.sort((self.directions @ x.detach().to(torch.float64).cpu().T).numpy(), axis=1)

    def __call__(self, samples: Tensor) -> float:
        """Distance of ``samples`` ``(N, D)`` (same ``N`` as the reference) to the reference."""
        if samples.shape != (self._sorted_reference.shape[1], self.directions.shape[1]):
            raise ValueError(f"sliced Wasserstein: samples {tuple(samples.shape)} do not match the reference "
                             f"({self._sorted_reference.shape[1]}, {self.directions.shape[1]})")
        gaps = np.abs(self._project(samples) - self._sorted_reference)
        return float(np.mean(gaps**self.p) ** (1.0 / self.p))


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 512, seed: int = 0, p: int = 1) -> float:
    """Sliced Wasserstein-``p`` distance between two equally sized sample sets ``(N, D)`` (see
    :class:`SlicedWasserstein`)."""
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs two (N, D) sets of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return SlicedWasserstein(b, projections, seed, p)(a)


class SlicedW1ToMixture:
    """Sliced Wasserstein-1 distance of a sample set to a :class:`GaussianMixture` itself.

    Along a unit direction ``u`` the mixture is the 1-D mixture ``sum_k w_k N(u.mu_k, u^T S_k u)`` with
    closed-form CDF ``F`` and ``G(x) = integral_{-inf}^x F = sum_k w_k s_k (z Phi(z) + phi(z))``, and
    ``W_1 = integral |F_n(x) - F(x)| dx`` against the samples' empirical CDF ``F_n``. Between consecutive
    sorted projections ``F_n`` is a constant ``c`` and the integral is a difference of ``G`` values; where ``F``
    crosses ``c`` inside a gap, the crossing point is found by safeguarded Newton steps and the gap is split
    there. The tails are closed-form, so the result is exact to round-off. It is the mean over ``projections``
    random directions (generator seeded with ``seed``). Unlike :class:`SlicedWasserstein` against a reference
    sample, only the samples' own finite-size noise remains (about ``n^-1/2``).
    """

    def __init__(self, mixture: GaussianMixture, projections: int = 512, seed: int = 0, chunk: int = 64) -> None:
        gen = torch.Generator().manual_seed(seed)
        dirs = torch.randn(projections, mixture.dim, generator=gen, dtype=torch.float64)
        self.directions = dirs / dirs.norm(dim=1, keepdim=True)  # (P, D)
        self.weights = mixture.weights  # (K,)
        self.means = self.directions @ mixture.means.T  # (P, K)
        self.stds = torch.einsum("pi,kij,pj->pk", self.directions, mixture.covariances, self.directions).sqrt()  # (P, K)
        self.chunk = chunk

    def _cdf_pdf_integral(self, x: Tensor, means: Tensor, stds: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``F``, its density ``f`` and ``G = int_{-inf}^x F`` at points ``x`` ``(..., N)`` on directions with
        projected ``means``, ``stds`` ``(..., K)``; each ``(..., N)``."""
        s = stds.unsqueeze(-2)
        z = (x.unsqueeze(-1) - means.unsqueeze(-2)) / s  # (..., N, K)
        cdf = 0.5 * torch.erfc(-z / math.sqrt(2.0))
        pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
        w = self.weights
        return cdf @ w, (pdf / s) @ w, (s * (z * cdf + pdf)) @ w

    def per_direction(self, samples: Tensor) -> Tensor:
        """``W_1`` along each direction ``(P,)`` for samples ``(N, D)``."""
        if samples.dim() != 2 or samples.shape[1] != self.directions.shape[1]:
            raise ValueError(f"sliced W1: samples must be (N, {self.directions.shape[1]}), got {tuple(samples.shape)}")
        x = samples.detach().to(torch.float64).cpu()
        n = x.shape[0]
        level = torch.arange(1, n, dtype=torch.float64) / n  # F_n on each gap between sorted projections (N - 1,)
        out = []
        for lo in range(0, len(self.directions), self.chunk):
            means, stds = self.means[lo:lo + self.chunk], self.stds[lo:lo + self.chunk]
            y = torch.sort(self.directions[lo:lo + self.chunk] @ x.T, dim=1).values  # (p, N)
            f, _, g = self._cdf_pdf_integral(y, means, stds)
            a, b, fa, fb, ga, gb = y[:, :-1], y[:, 1:], f[:, :-1], f[:, 1:], g[:, :-1], g[:, 1:]
            area = gb - ga  # int_a^b F
            gaps = torch.where(fb <= level, level * (b - a) - area, area - level * (b - a))
            rows, cols = torch.nonzero((fa < level) & (fb > level), as_tuple=True)
            if len(rows):  # F crosses F_n inside these gaps: split at the crossing point x*
                c, lo_x, hi_x = level[cols], a[rows, cols], b[rows, cols]
                x_star = self._crossing(c, lo_x, hi_x, fa[rows, cols], fb[rows, cols], means[rows], stds[rows])
                g_star = self._cdf_pdf_integral(x_star[:, None], means[rows], stds[rows])[2][:, 0]
                ga_c, gb_c = ga[rows, cols], gb[rows, cols]
                gaps[rows, cols] = c * (x_star - lo_x) - (g_star - ga_c) + (gb_c - g_star) - c * (hi_x - x_star)
            tail_right = means @ self.weights - y[:, -1] + g[:, -1]  # int_{y_N}^inf (1 - F) = E[X] - y_N + G(y_N)
            out.append(g[:, 0] + gaps.sum(dim=1) + tail_right)
        return torch.cat(out)

    def _crossing(self, level: Tensor, lo: Tensor, hi: Tensor, f_lo: Tensor, f_hi: Tensor, means: Tensor, stds: Tensor,
                  iterations: int = 30) -> Tensor:
        """Root of ``F(x) = level`` in ``[lo, hi]`` (all ``(M,)``; ``F(lo) < level < F(hi)``): Newton steps kept
        inside a shrinking bracket (a bisection step where Newton would leave it)."""
        x = lo + (level - f_lo) / (f_hi - f_lo) * (hi - lo)
        for _ in range(iterations):
            f, density, _ = self._cdf_pdf_integral(x[:, None], means, stds)
            f, density = f[:, 0], density[:, 0]
            lo, hi = torch.where(f < level, x, lo), torch.where(f < level, hi, x)
            newton = x - (f - level) / density.clamp_min(1e-300)
            x_new = torch.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
            if bool((x_new == x).all()):
                break
            x = x_new
        return x

    def __call__(self, samples: Tensor) -> float:
        """Mean over directions of the exact 1-D ``W_1`` between the samples ``(N, D)`` and the mixture."""
        return float(self.per_direction(samples).mean())
