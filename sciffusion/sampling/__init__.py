"""Solvers (pure step functions) and the sampling loop."""
from sciffusion.sampling.loop import Constraint, DenoiseFn, State, nfe, solve, steps_for_nfe
from sciffusion.sampling.steps import (
    ddim_step,
    ddpm_step,
    dpmpp_2m_step,
    euler_maruyama_step,
    euler_step,
    heun_correct,
    langevin_correct,
    sde_coefficients,
)

__all__ = [
    "Constraint", "DenoiseFn", "State", "ddim_step", "ddpm_step", "dpmpp_2m_step", "euler_maruyama_step", "euler_step",
    "heun_correct", "langevin_correct", "nfe", "sde_coefficients", "solve", "steps_for_nfe",
]
