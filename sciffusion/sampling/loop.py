"""The sampling loop: integrates a multi-field state over a time grid, each field with its own solver.

A state is ``dict[str, Tensor]`` of named fields, each with its own process (:mod:`sciffusion.processes`).
All fields share the time grid; each process maps ``t`` to its own path values, computed once for the whole
grid before the first step (:meth:`Process.path_table`) and handed explicitly to the denoiser and to every
step, so nothing is remembered between calls. ``denoise(x, t, path)`` returns each field's prediction
(guidance is already folded into it). After every step, and on the initial state, each field is projected
onto its space (zero centre of mass, wrapping, re-orthonormalising) and then the constraints are applied.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sciffusion.processes.base import Process
from sciffusion.sampling.solvers import StepInput, get_solver, resolve_solvers

State = dict[str, Tensor]
Index = dict[str, Tensor]
DenoiseFn = Callable[[State, Tensor, "dict[str, Any] | None"], dict[str, Any]]


class Constraint(Protocol):
    """Applied to the state after every step (and to the initial state) at the state's time ``t`` (B,).

    ``index`` holds the sample index of every ragged field's rows.
    """

    def __call__(self, x: State, t: Tensor, processes: dict[str, Process], generator: torch.Generator | None,
                 index: Index) -> State: ...


def _noise_source(x: Tensor, generator: torch.Generator | None) -> Callable[[], Tensor]:
    return lambda: torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)


def solve(processes: dict[str, Process], denoise: DenoiseFn, x: State, grid: Tensor, solver: str | dict[str, str] = "dpmpp_2m",
          *, eta: float = 0.0, constraints: Iterable[Constraint] = (), generator: torch.Generator | None = None,
          index: Index | None = None, pc_snr: float = 0.16, progress: bool = False) -> State:
    """Integrate from ``grid[0]`` (usually 1) to ``grid[-1]`` (0).

    Args:
        processes: field name -> process.
        denoise: ``(state, t (B,), path) -> {field: prediction}``; ``t`` is the grid time shared by the batch, an
            expanded (read-only) view in the state's dtype (float32 for half-precision states); ``path`` holds every
            field's path values at ``t`` (may be ignored).
        x: initial state at ``grid[0]`` (e.g. prior noise), per field ``(B, ...)`` or ragged ``(N, ...)``.
        grid: decreasing times ``(N + 1,)``.
        solver: a registered solver name for every field, or ``{field: name}`` (see :func:`resolve_solvers`).
        eta: DDIM stochasticity.
        constraints: hard constraints applied after every step (inpainting, projection).
        index: for ragged fields, the sample index of every row ``(N,)``.
    Returns:
        The final state at ``grid[-1]``.
    """
    chosen = resolve_solvers(processes, solver)
    index = index or {}
    constraints = list(constraints)
    batch = batch_size(x, index)
    first = next(iter(x.values()))
    device = first.device
    dtype = first.dtype if first.dtype in (torch.float32, torch.float64) else torch.float32
    times = grid.tolist()  # one host copy of the grid (no per-step .item() syncs)
    grid_t = grid.to(device=device, dtype=dtype)
    tables = {name: proc.path_table(grid_t, x[name], index.get(name), batch) for name, proc in processes.items()}
    corrected = [name for name, s in chosen.items() if s.corrects]

    def finish(state: State, t: Tensor) -> State:
        state = {name: proc.project(state[name], index.get(name)) for name, proc in processes.items()}
        for c in constraints:
            state = c(state, t, processes, generator, index)
        return state

    t = grid_t[0:1].expand(batch)
    x = finish(dict(x), t)
    memory: dict[str, Any] = dict.fromkeys(processes)
    desc = f"sampling ({solver if isinstance(solver, str) else ', '.join(f'{k}: {v}' for k, v in solver.items())})"
    for i in tqdm(range(len(times) - 1), disable=not progress, desc=desc, leave=False):
        s = grid_t[i + 1:i + 2].expand(batch)
        last = times[i + 1] == 0.0
        path_t = {name: table[i] for name, table in tables.items()}
        path_s = {name: table[i + 1] for name, table in tables.items()}
        pred = denoise(x, t, path_t)
        inputs: dict[str, StepInput] = {}
        new: State = {}
        for name, proc in processes.items():
            inputs[name] = StepInput(x[name], pred[name], t, s, path_t[name], path_s[name], index.get(name),
                                     _noise_source(x[name], generator), generator, memory[name], last, eta, pc_snr)
            new[name], memory[name] = chosen[name].step(proc, inputs[name])
        if corrected and not last:
            new = finish(new, s)
            pred_s = denoise(new, s, path_s)
            for name in corrected:
                new[name] = chosen[name].correct(processes[name], inputs[name], new[name], pred_s[name])
        x = finish(new, s)
        t = s
    return x


def solve_field(process: Process, network: Callable[[Tensor, Tensor, Tensor | None], Tensor], x: Tensor, grid: Tensor,
                solver: str | None = None, generator: torch.Generator | None = None, index: Tensor | None = None,
                **options: Any) -> Tensor:
    """:func:`solve` for one field driven by a raw network ``(net_input(x_t), time_input(t), index) -> output``
    (what the process's ``predict`` takes; e.g. an exact model of a known target). ``solver`` defaults to the
    process's own; ``options`` go to :func:`solve`."""

    def denoise(state: State, t: Tensor, path: dict[str, Any] | None = None) -> dict[str, Any]:
        x_t = state["x"]
        out = network(process.net_input(x_t, t, index), process.time_input(t), index)
        return {"x": process.predict(out, x_t, t, index, (path or {}).get("x"))}

    return solve({"x": process}, denoise, {"x": x}, grid, {"x": solver or process.default_solver}, generator=generator,
                 index=None if index is None else {"x": index}, **options)["x"]


def batch_size(x: State, index: Index) -> int:
    """Number of samples: a dense field's first dimension, else the largest ragged index + 1."""
    for name, v in x.items():
        if name not in index:
            return v.shape[0]
    return int(max(int(i.max()) for i in index.values())) + 1


def nfe(solver: str | dict[str, str], steps: int) -> int:
    """Network evaluations a solver spends on ``steps`` steps (CFG doubles the batch, not the NFE). For one solver
    per field (``{field: name}``) it is the largest of theirs: :func:`solve` evaluates the whole state once per step,
    and once more at the proposal when any field's solver corrects."""
    names = [solver] if isinstance(solver, str) else list(solver.values())
    return max(get_solver(name).nfe(steps) for name in names)


def steps_for_nfe(solver: str, budget: int) -> int:
    """Largest number of steps whose NFE fits in ``budget``."""
    return get_solver(solver).steps_for_nfe(budget)
