"""cryptobt: PostgreSQL -> Parquet lake -> DuckDB -> Numba kernels -> Redis + results table."""

from pipeline import allocator as _allocator
from pipeline import imports as _imports

# Before numba, pyarrow or redis load: what they would import unasked stays out (see pipeline/imports.py).
_imports.install()
# Before the kernels allocate: their freed buffers are reused, not given back and faulted in (pipeline/allocator.py).
_allocator.configure()

__version__ = "0.1.0"

# Bumped whenever a change to the kernels, strategies or result shaping can change
# a result: it is part of every cache key, so a code change never serves an old result.
# 2: equity curves start at the initial cash, observed annualisation, warm-up before --timerange.
ENGINE_VERSION = "2"


def __getattr__(name: str):  # the notebook API, imported on first use (the CLI never pays for it)
    if name in ("run_backtest", "run_portfolio", "run_signals", "round_trips", "plot", "prices"):
        from pipeline import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
