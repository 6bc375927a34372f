"""ma_crossover: buy when the fast SMA crosses above the slow SMA, sell when it crosses below (SPEC 3)."""

from pipeline.engine.strategies.api import Param, fast_below_slow, lines_cross_signals, njit, sma_1d

NAME = "ma_crossover"
DESCRIPTION = "Buy when the fast SMA crosses above the slow SMA, sell when it crosses below."
PARAMS = (
    Param("fast_period", int, 10, "fast simple moving average length in bars", minimum=1),
    Param("slow_period", int, 30, "slow simple moving average length in bars", minimum=1),
)
COLUMNS = ("close",)
INDICATORS = ("fast_sma", "slow_sma")
INDICATOR_PARAMS = {"fast_sma": ("fast_period",), "slow_sma": ("slow_period",)}
SIGNAL_VALUE = "fast_sma"
SHORT_RULE = "mirror"  # futures: its exit opens a short, its entry closes it
CHECK = fast_below_slow


@njit(cache=True)
def indicators(prices, params, ind):
    sma_1d(prices[0], int(params[0]), ind[0])
    sma_1d(prices[0], int(params[1]), ind[1])


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value):
    lines_cross_signals(ind[0], ind[1], entries, exits, sig_value)


@njit(cache=True)
def warmup(params):
    return max(int(params[0]), int(params[1])) + 1
