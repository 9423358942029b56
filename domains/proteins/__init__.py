"""The proteins domain: backbones as one rigid frame per residue (``trans`` CA positions on a zero-centre-of-mass
process, ``rots`` on an SO(3) process), an invariant-point-attention network, PDB / mmCIF input and PDB output,
unconditional sampling, motif scaffolding by inpainting, guidance toward secondary structure or radius of gyration,
and offline metrics.

``sciffusion train configs/proteins/frames.yaml data.dir=DIR`` trains on a folder of PDB / mmCIF files (default: the
structures shipped in the ``mdanalysistests`` wheel); ``sciffusion sample RUN_DIR --length 80 --n 10 --out DIR``
writes backbones as PDB; ``sciffusion design RUN_DIR --motif motif.pdb:A10-25 --length 100 --out DIR`` scaffolds a
motif; ``sciffusion evaluate RUN_DIR`` computes the metrics.
"""
from sciffusion.domains.proteins import nets  # noqa: F401  (registers the frame_ipa net)
from sciffusion.domains.proteins.domain import ProteinsDomain

__all__ = ["ProteinsDomain"]
