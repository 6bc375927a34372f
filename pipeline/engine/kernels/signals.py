"""Crossing rules shared by strategies' signal functions (SPEC section 3).

A crossing at bar t compares bar t with bar t-1 of the same series; if any of
the four values is NaN (warm-up) there is no signal. Each strategy's own
`signals` function (pipeline/engine/strategies/) applies them.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def cross_below(a_prev: float, a_now: float, b_prev: float, b_now: float) -> bool:
    """a crosses below b at this bar: a[t] < b[t] and a[t-1] >= b[t-1] (False if any NaN)."""
    # NaN compares False, so the rule itself already yields False on NaN.
    return a_now < b_now and a_prev >= b_prev


@njit(cache=True)
def cross_above(a_prev: float, a_now: float, b_prev: float, b_now: float) -> bool:
    """a crosses above b at this bar: a[t] > b[t] and a[t-1] <= b[t-1] (False if any NaN)."""
    return a_now > b_now and a_prev <= b_prev


@njit(cache=True)
def lines_cross_signals(line: np.ndarray, other: np.ndarray, entries: np.ndarray, exits: np.ndarray,
                        sig_value: np.ndarray) -> None:
    """Entry when `line` crosses above `other`, exit when it crosses below; logs `line`.

    The rule of ma_crossover (fast SMA vs slow SMA) and macd (MACD line vs signal line).
    """
    n = line.shape[0]
    if n > 0:
        entries[0] = False
        exits[0] = False
        sig_value[0] = line[0]
    for t in range(1, n):
        entries[t] = cross_above(line[t - 1], line[t], other[t - 1], other[t])
        exits[t] = cross_below(line[t - 1], line[t], other[t - 1], other[t])
        sig_value[t] = line[t]
