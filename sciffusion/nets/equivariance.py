"""Equivariance checks that every geometric network's tests use (after e3nn's ``assert_equivariant``).

A network is a function ``fn(fields: {name: Tensor}) -> {name: Tensor}`` of ragged or dense fields. Each field
is declared with a *kind* that says how a transformation of space acts on it:

* ``position`` — points ``(..., 3)``: rotated ``x R^T`` and translated ``x + c`` (per sample);
* ``vector``   — displacements, forces, velocities ``(..., 3)``: rotated, not translated;
* ``rotation`` — frames ``(..., 3, 3)``: left-multiplied ``R Q``;
* ``lattice``  — a crystal cell as row vectors ``(B, 3, 3)``: rotated ``L R^T`` (its Cartesian frame);
* ``fractional`` — fractional coordinates ``(..., 3)``: unchanged by rotations, shifted ``(f + c) mod 1``;
* ``scalar``   — anything invariant (atom types, time, energies, lattice parameters).

:func:`assert_equivariant` applies each requested transformation (``rotation``, ``translation``,
``permutation`` of the rows within each sample, ``frac_shift``) to the inputs and checks that the outputs
transform as their kinds say, to a tolerance (use float64 inputs and a float64 network for 1e-5).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

Fields = dict[str, Tensor]
KINDS = ("position", "vector", "rotation", "lattice", "fractional", "scalar")
TRANSFORMS = ("rotation", "translation", "permutation", "frac_shift")


def random_rotation(generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """A Haar-random rotation matrix ``(3, 3)`` with determinant +1 (QR of a Gaussian matrix, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def _rows_of(x: Tensor, index: Tensor | None, per_sample: Tensor) -> Tensor:
    """Per-sample values ``(B, ...)`` for every row of ``x`` (ragged by ``index``, or dense ``(B, n, ...)``)."""
    if index is not None:
        return per_sample[index]
    return per_sample.reshape(per_sample.shape[0], *([1] * (x.dim() - per_sample.dim())), *per_sample.shape[1:])


def _apply(fields: Fields, kinds: dict[str, str], index: dict[str, Tensor], transform: str, params: dict) -> Fields:
    out = {}
    for name, x in fields.items():
        kind = kinds.get(name, "scalar")
        if kind not in KINDS:
            raise ValueError(f"field '{name}': unknown kind '{kind}' (known: {', '.join(KINDS)})")
        idx = index.get(name)
        if transform == "rotation":
            rot = params["rotation"].to(x.dtype) if torch.is_floating_point(x) else None
            x = {"position": lambda: x @ rot.T, "vector": lambda: x @ rot.T, "lattice": lambda: x @ rot.T,
                 "rotation": lambda: rot @ x}.get(kind, lambda: x)()
        elif transform == "translation" and kind == "position":
            x = x + _rows_of(x, idx, params["shift"].to(x.dtype))
        elif transform == "frac_shift" and kind == "fractional":
            x = torch.remainder(x + _rows_of(x, idx, params["frac_shift"].to(x.dtype)), 1.0)
        elif transform == "permutation" and idx is not None:
            x = x[params["permutation"]]
        out[name] = x
    return out


def _within_sample_permutation(index: Tensor, generator: torch.Generator) -> Tensor:
    """A permutation of rows that keeps each row in its sample (rows of a sample shuffled among themselves)."""
    perm = torch.arange(len(index))
    for sample in index.unique():
        rows = torch.nonzero(index == sample).flatten()
        perm[rows] = rows[torch.randperm(len(rows), generator=generator)]
    return perm


def assert_equivariant(fn: Callable[[Fields], Fields], inputs: Fields, input_kinds: dict[str, str],
                       output_kinds: dict[str, str], index: dict[str, Tensor] | None = None,
                       transforms: Iterable[str] = ("rotation", "translation", "permutation"), batch: int | None = None,
                       atol: float = 1e-5, seed: int = 0) -> dict[str, float]:
    """Check ``fn`` under each transformation; returns the largest error per transformation.

    Args:
        fn: the network as a function of its fields.
        inputs, input_kinds: the fields and their kinds (missing: ``scalar``).
        output_kinds: kinds of ``fn``'s outputs (missing: ``scalar``).
        index: sample index of the rows of every ragged field, inputs and outputs alike; a permutation acts on
            every ragged field at once, so all must share the same rows (node fields of one graph batch).
        transforms: from ``rotation``, ``translation``, ``permutation``, ``frac_shift``.
        batch: number of samples (default: from the index or a dense field).
        atol: largest allowed absolute difference.
    Raises:
        AssertionError naming the transformation and the output field that breaks it.
    """
    index = index or {}
    unknown = sorted(set(transforms) - set(TRANSFORMS))
    if unknown:
        raise ValueError(f"unknown transformation(s) {', '.join(unknown)} (known: {', '.join(TRANSFORMS)})")
    gen = torch.Generator().manual_seed(seed)
    if batch is None:
        batch = int(next(iter(index.values())).max()) + 1 if index else next(iter(inputs.values())).shape[0]
    reference = fn(dict(inputs))
    errors = {}
    for transform in transforms:
        params = {"rotation": random_rotation(gen), "shift": 3.0 * torch.randn(batch, 3, generator=gen, dtype=torch.float64),
                  "frac_shift": torch.rand(batch, 3, generator=gen, dtype=torch.float64)}
        if transform == "permutation":
            if not index:
                raise ValueError("a permutation test needs ragged fields (an index)")
            first = next(iter(index.values()))
            if any(not torch.equal(i, first) for i in index.values()):
                raise ValueError("a permutation test needs every ragged field to share the same rows")
            params["permutation"] = _within_sample_permutation(first, gen)
        expected = _apply(reference, output_kinds, index, transform, params)
        got = fn(_apply(inputs, input_kinds, index, transform, params))
        worst = 0.0
        for name, value in expected.items():
            if output_kinds.get(name) == "fractional":
                diff = torch.remainder(got[name] - value + 0.5, 1.0) - 0.5
            else:
                diff = got[name] - value
            err = float(diff.abs().max()) if diff.numel() else 0.0
            if not err <= atol:
                raise AssertionError(f"not equivariant under {transform}: output '{name}' differs by {err:.3g} (atol {atol})")
            worst = max(worst, err)
        errors[transform] = worst
    return errors
