"""One futures account across many perpetuals: shared cash, slots and ranked entries (kernels/portfolio.py)
with shorts, leverage, funding and liquidation (kernels/futures.py), isolated or cross margin.

The rules are the contract's "Futures portfolio" bullet (docs/contract.md): at each grid bar, funding,
then liquidation (isolated: each position at its own liquidation price; cross: the whole account when its
equity at every position's adverse mark extreme is at most the sum of maintenance margins), then exits,
then entries in rank order, then the equity at the close. The spot portfolio kernel is left as it is: a
spot account runs none of this and stays as fast as before.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from pipeline.engine.kernels.enums import (
    EXIT_END_OF_DATA,
    EXIT_LIQUIDATION,
    EXIT_SIGNAL,
    P_BARS_WITHOUT_MARK,
    P_FUNDING_PAID,
    P_LIQUIDATIONS,
    P_MAX_MARGIN_RATIO,
)
from pipeline.engine.kernels.futures import NO_ORDER, _target, liquidation_price, tier_of
from pipeline.engine.kernels.portfolio import (
    _CASH_TOLERANCE,
    CONTRIB_PNL,
    CONTRIB_SKIPPED,
    CONTRIB_TRADES,
    N_CONTRIB,
    PORTFOLIO_TRADE_DTYPE,
    _any_bar,
    _rank_order,
    write_account_metrics,
)
from pipeline.engine.kernels.simulate import add_return


@njit(cache=True)
def _record(trades_out, k, s, side, entry_bar, entry_price, exit_bar, exit_price, qty, fees, pnl, stake, reason,
            funding):
    rec = trades_out[k]
    rec["symbol"] = s
    rec["entry_bar"] = entry_bar
    rec["entry_price"] = entry_price
    rec["exit_bar"] = exit_bar
    rec["exit_price"] = exit_price
    rec["units"] = qty
    rec["fees"] = fees
    rec["pnl"] = pnl
    rec["return_pct"] = pnl / stake * 100.0
    rec["exit_reason"] = reason
    rec["side"] = side
    rec["funding"] = funding


@njit(cache=True, inline="always")
def _adverse(s, t, side, high2d, low2d, mark_open2d, mark_high2d, mark_low2d):
    """The position's adverse extreme of bar t: the mark's low (long) or high (short), the price bar's
    without a mark bar."""
    if np.isnan(mark_open2d[s, t]):
        return low2d[s, t] if side == 1 else high2d[s, t]
    return mark_low2d[s, t] if side == 1 else mark_high2d[s, t]


@njit(cache=True)
def _positions_value(side, qty, margin, entry_price, marks):
    """Sum over the open positions of M + side x qty x (mark - E)."""
    value = 0.0
    for s in range(side.shape[0]):
        if side[s] != 0:
            value += margin[s] + side[s] * qty[s] * (marks[s] - entry_price[s])
    return value


@njit(cache=True)
def simulate_portfolio_futures(
    open2d: np.ndarray,
    high2d: np.ndarray,
    low2d: np.ndarray,
    close2d: np.ndarray,
    funding2d: np.ndarray,
    mark_open2d: np.ndarray,
    mark_high2d: np.ndarray,
    mark_low2d: np.ndarray,
    mark_close2d: np.ndarray,
    enter_long: np.ndarray,
    exit_long: np.ndarray,
    enter_short: np.ndarray,
    exit_short: np.ndarray,
    rank: np.ndarray,
    tiers: np.ndarray,
    tier_counts: np.ndarray,
    max_open: int,
    stake_is_fraction: bool,
    stake: float,
    leverage: float,
    direction: int,
    cross: bool,
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
    """Simulate one futures account over every perpetual; returns the number of round trips written.

    Args:
        open2d, high2d, low2d, close2d: (S x T) trade price bars on the grid, NaN where a symbol has none.
        funding2d: (S x T) the funding rates summed per bar, NaN where none.
        mark_open2d, mark_high2d, mark_low2d, mark_close2d: (S x T) mark bars, NaN where the mark has none.
        enter_long, exit_long, enter_short, exit_short: (S x T) bool signals at each bar's close.
        rank: (S x T) float64; among entries filled on one bar, higher ranks are served first.
        tiers, tier_counts: (S x K x N_TIER) maintenance brackets and how many each symbol uses.
        max_open, stake_is_fraction, stake: as simulate_portfolio's.
        leverage, direction, cross: the run's (DIRECTION_*; cross False = isolated margin).
        fee_frac, slippage, initial, fill_next_open, bars_per_year: as simulate_portfolio's.
        metrics_out: (N_PORTFOLIO_METRICS,) written in full, the futures metrics included.
        contrib_out: (S x N_CONTRIB) written in full.
        equity_out: (T,) the equity at every grid bar (NaN where no symbol has a bar), or length 0.
        trades_out: PORTFOLIO_TRADE_DTYPE records (length >= entries + S) or length 0.
    """
    n_symbols, n_time = close2d.shape
    keep_equity = equity_out.shape[0] == n_time
    keep_trades = trades_out.shape[0] > 0

    cash = initial
    side = np.zeros(n_symbols, dtype=np.int64)
    qty = np.zeros(n_symbols)
    margin = np.zeros(n_symbols)  # M: the position's margin (isolated: funding settled into it)
    entry_price = np.zeros(n_symbols)
    entry_bar = np.zeros(n_symbols, dtype=np.int64)
    entry_stake = np.zeros(n_symbols)
    entry_fee = np.zeros(n_symbols)
    trade_funding = np.zeros(n_symbols)
    mmr = np.zeros(n_symbols)
    cum = np.zeros(n_symbols)
    last_close = np.full(n_symbols, np.nan)
    first_close = np.full(n_symbols, np.nan)
    marks = np.zeros(n_symbols)
    pending = np.full(n_symbols, NO_ORDER, dtype=np.int64)  # next_open: the side to hold from the next open
    pending_rank = np.full(n_symbols, np.nan)
    wanted = np.full(n_symbols, NO_ORDER, dtype=np.int64)  # the side a symbol enters at this bar
    left = np.zeros(n_symbols, dtype=np.bool_)  # liquidated at this bar: no other fill
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
    funding_paid = 0.0
    liquidations = 0
    without_mark = 0
    max_ratio = np.nan
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
        for s in range(n_symbols):
            wanted[s] = NO_ORDER
            left[s] = False
            if not np.isnan(close2d[s, t]) and np.isnan(mark_open2d[s, t]):
                without_mark += 1

        if n_open > 0:
            # 1. Funding: every open position was entered before this bar, so every one is due.
            for s in range(n_symbols):
                if side[s] == 0 or np.isnan(close2d[s, t]):
                    continue
                rate = funding2d[s, t]
                if not np.isnan(rate):
                    base = mark_open2d[s, t] if not np.isnan(mark_open2d[s, t]) else open2d[s, t]
                    payment = side[s] * qty[s] * base * rate
                    if cross:
                        cash -= payment
                    else:
                        margin[s] -= payment
                    trade_funding[s] += payment
                    funding_paid += payment
            # 2. Liquidation.
            if cross:
                at_adverse = cash
                maintenance = 0.0
                held_through = False  # some position stays past the open (not every one leaves there)
                for s in range(n_symbols):
                    if side[s] == 0:
                        continue
                    if pending[s] == NO_ORDER or np.isnan(close2d[s, t]):
                        held_through = True
                    p = last_close[s]
                    if not np.isnan(close2d[s, t]):
                        p = _adverse(s, t, side[s], high2d, low2d, mark_open2d, mark_high2d, mark_low2d)
                    at_adverse += margin[s] + side[s] * qty[s] * (p - entry_price[s])
                    maintenance += qty[s] * p * mmr[s] - cum[s]
                if at_adverse <= maintenance:
                    max_ratio = 1.0
                    for s in range(n_symbols):
                        if side[s] == 0:
                            continue
                        x = last_close[s]
                        if not np.isnan(close2d[s, t]):
                            x = close2d[s, t] if np.isnan(mark_close2d[s, t]) else mark_close2d[s, t]
                        returned = margin[s] + side[s] * qty[s] * (x - entry_price[s])
                        cash += returned
                        pnl = returned - entry_stake[s] - trade_funding[s]
                        if keep_trades:
                            _record(trades_out, n_records, s, side[s], entry_bar[s], entry_price[s], t, x, qty[s],
                                    entry_fee[s], pnl, entry_stake[s], EXIT_LIQUIDATION, trade_funding[s])
                            n_records += 1
                        contrib_out[s, CONTRIB_TRADES] += 1.0
                        contrib_out[s, CONTRIB_PNL] += pnl
                        if pnl > 0.0:
                            wins += 1
                        closed += 1
                        liquidations += 1
                        side[s] = 0
                        margin[s] = 0.0
                        qty[s] = 0.0
                        pending[s] = NO_ORDER
                        left[s] = True
                    n_open = 0
                    if cash < 0.0:
                        cash = 0.0  # an account cannot owe: the exchange's insurance fund takes the deficit
                elif held_through:
                    ratio = maintenance / at_adverse if at_adverse > 0.0 else 1.0
                    if np.isnan(max_ratio) or ratio > max_ratio:
                        max_ratio = ratio
            else:
                for s in range(n_symbols):
                    if side[s] == 0 or np.isnan(close2d[s, t]):
                        continue
                    lp = liquidation_price(side[s], qty[s], entry_price[s], margin[s], mmr[s], cum[s])
                    p = _adverse(s, t, side[s], high2d, low2d, mark_open2d, mark_high2d, mark_low2d)
                    if side[s] * p <= side[s] * lp:
                        max_ratio = 1.0
                        pnl = -entry_stake[s]
                        if keep_trades:
                            _record(trades_out, n_records, s, side[s], entry_bar[s], entry_price[s], t, lp, qty[s],
                                    entry_fee[s], pnl, entry_stake[s], EXIT_LIQUIDATION, trade_funding[s])
                            n_records += 1
                        contrib_out[s, CONTRIB_TRADES] += 1.0
                        contrib_out[s, CONTRIB_PNL] += pnl
                        closed += 1
                        liquidations += 1
                        side[s] = 0
                        margin[s] = 0.0
                        qty[s] = 0.0
                        pending[s] = NO_ORDER
                        left[s] = True
                        n_open -= 1
                    elif pending[s] == NO_ORDER:  # not when a next_open order leaves at the open
                        at_adverse = margin[s] + side[s] * qty[s] * (p - entry_price[s])
                        ratio = (qty[s] * p * mmr[s] - cum[s]) / at_adverse if at_adverse > 0.0 else 1.0
                        if np.isnan(max_ratio) or ratio > max_ratio:
                            max_ratio = ratio

        # 3. Exits: the order waiting from the symbol's last close fills at this open, or this bar's signals at
        #    its close. A reversal's new side enters in step 4 with the others.
        for s in range(n_symbols):
            if np.isnan(close2d[s, t]) or side[s] == 0:
                continue
            if fill_next_open:
                target = pending[s]
                price = open2d[s, t]
            else:
                target = _target(side[s], direction, enter_long[s, t], exit_long[s, t], enter_short[s, t],
                                 exit_short[s, t])
                price = close2d[s, t]
            if target == NO_ORDER or target == side[s]:
                continue
            fill = price * (1.0 - side[s] * slippage)
            fee = qty[s] * fill * fee_frac
            returned = margin[s] + side[s] * qty[s] * (fill - entry_price[s]) - fee
            cash += returned
            pnl = returned - entry_stake[s] - (trade_funding[s] if cross else 0.0)
            if pnl > 0.0:
                wins += 1
            if keep_trades:
                _record(trades_out, n_records, s, side[s], entry_bar[s], entry_price[s], t, fill, qty[s],
                        entry_fee[s] + fee, pnl, entry_stake[s], EXIT_SIGNAL, trade_funding[s])
                n_records += 1
            contrib_out[s, CONTRIB_TRADES] += 1.0
            contrib_out[s, CONTRIB_PNL] += pnl
            closed += 1
            side[s] = 0
            margin[s] = 0.0
            qty[s] = 0.0
            n_open -= 1
            if target != 0:
                wanted[s] = target

        # 4. Entries that fill at this bar, in rank order.
        n_cand = 0
        for s in range(n_symbols):
            if np.isnan(close2d[s, t]) or side[s] != 0 or left[s]:
                continue
            want = wanted[s]
            if fill_next_open:
                want = pending[s]
            elif want == NO_ORDER:
                want = _target(0, direction, enter_long[s, t], exit_long[s, t], enter_short[s, t], exit_short[s, t])
            if want == 1 or want == -1:
                wanted[s] = want
                candidates[n_cand] = s
                n_cand += 1
        if n_cand > 0:
            if fill_next_open:
                _rank_order(candidates, n_cand, pending_rank)
            else:
                _rank_order(candidates, n_cand, rank[:, t])
            for s in range(n_symbols):
                marks[s] = last_close[s]
                if not fill_next_open and not np.isnan(close2d[s, t]):
                    marks[s] = close2d[s, t]
            equity_now = cash + _positions_value(side, qty, margin, entry_price, marks)
            for k in range(n_cand):
                s = candidates[k]
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
                fill = base * (1.0 + wanted[s] * slippage)
                fee = cost * leverage * fee_frac
                side[s] = wanted[s]
                margin[s] = cost - fee
                qty[s] = margin[s] * leverage / fill
                entry_price[s] = fill
                entry_bar[s] = t
                entry_stake[s] = cost
                entry_fee[s] = fee
                trade_funding[s] = 0.0
                mmr[s], cum[s] = tier_of(tiers[s, :tier_counts[s]], qty[s] * fill)
                cash -= cost
                n_open += 1
                num_trades += 1
                if n_open > max_open_seen:
                    max_open_seen = n_open

        # 5. This bar's closes: marks, and next_open orders for the symbol's next bar.
        for s in range(n_symbols):
            c = close2d[s, t]
            if np.isnan(c):
                continue
            last_close[s] = c
            if np.isnan(first_close[s]):
                first_close[s] = c
            if fill_next_open:
                pending[s] = _target(side[s], direction, enter_long[s, t], exit_long[s, t], enter_short[s, t],
                                     exit_short[s, t])
                pending_rank[s] = rank[s, t]

        equity = cash + _positions_value(side, qty, margin, entry_price, last_close)
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
        r = equity / prev_equity - 1.0 if prev_equity > 0.0 else 0.0
        r_count, r_shift, r_sum, r_sum2 = add_return(r, r_count, r_shift, r_sum, r_sum2)
        prev_equity = equity

    # After the last bar: each open position marked at its latest close (not sold), logged as end_of_data.
    final_value = cash
    for s in range(n_symbols):
        if side[s] == 0:
            continue
        value = margin[s] + side[s] * qty[s] * (last_close[s] - entry_price[s])
        final_value += value
        pnl = value - entry_stake[s] - (trade_funding[s] if cross else 0.0)
        contrib_out[s, CONTRIB_PNL] += pnl
        if keep_trades:
            _record(trades_out, n_records, s, side[s], entry_bar[s], entry_price[s], -1, last_close[s], qty[s],
                    entry_fee[s], pnl, entry_stake[s], EXIT_END_OF_DATA, trade_funding[s])
            n_records += 1
    write_account_metrics(metrics_out, initial, bars_per_year, final_value, num_trades, closed, wins, max_dd, bars,
                          held, skipped_slot, skipped_cash, max_open_seen, first_close, last_close, r_count, r_shift,
                          r_sum, r_sum2)
    metrics_out[P_FUNDING_PAID] = funding_paid
    metrics_out[P_LIQUIDATIONS] = liquidations
    metrics_out[P_MAX_MARGIN_RATIO] = max_ratio
    metrics_out[P_BARS_WITHOUT_MARK] = without_mark
    return n_records


@njit(cache=True, parallel=True)
def run_portfolio_futures_grid(
    open2d: np.ndarray,
    high2d: np.ndarray,
    low2d: np.ndarray,
    close2d: np.ndarray,
    funding2d: np.ndarray,
    mark_open2d: np.ndarray,
    mark_high2d: np.ndarray,
    mark_low2d: np.ndarray,
    mark_close2d: np.ndarray,
    enter_long: np.ndarray,
    exit_long: np.ndarray,
    enter_short: np.ndarray,
    exit_short: np.ndarray,
    signal_set: np.ndarray,
    rank: np.ndarray,
    tiers: np.ndarray,
    tier_counts: np.ndarray,
    max_open: np.ndarray,
    stake_is_fraction: np.ndarray,
    stake: np.ndarray,
    leverage: float,
    direction: int,
    cross: bool,
    fee_frac: float,
    slippage: float,
    initial: float,
    fill_next_open: bool,
    bars_per_year: float,
    out: np.ndarray,
) -> None:
    """Fill `out[c, :]` for every account c in parallel (run_portfolio_grid's layout: the signals are
    (K x S x T), `signal_set[c]` the set account c trades)."""
    n_symbols = close2d.shape[0]
    no_equity = np.empty(0)
    no_trades = np.empty(0, dtype=PORTFOLIO_TRADE_DTYPE)
    for c in prange(out.shape[0]):
        contrib = np.empty((n_symbols, N_CONTRIB))
        k = signal_set[c]
        simulate_portfolio_futures(open2d, high2d, low2d, close2d, funding2d, mark_open2d, mark_high2d, mark_low2d,
                                   mark_close2d, enter_long[k], exit_long[k], enter_short[k], exit_short[k], rank,
                                   tiers, tier_counts, max_open[c], stake_is_fraction[c], stake[c], leverage,
                                   direction, cross, fee_frac, slippage, initial, fill_next_open, bars_per_year,
                                   out[c], contrib, no_equity, no_trades)
