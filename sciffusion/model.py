"""DiffusionModel: a network plus one process per named field; training loss and guided sampling.

This is the one place where a network, its processes, the loss weighting, classifier-free guidance,
gradient guidance and constraints meet. Domains build a ``DiffusionModel`` and never write their own
loss or sampler.

Batch format for :meth:`DiffusionModel.training_loss` (a dict, collatable by ``default_collate``)::

    {"fields":    {name: Tensor (B, ...)},              # clean data, one entry per field
     "cond":      {name: Tensor (B, ...)},              # optional conditioning passed to the network
     "loss_mask": {name: Tensor shaped like the field}} # optional, 1 where an entry counts in the loss

Net contract: ``net(x_t: {field: Tensor}, t: Tensor (B,), cond: dict | None) -> {field: Tensor}`` returns
the raw output per field; nets that support classifier-free guidance implement
``net.drop_condition(cond, drop: BoolTensor (B,)) -> cond``.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from sciffusion.guidance import GradientGuidance, apply_gradient_guidance, classifier_free
from sciffusion.processes import GaussianProcess, Prediction, from_x0_eps, loss_weight, ot_pairing
from sciffusion.processes.gaussian import EDMProcess, FlowProcess
from sciffusion.rng import StepRandom
from sciffusion.sampling import Constraint, State, solve

Cond = dict[str, Tensor] | None


class DiffusionModel(nn.Module):
    """A denoising network trained and sampled under per-field Gaussian processes.

    Args:
        net: the network (see the module docstring for its contract).
        processes: field name -> process. All fields share the diffusion time ``t``.
        weighting: ``uniform`` | ``min_snr`` | ``edm`` (see :mod:`sciffusion.processes.weighting`).
        min_snr_gamma: gamma of Min-SNR weighting.
        time_sampler: ``uniform`` | ``logit_normal`` | ``log_normal`` | ``discrete`` (VP: the schedule's knots); default: the first process's.
        time_loc, time_scale: location / scale of the (logit|log)-normal time sampler.
        cond_drop_prob: probability of dropping the condition in training (classifier-free guidance).
    """

    def __init__(self, net: nn.Module, processes: dict[str, GaussianProcess], weighting: str = "uniform",
                 min_snr_gamma: float = 5.0, time_sampler: str | None = None, time_loc: float | None = None,
                 time_scale: float | None = None, cond_drop_prob: float = 0.0) -> None:
        super().__init__()
        if not processes:
            raise ValueError("a DiffusionModel needs at least one field")
        self.net = net
        self.processes = dict(processes)
        self.weighting, self.min_snr_gamma = weighting, float(min_snr_gamma)
        first = next(iter(self.processes.values()))
        self.time_sampler = time_sampler or first.default_time_sampler
        default_loc, default_scale = ((-1.2, 1.2) if self.time_sampler == "log_normal" else (0.0, 1.0))
        self.time_loc = default_loc if time_loc is None else time_loc
        self.time_scale = default_scale if time_scale is None else time_scale
        self.cond_drop_prob = float(cond_drop_prob)
        if cond_drop_prob > 0 and not hasattr(net, "drop_condition"):
            raise ValueError(f"cond_drop_prob > 0 needs a net with drop_condition(); {type(net).__name__} has none")

    @property
    def time_process(self) -> GaussianProcess:
        """The process whose time input the network receives (the first field's)."""
        return next(iter(self.processes.values()))

    # -- one network call -------------------------------------------------------------------------
    def native(self, x_t: State, t: Tensor, cond: Cond = None, index: dict[str, Tensor] | None = None) -> State:
        """Network predictions in each process's own parametrization, ``{field: (B, ...)}``."""
        index = index or {}
        inputs = {n: p.net_input(x_t[n], t, index.get(n))[0] for n, p in self.processes.items()}
        _, t_in = self.time_process.net_input(next(iter(x_t.values())), t)
        raw = self.net(inputs, t_in.to(next(iter(x_t.values())).dtype), cond)
        return {n: p.net_output(raw[n], x_t[n], t, index.get(n)) for n, p in self.processes.items()}

    def predict(self, x_t: State, t: Tensor, cond: Cond = None, index: dict[str, Tensor] | None = None) -> dict[str, Prediction]:
        """``{field: Prediction(x0, eps)}`` for noisy state ``x_t`` at times ``t`` (B,)."""
        index = index or {}
        out = self.native(x_t, t, cond, index)
        return {n: p.to_x0_eps(out[n], x_t[n], t, index.get(n)) for n, p in self.processes.items()}

    # -- training ---------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Any], rng: StepRandom) -> Tensor:
        """Weighted denoising loss of one batch (see the module docstring for the batch format)."""
        x0: State = batch["fields"]
        cond: Cond = batch.get("cond")
        masks: dict[str, Tensor] = batch.get("loss_mask") or {}
        first = next(iter(x0.values()))
        n = first.shape[0]
        t = self.time_process.sample_time(n, rng, self.time_sampler, self.time_loc, self.time_scale).to(first.device)
        noise = {name: rng.fork(i).randn_like(x) for i, (name, x) in enumerate(x0.items())}
        if any(isinstance(p, FlowProcess) and p.ot_coupling for p in self.processes.values()):
            joint = torch.cat([x.reshape(n, -1) for x in x0.values()], dim=1)
            joint_noise = torch.cat([noise[k].reshape(n, -1) for k in x0], dim=1)
            perm = ot_pairing(joint, joint_noise)
            noise = {k: v[perm] for k, v in noise.items()}
        if cond is not None and self.cond_drop_prob > 0:
            drop = rng.fork(1000).rand(n) < self.cond_drop_prob
            cond = self.net.drop_condition(cond, drop.to(first.device))
        x_t = {name: self.processes[name].add_noise(x, noise[name], t) for name, x in x0.items()}
        pred = self.native(x_t, t, cond)
        total = first.new_zeros(())
        for name, proc in self.processes.items():
            c = proc.coefficients(t, x0[name])
            target = from_x0_eps(x0[name], noise[name], proc.prediction, c)
            sigma_data = proc.sigma_data if isinstance(proc, EDMProcess) else 0.5
            w = loss_weight(self.weighting, proc.prediction, c, self.min_snr_gamma, sigma_data)
            err = w * (pred[name] - target) ** 2
            mask = masks.get(name)
            if mask is None:
                total = total + err.mean()
            else:
                mask = mask.to(err.dtype).expand_as(err)
                total = total + (err * mask).sum() / mask.sum().clamp_min(1.0)
        return total

    # -- sampling ---------------------------------------------------------------------------------
    def denoiser(self, cond: Cond = None, guidance_scale: float = 1.0, gradient_guidance: Sequence[GradientGuidance] = (),
                 index: dict[str, Tensor] | None = None):
        """The guided denoising function ``(state, t) -> {field: Prediction}`` used by solvers."""

        def base(x: State, t: Tensor) -> dict[str, Prediction]:
            if guidance_scale == 1.0 or cond is None:
                return self.predict(x, t, cond, index)
            n = t.shape[0]
            null = self.net.drop_condition(cond, torch.ones(n, dtype=torch.bool, device=t.device))
            both = {k: torch.cat([cond[k], null[k]]) for k in cond}
            pred = self.predict({k: torch.cat([v, v]) for k, v in x.items()}, torch.cat([t, t]), both, index)
            c = {k: Prediction(p.x0[:n], p.eps[:n]) for k, p in pred.items()}
            u = {k: Prediction(p.x0[n:], p.eps[n:]) for k, p in pred.items()}
            return classifier_free(c, u, guidance_scale)

        return apply_gradient_guidance(base, list(gradient_guidance), self.processes, index)

    def prior(self, shapes: dict[str, tuple[int, ...]], generator: torch.Generator | None = None,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        """Noise at ``t = 1`` for each field, ``{field: shape}``."""
        return {n: (torch.randn(shapes[n], generator=generator, dtype=dtype) * p.prior_scale()).to(device)
                for n, p in self.processes.items()}

    @torch.no_grad()
    def sample(self, shapes: dict[str, tuple[int, ...]] | None = None, x_init: State | None = None, cond: Cond = None,
               solver: str = "dpmpp_2m", steps: int = 20, grid: str | None = None, eta: float = 0.0,
               guidance_scale: float = 1.0, gradient_guidance: Sequence[GradientGuidance] = (),
               constraints: Iterable[Constraint] = (), generator: torch.Generator | None = None,
               index: dict[str, Tensor] | None = None, clip_x0: float | None = None, progress: bool = False) -> State:
        """Draw samples. Give ``shapes`` (fresh prior noise) or ``x_init`` (state at ``t = 1``).

        Args:
            cond: conditioning passed to the network (batch of ``B``).
            solver: ``ddpm`` | ``ddim`` | ``dpmpp_2m`` | ``euler`` | ``heun`` | ``euler_maruyama`` | ``pc``.
            steps: solver steps (see :func:`sciffusion.sampling.nfe` for network evaluations).
            grid: time grid name (default: the first process's), see :meth:`GaussianProcess.time_grid`.
            guidance_scale: classifier-free guidance scale (1 = conditional model).
            gradient_guidance: losses of the predicted clean sample to steer down.
            constraints: hard constraints (:class:`~sciffusion.guidance.Inpaint`, :class:`~sciffusion.guidance.Project`).
            clip_x0: clamp predicted clean samples to ``[-clip_x0, clip_x0]`` (images in [-1, 1]).
        Returns:
            ``{field: Tensor}`` at ``t = 0``.
        """
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            if x_init is None:
                if shapes is None:
                    raise ValueError("sample() needs shapes or x_init")
                x_init = self.prior(shapes, generator, device)
            denoise = self.denoiser(cond, guidance_scale, gradient_guidance, index)
            if clip_x0 is not None:
                denoise = _clipped(denoise, self.processes, clip_x0, index or {})
            time_grid = self.time_process.time_grid(steps, grid)
            return solve(self.processes, denoise, x_init, time_grid, solver, eta=eta, constraints=constraints,
                         generator=generator, index=index, progress=progress)
        finally:
            self.train(was_training)


def _clipped(denoise, processes: dict[str, GaussianProcess], bound: float, index: dict[str, Tensor]):
    """Clamp ``x0`` and re-derive ``eps`` from it (as diffusers' ``clip_sample``)."""

    def wrapped(x: State, t: Tensor) -> dict[str, Prediction]:
        out = {}
        for name, p in denoise(x, t).items():
            x0 = p.x0.clamp(-bound, bound)
            c = processes[name].coefficients(t, x[name], index.get(name))
            out[name] = Prediction(x0=x0, eps=(x[name] - c.alpha * x0) / c.sigma)
        return out

    return wrapped


def diffusion_model_from_config(net: nn.Module, processes: dict[str, GaussianProcess], loss: Any) -> DiffusionModel:
    """Build a :class:`DiffusionModel` from a validated ``loss:`` config section (:class:`sciffusion.config.LossConfig`)."""
    loc, scale = {
        "logit_normal": (loss.logit_normal_mean, loss.logit_normal_std),
        "log_normal": (loss.log_normal_mean, loss.log_normal_std),
    }.get(loss.time_sampler, (None, None))
    drop = loss.cond_drop_prob if hasattr(net, "drop_condition") else 0.0
    return DiffusionModel(net, processes, weighting=loss.weighting, min_snr_gamma=loss.min_snr_gamma,
                          time_sampler=loss.time_sampler, time_loc=loc, time_scale=scale, cond_drop_prob=drop)
