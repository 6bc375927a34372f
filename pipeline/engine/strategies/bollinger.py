"""bollinger: buy when the close crosses below the lower band, sell when it crosses above the upper (SPEC 3)."""

import numpy as np

from pipeline.engine.strategies.api import Param, bb_std_1d, cross_above, cross_below, njit

NAME = "bollinger"
DESCRIPTION = "Buy when the close crosses below the lower band, sell when it crosses above the upper band."
PARAMS = (
    # A 1-bar band has zero width: the close can never cross it, so it could never trade.
    Param("bb_period", int, 20, "moving average / standard deviation window in bars", minimum=2),
    Param("bb_std", float, 2.0, "band width in population standard deviations", minimum=0,
          minimum_inclusive=False),
)
COLUMNS = ("close",)
# The bands depend on bb_std and are formed in the signal step, so a bb_std sweep shares these.
INDICATORS = ("middle_band", "std")
INDICATOR_PARAMS = ("bb_period",)
SIGNAL_VALUE = "bollinger_band"  # the lower band on entries, the upper band elsewhere
SHORT_RULE = "mirror"  # futures: its exit opens a short, its entry closes it


@njit(cache=True)
def indicators(prices, params, ind):
    bb_std_1d(prices[0], int(params[0]), ind[0], ind[1])


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value):
    # Bands are middle -/+ std * nbdev, the same arithmetic as TA-Lib's BBANDS.
    close = prices[0]
    middle = ind[0]
    std = ind[1]
    nbdev = params[1]
    n = close.shape[0]
    prev_upper = np.nan
    prev_lower = np.nan
    for t in range(n):
        width = std[t] * nbdev
        upper = middle[t] + width
        lower = middle[t] - width
        if t == 0:
            entries[t] = False
            exits[t] = False
        else:
            entries[t] = cross_below(close[t - 1], close[t], prev_lower, lower)
            exits[t] = cross_above(close[t - 1], close[t], prev_upper, upper)
        sig_value[t] = lower if entries[t] else upper
        prev_upper = upper
        prev_lower = lower


@njit(cache=True)
def warmup(params):
    return int(params[0]) + 1
