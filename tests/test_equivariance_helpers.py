"""The equivariance helpers accept equivariant functions and catch the ones that are not."""
from __future__ import annotations

import pytest
import torch

from sciffusion.nets.equivariance import assert_equivariant, random_rotation
from sciffusion.processes import segment_mean
from sciffusion.reps.graph import ragged_from_sizes

INDEX = ragged_from_sizes([3, 1, 4])
POS = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _centred_pull(fields):
    """x_i - mean_j x_j and the squared distance to the mean: E(3)-equivariant vector, invariant scalar."""
    rel = fields["pos"] - segment_mean(fields["pos"], INDEX, 3)[INDEX]
    return {"force": rel * fields["charge"], "energy": (rel**2).sum(dim=1)}


def test_random_rotation_is_a_rotation() -> None:
    r = random_rotation(torch.Generator().manual_seed(1))
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert abs(float(torch.det(r)) - 1.0) < 1e-12


def test_an_equivariant_function_passes_every_transformation() -> None:
    charge = torch.rand(8, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    errors = assert_equivariant(_centred_pull, {"pos": POS, "charge": charge}, {"pos": "position"},
                                {"force": "vector", "energy": "scalar"},
                                {"pos": INDEX, "charge": INDEX, "force": INDEX, "energy": INDEX})
    assert set(errors) == {"rotation", "translation", "permutation"} and max(errors.values()) < 1e-12


@pytest.mark.parametrize("broken,transform", [
    (lambda f: {"force": f["pos"]}, "translation"),                      # not translation invariant
    (lambda f: {"force": f["pos"] * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)}, "rotation"),
    (lambda f: {"force": f["pos"] + torch.arange(8.0, dtype=torch.float64)[:, None]}, "permutation"),  # row order leaks
])
def test_a_broken_function_is_caught(broken, transform: str) -> None:
    with pytest.raises(AssertionError, match=f"not equivariant under {transform}"):
        assert_equivariant(broken, {"pos": POS}, {"pos": "position"}, {"force": "vector"}, {"pos": INDEX, "force": INDEX},
                           transforms=[transform])


def test_crystal_frame_rotation_and_fractional_shift() -> None:
    """Lattice-invariant features of fractional differences: invariant to the Cartesian frame and to a shift."""
    lattice = torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    frac = torch.rand(8, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def invariant(f):
        gram = f["lattice"] @ f["lattice"].transpose(1, 2)
        diff = f["frac"] - segment_mean(f["frac"], INDEX, 3)[INDEX]
        return {"score": torch.sin(2 * torch.pi * diff).sum(1, keepdim=True) * gram[INDEX].sum((1, 2))[:, None]}

    assert_equivariant(invariant, {"lattice": lattice, "frac": frac}, {"lattice": "lattice", "frac": "fractional"},
                       {"score": "scalar"}, {"frac": INDEX, "score": INDEX}, transforms=["rotation", "permutation"])
    with pytest.raises(AssertionError, match="frac_shift"):  # the mean of wrapped coordinates is not shift invariant
        assert_equivariant(invariant, {"lattice": lattice, "frac": frac}, {"lattice": "lattice", "frac": "fractional"},
                           {"score": "scalar"}, {"frac": INDEX, "score": INDEX}, transforms=["frac_shift"])
