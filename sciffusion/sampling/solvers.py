"""Registered solvers: which processes each drives, what one step costs, and the step itself.

A :class:`Solver` is a registered object (``sciffusion list`` shows them). It declares the process classes it
can drive (:meth:`Solver.compatible`) and whether a step evaluates the network a second time at the proposal
(``correct``: Heun, predictor-corrector), which fixes its NFE per step in one place (:meth:`Solver.nfe`).
``step`` and ``correct`` are pure: the only state carried between steps is the explicit ``memory`` a step
returns and gets back (e.g. DPM-Solver++(2M)'s previous clean-sample estimate).

Adding a solver is one :func:`register_solver` call; teaching it a new process family is one
:meth:`Solver.add` call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from sciffusion.processes import Coefficients, GaussianProcess, broadcast
from sciffusion.processes.base import Process
from sciffusion.processes.gaussian import shared_time
from sciffusion.processes.categorical import CategoricalProcess, d3pm_step, dfm_euler_step, sequential_reveal_step
from sciffusion.processes.torus import (
    TorusFlowProcess,
    WrappedNormalProcess,
    flow_euler_step,
    flow_heun_step,
    wrapped_normal_heun_step,
    wrapped_normal_langevin_step,
    wrapped_normal_ode_step,
    wrapped_normal_predictor_step,
)
from sciffusion.processes.so3 import IGSO3Process, SO3Process, igso3_euler_maruyama_step, so3_euler_step, so3_heun_step
from sciffusion.registry import SOLVERS
from sciffusion.sampling import steps as S


@dataclass(frozen=True)
class StepInput:
    """What a solver step sees for one field.

    Attributes:
        x: the field at ``t`` (``(B, ...)`` or ragged ``(N, ...)``).
        pred: the denoiser's prediction for it at ``t`` (the process's own type).
        t, s: current and next time ``(B,)``; ``s < t``.
        path_t, path_s: the process's path values at ``t`` and ``s`` (Gaussian: :class:`Coefficients` broadcast to
            ``x``; ``None`` for processes without a table).
        index: the sample of every row of a ragged field, else ``None``.
        noise: draws a standard-normal tensor shaped like ``x`` from the sampler's generator.
        generator: that generator (for categorical or other non-Gaussian draws).
        memory: what this solver's previous step returned for the field (``None`` on the first).
        last: whether ``s`` is the end of the grid.
        eta: DDIM stochasticity; ``pc_snr``: the Langevin corrector's signal-to-noise ratio.
    """

    x: Tensor
    pred: Any
    t: Tensor
    s: Tensor
    path_t: Any
    path_s: Any
    index: Tensor | None
    noise: Callable[[], Tensor]
    generator: Any
    memory: Any
    last: bool
    eta: float = 0.0
    pc_snr: float = 0.16


StepFn = Callable[[Process, StepInput], "tuple[Tensor, Any]"]
CorrectFn = Callable[[Process, StepInput, Tensor, Any], Tensor]


@dataclass(frozen=True)
class Solver:
    """A reverse-time solver: one name, one cost per step, and an implementation for each process family it
    drives (e.g. ``euler`` for Gaussian paths, the flat torus and SO(3) alike).

    ``steps[family](process, inp) -> (x_s, memory)``. A solver with ``corrects`` evaluates the network a second
    time at ``(proposal, s)`` (not on the last step) and calls ``corrections[family](process, inp, proposal,
    pred_at_proposal) -> x_s``. ``accepts[family](process)``, where given, narrows a family to the processes the
    step can drive (e.g. a masked-source-only categorical step).
    """

    name: str
    help: str
    corrects: bool = False
    steps: dict[type, StepFn] = field(default_factory=dict)
    corrections: dict[type, CorrectFn] = field(default_factory=dict)
    accepts: dict[type, Callable[[Process], bool]] = field(default_factory=dict)

    def add(self, family: type, step: StepFn, correct: CorrectFn | None = None,
            accepts: Callable[[Process], bool] | None = None) -> "Solver":
        """Teach the solver one more process family (the one call a new process needs); ``accepts`` narrows the
        family to the processes the step can drive."""
        if self.corrects != (correct is not None):
            raise ValueError(f"solver '{self.name}' {'needs' if self.corrects else 'takes no'} correction step")
        self.steps[family] = step
        if correct is not None:
            self.corrections[family] = correct
        if accepts is not None:
            self.accepts[family] = accepts
        return self

    def _family(self, process: Process) -> type | None:
        """The most specific family of ``process`` this solver implements, if it accepts the process."""
        for cls in type(process).__mro__:
            if cls in self.steps:
                return cls if self.accepts.get(cls, lambda _: True)(process) else None
        return None

    def _family_or_raise(self, process: Process) -> type:
        family = self._family(process)
        if family is None:
            raise ValueError(f"solver '{self.name}' cannot drive the {type(process).__name__} process")
        return family

    def compatible(self, process: Process) -> bool:
        return self._family(process) is not None

    def step(self, process: Process, inp: StepInput) -> tuple[Tensor, Any]:
        return self.steps[self._family_or_raise(process)](process, inp)

    def correct(self, process: Process, inp: StepInput, proposal: Tensor, pred_s: Any) -> Tensor:
        return self.corrections[self._family_or_raise(process)](process, inp, proposal, pred_s)

    def nfe(self, steps: int) -> int:
        """Network evaluations for ``steps`` steps (CFG doubles the batch, not the NFE)."""
        return 2 * steps - 1 if self.corrects else steps

    def steps_for_nfe(self, budget: int) -> int:
        """Largest number of steps whose NFE fits in ``budget`` (at least 1)."""
        return max(1, (budget + 1) // 2 if self.corrects else budget)

    def describe(self) -> str:
        cost = "2 (1 on the last step)" if self.corrects else "1"
        return f"{self.help}; NFE {cost} per step; drives {', '.join(sorted(c.__name__ for c in self.steps))}"


def register_solver(name: str, help: str, corrects: bool = False) -> Solver:
    """A new solver ``name``, available to samplers, configs and ``sciffusion list``; give it its process
    families with :meth:`Solver.add`."""
    solver = Solver(name, help, corrects)
    SOLVERS.register(name, help=help)(lambda: solver)
    return solver


def get_solver(name: str) -> Solver:
    """The registered solver ``name`` (an unknown name is a one-line ``RegistryError``)."""
    return SOLVERS.build(name)


def resolve_solvers(processes: dict[str, Process], solver: str | dict[str, str]) -> dict[str, Solver]:
    """The solver of every field.

    ``solver`` is one name for all fields (a field whose process it cannot drive gets that process's declared
    ``default_solver``) or ``{field: name}`` (a field left out gets its default; a named solver that cannot drive
    its field is an error naming both).
    """
    per_field = isinstance(solver, dict)
    if per_field:
        unknown = sorted(set(solver) - set(processes))
        if unknown:
            raise ValueError(f"solver given for unknown field(s) {', '.join(unknown)} (fields: {', '.join(processes)})")
    chosen: dict[str, Solver] = {}
    for name, process in processes.items():
        wanted = solver.get(name, process.default_solver) if per_field else solver
        candidate = get_solver(wanted)
        if not candidate.compatible(process):
            if per_field and name in solver:
                raise ValueError(f"solver '{wanted}' cannot drive field '{name}' ({type(process).__name__}); "
                                 f"solvers for it: {', '.join(compatible_solvers(process))}")
            candidate = get_solver(process.default_solver)
        chosen[name] = candidate
    return chosen


def compatible_solvers(process: Process) -> list[str]:
    """Names of the registered solvers that can drive ``process``."""
    return [n for n in SOLVERS.names() if get_solver(n).compatible(process)]


# ------------------------------------------------------------------------------------------------
# Gaussian solvers
# ------------------------------------------------------------------------------------------------
def _ddim(process: GaussianProcess, inp: StepInput) -> tuple[Tensor, Any]:
    noise = inp.noise() if inp.eta > 0 else None
    return S.ddim_step(inp.x, inp.pred, inp.path_t, inp.path_s, inp.eta, noise), None


def _ddpm(process: GaussianProcess, inp: StepInput) -> tuple[Tensor, Any]:
    return S.ddpm_step(inp.x, inp.pred, inp.path_t, inp.path_s, inp.noise()), None


def _dpmpp_2m(process: GaussianProcess, inp: StepInput) -> tuple[Tensor, Any]:
    prev_x0, c_prev = inp.memory if inp.memory is not None else (None, None)
    x_s = S.dpmpp_2m_step(inp.x, inp.pred, inp.path_t, inp.path_s, prev_x0, c_prev)
    return x_s, (inp.pred.x0, inp.path_t)


def _euler(process: GaussianProcess, inp: StepInput) -> tuple[Tensor, Any]:
    """Euler on the probability-flow ODE. In the ODE coordinates of every Gaussian path here the path is linear in
    ``tau`` (``y = (1 - tau) x0 + tau eps``, or ``x0 + sigma eps`` on VE), so the Euler step lands exactly on
    DDIM's ``alpha_s x0 + sigma_s eps``; that form costs three tensor operations (``S.euler_step`` computes
    the same through the coordinates, and a test checks that the two agree)."""
    return S.ddim_step(inp.x, inp.pred, inp.path_t, inp.path_s), None


def _heun_correct(process: GaussianProcess, inp: StepInput, proposal: Tensor, pred_s: Any) -> Tensor:
    return S.heun_correct(process, inp.x, inp.pred, pred_s, inp.path_t, inp.path_s)


def _euler_maruyama(process: GaussianProcess, inp: StepInput) -> tuple[Tensor, Any]:
    """The SDE ends on the denoised mean (Song et al.'s last step); where its drift is singular (``alpha = 0``:
    the flow path at ``t = 1``) it takes an ancestral step instead."""
    c_t: Coefficients = inp.path_t
    if inp.last:
        return inp.pred.x0, None
    if bool((c_t.alpha == 0).any()):
        return S.ddpm_step(inp.x, inp.pred, c_t, inp.path_s, inp.noise()), None
    dt = broadcast(shared_time(inp.s, inp.index) - shared_time(inp.t, inp.index), inp.x, inp.index)
    return S.euler_maruyama_step(inp.x, inp.pred, c_t, dt, inp.noise()), None


def _langevin_correct(process: GaussianProcess, inp: StepInput, proposal: Tensor, pred_s: Any) -> Tensor:
    return S.langevin_correct(proposal, pred_s, inp.path_s.sigma, inp.noise(), inp.pc_snr)


register_solver("ddpm", "DDPM ancestral sampling (posterior variance)").add(GaussianProcess, _ddpm)
register_solver("ddim", "DDIM, deterministic for eta=0, stochastic for eta>0").add(GaussianProcess, _ddim)
register_solver("dpmpp_2m", "DPM-Solver++(2M) multistep, data prediction").add(GaussianProcess, _dpmpp_2m)
register_solver("euler", "Euler on the probability-flow ODE (equals DDIM on Gaussian paths)").add(GaussianProcess, _euler)
register_solver("heun", "Heun (2nd order) on the probability-flow ODE", corrects=True).add(GaussianProcess, _euler, _heun_correct)
register_solver("euler_maruyama", "Euler-Maruyama on the reverse SDE").add(GaussianProcess, _euler_maruyama)
register_solver("pc", "predictor-corrector: reverse-SDE predictor + Langevin corrector", corrects=True).add(
    GaussianProcess, _euler_maruyama, _langevin_correct)


# ------------------------------------------------------------------------------------------------
# SO(3) (sciffusion.processes.so3): Euler / Heun on the ODE in the process's own time, geodesic steps
# ------------------------------------------------------------------------------------------------
def _so3_euler(process: SO3Process, inp: StepInput) -> tuple[Tensor, Any]:
    return so3_euler_step(process, inp.x, inp.pred, inp.t, inp.s, inp.index), None


def _so3_heun(process: SO3Process, inp: StepInput, proposal: Tensor, pred_s: Any) -> Tensor:
    return so3_heun_step(process, inp.x, inp.pred, pred_s, inp.t, inp.s, inp.index)


def _igso3_euler_maruyama(process: IGSO3Process, inp: StepInput) -> tuple[Tensor, Any]:
    """The noise is a body-frame tangent vector per rotation ``(..., 3)``."""
    noise = torch.randn((*inp.x.shape[:-2], 3), generator=inp.generator, dtype=inp.x.dtype).to(inp.x.device)
    return igso3_euler_maruyama_step(process, inp.x, inp.pred, inp.t, inp.s, noise, inp.index), None


get_solver("euler").add(SO3Process, _so3_euler)
get_solver("heun").add(SO3Process, _so3_euler, _so3_heun)
get_solver("euler_maruyama").add(IGSO3Process, _igso3_euler_maruyama)


# ------------------------------------------------------------------------------------------------
# Categorical (sciffusion.processes.categorical): discrete flow matching and D3PM ancestral steps
# ------------------------------------------------------------------------------------------------
def _dfm_euler(process: CategoricalProcess, inp: StepInput) -> tuple[Tensor, Any]:
    return dfm_euler_step(process, inp.x, inp.pred, inp.t, inp.s, inp.generator, inp.index), None


def _d3pm(process: CategoricalProcess, inp: StepInput) -> tuple[Tensor, Any]:
    return d3pm_step(process, inp.x, inp.pred, inp.t, inp.s, inp.generator, inp.index), None


register_solver("dfm_euler", "discrete flow matching Euler step of the mixture-path CTMC (Campbell et al. 2024; "
                             "Gat et al. 2024)").add(CategoricalProcess, _dfm_euler)
def _sequential_reveal(process: CategoricalProcess, inp: StepInput) -> tuple[Tensor, Any]:
    return sequential_reveal_step(process, inp.x, inp.pred, inp.t, inp.s, inp.generator, inp.index), None


register_solver("d3pm", "D3PM ancestral step from the posterior averaged over the predicted clean class "
                        "(Austin et al. 2021)").add(CategoricalProcess, _d3pm)
register_solver("sequential_reveal", "mask source: reveals round(L kappa(s)) entries in random order, one per step "
                                     "with >= L steps, which is exact for an exact denoiser (Zheng et al. 2024)"
                ).add(CategoricalProcess, _sequential_reveal, accepts=lambda process: process.source == "mask")


# ------------------------------------------------------------------------------------------------
# Torus (sciffusion.processes.torus): flat-torus flow and wrapped-normal score steps, every one wraps
# ------------------------------------------------------------------------------------------------
def _torus_flow_euler(process: TorusFlowProcess, inp: StepInput) -> tuple[Tensor, Any]:
    return flow_euler_step(inp.x, inp.pred, inp.t, inp.s, inp.index), None


def _torus_flow_heun(process: TorusFlowProcess, inp: StepInput, proposal: Tensor, pred_s: Any) -> Tensor:
    return flow_heun_step(inp.x, inp.pred, pred_s, inp.t, inp.s, inp.index)


def _wrapped_normal_euler(process: WrappedNormalProcess, inp: StepInput) -> tuple[Tensor, Any]:
    return wrapped_normal_ode_step(process, inp.x, inp.pred, inp.t, inp.s, inp.index), None


def _wrapped_normal_heun(process: WrappedNormalProcess, inp: StepInput, proposal: Tensor, pred_s: Any) -> Tensor:
    return wrapped_normal_heun_step(process, inp.x, inp.pred, pred_s, inp.t, inp.s, inp.index)


def _wrapped_normal_predictor(process: WrappedNormalProcess, inp: StepInput) -> tuple[Tensor, Any]:
    return wrapped_normal_predictor_step(process, inp.x, inp.pred, inp.t, inp.s, inp.noise(), inp.index), None


def _wrapped_normal_langevin(process: WrappedNormalProcess, inp: StepInput, proposal: Tensor, pred_s: Any) -> Tensor:
    return wrapped_normal_langevin_step(process, proposal, pred_s, inp.s, inp.noise(), inp.index)


get_solver("euler").add(TorusFlowProcess, _torus_flow_euler).add(WrappedNormalProcess, _wrapped_normal_euler)
get_solver("heun").add(TorusFlowProcess, _torus_flow_euler, _torus_flow_heun).add(
    WrappedNormalProcess, _wrapped_normal_euler, _wrapped_normal_heun)
get_solver("pc").add(WrappedNormalProcess, _wrapped_normal_predictor, _wrapped_normal_langevin)
