"""Data representations shared by domains: ragged graph batches (:mod:`sciffusion.reps.graph`)."""
