"""Entry/exit signals (SPEC section 3) as Numba kernels.

A crossing at bar t compares bar t with bar t-1 of the same series; if any of
the four values is NaN (warm-up) there is no signal. Entry signals take a flat
book long, exit signals take a long book flat; the simulator ignores a signal
that would not change the state.

Every `*_signals_1d` writes three arrays of the series' length: `entries`,
`exits` (bool) and `sig_value`, the indicator value the trade log records for a
signal at that bar (see pipeline.strategies.indicator_label).

`strategy_signals_1d` is the signal dispatch of the batch engine and
`warmup_bars_nb` the number of bars a strategy needs before its first signal
can fire; both have one branch per strategy code.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pipeline.kernels.enums import (
    STRAT_BOLLINGER,
    STRAT_BUY_AND_HOLD,
    STRAT_MA_CROSSOVER,
    STRAT_MACD,
    STRAT_RSI,
)

# --- crossing rules -------------------------------------------------------------


@njit(cache=True)
def cross_below(a_prev: float, a_now: float, b_prev: float, b_now: float) -> bool:
    """a crosses below b at this bar: a[t] < b[t] and a[t-1] >= b[t-1] (False if any NaN)."""
    # NaN compares False, so the rule itself already yields False on NaN.
    return a_now < b_now and a_prev >= b_prev


@njit(cache=True)
def cross_above(a_prev: float, a_now: float, b_prev: float, b_now: float) -> bool:
    """a crosses above b at this bar: a[t] > b[t] and a[t-1] <= b[t-1] (False if any NaN)."""
    return a_now > b_now and a_prev <= b_prev


# --- per-strategy signals ---------------------------------------------------------


@njit(cache=True)
def rsi_signals_1d(
    rsi: np.ndarray,
    oversold: float,
    overbought: float,
    entries: np.ndarray,
    exits: np.ndarray,
    sig_value: np.ndarray,
) -> None:
    """Entry: RSI crosses below `oversold`. Exit: RSI crosses above `overbought`."""
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
def ma_crossover_signals_1d(
    fast: np.ndarray,
    slow: np.ndarray,
    entries: np.ndarray,
    exits: np.ndarray,
    sig_value: np.ndarray,
) -> None:
    """Entry: fast SMA crosses above slow SMA. Exit: fast SMA crosses below slow SMA."""
    n = fast.shape[0]
    if n > 0:
        entries[0] = False
        exits[0] = False
        sig_value[0] = fast[0]
    for t in range(1, n):
        entries[t] = cross_above(fast[t - 1], fast[t], slow[t - 1], slow[t])
        exits[t] = cross_below(fast[t - 1], fast[t], slow[t - 1], slow[t])
        sig_value[t] = fast[t]


@njit(cache=True)
def bollinger_signals_1d(
    close: np.ndarray,
    middle: np.ndarray,
    std: np.ndarray,
    nbdev: float,
    entries: np.ndarray,
    exits: np.ndarray,
    sig_value: np.ndarray,
) -> None:
    """Entry: close crosses below the lower band. Exit: close crosses above the upper band.

    Bands are `middle -/+ std * nbdev`, the same arithmetic as TA-Lib's BBANDS.
    The recorded value is the lower band at entries and the upper band elsewhere.
    """
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
def macd_signals_1d(
    macd: np.ndarray,
    signal: np.ndarray,
    entries: np.ndarray,
    exits: np.ndarray,
    sig_value: np.ndarray,
) -> None:
    """Entry: MACD line crosses above its signal line. Exit: crosses below."""
    n = macd.shape[0]
    if n > 0:
        entries[0] = False
        exits[0] = False
        sig_value[0] = macd[0]
    for t in range(1, n):
        entries[t] = cross_above(macd[t - 1], macd[t], signal[t - 1], signal[t])
        exits[t] = cross_below(macd[t - 1], macd[t], signal[t - 1], signal[t])
        sig_value[t] = macd[t]


@njit(cache=True)
def buy_and_hold_signals_1d(
    close: np.ndarray, entries: np.ndarray, exits: np.ndarray, sig_value: np.ndarray
) -> None:
    """Hold whenever flat, never exit. The recorded value is the close.

    An entry on every bar fills on the first bar simulated (and is ignored while long), so
    a --timerange run buys at the range's first bar, not at the history's, and an account
    that could not buy at once (portfolio slots) buys when it can.
    """
    n = close.shape[0]
    for t in range(n):
        entries[t] = True
        exits[t] = False
        sig_value[t] = close[t]


# --- strategy dispatch --------------------------------------------------------------


@njit(cache=True)
def strategy_signals_1d(
    code: int,
    close: np.ndarray,
    params: np.ndarray,
    buf0: np.ndarray,
    buf1: np.ndarray,
    buf2: np.ndarray,
    entries: np.ndarray,
    exits: np.ndarray,
    sig_value: np.ndarray,
) -> None:
    """Signals of strategy `code` from the buffers `indicators.strategy_indicators_1d` filled."""
    if code == STRAT_RSI:
        rsi_signals_1d(buf0, params[1], params[2], entries, exits, sig_value)
    elif code == STRAT_MA_CROSSOVER:
        ma_crossover_signals_1d(buf0, buf1, entries, exits, sig_value)
    elif code == STRAT_BOLLINGER:
        bollinger_signals_1d(close, buf0, buf1, params[1], entries, exits, sig_value)
    elif code == STRAT_MACD:
        macd_signals_1d(buf0, buf1, entries, exits, sig_value)
    elif code == STRAT_BUY_AND_HOLD:
        buy_and_hold_signals_1d(close, entries, exits, sig_value)
    else:
        entries[:] = False
        exits[:] = False
        sig_value[:] = np.nan


@njit(cache=True)
def warmup_bars_nb(code: int, params: np.ndarray) -> int:
    """Bars a symbol needs before the strategy's first signal can fire.

    A crossing needs the indicator at t and t-1, so this is the index of the
    first valid indicator value plus 2. With fewer bars no signal can fire.
    """
    if code == STRAT_RSI:
        return int(params[0]) + 2
    elif code == STRAT_MA_CROSSOVER:
        return max(int(params[0]), int(params[1])) + 1
    elif code == STRAT_BOLLINGER:
        return int(params[0]) + 1
    elif code == STRAT_MACD:
        return max(int(params[0]), int(params[1])) + int(params[2])
    elif code == STRAT_BUY_AND_HOLD:
        return 1
    return 1
