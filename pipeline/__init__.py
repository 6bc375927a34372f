"""cryptobt: PostgreSQL -> Parquet lake -> DuckDB -> Numba kernels -> Redis + results table."""

from pipeline.core import allocator as _allocator
from pipeline.core import import_guard as _imports

# Before numba, pyarrow or redis load: what they would import unasked stays out (see pipeline/core/import_guard.py).
_imports.install()
# Before the kernels allocate: their freed buffers are reused, not given back and faulted in (pipeline/core/allocator.py).
_allocator.configure()

from pipeline.core.versions import ENGINE_VERSION, __version__  # noqa: E402,F401  (after the process set-up above)


def __getattr__(name: str):  # the notebook API, imported on first use (the CLI never pays for it)
    if name in ("run_backtest", "run_portfolio", "run_signals", "round_trips", "plot", "prices", "sweep_statistics",
                "daily_returns"):
        from pipeline import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
