"""Constants and record layouts shared by the kernels and their callers.

Everything here is a plain int, tuple or NumPy dtype so that Numba freezes the
integers into compiled code and Python code can name columns without importing
Numba.
"""

from __future__ import annotations

import numpy as np

from pipeline.core import metrics

# --- metrics ----------------------------------------------------------------
# Column order of one result row of the single-symbol kernels: run_grid's three columns (the
# symbol's first and last position in the time grid and a status), then every metric of the table
# (pipeline/core/metrics.py) that the kernels write, in the table's order. `M_<NAME>` is each
# column's number, a module-level int that Numba freezes into the compiled kernels.
METRIC_NAMES: tuple[str, ...] = ("first_index", "last_index", "status",
                                 *(m.name for m in metrics.METRICS if m.single))
# SPEC section 4's metrics and the full stats set (README: formulas; contiguous columns).
SPEC_METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in metrics.METRICS if m.single and m.spec)
STATS_NAMES: tuple[str, ...] = tuple(m.name for m in metrics.METRICS if m.stats)
N_METRICS = len(METRIC_NAMES)
# One portfolio account's row (simulate_portfolio): `P_<NAME>` for each.
PORTFOLIO_METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in metrics.METRICS if m.portfolio)
N_PORTFOLIO_METRICS = len(PORTFOLIO_METRIC_NAMES)
METRIC_SLOTS: dict[str, int] = {name: slot for slot, name in enumerate(METRIC_NAMES)}
PORTFOLIO_SLOTS: dict[str, int] = {name: slot for slot, name in enumerate(PORTFOLIO_METRIC_NAMES)}
globals().update({f"M_{name.upper()}": slot for name, slot in METRIC_SLOTS.items()})
globals().update({f"P_{name.upper()}": slot for name, slot in PORTFOLIO_SLOTS.items()})

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
EX_LEVERAGE = 5  # futures: notional / margin at entry, 1 .. 125 (spot ignores it)
EX_DIRECTION = 6  # futures: DIRECTION_* (spot is long only and ignores it)
N_EXECUTION = 7

# --- futures (SPEC 4.3) -----------------------------------------------------------
DIRECTION_LONG = 1
DIRECTION_SHORT = -1
DIRECTION_BOTH = 0
DIRECTIONS: dict[str, int] = {"long": DIRECTION_LONG, "short": DIRECTION_SHORT, "both": DIRECTION_BOTH}
# One maintenance-margin bracket per row of a tier table: notional from (inclusive) .. to (exclusive; the
# last bracket has no end), maintenance margin rate and maintenance amount ("cum").
TIER_MIN = 0
TIER_MAX = 1
TIER_MMR = 2
TIER_CUM = 3
N_TIER = 4

# Why a position was closed (the trade log's `reason` on sells, round trips' exit_reason).
EXIT_SIGNAL = 0
EXIT_STOP_LOSS = 1
EXIT_TAKE_PROFIT = 2
EXIT_TRAILING_STOP = 3
EXIT_END_OF_DATA = 4  # still open after the last bar: marked at the last close, not sold
EXIT_LIQUIDATION = 5  # futures: the margin balance reached the maintenance margin (SPEC 4.3)
EXIT_REASON_NAMES: dict[int, str] = {
    EXIT_SIGNAL: "signal",
    EXIT_STOP_LOSS: "stop_loss",
    EXIT_TAKE_PROFIT: "take_profit",
    EXIT_TRAILING_STOP: "trailing_stop",
    EXIT_END_OF_DATA: "end_of_data",
    EXIT_LIQUIDATION: "liquidation",
}

# --- trade log --------------------------------------------------------------
ACTION_BUY = 1
ACTION_SELL = -1

# One fill. `bar` is the bar index of the fill (compacted index inside
# simulate_1d; time-grid index in what a strategy kernel's run_single returns). `signal_bar`
# is the bar whose close produced the signal (differs from `bar` with
# fill=next_open). `value` is the cash spent including the fee for a buy and the
# net cash received for a sell. `indicator` is the strategy's indicator at the
# signal bar (see Strategy.indicator_label), NaN for a stop exit. `reason` is
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

# A futures fill (simulate_futures_1d): TRADE_DTYPE's fields, where `value` is the stake an entry
# commits (margin plus its fee) and the cash an exit returns (margin + P&L - fee; 0 on a liquidation),
# plus the position's `side` (+1 long, -1 short) and, on an exit, the `funding` it paid while open
# (positive = paid). A position still open after the last bar gets an exit record of reason
# EXIT_END_OF_DATA at the last close (marked, no fee): not a fill, the round trip's end.
FUTURES_TRADE_DTYPE = np.dtype(
    [*((name, TRADE_DTYPE.fields[name][0]) for name in TRADE_DTYPE.names),
     ("side", np.int64),
     ("funding", np.float64)],
    align=True,
)
