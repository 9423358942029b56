"""Categorical processes for integer class fields (atom types, residue types, tokens): discrete flow matching
and D3PM on one mixture path.

A clean field holds class indices in ``[0, K)`` (``K = num_classes``), dense ``(B, L)`` or ragged ``(N,)`` with
``index`` ``(N,)``. Every entry is corrupted independently along the *mixture path* (Campbell et al. 2024,
"Generative flows on discrete state-spaces", discrete flow models; Gat et al. 2024, "Discrete flow matching"):

    p_t(x | x0) = kappa(t) [x = x0] + (1 - kappa(t)) p_src(x),    kappa(0) = 1, kappa(1) = 0,

i.e. with probability ``kappa(t)`` the entry is still its clean class, otherwise a draw of the source ``p_src``:

* ``source="mask"``: the mask token, index ``K`` (the absorbing state of D3PM): ``x_t`` takes ``K + 1`` values;
* ``source="uniform"``: a uniform class in ``[0, K)`` (D3PM uniform): ``x_t`` takes ``K`` values.

``kappa(t) = (1 - t)^n`` with ``n`` = 1 / 2 / 3 for ``schedule`` linear / quadratic / cubic: flow_matching's
``PolynomialConvexScheduler(n)`` read in our time (its time ``t' = 1 - t`` runs from source to data and its
``kappa(t') = t'^n``). The path is also the marginal of a Markov chain (Austin et al. 2021, "Structured
denoising diffusion models in discrete state-spaces", D3PM): from ``s < t``,
``q(x_t | x_s) = r [x_t = x_s] + (1 - r) p_src(x_t)`` with ``r = kappa(t) / kappa(s)``.

The network sees ``x_t`` (long, ``vocab_size`` states) and the time, and outputs logits ``(..., K)`` of the clean
class; :meth:`CategoricalProcess.predict` returns them (with the mask source, entries that are not masked carry
their class over: the path never changes a revealed entry, so its clean class is ``x_t`` itself), and
:meth:`CategoricalProcess.x0_estimate` gives class probabilities. Two reverse steps are pure functions here:
:func:`dfm_euler_step` (the CTMC of discrete flow matching) and :func:`d3pm_step` (D3PM ancestral sampling).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sciffusion.config import FieldError
from sciffusion.processes.base import Process, per_sample
from sciffusion.registry import PROCESSES
from sciffusion.rng import StepRandom

SOURCES = ("mask", "uniform")
SCHEDULE_EXPONENTS = {"linear": 1.0, "quadratic": 2.0, "cubic": 3.0}
LOSS_WEIGHTINGS = ("uniform", "elbo")


def _check_options(num_classes: int, source: str, schedule: str, loss_weighting: str) -> None:
    """Raise :class:`FieldError` (a ``ValueError``) naming the first bad option."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise FieldError("num_classes", f"must be an integer >= 2, got {num_classes!r}")
    if source not in SOURCES:
        raise FieldError("source", f"must be one of {', '.join(SOURCES)}, got {source!r}")
    if schedule not in SCHEDULE_EXPONENTS:
        raise FieldError("schedule", f"must be one of {', '.join(SCHEDULE_EXPONENTS)}, got {schedule!r}")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise FieldError("loss_weighting", f"must be one of {', '.join(LOSS_WEIGHTINGS)}, got {loss_weighting!r}")
    if loss_weighting == "elbo" and source != "mask":
        raise FieldError("loss_weighting", "'elbo' is the masked-diffusion bound and needs source 'mask'")


@dataclass
class CategoricalConfig:
    """Options of the ``categorical`` process.

    ``num_classes``: ``K``, clean classes ``[0, K)``. ``source``: ``mask`` (absorbing token ``K``) or ``uniform``.
    ``schedule``: ``kappa(t) = (1 - t)^n``, n = 1 (linear), 2 (quadratic), 3 (cubic). ``loss_weighting``:
    ``uniform`` (plain cross-entropy) or ``elbo`` (mask source only: weight ``-kappa'(t) / (1 - kappa(t))``, the
    continuous-time bound of masked diffusion).
    """

    num_classes: int
    source: Literal["mask", "uniform"] = "mask"
    schedule: Literal["linear", "quadratic", "cubic"] = "linear"
    loss_weighting: Literal["uniform", "elbo"] = "uniform"

    def __post_init__(self) -> None:
        _check_options(self.num_classes, self.source, self.schedule, self.loss_weighting)


class CategoricalProcess(Process):
    """Mixture path with a mask or uniform source on integer class fields (see the module docstring).

    Discrete flow matching: Campbell et al. 2024 (discrete flow models) and Gat et al. 2024 (discrete flow
    matching); ancestral steps: Austin et al. 2021 (D3PM, uniform and absorbing). Cross-entropy loss on the clean
    class, classifier-free guidance in logit space.

    Args:
        num_classes: ``K``.
        source: ``"mask"`` or ``"uniform"``.
        schedule: ``"linear"``, ``"quadratic"`` or ``"cubic"`` (exponent of ``kappa(t) = (1 - t)^n``).
        loss_weighting: ``"uniform"`` or ``"elbo"`` (mask source only).
    """

    name = "categorical"
    default_solver = "dfm_euler"

    def __init__(self, num_classes: int, source: str = "mask", schedule: str = "linear",
                 loss_weighting: str = "uniform") -> None:
        _check_options(num_classes, source, schedule, loss_weighting)
        self.num_classes = num_classes
        self.source = source
        self.schedule = schedule
        self.loss_weighting = loss_weighting
        self.exponent = SCHEDULE_EXPONENTS[schedule]

    # -- the path ----------------------------------------------------------------------------------
    @property
    def mask_index(self) -> int | None:
        """The mask token ``K`` (mask source), else ``None``."""
        return self.num_classes if self.source == "mask" else None

    @property
    def vocab_size(self) -> int:
        """Number of values ``x_t`` takes: ``K + 1`` with the mask source, ``K`` otherwise (the network's input
        embedding size)."""
        return self.num_classes + (self.source == "mask")

    def kappa(self, t: Tensor) -> Tensor:
        """Probability that an entry is still clean at time ``t``: ``(1 - t)^n``, shaped like ``t``."""
        return (1 - t).clamp(0.0, 1.0) ** self.exponent

    def kappa_rate(self, t: Tensor) -> Tensor:
        """``-d kappa / dt / (1 - kappa)`` (>= 0), the rate at which clean entries are corrupted, shaped like ``t``."""
        one_minus = (1 - t).clamp(0.0, 1.0)
        return self.exponent * one_minus ** (self.exponent - 1) / (1 - one_minus ** self.exponent)

    def source_probs(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
        """``p_src`` over the ``vocab_size`` states, ``(V,)``."""
        if self.source == "mask":
            return F.one_hot(torch.tensor(self.num_classes, device=device), self.vocab_size).to(dtype)
        return torch.full((self.vocab_size,), 1.0 / self.num_classes, dtype=dtype, device=device)

    def marginal_probs(self, x0: Tensor, t: Tensor, index: Tensor | None = None) -> Tensor:
        """Closed form ``p_t(. | x0)`` over the ``vocab_size`` states: ``(*x0.shape, V)`` float64."""
        kappa = per_sample(self.kappa(t.to(torch.float64)), x0.to(torch.float64), index)[..., None]
        clean = F.one_hot(x0, self.vocab_size).to(torch.float64)
        return kappa * clean + (1 - kappa) * self.source_probs(device=x0.device)

    # -- the field's space -------------------------------------------------------------------------
    def validate(self, x: Tensor, field: str) -> None:
        """Clean classes: an integer tensor of at least one dimension with values in ``[0, K)`` (the mask token
        ``K`` appears only in noised states)."""
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(f"field '{field}': the categorical process takes integer class indices (e.g. torch.long), "
                             f"got dtype {x.dtype}")
        if x.dim() < 1:
            raise ValueError(f"field '{field}': expected class indices of shape (B, ...) or ragged (N,), got a scalar")
        if x.numel() == 0:
            return
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= self.num_classes:
            hint = (f"; {self.num_classes} is the mask token, which only noised states hold"
                    if self.mask_index is not None and high == self.mask_index else "")
            raise ValueError(f"field '{field}': class indices must lie in [0, {self.num_classes}) "
                             f"(num_classes = {self.num_classes}), got values in [{low}, {high}]{hint}")

    # -- forward process ---------------------------------------------------------------------------
    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, index: Tensor | None = None) -> Tensor:
        """A draw of ``p_src`` at ``t = 1``: long ``shape`` (all mask tokens, or uniform classes drawn on the CPU
        from ``generator``). ``dtype`` and ``index`` do not matter here (states are ``torch.long``; entries are
        independent)."""
        if self.source == "mask":
            return torch.full(shape, self.num_classes, dtype=torch.long, device=device)
        return torch.randint(self.num_classes, shape, generator=generator).to(device)

    def _mix(self, x0: Tensor, t: Tensor, uniforms: Tensor, index: Tensor | None) -> Tensor:
        """``x_t`` (long) from ``x0`` (any integer dtype) with uniforms ``(*x0.shape, 2)``: the first decides clean
        vs source, the second picks the uniform source class."""
        keep_u, class_u = uniforms[..., 0], uniforms[..., 1]
        keep = keep_u < per_sample(self.kappa(t.to(torch.float64)), keep_u, index)
        if self.source == "mask":
            noise = torch.full_like(x0, self.num_classes, dtype=torch.long)
        else:
            noise = (class_u * self.num_classes).long().clamp_max(self.num_classes - 1)
        return torch.where(keep, x0.long(), noise)

    def corrupt(self, x0: Tensor, t: Tensor, rng: StepRandom, index: Tensor | None = None) -> tuple[Tensor, None]:
        """``(x_t, None)`` with ``x_t ~ p_t(. | x0)`` entrywise; ``x0`` long ``(B, ...)`` or ``(N,)``, ``t`` ``(B,)``.

        All draws come from one ``rng.rand`` call (no ``fork``: the trainer forks streams per field); ragged rows
        draw from one stream per sample (``rng.rand_rows``)."""
        if index is None:
            uniforms = rng.rand(*x0.shape, 2, dtype=torch.float64, device=x0.device)
        else:
            uniforms = rng.rand_rows(index, *x0.shape[1:], 2, dtype=torch.float64, device=x0.device)
        return self._mix(x0, t, uniforms, index), None

    def noised_known(self, x0: Tensor, t: Tensor, generator: torch.Generator | None, index: Tensor | None = None) -> Tensor:
        """Known classes ``x0`` brought to time ``t`` (inpainting with ``noise_known``): a draw of ``p_t(. | x0)``,
        uniforms drawn on the CPU from ``generator``."""
        uniforms = torch.rand((*x0.shape, 2), generator=generator, dtype=torch.float64).to(x0.device)
        return self._mix(x0, t, uniforms, index)

    # -- the network -------------------------------------------------------------------------------
    def _check_logits(self, out: Tensor, x: Tensor) -> None:
        if out.shape != (*x.shape, self.num_classes):
            raise ValueError(f"categorical network output must be logits of shape {(*x.shape, self.num_classes)} "
                             f"(field shape + num_classes), got {tuple(out.shape)}")

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, aux: None, t: Tensor, index: Tensor | None = None) -> Tensor:
        """Cross-entropy of the logits ``out`` ``(*x0.shape, K)`` against the clean class, per entry (``x0.shape``).

        Which entries count: with the mask source only the masked ones (elsewhere ``x_t`` *is* the clean class and
        :meth:`predict` copies it, so the network's output there is never used; the other entries get 0, so a mean
        over entries is the usual masked-diffusion objective); with the uniform source every entry (any entry may
        have been resampled, possibly to its own class, so every posterior is non-trivial). ``loss_weighting="elbo"``
        multiplies by ``-kappa'(t) / (1 - kappa(t))``, which makes the time average the continuous-time bound
        (Shi et al. 2024; Sahoo et al. 2024).
        """
        self._check_logits(out, x0)
        ce = -torch.log_softmax(out, dim=-1).gather(-1, x0.long().unsqueeze(-1)).squeeze(-1)
        if self.source == "mask":
            ce = ce * (x_t == self.num_classes).to(ce.dtype)
        if self.loss_weighting == "elbo":
            ce = ce * per_sample(self.kappa_rate(t.to(torch.float64)), ce, index)
        return ce

    def predict(self, out: Tensor, x_t: Tensor, t: Tensor, index: Tensor | None = None, path: None = None) -> Tensor:
        """Logits ``(*x_t.shape, K)`` of the clean class. With the mask source an entry that is not masked gets the
        logits of its own class (0 there, the dtype's lowest value elsewhere): the carry-over of revealed entries."""
        self._check_logits(out, x_t)
        if self.source == "uniform":
            return out
        revealed = x_t != self.num_classes
        copy = torch.full_like(out, torch.finfo(out.dtype).min).scatter(-1, x_t.clamp_max(self.num_classes - 1)
                                                                        .unsqueeze(-1), 0.0)
        return torch.where(revealed.unsqueeze(-1), copy, out)

    def x0_estimate(self, pred: Tensor) -> Tensor:
        """Class probabilities ``(..., K)`` from the logits."""
        return torch.softmax(pred, dim=-1)

    def combine_cfg(self, cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
        """``uncond + scale (cond - uncond)`` on logits ``(..., K)``: up to a per-entry constant (which softmax
        ignores) this is ``(1 - scale) log p_uncond + scale log p_cond``, i.e. ``p ∝ p_uncond^(1-scale) p_cond^scale``.
        Computed by ``torch.lerp``, which returns ``cond`` exactly at scale 1 and ``uncond`` at 0."""
        return torch.lerp(uncond, cond, scale)


@PROCESSES.register("categorical", config=CategoricalConfig,
                    help="discrete flow matching / D3PM on class fields: mask or uniform source, cross-entropy loss")
def _build_categorical(**kw) -> CategoricalProcess:
    return CategoricalProcess(**kw)


# ------------------------------------------------------------------------------------------------
# Reverse steps (pure functions; randomness from the generator, drawn on the CPU)
# ------------------------------------------------------------------------------------------------
def _clean_probs(process: CategoricalProcess, logits: Tensor) -> Tensor:
    """Softmax of the clean-class logits ``(..., K)`` over the ``vocab_size`` states ``(..., V)`` (0 for the mask)."""
    probs = torch.softmax(logits, dim=-1)
    return F.pad(probs, (0, process.vocab_size - process.num_classes))


def _sample(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One class per entry from unnormalised probabilities ``(..., V)``: long ``(...)``.

    An exponential race, ``argmax_v p_v / E_v`` with ``E_v = -log U_v ~ Exp(1)`` (the Gumbel-max trick without its
    second logarithm): class ``v`` wins with probability ``p_v / sum p``, and a zero-probability class never does.
    The uniforms are drawn on the CPU in float64."""
    u = torch.rand(probs.shape, generator=generator, dtype=torch.float64).to(probs.device)
    return (probs.to(torch.float64) / -torch.log(u)).argmax(dim=-1)


def _kappas(process: CategoricalProcess, t: Tensor, s: Tensor, like: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
    """``kappa(t), kappa(s)`` per entry, shaped ``like`` (the field) plus a trailing 1, in ``like``'s dtype."""
    k_t = per_sample(process.kappa(t.to(torch.float64)), like, index)
    k_s = per_sample(process.kappa(s.to(torch.float64)), like, index)
    return k_t.unsqueeze(-1), k_s.unsqueeze(-1)


def dfm_euler_step(process: CategoricalProcess, x_t: Tensor, logits: Tensor, t: Tensor, s: Tensor,
                   generator: torch.Generator | None, index: Tensor | None = None) -> Tensor:
    """Discrete flow matching step from ``t`` down to ``s < t`` (Gat et al. 2024; Campbell et al. 2024).

    On the mixture path the probability velocity towards the data (per entry) is
    ``u = -kappa'(t) / (1 - kappa(t)) (p(x0 | x_t) - [x = x_t])``: it moves the state's mass towards the predicted
    clean-class posterior ``p(x0 | x_t) = softmax(logits)`` at the rate ``-kappa' / (1 - kappa)``. Holding the posterior
    at its value at ``t`` and integrating that rate exactly over the step (``exp(-int rate) = (1 - kappa(s)) /
    (1 - kappa(t))``) gives

        x_s ~ (1 - lambda) [x = x_t] + lambda p(x0 = x | x_t),    lambda = (kappa(s) - kappa(t)) / (1 - kappa(t)),

    which agrees with the plain Euler step ``lambda = (t - s) rate(t)`` to first order (exactly, on the linear
    schedule) and is never above 1; flow_matching's ``MixtureDiscreteEulerSolver`` jumps with
    ``1 - exp(-(t - s) rate(t))`` instead. At ``s = 0``, ``lambda = 1``: the result is a draw of the predicted
    clean class (no mask left).

    Args:
        x_t: states, long ``(B, ...)`` or ragged ``(N,)`` with ``index`` ``(N,)``.
        logits: the prediction of :meth:`CategoricalProcess.predict`, ``(*x_t.shape, K)``.
        t, s: current and next times ``(B,)``, ``s < t``.
        generator: source of the draws (CPU).
    Returns:
        ``x_s``, long, shaped like ``x_t``.
    """
    k_t, k_s = _kappas(process, t, s, logits[..., 0], index)
    lam = ((k_s - k_t) / (1 - k_t)).clamp(0.0, 1.0)
    stay = F.one_hot(x_t, process.vocab_size).to(logits.dtype)
    return _sample((1 - lam) * stay + lam * _clean_probs(process, logits), generator)


def d3pm_posterior(process: CategoricalProcess, x_t: Tensor, logits: Tensor, t: Tensor, s: Tensor,
                   index: Tensor | None = None) -> Tensor:
    """D3PM reverse kernel ``p(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p(x0 | x_t)`` over the ``vocab_size`` states,
    ``(*x_t.shape, V)`` (Austin et al. 2021, x0-parametrisation). With the exact ``p(x0 | x_t)`` this is the exact
    reverse marginal of each entry; Austin et al.'s eq. 4 normalises ``sum_x0 q(x_s, x_t | x0) p(x0 | x_t)``
    instead, which is the same for the absorbing source (``q(x_t = mask | x0)`` does not depend on ``x0``) but not
    exact for the uniform one.

    Bayes on the chain: ``q(x_s = j | x_t = i, x0) = q(i | j) q(j | x0) / q(i | x0)`` with ``q(i | j) = r [i = j] +
    (1 - r) p_src(i)``, ``r = kappa(t) / kappa(s)``, ``q(j | x0) = kappa(s) [j = x0] + (1 - kappa(s)) p_src(j)``. With
    ``A(x0) = p(x0 | x_t) / q(i | x0)`` the average is ``q(i | j) (kappa(s) A(j) + (1 - kappa(s)) p_src(j) sum A)``.

    * uniform source (``p_src = 1 / K``): that formula (``q(i | x0) >= (1 - kappa(t)) / K > 0`` for ``t > 0``);
    * mask source: a revealed entry stays (only ``x0 = x_t`` is possible, ``x_s = x_t``); a masked one stays masked
      with probability ``(1 - kappa(s)) / (1 - kappa(t))`` and is otherwise revealed as ``x0 ~ p(x0 | x_t)`` — the
      same kernel as :func:`dfm_euler_step` (absorbing D3PM and masked flow matching coincide on this path).
    """
    k_t, k_s = _kappas(process, t, s, logits[..., 0], index)
    clean = _clean_probs(process, logits)
    here = F.one_hot(x_t, process.vocab_size).to(logits.dtype)
    if process.source == "mask":
        lam = (k_s - k_t) / (1 - k_t)
        masked = (1 - lam) * F.one_hot(torch.full_like(x_t, process.num_classes), process.vocab_size).to(logits.dtype)
        return torch.where((x_t == process.num_classes).unsqueeze(-1), masked + lam * clean, here)
    p_src = 1.0 / process.num_classes
    r = k_t / k_s
    weights = clean / (k_t * here + (1 - k_t) * p_src)
    post = (r * here + (1 - r) * p_src) * (k_s * weights + (1 - k_s) * p_src * weights.sum(-1, keepdim=True))
    return post / post.sum(-1, keepdim=True)


def d3pm_step(process: CategoricalProcess, x_t: Tensor, logits: Tensor, t: Tensor, s: Tensor,
              generator: torch.Generator | None, index: Tensor | None = None) -> Tensor:
    """D3PM ancestral step (Austin et al. 2021): ``x_s ~ sum_x0 q(x_s | x_t, x0) p(x0 | x_t)``, see
    :func:`d3pm_posterior`; uniform and absorbing (mask) source. Shapes as :func:`dfm_euler_step`; at ``s = 0`` a
    draw of the predicted clean class."""
    return _sample(d3pm_posterior(process, x_t, logits, t, s, index), generator)


def _rank_within_sample(keys: Tensor, index: Tensor) -> Tensor:
    """Rank ``(N,)`` (0 = smallest) of each of ``keys`` ``(N,)`` in ``[0, 2)`` among the entries of its sample."""
    order = torch.argsort(index.to(torch.float64) * 2 + keys)  # grouped by sample, ascending keys inside each
    counts = torch.bincount(index, minlength=int(index.max()) + 1 if index.numel() else 0)
    starts = torch.cumsum(counts, 0) - counts
    ranks = torch.empty_like(index)
    ranks[order] = torch.arange(index.numel(), device=index.device) - starts[index[order]]
    return ranks


def sequential_reveal_step(process: CategoricalProcess, x_t: Tensor, logits: Tensor, t: Tensor, s: Tensor,
                           generator: torch.Generator | None, index: Tensor | None = None) -> Tensor:
    """Masked-source step that reveals entries one evaluation at a time, in a uniformly random order.

    On the mask path the clean-class posterior of the masked entries depends on ``x_t`` only through what is
    revealed, not on ``t`` (Zheng et al. 2024, "Masked diffusion models are secretly time-agnostic masked models
    and exploit inaccurate categorical sampling"). Revealing a single entry per network evaluation, drawn from its
    posterior given the entries revealed so far, is therefore the chain rule of the joint law: exact under an exact
    denoiser, whatever the order. :func:`dfm_euler_step` instead reveals each masked entry independently, and entries
    revealed in the same step miss their dependence (an ``O(1 / steps)`` error).

    The step keeps the number of revealed entries of a sample of ``L`` entries at ``round(L kappa(s))`` (the path's
    expected count; all of them at ``s = 0``): it reveals ``max(0, round(L kappa(s)) - revealed)`` masked entries
    chosen uniformly, each from its predicted clean class. That is at most one per step whenever
    ``L (kappa(s) - kappa(t)) <= 1``, i.e. on the linear schedule with at least ``L`` steps. Entries already
    revealed (including known ones held by inpainting) stay.

    Args:
        x_t: states, long ``(B, ...)`` or ragged ``(N,)`` with ``index`` ``(N,)``; ``L`` is the number of entries of
            each sample.
        logits: the prediction of :meth:`CategoricalProcess.predict`, ``(*x_t.shape, K)``.
        t, s: current and next times ``(B,)``, ``s < t``.
        generator: source of the draws (CPU): the order keys first, then the classes.
    Returns:
        ``x_s``, long, shaped like ``x_t``.
    Raises:
        ValueError: with the uniform source (every entry is always "revealed" there).
    """
    if process.source != "mask":
        raise ValueError("the sequential-reveal step needs the mask source (source 'mask')")
    batch = t.shape[0]
    flat = x_t.reshape(-1)
    rows = torch.arange(batch, device=x_t.device).repeat_interleave(flat.numel() // max(batch, 1)) if index is None else index
    masked = flat == process.num_classes
    sizes = torch.bincount(rows, minlength=batch)
    revealed = sizes - torch.bincount(rows, weights=masked.to(torch.float64), minlength=batch).round().long()
    wanted = torch.floor(sizes.to(torch.float64) * process.kappa(s.to(torch.float64)) + 0.5).long()
    to_reveal = (wanted - revealed).clamp_min(0)
    keys = torch.rand(flat.shape, generator=generator, dtype=torch.float64).to(flat.device)
    keys = torch.where(masked, keys, torch.full_like(keys, 1.5))  # revealed entries rank after every masked one
    chosen = masked & (_rank_within_sample(keys, rows) < to_reveal[rows])
    classes = _sample(torch.softmax(logits.reshape(-1, process.num_classes), dim=-1), generator)
    return torch.where(chosen, classes, flat).reshape(x_t.shape)
