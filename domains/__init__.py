"""Domain adapters, imported as ``sciffusion.domains.<name>``: files <-> representations, metrics, oracles."""
