"""The materials domain: periodic crystals (fractional coordinates on the torus, a lattice that does not depend on
the Cartesian frame, atom types) for structure prediction, de novo generation and property-guided design; CDVAE /
DiffCSP metrics and the CHGNet oracle.

``sciffusion train configs/materials/perov5_csp.yaml`` trains structure prediction on Perov-5;
``sciffusion sample RUN_DIR --composition SrTiO3 --n 20 --out dir/`` writes CIF files, a CSV summary and a PNG;
``sciffusion evaluate RUN_DIR`` computes the match rate (structure prediction) or validity and coverage (de novo).
"""
from sciffusion.domains.materials import nets  # noqa: F401  (registers the crystal_gnn net)
from sciffusion.domains.materials.domain import MaterialsDomain

__all__ = ["MaterialsDomain"]
