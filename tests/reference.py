"""Plain-Python references for the kernels, written from SPEC sections 3, 4 and 4.1.

Nothing here imports pipeline.engine.kernels: indicators come from TA-Lib, and the
signal rules and the portfolio simulation are straightforward loops over Python
floats, so that a test comparing the kernels with these checks them against an
independent reading of the contract.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np
import talib


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def reference_indicators(strategy: str, close: np.ndarray, params: dict) -> dict[str, np.ndarray]:
    """The indicator series a strategy's signals read, computed with TA-Lib."""
    close = np.ascontiguousarray(close, dtype=np.float64)
    n = close.shape[0]
    if strategy == "rsi":
        period = int(params["rsi_period"])
        rsi = talib.RSI(close, period) if n > 0 else _nan(0)
        return {"rsi": rsi}
    if strategy == "ma_crossover":
        fast = talib.SMA(close, int(params["fast_period"])) if n > 0 else _nan(0)
        slow = talib.SMA(close, int(params["slow_period"])) if n > 0 else _nan(0)
        return {"fast": fast, "slow": slow}
    if strategy == "bollinger":
        period = int(params["bb_period"])
        nbdev = float(params["bb_std"])
        if period == 1:
            # TA-Lib refuses period 1; a one-bar window has zero deviation, so
            # all three bands are the close itself.
            return {"upper": close.copy(), "middle": close.copy(), "lower": close.copy()}
        if n == 0:
            return {"upper": _nan(0), "middle": _nan(0), "lower": _nan(0)}
        upper, middle, lower = talib.BBANDS(close, period, nbdev, nbdev, 0)
        return {"upper": upper, "middle": middle, "lower": lower}
    if strategy == "macd":
        if n == 0:
            return {"macd": _nan(0), "signal": _nan(0)}
        macd, signal, _hist = talib.MACD(
            close, int(params["fast_period"]), int(params["slow_period"]), int(params["signal_period"])
        )
        return {"macd": macd, "signal": signal}
    if strategy == "buy_and_hold":
        return {}
    raise ValueError(strategy)


def _below(a_prev: float, a_now: float, b_prev: float, b_now: float) -> bool:
    if any(math.isnan(v) for v in (a_prev, a_now, b_prev, b_now)):
        return False
    return a_now < b_now and a_prev >= b_prev


def _above(a_prev: float, a_now: float, b_prev: float, b_now: float) -> bool:
    if any(math.isnan(v) for v in (a_prev, a_now, b_prev, b_now)):
        return False
    return a_now > b_now and a_prev <= b_prev


def reference_signals(
    strategy: str, close: np.ndarray, params: dict
) -> tuple[list[bool], list[bool], list[float]]:
    """(entries, exits, recorded indicator value) per bar, from SPEC section 3's table."""
    ind = {k: [float(v) for v in arr] for k, arr in reference_indicators(strategy, close, params).items()}
    n = len(close)
    entries = [False] * n
    exits = [False] * n
    values = [math.nan] * n
    c = [float(v) for v in close]
    # One branch per strategy, each SPEC 3's row spelled out: alike in shape by design, not shared.
    for t in range(n):
        if strategy == "rsi":
            r = ind["rsi"]
            os_, ob = float(params["oversold_threshold"]), float(params["overbought_threshold"])
            values[t] = r[t]
            if t > 0:
                entries[t] = _below(r[t - 1], r[t], os_, os_)
                exits[t] = _above(r[t - 1], r[t], ob, ob)
        elif strategy == "ma_crossover":
            f, s = ind["fast"], ind["slow"]
            values[t] = f[t]
            if t > 0:
                entries[t] = _above(f[t - 1], f[t], s[t - 1], s[t])
                exits[t] = _below(f[t - 1], f[t], s[t - 1], s[t])
        elif strategy == "bollinger":
            up, low = ind["upper"], ind["lower"]
            if t > 0:
                entries[t] = _below(c[t - 1], c[t], low[t - 1], low[t])
                exits[t] = _above(c[t - 1], c[t], up[t - 1], up[t])
            values[t] = low[t] if entries[t] else up[t]
        elif strategy == "macd":
            m, s = ind["macd"], ind["signal"]
            values[t] = m[t]
            if t > 0:
                entries[t] = _above(m[t - 1], m[t], s[t - 1], s[t])
                exits[t] = _below(m[t - 1], m[t], s[t - 1], s[t])
        elif strategy == "buy_and_hold":
            entries[t] = t == 0
            values[t] = c[t]
    return entries, exits, values


@dataclass
class Trade:
    bar: int
    signal_bar: int
    action: int  # 1 buy, -1 sell
    price: float
    units: float
    value: float
    fee: float
    indicator: float
    reason: str = "signal"  # on sells: signal, stop_loss, take_profit or trailing_stop


@dataclass
class Backtest:
    metrics: dict[str, float]
    trades: list[Trade] = field(default_factory=list)
    equity: list[float] = field(default_factory=list)


def reference_backtest(
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
    high: np.ndarray | None = None,
    low: np.ndarray | None = None,
    sl: float = 0.0,
    tp: float = 0.0,
    trail: bool = False,
    size: float = 1.0,
    slippage: float = 0.0,
) -> Backtest:
    """SPEC section 4, bar by bar: long-only, at most one position; with SPEC 4.1's stops
    (`sl`, `tp` fractions, 0 = none; `trail`), `size` (share of the cash at an entry) and
    `slippage` (fraction against the trader on market fills)."""
    n = len(close)
    o = [float(v) for v in open_]
    c = [float(v) for v in close]
    h = [float(v) for v in high] if high is not None else c
    lo = [float(v) for v in low] if low is not None else c
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

    def stop_hit(t: int) -> tuple[float, str] | None:
        """SPEC 4.1: the stop-loss first; an open at or past a stop fills there, else a touch at the stop."""
        if sl > 0:
            level = highest * (1 - sl)
            if o[t] <= level or lo[t] <= level <= h[t]:
                return (o[t] if o[t] <= level else level), ("trailing_stop" if trail else "stop_loss")
        if tp > 0:
            level = entry_price * (1 + tp)
            if o[t] >= level or lo[t] <= level <= h[t]:
                return (o[t] if o[t] >= level else level), "take_profit"
        return None

    for t in range(n):
        if long and t > entry_at and (sl > 0 or tp > 0):
            hit = stop_hit(t)
            if hit is not None:
                order = None  # the stop is this bar's fill; a next_open order waiting for it is moot
                sell(t, t, hit[0], hit[1])
            elif trail and h[t] > highest:
                highest = h[t]
            if hit is not None:
                if fill == "next_open" and t + 1 < n and entries[t]:
                    order = ("buy", t)
                equity.append(cash + units * c[t])
                continue
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
    # The curve starts at the initial cash before the first bar (issue 19).
    curve = [float(initial)] + equity
    returns = [curve[t] / curve[t - 1] - 1.0 for t in range(1, len(curve))]
    sharpe = math.nan
    if len(returns) >= 2:
        sd = statistics.stdev(returns)
        if sd > 0:
            sharpe = statistics.mean(returns) / sd * math.sqrt(bars_per_year)
    max_dd = 0.0
    peak = -math.inf
    for e in curve:
        peak = max(peak, e)
        max_dd = max(max_dd, (peak - e) / peak)
    closed = sum(1 for tr in trades if tr.action == -1)
    metrics = {
        "final_value": final_value,
        "total_return_pct": (final_value / initial - 1.0) * 100.0,
        "buy_hold_return_pct": (c[-1] / c[0] - 1.0) * 100.0 if n else math.nan,
        "num_trades": float(sum(1 for tr in trades if tr.action == 1)),
        "closed_trades": float(closed),
        "win_rate_pct": wins / closed * 100.0 if closed else math.nan,
        "max_drawdown_pct": max_dd * 100.0 if n else math.nan,
        "sharpe": sharpe,
        "exposure_pct": held / n * 100.0 if n else math.nan,
        "final_value_net": cash + units * c[-1] * (1.0 - fee_frac) if n else cash,
        "bars": float(n),
    }
    return Backtest(metrics, trades, equity)
