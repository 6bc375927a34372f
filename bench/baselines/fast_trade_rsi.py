"""Baseline: fast-trade 3.0 (a Polars-native backtester) on the same aligned close array as ours.

Of the two Polars-native engines issue 17 names, this is the one whose semantics can be
matched: fast-trade's simulation is readable Python/Numba (below). polars-backtest
0.1.7 runs its simulation in a compiled Rust core, and its Python layer
(namespace.py) shows a Finlab-style portfolio: one account over all symbols, positions
as weights normalised across them, rebalanced daily by default, a fee and a sell tax
on traded weight; not SPEC's all-in account per symbol.

    run_rsi(close, period, oversold, overbought, fee_pct, initial)

fast-trade runs one symbol per call (`fast_trade.run_backtest(strategy, df=frame)`:
a Polars frame in, the frame with actions and account columns out), so the
benchmark calls it once per symbol. Its semantics, read from its source
(run_backtest.py, run_analysis.py, build_data_frame.py), and how each is matched
to SPEC sections 3 and 4:

- Fills. An action fills at the close of the bar whose row fired it
  (`_simulate_account_path_kernel` reads `close_prices[i]` on the action's row):
  SPEC's fill at the signal bar's close. Matched as is.
- Sizing. `lot_size` 1 puts all the cash in (`cash * lot_size / close` units),
  one position at a time, further entries ignored while in a trade: SPEC's
  all-in / all-out. Matched as is.
- Fees. `comission` is a percentage: a buy keeps `cash / close * (1 - f)` units
  (the fee taken in units), a sell returns `units * close * (1 - f)`; both are
  SPEC's formulas exactly. Matched as is.
- Final value. The last row's `adj_account_value` (cash + units x close, rounded
  to 8 decimals by fast-trade) with `exit_on_end` off: SPEC's open position
  marked at the last close. The rounding moves a value by up to 5e-9: 1e-9
  relative above a final value of 5, more below (a symbol ending at 3.33 of its
  1,000 differs by 1.3e-9 relatively, 4.3e-9 absolutely).
- Gaps. fast-trade puts every frame on a regular time grid (`upsample`), so a
  missing hour would become a row with a null close. SPEC says a missing bar is
  not a bar, so each symbol's own bars are handed over as consecutive hours
  (the same compaction as the vectorbt baseline).
- RSI and crossings: not matched with fast-trade's own means, so handed in.
  Its `rsi` transformer is finta's `TA.RSI`, an EWM of the raw changes that is
  not seeded with the mean of the first `period` changes as TA-Lib (and SPEC)
  seed it, so early crossings move; and its rule language has no crossing (a
  rule's 4th element means "true on each of the last N frames", and any rule
  with it sends the actions through a Python row loop). So the frame carries
  TA-Lib's RSI and the previous bar's RSI as columns, and the rules are
  `rsi < oversold and rsi_prev >= oversold` (enter) and
  `rsi > overbought and rsi_prev <= overbought` (exit), which fast-trade
  evaluates vectorised. The RSI is computed inside the timed call.
- The run. `run_backtest(strategy, df=frame)` first validates the strategy and
  refuses any rule column that is not OHLCV or the name of one of its own
  transformers, so the columns handed in cannot pass it. The benchmark runs the
  steps run_backtest runs after that check, through the same functions:
  `prepare_new_backtest` (defaults), `prepare_df` (time grid, transformers: none
  here) and `apply_backtest_to_df` (vectorised actions, then its Numba account
  kernel). Summary statistics are not built (run_backtest's `summary=False`):
  the final value and the entries are read from the frame, the least work
  fast-trade can do.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import talib
from fast_trade import prepare_df
from fast_trade.run_backtest import apply_backtest_to_df, prepare_new_backtest

from bench.baselines._grid import compact

# Consecutive hours for the bars handed over; fast-trade needs a datetime column.
_EPOCH = datetime(2000, 1, 1)


def _strategy(oversold: float, overbought: float, fee_pct: float, initial: float) -> dict:
    return prepare_new_backtest({
        "freq": "1h",
        "start": None,
        "datapoints": [],
        "base_balance": float(initial),
        "comission": float(fee_pct),
        "lot_size": 1,
        "exit_on_end": False,
        "enter": [["rsi", "<", float(oversold)], ["rsi_prev", ">=", float(oversold)]],
        "exit": [["rsi", ">", float(overbought)], ["rsi_prev", "<=", float(overbought)]],
    })


def hours(n: int) -> pl.Series:
    """`n` consecutive hours from 2000-01-01 (the dates of the bars handed over)."""
    return pl.datetime_range(_EPOCH, _EPOCH + timedelta(hours=max(n, 1) - 1), "1h", eager=True)


def run_one(bars: np.ndarray, period: int, strategy: dict, dates: pl.Series) -> tuple[float, int]:
    """fast-trade over one symbol's bars (no NaN), dated by the first len(bars) of `dates`:
    (final value, number of entries)."""
    n = len(bars)
    rsi = talib.RSI(bars, timeperiod=period)
    frame = pl.DataFrame({
        "date": dates[:n],
        "open": bars, "high": bars, "low": bars, "close": bars, "volume": np.zeros(n),
        "rsi": rsi, "rsi_prev": np.concatenate([[np.nan], rsi[:-1]]),
    })
    done = apply_backtest_to_df(prepare_df(frame, strategy), strategy)
    in_trade = done["in_trade"].to_numpy()
    entries = int(in_trade[0]) + int(np.sum(in_trade[1:] & ~in_trade[:-1]))
    return float(done["adj_account_value"][-1]), entries


def run_rsi(
    close: np.ndarray,
    period: int = 14,
    oversold: float = 30,
    overbought: float = 70,
    fee_pct: float = 0.1,
    initial: float = 1000.0,
) -> dict[str, np.ndarray]:
    """fast-trade RSI strategy over (symbols x time) closes with NaN gaps, one call per symbol.

    Returns {"final_value": float64[symbols], "num_trades": int64[symbols]} (entries).
    """
    packed, bars = compact(close)
    strategy = _strategy(oversold, overbought, fee_pct, initial)
    final_value = np.full(packed.shape[0], float(initial))
    num_trades = np.zeros(packed.shape[0], np.int64)
    dates = hours(packed.shape[1])
    for i in range(packed.shape[0]):
        if bars[i] >= 2:  # fast-trade infers the frequency from the dates: two rows at least
            final_value[i], num_trades[i] = run_one(packed[i, : bars[i]], period, strategy, dates)
    return {"final_value": final_value, "num_trades": num_trades}
