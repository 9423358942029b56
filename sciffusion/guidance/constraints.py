"""Hard constraints applied to the sampling state after every solver step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from sciffusion.processes import Process

State = dict[str, Tensor]
Index = dict[str, Tensor]


@dataclass
class Inpaint:
    """Replace known entries by their (noised) known values at every step; exact at ``t = 0``.

    Works for any process and any subset of rows of a ragged field (motif residues' frames, fixed atom
    types, a given composition): ``values`` and ``mask`` are shaped like the field's rows.

    Args:
        values: field -> tensor shaped like the field, holding the known clean values.
        mask: field -> 0/1 (or bool) tensor broadcastable to the field, 1 where the value is known.
        noise_known: bring the known values to the current time with the process's forward draw
            (:meth:`Process.noised_known`; RePaint / replacement, Song et al. 2021).
            ``False`` writes the clean values at every step (Diffuser's conditioning of start/goal states).
    """

    values: dict[str, Tensor]
    mask: dict[str, Tensor]
    noise_known: bool = True

    def __call__(self, x: State, t: Tensor, processes: dict[str, Process], generator: torch.Generator | None,
                 index: Index | None = None) -> State:
        out = dict(x)
        for name, known in self.values.items():
            m = self.mask[name].to(torch.bool)
            value = known.to(x[name].dtype)
            if self.noise_known and bool((t > 0).any()):
                value = processes[name].noised_known(value, t, generator, (index or {}).get(name))
            out[name] = torch.where(m, value, x[name])
        return out


@dataclass
class Project:
    """Apply ``fn(state) -> state`` after every step (e.g. clamp to a box, zero centre of mass)."""

    fn: Callable[[State], State]

    def __call__(self, x: State, t: Tensor, processes: dict[str, Process], generator: torch.Generator | None,
                 index: Index | None = None) -> State:
        return self.fn(dict(x))
