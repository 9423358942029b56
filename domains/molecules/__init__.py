"""The molecules domain: 3-D molecular graphs (positions with zero centre of mass, atom types, formal charges),
QM9 with EDM's protocol, EDM's stability / validity metrics, EGNN and e3nn networks, the GFN2-xTB oracle.

``sciffusion train configs/molecules/qm9.yaml`` trains on QM9 (from the pip package ``qm9pack``);
``sciffusion sample RUN_DIR --n 1000 --out mols.sdf`` writes molecules (SDF, a PNG grid and a CSV);
``sciffusion evaluate RUN_DIR`` computes EDM's metrics.
"""
from sciffusion.domains.molecules import nets  # noqa: F401  (registers the egnn and e3nn_tp nets)
from sciffusion.domains.molecules.domain import MoleculesDomain

__all__ = ["MoleculesDomain"]
