"""buy_and_hold: buy on the first bar and hold to the end (SPEC 3)."""

from pipeline.engine.strategies.api import njit

NAME = "buy_and_hold"
DESCRIPTION = "Buy on the first bar and hold to the end."
PARAMS = ()
COLUMNS = ("close",)
INDICATORS = ()
INDICATOR_PARAMS = ()
SIGNAL_VALUE = "close"


@njit(cache=True)
def indicators(prices, params, ind):
    pass


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value):
    # Hold whenever flat, never exit. An entry on every bar fills on the first bar simulated (and
    # is ignored while long), so a --timerange run buys at the range's first bar, not at the
    # history's, and an account that could not buy at once (portfolio slots) buys when it can.
    close = prices[0]
    for t in range(close.shape[0]):
        entries[t] = True
        exits[t] = False
        sig_value[t] = close[t]


@njit(cache=True)
def short_signals(prices, params, ind, enter_short, exit_short):
    # Futures, short: sell whenever flat and hold (the mirror of buying and holding). With --direction
    # both the two entries fire together on every bar, which opens nothing.
    for t in range(enter_short.shape[0]):
        enter_short[t] = True
        exit_short[t] = False


@njit(cache=True)
def warmup(params):
    return 1
