"""Imputation task adapter: conditional training and batched sampling of missing entries.

Wraps a :class:`~sciffusion.model.DiffusionModel` whose network takes the conditioning as
``cond = {"cond_values", "cond_mask", "time"}`` (e.g. the ``csdi`` net). Training hides observed
entries chosen by a mask function and scores only those; sampling draws ``n`` samples of every
window, batched together (``max_batch`` series per network call), with any core solver and keeps the conditioning entries exactly (an
:class:`~sciffusion.guidance.Inpaint` constraint).

Batch format of :meth:`ImputationModel.training_loss` (what :class:`sciffusion.domains.timeseries.series.SeriesWindows` yields)::

    {"values": (B, K, L), "observed_mask": (B, K, L), "time": (B, L), "pattern_mask": (B, K, L) optional}
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from sciffusion.guidance import Inpaint
from sciffusion.model import DiffusionModel
from sciffusion.rng import StepRandom

MaskFn = Callable[[Tensor, Tensor | None, torch.Generator], Tensor]
"""``(observed (B, K, L), pattern (B, K, L) | None, generator) -> cond_mask (B, K, L)``."""


class ImputationModel(nn.Module):
    """A diffusion model trained to fill hidden entries given the others.

    Args:
        diffusion: the diffusion model; its network reads ``cond_values``, ``cond_mask`` and ``time``.
        mask_fn: training mask strategy (which observed entries the model may see).
        field: name of the series field.
    """

    def __init__(self, diffusion: DiffusionModel, mask_fn: MaskFn, field: str = "values") -> None:
        super().__init__()
        self.diffusion = diffusion
        self.mask_fn = mask_fn
        self.field = field

    def training_loss(self, batch: dict[str, Tensor], rng: StepRandom) -> Tensor:
        """Denoising loss on the entries the mask strategy hid (observed but not conditioned on)."""
        values, observed = batch["values"], batch["observed_mask"]
        cond_mask = self.mask_fn(observed, batch.get("pattern_mask"), rng.fork(2_000).generator).to(values.dtype)
        target_mask = observed * (1 - cond_mask)
        cond = {"cond_values": values * cond_mask, "cond_mask": cond_mask, "time": batch["time"]}
        return self.diffusion.training_loss(
            {"fields": {self.field: values}, "cond": cond, "loss_mask": {self.field: target_mask}}, rng
        )

    @torch.no_grad()
    def impute(self, values: Tensor, cond_mask: Tensor, time: Tensor, n_samples: int, solver: str = "ddpm",
               steps: int = 50, eta: float = 0.0, max_batch: int = 2048, generator: torch.Generator | None = None) -> Tensor:
        """Samples of every window, conditioned on its ``cond_mask`` entries.

        The ``B * n_samples`` (window, sample) series are sampled together in network batches of at most
        ``max_batch`` series (window-major order), so peak memory is bounded and a window's samples share a
        batch up to that size. On a GPU a large ``max_batch`` is fastest; on a CPU a batch that fits the
        caches is (the attention maps of a batch grow with its size; see the configs' ``sample.batch_size``).

        Args:
            values: ``(B, K, L)`` normalised values (anything where ``cond_mask`` is 0).
            cond_mask: ``(B, K, L)``, 1 where the model may see the value.
            time: ``(B, L)`` time stamps.
            n_samples: samples per window ``S``.
        Returns:
            ``(S, B, K, L)`` samples; conditioning entries equal ``values`` exactly.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        device = next(self.parameters()).device
        windows, features, length = values.shape
        out = []
        for rows in _chunks(windows * n_samples, max_batch):
            window = torch.arange(rows.start, rows.stop) // n_samples  # row r is sample r % S of window r // S
            m = cond_mask[window].to(device=device, dtype=values.dtype)
            cond = {"cond_values": values[window].to(device) * m, "cond_mask": m, "time": time[window].to(device)}
            keep = Inpaint(values={self.field: cond["cond_values"]}, mask={self.field: m}, noise_known=False)
            x = self.diffusion.sample(shapes={self.field: (len(window), features, length)}, cond=cond, solver=solver,
                                      steps=steps, eta=eta, constraints=[keep], generator=generator)[self.field]
            out.append(torch.where(m.bool(), cond["cond_values"], x).cpu())
        return torch.cat(out).reshape(windows, n_samples, features, length).transpose(0, 1)


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def sample_quantiles(samples: Tensor, quantiles: tuple[float, ...] | list[float]) -> Tensor:
    """Sample quantiles over the first axis, linear interpolation (as ``torch.quantile``), no size limit.

    Args:
        samples: ``(S, ...)``.
    Returns:
        ``(Q, ...)``.
    """
    ordered = torch.sort(samples, dim=0).values
    count = samples.shape[0]
    out = []
    for q in quantiles:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        position = q * (count - 1)
        lower = int(position // 1)
        upper = min(lower + 1, count - 1)
        weight = position - lower
        out.append(ordered[lower] + weight * (ordered[upper] - ordered[lower]))
    return torch.stack(out)
