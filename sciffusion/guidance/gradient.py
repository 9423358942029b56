"""Classifier-free and gradient guidance, applied to a denoiser's predictions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from sciffusion.processes import GaussianProcess, Prediction, Process, TorusProcess, per_sample
from sciffusion.registry import GUIDANCE

State = dict[str, Tensor]
Index = dict[str, Tensor]
GuidanceLoss = Callable[[State, State, Tensor, Index], Tensor]


def classifier_free(cond: dict[str, Any], uncond: dict[str, Any], scale: float,
                    processes: dict[str, Process] | None = None) -> dict[str, Any]:
    """``uncond + scale * (cond - uncond)`` per field, in each process's own space (:meth:`Process.combine_cfg`:
    affine in ``(x0, eps)`` for Gaussian fields, hence the same in every parametrization; in logit space for
    categorical ones). Without ``processes`` every field is a Gaussian :class:`Prediction`. ``scale = 1`` returns
    the conditional prediction."""
    if scale == 1.0:
        return cond
    if processes is None:
        return {name: Prediction(x0=u.x0 + scale * (cond[name].x0 - u.x0), eps=u.eps + scale * (cond[name].eps - u.eps))
                for name, u in uncond.items()}
    return {name: processes[name].combine_cfg(cond[name], u, scale) for name, u in uncond.items()}


@dataclass
class GradientGuidance:
    """Lower ``loss_fn(x0_hat, x_t, t, index) -> (B,)`` during sampling (``index``: the sample of every row of
    each ragged field, as the sampler has it; a loss over a ragged field sums its rows per sample with it).

    The score of every field is shifted by ``-scale * grad_x loss`` (classifier guidance when the loss is a
    negative log-likelihood; value guidance when it is a negative value; DPS when it is a measurement
    error). With ``through_model`` the gradient flows through the denoiser (DPS, universal guidance);
    otherwise it is taken with respect to ``x0_hat`` alone (cheaper, no backward pass through the network).

    Without ``through_model`` the loss tilts the posterior of the clean sample, whose mean moves by
    ``-scale * Cov[x0 | x_t] grad``; the covariance is taken as that of a unit-variance Gaussian prior
    (normalised data), ``sigma^2 / (alpha^2 + sigma^2)``: ``sigma^2`` near ``t = 0`` (as the score shift
    ``sigma^2 / alpha^2``) and at most 1, so the step stays finite at ``t = 1`` where ``sigma^2 / alpha``
    diverges. ``substeps > 1`` splits that step into smaller ones, each with the gradient re-evaluated at
    the corrected ``x0_hat`` (an Euler discretisation of the loss's gradient flow): a large single step
    overshoots (e.g. far past the edge of a forbidden region, into the ``clip_x0`` box), the sub-steps
    stop where the loss stops falling. No extra network evaluations.

    Args:
        loss_fn: ``(x0_hat: {field: Tensor}, x_t: {field: Tensor}, t: (B,), index: {field: (N,)}) -> (B,)``.
        scale: guidance strength.
        fields: fields to steer (default: all that the loss depends on).
        through_model: differentiate through the denoiser.
        substeps: gradient steps on ``x0_hat`` per denoiser call (``through_model=False`` only).
    """

    loss_fn: GuidanceLoss
    scale: float = 1.0
    fields: Sequence[str] | None = None
    through_model: bool = True
    substeps: int = 1

    def __post_init__(self) -> None:
        if self.substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {self.substeps}")
        if self.substeps > 1 and self.through_model:
            raise ValueError("substeps > 1 needs through_model=False (the sub-steps move x0_hat, not x_t)")


GUIDANCE.register("cfg", help="classifier-free guidance: sample.guidance_scale, trained with loss.cond_drop_prob")(classifier_free)
GUIDANCE.register("gradient", help="gradient of a differentiable loss of the predicted clean sample (classifier, value, cost, DPS)")(GradientGuidance)


def apply_gradient_guidance(denoise: Callable[..., dict[str, Any]], guides: Sequence[GradientGuidance],
                            processes: dict[str, Process], index: Index | None = None) -> Callable[..., dict[str, Any]]:
    """Wrap a denoiser ``(x, t, path) -> {field: prediction}`` so that its predictions include every gradient
    guidance term. Gaussian fields are steered through the score (or the clean estimate); torus fields (fractional
    coordinates) through their clean estimate only (``through_model=False``): the step ``-scale * v * grad`` with
    ``v`` the process's :meth:`~sciffusion.processes.torus.TorusProcess.posterior_variance`. Naming another field
    in ``GradientGuidance.fields`` is an error."""
    if not guides:
        return denoise
    index = index or {}
    gaussian = [name for name, proc in processes.items() if isinstance(proc, GaussianProcess)]
    torus = [name for name, proc in processes.items() if isinstance(proc, TorusProcess)]
    for g in guides:
        for name in g.fields or ():
            if name in torus and g.through_model:
                raise ValueError(f"gradient guidance steers the torus field '{name}' through its clean estimate only: "
                                 "use through_model=False")
            if name not in gaussian and name not in torus:
                kind = type(processes[name]).__name__ if name in processes else "not a field"
                raise ValueError(f"gradient guidance can steer Gaussian and torus fields only; '{name}' is {kind}")

    def guided(x: State, t: Tensor, path: dict[str, Any] | None = None) -> dict[str, Any]:
        alpha_sigma = {}
        for name in gaussian:
            c = processes[name].coefficients(t, x[name], index.get(name))
            alpha_sigma[name] = (c.alpha, c.sigma)
        # posterior covariance of x0 under a unit-variance Gaussian prior, per field (see GradientGuidance)
        cov = {name: s**2 / (a**2 + s**2) for name, (a, s) in alpha_sigma.items()}
        for name in torus:
            cov[name] = per_sample(processes[name].posterior_variance(t), x[name], index.get(name))
        with torch.enable_grad():
            x_in = {k: v.detach().requires_grad_(True) if k in gaussian else v for k, v in x.items()}
            pred = denoise(x_in, t, path) if any(g.through_model for g in guides) else None
            if pred is None:
                with torch.no_grad():
                    pred = denoise(x, t, path)
            estimates = {k: processes[k].x0_estimate(p) for k, p in pred.items()}
            grad_xt: dict[str, Tensor] = {k: torch.zeros_like(x[k]) for k in gaussian}  # scale * d loss / d x_t
            shift_x0: dict[str, Tensor] = {k: torch.zeros_like(x[k]) for k in (*gaussian, *torus)}  # x0-only corrections
            for g in guides:
                names = list(g.fields or (gaussian if g.through_model else (*gaussian, *torus)))
                if g.through_model:
                    loss = g.loss_fn(estimates, x_in, t, index).sum()
                    gs = torch.autograd.grad(loss, [x_in[n] for n in names], allow_unused=True, retain_graph=True)
                    for n, gr in zip(names, gs):
                        if gr is not None:
                            grad_xt[n] = grad_xt[n] + g.scale * gr
                    continue
                # gradient steps on x0_hat alone (no backward pass through the network)
                x0_k = {k: v.detach() for k, v in estimates.items()}
                for _ in range(g.substeps):
                    wrt = {k: v.clone().requires_grad_(True) if k in names else v for k, v in x0_k.items()}
                    loss = g.loss_fn(wrt, x_in, t, index).sum()
                    gs = torch.autograd.grad(loss, [wrt[n] for n in names], allow_unused=True)
                    for n, gr in zip(names, gs):
                        if gr is not None:
                            step = -cov[n] * (g.scale / g.substeps) * gr
                            shift_x0[n] = shift_x0[n] + step
                            x0_k[n] = x0_k[n] + step
        out: dict[str, Any] = dict(pred)
        for name in torus:
            out[name] = processes[name].shift_x0(pred[name], shift_x0[name].detach())
        for name in gaussian:
            p = pred[name]
            a, s = alpha_sigma[name]
            # score <- score - grad_xt  <=>  eps <- eps + sigma * grad_xt ;  x0 <- x0 - sigma^2 / alpha * grad_xt;
            # an x0 shift d with x_t = alpha x0 + sigma eps kept: eps <- eps - alpha / sigma * d (d = 0 at sigma = 0)
            d_eps = s * grad_xt[name] - torch.where(s > 0, a / s.clamp_min(1e-12), 0.0) * shift_x0[name]
            out[name] = Prediction(x0=(p.x0 - s**2 / a.clamp_min(1e-3) * grad_xt[name] + shift_x0[name]).detach(),
                                   eps=(p.eps + d_eps).detach())
        return out

    return guided
