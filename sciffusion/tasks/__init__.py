"""Generic task adapters over the core model (imputation)."""
