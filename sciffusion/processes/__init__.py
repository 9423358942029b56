"""Corruption processes (one per field, :class:`Process`) and conversions between network parametrizations."""
from sciffusion.processes.base import Process, per_sample, segment_mean
from sciffusion.processes.gaussian import (
    EDMProcess,
    FlowProcess,
    GaussianProcess,
    LossWeighting,
    VEProcess,
    VPProcess,
    beta_schedule,
    broadcast,
    rescale_zero_terminal_snr,
)
from sciffusion.processes.categorical import CategoricalProcess
from sciffusion.processes.so3 import GeodesicFlowProcess, IGSO3Process, SO3Process
from sciffusion.processes.torus import TorusFlowProcess, TorusProcess, WrappedNormalProcess
from sciffusion.processes.parametrization import Coefficients, Prediction, convert, from_x0_eps, to_x0_eps, x0_space_weight
from sciffusion.processes.weighting import loss_weight, ot_pairing

__all__ = [
    "CategoricalProcess", "Coefficients", "EDMProcess", "FlowProcess", "GaussianProcess", "GeodesicFlowProcess", "IGSO3Process", "SO3Process", "LossWeighting", "Prediction", "Process",
    "TorusFlowProcess", "TorusProcess", "VEProcess", "VPProcess", "WrappedNormalProcess", "beta_schedule", "broadcast", "convert", "from_x0_eps", "loss_weight", "ot_pairing",
    "per_sample", "rescale_zero_terminal_snr", "segment_mean", "to_x0_eps", "x0_space_weight",
]
