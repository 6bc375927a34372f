"""Independent reference simulator for perpetual futures (tests only).

Written from docs/contract.md alone: SPEC 4 (Simulation), 4.1 (Stops, sizing, slippage),
4.3 (Perpetual futures) and the "Our choices where the rules are silent" bullets "Futures: one
bar, in order", "Futures signals", "Funding rates in a bar", "Maintenance tiers", "Futures
metrics", "Futures round trips", "Equity curve", "Stops, sizing, slippage" and "Round trips".
It does not import or call any pipeline code: it is a plain-Python loop, one bar at a time, so
that tests can check the Numba kernel against it.

Where the contract leaves a detail open, this file picks the reading noted in a comment:

- a stop-loss "reached at a level strictly before LP" compares the stop's fill price (the open
  when the open gapped past the stop, else the stop level) with LP;
- the stop-loss is checked in full (open, then range) before the take-profit, so "the stop-loss
  wins when both stops are touched in one bar";
- with `both`, a position reverses on the other side's entry even if its own side's entry fires
  on the same bar (the "both entries: no order" rule is stated for a flat position only).

Intrabar detail (`simulate(..., detail=...)`), from the bullet "Intrabar detail" (its paragraph "On
perpetuals (`--market futures`)") with "Futures: one bar, in order":

- funding settles at the coarse bar's start, at the coarse bar's mark open (the price open without a
  coarse mark bar), as without detail; LP comes from the margin after it and holds for every finer bar;
- a held bar needs detail when its coarse adverse extreme (the coarse mark low / high, the price bar's
  without a coarse mark bar) reaches LP, or its range reaches a stop level: a long's low at or below
  the stop-loss or the trailing level its high could raise it to (`max(base, high) x (1 - sl)`), its
  high at or above the take-profit; a short's mirrored (`min(base, low) x (1 + sl)`, its low at or
  below the take-profit);
- such a bar replays its finer bars in time order, each decided exactly as a coarse bar (liquidation
  against the finer adverse extreme: the finer mark bar's low / high, the finer price bar's when the
  finer bar has no mark; the stops on the finer open, high, low with the same stop-loss-vs-LP rule);
  the first finer bar where the liquidation or a stop applies decides; the trailing base follows each
  finer bar's high (long) / low (short) after that finer bar's check;
- a bar that needs detail and has no finer bar is decided by its own (coarse) rule and counted in
  `bars_without_detail`; the exit is on the coarse bar (its index), at LP, the stop level or the finer
  open.

Readings where that text is silent (chosen here):

- a bar that needs detail, has finer bars and none of them decides is held through: no exit, not
  counted in `bars_without_detail`; its trailing base is then the bar's high / low, as without detail;
- `max_margin_ratio` keeps its coarse definition under detail (the bar's adverse mark extreme, over
  the bars held through), even on a bar whose coarse extreme reached LP but whose finer bars did not;
- every finer bar is checked against every level, even one the coarse range did not reach;
- `bars_without_detail` is None without detail ("NULL without --detail");
- a finer bar that liquidates closes at LP even when its open is already past LP (as a coarse bar:
  "closed at LP").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Tier = tuple[float, float, float, float]  # (min_notional, max_notional, mmr, cum)
MarkBar = tuple[float, float, float]  # (mark_open, mark_high, mark_low)
FinerBar = tuple[float, float, float, MarkBar | None]  # (open, high, low, finer mark bar or None)

LONG = 1
SHORT = -1
FLAT = 0


@dataclass
class _Position:
    side: int  # +1 long, -1 short
    entry_bar: int
    entry_price: float  # E, the entry fill price (slippage included)
    qty: float
    margin: float  # M, "M includes funding so far"
    stake: float  # S, the cash committed at entry (margin + fee)
    entry_fee: float
    mmr: float
    cum: float
    stop_base: float  # base of the stop-loss; trails the high (long) / low (short) with `trail`
    funding: float = 0.0  # funding this position paid (positive = paid)


def _market_price(price: float, buy: bool, slippage: float) -> float:
    """SPEC 4.1: "buys at price x (1 + s), sells at price x (1 - s)"."""
    return price * (1.0 + slippage) if buy else price * (1.0 - slippage)


def _tier_for(notional: float, tiers: Sequence[Tier]) -> tuple[float, float]:
    """Return (mmr, cum) of the tier: "the bracket is the one whose [minNotional, maxNotional)
    holds the entry notional qty x E; past the last bracket's end, the last"."""
    for lo, hi, mmr, cum in tiers:
        if lo <= notional < hi:
            return mmr, cum
    if notional < tiers[0][0]:  # below the first bracket (not expected: brackets start at 0)
        return tiers[0][2], tiers[0][3]
    return tiers[-1][2], tiers[-1][3]


def _liquidation_price(balance: float, pos: _Position) -> float | None:
    """SPEC 4.3: LP = (M + cum - side x qty x E) / (qty x mmr - side x qty); None if undefined."""
    denominator = pos.qty * pos.mmr - pos.side * pos.qty
    if denominator == 0.0:
        return None
    return (balance + pos.cum - pos.side * pos.qty * pos.entry_price) / denominator


def _margin_ratio(balance: float, pos: _Position, p: float) -> float:
    """Margin ratio (qty x p x mmr - cum) / (M' + side x qty x (p - E)); 1 when the denominator
    is <= 0."""
    denominator = balance + pos.side * pos.qty * (p - pos.entry_price)
    if denominator <= 0.0:
        return 1.0
    return (pos.qty * p * pos.mmr - pos.cum) / denominator


def _stop_loss_fill(pos: _Position, o: float, h: float, lo: float, sl: float,
                    base: float | None = None) -> float | None:
    """SPEC 4.1 mirrored for shorts: a long's stop at base x (1 - sl), a short's at
    base x (1 + sl). "If the open is already at or beyond a stop, the exit fills at the open;
    else if the bar's range touches the stop (low <= stop <= high), it fills at the stop price."
    """
    if sl <= 0.0:
        return None
    if base is None:
        base = pos.stop_base
    if pos.side == LONG:
        level = base * (1.0 - sl)
        if o <= level:
            return o
    else:
        level = base * (1.0 + sl)
        if o >= level:
            return o
    if lo <= level <= h:
        return level
    return None


def _take_profit_fill(pos: _Position, o: float, h: float, lo: float, tp: float) -> float | None:
    """SPEC 4.1 mirrored: a long's take-profit at entry x (1 + tp), a short's at entry x (1 - tp).
    """
    if tp <= 0.0:
        return None
    if pos.side == LONG:
        level = pos.entry_price * (1.0 + tp)
        if o >= level:
            return o
    else:
        level = pos.entry_price * (1.0 - tp)
        if o <= level:
            return o
    if lo <= level <= h:
        return level
    return None


def _reaches_lp(side: int, adverse: float, lp: float | None) -> bool:
    """The liquidation check: "the mark's low for a long, high for a short, against LP"."""
    return lp is not None and (adverse <= lp if side == LONG else adverse >= lp)


def _one_bar(pos: _Position, o: float, h: float, lo: float, adverse: float, lp: float | None,
             base: float, sl: float, tp: float, sl_reason: str) -> tuple[str, float] | None:
    """Step (2) of "Futures: one bar, in order" on one bar (a coarse bar, or a finer bar under
    --detail): (reason, exit price) of its liquidation or stop exit, or None.

    "a liquidation wins unless a stop-loss (trailing or not) fills strictly before LP moving from
    the open (its fill: its level, or the open when the bar opened past it; a long's above LP, a
    short's below); the stop-loss is checked before the take-profit"."""
    sl_fill = _stop_loss_fill(pos, o, h, lo, sl, base)
    if _reaches_lp(pos.side, adverse, lp):
        assert lp is not None
        if sl_fill is not None and (sl_fill > lp if pos.side == LONG else sl_fill < lp):
            return sl_reason, sl_fill
        return "liquidation", lp
    if sl_fill is not None:
        return sl_reason, sl_fill
    tp_fill = _take_profit_fill(pos, o, h, lo, tp)
    if tp_fill is not None:
        return "take_profit", tp_fill
    return None


def _needs_detail(pos: _Position, h: float, lo: float, adverse: float, lp: float | None, sl: float,
                  tp: float, trail: bool) -> bool:
    """"a held bar whose adverse extreme reaches its liquidation price, or whose range reaches a stop
    level": the stop-loss (with `trail`, the level the bar's own high / low could move it to) or the
    take-profit within the bar's range (a long's low at or below its stop, high at or above its
    take-profit; a short's mirrored)."""
    if _reaches_lp(pos.side, adverse, lp):
        return True
    if pos.side == LONG:
        if sl > 0.0 and lo <= (max(pos.stop_base, h) if trail else pos.stop_base) * (1.0 - sl):
            return True
        return tp > 0.0 and h >= pos.entry_price * (1.0 + tp)
    if sl > 0.0 and h >= (min(pos.stop_base, lo) if trail else pos.stop_base) * (1.0 + sl):
        return True
    return tp > 0.0 and lo <= pos.entry_price * (1.0 - tp)


def _target_side(direction: str, side: int, enter_long: bool, exit_long: bool,
                 enter_short: bool, exit_short: bool) -> int | None:
    """Return the side to hold after this bar's signals, or None (no order): "Futures signals".

    `long` takes entries/exits alone, `short` enter_short/exit_short alone; `both` opens from
    flat the side whose entry fires alone (both entries on one bar: no order), reverses a
    position on the other side's entry and closes it on its own exit. A signal that does not
    change the state is ignored (SPEC 4)."""
    if direction == "long":
        if side == FLAT and enter_long:
            return LONG
        if side == LONG and exit_long:
            return FLAT
        return None
    if direction == "short":
        if side == FLAT and enter_short:
            return SHORT
        if side == SHORT and exit_short:
            return FLAT
        return None
    if direction != "both":
        raise ValueError(f"direction must be long, short or both, not {direction!r}")
    if side == FLAT:
        if enter_long and not enter_short:
            return LONG
        if enter_short and not enter_long:
            return SHORT
        return None
    if side == LONG:
        if enter_short:
            return SHORT  # reverse
        if exit_long:
            return FLAT
        return None
    if enter_long:  # side == SHORT
        return LONG  # reverse
    if exit_short:
        return FLAT
    return None


def simulate(open_: Sequence[float], high: Sequence[float], low: Sequence[float],
             close: Sequence[float],
             enter_long: Sequence[bool], exit_long: Sequence[bool],
             enter_short: Sequence[bool], exit_short: Sequence[bool],
             funding_rate: Sequence[float | None],
             mark: Sequence[MarkBar | None],
             tiers: Sequence[Tier],
             *, leverage: float, direction: str, cross: bool, fee: float,
             initial: float, fill: str,
             sl: float = 0.0, tp: float = 0.0, trail: bool = False, size: float = 1.0,
             slippage: float = 0.0,
             detail: Sequence[Sequence[FinerBar]] | None = None) -> dict[str, Any]:
    """Simulate one symbol's perpetual future (USDT-margined, linear) bar by bar.

    `funding_rate[t]` is the sum of the rates floored into bar t, or None; `mark[t]` is
    (mark_open, mark_high, mark_low) or None where the mark series has no bar. `fee`, `sl`,
    `tp`, `slippage` and `size` are fractions. `detail` (--detail) is, per bar, its finer bars in
    time order, each (open, high, low, finer mark bar or None); an empty list: the bar has none.
    None: no detail (then `bars_without_detail` is None). `detail_bars` lists, per bar that needed
    detail, (bar, its own rule's event, the event decided, whether finer bars decided it), an event
    being (reason, exit price) or None. See the module docstring for the sources.
    """
    if fill not in ("close", "next_open"):
        raise ValueError(f"fill must be close or next_open, not {fill!r}")
    n = len(close)
    if detail is not None and len(detail) != n:
        raise ValueError(f"detail has {len(detail)} bars' finer bars for {n} bars")
    bars_without_detail = 0
    # per bar that needed detail: (bar, its own rule's event, the event decided, decided on finer bars)
    detail_bars: list[tuple[int, tuple[str, float] | None, tuple[str, float] | None, bool]] = []
    cash = initial
    pos: _Position | None = None
    pending: int | None = None  # next_open: the side to hold after the next bar's open
    trips: list[dict[str, Any]] = []
    equity: list[float] = []
    funding_paid = 0.0
    fees_paid = 0.0
    liquidations = 0
    num_trades = 0
    bars_without_mark = 0
    max_margin_ratio = math.nan

    def record_ratio(value: float) -> None:
        nonlocal max_margin_ratio
        if math.isnan(max_margin_ratio) or value > max_margin_ratio:
            max_margin_ratio = value

    def close_position(t: int, price: float, reason: str) -> None:
        """Exit at X: pnl = side x qty x (X - E), fee = qty x X x f, cash += M + pnl - fee."""
        nonlocal cash, pos, fees_paid
        assert pos is not None
        pnl = pos.side * pos.qty * (price - pos.entry_price)
        exit_fee = pos.qty * price * fee
        value = pos.margin + pnl - exit_fee
        cash += value
        fees_paid += exit_fee
        trips.append(_trip(pos, t, price, exit_fee, value, reason))
        pos = None

    def liquidate(t: int, lp: float) -> None:
        """Liquidate at LP: "exit price LP, no fee, nothing returned"; cross loses the cash too."""
        nonlocal cash, pos, liquidations
        assert pos is not None
        liquidations += 1
        if cross:
            cash = 0.0
        trips.append(_trip(pos, t, lp, 0.0, 0.0, "liquidation"))
        pos = None

    def open_position(t: int, side: int, price: float) -> None:
        """Stake S = cash x size: fee = S x L x f, M = S - fee, qty = M x L / P, E = P.
        "An entry with no cash left is skipped." """
        nonlocal cash, pos, fees_paid, num_trades
        if cash <= 0.0:
            return
        fill_price = _market_price(price, buy=side == LONG, slippage=slippage)
        stake = cash * size
        entry_fee = stake * leverage * fee
        margin = stake - entry_fee
        qty = margin * leverage / fill_price
        cash -= stake
        fees_paid += entry_fee
        num_trades += 1
        mmr, cum = _tier_for(qty * fill_price, tiers)
        pos = _Position(side=side, entry_bar=t, entry_price=fill_price, qty=qty, margin=margin,
                        stake=stake, entry_fee=entry_fee, mmr=mmr, cum=cum,
                        stop_base=fill_price)

    def market_fill(t: int, target: int, price: float) -> None:
        """Move to `target` at a market price: a reversal closes and opens at the same fill,
        both fees, both slippages against the trader the same way."""
        if pos is not None and target != pos.side:
            # closing a long is a sell, closing a short a buy
            close_position(t, _market_price(price, buy=pos.side == SHORT, slippage=slippage),
                           "signal")
        if target != FLAT and pos is None:
            open_position(t, target, price)

    def signal_target(t: int) -> int | None:
        side = FLAT if pos is None else pos.side
        return _target_side(direction, side, enter_long[t], exit_long[t], enter_short[t],
                            exit_short[t])

    for t in range(n):
        o, h, lo, c = open_[t], high[t], low[t], close[t]
        if mark[t] is None:
            # "bars the mark series has no bar for ... funding and the liquidation check used
            # the price bar"
            bars_without_mark += 1
            mark_open, mark_high, mark_low = o, h, lo
        else:
            mark_open, mark_high, mark_low = mark[t]

        left_by_check = False  # a liquidation or a stop exit is the bar's one fill
        if pos is not None and pos.entry_bar < t:
            # (1) funding settles into the margin: payment = side x qty x mark(t) x r
            rate = funding_rate[t]
            if rate is not None:
                payment = pos.side * pos.qty * mark_open * rate
                pos.margin -= payment
                pos.funding += payment
                funding_paid += payment

            # (2) the liquidation check and the stops decide together
            balance = pos.margin + (cash if cross else 0.0)
            lp = _liquidation_price(balance, pos)
            adverse = mark_low if pos.side == LONG else mark_high
            sl_reason = "trailing_stop" if trail else "stop_loss"
            own = _one_bar(pos, o, h, lo, adverse, lp, pos.stop_base, sl, tp, sl_reason)
            if detail is not None and _needs_detail(pos, h, lo, adverse, lp, sl, tp, trail):
                finer = detail[t]
                if finer:
                    # replay the finer bars, each under the same rule; the first deciding wins
                    event = None
                    base = pos.stop_base
                    for f_open, f_high, f_low, f_mark in finer:
                        if f_mark is None:  # no finer mark bar: the finer price bar's extreme
                            f_adverse = f_low if pos.side == LONG else f_high
                        else:
                            f_adverse = f_mark[2] if pos.side == LONG else f_mark[1]
                        event = _one_bar(pos, f_open, f_high, f_low, f_adverse, lp, base, sl, tp,
                                         sl_reason)
                        if event is not None:
                            break
                        if trail:  # the base follows each finer bar after its check
                            base = max(base, f_high) if pos.side == LONG else min(base, f_low)
                else:
                    bars_without_detail += 1  # decided by its own rule
                    event = own
                detail_bars.append((t, own, event, bool(finer)))
            else:
                event = own
            if event is not None:
                reason, price = event
                if reason == "liquidation":
                    record_ratio(1.0)  # "1 on a liquidation"
                    liquidate(t, price)
                else:
                    close_position(t, price, reason)
                left_by_check = True
            else:
                # max margin ratio over the bars held through (not left at the open)
                closes_at_open = pending is not None and pending != pos.side
                if not closes_at_open:
                    record_ratio(_margin_ratio(balance, pos, adverse))
                # "a trailing stop-loss moves its base to the bar's high (when higher) after
                # that bar's check"; a short's base follows the lowest low
                if trail:
                    pos.stop_base = (max(pos.stop_base, h) if pos.side == LONG
                                     else min(pos.stop_base, lo))

        if left_by_check:
            pending = None  # "drops a waiting order"
        elif pending is not None:
            # (3) the order waiting from the last close fills at the open
            market_fill(t, pending, o)
            pending = None

        if fill == "close":
            # (4) the bar's signals fill at its close; ignored on a bar left by a stop or a
            # liquidation
            if not left_by_check:
                target = signal_target(t)
                if target is not None:
                    market_fill(t, target, c)
        elif t < n - 1:
            # next_open: evaluated on the state after this bar's fill; "a signal on the last
            # bar is not filled"
            pending = signal_target(t)

        # "Equity at each close: cash + M + side x qty x (close - E)"
        if pos is None:
            equity.append(cash)
        else:
            equity.append(cash + pos.margin + pos.side * pos.qty * (c - pos.entry_price))

    if pos is not None:
        # "marked at the last close: M + side x qty x (close - E), its end_of_data trip's exit
        # value" (not sold: no exit fee)
        last = close[n - 1]
        value = pos.margin + pos.side * pos.qty * (last - pos.entry_price)
        trips.append(_trip(pos, n - 1, last, 0.0, value, "end_of_data"))

    return {
        "trips": trips,
        "equity": equity,
        "final_value": equity[-1] if equity else initial,
        "funding_paid": funding_paid,
        "liquidations": liquidations,
        "max_margin_ratio": max_margin_ratio,
        "bars_without_mark": bars_without_mark,
        "num_trades": num_trades,
        "fees_paid": fees_paid,
        "bars_without_detail": None if detail is None else bars_without_detail,
        "detail_bars": detail_bars,
    }


def _trip(pos: _Position, exit_bar: int, exit_price: float, exit_fee: float, exit_value: float,
          reason: str) -> dict[str, Any]:
    return {
        "side": pos.side,
        "entry_bar": pos.entry_bar,
        "exit_bar": exit_bar,
        "entry_price": pos.entry_price,
        "exit_price": exit_price,
        "qty": pos.qty,
        "stake": pos.stake,
        "entry_fee": pos.entry_fee,
        "exit_fee": exit_fee,
        "exit_value": exit_value,
        "funding": pos.funding,
        "exit_reason": reason,
    }
