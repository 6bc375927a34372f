"""donchian: Donchian channel breakout, the template for writing your own strategy.

Copy this file into a folder of your own and run it with
`cryptobt backtest donchian --strategy-path THAT_FOLDER --all`. It uses only
the public strategy API (`pipeline.engine.strategies.api`); the engine does the rest:
every symbol in parallel, sweeps that reuse each indicator, stops, the cache and
the results table.

Entry (flat -> long) when the close breaks above the highest high of the
previous `entry_period` bars; exit (long -> flat) when the close breaks below
the lowest low of the previous `exit_period` bars. The first
max(entry_period, exit_period) bars are warm-up: no signal before.
"""

import numpy as np

from pipeline.engine.strategies.api import Param, njit

NAME = "donchian"
DESCRIPTION = "Buy when the close breaks the highest high of entry_period bars, sell below the lowest low of exit_period."
PARAMS = (
    Param("entry_period", int, 20, "bars whose highest high the close must break to enter", minimum=1),
    Param("exit_period", int, 10, "bars whose lowest low the close must break to exit", minimum=1),
)
COLUMNS = ("high", "low", "close")  # rows of `prices`, in this order
INDICATORS = ("upper", "lower")  # rows of `ind`
# What each indicator depends on: a sweep keeps each distinct one and shares it across the sets.
INDICATOR_PARAMS = {"upper": ("entry_period",), "lower": ("exit_period",)}
SIGNAL_VALUE = "upper"  # the value written to the trade log


@njit(cache=True)
def _rolling_extreme_before(x, period, want_max, out):
    """out[t] = max (or min) of x[t-period .. t-1]; NaN while fewer than `period` bars precede t.

    Van Herk / Gil-Werman: cut the bars into blocks of `period`; `ahead[i]` is the extreme from i's block
    start to i, `behind[i]` from i to its block end. A window of `period` bars is the tail of one block and
    the head of the next, so out[t] = extreme(behind[t - period], ahead[t - 1]): three branch-free passes,
    the same cost whatever the period. The minimum is the maximum of -x (negation is exact).
    """
    n = x.shape[0]
    sign = 1.0 if want_max else -1.0
    ahead = np.empty(n)
    behind = np.empty(n)
    for block in range(0, n, period):
        last = min(block + period, n) - 1
        ahead[block] = sign * x[block]
        for i in range(block + 1, last + 1):
            ahead[i] = max(ahead[i - 1], sign * x[i])
        behind[last] = sign * x[last]
        for i in range(last - 1, block - 1, -1):
            behind[i] = max(behind[i + 1], sign * x[i])
    for t in range(min(period, n)):
        out[t] = np.nan
    for t in range(period, n):
        out[t] = sign * max(behind[t - period], ahead[t - 1])


@njit(cache=True)
def indicators(prices, params, ind):
    _rolling_extreme_before(prices[0], int(params[0]), True, ind[0])
    _rolling_extreme_before(prices[1], int(params[1]), False, ind[1])


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value):
    close = prices[2]
    first = max(int(params[0]), int(params[1]))
    for t in range(close.shape[0]):
        ready = t >= first
        entries[t] = ready and close[t] > ind[0, t]
        exits[t] = ready and close[t] < ind[1, t]
        sig_value[t] = ind[0, t]


@njit(cache=True)
def warmup(params):
    # Bars a symbol needs before the first signal can fire: the warm-up bars plus the signal bar.
    return max(int(params[0]), int(params[1])) + 1
