"""Numba kernels: indicators, crossing rules, simulation and the batch engine's template.

Pure functions over NumPy arrays (no pandas, no I/O, no configuration). Record
layouts and metric columns live in `enums`; `strategy_kernel.py` is the batch
kernel template that `pipeline.engine.strategies.compiler` compiles once per strategy.
"""

from pipeline.engine.kernels.enums import METRIC_NAMES, N_METRICS, STATUS_NAMES, TRADE_DTYPE

__all__ = [
    "METRIC_NAMES",
    "N_METRICS",
    "STATUS_NAMES",
    "TRADE_DTYPE",
]
