"""Plain-Python reference for the contract's "Intrabar detail" rule, written from SPEC 4 / 4.1 and
the bullet "Intrabar detail" (docs/contract.md, "Our choices where the rules are silent").

One long-only spot symbol, bar by bar, as tests/reference.py's `reference_backtest`, except that a
held bar's stops are decided on its finer bars. Nothing here imports `pipeline`: the bars, the
finer bars and the signals are Python floats and bools, the loop is spelled out.

The rule, as read from the contract:

- A held bar is checked from the bar after the entry fill (SPEC 4.1). It needs detail when a level
  is within its own range: its low at or below the stop-loss, or (with `trail`) at or below the
  trailing level its high could raise it to, `max(base, high) * (1 - sl)`; its high at or above the
  take-profit `entry * (1 + tp)`.
- Such a bar walks its finer bars in time order. Each finer bar is SPEC 4.1's rule: it opens at or
  beyond a level -> the exit fills at its open; else its range touches the level
  (`low <= level <= high`) -> at the level; the stop-loss before the take-profit within one finer
  bar. The first finer bar that reaches a level decides. After each finer bar's check, a trailing
  base moves to that finer bar's high when higher.
- A bar that needs detail and has no finer bar at all is decided by its own rule (SPEC 4.1 on the
  bar's open, high, low) and counted in `bars_without_detail`.
- A bar that needs no detail fills nothing (its own rule would fill nothing either).
- After a bar without a stop exit, the trailing base is the bar's own high when higher, as without
  detail (so the finer bars' walk never leaves the base anywhere else).
- The exit is on the bar: its trade carries the bar's index; its price is the level or the finer
  open; stop fills get no slippage; a stop exit's indicator is NaN.

Readings where the contract is silent (chosen here, noted):

- A bar that needs detail, has finer bars, and none of them reaches a level (the finer bars do not
  cover the part of the bar that reached it, e.g. a finer gap): no stop exit on that bar; it is
  not counted in `bars_without_detail` (it has finer bars); the trailing base still moves to the
  bar's own high afterwards.
- Every finer bar is checked against both levels, even a level the coarse range did not reach
  (finer bars inconsistent with their coarse bar are the caller's business; in the real data the
  coarse bar is their aggregate).
- `bars_without_detail` counts bars, once each; a bar where detail was not needed never counts.
- Everything else (fills, next_open orders dropped by a stop exit, the bar's own entry signal after
  a stop exit under next_open, sizing, slippage, fees) is `reference_backtest`'s reading of SPEC
  4 / 4.1, repeated here line for line.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tests.reference import Backtest, Trade

FinerBar = tuple[float, float, float]  # (open, high, low)


@dataclass
class StopExit:
    """How one stop exit was decided (for tests that want to know the reference was not vacuous)."""

    bar: int
    reason: str
    price: float
    on_finer_bars: bool  # decided by a finer bar (False: by the bar's own rule, it had none)
    both_levels_in_range: bool  # the stop-loss (or its reachable trailing level) and the take-profit
    own_rule: tuple[float, str] | None  # what SPEC 4.1 on the bar itself would have filled


@dataclass
class DetailBacktest(Backtest):
    bars_without_detail: int = 0
    stop_exits: list[StopExit] = field(default_factory=list)


def reference_detail_backtest(
    open_: np.ndarray,
    close: np.ndarray,
    entries: list[bool],
    exits: list[bool],
    values: list[float],
    fee_frac: float,
    initial: float,
    fill: str,
    bars_per_year: float,
    *,
    high: np.ndarray,
    low: np.ndarray,
    detail: Sequence[Sequence[FinerBar]],
    sl: float = 0.0,
    tp: float = 0.0,
    trail: bool = False,
    size: float = 1.0,
    slippage: float = 0.0,
) -> DetailBacktest:
    """SPEC 4 / 4.1 with the "Intrabar detail" rule: `reference_backtest`'s inputs plus `detail[t]`,
    bar t's finer bars (open, high, low) in time order (empty: the bar has none). `sl`, `tp` are
    fractions (0 = none). Returns the trades, the equity at every close, the metrics (final_value ..)
    and `bars_without_detail`, with `stop_exits` saying how each stop exit was decided."""
    n = len(close)
    if len(detail) != n:
        raise ValueError(f"detail has {len(detail)} bars' finer bars for {n} bars")
    o = [float(v) for v in open_]
    c = [float(v) for v in close]
    h = [float(v) for v in high]
    lo = [float(v) for v in low]
    cash = float(initial)
    units = 0.0
    long = False
    cash_before_buy = 0.0
    entry_at = -1
    entry_price = 0.0
    highest = 0.0  # the trailing stop's base
    order: tuple[str, int] | None = None  # (side, signal bar) waiting for the next open
    trades: list[Trade] = []
    equity: list[float] = []
    held = 0
    wins = 0
    without_detail = 0
    stop_exits: list[StopExit] = []
    sl_reason = "trailing_stop" if trail else "stop_loss"

    def buy(t: int, signal_bar: int, price: float) -> None:
        nonlocal cash, units, long, cash_before_buy, entry_at, entry_price, highest
        price = price * (1 + slippage)
        stake = cash * size
        fee = stake * fee_frac
        units = (stake - fee) / price
        trades.append(Trade(t, signal_bar, 1, price, units, stake, fee, values[signal_bar]))
        cash_before_buy = stake
        cash = cash - stake
        long = True
        entry_at, entry_price, highest = t, price, price

    def sell(t: int, signal_bar: int, price: float, reason: str = "signal") -> None:
        nonlocal cash, units, long, wins
        if reason == "signal":
            price = price * (1 - slippage)
        proceeds = units * price
        fee = proceeds * fee_frac
        cash += proceeds - fee
        trades.append(Trade(t, signal_bar, -1, price, units, proceeds - fee, fee,
                            values[signal_bar] if reason == "signal" else math.nan, reason))
        if proceeds - fee > cash_before_buy:
            wins += 1
        units = 0.0
        long = False

    def one_bar(bar_open: float, bar_high: float, bar_low: float, base: float) -> tuple[float, str] | None:
        """SPEC 4.1 on one bar (a coarse bar or a finer one): the stop-loss first; an open at or
        beyond a level fills at the open, else a range touching it fills at the level."""
        if sl > 0:
            level = base * (1 - sl)
            if bar_open <= level:
                return bar_open, sl_reason
            if bar_low <= level <= bar_high:
                return level, sl_reason
        if tp > 0:
            level = entry_price * (1 + tp)
            if bar_open >= level:
                return bar_open, "take_profit"
            if bar_low <= level <= bar_high:
                return level, "take_profit"
        return None

    def levels_in_range(t: int) -> tuple[bool, bool]:
        """(stop-loss, take-profit) within bar t's own range; the stop-loss's trailing level as high
        as the bar's high could raise it."""
        sl_in = False
        if sl > 0:
            reachable_base = max(highest, h[t]) if trail else highest
            sl_in = lo[t] <= reachable_base * (1 - sl)
        return sl_in, tp > 0 and h[t] >= entry_price * (1 + tp)

    def stop_hit(t: int) -> tuple[float, str] | None:
        nonlocal without_detail
        sl_in, tp_in = levels_in_range(t)
        if not (sl_in or tp_in):
            return None  # its own rule's: it fills nothing either way
        own = one_bar(o[t], h[t], lo[t], highest)
        finer = detail[t]
        if not finer:
            without_detail += 1
            if own is not None:
                stop_exits.append(StopExit(t, own[1], own[0], False, sl_in and tp_in, own))
            return own
        base = highest
        for f_open, f_high, f_low in finer:
            hit = one_bar(float(f_open), float(f_high), float(f_low), base)
            if hit is not None:
                stop_exits.append(StopExit(t, hit[1], hit[0], True, sl_in and tp_in, own))
                return hit
            if trail and f_high > base:
                base = float(f_high)
        return None

    for t in range(n):
        if long and t > entry_at and (sl > 0 or tp > 0):
            hit = stop_hit(t)
            if hit is not None:
                order = None  # the stop is this bar's one fill; a next_open order waiting for it is dropped
                sell(t, t, hit[0], hit[1])
                if fill == "next_open" and t + 1 < n and entries[t]:
                    order = ("buy", t)
                equity.append(cash + units * c[t])
                continue
            if trail and h[t] > highest:
                highest = h[t]
        if order is not None:
            side, signal_bar = order
            order = None
            if side == "buy":
                buy(t, signal_bar, o[t])
            else:
                sell(t, signal_bar, o[t])
        want_buy = (not long) and entries[t]
        want_sell = long and exits[t]
        if want_buy or want_sell:
            if fill == "close":
                (buy if want_buy else sell)(t, t, c[t])
            elif t + 1 < n:  # next_open: a signal on the last bar is not filled
                order = ("buy" if want_buy else "sell", t)
        equity.append(cash + units * c[t])
        if long:
            held += 1

    final_value = cash + units * c[-1] if n else cash
    closed = sum(1 for tr in trades if tr.action == -1)
    curve = [float(initial)] + equity  # starts at the initial cash before the first bar (issue 19)
    returns = [curve[t] / curve[t - 1] - 1.0 for t in range(1, len(curve))]
    sharpe = math.nan
    if len(returns) >= 2 and statistics.stdev(returns) > 0:
        sharpe = statistics.mean(returns) / statistics.stdev(returns) * math.sqrt(bars_per_year)
    max_dd = 0.0
    peak = -math.inf
    for e in curve:
        peak = max(peak, e)
        max_dd = max(max_dd, (peak - e) / peak)
    metrics = {
        "final_value": final_value,
        "total_return_pct": (final_value / initial - 1.0) * 100.0,
        "num_trades": float(sum(1 for tr in trades if tr.action == 1)),
        "closed_trades": float(closed),
        "win_rate_pct": wins / closed * 100.0 if closed else math.nan,
        "exposure_pct": held / n * 100.0 if n else math.nan,
        "max_drawdown_pct": max_dd * 100.0 if n else math.nan,
        "sharpe": sharpe,
        "bars": float(n),
        "bars_without_detail": float(without_detail),
    }
    return DetailBacktest(metrics, trades, equity, without_detail, stop_exits)
