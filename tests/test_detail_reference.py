"""Intrabar detail (the contract's "Intrabar detail" bullet) against an independent plain-Python loop
(tests/detail_reference.py) on real Binance candles, by hand on planted bars, and its bad input.

The coarse bars are the 5m sample aggregated to 1h by a plain loop (bucket = the open time floored to
the hour; first open, max high, min low, last close, summed volume); each hour's finer bars are the 5m
candles inside it (or the 15m bars built from them the same way), in order. ADA_BTC has real gaps
(whole missing hours). A third detail set, "5m-holes", drops whole hours and single candles from the
5m bars the engine and the reference get as detail (not from the hourly bars), so that bars needing
detail without any finer bar, and finer gaps inside a bar, happen on real data too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from pipeline.core.errors import PipelineError
from pipeline.notebook import run_backtest
from tests.detail_reference import DetailBacktest, reference_detail_backtest
from tests.reference import reference_backtest, reference_signals

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "data" / "sample" / "binance-5m").glob("*_BTC-5m.feather"))
PARAMS = {"rsi_period": 6, "oversold_threshold": 40, "overbought_threshold": 60}
FEE = 0.1  # percent
HOUR = 3600
STOPS = [(sl, tp, trail) for sl in (0.5, 1.0) for tp in (0.0, 0.6, 1.5) for trail in (False, True)]
FILLS = ("close", "next_open")
DETAILS = ("5m", "15m", "5m-holes")
REL = 1e-9

Bar = tuple[int, float, float, float, float, float]  # (open time in epoch seconds, o, h, l, c, volume)


# --- the data, by plain loops ----------------------------------------------------------------------


def read_5m(path: Path) -> list[Bar]:
    table = feather.read_table(path, columns=["date", "open", "high", "low", "close", "volume"])
    ns = table.column("date").cast(pa.timestamp("ns")).cast(pa.int64()).to_pylist()
    cols = [table.column(c).to_pylist() for c in ("open", "high", "low", "close", "volume")]
    return [(t // 10**9, *(float(col[i]) for col in cols)) for i, t in enumerate(ns)]  # type: ignore[misc]


def aggregate(bars: list[Bar], seconds: int) -> list[Bar]:
    out: list[list] = []
    for ts, o, h, lo, c, v in bars:
        bucket = ts - ts % seconds
        if out and out[-1][0] == bucket:
            last = out[-1]
            last[2] = max(last[2], h)
            last[3] = min(last[3], lo)
            last[4] = c
            last[5] += v
        else:
            out.append([bucket, o, h, lo, c, v])
    return [tuple(b) for b in out]  # type: ignore[misc]


def finer_bars(coarse: list[Bar], fine: list[Bar], seconds: int) -> list[list[tuple[float, float, float]]]:
    """Per coarse bar, the fine bars whose open time floors to its open time, in time order."""
    inside: dict[int, list[tuple[float, float, float]]] = {}
    for ts, o, h, lo, _c, _v in fine:
        inside.setdefault(ts - ts % seconds, []).append((o, h, lo))
    return [inside.get(bar[0], []) for bar in coarse]


def with_holes(bars: list[Bar]) -> list[Bar]:
    """Drop every 9th hour of the data whole and every 7th 5m candle of the rest."""
    first_hour = bars[0][0] // HOUR
    return [b for b in bars if (b[0] // HOUR - first_hour) % 9 != 4 and (b[0] // 300) % 7 != 3]


def frame(bars: list[Bar]) -> pl.DataFrame:
    names = ("open", "high", "low", "close", "volume")
    return pl.DataFrame({
        "date": pl.from_epoch(pl.Series([b[0] for b in bars], dtype=pl.Int64), "s").dt.replace_time_zone("UTC"),
        **{name: pl.Series([b[i + 1] for b in bars], dtype=pl.Float64) for i, name in enumerate(names)},
    })


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


@dataclass
class Symbol:
    name: str
    hours: list[Bar]
    fine: dict[str, list[Bar]]  # detail name -> the finer bars handed over
    detail: dict[str, list[list[tuple[float, float, float]]]]  # detail name -> per hour its finer bars
    entries: list[bool]
    exits: list[bool]
    values: list[float]


def load() -> dict[str, Symbol]:
    symbols = {}
    for path in FILES:
        name = path.name.removesuffix("-5m.feather")
        five = read_5m(path)
        hours = aggregate(five, HOUR)
        fine = {"5m": five, "15m": aggregate(five, 900), "5m-holes": with_holes(five)}
        entries, exits, values = reference_signals("rsi", np.array([b[4] for b in hours]), PARAMS)
        symbols[name] = Symbol(name, hours, fine, {k: finer_bars(hours, v, HOUR) for k, v in fine.items()},
                               entries, exits, values)
    return symbols


def reference(sym: Symbol, sl: float, tp: float, trail: bool, fill: str, detail: str) -> DetailBacktest:
    col = lambda i: np.array([b[i] for b in sym.hours])  # noqa: E731
    return reference_detail_backtest(col(1), col(4), sym.entries, sym.exits, sym.values, FEE / 100, 1000.0, fill,
                                     8760.0, high=col(2), low=col(3), detail=sym.detail[detail],
                                     sl=sl / 100, tp=tp / 100, trail=trail)


def ours(symbols: dict[str, Symbol], sl: float, tp: float, trail: bool, fill: str,
         detail: str | None) -> dict[str, dict]:
    kwargs = {}
    if detail is not None:
        kwargs = {"detail": detail.removesuffix("-holes"),
                  "detail_frames": {s.name: frame(s.fine[detail]) for s in symbols.values()}}
    result = run_backtest({s.name: frame(s.hours) for s in symbols.values()}, "rsi", PARAMS, sl=sl, tp=tp,
                          trail=trail, fill=fill, fee=FEE, trades=True, **kwargs)
    return {row["symbol"]: row for row in result.to_dicts()}


@dataclass
class Case:
    sl: float
    tp: float
    trail: bool
    fill: str
    detail: str
    symbol: Symbol
    ours: dict
    plain: dict  # ours without detail
    ref: DetailBacktest

    def __str__(self) -> str:
        return (f"{self.symbol.name} sl={self.sl} tp={self.tp} trail={self.trail} fill={self.fill} "
                f"detail={self.detail}")


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    symbols = load()
    out = []
    for fill in FILLS:
        for sl, tp, trail in STOPS:
            plain = ours(symbols, sl, tp, trail, fill, None)
            for detail in DETAILS:
                got = ours(symbols, sl, tp, trail, fill, detail)
                for sym in symbols.values():
                    out.append(Case(sl, tp, trail, fill, detail, sym, got[sym.name], plain[sym.name],
                                    reference(sym, sl, tp, trail, fill, detail)))
    return out


def close_enough(a: float | None, b: float) -> bool:
    """Equal to REL relative; ours' NULL (None) stands for the reference's NaN."""
    if a is None or math.isnan(a):
        return math.isnan(b)
    return not math.isnan(b) and math.isclose(a, b, rel_tol=REL, abs_tol=0.0)


def differences(case: Case) -> list[str]:
    """Every way the engine's result differs from the reference's, one line each."""
    got, ref, times = case.ours, case.ref, [b[0] for b in case.symbol.hours]
    out = []
    if not close_enough(got["final_value"], ref.metrics["final_value"]):
        out.append(f"final_value ours {got['final_value']!r} reference {ref.metrics['final_value']!r}")
    if got["bars_without_detail"] != ref.bars_without_detail:
        out.append(f"bars_without_detail ours {got['bars_without_detail']} reference {ref.bars_without_detail}")
    if got["num_trades"] != ref.metrics["num_trades"]:
        out.append(f"num_trades ours {got['num_trades']} reference {ref.metrics['num_trades']:.0f}")
    exits = [trip for trip in got["round_trips"] if trip["exit_reason"] != "end_of_data"]
    sells = [t for t in got["trades"] if t["action"] == "sell"]
    if len(exits) != len(sells):
        out.append(f"{len(sells)} sells but {len(exits)} closed round trips")
    reasons = iter(exits)
    for i, (mine, theirs) in enumerate(zip(got["trades"], ref.trades, strict=False)):
        expected = {"time": iso(times[theirs.bar]), "action": "buy" if theirs.action == 1 else "sell"}
        for key, value in expected.items():
            if mine[key] != value:
                out.append(f"trade {i} {key}: ours {mine[key]} reference {value}")
        for key in ("price", "units", "value", "fee", "indicator"):
            if not close_enough(mine[key], getattr(theirs, key)):
                out.append(f"trade {i} at {expected['time']} {key}: ours {mine[key]!r} "
                           f"reference {getattr(theirs, key)!r}")
        if theirs.action == -1:
            trip = next(reasons, None)
            if trip is None or trip["exit_time"] != expected["time"] or trip["exit_reason"] != theirs.reason:
                out.append(f"trade {i} at {expected['time']} exit reason: ours {trip and trip['exit_reason']} "
                           f"(trip exiting {trip and trip['exit_time']}) reference {theirs.reason}")
        if len(out) > 8:
            break
    if len(got["trades"]) != len(ref.trades):
        out.append(f"{len(got['trades'])} trades, reference {len(ref.trades)}")
    return out


# --- the engine against the reference on real candles ----------------------------------------------


@pytest.mark.parametrize("detail", DETAILS)
@pytest.mark.parametrize("fill", FILLS)
def test_the_engine_equals_the_reference_trade_by_trade(cases, fill, detail):
    chosen = [c for c in cases if c.fill == fill and c.detail == detail]
    assert len(chosen) == len(STOPS) * len(FILES)
    wrong = {str(c): d for c in chosen if (d := differences(c))}
    assert not wrong, "\n".join(f"{case}: {line}" for case, lines in wrong.items() for line in lines[:6])


def test_the_comparison_is_not_vacuous(cases):
    # Trades on every symbol, and detail changes outcomes against the same run without it.
    assert all(c.ours["num_trades"] >= 10 for c in cases)
    changed = [c for c in cases if not math.isclose(c.ours["final_value"], c.plain["final_value"], rel_tol=REL)]
    for detail in DETAILS:
        assert sum(c.detail == detail for c in changed) >= 20, detail
    # The holes leave held bars that need detail without any finer bar, on every symbol.
    assert all(c.ours["bars_without_detail"] > 0 for c in cases if c.detail == "5m-holes" and c.sl == 1.0)
    assert all(c.ours["bars_without_detail"] == 0 for c in cases if c.detail != "5m-holes")
    assert all(c.plain["bars_without_detail"] is None for c in cases)


def test_stop_exits_of_every_kind_are_decided_on_finer_bars(cases):
    """Bars where both the stop-loss (or the level a trailing stop could reach) and the take-profit
    are within the hour's range, and the 5m/15m bars pick one; trailing stops hit at a level raised
    inside the hour; and each such exit is the engine's too (same bar, reason and price)."""
    seen: dict[str, int] = {}
    for case in cases:
        trips = {trip["exit_time"]: trip for trip in case.ours["round_trips"]}
        times = [b[0] for b in case.symbol.hours]
        for stop in case.ref.stop_exits:
            if not stop.on_finer_bars:
                continue
            kinds = []
            if stop.both_levels_in_range:
                kinds.append(f"{stop.reason} of both")
            if stop.own_rule is None or stop.own_rule[1] != stop.reason:
                kinds.append(f"{stop.reason} the bar's own rule would not fill")
            elif stop.own_rule[0] != stop.price:
                kinds.append(f"{stop.reason} at another price than the bar's own rule")
            if kinds:
                trip = trips.get(iso(times[stop.bar]))
                assert trip is not None and trip["exit_reason"] == stop.reason, (str(case), stop)
                assert math.isclose(trip["exit_price"], stop.price, rel_tol=REL), (str(case), stop)
            for kind in kinds:
                seen[kind] = seen.get(kind, 0) + 1
    for kind in ("stop_loss of both", "take_profit of both", "trailing_stop of both",
                 "take_profit the bar's own rule would not fill", "trailing_stop the bar's own rule would not fill"):
        assert seen.get(kind, 0) >= 3, (kind, seen)


def test_the_reference_with_each_bar_as_its_own_finer_bar_is_spec_4_1():
    """The detail reference reduces to tests/reference.py's SPEC 4.1 loop when each bar's one finer bar
    is itself (or it has none: its own rule), on the real hours."""
    for sym in load().values():
        col = lambda i, s=sym: np.array([b[i] for b in s.hours])  # noqa: E731
        itself = [[(b[1], b[2], b[3])] for b in sym.hours]
        for fill in FILLS:
            for sl, tp, trail in STOPS:
                plain = reference_backtest(col(1), col(4), sym.entries, sym.exits, sym.values, FEE / 100, 1000.0,
                                           fill, 8760.0, high=col(2), low=col(3), sl=sl / 100, tp=tp / 100,
                                           trail=trail)
                for detail in (itself, [[] for _ in sym.hours]):
                    mine = reference_detail_backtest(col(1), col(4), sym.entries, sym.exits, sym.values, FEE / 100,
                                                     1000.0, fill, 8760.0, high=col(2), low=col(3), detail=detail,
                                                     sl=sl / 100, tp=tp / 100, trail=trail)
                    assert mine.trades == plain.trades
                    assert mine.equity == plain.equity
                    assert mine.metrics["final_value"] == plain.metrics["final_value"]
                    assert mine.bars_without_detail >= len(mine.stop_exits) if detail[0] == [] \
                        else mine.bars_without_detail == 0


# --- planted, by hand ------------------------------------------------------------------------------

T0 = 1_514_764_800  # 2018-01-01 00:00 UTC


def hand_frame(rows: list[tuple[int, float, float, float, float]]) -> pl.DataFrame:
    return frame([(T0 + ts, o, h, lo, c, 1.0) for ts, o, h, lo, c in rows])


def run_hand(hours, fives, **run) -> dict:
    detail = {"detail": "5m", "detail_frames": {"X_BTC": hand_frame(fives)}} if fives is not None else {}
    result = run_backtest({"X_BTC": hand_frame(hours)}, "buy_and_hold", {}, fee=FEE, trades=True, **run, **detail)
    return result.to_dicts()[0]


def sells(row: dict) -> list[tuple[str, float, str]]:
    trips = [t for t in row["round_trips"] if t["exit_reason"] != "end_of_data"]
    return [(t["exit_time"][11:16], t["exit_price"], t["exit_reason"]) for t in trips]


HOURS = [  # buy_and_hold buys whenever flat (fill close), so it re-enters on the next bar's close
    (0 * HOUR, 100.0, 100.0, 100.0, 100.0),  # buy at 100
    (1 * HOUR, 100.0, 103.0, 97.0, 100.0),  # sl 98 and tp 102 both in range
    (2 * HOUR, 100.0, 100.0, 100.0, 100.0),  # flat: buy at 100
    (3 * HOUR, 100.0, 101.0, 97.5, 99.0),  # sl 98 in range, no finer bar at all: its own rule, at 98
    (4 * HOUR, 99.0, 99.0, 99.0, 99.0),  # flat: buy at 99
    (5 * HOUR, 99.0, 99.5, 98.5, 99.0),  # no level in range (sl 97.02, tp 100.98), no finer bar: not counted
]
FIVES = [  # only hour 1 has finer bars; the take-profit (102) comes before the stop-loss (98)
    (1 * HOUR + 0, 100.0, 100.5, 99.5, 100.2),
    (1 * HOUR + 300, 100.2, 103.0, 100.1, 101.0),
    (1 * HOUR + 600, 101.0, 101.0, 97.0, 97.5),
]


def test_planted_both_stops_in_one_bar_and_a_bar_without_finer_bars():
    f = FEE / 100
    plain = run_hand(HOURS, None, sl=2.0, tp=2.0)
    assert sells(plain) == [("01:00", 98.0, "stop_loss"), ("03:00", 98.0, "stop_loss")]  # SPEC 4.1: sl wins
    assert plain["bars_without_detail"] is None

    detailed = run_hand(HOURS, FIVES, sl=2.0, tp=2.0)
    assert sells(detailed) == [("01:00", 102.0, "take_profit"), ("03:00", 98.0, "stop_loss")]
    assert detailed["bars_without_detail"] == 1  # hour 3 only: hour 5 needed no detail, hours 2, 4 were flat
    # By hand: 1000 -> buy 100 -> tp 102 -> buy 100 -> sl 98 -> buy 99, marked at 99.
    cash = (1000 * (1 - f) / 100 * 102) * (1 - f)
    cash = (cash * (1 - f) / 100 * 98) * (1 - f)
    final = cash * (1 - f) / 99 * 99
    assert math.isclose(detailed["final_value"], final, rel_tol=REL)
    assert [(t["time"][11:16], t["action"], t["price"]) for t in detailed["trades"]] == [
        ("00:00", "buy", 100.0), ("01:00", "sell", 102.0), ("02:00", "buy", 100.0), ("03:00", "sell", 98.0),
        ("04:00", "buy", 99.0)]
    assert detailed["trades"][1]["indicator"] is None  # a stop exit's indicator is NULL

    # The reference agrees with both.
    col = lambda i: np.array([r[i] for r in HOURS])  # noqa: E731
    entries, exits, values = [True] * len(HOURS), [False] * len(HOURS), list(col(4))
    fives = {r[0]: [] for r in HOURS}
    for ts, o, h, lo, _c in FIVES:
        fives[ts - ts % HOUR].append((o, h, lo))
    ref = reference_detail_backtest(col(1), col(4), entries, exits, values, f, 1000.0, "close", 8760.0, high=col(2),
                                    low=col(3), detail=[fives[r[0]] for r in HOURS], sl=0.02, tp=0.02)
    assert [(tr.bar, tr.price, tr.reason) for tr in ref.trades if tr.action == -1] == [
        (1, 102.0, "take_profit"), (3, 98.0, "stop_loss")]
    assert ref.bars_without_detail == 1
    assert math.isclose(ref.metrics["final_value"], final, rel_tol=REL)


def test_planted_trailing_stop_raised_inside_the_bar():
    hours = [
        (0, 100.0, 100.0, 100.0, 100.0),  # buy at 100
        (HOUR, 100.0, 105.0, 102.0, 104.0),  # without detail: stop 98, low 102: held; base -> 105
        (2 * HOUR, 104.0, 104.0, 104.0, 104.0),
    ]
    fives = [
        (HOUR, 100.0, 105.0, 100.5, 104.5),  # base -> 105 after this finer bar's check: stop 102.9
        (HOUR + 300, 104.5, 104.5, 102.0, 102.5),  # touches 102.9: the trailing stop fills there
    ]
    plain = run_hand(hours, None, sl=2.0, trail=True)
    assert sells(plain) == []
    detailed = run_hand(hours, fives, sl=2.0, trail=True)
    assert sells(detailed) == [("01:00", pytest.approx(105.0 * 0.98, rel=REL), "trailing_stop")]
    assert detailed["bars_without_detail"] == 0


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("run, fine, says", [
    ({"detail": "1h", "sl": 1.0}, "hours", "not finer than the run's 1h"),
    ({"detail": "5m"}, "fives", "--sl or --tp"),
    ({"detail": "5m", "sl": 1.0}, None, "needs detail_frames"),
])
def test_bad_detail_is_one_line(run, fine, says):
    hours = [(t * HOUR, 100.0, 101.0, 99.0, 100.0) for t in range(24)]
    fives = [(t * 300, 100.0, 101.0, 99.0, 100.0) for t in range(24 * 12)]
    finer = None if fine is None else {"X_BTC": hand_frame(hours if fine == "hours" else fives)}
    with pytest.raises(PipelineError) as error:
        run_backtest({"X_BTC": hand_frame(hours)}, "rsi", PARAMS, fee=FEE, detail_frames=finer, **run)
    assert "\n" not in str(error.value) and "detail" in str(error.value) and says in str(error.value)
