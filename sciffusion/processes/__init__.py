"""Corruption processes (paths) and conversions between network parametrizations."""
from sciffusion.processes.gaussian import (
    EDMProcess,
    FlowProcess,
    GaussianProcess,
    VEProcess,
    VPProcess,
    beta_schedule,
    broadcast,
    rescale_zero_terminal_snr,
)
from sciffusion.processes.parametrization import Coefficients, Prediction, convert, from_x0_eps, to_x0_eps, x0_space_weight
from sciffusion.processes.weighting import loss_weight, ot_pairing

__all__ = [
    "Coefficients", "EDMProcess", "FlowProcess", "GaussianProcess", "Prediction", "VEProcess", "VPProcess",
    "beta_schedule", "broadcast", "convert", "from_x0_eps", "loss_weight", "ot_pairing",
    "rescale_zero_terminal_snr", "to_x0_eps", "x0_space_weight",
]
