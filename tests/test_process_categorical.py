"""Categorical process: forward marginals against the closed form, the D3PM posterior against brute-force Bayes, the
DFM step's kernel, the exact finite-target denoiser against Monte Carlo, the TV floor, bad inputs naming the field,
CFG in logit space, ragged equals dense, the solvers reaching the target with the exact denoiser, and the
sequential-reveal step's exactness (one reveal per evaluation) where the per-entry steps are not."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from sciffusion.config import ConfigError, component_from_dict
from sciffusion.processes.categorical import (
    CategoricalConfig,
    CategoricalProcess,
    d3pm_posterior,
    d3pm_step,
    dfm_euler_step,
    sequential_reveal_step,
)
from sciffusion.registry import PROCESSES
from sciffusion.rng import StepRandom
from sciffusion.sampling import compatible_solvers, resolve_solvers, solve_field
from sciffusion.sampling.exact_categorical import FiniteSequenceTarget

SOURCES = ("mask", "uniform")
STEPS = {"dfm_euler": dfm_euler_step, "d3pm": d3pm_step}  # the pure step functions
SOLVERS = tuple(STEPS)  # the same, registered in the core


def _small_target(length: int = 3, num_classes: int = 3, count: int = 8, seed: int = 0) -> FiniteSequenceTarget:
    g = torch.Generator().manual_seed(seed)
    rows = torch.unique(torch.randint(num_classes, (6 * count, length), generator=g), dim=0)
    rows = rows[torch.randperm(rows.shape[0], generator=g)[:count]]
    return FiniteSequenceTarget(rows, torch.rand(count, generator=g, dtype=torch.float64) + 0.2)


def _solve(process: CategoricalProcess, target: FiniteSequenceTarget, solver: str, x: Tensor, steps: int,
           generator: torch.Generator) -> Tensor:
    """The core sampling loop over the uniform grid with the exact model."""
    return solve_field(process, lambda x_t, t, index: target.logits(process, x_t, t), x, process.time_grid(steps),
                       solver, generator=generator)


def _assert_frequencies(counts: Tensor, probs: Tensor, total: Tensor | int, sigmas: float = 5.0) -> None:
    """Empirical frequencies ``counts / total`` within ``sigmas`` binomial standard errors of ``probs``."""
    total = torch.as_tensor(total, dtype=torch.float64)
    freq = counts.to(torch.float64) / total
    err = (probs * (1 - probs) / total).sqrt().clamp_min(1e-4)
    assert bool(((freq - probs).abs() <= sigmas * err).all()), (freq, probs)


# ------------------------------------------------------------------------------------------------
# The path
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("schedule", ["linear", "cubic"])
def test_corrupt_marginals_equal_closed_form(source: str, schedule: str) -> None:
    k, per_t = 4, 20_000
    process = CategoricalProcess(k, source, schedule)
    times = torch.tensor([0.05, 0.3, 0.6, 0.95])
    t = times.repeat_interleave(per_t)
    x0 = torch.arange(k).repeat(t.shape[0], 1)  # (B, K): position l holds class l
    x_t, aux = process.corrupt(x0, t, StepRandom(seed=3, step=11))
    assert aux is None and x_t.dtype == torch.long and x_t.shape == x0.shape
    for i, time in enumerate(times.tolist()):
        rows = x_t[i * per_t:(i + 1) * per_t]
        kappa = (1 - time) ** {"linear": 1, "cubic": 3}[schedule]
        for clean in range(k):
            counts = torch.bincount(rows[:, clean], minlength=process.vocab_size)
            expected = process.marginal_probs(torch.tensor([clean]), torch.tensor([time]))[0]
            by_hand = torch.full((process.vocab_size,), (1 - kappa) / k if source == "uniform" else 0.0,
                                 dtype=torch.float64)
            if source == "mask":
                by_hand[k] = 1 - kappa
            by_hand[clean] += kappa
            assert torch.allclose(expected, by_hand, atol=1e-6)
            _assert_frequencies(counts, expected, per_t)


@pytest.mark.parametrize("source", SOURCES)
def test_noised_known_and_prior(source: str) -> None:
    k, n = 3, 60_000
    process = CategoricalProcess(k, source)
    x0 = torch.full((n,), 1)
    x_t = process.noised_known(x0, torch.tensor([0.4]).expand(n), torch.Generator().manual_seed(0))
    _assert_frequencies(torch.bincount(x_t, minlength=process.vocab_size),
                        process.marginal_probs(torch.tensor([1]), torch.tensor([0.4]))[0], n)
    prior = process.prior((n // 4, 4), torch.Generator().manual_seed(1))
    assert prior.dtype == torch.long and prior.shape == (n // 4, 4)
    _assert_frequencies(torch.bincount(prior.flatten(), minlength=process.vocab_size), process.source_probs(), n)
    assert torch.equal(prior, process.prior((n // 4, 4), torch.Generator().manual_seed(1)))


def test_kappa_and_rate() -> None:
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    for schedule, power in (("linear", 1), ("quadratic", 2), ("cubic", 3)):
        process = CategoricalProcess(5, schedule=schedule)
        assert torch.allclose(process.kappa(t), (1 - t) ** power)
        assert float(process.kappa(torch.tensor(0.0))) == 1.0 and float(process.kappa(torch.tensor(1.0))) == 0.0
        h = 1e-6
        numeric = -(process.kappa(t + h) - process.kappa(t - h)) / (2 * h) / (1 - process.kappa(t))
        assert torch.allclose(process.kappa_rate(t), numeric, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# D3PM posterior against brute-force Bayes; the DFM kernel
# ------------------------------------------------------------------------------------------------
def _brute_force_posterior(process: CategoricalProcess, x_t: int, clean: list[float], t: float,
                           s: float) -> list[float] | None:
    """``sum_x0 q(x_s | x_t, x0) p(x0)`` from the one-step kernels written out state by state (x0 restricted, and
    ``p`` renormalised, to the clean classes that can produce ``x_t``); ``None`` if none can (unreachable state)."""
    states = range(process.vocab_size)
    src = process.source_probs().tolist()
    k_t, k_s = (1 - t) ** process.exponent, (1 - s) ** process.exponent
    r = k_t / k_s

    def q_s(j: int, x0: int) -> float:  # q(x_s = j | x0)
        return k_s * (j == x0) + (1 - k_s) * src[j]

    def q_ts(i: int, j: int) -> float:  # q(x_t = i | x_s = j)
        return r * (i == j) + (1 - r) * src[i]

    joint = {x0: [q_s(j, x0) * q_ts(x_t, j) for j in states] for x0 in range(process.num_classes)}
    evidence = {x0: sum(v) for x0, v in joint.items()}
    possible = [x0 for x0 in joint if evidence[x0] > 0]
    if not possible:
        return None
    mass = sum(clean[x0] for x0 in possible)
    return [sum(clean[x0] / mass * joint[x0][j] / evidence[x0] for x0 in possible) for j in states]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("schedule", ["linear", "cubic"])
def test_d3pm_posterior_equals_brute_force_bayes(source: str, schedule: str) -> None:
    process = CategoricalProcess(3, source, schedule)
    g = torch.Generator().manual_seed(0)
    checked = 0
    for t, s in [(1.0, 0.7), (0.7, 0.4), (0.4, 0.0), (1.0, 0.0), (0.25, 0.2)]:
        for state in range(process.vocab_size):
            logits = torch.randn(1, 3, generator=g, dtype=torch.float64)
            expected = _brute_force_posterior(process, state, torch.softmax(logits[0], -1).tolist(), t, s)
            if expected is None:  # a revealed class at t = 1 (mask source)
                continue
            ours = d3pm_posterior(process, torch.tensor([state]), logits, torch.tensor([t]), torch.tensor([s]))[0]
            checked += 1
            assert torch.allclose(ours, torch.tensor(expected, dtype=torch.float64), atol=1e-12), (t, s, state)
    assert checked == (14 if source == "mask" else 15)


@pytest.mark.parametrize("source", SOURCES)
def test_forward_kernel_composes_to_marginal(source: str) -> None:
    """The one-step kernel used above composes to the closed-form marginal: ``Q_{0->s} Q_{s->t} = Q_{0->t}``."""
    process = CategoricalProcess(4, source, "quadratic")
    s, t = 0.3, 0.8
    src = process.source_probs()
    r = float(process.kappa(torch.tensor(t, dtype=torch.float64)) / process.kappa(torch.tensor(s, dtype=torch.float64)))
    q_st = r * torch.eye(process.vocab_size, dtype=torch.float64) + (1 - r) * src
    x0 = torch.arange(4)
    composed = process.marginal_probs(x0, torch.full((4,), s)) @ q_st
    assert torch.allclose(composed, process.marginal_probs(x0, torch.full((4,), t)), atol=1e-12)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_step_kernel_by_monte_carlo(source: str, solver: str) -> None:
    """Draws of one step match the step's kernel (DFM: ``(1 - lambda) [x = x_t] + lambda p(x0 | x_t)``; D3PM: the
    posterior above), and at ``s = 0`` they are draws of the predicted clean class with no mask left."""
    process = CategoricalProcess(3, source)
    n = 40_000
    logits = torch.tensor([[0.3, -1.0, 1.2]], dtype=torch.float64).expand(n, 3)
    clean = F.pad(torch.softmax(logits[0], -1), (0, process.vocab_size - 3))
    state = process.vocab_size - 1  # the mask token, or class 2
    x_t = torch.full((n,), state)
    for t, s in [(0.8, 0.5), (0.3, 0.0)]:
        tt, ss = torch.full((n,), t), torch.full((n,), s)
        x_s = STEPS[solver](process, x_t, logits, tt, ss, torch.Generator().manual_seed(5))
        if solver == "dfm_euler":
            k_t, k_s = (1 - t), (1 - s)  # linear schedule
            lam = (k_s - k_t) / (1 - k_t)
            kernel = (1 - lam) * F.one_hot(torch.tensor(state), process.vocab_size).double() + lam * clean
        else:
            kernel = d3pm_posterior(process, x_t[:1], logits[:1], tt[:1], ss[:1])[0]
        _assert_frequencies(torch.bincount(x_s, minlength=process.vocab_size), kernel, n)
        if s == 0.0:
            assert bool((x_s < 3).all())
            _assert_frequencies(torch.bincount(x_s, minlength=process.vocab_size), clean, n)


def test_mask_source_solvers_coincide_and_keep_revealed_entries() -> None:
    process = CategoricalProcess(4, "mask")
    x_t = torch.tensor([[4, 1, 4, 3]]).repeat(500, 1)
    out = process.predict(torch.randn(500, 4, 4, generator=torch.Generator().manual_seed(0)), x_t, torch.full((500,), 0.5))
    t, s = torch.full((500,), 0.5), torch.full((500,), 0.2)
    dfm = dfm_euler_step(process, x_t, out, t, s, torch.Generator().manual_seed(1))
    d3pm = d3pm_step(process, x_t, out, t, s, torch.Generator().manual_seed(1))
    assert torch.equal(dfm, d3pm)
    assert bool((dfm[:, 1] == 1).all() and (dfm[:, 3] == 3).all())
    assert torch.equal(process.x0_estimate(out)[:, 1], F.one_hot(torch.tensor(1), 4).float().expand(500, 4))


@pytest.mark.parametrize("source", SOURCES)
def test_ragged_equals_dense(source: str) -> None:
    process = CategoricalProcess(5, source, loss_weighting="elbo" if source == "mask" else "uniform")
    b, length = 6, 7
    index = torch.arange(b).repeat_interleave(length)
    x0 = torch.randint(5, (b, length), generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.1, 0.9, b)
    dense, _ = process.corrupt(x0, t, StepRandom(1, 2))

    class SameDraws(StepRandom):  # ragged rows drawing what the dense field draws (the core uses per-sample streams)
        def rand_rows(self, idx, *row_shape, dtype=torch.float32, device="cpu"):
            return self.rand(b, length, *row_shape, dtype=dtype, device=device).flatten(0, 1)

    ragged, _ = process.corrupt(x0.flatten(), t, SameDraws(1, 2), index=index)
    assert torch.equal(dense.flatten(), ragged)
    out = torch.randn(b, length, 5, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(process.loss(out, x0, dense, None, t).flatten(),
                          process.loss(out.flatten(0, 1), x0.flatten(), ragged, None, t, index))
    logits = process.predict(out, dense, t)
    s = t * 0.5
    for step in STEPS.values():
        a = step(process, dense, logits, t, s, torch.Generator().manual_seed(4))
        r = step(process, ragged, logits.flatten(0, 1), t, s, torch.Generator().manual_seed(4), index=index)
        assert torch.equal(a.flatten(), r)


# ------------------------------------------------------------------------------------------------
# Loss, prediction, CFG
# ------------------------------------------------------------------------------------------------
def test_loss_counts_masked_entries_or_all() -> None:
    out = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0))
    x0 = torch.randint(3, (4, 5), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    ce = F.cross_entropy(out.flatten(0, 1), x0.flatten(), reduction="none").reshape(4, 5)
    mask = CategoricalProcess(3, "mask")
    x_t, _ = mask.corrupt(x0, t, StepRandom(0, 0))
    narrow, _ = mask.corrupt(x0.int(), t, StepRandom(0, 0))  # any integer dtype in, long out
    assert narrow.dtype == torch.long and torch.equal(narrow, x_t)
    assert torch.allclose(mask.loss(out, x0.int(), x_t, None, t), mask.loss(out, x0, x_t, None, t))
    assert torch.allclose(mask.loss(out, x0, x_t, None, t), ce * (x_t == 3))
    elbo = CategoricalProcess(3, "mask", loss_weighting="elbo")
    assert torch.allclose(elbo.loss(out, x0, x_t, None, t), ce * (x_t == 3) / t[:, None])  # linear: 1 / t
    uniform = CategoricalProcess(3, "uniform")
    x_t, _ = uniform.corrupt(x0, t, StepRandom(0, 0))
    assert torch.allclose(uniform.loss(out, x0, x_t, None, t), ce)


def test_cfg_in_logit_space() -> None:
    process = CategoricalProcess(4)
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(8, 3, 4, generator=g), torch.randn(8, 3, 4, generator=g)
    assert torch.equal(process.combine_cfg(cond, uncond, 1.0), cond)
    assert torch.equal(process.combine_cfg(cond, uncond, 0.0), uncond)
    guided = torch.softmax(process.combine_cfg(cond, uncond, 2.5), -1)
    p_c, p_u = torch.softmax(cond, -1), torch.softmax(uncond, -1)
    expected = p_u ** -1.5 * p_c ** 2.5
    assert torch.allclose(guided, expected / expected.sum(-1, keepdim=True), atol=1e-6)
    # revealed entries (mask source) keep their class under guidance
    x_t = torch.tensor([[1, 4, 2]]).repeat(8, 1)
    t = torch.full((8,), 0.5)
    mixed = process.combine_cfg(process.predict(cond, x_t, t), process.predict(uncond, x_t, t), 3.0)
    assert torch.equal(process.x0_estimate(mixed)[:, 0], F.one_hot(torch.tensor(1), 4).float().expand(8, 4))


# ------------------------------------------------------------------------------------------------
# Bad inputs, registration, config
# ------------------------------------------------------------------------------------------------
def test_validate_names_the_field() -> None:
    process = CategoricalProcess(4, "mask")
    process.validate(torch.tensor([[0, 3], [2, 1]]), "atom_types")
    cases = [
        (torch.zeros(2, 3), "dtype"),
        (torch.zeros(2, 3, dtype=torch.bool), "dtype"),
        (torch.tensor([0, 5]), r"\[0, 4\)"),
        (torch.tensor([-1, 2]), r"\[0, 4\)"),
        (torch.tensor([0, 4]), "mask token"),
        (torch.tensor(2), "scalar"),
    ]
    for bad, words in cases:
        with pytest.raises(ValueError, match=rf"field 'atom_types'.*{words}"):
            process.validate(bad, "atom_types")
    with pytest.raises(ValueError, match="logits of shape"):
        process.predict(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2))


def test_registered_with_validated_config() -> None:
    assert "categorical" in PROCESSES
    built = PROCESSES.build("categorical", num_classes=7, source="uniform", schedule="cubic")
    assert isinstance(built, CategoricalProcess) and built.vocab_size == 7 and built.exponent == 3.0
    assert CategoricalProcess(7).vocab_size == 8 and CategoricalProcess(7).mask_index == 7
    component = component_from_dict(PROCESSES, {"name": "categorical", "num_classes": 5}, "process")
    assert isinstance(component.params, CategoricalConfig) and component.params.source == "mask"
    for raw, words in [({"name": "categorical"}, "missing key 'process.num_classes'"),
                       ({"name": "categorical", "num_classes": 1}, "'process.num_classes' must be an integer >= 2"),
                       ({"name": "categorical", "num_classes": 4, "source": "gauss"}, "process.source"),
                       ({"name": "categorical", "num_classes": 4, "source": "uniform", "loss_weighting": "elbo"},
                        "'process.loss_weighting'")]:
        with pytest.raises(ConfigError, match=words):
            component_from_dict(PROCESSES, raw, "process")
    with pytest.raises(ValueError, match="'schedule'"):
        CategoricalProcess(4, schedule="cosine")


# ------------------------------------------------------------------------------------------------
# The exact finite-target denoiser, the TV floor, and the solvers on it
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", SOURCES)
def test_exact_denoiser_matches_monte_carlo(source: str) -> None:
    """Draw j ~ pi, corrupt y_j to time t, and histogram (j, y_j) per observed x_t: the frequencies match the exact
    posterior over targets and the exact clean-class probabilities."""
    process = CategoricalProcess(3, source, "quadratic")
    target = _small_target(length=3, num_classes=3, count=6, seed=1)
    n, t = 300_000, 0.45
    g = torch.Generator().manual_seed(2)
    j = torch.multinomial(target.probs, n, replacement=True, generator=g)
    x_t = process.noised_known(target.sequences[j], torch.full((n,), t), g)
    states, group, counts = torch.unique(x_t, dim=0, return_inverse=True, return_counts=True)
    checked = 0
    for which in torch.argsort(counts, descending=True)[:12].tolist():
        rows = group == which
        total = int(counts[which])
        posterior = target.posterior(process, states[which:which + 1], torch.tensor([t]))[0]
        _assert_frequencies(torch.bincount(j[rows], minlength=6), posterior, total)
        clean = target.clean_probs(process, states[which:which + 1], torch.tensor([t]))[0]  # (L, K)
        for pos in range(3):
            _assert_frequencies(torch.bincount(target.sequences[j[rows], pos], minlength=3), clean[pos], total)
        checked += 1
    assert checked == 12
    assert torch.allclose(target.logits(process, states[:5], torch.full((5,), t)).exp().sum(-1),
                          torch.ones(5, 3, dtype=torch.float64))


def test_total_variation_and_floor() -> None:
    target = FiniteSequenceTarget([[0, 1], [1, 1], [2, 0]], [0.5, 0.3, 0.2])
    assert target.total_variation(torch.tensor([[0, 1]] * 5 + [[1, 1]] * 3 + [[2, 0]] * 2)) == pytest.approx(0.0)
    assert target.total_variation(torch.tensor([[0, 0]] * 4)) == pytest.approx(1.0)
    assert target.total_variation(torch.tensor([[0, 1], [0, 0]])) == pytest.approx(0.5 * (0.0 + 0.3 + 0.2 + 0.5))
    n = 40  # de Moivre's formula against the direct sum over the binomial
    direct = 0.0
    for p in target.probs.tolist():
        direct += sum(math.comb(n, c) * p ** c * (1 - p) ** (n - c) * abs(c / n - p) for c in range(n + 1))
    assert target.tv_floor(n) == pytest.approx(0.5 * direct, rel=1e-10)
    big = _small_target(length=3, num_classes=4, count=20)
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([big.total_variation(big.sample(2_000, g)) for _ in range(300)])
    assert float(draws.mean()) == pytest.approx(big.tv_floor(2_000), abs=4 * float(draws.std()) / math.sqrt(300))


@pytest.mark.parametrize("schedule", ["linear", "cubic"])
def test_masked_sampler_law_on_two_positions(schedule: str) -> None:
    """With the mask source and the exact denoiser on two positions, a step errs only when it reveals both at once
    (then they are drawn from the product of the marginals): the output law is exactly
    ``joint + c (product - joint)``, ``c = sum_i (kappa(t_i+1) - kappa(t_i))^2`` over the grid."""
    process = CategoricalProcess(3, "mask", schedule)
    target = _small_target(length=2, num_classes=3, count=5, seed=3)
    n, steps = 100_000, 8
    joint = torch.zeros(3, 3, dtype=torch.float64)
    joint[target.sequences[:, 0], target.sequences[:, 1]] = target.probs
    product = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    both_at_once = float((process.kappa(process.time_grid(steps)).diff() ** 2).sum())
    law = joint + both_at_once * (product - joint)
    x_init = process.prior((n, 2))
    for solver in SOLVERS:
        samples = _solve(process, target, solver, x_init, steps, torch.Generator().manual_seed(7))
        counts = torch.bincount(samples[:, 0] * 3 + samples[:, 1], minlength=9)
        _assert_frequencies(counts, law.flatten(), n)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_solvers_reach_target_with_exact_denoiser(source: str, solver: str) -> None:
    """50 steps from the prior with the exact denoiser: TV within 0.01 of the noise floor of 20,000 samples (and far
    below the 5-step error), no mask left."""
    process = CategoricalProcess(4, source)
    target = _small_target(length=2, num_classes=4, count=8)
    n = 20_000
    x_init = process.prior((n, 2), torch.Generator().manual_seed(0))
    errors = {}
    for steps in (5, 50):
        samples = _solve(process, target, solver, x_init, steps, torch.Generator().manual_seed(1))
        assert samples.dtype == torch.long and bool((samples < 4).all())
        errors[steps] = target.total_variation(samples)
    floor = target.tv_floor(n)
    assert errors[50] <= floor + 0.01, (errors, floor)
    assert errors[5] > 3 * errors[50]


# ------------------------------------------------------------------------------------------------
# Sequential reveal (mask source)
# ------------------------------------------------------------------------------------------------
def test_sequential_reveal_is_exact_in_as_many_steps_as_positions() -> None:
    """Three positions, three steps, exact denoiser: the output law is the joint itself (to Monte-Carlo error), where
    dfm_euler in three steps carries the both-at-once error of ``test_masked_sampler_law_on_two_positions``."""
    process = CategoricalProcess(3, "mask")
    target = _small_target(length=3, num_classes=3, count=8, seed=2)
    n = 60_000
    x_init = process.prior((n, 3))
    codes = target.sequences[:, 0] * 9 + target.sequences[:, 1] * 3 + target.sequences[:, 2]
    joint = torch.zeros(27, dtype=torch.float64).index_put((codes,), target.probs)
    errors = {}
    for solver in ("sequential_reveal", "dfm_euler"):
        samples = _solve(process, target, solver, x_init, 3, torch.Generator().manual_seed(4))
        counts = torch.bincount(samples[:, 0] * 9 + samples[:, 1] * 3 + samples[:, 2], minlength=27)
        errors[solver] = 0.5 * float((counts / n - joint).abs().sum())
        if solver == "sequential_reveal":
            _assert_frequencies(counts, joint, n)
    assert errors["dfm_euler"] > 5 * errors["sequential_reveal"], errors


def test_sequential_reveal_reveals_one_entry_per_step_on_ragged_samples() -> None:
    """Samples of 1, 4 and 7 entries over 10 linear steps: each evaluation sees at most one more revealed entry per
    sample, the count follows ``round(L kappa(s))``, revealed entries never change, and nothing is masked at the
    end; the dense layout of equal-length samples draws the same as the ragged one."""
    process = CategoricalProcess(5, "mask")
    sizes = torch.tensor([1, 4, 7])
    index = torch.arange(3).repeat_interleave(sizes)
    seen: list[Tensor] = []

    def denoise(x_t: Tensor, t: Tensor, index: Tensor | None) -> Tensor:
        seen.append(x_t.clone())
        return torch.randn(*x_t.shape, 5, generator=torch.Generator().manual_seed(len(seen)))

    grid = process.time_grid(10)
    out = solve_field(process, denoise, process.prior((12,)), grid, "sequential_reveal",
                      generator=torch.Generator().manual_seed(0), index=index)
    states = [*seen, out]
    for step, (before, after) in enumerate(zip(states, states[1:])):
        revealed = torch.bincount(index, weights=(after != 5).double(), minlength=3)
        assert torch.equal(revealed, torch.floor(sizes * process.kappa(grid[step + 1].double()) + 0.5))
        gained = revealed - torch.bincount(index, weights=(before != 5).double(), minlength=3)
        assert bool((gained <= 1).all())
        kept = before != 5
        assert torch.equal(after[kept], before[kept])
    assert bool((out < 5).all())
    x_t = torch.full((4, 6), 5)
    x_t[:, 0] = 2  # one revealed entry each
    logits = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(1))
    t, s = torch.full((4,), 0.5), torch.full((4,), 0.2)
    dense = sequential_reveal_step(process, x_t, logits, t, s, torch.Generator().manual_seed(3))
    ragged = sequential_reveal_step(process, x_t.flatten(), logits.flatten(0, 1), t, s, torch.Generator().manual_seed(3),
                                    index=torch.arange(4).repeat_interleave(6))
    assert torch.equal(dense.flatten(), ragged)
    assert torch.equal((dense != 5).sum(1), torch.full((4,), 5))  # round(6 * 0.8) = 5 revealed


def test_sequential_reveal_drives_only_the_mask_source() -> None:
    mask, uniform = CategoricalProcess(4, "mask"), CategoricalProcess(4, "uniform")
    assert "sequential_reveal" in compatible_solvers(mask)
    assert compatible_solvers(uniform) == ["d3pm", "dfm_euler"]
    assert resolve_solvers({"a": uniform}, "sequential_reveal")["a"].name == "dfm_euler"  # one name: its default
    with pytest.raises(ValueError, match="cannot drive field 'a'"):
        resolve_solvers({"a": uniform}, {"a": "sequential_reveal"})
    with pytest.raises(ValueError, match="needs the mask source"):
        sequential_reveal_step(uniform, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, 4), torch.ones(2),
                               torch.zeros(2), None)


def test_finite_target_rejects_bad_targets() -> None:
    for sequences, weights, words in [([[0, 1], [0, 1]], [1.0, 1.0], "distinct"), ([[0, 1]], [0.0], "positive"),
                                      ([[0.5, 1.0]], [1.0], "integer"), ([[0, -1]], [1.0], ">= 0")]:
        with pytest.raises(ValueError, match=words):
            FiniteSequenceTarget(torch.tensor(sequences), weights)
    target = FiniteSequenceTarget([[0, 5]], [1.0])
    with pytest.raises(ValueError, match="num_classes = 3"):
        target.posterior(CategoricalProcess(3), torch.tensor([[3, 3]]), torch.tensor([1.0]))
