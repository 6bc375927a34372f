"""Long-only portfolio simulation with stops, sizing, slippage and streaming metrics (SPEC 4, 4.1).

One pass over the bars: stop checks, fills, equity at every close, and every
metric, without storing the equity curve unless asked to. Without stops the
bars' highs and lows are never read (the caller need not load them).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pipeline.engine.kernels.blocks import (
    B_COUNT,
    B_DOWN2,
    B_END,
    B_START,
    B_SUM,
    B_SUM2,
    B_SUM3,
    B_SUM4,
    block_edge,
    blocks_from_fills,
    log_fill,
)
from pipeline.engine.kernels.enums import (
    ACTION_BUY,
    ACTION_SELL,
    EX_SIZE,
    EX_SL,
    EX_SLIPPAGE,
    EX_TP,
    EX_TRAIL,
    EXIT_SIGNAL,
    EXIT_STOP_LOSS,
    EXIT_TAKE_PROFIT,
    EXIT_TRAILING_STOP,
    M_ANNUAL_RETURN_PCT,
    M_ANNUAL_VOLATILITY_PCT,
    M_AVG_DRAWDOWN_PCT,
    M_AVG_TRADE_DURATION_BARS,
    M_AVG_TRADE_PCT,
    M_BARS,
    M_BARS_WITHOUT_DETAIL,
    M_BARS_WITHOUT_MARK,
    M_BEST_TRADE_PCT,
    M_BUY_HOLD_RETURN_PCT,
    M_CAGR_PCT,
    M_CALMAR,
    M_CLOSED_TRADES,
    M_EXPECTANCY,
    M_EXPOSURE_PCT,
    M_FEES_PAID,
    M_FINAL_VALUE,
    M_FINAL_VALUE_NET,
    M_FUNDING_PAID,
    M_LIQUIDATIONS,
    M_MAX_DRAWDOWN_DURATION_BARS,
    M_MAX_DRAWDOWN_PCT,
    M_MAX_MARGIN_RATIO,
    M_MAX_TRADE_DURATION_BARS,
    M_NUM_TRADES,
    M_PROFIT_FACTOR,
    M_SHARPE,
    M_SORTINO,
    M_SQN,
    M_TOTAL_RETURN_PCT,
    M_WIN_RATE_PCT,
    M_WORST_TRADE_PCT,
)


@njit(cache=True)
def _record(trades, k, bar, signal_bar, action, price, units, value, fee, indicator, reason):
    rec = trades[k]
    rec["bar"] = bar
    rec["signal_bar"] = signal_bar
    rec["action"] = action
    rec["price"] = price
    rec["units"] = units
    rec["value"] = value
    rec["fee"] = fee
    rec["indicator"] = indicator
    rec["reason"] = reason


@njit(cache=True, inline="always")
def _signal(in_position: bool, entry: bool, exit_: bool) -> int:
    """The order a bar's signals give: a signal that does not change the state is ignored."""
    if not in_position and entry:
        return ACTION_BUY
    if in_position and exit_:
        return ACTION_SELL
    return 0


@njit(cache=True, inline="always")
def _stop_exit(open_t, high_t, low_t, sl_base, sl, entry_price, tp, trail):
    """(fill price, EXIT_* reason) of a stop exit on this bar, or (NaN, EXIT_SIGNAL) (SPEC 4.1).

    vectorbt's `get_stop_price_nb` for a long position: the stop-loss is checked first (it
    wins when both are touched), and an open already at or beyond a stop fills at the open.
    """
    if sl > 0.0:
        stop = sl_base * (1.0 - sl)
        reason = EXIT_TRAILING_STOP if trail else EXIT_STOP_LOSS
        if open_t <= stop:
            return open_t, reason
        if low_t <= stop and stop <= high_t:
            return stop, reason
    if tp > 0.0:
        stop = entry_price * (1.0 + tp)
        if stop <= open_t:
            return open_t, EXIT_TAKE_PROFIT
        if low_t <= stop and stop <= high_t:
            return stop, EXIT_TAKE_PROFIT
    return np.nan, EXIT_SIGNAL


@njit(cache=True, inline="always")
def side_stop_exit(side, open_t, high_t, low_t, sl_base, sl, entry_price, tp, trail):
    """(fill price, EXIT_* reason) of a stop exit on this bar, or (NaN, EXIT_SIGNAL): _stop_exit for either
    side, mirrored for a short (its stop-loss above the base, its take-profit below the entry); the futures
    kernel's rule and the detail replay's for every finer bar."""
    if sl > 0.0:
        level = sl_base * (1.0 - side * sl)
        reason = EXIT_TRAILING_STOP if trail else EXIT_STOP_LOSS
        if side * open_t <= side * level:
            return open_t, reason
        if low_t <= level and level <= high_t:
            return level, reason
    if tp > 0.0:
        stop = entry_price * (1.0 + side * tp)
        if side * stop <= side * open_t:
            return open_t, EXIT_TAKE_PROFIT
        if low_t <= stop and stop <= high_t:
            return stop, EXIT_TAKE_PROFIT
    return np.nan, EXIT_SIGNAL


@njit(cache=True)
def detail_stop_exit(d_open, d_high, d_low, first, ratio, sl_base, sl, entry_price, tp, trail, side):
    """A stop decided on the finer bars first .. first + ratio - 1 of d_* (one symbol's row of the detail grid,
    NaN = no finer bar; --detail, the contract's "Intrabar detail"): each in order under SPEC 4.1's rule
    (`futures._stop_exit`'s, mirrored by `side`), the trailing base following each finer bar's high (a
    short's: low) after its check. Returns (fill price, EXIT_* reason, base after, whether any finer bar was
    there); (NaN, EXIT_SIGNAL, ...) when none reaches a level."""
    present = False
    for i in range(max(first, 0), min(first + ratio, d_open.shape[0])):
        o = d_open[i]
        if np.isnan(o):
            continue
        present = True
        h = d_high[i]
        lo = d_low[i]
        price, reason = side_stop_exit(side, o, h, lo, sl_base, sl, entry_price, tp, trail)
        if not np.isnan(price):
            return price, reason, sl_base, True
        if trail:
            if side == 1 and h > sl_base:
                sl_base = h
            elif side == -1 and lo < sl_base:
                sl_base = lo
    return np.nan, EXIT_SIGNAL, sl_base, present


@njit(cache=True, inline="always")
def level_in_reach(side, high_t, low_t, sl_base, sl, entry_price, tp, trail):
    """Whether a stop level can be reached inside the bar [low_t, high_t] (the coarse check that spares the
    detail replay on most held bars): a trailing level as high as the bar's own extreme could take it."""
    if sl > 0.0:
        base = sl_base
        if trail:
            base = max(sl_base, high_t) if side == 1 else min(sl_base, low_t)
        level = base * (1.0 - side * sl)
        if (side == 1 and low_t <= level) or (side == -1 and high_t >= level):
            return True
    if tp > 0.0:
        level = entry_price * (1.0 + side * tp)
        if (side == 1 and high_t >= level) or (side == -1 and low_t <= level):
            return True
    return False


@njit(cache=True, inline="always")
def add_return(r, count, shift, shifted_sum, shifted_sum2):
    """One per-bar return into the running sums of the returns' differences to the first one (the
    shifted-data algorithm): stable for returns, exactly 0 variance for constant ones, and no
    division in the chain carried from bar to bar. Returns the new (count, shift, sum, sum2)."""
    if count == 0:
        shift = r
    shifted = r - shift
    return count + 1, shift, shifted_sum + shifted, shifted_sum2 + shifted * shifted


@njit(cache=True, inline="always")
def return_moments(count, shift, shifted_sum, shifted_sum2):
    """(mean, sample standard deviation) of the returns `add_return` summed; NaN deviation with
    fewer than two, mean 0 with none."""
    if count == 0:
        return 0.0, np.nan
    mean = shift + shifted_sum / count
    if count < 2:
        return mean, np.nan
    return mean, np.sqrt(max(shifted_sum2 - shifted_sum * shifted_sum / count, 0.0) / (count - 1))


@njit(cache=True, inline="always")
def _write_block(out, b, count, s, s2, s3, s4, down2, start, end):
    out[b, B_COUNT] = count
    out[b, B_SUM] = s
    out[b, B_SUM2] = s2
    out[b, B_SUM3] = s3
    out[b, B_SUM4] = s4
    out[b, B_DOWN2] = down2
    out[b, B_START] = start
    out[b, B_END] = end


@njit(cache=True)
def _execution_terms(execution):
    """(sl, tp, trail, size, slippage) of an EX_* row; None: no stops, all in, no slippage.
    Plain @njit, not inline: a called function prunes its own `is None` branch by its argument's type."""
    if execution is None:
        return 0.0, 0.0, False, 1.0, 0.0
    return (execution[EX_SL], execution[EX_TP], execution[EX_TRAIL] != 0.0, execution[EX_SIZE],
            execution[EX_SLIPPAGE])


@njit(cache=True, inline="always")
def _no_closed_trades():
    """The closed-trade statistics before any trade: (count, wins, best %, worst %, sum of returns %,
    sum of bars held, most bars held, gross profit, gross loss, P&L mean, P&L sum of squared
    deviations (Welford, for the SQN))."""
    return 0, 0, -np.inf, np.inf, 0.0, 0, 0, 0.0, 0.0, 0.0, 0.0


@njit(cache=True, inline="always")
def _add_closed_trade(closed, net, entry_cash, bars_held):
    """`closed` (see _no_closed_trades) with one more trade, which committed `entry_cash` and got
    `net` back (after its exit fee) `bars_held` bars later."""
    count, wins, best, worst, ret_sum, bars_sum, bars_max, gross_profit, gross_loss, pnl_mean, pnl_m2 = closed
    if net > entry_cash:
        wins += 1
    pnl = net - entry_cash
    trade_ret = pnl / entry_cash * 100.0
    best = max(best, trade_ret)
    worst = min(worst, trade_ret)
    ret_sum += trade_ret
    bars_sum += bars_held
    bars_max = max(bars_max, bars_held)
    if pnl > 0.0:
        gross_profit += pnl
    else:
        gross_loss -= pnl
    delta = pnl - pnl_mean
    pnl_mean += delta / (count + 1)
    pnl_m2 += delta * (pnl - pnl_mean)
    return count + 1, wins, best, worst, ret_sum, bars_sum, bars_max, gross_profit, gross_loss, pnl_mean, pnl_m2


@njit(cache=True, inline="always")
def _no_drawdown(initial):
    """The drawdown statistics before the first bar: (peak, deepest drawdown, bars in the current
    period under the peak, longest such period, the current period's lowest equity, sum of the
    finished periods' deepest drawdowns, finished periods)."""
    return initial, 0.0, 0, 0, initial, 0.0, 0


@njit(cache=True, inline="always")
def _close_period(drawdown):
    """`drawdown` with its current period under the peak finished: its depth, `(peak - lowest) / peak`,
    into the deepest and the sum of depths."""
    peak, max_dd, under, max_under, trough, dd_sum, dd_periods = drawdown
    depth = (peak - trough) / peak
    return peak, max(max_dd, depth), 0, max(max_under, under), trough, dd_sum + depth, dd_periods + 1


@njit(cache=True, inline="always")
def _add_equity(drawdown, equity):
    """`drawdown` (see _no_drawdown) after a bar closing at `equity`.

    A bar's drawdown is `(peak - equity) / peak`, > 0 exactly when equity < peak (peak > 0). Within a
    period under the peak the peak does not move, and a correctly rounded subtraction and division are
    monotonic, so the period's deepest drawdown is the one at its lowest equity, bit for bit: one
    division per period instead of one per bar (that division, and a branch waiting on it, were half of
    a sweep's time under perf). Branches, not selects: a bar is under the peak or not for long stretches
    (the select form ran the futures sweep 1.8x slower)."""
    peak, max_dd, under, max_under, trough, dd_sum, dd_periods = drawdown
    if equity < peak and peak > 0.0:
        return peak, max_dd, under + 1, max_under, min(trough, equity), dd_sum, dd_periods
    if under > 0:
        peak, max_dd, under, max_under, trough, dd_sum, dd_periods = _close_period(drawdown)
    return max(peak, equity), max_dd, 0, max_under, equity, dd_sum, dd_periods


@njit(cache=True, inline="always")
def _end_drawdown(drawdown):
    """`drawdown` after the last bar: a period still under the peak counts as a finished one."""
    if drawdown[2] > 0:
        return _close_period(drawdown)
    return drawdown


@njit(cache=True, inline="always")
def _account_bar(equity, prev_equity, drawdown, r_count, r_shift, r_sum, r_sum2, down_sq):
    """A bar closing at `equity` into the drawdown and the returns' sums: (drawdown, r_count, r_shift,
    r_sum, r_sum2, down_sq, the bar's return). After an equity of 0 (a futures account a cross-margin
    liquidation took) the return is 0; a spot account's equity stays above 0."""
    drawdown = _add_equity(drawdown, equity)
    r = equity / prev_equity - 1.0 if prev_equity > 0.0 else 0.0
    r_count, r_shift, r_sum, r_sum2 = add_return(r, r_count, r_shift, r_sum, r_sum2)
    loss = min(r, 0.0)  # branch-free: adds 0 for a gain, r * r for a loss
    return drawdown, r_count, r_shift, r_sum, r_sum2, down_sq + loss * loss, r


@njit(cache=True, inline="always")
def next_signal(signals, t, n, others=None):
    """The first bar at or after t where `signals` (or `others`, when given) is set; n without one.
    (t >= 0: the scan indexes with an unsigned bar, which spares each read the wrap-around of a negative
    index.)"""
    j = np.uint64(t)
    stop = np.uint64(n)
    if others is None:
        while j < stop and not signals[j]:
            j += np.uint64(1)
    else:
        while j < stop and not (signals[j] or others[j]):
            j += np.uint64(1)
    return np.int64(j)


@njit(cache=True, inline="always")
def skip_flat_bars(t, n, entries, other_entries, cash, equity_out, keep_equity, drawdown, r_count, r_shift, r_sum,
                   r_sum2):
    """Skip the flat bars from t up to the next entry signal (in `entries` or `other_entries`); the caller
    was flat at the previous bar's close (or t is 0), so each closes at `cash` and returns exactly 0, which
    moves no sum once the first return (the shift) is 0: only when r_count == 0 or r_shift == 0. They cost
    one bar's work, the bars under the peak counted (a return of 0 adds nothing to the downside sum).
    Returns (the entry signal's bar or n, drawdown, r_count, r_shift, r_sum, r_sum2)."""
    j = next_signal(entries, t, n, other_entries)
    if j > t:
        if keep_equity:
            equity_out[t:j] = cash
        drawdown = _add_equity(drawdown, cash)
        if drawdown[2] > 0:  # under the peak: each bar after the first is one more bar there
            drawdown = (drawdown[0], drawdown[1], drawdown[2] + j - t - 1) + drawdown[3:]
        r_count, r_shift, r_sum, r_sum2 = add_return(0.0, r_count, r_shift, r_sum, r_sum2)
        r_count += j - t - 1
    return j, drawdown, r_count, r_shift, r_sum, r_sum2


@njit(cache=True)
def _write_trade_metrics(metrics_out, closed):
    """The closed-trade metrics of `closed` (see _no_closed_trades); NaN without a closed trade."""
    count, wins, best, worst, ret_sum, bars_sum, bars_max, gross_profit, gross_loss, pnl_mean, pnl_m2 = closed
    metrics_out[M_CLOSED_TRADES] = count
    metrics_out[M_WIN_RATE_PCT] = wins / count * 100.0 if count > 0 else np.nan
    if count > 0:
        metrics_out[M_BEST_TRADE_PCT] = best
        metrics_out[M_WORST_TRADE_PCT] = worst
        metrics_out[M_AVG_TRADE_PCT] = ret_sum / count
        metrics_out[M_AVG_TRADE_DURATION_BARS] = bars_sum / count
        metrics_out[M_MAX_TRADE_DURATION_BARS] = bars_max
        metrics_out[M_EXPECTANCY] = pnl_mean
    else:
        metrics_out[M_BEST_TRADE_PCT] = np.nan
        metrics_out[M_WORST_TRADE_PCT] = np.nan
        metrics_out[M_AVG_TRADE_PCT] = np.nan
        metrics_out[M_AVG_TRADE_DURATION_BARS] = np.nan
        metrics_out[M_MAX_TRADE_DURATION_BARS] = np.nan
        metrics_out[M_EXPECTANCY] = np.nan
    metrics_out[M_PROFIT_FACTOR] = gross_profit / gross_loss if gross_loss > 0.0 else np.nan
    sqn = np.nan
    if count >= 2 and pnl_m2 > 0.0:
        sqn = np.sqrt(count) * pnl_mean / np.sqrt(pnl_m2 / (count - 1))
    metrics_out[M_SQN] = sqn


@njit(cache=True)
def write_metrics(metrics_out, n, initial, bars_per_year, first_close, last_close, final_value, final_value_net,
                  num_trades, held_bars, fees_paid, closed, drawdown, r_count, r_shift, r_sum, r_sum2, down_sq):
    """Every metric of a simulation's metrics_out from its final state (formulas in simulate_1d's docstring);
    `final_value(_net)` are the account's at the last close (the initial cash without bars). The futures
    metrics are NaN: simulate_futures_1d writes them after this."""
    peak, max_dd, under, max_under, trough, dd_sum, dd_periods = drawdown
    if n > 0:
        buy_hold = (initial / first_close * last_close / initial - 1.0) * 100.0
        exposure = held_bars / n * 100.0
        max_dd_pct = max_dd * 100.0
    else:
        buy_hold = np.nan
        exposure = np.nan
        max_dd_pct = np.nan
    sharpe = np.nan
    volatility = np.nan
    r_mean, std = return_moments(r_count, r_shift, r_sum, r_sum2)
    if r_count >= 2:
        volatility = std * np.sqrt(bars_per_year) * 100.0
        if std > 0.0:
            sharpe = r_mean / std * np.sqrt(bars_per_year)
    sortino = np.nan
    if r_count >= 2 and down_sq > 0.0:
        sortino = r_mean / np.sqrt(down_sq / r_count) * np.sqrt(bars_per_year)
    cagr = np.nan
    annual_return = np.nan
    if n > 0:
        cagr = ((final_value / initial) ** (bars_per_year / n) - 1.0) * 100.0
        annual_return = r_mean * bars_per_year * 100.0
    calmar = cagr / max_dd_pct if n > 0 and max_dd > 0.0 else np.nan

    metrics_out[M_FINAL_VALUE] = final_value
    metrics_out[M_FINAL_VALUE_NET] = final_value_net
    metrics_out[M_TOTAL_RETURN_PCT] = (final_value / initial - 1.0) * 100.0
    metrics_out[M_BUY_HOLD_RETURN_PCT] = buy_hold
    metrics_out[M_NUM_TRADES] = num_trades
    metrics_out[M_MAX_DRAWDOWN_PCT] = max_dd_pct
    metrics_out[M_SHARPE] = sharpe
    metrics_out[M_EXPOSURE_PCT] = exposure
    metrics_out[M_BARS] = n

    metrics_out[M_CAGR_PCT] = cagr
    metrics_out[M_ANNUAL_RETURN_PCT] = annual_return
    metrics_out[M_ANNUAL_VOLATILITY_PCT] = volatility
    metrics_out[M_SORTINO] = sortino
    metrics_out[M_CALMAR] = calmar
    metrics_out[M_MAX_DRAWDOWN_DURATION_BARS] = max_under if n > 0 else np.nan
    metrics_out[M_AVG_DRAWDOWN_PCT] = dd_sum / dd_periods * 100.0 if dd_periods > 0 else np.nan
    metrics_out[M_FEES_PAID] = fees_paid
    metrics_out[M_FUNDING_PAID] = np.nan
    metrics_out[M_LIQUIDATIONS] = np.nan
    metrics_out[M_MAX_MARGIN_RATIO] = np.nan
    metrics_out[M_BARS_WITHOUT_MARK] = np.nan
    metrics_out[M_BARS_WITHOUT_DETAIL] = np.nan
    _write_trade_metrics(metrics_out, closed)


@njit(cache=True)
def simulate_1d(
    open_: np.ndarray,
    close: np.ndarray,
    entries: np.ndarray,
    exits: np.ndarray,
    sig_value: np.ndarray,
    fee_frac: float,
    initial: float,
    fill_next_open: bool,
    bars_per_year: float,
    metrics_out: np.ndarray,
    equity_out: np.ndarray,
    trades_out: np.ndarray,
    high: np.ndarray | None = None,
    low: np.ndarray | None = None,
    execution: np.ndarray | None = None,
    block_fractions: np.ndarray | None = None,
    blocks_out: np.ndarray | None = None,
    detail_open: np.ndarray | None = None,
    detail_high: np.ndarray | None = None,
    detail_low: np.ndarray | None = None,
    detail_first: np.ndarray | None = None,
    detail_ratio: int = 0,
    held_sums: np.ndarray | None = None,
    fill_log: np.ndarray | None = None,
) -> int:
    """Simulate one symbol over its bars (no NaN) and write the metrics.

    Args:
        open_, close: prices of the symbol's bars, in time order.
        entries, exits: signals per bar (flat -> long, long -> flat).
        sig_value: indicator value recorded in the trade log for a signal at that bar.
        fee_frac: fee as a fraction (0.001 for 0.1 %).
        initial: starting cash.
        fill_next_open: False fills at the signal bar's close, True at the next
            bar's open (a signal on the last bar is then not filled).
        bars_per_year: annualisation factor of the Sharpe ratio.
        metrics_out: written at the M_* slots (enums, in the order of pipeline/core/metrics.py) of
            SPEC section 4's metrics and the stats set (not the grid columns run_grid adds).
        equity_out: length n to receive the equity at every close, or length 0.
        trades_out: TRADE_DTYPE records of length n, or length 0 to skip the log.
        high, low: the bars' highs and lows; needed (and read) only when a stop is set.
        execution: (N_EXECUTION,) stops, size and slippage at the EX_* indices; None =
            no stops, all in, no slippage (SPEC section 4 alone).
        block_fractions, blocks_out: (B + 1,) block edges and (B x N_BLOCK_STATS), filled with
            each time block's statistics (pipeline.engine.kernels.blocks) while simulating: the per-bar
            returns are the Sharpe ratio's own, so a sweep's PBO and deflated Sharpe cost a few
            sums per bar, not a second pass over an equity curve.
        detail_open, detail_high, detail_low, detail_first, detail_ratio: --detail (the contract's
            "Intrabar detail"): the symbol's finer bars on their own grid, and for bar t the first of its
            `detail_ratio` finer columns, detail_first[t]; a stop level within a held bar's range is then
            decided on them (`detail_stop_exit`), and the bars that needed them but had none are counted
            (`bars_without_detail`). None: every bar by its own rule.
        held_sums, fill_log: with the block statistics, `held_return_sums(close)` ((n + 1) rows) and an
            (n x FILL_FIELDS) buffer: when every entry commits all the cash (size 1), the loop only logs its fills and the
            blocks are made from them afterwards (`blocks_from_fills`): a bar held through without a fill
            earns the price's own return then, a flat bar exactly 0. None, or a smaller size: the block
            sums are added bar by bar.

    Returns:
        The number of trade records written (0 when the log is skipped).

    Equity is `cash + units * close[t]` after the fills of bar t, and the curve
    starts at `initial` before the first bar, so a fee paid on bar 0 shows in the
    drawdown and the returns. Per-bar returns are `eq[t] / eq[t-1] - 1` for every
    bar (eq[-1] = initial); the Sharpe ratio is their mean over their sample
    standard deviation times sqrt(bars_per_year), NaN with fewer than two returns
    or zero deviation. A position open after the last bar is marked at the last
    close, not sold; `final_value_net` also takes the exit fee it would pay there.
    Buy & hold is `initial / close[0] * close[-1]` as a return, so buy_and_hold
    filled at the close without fees returns exactly the benchmark.

    Stops (SPEC 4.1) are checked from the bar after the entry fill, before that bar's
    order: an open at or beyond a stop fills there, else a range that touches it fills
    at the stop price; the stop-loss first; a stop exit is the bar's one fill (a pending
    next_open order is dropped, the bar's own close signal ignored). The stop-loss base
    is the entry fill price, raised to each checked bar's high after its check when
    trailing. An entry commits `size` of the cash (all the equity, being flat); market
    fills move by `slippage` against the trader, stop fills do not. With the defaults
    every number is the one SPEC section 4 gives, bit for bit.

    The stats set streams too: downside returns (Sortino), drawdown periods (their longest
    run of bars under the peak and their mean depth) and each closed trade's return, bars,
    P&L (a running mean and variance for the SQN) and fees; formulas in the README.
    """
    n = close.shape[0]
    keep_equity = equity_out.shape[0] == n and n > 0
    keep_trades = trades_out.shape[0] >= n and n > 0
    sl, tp, trail, size, slippage = _execution_terms(execution)
    stops = sl > 0.0 or tp > 0.0
    if high is None or low is None:
        if stops:
            raise ValueError("stops need the bars' high and low")
        high_ = close
        low_ = close
    else:
        high_ = high
        low_ = low

    cash = initial
    units = 0.0
    in_position = False
    entry_cash = 0.0
    entry_price = 0.0
    entry_bar = -1
    sl_base = 0.0
    pending = 0  # next_open: order to fill at the next bar's open
    pending_bar = -1
    without_detail = 0
    num_trades = 0
    n_records = 0
    held_bars = 0
    fees_paid = 0.0
    closed = _no_closed_trades()
    drawdown = _no_drawdown(initial)
    prev_equity = initial
    # Mean and deviation of the per-bar returns: add_return / return_moments.
    r_count = 0
    r_shift = 0.0
    r_sum = 0.0
    r_sum2 = 0.0
    down_sq = 0.0  # sum of squared negative returns (Sortino's downside deviation)

    # Time blocks: block b covers bars block_edge(fractions[b], n) .. the next block's first - 1.
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
    # Blocks from the fills when no cash is left beside a position (see held_sums): nothing per bar. No
    # test of the buffers' sizes here: all in without an execution row (a plain sweep), this is known when
    # Numba compiles, and the per-bar block code drops out of that variant (kept, it took the held bars'
    # registers: that loop ran 29 % slower).
    by_fills = with_blocks and size == 1.0 and held_sums is not None and fill_log is not None
    n_fills = 0
    if with_blocks and not by_fills:
        n_blocks = block_fractions.shape[0] - 1
        block_hi = n if n_blocks == 1 else block_edge(block_fractions[1], n)
        while block < n_blocks and block_hi == 0:  # blocks without bars before the first bar
            _write_block(blocks_out, block, 0, 0.0, 0.0, 0.0, 0.0, 0.0, initial, initial)
            block += 1
            block_hi = n if block == n_blocks - 1 else block_edge(block_fractions[block + 1], n)

    # Bars without a fill are skipped or run in a tight loop of their own where that changes no number:
    # flat, a bar without an entry signal only keeps the equity (its return is exactly 0, so with a first
    # return of 0 the sums do not move; at most the bars under the peak are counted), and held without
    # stops, a bar without an exit signal only marks the position. Per-bar block sums need every bar.
    skip_flat = not (with_blocks and not by_fills)  # (the test written out each time: Numba prunes the
    # per-bar block code of a variant without blocks only by the expression itself, not by a name for it)
    run_held = skip_flat and not stops
    t = 0
    while t < n:
        if skip_flat and not in_position and pending == 0 and cash > 0.0 and (r_count == 0 or r_shift == 0.0):
            t, drawdown, r_count, r_shift, r_sum, r_sum2 = skip_flat_bars(
                t, n, entries, None, cash, equity_out, keep_equity, drawdown, r_count, r_shift, r_sum, r_sum2)
            if t == n:
                break
        if run_held and in_position and pending == 0:
            while t < n and not exits[t]:
                u = np.uint64(t)  # (t >= 0: an unsigned bar indexes without Numba's negative wrap-around)
                equity = cash + units * close[u]
                if keep_equity:
                    equity_out[u] = equity
                held_bars += 1
                drawdown, r_count, r_shift, r_sum, r_sum2, down_sq, r = _account_bar(
                    equity, prev_equity, drawdown, r_count, r_shift, r_sum, r_sum2, down_sq)
                prev_equity = equity
                t += 1
            if t == n:
                break
        # At most one fill per bar: a stop, else an order pending from the previous close filled at this
        # open (next_open), else this bar's own signal at its close (close).
        # Inline, not a helper: an @njit(inline="always") _bar_order(t, open_, high_, low_, close, entries,
        # exits, ...) made the kernel 4.45x slower (bench/kernels_ab.py, median CPU s of 7 rounds: 0.353
        # against 0.079; numba references the arrays passed anew at every bar), and one taking the bar's
        # values (open_[t], ..., exits[t]) 1.046x (9 rounds: 0.0841 against 0.0804; it reads every field
        # of every bar).
        action = 0
        price = np.nan
        signal_bar = t
        reason = EXIT_SIGNAL
        if stops and in_position and t > entry_bar:
            replayed = False
            if detail_first is not None and level_in_reach(1, high_[t], low_[t], sl_base, sl, entry_price, tp,
                                                           trail):
                price, reason, base, replayed = detail_stop_exit(detail_open, detail_high, detail_low,
                                                                 detail_first[t], detail_ratio, sl_base, sl,
                                                                 entry_price, tp, trail, 1)
                if replayed:
                    if not np.isnan(price):
                        action = ACTION_SELL
                        pending = 0
                    elif trail:  # after the bar its base is the bar's high, as without detail
                        sl_base = max(base, high_[t])
                else:
                    without_detail += 1
            if not replayed:
                price, reason = _stop_exit(open_[t], high_[t], low_[t], sl_base, sl, entry_price, tp, trail)
                if not np.isnan(price):
                    action = ACTION_SELL
                    pending = 0
                elif trail and high_[t] > sl_base:
                    sl_base = high_[t]
        if action == 0:
            action = pending
            price = open_[t]
            signal_bar = pending_bar
            pending = 0
            if action == 0 and not fill_next_open:
                action = _signal(in_position, entries[t], exits[t])
                price = close[t]
                signal_bar = t
            # Market fills only (x * (1 + 0) == x: no slippage changes no number).
            if action == ACTION_BUY:
                price = price * (1.0 + slippage)
            elif action == ACTION_SELL:
                price = price * (1.0 - slippage)
        if action == ACTION_BUY:
            commit = cash * size  # flat: the cash is the equity
            fee = commit * fee_frac
            units = (commit - fee) / price
            entry_cash = commit
            entry_price = price
            entry_bar = t
            sl_base = price
            fees_paid += fee
            if keep_trades:
                _record(trades_out, n_records, t, signal_bar, ACTION_BUY, price, units,
                        commit, fee, sig_value[signal_bar], EXIT_SIGNAL)
                n_records += 1
            cash = cash - commit
            in_position = True
            num_trades += 1
            if by_fills:
                n_fills = log_fill(fill_log, n_fills, t, units, cash)
        elif action == ACTION_SELL:
            proceeds = units * price
            fee = proceeds * fee_frac
            net = proceeds - fee
            cash = cash + net
            fees_paid += fee
            closed = _add_closed_trade(closed, net, entry_cash, t - entry_bar)
            if keep_trades:
                _record(trades_out, n_records, t, signal_bar, ACTION_SELL, price, units,
                        net, fee, sig_value[signal_bar] if reason == EXIT_SIGNAL else np.nan, reason)
                n_records += 1
            units = 0.0
            in_position = False
            if by_fills:
                n_fills = log_fill(fill_log, n_fills, t, units, cash)
        if fill_next_open and t + 1 < n:
            # The state after this bar's fill decides; a signal on the last bar is not filled.
            pending = _signal(in_position, entries[t], exits[t])
            pending_bar = t

        equity = cash + units * close[t]
        if keep_equity:
            equity_out[t] = equity
        if in_position:
            held_bars += 1
        drawdown, r_count, r_shift, r_sum, r_sum2, down_sq, r = _account_bar(
            equity, prev_equity, drawdown, r_count, r_shift, r_sum, r_sum2, down_sq)
        prev_equity = equity
        if with_blocks and not by_fills:
            loss = min(r, 0.0)
            r2 = r * r
            b_sum += r
            b_sum2 += r2
            b_sum3 += r2 * r
            b_sum4 += r2 * r2
            b_down2 += loss * loss
            while block < n_blocks and t + 1 == block_hi:  # the block ends here (and empty ones after it)
                _write_block(blocks_out, block, block_hi - block_lo, b_sum, b_sum2, b_sum3, b_sum4, b_down2,
                             b_start, equity)
                block += 1
                block_lo = block_hi
                block_hi = n if block == n_blocks - 1 else block_edge(block_fractions[block + 1], n)
                b_sum = b_sum2 = b_sum3 = b_sum4 = b_down2 = 0.0
                b_start = equity
        t += 1

    if by_fills:
        blocks_from_fills(blocks_out, block_fractions, close, initial, held_sums, fill_log, n_fills)
    last_close = close[n - 1] if n > 0 else 0.0
    write_metrics(metrics_out, n, initial, bars_per_year, close[0] if n > 0 else np.nan,
                  close[n - 1] if n > 0 else np.nan, cash + units * last_close,
                  cash + units * last_close * (1.0 - fee_frac), num_trades, held_bars, fees_paid, closed,
                  _end_drawdown(drawdown), r_count, r_shift, r_sum, r_sum2, down_sq)
    if detail_first is not None:
        metrics_out[M_BARS_WITHOUT_DETAIL] = without_detail
    return n_records
