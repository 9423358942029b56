"""Solvers (registered objects over pure step functions) and the sampling loop."""
from sciffusion.sampling.loop import Constraint, DenoiseFn, State, batch_size, nfe, solve, solve_field, steps_for_nfe
from sciffusion.sampling.solvers import Solver, StepInput, compatible_solvers, get_solver, register_solver, resolve_solvers

__all__ = [
    "Constraint", "DenoiseFn", "Solver", "State", "StepInput", "batch_size", "compatible_solvers", "get_solver", "nfe",
    "register_solver", "resolve_solvers", "solve", "solve_field", "steps_for_nfe",
]
