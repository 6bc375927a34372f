"""One account across many symbols: shared cash, a limited number of open positions.

Pure Numba over (symbols x time) arrays on one grid (NaN where a symbol has no bar),
the signals already computed. Time runs in the outer loop, symbols in the inner one:
at each bar the exits of every symbol are filled before any entry, and the entries that
fire on the same bar compete for free slots and cash in rank order (highest first,
ties to the lower symbol index, i.e. the symbol name). Fill, fee and slippage rules are
those of the single-symbol simulator (SPEC section 4 and 4.1).

Parallelism is over parameter sets (`run_portfolio_grid`), never inside one account:
one account is inherently sequential in time.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from pipeline.engine.kernels.enums import (
    EXIT_END_OF_DATA,
    EXIT_SIGNAL,
    P_BARS,
    P_BARS_WITHOUT_MARK,
    P_BUY_HOLD_RETURN_PCT,
    P_CLOSED_TRADES,
    P_EXPOSURE_PCT,
    P_FINAL_VALUE,
    P_FUNDING_PAID,
    P_LIQUIDATIONS,
    P_MAX_DRAWDOWN_PCT,
    P_MAX_MARGIN_RATIO,
    P_MAX_OPEN_SEEN,
    P_NUM_TRADES,
    P_SHARPE,
    P_SKIPPED_NO_CASH,
    P_SKIPPED_NO_SLOT,
    P_TOTAL_RETURN_PCT,
    P_WIN_RATE_PCT,
)
from pipeline.engine.kernels.simulate import add_return, return_moments

# Round-trip record of a portfolio trade; `symbol` indexes the input rows, bars index the grid. Not
# enums.TRADE_DTYPE, whose record is one fill of one symbol (a like shape, other fields).
PORTFOLIO_TRADE_DTYPE = np.dtype(
    [
        ("symbol", np.int64),
        ("entry_bar", np.int64),
        ("entry_price", np.float64),
        ("exit_bar", np.int64),
        ("exit_price", np.float64),
        ("units", np.float64),
        ("fees", np.float64),
        ("pnl", np.float64),
        ("return_pct", np.float64),
        ("exit_reason", np.int64),
        ("side", np.int64),  # +1 long, -1 short (futures; a spot account is long only)
        ("funding", np.float64),  # funding the position paid while open (futures; 0 on spot)
    ],
    align=True,
)


# Per-symbol contribution columns.
CONTRIB_TRADES = 0
CONTRIB_PNL = 1
CONTRIB_SKIPPED = 2
N_CONTRIB = 3

# A stake may exceed the cash by rounding alone (stake = 100 % of equity = cash): allow it.
_CASH_TOLERANCE = 1e-9


@njit(cache=True)
def _rank_order(candidates, n, rank_row):
    """Sort candidates[:n] in place: higher rank first, NaN last, ties by symbol index."""
    for i in range(1, n):
        s = candidates[i]
        r = rank_row[s]
        j = i - 1
        while j >= 0:
            o = candidates[j]
            ro = rank_row[o]
            # s goes before o when it ranks strictly higher, or equal and has the lower index.
            if np.isnan(ro) and not np.isnan(r):
                before = True
            elif np.isnan(r):
                before = np.isnan(ro) and s < o
            else:
                before = r > ro or (r == ro and s < o)
            if not before:
                break
            candidates[j + 1] = o
            j -= 1
        candidates[j + 1] = s


@njit(cache=True)
def _record_round_trip(trades_out, k, s, entry_bar, entry_price, exit_bar, exit_price, units, fees, pnl, entry_cost,
                       reason):
    """trades_out[k] = one round trip (simulate._record writes the single account's TRADE_DTYPE, whose
    fields are other ones: the same shape, not the same record)."""
    rec = trades_out[k]
    rec["symbol"] = s
    rec["entry_bar"] = entry_bar
    rec["entry_price"] = entry_price
    rec["exit_bar"] = exit_bar
    rec["exit_price"] = exit_price
    rec["units"] = units
    rec["fees"] = fees
    rec["pnl"] = pnl
    rec["return_pct"] = pnl / entry_cost * 100.0
    rec["exit_reason"] = reason
    rec["side"] = 1
    rec["funding"] = 0.0


@njit(cache=True, inline="always")
def _any_bar(close2d, t):
    """Whether any symbol has a bar at grid bar t."""
    for s in range(close2d.shape[0]):
        if not np.isnan(close2d[s, t]):
            return True
    return False


@njit(cache=True)
def _equity_at_fill(t, close2d, fill_next_open, cash, units, in_position, last_close):
    """The equity an entry at bar t sees: held positions at their latest close, which for a close fill is
    this bar's close where the symbol has one (a next-open fill knows only the previous)."""
    equity_now = cash
    for s in range(close2d.shape[0]):
        if in_position[s]:
            mark = last_close[s]
            if not fill_next_open and not np.isnan(close2d[s, t]):
                mark = close2d[s, t]
            equity_now += units[s] * mark
    return equity_now


@njit(cache=True)
def _fill_entries(t, open2d, close2d, candidates, n_cand, equity_now, max_open, stake_is_fraction, stake, fee_frac,
                  slippage, fill_next_open, units, in_position, pending, entry_price, entry_bar, entry_cost,
                  entry_fee, contrib_out, cash, n_open, num_trades, max_open_seen, skipped_slot, skipped_cash):
    """Step 2 of a bar: the ranked candidates[:n_cand] enter while a slot and the cash last; the others are
    skipped and counted. Returns the new (cash, n_open, num_trades, max_open_seen, skipped_slot,
    skipped_cash)."""
    for k in range(n_cand):
        s = candidates[k]
        pending[s] = 0
        if n_open >= max_open:
            skipped_slot += 1
            contrib_out[s, CONTRIB_SKIPPED] += 1.0
            continue
        cost = stake * equity_now if stake_is_fraction else stake
        if cost > cash * (1.0 + _CASH_TOLERANCE) or cost <= 0.0:
            skipped_cash += 1
            contrib_out[s, CONTRIB_SKIPPED] += 1.0
            continue
        if cost > cash:
            cost = cash
        base = open2d[s, t] if fill_next_open else close2d[s, t]
        price = base * (1.0 + slippage)
        fee = cost * fee_frac
        units[s] = (cost - fee) / price
        cash -= cost
        in_position[s] = True
        entry_price[s] = price
        entry_bar[s] = t
        entry_cost[s] = cost
        entry_fee[s] = fee
        n_open += 1
        num_trades += 1
        if n_open > max_open_seen:
            max_open_seen = n_open
    return cash, n_open, num_trades, max_open_seen, skipped_slot, skipped_cash


@njit(cache=True, inline="always")
def _equity(cash, units, in_position, last_close):
    """Cash plus every open position at its symbol's latest close."""
    equity = cash
    for s in range(units.shape[0]):
        if in_position[s]:
            equity += units[s] * last_close[s]
    return equity


@njit(cache=True)
def _mark_open_positions(units, in_position, last_close, entry_price, entry_bar, entry_cost, entry_fee,
                         contrib_out, trades_out, keep_trades, cash, n_records):
    """After the last bar: each open position marked at its last close (not sold), its P&L counted and its
    round trip logged as end_of_data. Returns (final value, n_records)."""
    final_value = cash
    for s in range(units.shape[0]):
        if in_position[s]:
            value = units[s] * last_close[s]
            final_value += value
            pnl = value - entry_cost[s]
            contrib_out[s, CONTRIB_PNL] += pnl
            if keep_trades:
                _record_round_trip(trades_out, n_records, s, entry_bar[s], entry_price[s], -1, last_close[s],
                                   units[s], entry_fee[s], pnl, entry_cost[s], EXIT_END_OF_DATA)
                n_records += 1
    return final_value, n_records


@njit(cache=True)
def _equal_weight_buy_hold_pct(first_close, last_close):
    """Equal-weight buy & hold of the symbols with a bar: initial / S in each at its first close; NaN
    without any."""
    bh = 0.0
    n_bh = 0
    for s in range(first_close.shape[0]):
        if not np.isnan(first_close[s]):
            bh += last_close[s] / first_close[s]
            n_bh += 1
    return (bh / n_bh - 1.0) * 100.0 if n_bh > 0 else np.nan


@njit(cache=True)
def write_account_metrics(metrics_out, initial, bars_per_year, final_value, num_trades, closed, wins, max_dd, bars,
                          held, skipped_slot, skipped_cash, max_open_seen, first_close, last_close, r_count, r_shift,
                          r_sum, r_sum2):
    """An account's metrics row from its final state (the spot and the futures account alike); the futures
    metrics NaN (NULL on spot: simulate_portfolio_futures writes them after this)."""
    sharpe = np.nan
    r_mean, std = return_moments(r_count, r_shift, r_sum, r_sum2)
    if r_count >= 2 and std > 0.0:
        sharpe = r_mean / std * np.sqrt(bars_per_year)
    metrics_out[P_FINAL_VALUE] = final_value
    metrics_out[P_TOTAL_RETURN_PCT] = (final_value / initial - 1.0) * 100.0
    metrics_out[P_NUM_TRADES] = num_trades
    metrics_out[P_CLOSED_TRADES] = closed
    metrics_out[P_WIN_RATE_PCT] = wins / closed * 100.0 if closed > 0 else np.nan
    metrics_out[P_MAX_DRAWDOWN_PCT] = max_dd * 100.0 if bars > 0 else np.nan
    metrics_out[P_SHARPE] = sharpe
    metrics_out[P_EXPOSURE_PCT] = held / bars * 100.0 if bars > 0 else np.nan
    metrics_out[P_SKIPPED_NO_SLOT] = skipped_slot
    metrics_out[P_SKIPPED_NO_CASH] = skipped_cash
    metrics_out[P_MAX_OPEN_SEEN] = max_open_seen
    metrics_out[P_BARS] = bars
    metrics_out[P_BUY_HOLD_RETURN_PCT] = _equal_weight_buy_hold_pct(first_close, last_close)
    metrics_out[P_FUNDING_PAID] = np.nan
    metrics_out[P_LIQUIDATIONS] = np.nan
    metrics_out[P_MAX_MARGIN_RATIO] = np.nan
    metrics_out[P_BARS_WITHOUT_MARK] = np.nan


@njit(cache=True)
def simulate_portfolio(
    open2d: np.ndarray,
    close2d: np.ndarray,
    entries: np.ndarray,
    exits: np.ndarray,
    rank: np.ndarray,
    max_open: int,
    stake_is_fraction: bool,
    stake: float,
    fee_frac: float,
    slippage: float,
    initial: float,
    fill_next_open: bool,
    bars_per_year: float,
    metrics_out: np.ndarray,
    contrib_out: np.ndarray,
    equity_out: np.ndarray,
    trades_out: np.ndarray,
) -> int:
    """Simulate one shared account over every symbol; returns the number of round trips written.

    Args:
        open2d, close2d: (S x T) prices on the grid, NaN where a symbol has no bar.
        entries, exits: (S x T) bool signals (flat -> long, long -> flat) at each bar's close.
        rank: (S x T) float64; among entries filled on one bar, higher ranks are served first.
        max_open: most positions open at once (>= 1).
        stake_is_fraction: True: each entry commits `stake` (0 < stake <= 1) of the equity
            at that moment (positions at their latest close: this bar's for a close fill, the
            previous one for a next-open fill); False: each entry commits `stake` units of cash.
        fee_frac, slippage: fractions; slippage moves market fills against the trader.
        initial: starting cash.
        fill_next_open: False fills at the signal bar's close, True at the symbol's next open.
        bars_per_year: annualisation of the Sharpe ratio.
        metrics_out: (N_PORTFOLIO_METRICS,) written in full, at the P_* slots (enums: PORTFOLIO_METRIC_NAMES order).
        contrib_out: (S x N_CONTRIB) written in full: round trips, realised + open P&L, skips.
        equity_out: (T,) to receive the equity at every grid bar (NaN where no symbol has a
            bar), or length 0.
        trades_out: PORTFOLIO_TRADE_DTYPE records (length >= entries' count) or length 0.

    An entry that finds no free slot, or a stake larger than the free cash, is skipped and
    counted. Equity is cash plus every position marked at its symbol's latest close.
    A position still open after the last bar is marked there (exit_reason end_of_data
    in the trade list, its exit price that close), not sold.
    """
    n_symbols, n_time = close2d.shape
    keep_equity = equity_out.shape[0] == n_time
    keep_trades = trades_out.shape[0] > 0

    cash = initial
    units = np.zeros(n_symbols)
    in_position = np.zeros(n_symbols, dtype=np.bool_)
    entry_price = np.zeros(n_symbols)
    entry_bar = np.zeros(n_symbols, dtype=np.int64)
    entry_cost = np.zeros(n_symbols)  # cash committed, fee included
    entry_fee = np.zeros(n_symbols)
    last_close = np.full(n_symbols, np.nan)
    first_close = np.full(n_symbols, np.nan)
    pending = np.zeros(n_symbols, dtype=np.int64)  # next_open: +1 buy, -1 sell at the next bar
    pending_rank = np.full(n_symbols, np.nan)
    candidates = np.empty(n_symbols, dtype=np.int64)
    contrib_out[:, :] = 0.0

    n_open = 0
    max_open_seen = 0
    num_trades = 0
    closed = 0
    wins = 0
    skipped_slot = 0
    skipped_cash = 0
    n_records = 0
    bars = 0
    held = 0
    # The curve starts at the initial cash before the first bar, as a single account's does.
    peak = initial
    max_dd = 0.0
    prev_equity = initial
    r_count = 0
    r_shift = 0.0
    r_sum = 0.0
    r_sum2 = 0.0

    for t in range(n_time):
        if not _any_bar(close2d, t):
            if keep_equity:
                equity_out[t] = np.nan
            continue
        # Steps 1, 2's candidates and 3 stay inline: as plain @njit helpers (_fill_exits, _entry_candidates,
        # _mark_closes, with the rest split too) the kernel took 1.380x the time, as inline="always" ones
        # 1.137x (bench/kernels_ab.py, median CPU s of 7 rounds: 0.0962 and 0.0813 against 0.0697 and
        # 0.0715): numba references each array passed anew at every bar, and these take up to 12.
        # 1. Exits: an order pending from the symbol's previous close fills at this open,
        #    or this bar's exit signal fills at its close.
        for s in range(n_symbols):
            if np.isnan(close2d[s, t]) or not in_position[s]:
                continue
            if fill_next_open:
                if pending[s] != -1:
                    continue
                price = open2d[s, t] * (1.0 - slippage)
            else:
                if not exits[s, t]:
                    continue
                price = close2d[s, t] * (1.0 - slippage)
            pending[s] = 0
            proceeds = units[s] * price
            fee = proceeds * fee_frac
            cash += proceeds - fee
            pnl = proceeds - fee - entry_cost[s]
            if pnl > 0.0:
                wins += 1
            if keep_trades:
                _record_round_trip(trades_out, n_records, s, entry_bar[s], entry_price[s], t, price, units[s],
                                   entry_fee[s] + fee, pnl, entry_cost[s], EXIT_SIGNAL)
                n_records += 1
            contrib_out[s, CONTRIB_TRADES] += 1.0
            contrib_out[s, CONTRIB_PNL] += pnl
            units[s] = 0.0
            in_position[s] = False
            n_open -= 1
            closed += 1

        # 2. Entries that fill at this bar, in rank order.
        n_cand = 0
        for s in range(n_symbols):
            if np.isnan(close2d[s, t]) or in_position[s]:
                continue
            if fill_next_open:
                if pending[s] == 1:
                    candidates[n_cand] = s
                    n_cand += 1
            elif entries[s, t]:
                candidates[n_cand] = s
                n_cand += 1
        if n_cand > 0:
            if fill_next_open:
                _rank_order(candidates, n_cand, pending_rank)
            else:
                _rank_order(candidates, n_cand, rank[:, t])
            equity_now = _equity_at_fill(t, close2d, fill_next_open, cash, units, in_position, last_close)
            cash, n_open, num_trades, max_open_seen, skipped_slot, skipped_cash = _fill_entries(
                t, open2d, close2d, candidates, n_cand, equity_now, max_open, stake_is_fraction, stake, fee_frac,
                slippage, fill_next_open, units, in_position, pending, entry_price, entry_bar, entry_cost,
                entry_fee, contrib_out, cash, n_open, num_trades, max_open_seen, skipped_slot, skipped_cash)

        # 3. This bar's closes: marks, and next_open orders for the symbol's next bar.
        for s in range(n_symbols):
            c = close2d[s, t]
            if np.isnan(c):
                continue
            last_close[s] = c
            if np.isnan(first_close[s]):
                first_close[s] = c
            if fill_next_open:
                if in_position[s] and exits[s, t]:
                    pending[s] = -1
                elif not in_position[s] and entries[s, t]:
                    pending[s] = 1
                    pending_rank[s] = rank[s, t]
                else:
                    pending[s] = 0

        equity = _equity(cash, units, in_position, last_close)
        if keep_equity:
            equity_out[t] = equity
        bars += 1
        if n_open > 0:
            held += 1
        if equity > peak:
            peak = equity
        if peak > 0.0:
            dd = (peak - equity) / peak
            if dd > max_dd:
                max_dd = dd
        r = equity / prev_equity - 1.0
        r_count, r_shift, r_sum, r_sum2 = add_return(r, r_count, r_shift, r_sum, r_sum2)
        prev_equity = equity

    final_value, n_records = _mark_open_positions(units, in_position, last_close, entry_price, entry_bar, entry_cost,
                                                  entry_fee, contrib_out, trades_out, keep_trades, cash, n_records)
    write_account_metrics(metrics_out, initial, bars_per_year, final_value, num_trades, closed, wins, max_dd, bars,
                          held, skipped_slot, skipped_cash, max_open_seen, first_close, last_close, r_count, r_shift,
                          r_sum, r_sum2)
    return n_records


@njit(cache=True, parallel=True)
def run_portfolio_grid(
    open2d: np.ndarray,
    close2d: np.ndarray,
    entries: np.ndarray,
    exits: np.ndarray,
    signal_set: np.ndarray,
    rank: np.ndarray,
    max_open: np.ndarray,
    stake_is_fraction: np.ndarray,
    stake: np.ndarray,
    fee_frac: float,
    slippage: float,
    initial: float,
    fill_next_open: bool,
    bars_per_year: float,
    out: np.ndarray,
) -> None:
    """Fill `out[c, :]` for every portfolio parameter set c, in parallel.

    entries/exits are (K x S x T): K distinct signal sets (one per distinct strategy
    parameter set); `signal_set[c]` picks the one set c uses, so slots and stakes
    sweep over signals computed once.
    """
    n_sets = out.shape[0]
    n_symbols = close2d.shape[0]
    no_equity = np.empty(0)
    no_trades = np.empty(0, dtype=PORTFOLIO_TRADE_DTYPE)
    for c in prange(n_sets):
        contrib = np.empty((n_symbols, N_CONTRIB))
        k = signal_set[c]
        simulate_portfolio(open2d, close2d, entries[k], exits[k], rank, max_open[c], stake_is_fraction[c],
                           stake[c], fee_frac, slippage, initial, fill_next_open, bars_per_year,
                           out[c], contrib, no_equity, no_trades)


@njit(cache=True)
def trailing_sum(values: np.ndarray, window: int, out: np.ndarray) -> None:
    """out[s, t] = sum of values[s, t - window + 1 .. t], NaN counted as 0 (rolling 24h volume)."""
    n_symbols, n_time = values.shape
    for s in range(n_symbols):
        acc = 0.0
        for t in range(n_time):
            v = values[s, t]
            if not np.isnan(v):
                acc += v
            if t >= window:
                old = values[s, t - window]
                if not np.isnan(old):
                    acc -= old
            out[s, t] = acc


@njit(cache=True)
def equal_weight_curve(close, initial, out):
    """out[t] = initial / S times the sum over the S symbols of close at its latest bar up to t over its first
    close (1 before its first bar: the cash not yet spent), NaN where no symbol has a bar at t: an equal-weight
    buy and hold. Symbols are added in order, each over the whole time line (the sum's order is numpy's
    ratio.sum(axis=0) over such rows, so the floats are the same)."""
    n_symbols, n_time = close.shape
    total = np.zeros(n_time)
    any_bar = np.zeros(n_time, dtype=np.bool_)
    for s in range(n_symbols):
        first = np.nan
        latest = np.nan
        for t in range(n_time):
            price = close[s, t]
            if not np.isnan(price):
                any_bar[t] = True
                latest = price
                if np.isnan(first):
                    first = price
            total[t] += 1.0 if np.isnan(first) else latest / first
    scale = initial / n_symbols
    for t in range(n_time):
        out[t] = scale * total[t] if any_bar[t] else np.nan
