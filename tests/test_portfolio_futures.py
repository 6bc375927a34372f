"""A futures portfolio (the contract's "Futures portfolio" bullet) against the single-symbol futures run on the
sample's real XRP_USDT_USDT perpetual: one symbol, one slot, all in, isolated margin is the same account
trade by trade; cross margin is the same account up to its first liquidation, which falls on the same bar.
The many-symbol account is checked against the independent reference loop in
test_portfolio_futures_reference.py; here, that it is the single run where it must be, and its bad input."""

from __future__ import annotations

import itertools

import pytest

from pipeline.core.errors import PipelineError
from pipeline.notebook import round_trips, run_backtest, run_portfolio
from tests.test_futures import FRAMES, FUNDING, LOOSE_RSI, MARK

METRICS = ("final_value", "total_return_pct", "num_trades", "max_drawdown_pct", "sharpe", "exposure_pct",
           "funding_paid", "liquidations", "max_margin_ratio", "bars_without_mark")
TRIP_FIELDS = ("entry_time", "exit_time", "side", "exit_reason", "entry_price", "exit_price", "units", "fees",
               "pnl", "funding_paid")


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-9)
    return a == b


def _both(**run):
    account = run_portfolio(FRAMES, "rsi", LOOSE_RSI, max_open=1, stake=1, funding=FUNDING, mark=MARK,
                            market="futures", fee=0.05, **run)
    single = run_backtest(FRAMES, "rsi", LOOSE_RSI, funding=FUNDING, mark=MARK, market="futures", fee=0.05, **run)
    trips = round_trips(FRAMES, "rsi", LOOSE_RSI, funding=FUNDING, mark=MARK, market="futures", fee=0.05, **run)
    return account, single.row(0, named=True), trips.to_dicts()


@pytest.mark.parametrize(("direction", "leverage", "fill"),
                         list(itertools.product(("long", "short", "both"), (1.0, 3.0, 20.0, 50.0),
                                                ("close", "next_open"))))
def test_one_symbol_one_slot_all_in_isolated_is_the_single_symbol_run(direction, leverage, fill):
    account, single, trips = _both(direction=direction, leverage=leverage, fill=fill)
    row = account.accounts.row(0, named=True)
    for name in METRICS:
        assert _same(row[name], single[name]), (name, row[name], single[name])
    ours = account.trades.to_dicts() if account.trades.height else []
    assert len(ours) == len(trips)
    for mine, theirs in zip(ours, trips, strict=True):
        for name in TRIP_FIELDS:
            assert _same(mine[name], theirs[name] if not name.endswith("_time") else theirs[name].isoformat()), (
                name, mine, theirs)


def test_the_matrix_reaches_liquidations_and_funding_both_ways():
    """The parity above is not vacuous: at 50x this data liquidates, and both sides pay or receive funding."""
    account, _, _ = _both(direction="both", leverage=50.0)
    assert account.accounts["liquidations"][0] >= 1
    paid = {t["side"]: t["funding_paid"] for t in account.trades.to_dicts()}
    assert paid and any(v != 0.0 for v in paid.values())


@pytest.mark.parametrize("direction", ["long", "short", "both"])
def test_cross_margin_is_the_single_run_up_to_its_first_liquidation_on_the_same_bar(direction):
    account, single, trips = _both(direction=direction, leverage=50.0, margin="cross")
    ours = account.trades.to_dicts()
    first = next(k for k, t in enumerate(trips) if t["exit_reason"] == "liquidation")
    for mine, theirs in zip(ours[:first], trips[:first], strict=True):
        for name in TRIP_FIELDS:
            assert _same(mine[name], theirs[name] if not name.endswith("_time") else theirs[name].isoformat())
    liquidated, at_lp = ours[first], trips[first]
    assert (liquidated["exit_reason"], liquidated["exit_time"]) == ("liquidation", at_lp["exit_time"].isoformat())
    # The single run loses the account at LP; the account closes at the bar's mark close (or price close).
    assert liquidated["exit_price"] != pytest.approx(at_lp["exit_price"], rel=1e-9)


@pytest.mark.parametrize(("run", "message"), [
    ({"market": "futures", "leverage": 0}, "--leverage 0 is out of range"),
    ({"market": "futures", "leverage": 126}, "--leverage 126 is out of range"),
    ({"leverage": 3}, "--leverage 3 is a futures option: add --market futures"),
    ({"margin": "cross"}, "--margin cross is a futures option: add --market futures"),
    ({"market": "futures", "sl": 5}, "stops (--sl, --tp, --trail) and --size are for single-symbol runs"),
])
def test_bad_futures_portfolio_options_are_one_line_before_anything_runs(run, message):
    with pytest.raises(PipelineError) as caught:
        run_portfolio(FRAMES, "rsi", LOOSE_RSI, **run)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_funding_frames_on_a_spot_portfolio_are_refused_not_ignored():
    with pytest.raises(PipelineError, match="funding and mark prices are futures data"):
        run_portfolio(FRAMES, "rsi", LOOSE_RSI, funding=FUNDING)
