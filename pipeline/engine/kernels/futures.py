"""USDT-margined perpetual futures: shorts, leverage, funding, isolated and cross margin, liquidation
(SPEC 4.3, the README's contract), in one pass over the bars like simulate_1d.

The account's per-bar bookkeeping (returns, drawdown, blocks, closed-trade statistics, the metrics) is
simulate.py's; this file adds what a position on margin does: its side, its margin M, funding settled
into M at the start of a bar, the liquidation price recomputed from M, and reversals.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pipeline.engine.kernels.blocks import block_edge
from pipeline.engine.kernels.enums import (
    ACTION_BUY,
    ACTION_SELL,
    DIRECTION_BOTH,
    DIRECTION_LONG,
    DIRECTION_SHORT,
    EX_DIRECTION,
    EX_LEVERAGE,
    EX_SIZE,
    EX_SL,
    EX_SLIPPAGE,
    EX_TP,
    EX_TRAIL,
    EXIT_END_OF_DATA,
    EXIT_LIQUIDATION,
    EXIT_SIGNAL,
    EXIT_STOP_LOSS,
    EXIT_TRAILING_STOP,
    M_BARS_WITHOUT_DETAIL,
    M_BARS_WITHOUT_MARK,
    M_FUNDING_PAID,
    M_LIQUIDATIONS,
    M_MAX_MARGIN_RATIO,
    TIER_CUM,
    TIER_MAX,
    TIER_MIN,
    TIER_MMR,
)
from pipeline.engine.kernels.simulate import (
    _account_bar,
    _add_closed_trade,
    _end_drawdown,
    _no_closed_trades,
    _no_drawdown,
    _write_block,
    level_in_reach,
    side_stop_exit,
    skip_flat_bars,
    write_metrics,
)

NO_ORDER = 2  # _target: the bar's signals change nothing (targets are -1, 0, +1)


@njit(cache=True, inline="always")
def _target(side, direction, enter_long, exit_long, enter_short, exit_short):
    """The side (-1, 0, +1) the bar's signals ask for, or NO_ORDER.

    long: enter_long opens, exit_long closes; short: enter_short opens, exit_short closes; both: flat
    opens the side whose entry fires alone (both at once: none), a position reverses on the other side's
    entry and closes on its own exit.
    """
    if direction == DIRECTION_LONG:
        if side == 0 and enter_long:
            return 1
        if side == 1 and exit_long:
            return 0
        return NO_ORDER
    if direction == DIRECTION_SHORT:
        if side == 0 and enter_short:
            return -1
        if side == -1 and exit_short:
            return 0
        return NO_ORDER
    if side == 0:
        if enter_long and not enter_short:
            return 1
        if enter_short and not enter_long:
            return -1
        return NO_ORDER
    if side == 1:
        if enter_short:
            return -1
        return 0 if exit_long else NO_ORDER
    if enter_long:
        return 1
    return 0 if exit_short else NO_ORDER


@njit(cache=True)
def detail_events(side, d_open, d_high, d_low, dm_open, dm_high, dm_low, first, ratio, lp, sl_base, sl, entry_price,
                  tp, trail):
    """A held bar's liquidation and stops decided on its finer bars first .. first + ratio - 1 (--detail, the
    contract's "Intrabar detail"): each finer bar in order under the bar's own rule (Futures: one bar, in
    order), its adverse extreme the finer mark bar's low/high (the finer price bar's without one), the trailing
    base following it. Returns (event: 0 none, 1 stop, 2 liquidation; stop fill price; stop reason; base after;
    whether any finer bar was there)."""
    present = False
    for i in range(max(first, 0), min(first + ratio, d_open.shape[0])):
        o = d_open[i]
        if np.isnan(o):
            continue
        present = True
        h = d_high[i]
        lo = d_low[i]
        marked = not np.isnan(dm_open[i])
        adverse = (dm_low[i] if marked else lo) if side == 1 else (dm_high[i] if marked else h)
        stop_price, stop_reason = side_stop_exit(side, o, h, lo, sl_base, sl, entry_price, tp, trail)
        stop_first = (stop_reason == EXIT_STOP_LOSS or stop_reason == EXIT_TRAILING_STOP) and \
            side * stop_price > side * lp
        if side * adverse <= side * lp and not stop_first:
            return 2, np.nan, EXIT_LIQUIDATION, sl_base, True
        if not np.isnan(stop_price):
            return 1, stop_price, stop_reason, sl_base, True
        if trail:
            if side == 1 and h > sl_base:
                sl_base = h
            elif side == -1 and lo < sl_base:
                sl_base = lo
    return 0, np.nan, EXIT_SIGNAL, sl_base, present


@njit(cache=True)
def tier_of(tiers, notional):
    """(mmr, cum) of the bracket holding `notional`: the first whose range [min, max) holds it; past the
    last bracket's end, the last one."""
    k = tiers.shape[0] - 1
    for j in range(tiers.shape[0]):
        if tiers[j, TIER_MIN] <= notional and notional < tiers[j, TIER_MAX]:
            k = j
            break
    return tiers[k, TIER_MMR], tiers[k, TIER_CUM]


@njit(cache=True, inline="always")
def liquidation_price(side, qty, entry, balance, mmr, cum):
    """LP = (M + cum - side x qty x E) / (qty x mmr - side x qty): where the margin balance equals the
    maintenance margin (SPEC 4.3). Below 0 (a long) it is never reached."""
    return (balance + cum - side * qty * entry) / (qty * mmr - side * qty)


@njit(cache=True, inline="always")
def _kept_liquidation_price(lp, lp_balance, balance, fresh, side, qty, entry, mmr, cum):
    """The liquidation price at `balance`. It moves only with the balance (a funding payment, a fill), so
    `lp`, made at `lp_balance`, is kept until then; `fresh` (the first bar held after an entry) makes it anew."""
    if balance != lp_balance or fresh:
        return liquidation_price(side, qty, entry, balance, mmr, cum)
    return lp


@njit(cache=True, inline="always")
def _funding_payment(side, qty, mark_open_g, open_t, rate):
    """What a position held into a bar pays from its margin at the bar's funding `rate` (not NaN): side x qty
    x the mark bar's open (the price bar's where the mark has no bar) x rate."""
    return side * qty * (open_t if np.isnan(mark_open_g) else mark_open_g) * rate


@njit(cache=True, inline="always")
def _higher_margin_ratio(max_ratio, maintenance, at_adverse):
    """The highest margin ratio so far after a bar whose maintenance margin is `maintenance` against the
    balance `at_adverse` at the bar's adverse extreme (1 where that balance is gone). A ratio well under the
    highest cannot replace it: the division is skipped there (m <= M a (1 - 1e-12) bounds the rounded m / a
    below M, with a > 0 and M > 0), and made, exactly as before, wherever it could."""
    if at_adverse > 0.0 and max_ratio > 0.0 and maintenance <= max_ratio * at_adverse * (1.0 - 1e-12):
        return max_ratio
    ratio = maintenance / at_adverse if at_adverse > 0.0 else 1.0
    return ratio if np.isnan(max_ratio) or ratio > max_ratio else max_ratio


@njit(cache=True)
def _record(trades, k, bar, signal_bar, action, price, qty, value, fee, indicator, reason, side, funding):
    rec = trades[k]
    rec["bar"] = bar
    rec["signal_bar"] = signal_bar
    rec["action"] = action
    rec["price"] = price
    rec["units"] = qty
    rec["value"] = value
    rec["fee"] = fee
    rec["indicator"] = indicator
    rec["reason"] = reason
    rec["side"] = side
    rec["funding"] = funding


@njit(cache=True)
def simulate_futures_1d(
    open_: np.ndarray,
    close: np.ndarray,
    enter_long: np.ndarray,
    exit_long: np.ndarray,
    enter_short: np.ndarray,
    exit_short: np.ndarray,
    sig_value: np.ndarray,
    at: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    funding_rate: np.ndarray,
    mark_open: np.ndarray,
    mark_high: np.ndarray,
    mark_low: np.ndarray,
    without_mark: int,
    tiers: np.ndarray,
    execution: np.ndarray,
    cross: bool,
    fee_frac: float,
    initial: float,
    fill_next_open: bool,
    bars_per_year: float,
    metrics_out: np.ndarray,
    equity_out: np.ndarray,
    trades_out: np.ndarray,
    block_fractions: np.ndarray | None = None,
    blocks_out: np.ndarray | None = None,
    detail_open: np.ndarray | None = None,
    detail_high: np.ndarray | None = None,
    detail_low: np.ndarray | None = None,
    detail_mark_open: np.ndarray | None = None,
    detail_mark_high: np.ndarray | None = None,
    detail_mark_low: np.ndarray | None = None,
    detail_first: np.ndarray | None = None,
    detail_ratio: int = 0,
) -> int:
    """Simulate one perpetual over its bars (no NaN in the prices) and write the metrics.

    Args:
        open_, close: the trade price bars, in time order.
        enter_long, exit_long, enter_short, exit_short: the signals per bar (see _target).
        sig_value: the indicator value recorded in the trade log for a signal at that bar.
        at: each bar's column in the rows below (the symbol's grid positions): they are read only
            while a position is open, in place, never gathered into per-bar copies (gathering six
            rows per symbol made a run 1.6-1.8x spot's time; reading them in place costs a run nothing
            while flat).
        high, low: the trade price bars' highs and lows.
        funding_rate: the sum of the funding rates whose time floors to the bar's open; NaN where none
            does (0 where the series has a rate of 0).
        mark_open, mark_high, mark_low: the mark price bars; NaN where the mark series has no bar (the
            price bar's open, high and low stand in).
        without_mark: the bars without a mark bar (written as the metric; the caller counts them once).
        tiers: (K x N_TIER) maintenance-margin brackets, ascending (a flat --mmr: one bracket, cum 0).
        execution: (N_EXECUTION,) stops, size, slippage, leverage and direction at the EX_* indices.
        cross: True = cross margin (the account's cash backs the position and is lost with it).
        fee_frac, initial, fill_next_open, bars_per_year, metrics_out, equity_out, block_fractions,
            blocks_out: as simulate_1d's.
        trades_out: FUTURES_TRADE_DTYPE records of length 2 x n + 1, or length 0 to skip the log.
        detail_*: --detail (simulate_1d's), with the finer mark bars on the finer grid (NaN where none): a held
            bar whose range reaches its liquidation price or a stop level is decided on them (detail_events).

    Returns:
        The number of trade records written (0 when the log is skipped).

    Per bar, in order: funding (a position held since before this bar pays side x qty x mark open x rate
    from its margin M); the liquidation check and the stops (from the bar after the entry fill; the
    liquidation wins over a take-profit, over the signal and over a stop-loss it reaches first from the
    open: the higher level for a long, the lower for a short, the liquidation when equal); else the order
    pending from the last close (next_open) or the bar's own signal (close). An order closes the position
    and/or opens one at the same fill (a reversal pays both fees). Entry with stake S = cash x size: fee
    S x L x f, M = S - fee, qty = M x L / price; exit at X: cash += M + side x qty x (X - E) - qty x X x f.
    A liquidation exits at the liquidation price and returns nothing (cross margin: the cash goes too).
    Equity at each close: cash + M + side x qty x (close - E).
    """
    n = close.shape[0]
    keep_equity = equity_out.shape[0] == n and n > 0
    keep_trades = trades_out.shape[0] >= 2 * n + 1 and n > 0
    sl = execution[EX_SL]
    tp = execution[EX_TP]
    trail = execution[EX_TRAIL] != 0.0
    size = execution[EX_SIZE]
    slippage = execution[EX_SLIPPAGE]
    leverage = execution[EX_LEVERAGE]
    direction = int(execution[EX_DIRECTION])

    cash = initial
    side = 0
    qty = 0.0
    margin = 0.0  # M: the position's margin, funding settled into it
    entry_price = 0.0
    entry_stake = 0.0
    entry_bar = -1
    trade_funding = 0.0
    mmr = 0.0
    cum = 0.0
    sl_base = 0.0
    pending = NO_ORDER  # next_open: the side to hold from the next bar's open
    pending_bar = -1
    without_detail = 0
    num_trades = 0
    n_records = 0
    held_bars = 0
    fees_paid = 0.0
    funding_paid = 0.0
    liquidations = 0
    max_ratio = np.nan
    closed = _no_closed_trades()
    drawdown = _no_drawdown(initial)
    lp = np.nan
    lp_balance = np.nan
    prev_equity = initial
    r_count = 0
    r_shift = 0.0
    r_sum = 0.0
    r_sum2 = 0.0
    down_sq = 0.0

    with_blocks = block_fractions is not None and blocks_out is not None
    n_blocks = 0
    block = 0
    block_lo = 0
    block_hi = 0
    b_sum = 0.0
    b_sum2 = 0.0
    b_sum3 = 0.0
    b_sum4 = 0.0
    b_down2 = 0.0
    b_start = initial
    if with_blocks:
        n_blocks = block_fractions.shape[0] - 1
        block_hi = n if n_blocks == 1 else block_edge(block_fractions[1], n)
        while block < n_blocks and block_hi == 0:
            _write_block(blocks_out, block, 0, 0.0, 0.0, 0.0, 0.0, 0.0, initial, initial)
            block += 1
            block_hi = n if block == n_blocks - 1 else block_edge(block_fractions[block + 1], n)

    # Flat bars without an entry signal are skipped (simulate_1d's rule; a flat bar returns 0 here too), and,
    # as simulate_1d runs them, held bars without stops and orders at the close run in a tight loop of their
    # own: a bar there pays its funding, moves the liquidation price and the margin ratio, and marks the
    # position, by the general path's very operations. A bar whose signals close the position or whose
    # range reaches the liquidation price leaves the loop untouched (nothing of it is kept), and the general
    # path takes it whole.
    skip_flat = not with_blocks
    run_held = skip_flat and not fill_next_open and not (sl > 0.0 or tp > 0.0)
    both = direction == DIRECTION_BOTH
    t = 0
    while t < n:
        if skip_flat and side == 0 and pending == NO_ORDER and (r_count == 0 or r_shift == 0.0):
            # Flat, only the entries of the sides the set trades can open a position (_target).
            if both:
                t, drawdown, r_count, r_shift, r_sum, r_sum2 = skip_flat_bars(
                    t, n, enter_long, enter_short, cash, equity_out, keep_equity, drawdown, r_count, r_shift,
                    r_sum, r_sum2)
            else:
                t, drawdown, r_count, r_shift, r_sum, r_sum2 = skip_flat_bars(
                    t, n, enter_long if direction == DIRECTION_LONG else enter_short, None, cash, equity_out,
                    keep_equity, drawdown, r_count, r_shift, r_sum, r_sum2)
            if t == n:
                break
        if run_held and side != 0 and t > entry_bar:
            # The signals that end a held position (_target): its own exit, and with both directions the
            # other side's entry (a reversal).
            own_exit = exit_long if side == 1 else exit_short
            reversal = enter_short if side == 1 else enter_long
            while t < n and not (own_exit[t] or (both and reversal[t])):
                # Unsigned bars index without Numba's wrap-around of a negative index (t, at[t] >= 0).
                u = np.uint64(t)
                g = np.uint64(at[u])
                has_mark = not np.isnan(mark_open[g])
                rate = funding_rate[g]
                paid = not np.isnan(rate)
                payment = _funding_payment(side, qty, mark_open[g], open_[u], rate) if paid else 0.0
                bar_margin = margin - payment if paid else margin
                balance = bar_margin + cash if cross else bar_margin
                bar_lp = _kept_liquidation_price(lp, lp_balance, balance, t == entry_bar + 1, side, qty, entry_price,
                                                 mmr, cum)
                adverse = (mark_low[g] if has_mark else low[g]) if side == 1 else (
                    mark_high[g] if has_mark else high[g])
                if side * adverse <= side * bar_lp:
                    break
                if paid:
                    margin = bar_margin
                    trade_funding += payment
                    funding_paid += payment
                lp = bar_lp
                lp_balance = balance
                max_ratio = _higher_margin_ratio(max_ratio, qty * adverse * mmr - cum,
                                                 balance + side * qty * (adverse - entry_price))
                equity = cash + margin + side * qty * (close[u] - entry_price)
                if keep_equity:
                    equity_out[u] = equity
                held_bars += 1
                drawdown, r_count, r_shift, r_sum, r_sum2, down_sq, r = _account_bar(
                    equity, prev_equity, drawdown, r_count, r_shift, r_sum, r_sum2, down_sq)
                prev_equity = equity
                t += 1
            if t == n:
                break
        target = NO_ORDER
        price = np.nan
        signal_bar = t
        reason = EXIT_SIGNAL
        exited_early = False  # the position left before this bar's close (stop, liquidation or next_open)
        if side != 0 and t > entry_bar:
            g = at[t]
            has_mark = not np.isnan(mark_open[g])
            rate = funding_rate[g]
            if not np.isnan(rate):
                payment = _funding_payment(side, qty, mark_open[g], open_[t], rate)
                margin -= payment
                trade_funding += payment
                funding_paid += payment
            balance = margin + cash if cross else margin
            lp = _kept_liquidation_price(lp, lp_balance, balance, t == entry_bar + 1, side, qty, entry_price, mmr, cum)
            lp_balance = balance
            adverse = (mark_low[g] if has_mark else low[g]) if side == 1 else (mark_high[g] if has_mark else high[g])
            liquidated = side * adverse <= side * lp
            stop_price, stop_reason = side_stop_exit(side, open_[t], high[g], low[g], sl_base, sl, entry_price, tp, trail)
            # A stop-loss filled before the liquidation price, moving from the open, exits first (its fill:
            # its level, or the open when the bar opened past it).
            stop_first = (stop_reason == EXIT_STOP_LOSS or stop_reason == EXIT_TRAILING_STOP) and \
                side * stop_price > side * lp
            replayed = False
            if detail_first is not None and (liquidated or not np.isnan(stop_price) or (
                    trail and level_in_reach(side, high[g], low[g], sl_base, sl, entry_price, tp, trail))):
                event, fine_price, fine_reason, base, replayed = detail_events(
                    side, detail_open, detail_high, detail_low, detail_mark_open, detail_mark_high, detail_mark_low,
                    detail_first[t], detail_ratio, lp, sl_base, sl, entry_price, tp, trail)
                if replayed:
                    liquidated = event == 2
                    stop_first = False
                    stop_price, stop_reason = fine_price, fine_reason
                    if event == 0 and trail:  # after the bar its base is the bar's extreme, as without detail
                        sl_base = max(base, high[g]) if side == 1 else min(base, low[g])
                else:
                    without_detail += 1
            if liquidated and not stop_first:
                max_ratio = 1.0
                if keep_trades:
                    _record(trades_out, n_records, t, t, ACTION_SELL if side == 1 else ACTION_BUY, lp, qty, 0.0,
                            0.0, np.nan, EXIT_LIQUIDATION, side, trade_funding)
                    n_records += 1
                closed = _add_closed_trade(closed, 0.0, entry_stake, t - entry_bar)
                liquidations += 1
                if cross:
                    cash = 0.0
                side = 0
                qty = 0.0
                margin = 0.0
                pending = NO_ORDER
                exited_early = True
            elif not np.isnan(stop_price):
                target = 0
                price = stop_price
                reason = stop_reason
                pending = NO_ORDER
                exited_early = True
            else:
                if pending == NO_ORDER:  # not when a next_open order leaves at the open, before the extreme
                    max_ratio = _higher_margin_ratio(max_ratio, qty * adverse * mmr - cum,
                                                     balance + side * qty * (adverse - entry_price))
                if trail and not replayed:
                    if side == 1 and high[g] > sl_base:
                        sl_base = high[g]
                    elif side == -1 and low[g] < sl_base:
                        sl_base = low[g]
        if target == NO_ORDER and not exited_early:
            target = pending
            price = open_[t]
            signal_bar = pending_bar
            pending = NO_ORDER
            if target == NO_ORDER and not fill_next_open:
                target = _target(side, direction, enter_long[t], exit_long[t], enter_short[t], exit_short[t])
                price = close[t]
                signal_bar = t
        if target != NO_ORDER and target != side:
            if side != 0:  # close: a long sells, a short buys; market fills move against the trader
                fill = price
                if reason == EXIT_SIGNAL:
                    fill = price * (1.0 - side * slippage)
                pnl = side * qty * (fill - entry_price)
                fee = qty * fill * fee_frac
                net = margin + pnl - fee
                cash = cash + net
                fees_paid += fee
                closed = _add_closed_trade(closed, net, entry_stake, t - entry_bar)
                if keep_trades:
                    _record(trades_out, n_records, t, signal_bar, ACTION_SELL if side == 1 else ACTION_BUY, fill,
                            qty, net, fee, sig_value[signal_bar] if reason == EXIT_SIGNAL else np.nan, reason,
                            side, trade_funding)
                    n_records += 1
                side = 0
                qty = 0.0
                margin = 0.0
            if target != 0 and cash > 0.0:
                fill = price * (1.0 + target * slippage)
                stake = cash * size
                fee = stake * leverage * fee_frac
                margin = stake - fee
                qty = margin * leverage / fill
                side = target
                entry_price = fill
                entry_stake = stake
                entry_bar = t
                trade_funding = 0.0
                sl_base = fill
                mmr, cum = tier_of(tiers, qty * fill)
                fees_paid += fee
                cash = cash - stake
                num_trades += 1
                if keep_trades:
                    _record(trades_out, n_records, t, signal_bar, ACTION_BUY if side == 1 else ACTION_SELL, fill,
                            qty, stake, fee, sig_value[signal_bar], EXIT_SIGNAL, side, 0.0)
                    n_records += 1
        if fill_next_open and t + 1 < n:
            pending = _target(side, direction, enter_long[t], exit_long[t], enter_short[t], exit_short[t])
            pending_bar = t

        equity = cash + margin + side * qty * (close[t] - entry_price) if side != 0 else cash
        if keep_equity:
            equity_out[t] = equity
        if side != 0:
            held_bars += 1
        drawdown, r_count, r_shift, r_sum, r_sum2, down_sq, r = _account_bar(
            equity, prev_equity, drawdown, r_count, r_shift, r_sum, r_sum2, down_sq)
        prev_equity = equity
        if with_blocks:
            loss = min(r, 0.0)
            r2 = r * r
            b_sum += r
            b_sum2 += r2
            b_sum3 += r2 * r
            b_sum4 += r2 * r2
            b_down2 += loss * loss
            while block < n_blocks and t + 1 == block_hi:
                _write_block(blocks_out, block, block_hi - block_lo, b_sum, b_sum2, b_sum3, b_sum4, b_down2,
                             b_start, equity)
                block += 1
                block_lo = block_hi
                block_hi = n if block == n_blocks - 1 else block_edge(block_fractions[block + 1], n)
                b_sum = b_sum2 = b_sum3 = b_sum4 = b_down2 = 0.0
                b_start = equity
        t += 1

    final_value = cash
    final_value_net = cash
    if n > 0 and side != 0:
        marked = margin + side * qty * (close[n - 1] - entry_price)
        final_value = cash + marked
        final_value_net = final_value - qty * close[n - 1] * fee_frac
        if keep_trades:
            _record(trades_out, n_records, n - 1, n - 1, ACTION_SELL if side == 1 else ACTION_BUY, close[n - 1],
                    qty, marked, 0.0, np.nan, EXIT_END_OF_DATA, side, trade_funding)
            n_records += 1
    write_metrics(metrics_out, n, initial, bars_per_year, close[0] if n > 0 else np.nan,
                  close[n - 1] if n > 0 else np.nan, final_value, final_value_net, num_trades, held_bars,
                  fees_paid, closed, _end_drawdown(drawdown), r_count, r_shift, r_sum, r_sum2, down_sq)
    metrics_out[M_FUNDING_PAID] = funding_paid
    metrics_out[M_LIQUIDATIONS] = liquidations
    metrics_out[M_MAX_MARGIN_RATIO] = max_ratio
    metrics_out[M_BARS_WITHOUT_MARK] = without_mark
    if detail_first is not None:
        metrics_out[M_BARS_WITHOUT_DETAIL] = without_detail
    return n_records


__all__ = ["DIRECTION_BOTH", "DIRECTION_SHORT", "simulate_futures_1d", "tier_of"]
