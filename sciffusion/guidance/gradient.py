"""Classifier-free and gradient guidance, applied to a denoiser's predictions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from sciffusion.processes import GaussianProcess, Prediction, broadcast
from sciffusion.registry import GUIDANCE

State = dict[str, Tensor]
GuidanceLoss = Callable[[State, State, Tensor], Tensor]


def classifier_free(cond: dict[str, Prediction], uncond: dict[str, Prediction], scale: float) -> dict[str, Prediction]:
    """``uncond + scale * (cond - uncond)`` per field; ``scale = 1`` returns the conditional prediction.

    The combination is affine, so it is the same in every parametrization (eps, x0, v, velocity).
    """
    if scale == 1.0:
        return cond
    return {
        name: Prediction(x0=u.x0 + scale * (cond[name].x0 - u.x0), eps=u.eps + scale * (cond[name].eps - u.eps))
        for name, u in uncond.items()
    }


@dataclass
class GradientGuidance:
    """Lower ``loss_fn(x0_hat, x_t, t) -> (B,)`` during sampling.

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
        loss_fn: ``(x0_hat: {field: Tensor}, x_t: {field: Tensor}, t: (B,)) -> (B,)``.
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


def apply_gradient_guidance(denoise: Callable[[State, Tensor], dict[str, Prediction]], guides: Sequence[GradientGuidance],
                            processes: dict[str, GaussianProcess], index: dict[str, Tensor] | None = None
                            ) -> Callable[[State, Tensor], dict[str, Prediction]]:
    """Wrap a denoiser so that its predictions include every gradient guidance term."""
    if not guides:
        return denoise
    index = index or {}

    def guided(x: State, t: Tensor) -> dict[str, Prediction]:
        alpha_sigma = {}
        for name, proc in processes.items():
            alpha, sigma = proc.alpha_sigma(t)
            alpha_sigma[name] = (broadcast(alpha, x[name], index.get(name)), broadcast(sigma, x[name], index.get(name)))
        # posterior covariance of x0 under a unit-variance Gaussian prior, per field (see GradientGuidance)
        cov = {name: s**2 / (a**2 + s**2) for name, (a, s) in alpha_sigma.items()}
        with torch.enable_grad():
            x_in = {k: v.detach().requires_grad_(True) for k, v in x.items()}
            pred = denoise(x_in, t) if any(g.through_model for g in guides) else None
            if pred is None:
                with torch.no_grad():
                    pred = denoise(x, t)
            grad_xt: dict[str, Tensor] = {k: torch.zeros_like(v) for k, v in x.items()}  # scale * d loss / d x_t
            shift_x0: dict[str, Tensor] = {k: torch.zeros_like(v) for k, v in x.items()}  # x0-only corrections
            for g in guides:
                if g.through_model:
                    x0 = {k: p.x0 for k, p in pred.items()}
                    loss = g.loss_fn(x0, x_in, t).sum()
                    names = list(g.fields or x_in.keys())
                    gs = torch.autograd.grad(loss, [x_in[n] for n in names], allow_unused=True, retain_graph=True)
                    for n, gr in zip(names, gs):
                        if gr is not None:
                            grad_xt[n] = grad_xt[n] + g.scale * gr
                    continue
                # gradient steps on x0_hat alone (no backward pass through the network)
                x0_k = {k: p.x0.detach() for k, p in pred.items()}
                names = list(g.fields or x0_k.keys())
                for _ in range(g.substeps):
                    wrt = {k: v.clone().requires_grad_(True) for k, v in x0_k.items()}
                    loss = g.loss_fn(wrt, x_in, t).sum()
                    gs = torch.autograd.grad(loss, [wrt[n] for n in names], allow_unused=True)
                    for n, gr in zip(names, gs):
                        if gr is not None:
                            step = -cov[n] * (g.scale / g.substeps) * gr
                            shift_x0[n] = shift_x0[n] + step
                            x0_k[n] = x0_k[n] + step
        out: dict[str, Prediction] = {}
        for name, p in pred.items():
            a, s = alpha_sigma[name]
            # score <- score - grad_xt  <=>  eps <- eps + sigma * grad_xt ;  x0 <- x0 - sigma^2 / alpha * grad_xt;
            # an x0 shift d with x_t = alpha x0 + sigma eps kept: eps <- eps - alpha / sigma * d (d = 0 at sigma = 0)
            d_eps = s * grad_xt[name] - torch.where(s > 0, a / s.clamp_min(1e-12), 0.0) * shift_x0[name]
            out[name] = Prediction(x0=(p.x0 - s**2 / a.clamp_min(1e-3) * grad_xt[name] + shift_x0[name]).detach(),
                                   eps=(p.eps + d_eps).detach())
        return out

    return guided
