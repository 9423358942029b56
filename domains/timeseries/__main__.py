"""``python -m sciffusion.domains.timeseries OUT.csv``: export the embedded weather data set as a wide file."""
from sciffusion.domains.timeseries.datasets import main

raise SystemExit(main())
