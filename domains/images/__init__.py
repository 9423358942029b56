"""Images domain: class-conditional generation of scikit-learn's 8x8 digits with a UNet2D.

``sciffusion train configs/images/digits.yaml`` trains; ``sciffusion sample RUN_DIR`` writes a PNG grid
of class-conditional samples (one row per digit); ``sciffusion evaluate RUN_DIR`` writes accuracy and
Frechet distance (classifier features) beside the real-train-vs-real-test floor.
"""
from sciffusion.domains.images.domain import ImagesDomain

__all__ = ["ImagesDomain"]
