"""DiffusionModel: a network plus one process per named field; training loss and guided sampling.

This is the one place where a network, its processes, the loss, classifier-free guidance, gradient guidance
and constraints meet. Domains build a ``DiffusionModel`` and never write their own loss or sampler.

Batch format for :meth:`DiffusionModel.training_loss` (a dict)::

    {"fields":    {name: Tensor (B, ...) or ragged (N, ...)},  # clean data, one entry per field
     "index":     {name: LongTensor (N,)},                    # ragged fields only: the sample of every row
     "num_samples": int,                                      # optional: B when every field is ragged
     "cond":      {name: Tensor (B, ...)},                    # optional conditioning passed to the network
     "loss_mask": {name: Tensor shaped like the field}}       # optional, 1 where an entry counts in the loss

A torch-geometric ``Batch`` becomes this dict in the domain's collate (its ``batch`` vector is the index).

Net contract: ``net(x_t: {field: Tensor}, t: Tensor (B,), cond: dict | None) -> {field: Tensor}`` returns
the raw output per field; when the model has ragged fields the call is
``net(x_t, t, cond, index={field: (N,)})``. Nets that support classifier-free guidance implement
``net.drop_condition(cond, drop: BoolTensor (B,)) -> cond``.

Loss: each process returns its per-entry loss (:meth:`Process.loss`); the model takes the masked mean of a
dense field, and for a ragged field the mean over each sample's rows and then over samples, and sums the
fields with their weights (``weights``, default 1). An optional ``aux_loss(x0_hat, x0, t, index) -> (B,)``
(a domain's auxiliary loss on the clean estimates of all fields together, e.g. FrameFlow's backbone-atom and
pairwise-distance losses) adds its mean over samples.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from sciffusion.guidance import GradientGuidance, apply_gradient_guidance, classifier_free
from sciffusion.processes import GaussianProcess, LossWeighting, Prediction, Process, ot_pairing
from sciffusion.processes.gaussian import FlowProcess
from sciffusion.rng import StepRandom
from sciffusion.sampling import Constraint, State, batch_size, solve

Cond = dict[str, Tensor] | None
Index = dict[str, Tensor]
AuxLoss = Callable[[State, State, Tensor, Index], Tensor]  # (x0_hat, x0, t (B,), index) -> per-sample loss (B,)


class ProcessTable(nn.Module):
    """The processes as a module, so that ``model.to(device)`` moves their tables (e.g. VP's schedule knots)."""

    def __init__(self, processes: dict[str, Process]) -> None:
        super().__init__()
        self.by_name = dict(processes)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's hook for .to() / .cuda()
        for process in self.by_name.values():
            for key, value in vars(process).items():
                if isinstance(value, Tensor):
                    setattr(process, key, fn(value) if not torch.is_floating_point(value) else fn(value).to(value.dtype))
        return self


def network_inputs(processes: dict[str, Process], x_t: State, t: Tensor, index: Index) -> tuple[State, Tensor]:
    """What a network sees of a noisy state: each field's ``net_input`` and the time input ``(B,)`` of the first
    field's process (the time process), in the inputs' floating dtype."""
    inputs = {n: p.net_input(x_t[n], t, index.get(n)) for n, p in processes.items()}
    floats = [v.dtype for v in inputs.values() if torch.is_floating_point(v)]
    time_process = next(iter(processes.values()))
    return inputs, time_process.time_input(t).to(floats[0] if floats else torch.float32)


class DiffusionModel(nn.Module):
    """A denoising network trained and sampled under one process per field.

    Args:
        net: the network (see the module docstring for its contract).
        processes: field name -> process. All fields share the diffusion time ``t``.
        weighting: Gaussian fields' loss weighting ``uniform`` | ``min_snr`` | ``edm``
            (see :mod:`sciffusion.processes.weighting`).
        min_snr_gamma: gamma of Min-SNR weighting.
        time_sampler: ``uniform`` | ``logit_normal`` | ``log_normal`` | ``discrete`` (VP: the schedule's knots);
            default: the first process's.
        time_loc, time_scale: location / scale of the (logit|log)-normal time sampler.
        cond_drop_prob: probability of dropping the condition in training (classifier-free guidance).
        weights: field -> loss weight (default 1 for every field).
        aux_loss: ``(x0_hat, x0, t, index) -> (B,)``, an auxiliary loss of the clean estimates of every field
            (:meth:`Process.x0_estimate` of the training prediction) against the clean batch; its mean over
            samples is added to the loss.
    """

    def __init__(self, net: nn.Module, processes: dict[str, Process], weighting: str = "uniform",
                 min_snr_gamma: float = 5.0, time_sampler: str | None = None, time_loc: float | None = None,
                 time_scale: float | None = None, cond_drop_prob: float = 0.0,
                 weights: dict[str, float] | None = None, aux_loss: AuxLoss | None = None) -> None:
        super().__init__()
        if not processes:
            raise ValueError("a DiffusionModel needs at least one field")
        for name, proc in processes.items():
            if not isinstance(proc, Process):
                raise TypeError(f"field '{name}': {type(proc).__name__} is not a Process")
        self.net = net
        self._processes = ProcessTable(processes)
        self.loss_weighting = LossWeighting(weighting, float(min_snr_gamma))
        unknown = sorted(set(weights or {}) - set(processes))
        if unknown:
            raise ValueError(f"loss weight given for unknown field(s) {', '.join(unknown)} (fields: {', '.join(processes)})")
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in processes}
        first = next(iter(processes.values()))
        self.time_sampler = time_sampler or first.default_time_sampler
        default_loc, default_scale = ((-1.2, 1.2) if self.time_sampler == "log_normal" else (0.0, 1.0))
        self.time_loc = default_loc if time_loc is None else time_loc
        self.time_scale = default_scale if time_scale is None else time_scale
        self.cond_drop_prob = float(cond_drop_prob)
        self.aux_loss = aux_loss
        if cond_drop_prob > 0 and not hasattr(net, "drop_condition"):
            raise ValueError(f"cond_drop_prob > 0 needs a net with drop_condition(); {type(net).__name__} has none")

    @property
    def processes(self) -> dict[str, Process]:
        return self._processes.by_name

    @property
    def time_process(self) -> Process:
        """The process whose time input the network receives and whose grid the sampler uses (the first field's)."""
        return next(iter(self.processes.values()))

    # -- one network call -------------------------------------------------------------------------
    def raw(self, x_t: State, t: Tensor, cond: Cond = None, index: Index | None = None) -> State:
        """The network's raw output per field for the noisy state ``x_t`` at times ``t`` (B,)."""
        index = index or {}
        inputs, t_in = network_inputs(self.processes, x_t, t, index)
        if index:
            return self.net(inputs, t_in, cond, index=index)
        return self.net(inputs, t_in, cond)

    def predict(self, x_t: State, t: Tensor, cond: Cond = None, index: Index | None = None,
                path: dict[str, Any] | None = None) -> dict[str, Any]:
        """Each field's prediction (Gaussian: ``Prediction(x0, eps)``) for ``x_t`` at times ``t`` (B,)."""
        index, path = index or {}, path or {}
        out = self.raw(x_t, t, cond, index)
        return {n: p.predict(out[n], x_t[n], t, index.get(n), path.get(n)) for n, p in self.processes.items()}

    # -- training ---------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Any], rng: StepRandom) -> Tensor:
        """Weighted denoising loss of one batch (see the module docstring for the batch format)."""
        x0: State = batch["fields"]
        index: Index = batch.get("index") or {}
        cond: Cond = batch.get("cond")
        masks: dict[str, Tensor] = batch.get("loss_mask") or {}
        missing = sorted(set(self.processes) - set(x0))
        if missing:
            raise ValueError(f"the batch has no field(s) {', '.join(missing)} (it has: {', '.join(x0)})")
        for name, proc in self.processes.items():
            proc.validate(x0[name], name)
        n = int(batch["num_samples"]) if "num_samples" in batch else batch_size(x0, index)
        device = next(iter(x0.values())).device
        t = self.time_process.sample_time(n, rng, self.time_sampler, self.time_loc, self.time_scale).to(device)
        noise = self._training_noise(x0, index, n, rng)
        if cond is not None and self.cond_drop_prob > 0:
            drop = rng.fork(1000).rand(n) < self.cond_drop_prob
            cond = self.net.drop_condition(cond, drop.to(device))
        x_t, aux = {}, {}
        for i, (name, proc) in enumerate(self.processes.items()):
            extra = {"noise": noise[name]} if name in noise else {}
            x_t[name], aux[name] = proc.corrupt(x0[name], t, rng.fork(i), index.get(name), **extra)
        out = self.raw(x_t, t, cond, index)
        terms = []
        for name, proc in self.processes.items():
            extra = {"weighting": self.loss_weighting} if isinstance(proc, GaussianProcess) else {}
            err = proc.loss(out[name], x0[name], x_t[name], aux[name], t, index.get(name), **extra)
            terms.append(self.weights[name] * _reduce(err, masks.get(name), index.get(name), n))
        if self.aux_loss is not None:
            x0_hat = {k: p.x0_estimate(p.predict(out[k], x_t[k], t, index.get(k))) for k, p in self.processes.items()}
            terms.append(self.aux_loss(x0_hat, x0, t, index).mean())
        return torch.stack(terms).sum()

    def _training_noise(self, x0: State, index: Index, n: int, rng: StepRandom) -> State:
        """Gaussian noise paired with the data by minibatch optimal transport when a flow field asks for it
        (dense fields only); empty otherwise (each process then draws its own)."""
        if not any(isinstance(p, FlowProcess) and p.ot_coupling for p in self.processes.values()):
            return {}
        if index:
            raise ValueError("minibatch OT coupling (ot_coupling) needs dense fields")
        names = [k for k, p in self.processes.items() if isinstance(p, GaussianProcess)]
        noise = {k: rng.fork(list(self.processes).index(k)).randn_like(x0[k]) for k in names}
        joint = torch.cat([x0[k].reshape(n, -1) for k in names], dim=1)
        perm = ot_pairing(joint, torch.cat([noise[k].reshape(n, -1) for k in names], dim=1))
        return {k: v[perm] for k, v in noise.items()}

    # -- sampling ---------------------------------------------------------------------------------
    def denoiser(self, cond: Cond = None, guidance_scale: float = 1.0, gradient_guidance: Sequence[GradientGuidance] = (),
                 index: Index | None = None):
        """The guided denoising function ``(state, t, path) -> {field: prediction}`` used by solvers.

        Classifier-free guidance doubles the batch: dense fields and the condition are concatenated, ragged
        rows too, with the second copy's index shifted by ``B``.
        """
        index = index or {}

        def base(x: State, t: Tensor, path: dict[str, Any] | None = None) -> dict[str, Any]:
            if guidance_scale == 1.0 or cond is None:
                return self.predict(x, t, cond, index, path)
            n = t.shape[0]
            null = self.net.drop_condition(cond, torch.ones(n, dtype=torch.bool, device=t.device))
            both = {k: torch.cat([cond[k], null[k]]) for k in cond}
            doubled = {k: torch.cat([i, i + n]) for k, i in index.items()}
            out = self.raw({k: torch.cat([v, v]) for k, v in x.items()}, torch.cat([t, t]), both, doubled)
            c = {k: v[:len(v) // 2] for k, v in out.items()}
            u = {k: v[len(v) // 2:] for k, v in out.items()}
            path = path or {}
            pred_c = {k: p.predict(c[k], x[k], t, index.get(k), path.get(k)) for k, p in self.processes.items()}
            pred_u = {k: p.predict(u[k], x[k], t, index.get(k), path.get(k)) for k, p in self.processes.items()}
            return classifier_free(pred_c, pred_u, guidance_scale, self.processes)

        return apply_gradient_guidance(base, list(gradient_guidance), self.processes, index)

    def prior(self, shapes: dict[str, tuple[int, ...]], generator: torch.Generator | None = None,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, index: Index | None = None) -> State:
        """A draw at ``t = 1`` for each field, ``{field: shape}`` (ragged fields: ``(N, ...)`` with ``index``)."""
        index = index or {}
        return {n: p.prior(tuple(shapes[n]), generator, device, dtype, index.get(n)) for n, p in self.processes.items()}

    @torch.no_grad()
    def sample(self, shapes: dict[str, tuple[int, ...]] | None = None, x_init: State | None = None, cond: Cond = None,
               solver: str | dict[str, str] = "dpmpp_2m", steps: int = 20, grid: str | None = None, eta: float = 0.0,
               guidance_scale: float = 1.0, gradient_guidance: Sequence[GradientGuidance] = (),
               constraints: Iterable[Constraint] = (), generator: torch.Generator | None = None,
               index: Index | None = None, clip_x0: float | None = None, progress: bool = False) -> State:
        """Draw samples. Give ``shapes`` (fresh prior draws, in the parameters' float dtype) or ``x_init`` (the state
        at ``t = 1``).

        Args:
            cond: conditioning passed to the network (batch of ``B``).
            solver: a solver name for every field, or ``{field: name}``; a field whose process the named
                solver cannot drive gets its process's default (see :func:`sciffusion.sampling.resolve_solvers`).
            steps: solver steps (see :func:`sciffusion.sampling.nfe` for network evaluations).
            grid: time grid name (default: the first process's), see its ``time_grid``.
            guidance_scale: classifier-free guidance scale (1 = conditional model).
            gradient_guidance: losses of the predicted clean sample to steer down.
            constraints: hard constraints (:class:`~sciffusion.guidance.Inpaint`, :class:`~sciffusion.guidance.Project`).
            index: the sample of every row of each ragged field.
            clip_x0: clamp Gaussian fields' predicted clean samples to ``[-clip_x0, clip_x0]`` (images in [-1, 1]).
        Returns:
            ``{field: Tensor}`` at ``t = 0``.
        """
        was_training = self.training
        self.eval()
        try:
            anchor = next(self.parameters())
            if x_init is None:
                if shapes is None:
                    raise ValueError("sample() needs shapes or x_init")
                dtype = anchor.dtype if anchor.dtype in (torch.float32, torch.float64) else torch.float32
                x_init = self.prior(shapes, generator, anchor.device, dtype, index)
            denoise = self.denoiser(cond, guidance_scale, gradient_guidance, index)
            if clip_x0 is not None:
                denoise = _clipped(denoise, self.processes, clip_x0, index or {})
            time_grid = self.time_process.time_grid(steps, grid)
            return solve(self.processes, denoise, x_init, time_grid, solver, eta=eta, constraints=constraints,
                         generator=generator, index=index, progress=progress)
        finally:
            self.train(was_training)


def _reduce(err: Tensor, mask: Tensor | None, index: Tensor | None, n: int) -> Tensor:
    """One field's loss: masked mean (dense); for ragged rows the mean per sample, then over samples."""
    if mask is not None:
        mask = mask.to(err.dtype).expand_as(err)
    if index is None:
        if mask is None:
            return err.mean()
        return (err * mask).sum() / mask.sum().clamp_min(1.0)
    rows = err.reshape(err.shape[0], -1)
    if mask is None:
        per_row, weight = rows.mean(dim=1), torch.ones(len(rows), dtype=err.dtype, device=err.device)
    else:
        m = mask.reshape(rows.shape)
        weight = m.mean(dim=1)
        per_row = (rows * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    counted = torch.zeros(n, dtype=err.dtype, device=err.device).index_add_(0, index, weight)
    per_sample = torch.zeros(n, dtype=err.dtype, device=err.device).index_add_(0, index, per_row * weight)
    present = counted > 0
    return (per_sample[present] / counted[present]).mean()


def _clipped(denoise, processes: dict[str, Process], bound: float, index: Index):
    """Clamp Gaussian fields' ``x0`` and re-derive ``eps`` from it (as diffusers' ``clip_sample``)."""

    def wrapped(x: State, t: Tensor, path: dict[str, Any] | None = None) -> dict[str, Any]:
        out = dict(denoise(x, t, path))
        for name, proc in processes.items():
            if not isinstance(proc, GaussianProcess):
                continue
            p = out[name]
            x0 = p.x0.clamp(-bound, bound)
            c = (path or {}).get(name) or proc.coefficients(t, x[name], index.get(name))
            out[name] = Prediction(x0=x0, eps=(x[name] - c.alpha * x0) / c.sigma)
        return out

    return wrapped


def diffusion_model_from_config(net: nn.Module, processes: dict[str, Process], loss: Any,
                                weights: dict[str, float] | None = None, aux_loss: AuxLoss | None = None) -> DiffusionModel:
    """Build a :class:`DiffusionModel` from a validated ``loss:`` config section (:class:`sciffusion.config.LossConfig`)
    and a domain's optional ``aux_loss``."""
    loc, scale = {
        "logit_normal": (loss.logit_normal_mean, loss.logit_normal_std),
        "log_normal": (loss.log_normal_mean, loss.log_normal_std),
    }.get(loss.time_sampler, (None, None))
    drop = loss.cond_drop_prob if hasattr(net, "drop_condition") else 0.0
    return DiffusionModel(net, processes, weighting=loss.weighting, min_snr_gamma=loss.min_snr_gamma,
                          time_sampler=loss.time_sampler, time_loc=loc, time_scale=scale, cond_drop_prob=drop,
                          weights=weights, aux_loss=aux_loss)
