"""The sampling loop: integrates any registered solver over a time grid for a multi-field state.

A state is ``dict[str, Tensor]`` of named fields, each with its own process. All fields share the time
grid; each process maps ``t`` to its own coefficients. ``denoise(x, t)`` returns a
:class:`~sciffusion.processes.Prediction` per field (guidance is already folded into it).
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sciffusion.processes import Coefficients, GaussianProcess, Prediction, broadcast
from sciffusion.registry import SOLVERS
from sciffusion.sampling import steps as S

State = dict[str, Tensor]
DenoiseFn = Callable[[State, Tensor], dict[str, Prediction]]


class Constraint(Protocol):
    """Applied to the state after every step (and to the initial state) at the state's time ``t`` (B,)."""

    def __call__(self, x: State, t: Tensor, processes: dict[str, GaussianProcess], generator: torch.Generator | None) -> State: ...


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)


def _register_solvers() -> None:
    for name, nfe, text in [
        ("ddpm", "1/step", "DDPM ancestral sampling (posterior variance)"),
        ("ddim", "1/step", "DDIM, deterministic for eta=0, stochastic for eta>0"),
        ("dpmpp_2m", "1/step", "DPM-Solver++(2M) multistep, data prediction"),
        ("euler", "1/step", "Euler on the probability-flow ODE"),
        ("heun", "2/step (1 on the last)", "Heun (2nd order) on the probability-flow ODE"),
        ("euler_maruyama", "1/step", "Euler-Maruyama on the reverse SDE"),
        ("pc", "2/step", "predictor-corrector: reverse-SDE predictor + Langevin corrector"),
    ]:
        SOLVERS.register(name, help=f"{text}; NFE {nfe}")(lambda name=name: name)


_register_solvers()


def solve(processes: dict[str, GaussianProcess], denoise: DenoiseFn, x: State, grid: Tensor, solver: str = "dpmpp_2m", *,
          eta: float = 0.0, constraints: Iterable[Constraint] = (), generator: torch.Generator | None = None,
          index: dict[str, Tensor] | None = None, pc_snr: float = 0.16, progress: bool = False) -> State:
    """Integrate from ``grid[0]`` (usually 1) to ``grid[-1]`` (0).

    Args:
        processes: field name -> process.
        denoise: ``(state, t (B,)) -> {field: Prediction}``; ``t`` is the grid time shared by the batch, an
            expanded (read-only) view in the state's dtype (float32 for half-precision states).
        x: initial state at ``grid[0]`` (e.g. prior noise), per field ``(B, ...)`` or ragged ``(N, ...)``.
        grid: decreasing times ``(N + 1,)``.
        solver: a name from :data:`sciffusion.registry.SOLVERS`.
        eta: DDIM stochasticity.
        constraints: hard constraints applied after every step (inpainting, projection).
        index: for ragged fields, the sample index of every row ``(N,)``.
    Returns:
        The final state at ``grid[-1]``.
    """
    SOLVERS.get(solver)  # clear error for unknown names
    index = index or {}
    constraints = list(constraints)
    batch = _batch_size(x, index)
    device = next(iter(x.values())).device
    dtype = _dtype(x) if _dtype(x) in (torch.float32, torch.float64) else torch.float32
    times = grid.tolist()  # one host copy of the grid (no per-step .item() syncs)
    grid_t = grid.to(device=device, dtype=dtype)
    # The path on the whole grid at once, per field: alpha, sigma, d alpha / dt, d sigma / dt, each (N + 1,).
    path = {name: (*proc.alpha_sigma(grid_t), *proc.derivatives(grid_t)) for name, proc in processes.items()}
    # where the SDE drift is singular (alpha = 0: flow at t = 1), EM / PC take an ancestral step instead
    alpha_zero = {name: (values[0] == 0).tolist() for name, values in path.items()}
    # dense fields: per grid time, coefficients already shaped (1, 1, ...) to broadcast against the field
    dense = {name: list(zip(*(_per_time(v, x[name]) for v in values))) for name, values in path.items() if name not in index}
    # Euler / Heun: ODE coordinates (tau, scale) per grid time; scale None where it is 1 throughout (flow)
    ode: dict[str, list[tuple[Tensor, Tensor | None]]] = {}
    if solver in ("euler", "heun"):
        for name, proc in processes.items():
            tau, scale = proc.ode_coords(grid_t)
            ones = bool((scale == 1).all())
            if name in index:
                ode[name] = [(broadcast(a.expand(batch), x[name], index[name]), None if ones else broadcast(b.expand(batch), x[name], index[name]))
                             for a, b in zip(tau.unbind(0), scale.unbind(0))]
            else:
                ode[name] = [(a, None if ones else b) for a, b in zip(_per_time(tau, x[name]), _per_time(scale, x[name]))]

    def at(i: int) -> Tensor:
        """The batch's time at grid point ``i`` (B,), one tensor handed to the network and to the steps alike,
        with every process's coefficients for it already remembered (so none is recomputed per step)."""
        t = grid_t[i:i + 1].expand(batch)
        for name, proc in processes.items():
            idx = index.get(name)
            if idx is None:
                c = Coefficients(*dense[name][i])
            else:  # ragged rows pick their sample's value
                c = Coefficients(*(broadcast(v[i:i + 1].expand(batch), x[name], idx) for v in path[name]))
            proc.remember_coefficients(t, x[name], idx, c)
        return t

    def constrain(state: State, t: Tensor) -> State:
        for c in constraints:
            state = c(state, t, processes, generator)
        return state

    t = at(0)
    x = constrain(dict(x), t)
    prev: tuple[dict[str, Tensor], Tensor] | None = None
    for i in tqdm(range(len(times) - 1), disable=not progress, desc=f"sampling ({solver})", leave=False):
        s = at(i + 1)
        last = times[i + 1] == 0.0
        pred = denoise(x, t)
        new: State = {}
        for name, proc in processes.items():
            xi, p, idx = x[name], pred[name], index.get(name)
            if solver == "ddim":
                new[name] = S.ddim_step(proc, xi, p, t, s, eta, _noise(xi, generator) if eta > 0 else None, idx)
            elif solver == "ddpm":
                new[name] = S.ddpm_step(proc, xi, p, t, s, _noise(xi, generator), idx)
            elif solver == "dpmpp_2m":
                new[name] = S.dpmpp_2m_step(proc, xi, p, t, s, prev[0][name] if prev else None, prev[1] if prev else None, idx)
            elif solver in ("euler", "heun"):
                new[name] = S.euler_step(proc, xi, p, t, s, idx, coords=(*ode[name][i], *ode[name][i + 1]))
            elif solver in ("euler_maruyama", "pc"):
                if last:  # the SDE ends on the denoised mean (Song et al.'s last step)
                    new[name] = p.x0
                elif alpha_zero[name][i]:
                    new[name] = S.ddpm_step(proc, xi, p, t, s, _noise(xi, generator), idx)
                else:
                    new[name] = S.euler_maruyama_step(proc, xi, p, t, s, _noise(xi, generator), idx)
        if solver == "heun" and not last:
            pred_s = denoise(new, s)
            new = {n: S.heun_correct(proc, x[n], pred[n], pred_s[n], t, s, index.get(n), coords=(*ode[n][i], *ode[n][i + 1]))
                   for n, proc in processes.items()}
        if solver == "pc" and not last:
            new = constrain(new, s)
            pred_s = denoise(new, s)
            for name, proc in processes.items():
                sigma = proc.coefficients(s, new[name], index.get(name)).sigma
                new[name] = S.langevin_correct(new[name], pred_s[name], sigma, _noise(new[name], generator), pc_snr)
        if solver == "dpmpp_2m":
            prev = ({n: p.x0 for n, p in pred.items()}, t)
        x = constrain(new, s)
        t = s
    return x


def _per_time(values: Tensor, like: Tensor) -> tuple[Tensor, ...]:
    """``(N + 1,)`` values -> one tensor per grid time, shaped ``(1, 1, ...)`` to broadcast against ``like``."""
    return values.to(like.dtype).reshape(-1, *([1] * like.dim())).unbind(0)


def _batch_size(x: State, index: dict[str, Tensor]) -> int:
    for name, v in x.items():
        if name not in index:
            return v.shape[0]
    return int(max(int(i.max()) for i in index.values())) + 1


def _dtype(x: State) -> torch.dtype:
    return next(iter(x.values())).dtype


def nfe(solver: str, steps: int) -> int:
    """Network evaluations a solver spends on ``steps`` steps (CFG doubles the batch, not the NFE)."""
    if solver == "heun":
        return 2 * steps - 1
    if solver == "pc":
        return 2 * steps - 1
    return steps


def steps_for_nfe(solver: str, budget: int) -> int:
    """Largest number of steps whose NFE fits in ``budget``."""
    if solver in ("heun", "pc"):
        return max(1, (budget + 1) // 2)
    return max(1, budget)
