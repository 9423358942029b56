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

    Args:
        loss_fn: ``(x0_hat: {field: Tensor}, x_t: {field: Tensor}, t: (B,)) -> (B,)``.
        scale: guidance strength.
        fields: fields to steer (default: all that the loss depends on).
        through_model: differentiate through the denoiser.
    """

    loss_fn: GuidanceLoss
    scale: float = 1.0
    fields: Sequence[str] | None = None
    through_model: bool = True


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
        with torch.enable_grad():
            x_in = {k: v.detach().requires_grad_(True) for k, v in x.items()}
            pred = denoise(x_in, t) if any(g.through_model for g in guides) else None
            if pred is None:
                with torch.no_grad():
                    pred = denoise(x, t)
            grads: dict[str, Tensor] = {k: torch.zeros_like(v) for k, v in x.items()}
            for g in guides:
                if g.through_model:
                    x0 = {k: p.x0 for k, p in pred.items()}
                    wrt = x_in
                else:
                    x0 = {k: p.x0.detach().requires_grad_(True) for k, p in pred.items()}
                    wrt = x0
                loss = g.loss_fn(x0, x_in, t).sum()
                names = [n for n in (g.fields or wrt.keys())]
                gs = torch.autograd.grad(loss, [wrt[n] for n in names], allow_unused=True, retain_graph=True)
                for n, gr in zip(names, gs):
                    if gr is not None:
                        grads[n] = grads[n] + g.scale * gr
        out: dict[str, Prediction] = {}
        for name, p in pred.items():
            proc = processes[name]
            alpha, sigma = proc.alpha_sigma(t)
            a = broadcast(alpha, x[name], index.get(name))
            s = broadcast(sigma, x[name], index.get(name))
            # score <- score - grad  <=>  eps <- eps + sigma * grad ;  x0 <- x0 - sigma^2 / alpha * grad
            out[name] = Prediction(x0=(p.x0 - s**2 / a.clamp_min(1e-3) * grads[name]).detach(),
                                   eps=(p.eps + s * grads[name]).detach())
        return out

    return guided
