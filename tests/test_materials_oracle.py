"""The CHGNet oracle (``sciffusion.domains.materials.oracle``): offline loading, energies of known crystals,
forces as the energy's gradient, relaxation and its RMSD, and structures CHGNet cannot take recorded as failures."""
from __future__ import annotations

import socket

import numpy as np
import pytest

pytest.importorskip("pymatgen.core")
pytest.importorskip("chgnet")

from pymatgen.core import Lattice, Structure  # noqa: E402

from sciffusion.domains.materials import oracle as O  # noqa: E402

#: CHGNet 0.3.0's energy of diamond Si at a = 5.431 A (measured with this package, float32 on CPU).
CHGNET_SI = -5.3123
#: Materials Project's PBE energy of Si (mp-149), eV/atom. CHGNet 0.3.0 is 0.11 eV/atom above it at its own
#: minimum (-5.3136 at a = 5.449 A); CHGNet 0.2.0 gives -5.373. Energies of single compounds are off by up to
#: ~0.1 eV/atom even though the mean error over MPtrj is 30 meV/atom, hence the 0.15 eV/atom tolerance.
MP_SI = -5.425
MP_TOLERANCE = 0.15


def silicon(a: float = 5.431) -> Structure:
    """Diamond Si, conventional cell of 8 atoms (experimental a = 5.431 A)."""
    return Structure(Lattice.cubic(a), ["Si"] * 8,
                     [[0, 0, 0], [.25, .25, .25], [.5, .5, 0], [.75, .75, .25], [.5, 0, .5], [.75, .25, .75],
                      [0, .5, .5], [.25, .75, .75]])


def rattled_silicon(sigma: float = 0.02, seed: int = 0) -> Structure:
    """Diamond Si with every fractional coordinate moved by N(0, sigma^2) (sigma 0.02 = 0.11 A)."""
    s = silicon()
    noise = np.random.default_rng(seed).normal(0.0, sigma, (len(s), 3))
    return Structure(s.lattice, s.species, s.frac_coords + noise)


def nacl() -> Structure:
    return Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
                     [[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5],
                      [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])


def isolated_atom() -> Structure:
    """One Na in a 12 A cube: no neighbour within CHGNet's 6 A graph cutoff, which CHGNet refuses."""
    return Structure(Lattice.cubic(12.0), ["Na"], [[0, 0, 0]])


def test_loads_offline_and_silently(monkeypatch, capfd):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "socket", no_network)
    O.load_chgnet.cache_clear()
    model = O.load_chgnet()
    assert model.version == O.CHGNET_MODEL
    assert O.chgnet_energies([silicon()])[0].ok
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_silicon_energy_against_chgnet_and_materials_project():
    result = O.chgnet_energies([silicon()])[0]
    assert result.ok and result.reason == ""
    assert result.energy == pytest.approx(CHGNET_SI, abs=1e-3)
    assert abs(result.energy - MP_SI) < MP_TOLERANCE
    # the primitive cell (2 atoms) is the same crystal: the same energy per atom
    primitive = O.chgnet_energies([silicon().get_primitive_structure()])[0]
    assert primitive.energy == pytest.approx(result.energy, abs=1e-4)


def test_batch_records_failures_and_matches_single_predictions():
    structures = [silicon(), isolated_atom(), nacl(), silicon(5.6)]
    batch = O.chgnet_energies(structures, batch_size=2)
    assert [r.ok for r in batch] == [True, False, True, True]
    assert "isolated atom" in batch[1].reason and np.isnan(batch[1].energy)
    singles = [O.chgnet_energies([s])[0] for s in (structures[0], structures[2], structures[3])]
    for r, single in zip((batch[0], batch[2], batch[3]), singles):
        assert r.energy == pytest.approx(single.energy, abs=1e-5)
    assert batch[3].energy > batch[0].energy  # 3 % expanded Si is higher in energy
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert O.chgnet_energies([disordered])[0].reason.startswith("partial occupancies")


def test_forces_are_the_negative_energy_gradient():
    energy, forces, stress = O.chgnet_forces(silicon())
    assert energy == pytest.approx(CHGNET_SI, abs=1e-3)
    assert forces.shape == (8, 3) and np.abs(forces).max() < 1e-3  # every atom at an inversion centre
    assert stress.shape == (3, 3)
    np.testing.assert_allclose(stress, stress.T, atol=1e-3)
    s = rattled_silicon()
    _, forces, _ = O.chgnet_forces(s)
    assert np.abs(forces).max() > 0.1
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=2e-3)  # no net force
    h = 0.01  # Angstrom, central difference of the total energy along x of atom 3
    totals = []
    for sign in (1, -1):
        moved = s.copy()
        moved.translate_sites([3], [sign * h, 0, 0], frac_coords=False)
        totals.append(O.chgnet_forces(moved)[0] * len(s))
    assert -(totals[0] - totals[1]) / (2 * h) == pytest.approx(forces[3, 0], rel=0.05, abs=0.01)
    with pytest.raises(ValueError, match="isolated atom"):
        O.chgnet_forces(isolated_atom())


def test_displacement_rmsd_by_hand():
    before = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0.99, 0, 0], [0.5, 0.5, 0.5]])
    after = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0.01, 0, 0], [0.5, 0.5, 0.5]])
    # Na moves 0.02 * 5 = 0.1 A across the boundary; minus the mean shift, each site is 0.05 A off
    assert O.displacement_rmsd(before, after) == pytest.approx(0.05)
    shifted = Structure(after.lattice, after.species, after.frac_coords + 0.3)
    assert O.displacement_rmsd(after, shifted) == pytest.approx(0.0, abs=1e-12)


def test_relaxation_rmsd_as_mattergen():
    s = silicon()
    rmsd, matched = O.relaxation_rmsd(s, s)
    assert matched and rmsd == pytest.approx(0.0, abs=1e-6)
    # MatterGen compares with the symmetrised generated structure: a 0.001 A rattle, within spglib's 0.01 A
    # tolerance, is undone before matching (the site-by-site RMSD still sees it)
    tiny = rattled_silicon(0.0002)
    rmsd, matched = O.relaxation_rmsd(tiny, s)
    assert matched and rmsd == pytest.approx(0.0, abs=1e-9)
    assert len(O.mattergen_reference(tiny)) == 2  # the primitive cell
    assert O.displacement_rmsd(tiny, s) == pytest.approx(0.0016, abs=2e-4)
    rmsd, matched = O.relaxation_rmsd(rattled_silicon(0.02), s)  # 0.11 A rattle: kept, and measured
    assert matched and rmsd == pytest.approx(O.displacement_rmsd(rattled_silicon(0.02), s), rel=1e-6)
    far = Structure(Lattice.cubic(5.431), ["Si"] * 2, [[0, 0, 0], [0.5, 0.5, 0.1]])
    rmsd, matched = O.relaxation_rmsd(far, silicon())
    assert not matched
    volume_per_atom = 0.5 * (silicon().volume / 8 + O.mattergen_reference(far).volume / 2)
    assert rmsd == pytest.approx(O.MATTERGEN_MAX_RMSD * volume_per_atom ** (1 / 3))


def test_relax_lowers_the_energy_and_records_failures():
    rattled = rattled_silicon()
    results = O.relax([rattled, isolated_atom()], steps=60)
    good, bad = results
    assert good.ok and good.reason == ""
    assert good.initial_energy == pytest.approx(O.chgnet_energies([rattled])[0].energy, abs=1e-5)
    assert good.final_energy < good.initial_energy - 0.05
    assert good.final_energy == pytest.approx(CHGNET_SI, abs=5e-3)  # back to (near) diamond
    assert good.converged and 0 < good.steps < 60 and good.max_force < 0.1
    assert good.rmsd_matched and 0.01 < good.rmsd < 0.5
    assert 0.05 < good.displacement_rmsd < 0.3  # the rattle was 0.11 A per coordinate
    assert len(good.structure) == 8 and good.structure.composition == rattled.composition
    assert not bad.ok and "isolated atom" in bad.reason and bad.structure is None
    short = O.relax([rattled], steps=3)[0]
    assert short.ok and short.steps == 3 and not short.converged
    assert good.final_energy < short.final_energy < short.initial_energy
    with pytest.raises(ValueError, match="at least one step"):
        O.relax([rattled], steps=0)
