"""Placing rows read from the lake onto the (symbols x time) grid: one parallel pass, no temporaries."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def scatter_to_grid(symbol_ids: np.ndarray, ts_us: np.ndarray, values: np.ndarray, row_of: np.ndarray,
                    t0_us: int, step_us: int, out: np.ndarray) -> None:
    """out[row_of[symbol_ids[i]], (ts_us[i] - t0_us) // step_us] = values[i].

    `out` is prefilled with NaN (no bar). Every (symbol, ts) occurs once in a snapshot,
    so parallel iterations never write the same cell.
    """
    for i in prange(symbol_ids.shape[0]):
        out[row_of[symbol_ids[i]], (ts_us[i] - t0_us) // step_us] = values[i]
