"""Intrabar detail on perpetual futures (the contract's "Intrabar detail" bullet, its paragraph "On
perpetuals (`--market futures`)", with "Futures: one bar, in order") against the independent plain-Python
loop tests/futures_reference.py (`simulate(..., detail=...)`), on real Binance perpetual data and on
planted bars checked by hand.

Real data: freqtrade's XRP_USDT_USDT 5-minute candles (1,999 of them) aggregated to 1h by a plain loop
(first open, max high, min low, last close, summed volume), the 8-hourly funding rates (rate in `open`,
each time floored to its hour, summed when several) and the hourly mark bars. The mark bars are hourly
only, so the finer bars have no mark and their price bars stand in. A second detail set, "5m-holes",
hands over the 5m candles without every 9th hour (and without every 7th candle of the rest), so that bars
needing detail without any finer bar happen on real data too. The engine runs through the notebook API.

On the real data detail changes stop exits (trailing stops, a take-profit against a stop) but never the
liquidation decision of a bar itself (the finer bars have no mark there), so planted hours check that by hand:
a coarse bar reaching both a stop and LP whose 5m bars (with 5m mark bars, given as `mark` frames at 5m)
decide the other way round than its own rule, both ways, long and short.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.engine import tiers
from pipeline.engine.strategies import get_strategy
from pipeline.notebook import round_trips, run_backtest
from tests import futures_reference
from tests.test_detail_reference import Bar, aggregate, frame, iso, read_5m, with_holes

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "binance-futures"
SYMBOL = "XRP_USDT_USDT"
PARAMS = {"rsi_period": 6, "oversold_threshold": 40, "overbought_threshold": 60}
RSI_PARAMS = np.array([6.0, 40.0, 60.0])
FEE = 0.05  # percent
HOUR = 3600
REL = 1e-9
XRP_TIERS = [tuple(float(v) for v in row) for row in tiers.load(None, None).of(SYMBOL)]

DIRECTIONS = ("long", "short", "both")
LEVERAGES = (3.0, 20.0, 50.0)
MARGINS = ("isolated", "cross")
STOPS = [(sl, tp, trail) for sl in (0.0, 1.0) for tp in (0.0, 2.0) for trail in ((False, True) if sl else (False,))]
FILLS = ("close", "next_open")
DETAILS = (None, "5m", "5m-holes")

# --- the data, by plain loops ----------------------------------------------------------------------


read_bars = read_5m  # the plain-loop readers of the spot detail test (with_holes, frame, iso too)


def finer(hours: list[Bar], fine: list[Bar], marks: dict[int, tuple[float, float, float]] | None = None
          ) -> list[list[futures_reference.FinerBar]]:
    """Per hour its finer bars in time order, (open, high, low, finer mark bar or None)."""
    inside: dict[int, list] = {}
    for ts, o, h, lo, _c, _v in fine:
        inside.setdefault(ts - ts % HOUR, []).append((o, h, lo, (marks or {}).get(ts)))
    return [inside.get(bar[0], []) for bar in hours]


@dataclass
class Data:
    hours: list[Bar]
    fine: dict[str, list[Bar]]
    detail: dict[str, list[list[futures_reference.FinerBar]]]
    funding_rate: list[float | None]
    mark: list[tuple[float, float, float] | None]
    entries: list[bool]
    exits: list[bool]
    funding_frame: pl.DataFrame
    mark_frame: pl.DataFrame


def load() -> Data:
    five = read_bars(SAMPLE / f"{SYMBOL}-5m-futures.feather")
    hours = aggregate(five, HOUR)
    at = {bar[0]: i for i, bar in enumerate(hours)}
    funding_frame = pl.read_ipc(SAMPLE / f"{SYMBOL}-8h-funding_rate.feather")
    rate: list[float | None] = [None] * len(hours)
    for ms, r in zip(funding_frame["date"].dt.epoch("ms").to_list(), funding_frame["open"].to_list(), strict=True):
        i = at.get(ms // 1000 // HOUR * HOUR)
        if i is not None:
            rate[i] = float(r) if rate[i] is None else rate[i] + float(r)
    mark_frame = pl.read_ipc(SAMPLE / f"{SYMBOL}-1h-mark.feather")
    by_time = {int(t): (float(o), float(h), float(lo)) for t, o, h, lo in zip(
        mark_frame["date"].dt.epoch("s").to_list(), mark_frame["open"], mark_frame["high"], mark_frame["low"],
        strict=True)}
    close = np.array([b[4] for b in hours])
    n = close.size
    _, entries, exits = get_strategy("rsi").kernels().indicators_and_signals_single(
        (close.reshape(1, n),), close, RSI_PARAMS)
    fine = {"5m": five, "5m-holes": with_holes(five)}
    return Data(hours, fine, {k: finer(hours, v) for k, v in fine.items()}, rate,
                [by_time.get(b[0]) for b in hours], [bool(x) for x in entries], [bool(x) for x in exits],
                funding_frame, mark_frame)


@dataclass(frozen=True)
class Config:
    direction: str
    leverage: float
    margin: str
    sl: float  # percent
    tp: float
    trail: bool
    fill: str

    def run(self) -> dict:
        return {"market": "futures", "leverage": self.leverage, "direction": self.direction, "margin": self.margin,
                "sl": self.sl, "tp": self.tp, "trail": self.trail, "fill": self.fill, "fee": FEE}


CONFIGS = [Config(d, lev, m, sl, tp, trail, fill) for d, lev, m, (sl, tp, trail), fill
           in itertools.product(DIRECTIONS, LEVERAGES, MARGINS, STOPS, FILLS)]


def ours(data: Data, config: Config, detail: str | None) -> dict:
    kwargs = {}
    if detail is not None:
        kwargs = {"detail": "5m", "detail_frames": {SYMBOL: frame(data.fine[detail])}}
    result = run_backtest({SYMBOL: frame(data.hours)}, "rsi", PARAMS, funding={SYMBOL: data.funding_frame},
                          mark={SYMBOL: data.mark_frame}, trades=True, **config.run(), **kwargs)
    (row,) = result.to_dicts()
    return row


def reference(data: Data, config: Config, detail: str | None) -> dict:
    col = lambda i: [b[i] for b in data.hours]  # noqa: E731
    # The built-in's short rule (SHORT_RULE = "mirror"): its exits open shorts, its entries close them.
    return futures_reference.simulate(
        col(1), col(2), col(3), col(4), data.entries, data.exits, data.exits, data.entries, data.funding_rate,
        data.mark, XRP_TIERS, leverage=config.leverage, direction=config.direction, cross=config.margin == "cross",
        fee=FEE / 100, initial=1000.0, fill=config.fill, sl=config.sl / 100, tp=config.tp / 100, trail=config.trail,
        detail=None if detail is None else data.detail[detail])


@dataclass
class Case:
    config: Config
    detail: str | None
    ours: dict
    ref: dict

    def __str__(self) -> str:
        return f"{self.config} detail={self.detail}"


@pytest.fixture(scope="module")
def data() -> Data:
    return load()


@pytest.fixture(scope="module")
def cases(data) -> dict[tuple[Config, str | None], Case]:
    return {(config, detail): Case(config, detail, ours(data, config, detail), reference(data, config, detail))
            for config in CONFIGS for detail in DETAILS}


# --- the comparison --------------------------------------------------------------------------------


def close_enough(a: float | None, b: float | None) -> bool:
    """Equal to REL relative; None (the engine's NULL) stands for NaN."""
    a = math.nan if a is None else a
    b = math.nan if b is None else b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


def expected_fills(trips: list[dict], times: list[int]) -> list[dict]:
    """The fill log the reference's trips make: an entry (its stake, fee) and, unless still open at the
    end, an exit (the cash it returned, its fee); a long enters with a buy, a short with a sell."""
    out = []
    for trip in trips:
        long = trip["side"] == futures_reference.LONG
        out.append({"time": iso(times[trip["entry_bar"]]), "action": "buy" if long else "sell",
                    "price": trip["entry_price"], "units": trip["qty"], "value": trip["stake"],
                    "fee": trip["entry_fee"]})
        if trip["exit_reason"] != "end_of_data":
            out.append({"time": iso(times[trip["exit_bar"]]), "action": "sell" if long else "buy",
                        "price": trip["exit_price"], "units": trip["qty"], "value": trip["exit_value"],
                        "fee": trip["exit_fee"]})
    return out


def differences(got: dict, ref: dict, times: list[int]) -> list[str]:
    """Every way the engine's result differs from the reference's, one line each."""
    out = []
    for key in ("final_value", "funding_paid", "fees_paid", "max_margin_ratio"):
        if not close_enough(got[key], ref[key]):
            out.append(f"{key}: ours {got[key]!r} reference {ref[key]!r}")
    for key in ("liquidations", "num_trades", "bars_without_detail", "bars_without_mark"):
        if got[key] != ref[key]:
            out.append(f"{key}: ours {got[key]!r} reference {ref[key]!r}")
    trips = ref["trips"]
    if len(got["round_trips"]) != len(trips):
        out.append(f"{len(got['round_trips'])} round trips, reference {len(trips)}")
    for k, (mine, theirs) in enumerate(zip(got["round_trips"], trips, strict=False)):
        expected = {"side": "long" if theirs["side"] == futures_reference.LONG else "short",
                    "entry_time": iso(times[theirs["entry_bar"]]), "exit_time": iso(times[theirs["exit_bar"]]),
                    "exit_reason": theirs["exit_reason"], "bars_held": theirs["exit_bar"] - theirs["entry_bar"]}
        for key, value in expected.items():
            if mine[key] != value:
                out.append(f"trip {k} ({expected['entry_time']}) {key}: ours {mine[key]!r} reference {value!r}")
        numbers = {"entry_price": theirs["entry_price"], "exit_price": theirs["exit_price"], "units": theirs["qty"],
                   "fees": theirs["entry_fee"] + theirs["exit_fee"], "funding_paid": theirs["funding"],
                   "pnl": theirs["exit_value"] - theirs["stake"]}
        for key, value in numbers.items():
            if not close_enough(mine[key], value):
                out.append(f"trip {k} ({expected['entry_time']} .. {expected['exit_time']}) {key}: "
                           f"ours {mine[key]!r} reference {value!r}")
    fills = expected_fills(trips, times)
    if len(got["trades"]) != len(fills):
        out.append(f"{len(got['trades'])} fills, reference {len(fills)}")
    for i, (mine, theirs) in enumerate(zip(got["trades"], fills, strict=False)):
        for key, value in theirs.items():
            same = mine[key] == value if key in ("time", "action") else close_enough(mine[key], value)
            if not same:
                out.append(f"fill {i} at {theirs['time']} {key}: ours {mine[key]!r} reference {value!r}")
    return out


@pytest.mark.parametrize("detail", DETAILS)
@pytest.mark.parametrize(("direction", "leverage", "margin"), list(itertools.product(DIRECTIONS, LEVERAGES, MARGINS)))
def test_the_engine_equals_the_reference_on_real_xrp(cases, data, direction, leverage, margin, detail):
    times = [b[0] for b in data.hours]
    failures = []
    for (config, d), case in cases.items():
        if (config.direction, config.leverage, config.margin, d) == (direction, leverage, margin, detail):
            failures += [f"{case}: {line}" for line in differences(case.ours, case.ref, times)]
    assert not failures, "\n".join(failures[:30])


def test_the_matrix_is_not_vacuous(cases):
    """Detail changes outcomes on the real data (engine and reference alike), liquidations happen under
    detail, at every stop kind, and bars needing detail without finer bars are met."""
    changed = [str(case) for (config, d), case in cases.items() if d == "5m"
               and [(t["exit_reason"], t["exit_time"], t["exit_price"]) for t in case.ours["round_trips"]]
               != [(t["exit_reason"], t["exit_time"], t["exit_price"])
                   for t in cases[(config, None)].ours["round_trips"]]]
    changed_ref = [str(case) for (config, d), case in cases.items() if d == "5m"
                   and [(t["exit_reason"], t["exit_bar"], t["exit_price"]) for t in case.ref["trips"]]
                   != [(t["exit_reason"], t["exit_bar"], t["exit_price"]) for t in cases[(config, None)].ref["trips"]]]
    assert changed and changed == changed_ref
    detailed = [case for (_, d), case in cases.items() if d == "5m"]
    # ... because the reference decided bars on their finer bars otherwise than by their own rule
    assert any(own != decided for case in detailed for _, own, decided, on_finer in case.ref["detail_bars"]
               if on_finer)
    assert sum(case.ours["liquidations"] for case in detailed) > 0
    reasons = {t["exit_reason"] for case in detailed for t in case.ours["round_trips"]}
    assert {"liquidation", "stop_loss", "trailing_stop", "take_profit", "signal"} <= reasons, reasons
    assert all(case.ours["bars_without_detail"] == 0 for case in detailed)  # the 5m sample has no gap
    assert max(case.ours["bars_without_detail"] for (_, d), case in cases.items() if d == "5m-holes") > 0
    assert all(case.ours["bars_without_detail"] is None for (_, d), case in cases.items() if d is None)


def test_round_trips_gives_the_same_trips(data, cases):
    """`round_trips(...)` with the same arguments returns the result's trips (side, reason, funding)."""
    for config in CONFIGS[::23]:
        trips = round_trips({SYMBOL: frame(data.hours)}, "rsi", PARAMS, funding={SYMBOL: data.funding_frame},
                            mark={SYMBOL: data.mark_frame}, detail="5m",
                            detail_frames={SYMBOL: frame(data.fine["5m"])}, **config.run()).to_dicts()
        row = cases[(config, "5m")].ours["round_trips"]
        assert [(t["side"], t["exit_reason"], t["funding_paid"], t["exit_price"]) for t in trips] == \
            [(t["side"], t["exit_reason"], t["funding_paid"], t["exit_price"]) for t in row], config


# --- planted, by hand ------------------------------------------------------------------------------
# Three hours of 5m bars (and 5m mark bars, handed over as `mark` frames at 5m, which the notebook lays on
# the finer grid). buy_and_hold enters at hour 0's close, 1.0 (fill close), leverage 10, isolated, fee
# 0.05 %: fee 1000 x 10 x 0.0005 = 5, M = 995, qty = 9950, notional 9950 -> the first bracket (mmr 0.005,
# cum 0). In hour 1 the coarse bar reaches both the stop-loss and LP; its finer bars decide the other way
# round than its own rule. No funding series: M stays 995.

T0 = int(datetime(2024, 1, 1, 10, tzinfo=UTC).timestamp())
LEV, F, M0, QTY, MMR = 10.0, 0.0005, 995.0, 9950.0, 0.005
LP_LONG = (M0 - QTY * 1.0) / (QTY * MMR - QTY)  # (M + cum - side qty E) / (qty mmr - side qty) = 0.904522...
LP_SHORT = (M0 + QTY * 1.0) / (QTY * MMR + QTY)  # 1.094527...
Hand = tuple[float, float, float, float]  # (o, h, l, c)


def flat(p: float) -> Hand:
    return (p, p, p, p)


# A: the stop-loss (1 %: 0.99) is nearer the open than LP, so hour 1's own rule fills the stop; but the first
# 5m mark bar dips to 0.90 <= LP while its price bar stays above 0.99, and only the second price bar
# reaches the stop: on the finer bars the liquidation comes first.
A_PRICE = [flat(1.0)] * 12 + [(1.0, 1.002, 0.995, 0.998), (0.998, 0.999, 0.985, 0.99)] + \
    [(0.99, 0.995, 0.988, 0.99)] * 10 + [flat(0.99)] * 12
A_MARK = [flat(1.0)] * 12 + [(1.0, 1.001, 0.90, 0.999), (0.998, 0.999, 0.986, 0.99)] + \
    [(0.99, 0.995, 0.988, 0.99)] * 10 + [flat(0.99)] * 12
# B: the stop-loss (9.6 %: 0.904) is beyond LP (0.9045), so hour 1's own rule liquidates (its mark low 0.90
# reaches LP and the stop is not strictly before it); but the second 5m price bar reaches the stop while
# its mark bar (0.91) does not reach LP, and the mark only gets there in the third: the stop comes first.
B_PRICE = [flat(1.0)] * 12 + [(1.0, 1.0, 0.95, 0.96), (0.96, 0.96, 0.903, 0.91), (0.91, 0.92, 0.905, 0.91)] + \
    [flat(0.91)] * 9 + [flat(0.91)] * 12
B_MARK = [flat(1.0)] * 12 + [(1.0, 1.0, 0.95, 0.96), (0.96, 0.96, 0.91, 0.91), (0.91, 0.92, 0.90, 0.91)] + \
    [flat(0.91)] * 9 + [flat(0.91)] * 12


def mirrored(bars: list[Hand]) -> list[Hand]:
    """The same path reflected about 1.0 (p -> 2 - p; high and low swap): the short's case."""
    return [(2 - o, 2 - lo, 2 - h, 2 - c) for o, h, lo, c in bars]


def bars_of(hand: list[Hand]) -> list[Bar]:
    return [(T0 + 300 * i, o, h, lo, c, 1.0) for i, (o, h, lo, c) in enumerate(hand)]


def planted(price: list[Hand], mark: list[Hand], direction: str, sl: float, detail: bool,
            without_hour: int | None = None, funding: dict[int, float] | None = None
            ) -> tuple[dict, dict, list[int]]:
    """(ours, the reference, hour times) of buy_and_hold on the planted bars. With `detail` the engine gets
    the 5m bars and the 5m mark bars (without hour `without_hour`, both); without it, the hourly mark bars.
    The reference gets the hourly marks aggregated from the 5m ones (first open, max high, min low) and,
    with detail, per hour its 5m bars each with its 5m mark bar. `funding`: {hour: rate}, stamped 17 ms
    past the hour as the exchange's files are."""
    fine, fine_mark = bars_of(price), bars_of(mark)
    if without_hour is not None:
        fine = [b for b in fine if (b[0] - T0) // HOUR != without_hour]
        fine_mark = [b for b in fine_mark if (b[0] - T0) // HOUR != without_hour]
    hours, mark_hours = aggregate(bars_of(price), HOUR), aggregate(fine_mark, HOUR)
    run = {"market": "futures", "leverage": LEV, "direction": direction, "margin": "isolated", "sl": sl,
           "fee": F * 100, "fill": "close", "trades": True}
    if detail:
        run |= {"mark": {SYMBOL: frame(fine_mark)}, "detail": "5m", "detail_frames": {SYMBOL: frame(fine)}}
    else:
        run |= {"mark": {SYMBOL: frame(mark_hours)}}
    if funding:
        run |= {"funding": {SYMBOL: pl.DataFrame({
            "date": pl.from_epoch(pl.Series([(T0 + h * HOUR) * 1000 + 17 for h in funding]), "ms")
                      .dt.replace_time_zone("UTC"),
            "open": pl.Series(list(funding.values()), dtype=pl.Float64)})}}
    (got,) = run_backtest({SYMBOL: frame(hours)}, "buy_and_hold", {}, **run).to_dicts()
    marks = {b[0]: (b[1], b[2], b[3]) for b in mark_hours}
    n = len(hours)
    col = lambda i: [b[i] for b in hours]  # noqa: E731
    ref = futures_reference.simulate(
        col(1), col(2), col(3), col(4), [direction == "long"] * n, [False] * n, [direction == "short"] * n,
        [False] * n, [(funding or {}).get(i) for i in range(n)], [marks.get(b[0]) for b in hours], XRP_TIERS, leverage=LEV, direction=direction,
        cross=False, fee=F, initial=1000.0, fill="close", sl=sl / 100,
        detail=finer(hours, fine, {b[0]: (b[1], b[2], b[3]) for b in fine_mark}) if detail else None)
    return got, ref, [b[0] for b in hours]


def trips(row: dict) -> list[tuple[str, str, str, float]]:
    return [(t["side"], t["exit_time"], t["exit_reason"], t["exit_price"]) for t in row["round_trips"]]


def stop_then_reenter(side: int, stop: float) -> float:
    """The final value after a stop exit at `stop` in hour 1 and a new entry at hour 2's close (= `stop` in
    these paths, where hour 2 is flat at it) marked at that same close: the re-entry's margin."""
    returned = M0 + side * QTY * (stop - 1.0) - QTY * stop * F  # M + pnl - fee
    return returned - returned * LEV * F  # stake - its fee


@pytest.mark.parametrize("direction", ["long", "short"])
def test_planted_the_finer_mark_liquidates_before_the_stop_the_coarse_bar_would_fill(direction):
    side = 1 if direction == "long" else -1
    price, mark = (A_PRICE, A_MARK) if side == 1 else (mirrored(A_PRICE), mirrored(A_MARK))
    lp, stop = (LP_LONG, 0.99) if side == 1 else (LP_SHORT, 1.01)
    hour1, hour2 = iso(T0 + HOUR), iso(T0 + 2 * HOUR)

    plain, plain_ref, times = planted(price, mark, direction, 1.0, detail=False)
    assert not differences(plain, plain_ref, times), differences(plain, plain_ref, times)
    assert trips(plain) == [(direction, hour1, "stop_loss", pytest.approx(stop, rel=REL)),
                            (direction, hour2, "end_of_data", pytest.approx(stop, rel=REL))]
    assert plain["final_value"] == pytest.approx(stop_then_reenter(side, stop), rel=REL)
    assert plain["liquidations"] == 0

    got, ref, times = planted(price, mark, direction, 1.0, detail=True)
    assert not differences(got, ref, times), differences(got, ref, times)
    assert trips(got) == [(direction, hour1, "liquidation", pytest.approx(lp, rel=REL))]
    assert got["liquidations"] == 1 and got["final_value"] == 0.0 and got["bars_without_detail"] == 0
    assert got["trades"][-1]["value"] == 0.0 and got["trades"][-1]["fee"] == 0.0  # nothing returned, no fee
    assert got["round_trips"][0]["pnl"] == pytest.approx(-1000.0, rel=REL)
    # The reference decided that bar on its finer bars, against its own rule (a stop).
    (bar,) = ref["detail_bars"]
    assert bar[0] == 1 and bar[1] == ("stop_loss", pytest.approx(stop)) and bar[2][0] == "liquidation" and bar[3]


@pytest.mark.parametrize("direction", ["long", "short"])
def test_planted_the_finer_stop_comes_before_the_liquidation_the_coarse_bar_would_take(direction):
    side = 1 if direction == "long" else -1
    price, mark = (B_PRICE, B_MARK) if side == 1 else (mirrored(B_PRICE), mirrored(B_MARK))
    lp, stop, last = (LP_LONG, 0.904, 0.91) if side == 1 else (LP_SHORT, 1.096, 1.09)
    hour1, hour2 = iso(T0 + HOUR), iso(T0 + 2 * HOUR)
    assert (stop < lp) if side == 1 else (stop > lp)  # the stop is beyond LP: the coarse rule liquidates

    plain, plain_ref, times = planted(price, mark, direction, 9.6, detail=False)
    assert not differences(plain, plain_ref, times), differences(plain, plain_ref, times)
    assert trips(plain) == [(direction, hour1, "liquidation", pytest.approx(lp, rel=REL))]
    assert plain["final_value"] == 0.0 and plain["liquidations"] == 1

    got, ref, times = planted(price, mark, direction, 9.6, detail=True)
    assert not differences(got, ref, times), differences(got, ref, times)
    assert trips(got) == [(direction, hour1, "stop_loss", pytest.approx(stop, rel=REL)),
                          (direction, hour2, "end_of_data", pytest.approx(last, rel=REL))]
    returned = M0 + side * QTY * (stop - 1.0) - QTY * stop * F  # 35.3026 (long), 34.3474 (short)
    assert got["trades"][1]["value"] == pytest.approx(returned, rel=REL)
    assert got["final_value"] == pytest.approx(returned * (1 - LEV * F), rel=REL)
    assert got["liquidations"] == 0 and got["bars_without_detail"] == 0


def test_planted_a_bar_needing_detail_without_finer_bars_keeps_its_own_rule():
    """Hour 1 has no 5m bar (nor 5m mark bar): the range reaches the stop, so the bar needs detail; it is
    decided by its own rule (a stop at 0.99: its price low 0.985 stands in for the missing mark) and
    counted in bars_without_detail."""
    got, ref, times = planted(A_PRICE, A_MARK, "long", 1.0, detail=True, without_hour=1)
    assert not differences(got, ref, times), differences(got, ref, times)
    assert trips(got)[0] == ("long", iso(T0 + HOUR), "stop_loss", pytest.approx(0.99, rel=REL))
    assert got["final_value"] == pytest.approx(stop_then_reenter(1, 0.99), rel=REL)
    assert got["bars_without_detail"] == 1 and got["bars_without_mark"] == 1 and got["liquidations"] == 0


def test_planted_finer_mark_frames_give_the_hourly_mark_by_aggregation():
    """No stop: only the liquidation needs hour 1's detail. Its 5m mark bars aggregate to an hourly mark
    bar (first open 1.0, highest high 1.001, lowest low 0.90), as the contract's "Futures data" bullet
    says of a mark series finer than the run's interval; so hour 1's adverse extreme reaches LP, the bar
    replays its finer bars, and the first 5m mark bar (low 0.90) liquidates it. Funding at hour 1 (rate
    0.001) is paid at that hourly mark open, 1.0: 9950 x 1.0 x 0.001 = 9.95, and LP comes from M after it.
    The same data as hourly mark frames without detail liquidates in hour 1 too (its own rule)."""
    m1 = M0 - QTY * 1.0 * 0.001
    lp = (m1 - QTY * 1.0) / (QTY * MMR - QTY)
    plain, plain_ref, times = planted(A_PRICE, A_MARK, "long", 0.0, detail=False, funding={1: 0.001})
    assert not differences(plain, plain_ref, times), differences(plain, plain_ref, times)
    assert trips(plain) == [("long", iso(T0 + HOUR), "liquidation", pytest.approx(lp, rel=REL))]
    got, ref, times = planted(A_PRICE, A_MARK, "long", 0.0, detail=True, funding={1: 0.001})
    assert trips(got) == [("long", iso(T0 + HOUR), "liquidation", pytest.approx(lp, rel=REL))], \
        differences(got, ref, times)
    assert got["funding_paid"] == pytest.approx(9.95, rel=REL)
    assert not differences(got, ref, times), differences(got, ref, times)
