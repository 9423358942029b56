"""The ``frames`` representation: one rigid frame per residue, built from its N, CA and C atoms.

A frame is a rotation ``R`` ``(3, 3)`` and a translation ``t`` ``(3,)`` (the CA position, Angstrom). Its axes follow
AlphaFold 2's ``rigid_from_3_points`` (Gram-Schmidt): ``e1 = (C - CA) / |C - CA|``, ``e2`` the unit component of
``N - CA`` orthogonal to ``e1``, ``e3 = e1 x e2``; ``R = [e1 e2 e3]`` (columns). A point ``p`` given in the frame's
local coordinates is ``R p + t`` in the global ones.

Back from frames, the backbone has ideal geometry (Engh & Huber, as FrameDiff and AlphaFold 2 use it): CA at the
origin, C on ``e1`` at 1.525 A, N in the ``e1, e2`` plane at 1.458 A with the N-CA-C angle 111.0 degrees, so
``frames -> coordinates -> frames`` is exact and ``coordinates -> frames -> coordinates`` reproduces CA exactly and
N, C up to the input's deviation from ideal bond lengths and angle. The carbonyl O is placed by NeRF from N, CA, C
(C=O 1.231 A, CA-C-O 120.5 degrees) at the torsion ``N-CA-C-O = psi + 180`` degrees, ``psi`` measured to the next
residue's N (180 degrees at a chain end or break).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

BOND_N_CA = 1.458
BOND_CA_C = 1.525
BOND_C_O = 1.231
ANGLE_N_CA_C = math.radians(111.0)
ANGLE_CA_C_O = math.radians(120.5)
CA_CA = 3.80  # consecutive trans-peptide CA-CA distance
IDEAL_N = (BOND_N_CA * math.cos(ANGLE_N_CA_C), BOND_N_CA * math.sin(ANGLE_N_CA_C), 0.0)
IDEAL_C = (BOND_CA_C, 0.0, 0.0)


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def frames_from_backbone(n: Tensor, ca: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Frames of residues from their atoms ``n``, ``ca``, ``c`` ``(..., 3)``: rotations ``(..., 3, 3)`` (columns
    ``e1, e2, e3``) and translations ``(..., 3)`` (= ``ca``)."""
    e1 = _unit(c - ca)
    u = n - ca
    e2 = _unit(u - (u * e1).sum(-1, keepdim=True) * e1)
    e3 = torch.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1), ca.clone()


def ideal_backbone(rots: Tensor, trans: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Ideal N, CA, C ``(..., 3)`` of frames ``rots`` ``(..., 3, 3)``, ``trans`` ``(..., 3)``."""
    local_n = torch.tensor(IDEAL_N, dtype=rots.dtype, device=rots.device)
    local_c = torch.tensor(IDEAL_C, dtype=rots.dtype, device=rots.device)
    return rots @ local_n + trans, trans, rots @ local_c + trans


def dihedral(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """Torsion angle (radians, ``(-pi, pi]``) of the points ``a, b, c, d`` ``(..., 3)`` -> ``(...)``."""
    b0, b1, b2 = a - b, c - b, d - c
    b1u = _unit(b1)
    v = b0 - (b0 * b1u).sum(-1, keepdim=True) * b1u
    w = b2 - (b2 * b1u).sum(-1, keepdim=True) * b1u
    x = (v * w).sum(-1)
    y = (torch.cross(b1u, v, dim=-1) * w).sum(-1)
    return torch.atan2(y, x)


def place_atom(a: Tensor, b: Tensor, c: Tensor, bond: float, angle: float, torsion: Tensor) -> Tensor:
    """NeRF: the point ``d`` ``(..., 3)`` with ``|d - c| = bond``, angle ``b-c-d = angle`` and torsion
    ``a-b-c-d = torsion`` ``(...)`` (radians)."""
    bc = _unit(c - b)
    normal = _unit(torch.cross(b - a, bc, dim=-1))
    m = torch.stack([bc, torch.cross(normal, bc, dim=-1), normal], dim=-1)
    local = torch.stack([-bond * math.cos(angle) * torch.ones_like(torsion), bond * math.sin(angle) * torch.cos(torsion),
                         bond * math.sin(angle) * torch.sin(torsion)], dim=-1)
    return c + (m @ local[..., None])[..., 0]


def backbone_atoms(rots: Tensor, trans: Tensor, bonded_next: Tensor | None = None) -> Tensor:
    """Ideal N, CA, C, O of one chain's frames ``rots`` ``(L, 3, 3)``, ``trans`` ``(L, 3)`` -> ``(L, 4, 3)``.

    ``bonded_next`` ``(L,)`` bool: residue ``i`` is peptide-bonded to ``i + 1`` (default: all but the last); where
    it is not, O is placed at ``psi = 180`` degrees."""
    n, ca, c = ideal_backbone(rots, trans)
    length = trans.shape[0]
    if bonded_next is None:
        bonded_next = torch.arange(length, device=trans.device) < length - 1
    psi = torch.full((length,), math.pi, dtype=trans.dtype, device=trans.device)
    if length > 1:
        measured = dihedral(n[:-1], ca[:-1], c[:-1], n[1:])
        psi[:-1] = torch.where(bonded_next[:-1], measured, psi[:-1])
    o = place_atom(n, ca, c, BOND_C_O, ANGLE_CA_C_O, psi + math.pi)
    return torch.stack([n, ca, c, o], dim=1)
