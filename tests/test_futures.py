"""Perpetual futures through the engine (SPEC 4.3): options, their one-line errors, the notebook API on
the sample's real XRP_USDT_USDT perpetual, results and round trips. The kernel's numbers are checked
against the independent reference in test_futures_reference.py; here, that every surface carries them."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import PipelineError
from pipeline.engine import options, tiers
from pipeline.engine.kernels import enums
from pipeline.notebook import round_trips, run_backtest, run_signals
from tests.random_runs import assert_same_run, random_bars

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample" / "binance-futures"
XRP = "XRP_USDT_USDT"
FRAMES = {XRP: pl.read_ipc(SAMPLE / f"{XRP}-1h-futures.feather")}
FUNDING = {XRP: pl.read_ipc(SAMPLE / f"{XRP}-8h-funding_rate.feather")}
MARK = {XRP: pl.read_ipc(SAMPLE / f"{XRP}-1h-mark.feather")}
LOOSE_RSI = {"rsi_period": 6, "oversold_threshold": 40, "overbought_threshold": 60}


def _config(**run):
    return options.run_config(options.resolve_strategy("rsi"), {}, **run)


@pytest.mark.parametrize(("run", "message"), [
    ({"market": "futures", "leverage": 0}, "--leverage 0 is out of range: must be a number >= 1 and <= 125"),
    ({"market": "futures", "leverage": 126}, "--leverage 126 is out of range: must be a number >= 1 and <= 125"),
    ({"market": "futures", "leverage": float("nan")}, "--leverage nan is not a finite number"),
    ({"market": "futures", "direction": "sideways"}, "--direction 'sideways' is not allowed; use one of: long, short, both"),
    ({"market": "futures", "margin": "portfolio"}, "--margin 'portfolio' is not allowed; use one of: isolated, cross"),
    ({"market": "futures", "mmr": 1.5}, "--mmr 1.5 is out of range: a rate > 0 and < 1 (0.005 = 0.5 %)"),
    ({"leverage": 3}, "--leverage 3 is a futures option: add --market futures"),
    ({"direction": "short"}, "--direction short is a futures option: add --market futures"),
    ({"margin": "cross"}, "--margin cross is a futures option: add --market futures"),
    ({"market": "spot", "mmr": 0.01}, "--mmr 0.01 is a futures option: add --market futures"),
    ({"market": "futures", "tiers": "/nonexistent/tiers.json"}, "--tiers /nonexistent/tiers.json: cannot read it"),
])
def test_bad_futures_options_are_one_line_before_anything_runs(run, message):
    with pytest.raises(PipelineError) as caught:
        _config(**run)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_short_direction_needs_a_strategy_that_returns_short_signals():
    with pytest.raises(PipelineError, match="returns no short signals"):
        run_signals(FRAMES, {XRP: np.zeros(100, bool)}, {XRP: np.zeros(100, bool)}, market="futures",
                    direction="short")


def test_a_symbol_missing_from_the_tier_table_is_an_error_unless_a_flat_rate_is_given():
    table = tiers.load(None, None)
    with pytest.raises(PipelineError, match="'NOPE_USDT_USDT' is not in the tier table"):
        table.of("NOPE_USDT_USDT")
    assert tiers.load(None, 0.01).of("NOPE_USDT_USDT")[0].tolist() == [0.0, math.inf, 0.01, 0.0]
    # The file's own brackets win over the flat rate for the symbols it holds.
    both = tiers.load(str(tiers.SHIPPED), 0.01)
    assert both.of(XRP)[0, 2] == 0.005 and both.of("NOPE")[0, 2] == 0.01


def test_funding_with_duplicate_times_or_non_finite_rates_is_refused():
    funding = FUNDING[XRP]
    twice = pl.concat([funding, funding.head(1)])
    with pytest.raises(PipelineError, match="funding time 2021-11-18 00:00:00.017000.* appears 2 times"):
        run_backtest(FRAMES, "rsi", market="futures", funding={XRP: twice})
    nan = funding.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(float("nan")).otherwise(pl.col("open"))
                               .alias("open"))
    with pytest.raises(PipelineError, match="the funding rate at 2021-11-19 00:00:00.* is nan, not a finite number"):
        run_backtest(FRAMES, "rsi", market="futures", funding={XRP: nan})


def test_funding_and_mark_on_a_spot_run_are_refused_not_ignored():
    with pytest.raises(PipelineError, match='funding and mark prices are futures data: add market="futures"'):
        run_backtest(FRAMES, "rsi", funding=FUNDING)


def test_a_futures_backtest_carries_its_market_settings_and_futures_metrics():
    row = run_backtest(FRAMES, "rsi", LOOSE_RSI, market="futures", leverage=3, direction="both", funding=FUNDING,
                       mark=MARK).row(0, named=True)
    assert (row["market"], row["direction"], row["leverage"], row["margin"]) == ("futures", "both", 3.0, "isolated")
    assert row["tiers"].startswith("binance_leverage_tiers-2024-10-24.json@")
    assert row["num_trades"] > 3 and row["liquidations"] == 0 and row["funding_paid"] != 0.0
    assert 0 < row["max_margin_ratio"] < 1
    # The mark series ends on 2021-11-19 09:00, the candles on 11-21 04:00: 43 hourly bars without a mark.
    assert row["bars_without_mark"] == 43
    spot = run_backtest(FRAMES, "rsi", LOOSE_RSI).row(0, named=True)
    assert spot["market"] == "spot" and spot["funding_paid"] is None and spot["liquidations"] is None


def test_without_funding_and_mark_the_run_pays_none_and_counts_every_bar_unmarked():
    row = run_backtest(FRAMES, "rsi", LOOSE_RSI, market="futures", direction="short").row(0, named=True)
    assert row["funding_paid"] == 0.0 and row["bars_without_mark"] == 100


def test_at_leverage_one_long_isolated_futures_equal_spot_to_rounding():
    """SPEC 4.3: at L = 1 a long is exactly the spot rule (M + qty (X - E) = qty X up to rounding)."""
    spot = run_backtest(FRAMES, "rsi", LOOSE_RSI).row(0, named=True)
    futures = run_backtest(FRAMES, "rsi", LOOSE_RSI, market="futures").row(0, named=True)
    for name in ("final_value", "num_trades", "fees_paid", "max_drawdown_pct", "sharpe", "win_rate_pct"):
        assert futures[name] == pytest.approx(spot[name], rel=1e-12), name


def test_round_trips_say_side_leverage_funding_and_liquidation():
    trips = round_trips(FRAMES, "rsi", LOOSE_RSI, market="futures", leverage=50, direction="short", margin="cross",
                        funding=FUNDING, mark=MARK)
    assert set(trips["side"]) == {"short"} and set(trips["leverage"]) == {50.0}
    liquidated = trips.filter(pl.col("exit_reason") == "liquidation")
    assert liquidated.height == 1 and liquidated["pnl"][0] == pytest.approx(-1000.0)
    # Shorts receive funding when the rate is positive (all of this sample's rates are).
    assert (trips["funding_paid"] <= 0).all() and (trips["funding_paid"] < 0).any()


def test_leverage_is_a_sweepable_parameter():
    board = run_backtest(FRAMES, "rsi", [{**LOOSE_RSI, "leverage": lev} for lev in (1, 3, 10)], market="futures",
                         direction="both", funding=FUNDING, mark=MARK)
    assert sorted(board["leverage"]) == [1.0, 3.0, 10.0]
    assert board["final_value"].n_unique() == 3


def test_direction_is_a_sweepable_parameter_and_each_set_equals_its_own_run():
    """A leverage x direction grid in one run: each set's numbers are those of a run of that set alone."""
    grid = options.parse_grid(options.resolve_strategy("rsi"), ["direction=long,short,both", "leverage=1,5"])
    board = run_backtest(FRAMES, "rsi", [{**p, **LOOSE_RSI} for p in grid], market="futures", funding=FUNDING,
                         mark=MARK)
    assert board.height == 6 and set(board["direction"]) == {"long", "short", "both"}
    for row in board.iter_rows(named=True):
        alone = run_backtest(FRAMES, "rsi", LOOSE_RSI, market="futures", direction=row["direction"],
                             leverage=row["leverage"], funding=FUNDING, mark=MARK).row(0, named=True)
        for name in ("final_value", "num_trades", "funding_paid", "liquidations", "max_margin_ratio"):
            assert row[name] == alone[name], (row["direction"], row["leverage"], name)
    assert board["final_value"].n_unique() == 6


@pytest.mark.parametrize(("grid", "market", "message"), [
    (["direction=long,sideways"], "futures",
     "bad grid spec 'direction=long,sideways': direction='sideways' is not allowed; use one of: long, short, both"),
    (["direction=1:3:1"], "futures", "direction='1:3:1' is not allowed; use one of: long, short, both"),
    (["direction=long,short"], "spot", "direction short is a futures option: add --market futures"),
])
def test_a_bad_direction_axis_is_one_line(grid, market, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        strategy = options.resolve_strategy("rsi")
        options.run_config(strategy, options.parse_grid(strategy, grid), market=market)



USER_SHORTS = '''
"""shortdip: long when the close rises 3 bars in a row, short when it falls 3 bars in a row."""
from pipeline.engine.strategies.api import njit

NAME = "shortdip"
PARAMS = ()
COLUMNS = ("close",)
INDICATORS = ()
INDICATOR_PARAMS = ()


@njit(cache=True)
def indicators(prices, params, ind):
    pass


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value):
    close = prices[0]
    for t in range(close.shape[0]):
        up = t >= 3 and close[t] > close[t - 1] > close[t - 2] > close[t - 3]
        down = t >= 3 and close[t] < close[t - 1] < close[t - 2] < close[t - 3]
        entries[t] = up
        exits[t] = down
        sig_value[t] = close[t]


@njit(cache=True)
def short_signals(prices, params, ind, enter_short, exit_short):
    close = prices[0]
    for t in range(close.shape[0]):
        enter_short[t] = t >= 3 and close[t] < close[t - 1] < close[t - 2] < close[t - 3]
        exit_short[t] = t >= 1 and close[t] > close[t - 1]


@njit(cache=True)
def warmup(params):
    return 4
'''


def test_a_strategy_files_own_short_signals_decide_its_shorts(tmp_path):
    folder = tmp_path / "strategies"
    folder.mkdir()
    (folder / "shortdip.py").write_text(USER_SHORTS)
    options.load_strategy_paths([folder])
    close = FRAMES[XRP]["close"].to_numpy()
    trips = round_trips(FRAMES, "shortdip", market="futures", direction="short")
    assert trips.height > 3 and set(trips["side"]) == {"short"}
    times = FRAMES[XRP]["date"].dt.epoch("s").to_list()
    for entry, exit_, reason in zip(trips["entry_time"].dt.epoch("s"), trips["exit_time"].dt.epoch("s"),
                                    trips["exit_reason"], strict=True):
        t, u = times.index(entry), times.index(exit_)
        assert close[t] < close[t - 1] < close[t - 2] < close[t - 3]  # its own enter_short, not the mirror
        assert reason == "end_of_data" or close[u] > close[u - 1]  # its own exit_short


def test_a_leverage_above_the_tiers_cap_is_reported_not_enforced():
    """Binance's XRP tiers allow 75x below 10,000 notional, 50x up to 20,000, 40x up to 160,000, ...: a run whose
    all-in first entry would be refused names the notional up to which its leverage is allowed, and runs it as
    asked (SPEC 4.3: --leverage is taken as given)."""
    table = tiers.load(None, None)
    (note,) = table.leverage_notes([f"{XRP}:futures"], [1.0, 50.0], 1000.0)
    assert note.startswith(f"--leverage 50: {XRP}:futures's tiers (binance_leverage_tiers-2024-10-24.json@")
    assert "allow it only up to 20,000 notional, so Binance would refuse an entry of the initial cash (50,000" in note
    (never,) = table.leverage_notes([XRP], [80.0], 1000.0)
    assert "allow it at no notional" in never
    assert table.leverage_notes([XRP], [50.0], 400.0) == []  # 20,000 notional: allowed
    assert table.leverage_notes([XRP], [3.0], 1000.0) == []
    assert tiers.load(None, 0.005).leverage_notes([XRP], [125.0], 1000.0) == []  # a flat rate has no caps
    ran = run_backtest(FRAMES, "rsi", LOOSE_RSI, market="futures", leverage=80, funding=FUNDING, mark=MARK)
    assert ran["num_trades"][0] > 0


def test_a_futures_sweep_sharing_indicator_rows_equals_each_set_run_alone():
    """ma_crossover maps each SMA to its own period, so a fast x slow futures sweep keeps each SMA row per
    period (pipeline.engine.strategies.grid.indicator_slots) and copies it in: each set's numbers are those
    of a run of that set alone, where nothing is shared."""
    strategy = options.resolve_strategy("ma_crossover")
    grid = options.parse_grid(strategy, ["fast_period=3,5,8", "slow_period=20,30"])
    from pipeline.engine import strategies

    combos, recompute, _ = strategies.combos_matrix(strategy, list(grid))
    assert strategies.indicator_slots(strategy, combos, recompute, 1000)[2].sum() == 4 < recompute.sum() == 6
    board = run_backtest(FRAMES, "ma_crossover", list(grid), market="futures", direction="both", leverage=3,
                         funding=FUNDING, mark=MARK)
    assert board.height == 6
    for row in board.iter_rows(named=True):
        alone = run_backtest(FRAMES, "ma_crossover", row["params"], market="futures", direction="both", leverage=3,
                             funding=FUNDING, mark=MARK).row(0, named=True)
        for name in ("final_value", "num_trades", "funding_paid", "liquidations", "max_margin_ratio"):
            assert row[name] == alone[name], (row["params"], name)
    assert board["num_trades"].sum() > 0 and board["final_value"].n_unique() == 6


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_skipping_the_flat_bars_and_looping_the_held_ones_changes_no_number(data):
    """simulate_futures_1d skips a flat bar without an entry signal on either side and runs a held bar
    without stops or next-open orders in a loop of its own; with per-bar block sums it runs every bar on the
    general path. Both give the same metrics, trades and equity, bit for bit: every direction, isolated and
    cross, funding, bars with and without a mark bar, liquidations at high leverage, stops and next-open
    fills. (Its liquidation price kept
    until the balance moves and its margin ratio divided only where it could be the highest run on both
    paths: test_futures_reference's matrix fails when either is broken.)"""
    from pipeline.engine.kernels import blocks as kb
    from pipeline.engine.kernels.futures import simulate_futures_1d

    rng, open_, high, low, close = random_bars(data)
    n = close.size
    funding = np.where(np.arange(n) % 8 == 1, rng.normal(0.0, 3e-4, n), np.nan)
    rate = data.draw(st.sampled_from([0.01, 0.05, 0.3]))
    entries, exits = rng.random(n) < rate, rng.random(n) < rate
    enter_short, exit_short = rng.random(n) < rate, rng.random(n) < rate
    if n and data.draw(st.booleans()):
        entries[0] = True
    execution = np.zeros(enums.N_EXECUTION)
    execution[enums.EX_SL] = data.draw(st.sampled_from([0.0, 0.02]))
    execution[enums.EX_SIZE] = data.draw(st.sampled_from([1.0, 0.5]))
    execution[enums.EX_LEVERAGE] = data.draw(st.sampled_from([1.0, 5.0, 50.0]))
    execution[enums.EX_DIRECTION] = enums.DIRECTIONS[data.draw(st.sampled_from(["long", "short", "both"]))]
    cross, fill_next_open = data.draw(st.booleans()), data.draw(st.booleans())
    tier_rows = tiers.load(None, None).of("XRP_USDT_USDT")
    at = np.arange(n)
    mark_open, mark_high, mark_low = open_.copy(), high.copy(), low.copy()
    if data.draw(st.booleans()):  # bars without a mark bar: the price bar's stand in
        missing = rng.random(n) < 0.3
        mark_open[missing] = mark_high[missing] = mark_low[missing] = np.nan

    def run(every_bar: bool):
        metrics, equity = np.full(enums.N_METRICS, np.nan), np.empty(n)
        trades = np.empty(2 * n + 1, dtype=enums.FUTURES_TRADE_DTYPE)
        blocks = (np.array([0.0, 1.0]), np.empty((1, kb.N_BLOCK_STATS))) if every_bar else (None, None)
        k = simulate_futures_1d(open_, close, entries, exits, enter_short, exit_short, close, at, high, low, funding,
                                mark_open, mark_high, mark_low, 0, tier_rows, execution, cross, 0.0005, 1000.0,
                                fill_next_open, 8760.0, metrics, equity, trades, *blocks)
        return metrics, equity, trades[:k]

    assert_same_run(run(False), run(True))
