"""Pieces of the batch engine that every strategy's kernel shares.

The per-strategy kernels (`run_grid`, `run_single`, ...) are in
`strategy_kernel.py`, a template compiled once per strategy with that
strategy's Numba functions bound in (see `pipeline.engine.strategies.compiler`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pipeline.engine.kernels.enums import (
    M_BARS,
    M_FIRST_INDEX,
    M_LAST_INDEX,
    M_STATUS,
    M_WARMUP_BARS,
    STATUS_NO_BARS,
    STATUS_OK,
    STATUS_TOO_FEW_BARS,
)


@njit(cache=True)
def compact_bars(open_row, close_row, open_buf, close_buf, index):
    """Copy the bars of one symbol (close not NaN) to the front of the buffers; return their count."""
    m = 0
    for t in range(close_row.shape[0]):
        if not np.isnan(close_row[t]):
            open_buf[m] = open_row[t]
            close_buf[m] = close_row[t]
            index[m] = t
            m += 1
    return m


@njit(cache=True)
def gather_row(row, index, out):
    """out[j] = row[index[j]]: one price column of a symbol at its bars."""
    for j in range(out.shape[0]):
        out[j] = row[index[j]]


@njit(cache=True)
def first_at_or_after(index, m, start_t):
    """The first compacted bar at or after grid column `start_t` (m when there is none)."""
    j = 0
    while j < m and index[j] < start_t:
        j += 1
    return j


@njit(cache=True)
def finish_row(metrics, m0, m, index, warmup):
    """Add the symbol's place in the time grid, its warm-up bars and the status to a metrics row
    (the M_* slots: enums.METRIC_NAMES).

    Bars m0..m-1 are the range simulated; bars before m0 only warmed the indicators up.
    """
    if m > m0:
        metrics[M_FIRST_INDEX] = index[m0]
        metrics[M_LAST_INDEX] = index[m - 1]
    else:
        metrics[M_FIRST_INDEX] = -1
        metrics[M_LAST_INDEX] = -1
    metrics[M_BARS] = m - m0
    metrics[M_WARMUP_BARS] = m0
    if m == m0:
        metrics[M_STATUS] = STATUS_NO_BARS
    elif m < warmup:
        metrics[M_STATUS] = STATUS_TOO_FEW_BARS
    else:
        metrics[M_STATUS] = STATUS_OK
