"""macd: buy when the MACD line crosses above its signal line, sell when it crosses below (SPEC 3)."""

from pipeline.engine.strategies.api import (
    Param,
    fast_below_slow,
    lines_cross_signals,
    macd_1d,
    njit,
)

NAME = "macd"
DESCRIPTION = "Buy when the MACD line crosses above its signal line, sell when it crosses below."
PARAMS = (
    # TA-Lib's MACD refuses periods of 1, and a 1-bar signal line equals the MACD line:
    # it could never cross it.
    Param("fast_period", int, 12, "fast EMA length in bars", minimum=2),
    Param("slow_period", int, 26, "slow EMA length in bars", minimum=2),
    Param("signal_period", int, 9, "signal line EMA length in bars", minimum=2),
)
COLUMNS = ("close",)
INDICATORS = ("macd", "signal")
INDICATOR_PARAMS = ("fast_period", "slow_period", "signal_period")
SIGNAL_VALUE = "macd"
SHORT_RULE = "mirror"  # futures: its exit opens a short, its entry closes it
CHECK = fast_below_slow


@njit(cache=True)
def indicators(prices, params, ind):
    macd_1d(prices[0], int(params[0]), int(params[1]), int(params[2]), ind[0], ind[1])


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value):
    lines_cross_signals(ind[0], ind[1], entries, exits, sig_value)


@njit(cache=True)
def warmup(params):
    return max(int(params[0]), int(params[1])) + int(params[2])
