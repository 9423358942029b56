"""Generic task adapters over the core model: imputation by inpainting (:mod:`sciffusion.tasks.impute`)."""
