"""Constants and record layouts shared by the kernels and their callers.

Everything here is a plain int, tuple or NumPy dtype so that Numba freezes the
integers into compiled code and Python code can name columns without importing
Numba.
"""

from __future__ import annotations

import numpy as np

# --- metrics ----------------------------------------------------------------
# Column order of one result row: simulate_1d writes SPEC section 4's metrics (the first
# N_SIM_METRICS) and the full stats set (from M_CAGR_PCT on), run_grid adds the symbol's
# position in the time grid, a status and the warm-up between them.
METRIC_NAMES: tuple[str, ...] = (
    "final_value",
    "total_return_pct",
    "buy_hold_return_pct",
    "num_trades",
    "closed_trades",
    "win_rate_pct",
    "max_drawdown_pct",
    "sharpe",
    "exposure_pct",
    "final_value_net",
    "bars",
    "first_index",
    "last_index",
    "status",
    "warmup_bars",
    # The full stats set (README, "Behaviour where SPEC is silent": formulas), same pass.
    "cagr_pct",
    "annual_return_pct",
    "annual_volatility_pct",
    "sortino",
    "calmar",
    "max_drawdown_duration_bars",
    "avg_drawdown_pct",
    "best_trade_pct",
    "worst_trade_pct",
    "avg_trade_pct",
    "avg_trade_duration_bars",
    "max_trade_duration_bars",
    "profit_factor",
    "expectancy",
    "sqn",
    "fees_paid",
)
M_FINAL_VALUE = 0
M_TOTAL_RETURN_PCT = 1
M_BUY_HOLD_RETURN_PCT = 2
M_NUM_TRADES = 3
M_CLOSED_TRADES = 4
M_WIN_RATE_PCT = 5
M_MAX_DRAWDOWN_PCT = 6
M_SHARPE = 7
M_EXPOSURE_PCT = 8
# Cash plus the open position after a hypothetical exit fee at the last close.
M_FINAL_VALUE_NET = 9
M_BARS = 10
M_FIRST_INDEX = 11
M_LAST_INDEX = 12
M_STATUS = 13
# Bars before the --timerange start that the indicators warmed up on (no trade there).
M_WARMUP_BARS = 14
M_CAGR_PCT = 15
M_ANNUAL_RETURN_PCT = 16
M_ANNUAL_VOLATILITY_PCT = 17
M_SORTINO = 18
M_CALMAR = 19
M_MAX_DRAWDOWN_DURATION_BARS = 20
M_AVG_DRAWDOWN_PCT = 21
M_BEST_TRADE_PCT = 22
M_WORST_TRADE_PCT = 23
M_AVG_TRADE_PCT = 24
M_AVG_TRADE_DURATION_BARS = 25
M_MAX_TRADE_DURATION_BARS = 26
M_PROFIT_FACTOR = 27
M_EXPECTANCY = 28
M_SQN = 29
M_FEES_PAID = 30
N_SIM_METRICS = 11  # SPEC section 4's, at indices 0..10
# The stats set, in METRIC_NAMES order: result fields and results columns of their own names.
STATS_NAMES: tuple[str, ...] = METRIC_NAMES[M_CAGR_PCT:]
N_METRICS = len(METRIC_NAMES)

# --- status of one (symbol, combo) result -----------------------------------
STATUS_OK = 0
# Fewer bars than the strategy's warm-up: no signal can fire, so zero trades.
STATUS_TOO_FEW_BARS = 1
# The symbol has no bar at all in the requested range.
STATUS_NO_BARS = 2

STATUS_NAMES: dict[int, str] = {
    STATUS_OK: "ok",
    STATUS_TOO_FEW_BARS: "too_few_bars",
    STATUS_NO_BARS: "no_bars",
}

# --- execution: stops, sizing, slippage (SPEC 4.1) ------------------------------
# One parameter set's execution row, as the kernels take it (float64, fractions).
EX_SL = 0  # stop-loss below the stop base, a fraction (0 = none)
EX_TP = 1  # take-profit above the entry fill price, a fraction (0 = none)
EX_TRAIL = 2  # 1.0: the stop-loss base trails the highest high since the entry
EX_SIZE = 3  # share of equity committed at an entry, in (0, 1]
EX_SLIPPAGE = 4  # against the trader on market fills, a fraction
N_EXECUTION = 5

# Why a position was closed (the trade log's `reason` on sells, round trips' exit_reason).
EXIT_SIGNAL = 0
EXIT_STOP_LOSS = 1
EXIT_TAKE_PROFIT = 2
EXIT_TRAILING_STOP = 3
EXIT_END_OF_DATA = 4  # still open after the last bar: marked at the last close, not sold
EXIT_REASON_NAMES: dict[int, str] = {
    EXIT_SIGNAL: "signal",
    EXIT_STOP_LOSS: "stop_loss",
    EXIT_TAKE_PROFIT: "take_profit",
    EXIT_TRAILING_STOP: "trailing_stop",
    EXIT_END_OF_DATA: "end_of_data",
}

# --- trade log --------------------------------------------------------------
ACTION_BUY = 1
ACTION_SELL = -1

# One fill. `bar` is the bar index of the fill (compacted index inside
# simulate_1d; time-grid index in what a strategy kernel's run_single returns). `signal_bar`
# is the bar whose close produced the signal (differs from `bar` with
# fill=next_open). `value` is the cash spent including the fee for a buy and the
# net cash received for a sell. `indicator` is the strategy's indicator at the
# signal bar (see pipeline.engine.strategies.indicator_label), NaN for a stop exit. `reason` is
# an EXIT_* code on sells (EXIT_SIGNAL on buys). A stop exit's `signal_bar` is its own bar.
TRADE_DTYPE = np.dtype(
    [
        ("bar", np.int64),
        ("signal_bar", np.int64),
        ("action", np.int64),
        ("price", np.float64),
        ("units", np.float64),
        ("value", np.float64),
        ("fee", np.float64),
        ("indicator", np.float64),
        ("reason", np.int64),
    ],
    align=True,
)
