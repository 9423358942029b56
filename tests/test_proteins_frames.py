"""Residue frames from N-CA-C and back (ideal geometry), O placement, and the network's SE(3) equivariance."""
from __future__ import annotations

import math

import pytest
import torch

from sciffusion.domains.proteins.frames import (
    ANGLE_N_CA_C,
    BOND_CA_C,
    BOND_N_CA,
    backbone_atoms,
    dihedral,
    frames_from_backbone,
    ideal_backbone,
)
from sciffusion.domains.proteins.nets import FrameIPANet, quaternion_update
from sciffusion.nets.equivariance import assert_equivariant, random_rotation
from sciffusion.processes.so3 import IGSO3Process


def random_frames(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rots = torch.stack([random_rotation(g) for _ in range(n)])
    return rots, 10.0 * torch.randn(n, 3, generator=g, dtype=torch.float64)


def test_ideal_backbone_round_trip_is_exact() -> None:
    rots, trans = random_frames(50)
    n, ca, c = ideal_backbone(rots, trans)
    rots2, trans2 = frames_from_backbone(n, ca, c)
    n2, ca2, c2 = ideal_backbone(rots2, trans2)
    assert float((rots2 - rots).abs().max()) < 1e-10
    for a, b in ((n, n2), (ca, ca2), (c, c2)):
        assert float((a - b).norm(dim=-1).max()) < 1e-4
    assert torch.allclose((n - ca).norm(dim=-1), torch.full((50,), BOND_N_CA, dtype=torch.float64))
    assert torch.allclose((c - ca).norm(dim=-1), torch.full((50,), BOND_CA_C, dtype=torch.float64))
    cos = ((n - ca) * (c - ca)).sum(-1) / (BOND_N_CA * BOND_CA_C)
    assert torch.allclose(torch.acos(cos), torch.full((50,), ANGLE_N_CA_C, dtype=torch.float64))


def test_real_backbone_reconstruction() -> None:
    """On a crystal structure: CA exact, N and C within the deviation of real bond geometry from ideal, O from the
    measured psi."""
    from sciffusion.domains.proteins.domain import packaged_structures
    from sciffusion.domains.proteins.io import read_structure

    pytest.importorskip("Bio")
    try:
        folder = packaged_structures()
    except ValueError:
        pytest.skip("needs the mdanalysistests package (the proteins extra)")
    chain = read_structure(folder / "1lpbA.pdb.gz").chains[0]
    atoms = torch.from_numpy(chain.atoms)
    rots, trans = frames_from_backbone(atoms[:, 0], atoms[:, 1], atoms[:, 2])
    rebuilt = backbone_atoms(rots, trans)
    err = (rebuilt - atoms).norm(dim=-1)  # (L, 4)
    assert float(err[:, 1].max()) < 1e-9
    assert float(err[:, 0].mean()) < 0.15 and float(err[:, 2].mean()) < 0.02
    assert float(err[:-1, 3].median()) < 0.15  # the last O has no next residue: psi = 180 is a guess


def test_dihedral_and_quaternion_update() -> None:
    a, b, c = torch.tensor([1.0, 0, 0]), torch.zeros(3), torch.tensor([0, 1.0, 0])
    d = torch.tensor([0.0, 1.0, 1.0])
    assert math.isclose(float(dihedral(a, b, c, d)), -math.pi / 2, abs_tol=1e-6)
    assert torch.allclose(quaternion_update(torch.zeros(3)), torch.eye(3))
    r = quaternion_update(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert math.isclose(float(torch.det(r)), 1.0, abs_tol=1e-12)


@pytest.mark.parametrize("rot_output", ["rotmat", "rotvec", "igso3_score"])
def test_frame_net_is_se3_equivariant(rot_output: str) -> None:
    torch.manual_seed(0)
    net = FrameIPANet(hidden=32, n_layers=2, heads=2, head_dim=8, pair_dim=16, rot_output=rot_output,
                      igso3=IGSO3Process() if rot_output == "igso3_score" else None).double()
    for p in net.parameters():  # the frame updates start at zero: make every layer move the frames
        torch.nn.init.normal_(p, std=0.2)
    index = torch.tensor([0] * 9 + [1] * 6)
    rots, trans = random_frames(15, seed=1)
    t = torch.tensor([0.2, 0.8], dtype=torch.float64)

    @torch.no_grad()
    def fn(fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return net(fields, t, None, index={"trans": index, "rots": index})

    out_kind = "rotation" if rot_output == "rotmat" else "scalar"
    errors = assert_equivariant(fn, {"trans": trans / 10, "rots": rots}, {"trans": "position", "rots": "rotation"},
                                {"trans": "position", "rots": out_kind}, index={"trans": index, "rots": index},
                                transforms=("rotation", "translation"), atol=1e-5)
    assert max(errors.values()) < 1e-5
    out = fn({"trans": trans / 10, "rots": rots})
    moved = float((out["trans"] - trans / 10).abs().max())
    assert moved > 1e-3  # not the identity: the check above is not vacuous
    if rot_output == "rotmat":
        assert torch.allclose(out["rots"] @ out["rots"].transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(15, 3, 3),
                              atol=1e-10)
    centred = trans / 10 - torch.stack([trans[index == i].mean(0) for i in range(2)])[index] / 10
    got = fn({"trans": centred, "rots": rots})["trans"]
    for i in range(2):
        assert float(got[index == i].mean(0).abs().max()) < 1e-12  # a centred input gives a centred output


def test_time_scaled_updates_leave_clean_positions_at_t0() -> None:
    torch.manual_seed(0)
    net = FrameIPANet(hidden=32, n_layers=2, heads=2, head_dim=8, pair_dim=16).double()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    index = torch.tensor([0] * 9 + [1] * 6)
    rots, trans = random_frames(15, seed=2)
    with torch.no_grad():
        out = net({"trans": trans / 10, "rots": rots}, torch.tensor([0.0, 0.5], dtype=torch.float64), None,
                  index={"trans": index, "rots": index})["trans"]
    assert torch.allclose(out[:9], trans[:9] / 10, atol=1e-12)  # t = 0: the translation updates are scaled to 0
    assert float((out[9:] - trans[9:] / 10).abs().max()) > 1e-3


def test_backbone_loss_values() -> None:
    from sciffusion.domains.proteins.domain import BackboneLoss, backbone_loss

    rots, trans = random_frames(12, seed=3)
    trans = trans / 10
    index = torch.tensor([0] * 6 + [1] * 6)
    loss = backbone_loss(BackboneLoss(weight=2.0, t_max=0.75, t_clip=0.1, cutoff=6.0), trans_scale=10.0)
    truth = {"trans": trans, "rots": rots}
    t = torch.tensor([0.5, 0.05], dtype=torch.float64)
    assert torch.allclose(loss(truth, truth, t, {"trans": index, "rots": index}), torch.zeros(2, dtype=torch.float64))
    shifted = {"trans": trans + torch.tensor([0.3, 0.0, -0.4], dtype=torch.float64), "rots": rots}
    got = loss(shifted, truth, t, {"trans": index, "rots": index})  # a rigid shift: atom error |d|^2 = 0.25, no distance error
    assert torch.allclose(got, torch.tensor([2.0 * 0.25 / 0.5**2, 2.0 * 0.25 / 0.1**2], dtype=torch.float64))
    late = loss(shifted, truth, torch.tensor([0.8, 0.75], dtype=torch.float64), {"trans": index, "rots": index})
    assert torch.equal(late, torch.zeros(2, dtype=torch.float64))  # t >= t_max: off
    squeezed = {"trans": trans * 0.5, "rots": rots}  # distances change: both terms count
    assert bool((loss(squeezed, truth, t, {"trans": index, "rots": index}) > 0).all())
