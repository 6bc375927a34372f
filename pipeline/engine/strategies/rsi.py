"""rsi: buy when Wilder's RSI crosses below oversold, sell when it crosses above overbought (SPEC 3)."""

from pipeline.engine.strategies.api import Param, cross_above, cross_below, fmt_number, njit, rsi_1d

NAME = "rsi"
DESCRIPTION = "Buy when Wilder's RSI crosses below oversold, sell when it crosses above overbought."
PARAMS = (
    Param("rsi_period", int, 14, "RSI lookback in bars (Wilder smoothing)", minimum=2),
    Param("oversold_threshold", float, 30.0, "buy when RSI crosses below this level", minimum=0, maximum=100),
    Param("overbought_threshold", float, 70.0, "sell when RSI crosses above this level", minimum=0, maximum=100),
)
COLUMNS = ("close",)
INDICATORS = ("rsi",)
INDICATOR_PARAMS = ("rsi_period",)
SIGNAL_VALUE = "rsi"
SHORT_RULE = "mirror"  # futures: its exit opens a short, its entry closes it


def CHECK(p):  # noqa: N802 - a declaration, named like the others
    if p["oversold_threshold"] >= p["overbought_threshold"]:
        return (f"oversold_threshold={fmt_number(p['oversold_threshold'])} must be less than "
                f"overbought_threshold={fmt_number(p['overbought_threshold'])}")
    return None


@njit(cache=True)
def indicators(prices, params, ind):
    rsi_1d(prices[0], int(params[0]), ind[0])


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value):
    # The shape of kernels.signals.lines_cross_signals, but RSI crosses fixed levels the other way
    # round (below oversold enters, above overbought exits): a rule of its own, kept in its file.
    rsi = ind[0]
    oversold = params[1]
    overbought = params[2]
    n = rsi.shape[0]
    if n > 0:
        entries[0] = False
        exits[0] = False
        sig_value[0] = rsi[0]
    for t in range(1, n):
        entries[t] = cross_below(rsi[t - 1], rsi[t], oversold, oversold)
        exits[t] = cross_above(rsi[t - 1], rsi[t], overbought, overbought)
        sig_value[t] = rsi[t]


@njit(cache=True)
def warmup(params):
    # The first RSI value is at index period; a crossing needs it and the one before.
    return int(params[0]) + 2
