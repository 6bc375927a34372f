import sys

from pipeline.cli import main

# Guarded: a local Dask cluster's worker processes (`sweep --workers`) start by importing this module.
if __name__ == "__main__":
    sys.exit(main())
