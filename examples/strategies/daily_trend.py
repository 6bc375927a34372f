"""daily_trend: hourly moving-average crosses, taken only after an up day: a strategy reading a slower interval.

`INFORMATIVE = ("1d",)` gives `indicators` and `signals` one more argument, `informative`, where
`informative[0, j, t]` is COLUMNS[j] of the last daily bar that has closed by the close of bar t (NaN
before the first): the day D's bar is first seen by the hourly bar labelled D 23:00, whose close is
D+1 00:00, never earlier (merging daily bars onto hourly ones by date would show each hour its own
day's close, hours before it happened). Run it with
`cryptobt backtest daily_trend --strategy-path examples/strategies --all`.

Entry (flat -> long) when the close crosses above its `period`-bar simple moving average and the last
closed day was an up day (its close above its open); exit when the close crosses below the average.
"""

from pipeline.engine.strategies.api import Param, cross_above, cross_below, njit, sma_1d

NAME = "daily_trend"
DESCRIPTION = "Buy a close crossing above its moving average after an up day; sell when it crosses below."
PARAMS = (Param("period", int, 24, "bars of the moving average", minimum=2),)
COLUMNS = ("open", "close")  # rows of `prices`, and of each informative series in `informative`
INFORMATIVE = ("1d",)  # the run's own symbol at 1d; ("BTC_USDT", "1d") would read another symbol's days
INDICATORS = ("sma",)
INDICATOR_PARAMS = ("period",)


@njit(cache=True)
def indicators(prices, params, ind, informative):
    sma_1d(prices[1], int(params[0]), ind[0])


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value, informative):
    close = prices[1]
    day_open = informative[0, 0]
    day_close = informative[0, 1]
    entries[0] = False
    exits[0] = False
    sig_value[0] = ind[0, 0]
    for t in range(1, close.shape[0]):
        up_day = day_close[t] > day_open[t]  # False before the first closed day (NaN)
        entries[t] = up_day and cross_above(close[t - 1], close[t], ind[0, t - 1], ind[0, t])
        exits[t] = cross_below(close[t - 1], close[t], ind[0, t - 1], ind[0, t])
        sig_value[t] = ind[0, t]


@njit(cache=True)
def warmup(params):
    return int(params[0]) + 1
