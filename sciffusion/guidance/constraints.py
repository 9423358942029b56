"""Hard constraints applied to the sampling state after every solver step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from sciffusion.processes import GaussianProcess

State = dict[str, Tensor]


@dataclass
class Inpaint:
    """Replace known entries by their (noised) known values at every step; exact at ``t = 0``.

    Args:
        values: field -> tensor shaped like the field, holding the known clean values.
        mask: field -> same-shaped 0/1 (or bool) tensor, 1 where the value is known.
        noise_known: noise the known values to the current time (RePaint/replacement, Song et al. 2021).
            ``False`` writes the clean values at every step (Diffuser's conditioning of start/goal states).
    """

    values: dict[str, Tensor]
    mask: dict[str, Tensor]
    noise_known: bool = True

    def __call__(self, x: State, t: Tensor, processes: dict[str, GaussianProcess], generator: torch.Generator | None) -> State:
        out = dict(x)
        for name, known in self.values.items():
            m = self.mask[name].to(torch.bool)
            value = known.to(x[name].dtype)
            if self.noise_known and bool((t > 0).any()):
                noise = torch.randn(value.shape, generator=generator, dtype=value.dtype).to(value.device)
                value = processes[name].add_noise(value, noise, t.to(value.dtype))
            out[name] = torch.where(m, value, x[name])
        return out


@dataclass
class Project:
    """Apply ``fn(state) -> state`` after every step (e.g. clamp to a box, zero centre of mass)."""

    fn: Callable[[State], State]

    def __call__(self, x: State, t: Tensor, processes: dict[str, GaussianProcess], generator: torch.Generator | None) -> State:
        return self.fn(dict(x))
