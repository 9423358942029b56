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

from sciffusion.processes import GaussianProcess, Prediction, broadcast
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
        denoise: ``(state, t (B,)) -> {field: Prediction}``.
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
    times = [grid[i].item() for i in range(len(grid))]

    def at(v: float) -> Tensor:
        return torch.full((batch,), v, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)

    def constrain(state: State, t: Tensor) -> State:
        for c in constraints:
            state = c(state, t, processes, generator)
        return state

    x = constrain(dict(x), at(times[0]))
    prev: tuple[dict[str, Tensor], Tensor] | None = None
    for i in tqdm(range(len(times) - 1), disable=not progress, desc=f"sampling ({solver})", leave=False):
        t, s = at(times[i]), at(times[i + 1])
        pred = denoise(x, t.to(_dtype(x)))
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
                new[name] = S.euler_step(proc, xi, p, t, s, idx)
            elif solver in ("euler_maruyama", "pc"):
                if times[i + 1] == 0.0:  # the SDE ends on the denoised mean (Song et al.'s last step)
                    new[name] = p.x0
                elif float(proc.alpha_sigma(t[:1])[0]) == 0.0:  # SDE drift is singular where alpha = 0 (flow at t=1)
                    new[name] = S.ddpm_step(proc, xi, p, t, s, _noise(xi, generator), idx)
                else:
                    new[name] = S.euler_maruyama_step(proc, xi, p, t, s, _noise(xi, generator), idx)
        if solver == "heun" and times[i + 1] > 0:
            pred_s = denoise(new, s.to(_dtype(x)))
            new = {n: S.heun_correct(proc, x[n], pred[n], pred_s[n], t, s, index.get(n)) for n, proc in processes.items()}
        if solver == "pc" and times[i + 1] > 0:
            new = constrain(new, s)
            pred_s = denoise(new, s.to(_dtype(x)))
            for name, proc in processes.items():
                sigma = broadcast(proc.alpha_sigma(s)[1], new[name], index.get(name))
                new[name] = S.langevin_correct(new[name], pred_s[name], sigma, _noise(new[name], generator), pc_snr)
        prev = ({n: p.x0 for n, p in pred.items()}, t)
        x = constrain(new, s)
    return x


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
