"""Process-group set-up for ``torchrun`` (DistributedDataParallel), and device choice.

``torchrun --nproc_per_node=N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with
``WORLD_SIZE > 1`` the trainer joins a process group (NCCL on CUDA, Gloo on CPU). Without those
variables everything runs in one process and none of this touches ``torch.distributed``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "DeviceError", "all_reduce_mean", "barrier", "env_rank", "init_distributed", "resolve_device", "shutdown"]


class DeviceError(ValueError):
    """The requested device cannot be used on this machine."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world`` processes, on ``device``."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    initialized_here: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def env_rank() -> int:
    """This process's global rank from the ``torchrun`` environment (0 when not launched by it)."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``cuda`` must exist."""
    if preference not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device '{preference}' (use auto, cpu or cuda)")
    if preference == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if preference == "cuda":
            raise DeviceError("device 'cuda' was requested but CUDA is not available on this machine")
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group if ``WORLD_SIZE > 1`` (or reuse one already joined)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = env_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, initialized_here=False)
    if world <= 1:
        return DistInfo(0, 1, 0, device, initialized_here=False)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    return DistInfo(rank, world, local_rank, device, initialized_here=True)


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average ``tensor`` over ranks in place (no-op in one process); returns it."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(info.world)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group if this module created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
