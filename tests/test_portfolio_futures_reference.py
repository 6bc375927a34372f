"""The futures portfolio kernel (pipeline/engine/kernels/portfolio_futures.py) against the independent
reference loop (tests/portfolio_futures_reference.py, written from docs/contract.md's "Futures portfolio"
alone) on real data: one shared account over five perpetuals.

The data: the four real Binance spot pairs of data/sample/binance-5m (January 2018, with real gaps),
aggregated to 1h and treated as perpetuals without funding or mark series, and the real perpetual
XRP_USDT_USDT (data/sample/binance-futures: 100 hourly bars of November 2021, its mark bars for the first
57 of them, its 8-hourly funding rates), moved in time so that its bars fall inside January 2018.

Every round trip (side, bars, prices, quantity, fees, funding, pnl, exit reason), the equity at every grid
bar and the account's metrics must agree to 1e-9 relative over a matrix of direction, leverage, margin,
fill, slots, stakes and slippage (the full product: 384 accounts). Planted markets check against numbers
worked by hand: the cross-margin account liquidation (two positions falling together; one alone is not
liquidated; a held symbol without a bar closes at its latest close), isolated liquidation at LP, next_open
ranks taken at the signal bar, and max_margin_ratio leaving out the bar a position leaves at the open.
"""

from __future__ import annotations

import functools
import itertools
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.engine import tiers as tier_tables
from pipeline.engine.kernels import enums
from pipeline.engine.strategies import get_strategy
from tests.portfolio_futures_reference import simulate_portfolio

ROOT = Path(__file__).resolve().parent.parent / "data" / "sample"
SPOT = ("ADA_BTC", "ETH_BTC", "LTC_BTC", "XMR_BTC")
PERPETUAL = "XRP_USDT_USDT"
SYMBOLS = sorted((*SPOT, PERPETUAL))  # name order
HOUR = 3600
# Test-only alignment of real data: XRP's real bars (2021-11-17 01:00 UTC ..) are shifted by one fixed
# whole number of hours so that its first bar opens at 2018-01-12 00:00 UTC, inside the spot pairs'
# window; its mark bars and funding times move by the same offset. The data themselves are unchanged.
XRP_FIRST_BAR = datetime(2018, 1, 12, tzinfo=UTC)
REL = 1e-9
INITIAL = 1000.0
FEE = 0.0005
RSI_PARAMS = np.array([6.0, 40.0, 60.0])  # short and loose: many signals


def _hourly(frame: pl.DataFrame) -> pl.DataFrame:
    """5m -> 1h: first open, max high, min low, last close, summed volume; the hour is the floor."""
    return (frame.with_columns(pl.col("date").dt.truncate("1h"))
            .group_by("date", maintain_order=True)
            .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(),
                 pl.col("close").last(), pl.col("volume").sum())
            .sort("date"))


def _seconds(frame: pl.DataFrame) -> np.ndarray:
    return frame["date"].dt.epoch("s").to_numpy().astype(np.int64)


@functools.cache
def market() -> dict[str, np.ndarray]:
    """(S x T) arrays on one hourly grid, NaN where a symbol has no bar; symbols in name order."""
    bars = {s: _hourly(pl.read_ipc(ROOT / "binance-5m" / f"{s}-5m.feather")) for s in SPOT}
    xrp = pl.read_ipc(ROOT / "binance-futures" / f"{PERPETUAL}-1h-futures.feather")
    mark = pl.read_ipc(ROOT / "binance-futures" / f"{PERPETUAL}-1h-mark.feather")
    funding = pl.read_ipc(ROOT / "binance-futures" / f"{PERPETUAL}-8h-funding_rate.feather")
    offset = int(XRP_FIRST_BAR.timestamp()) - int(_seconds(xrp)[0])
    assert offset % HOUR == 0
    bars[PERPETUAL] = xrp
    times = {s: _seconds(f) + (offset if s == PERPETUAL else 0) for s, f in bars.items()}
    start = min(int(t[0]) for t in times.values())
    end = max(int(t[-1]) for t in times.values())
    n = (end - start) // HOUR + 1
    out = {k: np.full((len(SYMBOLS), n), np.nan) for k in (
        "open", "high", "low", "close", "volume", "funding", "mark_open", "mark_high", "mark_low",
        "mark_close")}
    for i, s in enumerate(SYMBOLS):
        at = (times[s] - start) // HOUR
        for k in ("open", "high", "low", "close", "volume"):
            out[k][i, at] = bars[s][k].to_numpy()
    x = SYMBOLS.index(PERPETUAL)
    mark_at = (_seconds(mark) + offset - start) // HOUR
    inside = (mark_at >= 0) & (mark_at < n)
    for k in ("open", "high", "low", "close"):
        out[f"mark_{k}"][x, mark_at[inside]] = mark[k].to_numpy()[inside]
    # Each funding time (stamped ms past the hour) floors to the hour bar holding it; several sum.
    # Times where XRP has no price bar stay in the array: they must not be paid.
    funding_ms = funding["date"].dt.epoch("ms").to_numpy().astype(np.int64) + offset * 1000
    for ms, rate in zip(funding_ms, funding["open"].to_numpy(), strict=True):
        i = (int(ms) // 1000 // HOUR * HOUR - start) // HOUR
        if 0 <= i < n:
            out["funding"][x, i] = rate if np.isnan(out["funding"][x, i]) else out["funding"][x, i] + rate
    # Rank: trailing 24 bars of quote volume (volume x close) up to the bar, NaN where no bar.
    quote = np.nan_to_num(out["volume"] * out["close"])
    cumulative = np.cumsum(quote, axis=1)
    trailing = cumulative - np.concatenate([np.zeros((len(SYMBOLS), 24)), cumulative[:, :-24]], axis=1)
    out["rank"] = np.where(np.isnan(out["close"]), np.nan, trailing)
    # The project's RSI signals per symbol (tested elsewhere); shorts: the built-ins' mirror.
    kernels = get_strategy("rsi").kernels()
    entries = np.zeros((len(SYMBOLS), n), dtype=bool)
    exits = np.zeros((len(SYMBOLS), n), dtype=bool)
    for i in range(len(SYMBOLS)):
        row = out["close"][i].copy()
        _, entries[i], exits[i] = kernels.indicators_and_signals_single((row.reshape(1, n),), row,
                                                                          RSI_PARAMS)
    out.update(enter_long=entries, exit_long=exits, enter_short=exits.copy(), exit_short=entries.copy())
    # XRP's shipped Binance brackets (cum > 0 past the first), a flat mmr 0.005 for the BTC pairs.
    out["tiers"], out["tier_counts"] = tier_tables.load(str(tier_tables.SHIPPED), 0.005).stacked(SYMBOLS)
    return out


PRICE_KEYS = ("open", "high", "low", "close", "funding", "mark_open", "mark_high", "mark_low", "mark_close")
SIGNAL_KEYS = ("enter_long", "exit_long", "enter_short", "exit_short")


def run_kernel(data: dict, *, direction: str, leverage: float, cross: bool, fill: str, max_open: int,
               stake: tuple[bool, float], slippage: float, fee: float = FEE,
               initial: float = INITIAL) -> dict:
    from pipeline.engine.kernels.portfolio import N_CONTRIB, PORTFOLIO_TRADE_DTYPE
    from pipeline.engine.kernels.portfolio_futures import simulate_portfolio_futures

    n_sym, n = data["close"].shape
    metrics = np.full(enums.N_PORTFOLIO_METRICS, np.nan)
    contrib = np.empty((n_sym, N_CONTRIB))
    equity = np.full(n, -1.0)
    trades = np.zeros(2 * n_sym * n + n_sym, dtype=PORTFOLIO_TRADE_DTYPE)
    k = simulate_portfolio_futures(
        *(data[key] for key in PRICE_KEYS), *(data[key] for key in SIGNAL_KEYS), data["rank"],
        data["tiers"], data["tier_counts"], max_open, stake[0], stake[1], leverage,
        enums.DIRECTIONS[direction], cross, fee, slippage, initial, fill == "next_open", 8760.0,
        metrics, contrib, equity, trades)
    return {"metrics": metrics, "equity": equity, "trades": trades[:k]}


def run_reference(data: dict, *, direction: str, leverage: float, cross: bool, fill: str, max_open: int,
                  stake: tuple[bool, float], slippage: float, fee: float = FEE,
                  initial: float = INITIAL) -> dict:
    brackets = [[tuple(float(v) for v in row) for row in data["tiers"][s, :int(data["tier_counts"][s])]]
                for s in range(data["close"].shape[0])]
    return simulate_portfolio(
        *(data[key].tolist() for key in PRICE_KEYS), *(data[key].tolist() for key in SIGNAL_KEYS),
        data["rank"].tolist(), brackets, max_open=max_open, stake_is_fraction=stake[0], stake=stake[1],
        leverage=leverage, direction=direction, cross=cross, fee=fee, slippage=slippage, initial=initial,
        fill=fill)


def _close(a: float, b: float, scale: float = 0.0) -> bool:
    """Equal to REL relative (of the larger, or of `scale` for a difference of larger quantities)."""
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= REL * max(abs(a), abs(b), scale, 1e-12)


def compare(ours: dict, reference: dict) -> None:
    """Every round trip, the equity at every grid bar and the account's metrics."""
    got = sorted(ours["trades"].tolist(), key=lambda r: (r[0], r[1]))
    names = ours["trades"].dtype.names
    got = [dict(zip(names, r, strict=True)) for r in got]
    want = sorted(reference["trips"], key=lambda r: (r["symbol"], r["entry_bar"]))
    assert [(g["symbol"], g["entry_bar"]) for g in got] == [(w["symbol"], w["entry_bar"]) for w in want]
    for g, w in zip(got, want, strict=True):
        where = f"symbol {w['symbol']}: {w}"
        assert g["side"] == w["side"], (where, g)
        assert g["exit_bar"] == w["exit_bar"], (where, g)
        assert enums.EXIT_REASON_NAMES[g["exit_reason"]] == w["exit_reason"], (where, g)
        for field, theirs, scale in (("entry_price", w["entry_price"], 0.0), ("exit_price", w["exit_price"], 0.0),
                                     ("units", w["qty"], 0.0), ("fees", w["fees"], 0.0),
                                     ("funding", w["funding"], 0.0), ("pnl", w["pnl"], w["stake"]),
                                     ("return_pct", w["return_pct"], 100.0)):
            assert _close(g[field], theirs, scale), (where, field, g[field], theirs)
    assert len(ours["equity"]) == len(reference["equity"])
    for t, (a, b) in enumerate(zip(ours["equity"], reference["equity"], strict=True)):
        assert _close(a, b), (t, float(a), b)
    metrics = ours["metrics"]
    slot = enums.PORTFOLIO_SLOTS
    for name in ("final_value", "funding_paid", "max_margin_ratio"):
        assert _close(metrics[slot[name]], reference[name]), (name, metrics[slot[name]], reference[name])
    assert _close(metrics[slot["total_return_pct"]], reference["total_return_pct"], 100.0)
    for name in ("liquidations", "num_trades", "closed_trades", "skipped_no_slot", "skipped_no_cash",
                 "max_open_seen", "bars_without_mark"):
        assert int(metrics[slot[name]]) == reference[name], (name, metrics[slot[name]], reference[name])


# The matrix: the full product of direction x leverage x margin x fill x slots x stake x slippage (384
# accounts; the reference takes ~3 ms an account on this 481-bar grid, so no subset is needed).
DIRECTIONS = ("long", "short", "both")
LEVERAGES = (1.0, 3.0, 20.0, 50.0)
MAX_OPEN = (2, 5)
STAKES = ((True, 0.5), (False, 300.0))  # 50 % of the equity; 300 of the initial 1000
SLIPPAGES = (0.0, 0.001)


def _cases() -> list[tuple]:
    return list(itertools.product(DIRECTIONS, LEVERAGES, (False, True), ("close", "next_open"), MAX_OPEN,
                                  STAKES, SLIPPAGES))


CASES = _cases()


def _case_id(case: tuple) -> str:
    direction, leverage, cross, fill, max_open, stake, slippage = case
    sized = f"{stake[1]:g}{'x' if stake[0] else 'usd'}"
    return (f"{direction}-L{leverage:g}-{'cross' if cross else 'isolated'}-{fill}-open{max_open}-{sized}"
            f"-slip{slippage:g}")


def _options(case: tuple) -> dict:
    direction, leverage, cross, fill, max_open, stake, slippage = case
    return {"direction": direction, "leverage": leverage, "cross": cross, "fill": fill, "max_open": max_open,
            "stake": stake, "slippage": slippage}


@functools.cache
def reference_of(case: tuple) -> dict:
    return run_reference(market(), **_options(case))


def test_the_grid_is_real_data_with_gaps_funding_and_a_partial_mark_series():
    data = market()
    x = SYMBOLS.index(PERPETUAL)
    has_bar = ~np.isnan(data["close"])
    assert data["close"].shape[1] == 481 and has_bar[x].sum() == 100
    assert (~has_bar[SYMBOLS.index("ADA_BTC")]).sum() == 2  # ADA_BTC misses two whole hours
    assert (has_bar[x] & ~np.isnan(data["mark_open"][x])).sum() == 57
    assert (has_bar[x] & ~np.isnan(data["funding"][x])).sum() > 5
    assert (~has_bar[x] & ~np.isnan(data["funding"][x])).sum() > 0  # funding without a bar: not paid
    assert len({float(v) for v in data["tiers"][x, :, 3]}) > 1  # XRP's brackets carry cum > 0


def test_the_matrix_covers_every_option_and_liquidates_under_both_margins():
    """So that the comparisons below cannot pass vacuously."""
    assert len(CASES) == 3 * 4 * 2 * 2 * 2 * 2 * 2
    isolated = sum(reference_of(c)["liquidations"] for c in CASES if not c[2])
    cross_trips = [t for c in CASES if c[2] for t in reference_of(c)["trips"]
                   if t["exit_reason"] == "liquidation"]
    assert isolated > 0 and len(cross_trips) > 0, (isolated, len(cross_trips))
    # isolated liquidations fill at LP with nothing returned; cross ones at a close (and return something)
    assert any(t["returned"] != 0.0 for t in cross_trips)
    assert sum(reference_of(c)["funding_paid"] != 0.0 for c in CASES) > 0
    x = SYMBOLS.index(PERPETUAL)  # XRP entries past its first bracket: the maintenance amount cum > 0 counts
    first_bracket_end = float(market()["tiers"][x, 0, 1])
    assert any(t["symbol"] == x and t["qty"] * t["entry_price"] >= first_bracket_end
               for c in CASES for t in reference_of(c)["trips"])
    assert sum(reference_of(c)["skipped_no_slot"] for c in CASES) > 0
    assert sum(reference_of(c)["skipped_no_cash"] for c in CASES) > 0


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_kernel_equals_the_reference_on_real_data(case):
    ours = run_kernel(market(), **_options(case))
    compare(ours, reference_of(case))


# --- a planted market, worked by hand -----------------------------------------------------------------

def _planted(both: bool) -> dict:
    """Two symbols at 100; on bar 1 both trade down to a low of 88 (mark low 87.5: -12.5 %), close 96,
    mark close 95; bar 2 has no mark bar (low 95, close 97). Long entries at bar 0's close (the second
    symbol's only when `both`)."""
    price = np.array([[100.0, 100.0, 96.0], [100.0, 100.0, 97.0], [100.0, 88.0, 95.0], [100.0, 96.0, 97.0]])
    mark = np.array([[100.0, 100.0, np.nan], [100.0, 100.0, np.nan], [100.0, 87.5, np.nan],
                     [100.0, 95.0, np.nan]])
    enter = np.zeros((2, 3), dtype=bool)
    enter[0, 0] = True
    enter[1, 0] = both
    none = np.zeros((2, 3), dtype=bool)
    data = {k: np.tile(price[i], (2, 1)) for i, k in enumerate(("open", "high", "low", "close"))}
    data.update({f"mark_{k}": np.tile(mark[i], (2, 1)) for i, k in enumerate(("open", "high", "low", "close"))})
    data.update(funding=np.full((2, 3), np.nan), enter_long=enter, exit_long=none, enter_short=none.copy(),
                exit_short=none.copy(), rank=np.zeros((2, 3)))
    data["tiers"], data["tier_counts"] = tier_tables.load(None, 0.005).stacked(["A", "B"])
    return data


PLANTED = {"direction": "long", "leverage": 10.0, "fill": "close", "max_open": 2, "stake": (True, 0.4),
           "slippage": 0.0, "fee": 0.0, "initial": 1000.0}


def _both_ways(data: dict, cross: bool) -> dict:
    reference = run_reference(data, cross=cross, **PLANTED)
    compare(run_kernel(data, cross=cross, **PLANTED), reference)
    return reference


def test_planted_cross_account_is_liquidated_when_both_positions_fall_together():
    # Bar 0: equity 1000, stake 0.4 x 1000 = 400 each, qty = 400 x 10 / 100 = 40 each, cash 200.
    # Bar 1, at the mark lows 87.5: equity 200 + 2 x (400 + 40 x (87.5 - 100)) = 0 <= maintenance
    # 2 x 40 x 87.5 x 0.005 = 35: the account is liquidated, each position closed at the mark close 95,
    # returning 400 + 40 x (95 - 100) = 200: cash 600, each trip's pnl 200 - 400 = -200 (-50 %).
    reference = _both_ways(_planted(both=True), cross=True)
    trips = reference["trips"]
    assert [(t["symbol"], t["exit_bar"], t["exit_reason"]) for t in trips] == [
        (0, 1, "liquidation"), (1, 1, "liquidation")]
    for t in trips:
        assert t["exit_price"] == pytest.approx(95.0, rel=1e-12)  # the mark close, not the low or close
        assert t["qty"] == pytest.approx(40.0, rel=1e-12)
        assert t["pnl"] == pytest.approx(-200.0, rel=1e-12)
        assert t["return_pct"] == pytest.approx(-50.0, rel=1e-12)
    assert reference["liquidations"] == 2
    assert reference["max_margin_ratio"] == 1.0
    assert reference["equity"] == pytest.approx([1000.0, 600.0, 600.0], rel=1e-12)
    assert reference["bars_without_mark"] == 2  # bar 2, both symbols


def test_planted_cross_account_holding_one_of_the_two_is_not_liquidated():
    # One position: at the mark low the equity is 600 + 400 - 500 = 500 > 40 x 87.5 x 0.005 = 17.5
    # (ratio 0.035); bar 2 (no mark: the price low 95) 600 + 400 - 200 = 800 against 19 (0.02375).
    reference = _both_ways(_planted(both=False), cross=True)
    assert reference["liquidations"] == 0
    assert reference["equity"] == pytest.approx([1000.0, 840.0, 880.0], rel=1e-12)
    assert reference["max_margin_ratio"] == pytest.approx(17.5 / 500.0, rel=1e-12)
    (trip,) = reference["trips"]
    assert (trip["exit_bar"], trip["exit_reason"], trip["exit_price"]) == (-1, "end_of_data", 97.0)
    assert trip["pnl"] == pytest.approx(-120.0, rel=1e-12)


def test_planted_isolated_positions_are_each_liquidated_at_their_own_price():
    # Isolated: LP = (400 + 0 - 40 x 100) / (40 x 0.005 - 40) = 3600 / 39.8 = 90.4523: the mark low 87.5
    # reaches it; each position is closed at LP with nothing returned (pnl -400), the cash 200 stays.
    reference = _both_ways(_planted(both=True), cross=False)
    assert reference["liquidations"] == 2
    for t in reference["trips"]:
        assert t["exit_price"] == pytest.approx(3600.0 / 39.8, rel=1e-12)
        assert t["pnl"] == pytest.approx(-400.0, rel=1e-12)
    assert reference["equity"] == pytest.approx([1000.0, 200.0, 200.0], rel=1e-12)


def _quiet(n_sym: int, n: int) -> dict:
    """`n_sym` symbols flat at 100 for `n` bars, no mark or funding, no signals, flat mmr 0.005."""
    data = {k: np.full((n_sym, n), 100.0) for k in ("open", "high", "low", "close")}
    data.update({k: np.full((n_sym, n), np.nan) for k in ("funding", "mark_open", "mark_high", "mark_low",
                                                           "mark_close")})
    data.update({k: np.zeros((n_sym, n), dtype=bool) for k in SIGNAL_KEYS})
    data["rank"] = np.zeros((n_sym, n))
    data["tiers"], data["tier_counts"] = tier_tables.load(None, 0.005).stacked([f"S{i}" for i in range(n_sym)])
    return data


def test_planted_next_open_entries_rank_by_their_signal_bar():
    # docs/portfolio.md: the rank is "up to the signal bar". Both symbols signal at bar 1's close; at bar 1
    # the second ranks higher, at bar 2 (the fill) the first does. One slot: the second takes it.
    data = _quiet(2, 4)
    data["enter_long"][:, 1] = True
    data["rank"][:, 1] = (1.0, 2.0)
    data["rank"][:, 2] = (2.0, 1.0)
    options = {**PLANTED, "fill": "next_open", "max_open": 1}
    reference = run_reference(data, cross=False, **options)
    compare(run_kernel(data, cross=False, **options), reference)
    assert [(t["symbol"], t["entry_bar"]) for t in reference["trips"]] == [(1, 2)]
    assert reference["skipped_no_slot"] == 1


@pytest.mark.parametrize("cross", [False, True], ids=["isolated", "cross"])
def test_planted_max_margin_ratio_skips_the_bar_a_position_leaves_at_the_open(cross):
    # "Futures metrics": the ratio counts over the bars a position is held through after its entry bar,
    # "not a bar it leaves by a stop or at the open". Entry signal at bar 0, filled at bar 1's open (100):
    # stake 400, qty 40. Bar 2 (held through, low 99): isolated 40 x 99 x 0.005 / (400 - 40) = 0.055,
    # cross / (600 + 360) = 0.020625. The exit signal at bar 2 fills at bar 3's open, whose low of 91
    # (isolated 18.2 / 40 = 0.455, above LP 90.45) does not count.
    data = _quiet(1, 4)
    data["enter_long"][0, 0] = True
    data["exit_long"][0, 2] = True
    data["low"][0, 2], data["low"][0, 3] = 99.0, 91.0
    options = {**PLANTED, "fill": "next_open"}
    reference = run_reference(data, cross=cross, **options)
    compare(run_kernel(data, cross=cross, **options), reference)
    assert reference["liquidations"] == 0
    assert [(t["entry_bar"], t["exit_bar"], t["exit_reason"]) for t in reference["trips"]] == [(1, 3, "signal")]
    expected = 19.8 / (960.0 if cross else 360.0)
    assert reference["max_margin_ratio"] == pytest.approx(expected, rel=1e-12)


def test_planted_cross_liquidation_closes_a_symbol_without_a_bar_at_its_latest_close():
    # The second symbol has no bar at bar 1: its p and its exit are its latest close (100). The first's mark
    # low 75: equity 200 + (400 + 40 x (75 - 100)) + (400 + 0) = 0 <= maintenance 40 x 75 x 0.005 + 40 x 100
    # x 0.005 = 35. The first closes at its mark close 90 (returns 400 - 400 = 0), the second at 100
    # (returns 400): cash 600.
    data = _planted(both=True)
    for k in ("open", "high", "low", "close", "mark_open", "mark_high", "mark_low", "mark_close"):
        data[k][1, 1] = np.nan
    data["mark_low"][0, 1], data["mark_close"][0, 1] = 75.0, 90.0
    reference = _both_ways(data, cross=True)
    assert [(t["symbol"], t["exit_bar"], t["exit_reason"], t["exit_price"]) for t in reference["trips"]] == [
        (0, 1, "liquidation", 90.0), (1, 1, "liquidation", 100.0)]
    assert [t["pnl"] for t in reference["trips"]] == pytest.approx([-400.0, 0.0], abs=1e-9)
    assert reference["equity"] == pytest.approx([1000.0, 600.0, 600.0], rel=1e-12)
    assert reference["bars_without_mark"] == 2  # bar 2, both symbols; bar 1 is not the second's bar
