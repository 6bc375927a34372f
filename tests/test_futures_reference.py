"""The futures kernel (pipeline/engine/kernels/futures.py) against the independent reference loop
(tests/futures_reference.py, written from docs/contract.md SPEC 4.3 alone) on real Binance perpetual
data: freqtrade's XRP_USDT_USDT candles, mark prices and funding rates (data/sample/binance-futures).

Every trade's side, bars, prices, quantity, fees, funding and exit reason, the equity at every close and
the run's futures metrics must agree to 1e-9 relative, for long, short and both; leverage 1, 3, 20 and
high enough to liquidate; isolated and cross; with the mark series, without it; fills at the close and
at the next open; with stops, sizing and slippage.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.engine import tiers
from pipeline.engine.kernels import enums
from pipeline.engine.strategies import get_strategy
from tests import futures_reference

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample" / "binance-futures"
REL = 1e-9
STEP = {"1h": 3600, "5m": 300}


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= REL * max(abs(a), abs(b), 1e-12)


def _series(interval: str, with_mark: bool) -> dict:
    """The perpetual's bars with the funding rate summed per bar (times floored to the bar's open) and the
    mark bars on the same times (NaN where the mark series has none)."""
    bars = pl.read_ipc(SAMPLE / f"XRP_USDT_USDT-{interval}-futures.feather")
    epoch = bars["date"].dt.epoch("s").to_numpy()
    step = STEP[interval]
    funding = pl.read_ipc(SAMPLE / "XRP_USDT_USDT-8h-funding_rate.feather")
    rate = np.full(len(epoch), np.nan)
    at = {int(t): i for i, t in enumerate(epoch)}
    for ms, r in zip(funding["date"].dt.epoch("ms").to_numpy(), funding["open"].to_numpy(), strict=True):
        i = at.get(int(ms // 1000) // step * step)
        if i is not None:
            rate[i] = r if np.isnan(rate[i]) else rate[i] + r
    mark = np.full((3, len(epoch)), np.nan)
    if with_mark:
        marks = pl.read_ipc(SAMPLE / "XRP_USDT_USDT-1h-mark.feather")
        by_time = {int(t): (o, h, lo) for t, o, h, lo in zip(marks["date"].dt.epoch("s").to_numpy(), marks["open"],
                                                              marks["high"], marks["low"], strict=True)}
        for i, t in enumerate(epoch):
            if interval == "1h" and int(t) in by_time:
                mark[:, i] = by_time[int(t)]
    return {"open": bars["open"].to_numpy(), "high": bars["high"].to_numpy(), "low": bars["low"].to_numpy(),
            "close": bars["close"].to_numpy(), "funding": rate, "mark": mark}


SERIES = {(interval, mark): _series(interval, mark) for interval in ("1h", "5m") for mark in (True, False)}
XRP_TIERS = tiers.load(None, None).of("XRP_USDT_USDT")
RSI = get_strategy("rsi")
RSI_PARAMS = np.array([6.0, 40.0, 60.0])  # short and loose: many signals on 100 hourly bars


def _run_both(interval: str, with_mark: bool, *, leverage: float, direction: str, cross: bool, fill: str,
              sl: float = 0.0, tp: float = 0.0, trail: bool = False, size: float = 1.0, slippage: float = 0.0,
              fee: float = 0.0005) -> tuple[tuple, dict]:
    data = SERIES[(interval, with_mark)]
    close = data["close"]
    n = close.size
    kernels = RSI.kernels()
    _, entries, exits = kernels.indicators_and_signals_single((close.reshape(1, n),), close, RSI_PARAMS)
    execution = np.zeros(enums.N_EXECUTION)
    execution[enums.EX_SL], execution[enums.EX_TP], execution[enums.EX_TRAIL] = sl, tp, float(trail)
    execution[enums.EX_SIZE], execution[enums.EX_SLIPPAGE] = size, slippage
    execution[enums.EX_LEVERAGE], execution[enums.EX_DIRECTION] = leverage, enums.DIRECTIONS[direction]
    ours = kernels.run_single_futures(
        (close.reshape(1, n),), data["open"], data["high"], data["low"], close, data["funding"], *data["mark"],
        XRP_TIERS, RSI_PARAMS, execution, cross, fee, 1000.0, fill == "next_open", 8760.0, 0)
    # The built-in's short rule (SHORT_RULE = "mirror"): its exits open shorts, its entries close them.
    reference = futures_reference.simulate(
        list(data["open"]), list(data["high"]), list(data["low"]), list(close),
        list(entries), list(exits), list(exits), list(entries),
        [None if np.isnan(r) else float(r) for r in data["funding"]],
        [None if np.isnan(data["mark"][0, i]) else tuple(data["mark"][:, i]) for i in range(n)],
        [tuple(row) for row in XRP_TIERS], leverage=leverage, direction=direction, cross=cross, fee=fee,
        initial=1000.0, fill=fill, sl=sl, tp=tp, trail=trail, size=size, slippage=slippage)
    return ours, reference


def _compare(ours: tuple, reference: dict) -> None:
    metrics, trades, equity = ours
    trips = reference["trips"]
    assert len(trades) == 2 * len(trips), (len(trades), len(trips))
    for k, trip in enumerate(trips):
        entry, exit_ = trades[2 * k], trades[2 * k + 1]
        where = f"trip {k}: {trip}"
        assert int(entry["side"]) == trip["side"] == int(exit_["side"]), where
        assert (int(entry["bar"]), int(exit_["bar"])) == (trip["entry_bar"], trip["exit_bar"]), where
        assert enums.EXIT_REASON_NAMES[int(exit_["reason"])] == trip["exit_reason"], where
        for ours_value, theirs in ((entry["price"], trip["entry_price"]), (exit_["price"], trip["exit_price"]),
                                   (entry["units"], trip["qty"]), (entry["value"], trip["stake"]),
                                   (entry["fee"], trip["entry_fee"]), (exit_["fee"], trip["exit_fee"]),
                                   (exit_["value"], trip["exit_value"]), (exit_["funding"], trip["funding"])):
            assert _close(float(ours_value), float(theirs)), (where, float(ours_value), theirs)
    assert len(equity) == len(reference["equity"])
    for t, (a, b) in enumerate(zip(equity, reference["equity"], strict=True)):
        assert _close(float(a), float(b)), (t, float(a), b)
    slots = enums.METRIC_SLOTS
    assert _close(metrics[slots["final_value"]], reference["final_value"])
    assert _close(metrics[slots["funding_paid"]], reference["funding_paid"])
    assert _close(metrics[slots["fees_paid"]], reference["fees_paid"])
    assert _close(metrics[slots["max_margin_ratio"]], reference["max_margin_ratio"])
    assert int(metrics[slots["liquidations"]]) == reference["liquidations"]
    assert int(metrics[slots["bars_without_mark"]]) == reference["bars_without_mark"]
    assert int(metrics[slots["num_trades"]]) == reference["num_trades"]


MATRIX = list(itertools.product(("long", "short", "both"), (1.0, 3.0, 20.0, 50.0), (False, True), (True, False),
                                ("close", "next_open")))


@pytest.mark.parametrize(("direction", "leverage", "cross", "with_mark", "fill"), MATRIX)
def test_the_kernel_equals_the_reference_on_real_hourly_xrp(direction, leverage, cross, with_mark, fill):
    _compare(*_run_both("1h", with_mark, leverage=leverage, direction=direction, cross=cross, fill=fill))


@pytest.mark.parametrize(("direction", "leverage", "cross"),
                         list(itertools.product(("long", "short", "both"), (1.0, 3.0, 20.0, 75.0), (False, True))))
def test_the_kernel_equals_the_reference_on_real_five_minute_xrp(direction, leverage, cross):
    _compare(*_run_both("5m", False, leverage=leverage, direction=direction, cross=cross, fill="close"))


@pytest.mark.parametrize(("sl", "tp", "trail", "size", "slippage"), [
    (0.02, 0.0, False, 1.0, 0.0), (0.0, 0.03, False, 1.0, 0.0), (0.015, 0.0, True, 1.0, 0.0),
    (0.01, 0.02, False, 0.5, 0.001), (0.05, 0.05, True, 0.3, 0.002)])
@pytest.mark.parametrize("direction", ["long", "short", "both"])
@pytest.mark.parametrize("leverage", [3.0, 40.0])
def test_stops_sizing_and_slippage_agree_too(sl, tp, trail, size, slippage, direction, leverage):
    for cross, fill in ((False, "close"), (True, "next_open")):
        _compare(*_run_both("1h", True, leverage=leverage, direction=direction, cross=cross, fill=fill, sl=sl, tp=tp,
                            trail=trail, size=size, slippage=slippage))


def test_the_matrix_covers_what_it_claims():
    """The data really liquidates at high leverage and not at 1, funding is paid and received, and the mark
    series misses bars: the comparisons above exercise every rule, not a quiet subset."""
    liquidated = {lev: 0 for lev in (1.0, 3.0, 20.0, 50.0)}
    funding_signs = set()
    reasons = set()
    for direction, leverage, cross, with_mark, fill in MATRIX:
        _, reference = _run_both("1h", with_mark, leverage=leverage, direction=direction, cross=cross, fill=fill)
        liquidated[leverage] += reference["liquidations"]
        funding_signs |= {math.copysign(1, t["funding"]) for t in reference["trips"] if t["funding"]}
        reasons |= {t["exit_reason"] for t in reference["trips"]}
    assert liquidated[1.0] == 0 and liquidated[50.0] > 0, liquidated
    assert funding_signs == {1.0, -1.0}
    assert {"signal", "liquidation", "end_of_data"} <= reasons
    _, with_mark = _run_both("1h", True, leverage=3.0, direction="long", cross=False, fill="close")
    assert 0 < with_mark["bars_without_mark"] < len(SERIES[("1h", True)]["close"])
