"""CHGNet as a differentiable oracle: gradient guidance of the fractional coordinates toward low energy.

The loss of a crystal is its CHGNet energy above a target, ``n max(E / n - target, 0)`` (eV; ``E / n`` in
eV/atom), evaluated on the sampler's clean estimate (the lattice and the coordinates it predicts). CHGNet runs
outside the autograd graph; its forces give the gradient: with Cartesian positions ``x = f M`` (rows of ``M`` the
cell vectors), ``dE / df_i = -F_i M^T``. The core applies it to the torus field's clean estimate
(:func:`sciffusion.guidance.gradient.apply_gradient_guidance`), so every torus solver can be steered. A crystal
CHGNet cannot take (overlapping atoms early in sampling, isolated atoms) contributes no gradient; each atom's
gradient is clipped to ``max_grad`` eV per unit fractional coordinate.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from sciffusion.domains.materials.crystal import lattice_parameters, make_structure
from sciffusion.domains.materials.nets import FRAC, LATTICE, TYPES
from sciffusion.guidance import GradientGuidance


class _CHGNetEnergy(torch.autograd.Function):
    """``(frac (N, 3), loss (B,), dloss/dfrac (N, 3), index (N,)) -> loss``: the loss computed outside autograd, with
    its gradient attached to ``frac``."""

    @staticmethod
    def forward(ctx: Any, frac: Tensor, loss: Tensor, grad: Tensor, index: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(grad, index)
        return loss.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None, None]:  # noqa: D102
        grad, index = ctx.saved_tensors
        return grad * grad_output[index][:, None], None, None, None


def chgnet_energy_loss(frac: Tensor, lattice: Tensor, index: Tensor, species: Sequence[str],
                       lattice_mean: Sequence[float], lattice_spread: Sequence[float], target: float,
                       max_grad: float = 50.0) -> Tensor:
    """The loss ``(B,)`` of crystals with fractional coordinates ``frac`` ``(N, 3)``, standardised lattice numbers
    ``lattice`` ``(B, 6)``, each row's crystal ``index`` ``(N,)`` and element ``species`` ``(N,)``; differentiable
    in ``frac`` (see the module docstring)."""
    from sciffusion.domains.materials.oracle import chgnet_energy_forces

    n_crystals = lattice.shape[0]
    sizes = torch.bincount(index, minlength=n_crystals).cpu().numpy()
    raw = lattice.detach().double().cpu().numpy() * np.asarray(lattice_spread) + np.asarray(lattice_mean)
    lengths, angles = lattice_parameters(raw, np.maximum(sizes, 1))
    frac_np = frac.detach().double().cpu().numpy()
    index_np = index.cpu().numpy()
    structures, matrices = [], []
    for b in range(n_crystals):
        rows = np.flatnonzero(index_np == b)
        try:
            structure = make_structure(lengths[b], angles[b], [_z(species[r]) for r in rows], frac_np[rows])
        except ValueError:  # a degenerate cell early in sampling: no gradient for it
            structure = None
        structures.append(structure)
        matrices.append(structure.lattice.matrix if structure is not None else None)
    usable = [b for b, structure in enumerate(structures) if structure is not None]
    results = [None] * n_crystals
    for b, result in zip(usable, chgnet_energy_forces([structures[b] for b in usable])):
        results[b] = result
    loss = np.zeros(n_crystals)
    grad = np.zeros_like(frac_np)
    for b, result in enumerate(results):
        if result is None:
            continue
        energy, forces = result
        if energy <= target:
            continue
        rows = np.flatnonzero(index_np == b)
        loss[b] = sizes[b] * (energy - target)
        g = -forces @ matrices[b].T  # dE/df (eV per unit fractional coordinate)
        norms = np.linalg.norm(g, axis=1, keepdims=True)
        grad[rows] = g * np.minimum(1.0, max_grad / np.maximum(norms, 1e-12))
    return _CHGNetEnergy.apply(frac, torch.as_tensor(loss, dtype=frac.dtype, device=frac.device),
                               torch.as_tensor(grad, dtype=frac.dtype, device=frac.device), index)


def _z(symbol: str) -> int:
    from pymatgen.core import Element

    return Element(symbol).Z


def chgnet_energy_guidance(elements: Sequence[str], lattice_mean: Sequence[float], lattice_spread: Sequence[float],
                           target: float, scale: float, given_types: Tensor | None = None,
                           substeps: int = 1) -> GradientGuidance:
    """Gradient guidance of the ``frac_coords`` field toward a CHGNet energy at or below ``target`` eV/atom, of
    strength ``scale``. The atoms' elements are ``given_types`` ``(N,)`` (structure prediction) or the most
    probable class of the ``atom_types`` field's clean estimate (de novo)."""

    def loss_fn(x0: dict[str, Tensor], x_t: dict[str, Tensor], t: Tensor, index: dict[str, Tensor]) -> Tensor:
        types = given_types if given_types is not None else x0[TYPES].argmax(dim=-1)
        species = [elements[int(k)] for k in types.cpu()]
        return chgnet_energy_loss(x0[FRAC], x0[LATTICE], index[FRAC], species, lattice_mean, lattice_spread, target)

    return GradientGuidance(loss_fn, scale=scale, fields=[FRAC], through_model=False, substeps=substeps)
