"""``python -m sciffusion`` runs the command-line interface."""
from sciffusion.cli import main

raise SystemExit(main())
