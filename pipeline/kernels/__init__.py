"""Numba kernels: indicators, signals, simulation and the batch engine.

Pure functions over NumPy arrays (no pandas, no I/O, no configuration). Record
layouts, metric columns and strategy codes live in `enums`.
"""

from pipeline.kernels.batch import indicators_single, run_grid, run_single
from pipeline.kernels.enums import METRIC_NAMES, N_METRICS, STATUS_NAMES, TRADE_DTYPE

__all__ = [
    "METRIC_NAMES",
    "N_METRICS",
    "STATUS_NAMES",
    "TRADE_DTYPE",
    "indicators_single",
    "run_grid",
    "run_single",
]
