"""``python -m sciffusion.domains.timeseries OUT.csv [--dataset weather|pbcseq]``: export an embedded data set."""
from sciffusion.domains.timeseries.datasets import main

raise SystemExit(main())
