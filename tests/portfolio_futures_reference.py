"""Independent reference simulator for a futures portfolio: ONE shared account over many perpetuals.

Written from docs/contract.md alone: SPEC 4.3 (Perpetual futures) and the "Our choices where the rules
are silent" bullets "Futures: one bar, in order", "Futures signals", "Funding rates in a bar",
"Maintenance tiers", "Futures metrics", "Futures round trips" and "Futures portfolio", with
docs/portfolio.md's "Rules" (slots, ranking, stakes, skips, equity). It imports no pipeline code: a
plain-Python loop over the grid, one bar at a time, so that tests can check the Numba kernel
(pipeline/engine/kernels/portfolio_futures.py) against it. The single-symbol rules it shares with
tests/futures_reference.py (the target rule of "Futures signals", the tier lookup, slippage) are
imported from there.

At each grid bar where any symbol has a bar, in the contract's order:
  1. funding: `side x qty x mark open x rate` into M (isolated) or the cash (cross);
  2. liquidation: isolated, each position whose symbol has a bar against its own LP; cross, the
     account's equity at the adverse extremes against the sum of maintenance margins;
  3. exits (the waiting order at the open, or the bar's signals at its close);
  4. entries in rank order (slots, stake, cash);
  5. the equity at the latest closes.

Where the contract leaves a detail open, this file picks the reading noted here:

- A symbol "has a bar" at t when its close is not NaN; it "has a mark bar" when its mark open is not
  NaN. `bars_without_mark` counts, per symbol, its price bars without a mark bar.
- A fraction stake is taken of the equity once per bar, after the bar's exits and before its first
  entry (cash + every position at its latest close: with `close` fills this bar's close where the
  symbol has one, with `next_open` the previous close), and every entry of the bar uses that figure,
  as the spot portfolio's plain-Python reference does (tests/test_portfolio.py).
- An entry is skipped for cash (`skipped_no_cash`) when the cash is <= 0 ("an entry with no cash left
  is skipped"), when its stake is <= 0, or when the stake exceeds the cash (strictly).
- Ranks: higher first, NaN last, ties to the lower symbol index. A `next_open` entry ranks by the rank
  of its signal bar (docs/portfolio.md: "up to the signal bar").
- With `close` fills, a position liquidated on a bar (isolated or cross) ignores that bar's own
  signals ("Liquidation wins over ... the bar's own signal in the same bar"; "a liquidation ... is the
  bar's one fill"): it does not re-enter on that bar. Symbols that held no position are not touched by
  an account liquidation: their entries of that bar go ahead with whatever cash is left. With
  `next_open`, the liquidation drops the position's waiting order, and that bar's signals make the
  next order as usual (as in a single-symbol run).
- A `next_open` order is taken at the symbol's close from the state after that bar's fills, waits
  through grid bars where the symbol has no bar, and fills at the symbol's next open.
- The cross account check runs at every grid bar (any symbol has a bar) where the account holds a
  position, with each position's latest close as its p when its own symbol has no bar.
- `max_margin_ratio` (NaN while never measured): isolated, a position's ratio counts on the bars its
  symbol has, after its entry bar, unless it leaves at that bar's open (a waiting order that closes or
  reverses it); cross, the account's ratio (over all positions at the check) counts on a bar unless
  every position it holds leaves at that bar's open. A liquidation counts 1.
- A cross account liquidation returns each position's `M + side x qty x (X - E)` (not floored per
  position); the floor at 0 applies to the cash after all of them. The trip's `pnl` is that value less
  its stake and its funding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.futures_reference import _market_price, _target_side, _tier_for

Tier = tuple[float, float, float, float]  # (min_notional, max_notional, mmr, cum)

LONG = 1
SHORT = -1
FLAT = 0


@dataclass
class _Position:
    symbol: int
    side: int  # +1 long, -1 short
    entry_bar: int
    entry_price: float  # E (slippage included)
    qty: float
    margin: float  # M; isolated: "M includes funding so far"; cross: funding comes from the cash
    stake: float  # S
    entry_fee: float
    mmr: float
    cum: float
    funding: float = 0.0  # paid while open (positive = paid)


def _sort_key(rank: float, symbol: int) -> tuple[bool, float, int]:
    """Higher rank first, NaN last, ties to the symbol that sorts first."""
    return (math.isnan(rank), 0.0 if math.isnan(rank) else -rank, symbol)


def simulate_portfolio(
        open_: Sequence[Sequence[float]], high: Sequence[Sequence[float]],
        low: Sequence[Sequence[float]], close: Sequence[Sequence[float]],
        funding: Sequence[Sequence[float]],
        mark_open: Sequence[Sequence[float]], mark_high: Sequence[Sequence[float]],
        mark_low: Sequence[Sequence[float]], mark_close: Sequence[Sequence[float]],
        enter_long: Sequence[Sequence[bool]], exit_long: Sequence[Sequence[bool]],
        enter_short: Sequence[Sequence[bool]], exit_short: Sequence[Sequence[bool]],
        rank: Sequence[Sequence[float]], tiers: Sequence[Sequence[Tier]],
        *, max_open: int, stake_is_fraction: bool, stake: float, leverage: float, direction: str,
        cross: bool, fee: float, slippage: float, initial: float, fill: str) -> dict[str, Any]:
    """Simulate one futures account over S symbols on a T-bar grid.

    Every 2-D input is indexed [symbol][bar] with NaN where the symbol has no bar (prices), no
    funding (funding: the rates floored into that bar, summed) or no mark bar. `tiers[s]` are
    symbol s's brackets. `fee` and `slippage` are fractions; `fill` is "close" or "next_open".
    """
    if fill not in ("close", "next_open"):
        raise ValueError(f"fill must be close or next_open, not {fill!r}")
    next_open = fill == "next_open"
    n_sym = len(close)
    n_bars = len(close[0]) if n_sym else 0

    cash = initial
    positions: dict[int, _Position] = {}
    last_close: dict[int, float] = {}
    pending: dict[int, tuple[int, float]] = {}  # symbol -> (target side, rank at the signal bar)
    trips: list[dict[str, Any]] = []
    equity: list[float] = []
    funding_paid = 0.0
    liquidations = 0
    num_trades = 0
    skipped_no_slot = 0
    skipped_no_cash = 0
    max_open_seen = 0
    bars_without_mark = 0
    max_margin_ratio = math.nan

    def record_ratio(value: float) -> None:
        nonlocal max_margin_ratio
        if math.isnan(max_margin_ratio) or value > max_margin_ratio:
            max_margin_ratio = value

    def trip(pos: _Position, exit_bar: int, exit_price: float, exit_fee: float, returned: float,
             reason: str) -> None:
        """A round trip: pnl = what the exit returned less the stake and, under cross margin (funding
        paid from the cash), less the funding it paid."""
        pnl = returned - pos.stake - (pos.funding if cross else 0.0)
        trips.append({
            "symbol": pos.symbol, "side": pos.side, "entry_bar": pos.entry_bar,
            "entry_price": pos.entry_price, "exit_bar": exit_bar, "exit_price": exit_price,
            "qty": pos.qty, "stake": pos.stake, "entry_fee": pos.entry_fee, "exit_fee": exit_fee,
            "fees": pos.entry_fee + exit_fee, "returned": returned, "funding": pos.funding,
            "pnl": pnl, "return_pct": pnl / pos.stake * 100.0, "exit_reason": reason,
        })

    def adverse(pos: _Position, t: int, has_bar: set[int], has_mark: dict[int, bool]) -> float:
        """The mark's low (long) / high (short); the price bar's without a mark bar; the latest
        close when the symbol has no bar."""
        s = pos.symbol
        if s not in has_bar:
            return last_close[s]
        if has_mark[s]:
            return mark_low[s][t] if pos.side == LONG else mark_high[s][t]
        return low[s][t] if pos.side == LONG else high[s][t]

    def leaves_at_open(pos: _Position, has_bar: set[int]) -> bool:
        """A waiting order that closes or reverses the position fills at this bar's open."""
        if not next_open or pos.symbol not in has_bar:
            return False
        order = pending.get(pos.symbol)
        return order is not None and order[0] != pos.side

    for t in range(n_bars):
        here = [s for s in range(n_sym) if not math.isnan(close[s][t])]
        if not here:
            equity.append(math.nan)  # no symbol has a bar: no equity mark
            continue
        has_bar = set(here)
        has_mark = {s: not math.isnan(mark_open[s][t]) for s in here}
        bars_without_mark += sum(1 for s in here if not has_mark[s])

        # 1. Funding: every open position whose symbol has a bar (all were entered earlier).
        for s in sorted(positions):
            if s not in has_bar:
                continue
            rate = funding[s][t]
            if math.isnan(rate):
                continue
            pos = positions[s]
            price = mark_open[s][t] if has_mark[s] else open_[s][t]
            payment = pos.side * pos.qty * price * rate
            if cross:
                cash -= payment
            else:
                pos.margin -= payment
            pos.funding += payment
            funding_paid += payment

        # 2. Liquidation.
        liquidated_now: set[int] = set()
        if not cross:
            for s in sorted(positions):
                if s not in has_bar:
                    continue
                pos = positions[s]
                # LP = (M + cum - side x qty x E) / (qty x mmr - side x qty), from M after funding
                lp = ((pos.margin + pos.cum - pos.side * pos.qty * pos.entry_price)
                      / (pos.qty * pos.mmr - pos.side * pos.qty))
                p = adverse(pos, t, has_bar, has_mark)
                if (p <= lp) if pos.side == LONG else (p >= lp):
                    # closed at LP, no fee, nothing returned, its slot freed
                    liquidations += 1
                    record_ratio(1.0)
                    trip(pos, t, lp, 0.0, 0.0, "liquidation")
                    del positions[s]
                    pending.pop(s, None)  # its waiting order is dropped
                    liquidated_now.add(s)
                elif not leaves_at_open(pos, has_bar):
                    denominator = pos.margin + pos.side * pos.qty * (p - pos.entry_price)
                    record_ratio(1.0 if denominator <= 0.0
                                 else (pos.qty * p * pos.mmr - pos.cum) / denominator)
        elif positions:
            held = [positions[s] for s in sorted(positions)]
            extremes = [adverse(pos, t, has_bar, has_mark) for pos in held]
            at_extremes = cash + sum(pos.margin + pos.side * pos.qty * (p - pos.entry_price)
                                     for pos, p in zip(held, extremes, strict=True))
            maintenance = sum(pos.qty * p * pos.mmr - pos.cum
                              for pos, p in zip(held, extremes, strict=True))
            if at_extremes <= maintenance:
                # the account is liquidated: every position at its mark close, no fee
                record_ratio(1.0)
                for pos in held:
                    s = pos.symbol
                    if s not in has_bar:
                        x = last_close[s]
                    elif has_mark[s]:
                        x = mark_close[s][t]
                    else:
                        x = close[s][t]
                    returned = pos.margin + pos.side * pos.qty * (x - pos.entry_price)
                    cash += returned
                    liquidations += 1
                    trip(pos, t, x, 0.0, returned, "liquidation")
                    del positions[s]
                    pending.pop(s, None)
                    liquidated_now.add(s)
                cash = max(cash, 0.0)  # an account cannot owe
            elif not all(leaves_at_open(pos, has_bar) for pos in held):
                record_ratio(1.0 if at_extremes <= 0.0 else maintenance / at_extremes)

        # 3. Exits (a reversal closes here; its new side is an entry candidate of step 4).
        candidates: list[tuple[int, int, float]] = []  # (symbol, side, rank)
        for s in here:
            if s in liquidated_now:
                continue
            pos = positions.get(s)
            if next_open:
                order = pending.pop(s, None)  # every waiting order of a symbol with a bar is used
                if order is None:
                    continue
                target, order_rank = order
                price = open_[s][t]
            else:
                current = FLAT if pos is None else pos.side
                target = _target_side(direction, current, enter_long[s][t], exit_long[s][t],
                                      enter_short[s][t], exit_short[s][t])
                if target is None:
                    continue
                order_rank = rank[s][t]
                price = close[s][t]
            if pos is not None and target != pos.side:
                # closing a long sells, closing a short buys: slippage against the trader
                x = _market_price(price, buy=pos.side == SHORT, slippage=slippage)
                exit_fee = pos.qty * x * fee
                returned = pos.margin + pos.side * pos.qty * (x - pos.entry_price) - exit_fee
                cash += returned
                trip(pos, t, x, exit_fee, returned, "signal")
                del positions[s]
                pos = None
            if pos is None and target != FLAT:
                candidates.append((s, target, order_rank))

        # 4. Entries in rank order.
        if candidates:
            candidates.sort(key=lambda c: _sort_key(c[2], c[0]))
            # the latest close: with close fills this bar's where the symbol has one
            latest = {s: close[s][t] if not next_open and s in has_bar else last_close[s]
                      for s in positions}
            equity_now = cash + sum(pos.margin + pos.side * pos.qty * (latest[s] - pos.entry_price)
                                    for s, pos in positions.items())
            for s, side, _ in candidates:
                if len(positions) >= max_open:
                    skipped_no_slot += 1
                    continue
                amount = stake * equity_now if stake_is_fraction else stake
                if cash <= 0.0 or amount <= 0.0 or amount > cash:
                    skipped_no_cash += 1
                    continue
                price = open_[s][t] if next_open else close[s][t]
                e = _market_price(price, buy=side == LONG, slippage=slippage)
                entry_fee = amount * leverage * fee
                margin = amount - entry_fee
                qty = margin * leverage / e
                mmr, cum = _tier_for(qty * e, tiers[s])
                cash -= amount
                num_trades += 1
                positions[s] = _Position(symbol=s, side=side, entry_bar=t, entry_price=e, qty=qty,
                                         margin=margin, stake=amount, entry_fee=entry_fee, mmr=mmr,
                                         cum=cum)
                max_open_seen = max(max_open_seen, len(positions))

        # 5. Equity at the latest closes; next_open orders are taken from this close.
        for s in here:
            last_close[s] = close[s][t]
        equity.append(cash + sum(pos.margin + pos.side * pos.qty * (last_close[s] - pos.entry_price)
                                 for s, pos in positions.items()))
        if next_open:
            for s in here:
                pos = positions.get(s)
                target = _target_side(direction, FLAT if pos is None else pos.side,
                                      enter_long[s][t], exit_long[s][t], enter_short[s][t],
                                      exit_short[s][t])
                if target is None:
                    pending.pop(s, None)
                else:
                    pending[s] = (target, rank[s][t])

    # Still open after the last bar: marked at the latest close, not sold (no exit fee).
    for s in sorted(positions):
        pos = positions[s]
        x = last_close[s]
        trip(pos, -1, x, 0.0, pos.margin + pos.side * pos.qty * (x - pos.entry_price), "end_of_data")

    marked = [v for v in equity if not math.isnan(v)]
    final_value = marked[-1] if marked else initial
    return {
        "trips": trips,
        "equity": equity,
        "final_value": final_value,
        "total_return_pct": (final_value / initial - 1.0) * 100.0,
        "funding_paid": funding_paid,
        "liquidations": liquidations,
        "max_margin_ratio": max_margin_ratio,
        "bars_without_mark": bars_without_mark,
        "num_trades": num_trades,
        "closed_trades": sum(1 for tr in trips if tr["exit_reason"] != "end_of_data"),
        "skipped_no_slot": skipped_no_slot,
        "skipped_no_cash": skipped_no_cash,
        "max_open_seen": max_open_seen,
    }
