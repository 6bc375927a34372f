"""Stops, sizing and slippage (SPEC 4.1): by hand, against the plain-Python reference, against
vectorbt on the real Binance sample, and through the run path (options, cache, results, sweeps)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow.feather as feather
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import demo, notebook, runs
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.engine import batch as engine
from pipeline.engine import options, strategies
from pipeline.engine.kernels import enums
from pipeline.engine.kernels.simulate import simulate_1d
from pipeline.engine.strategies import get_strategy
from pipeline.store.cache import ResultCache
from tests.reference import reference_backtest, reference_signals

ROOT = Path(__file__).resolve().parents[1]
BINANCE_FILES = sorted((ROOT / "data" / "sample" / "binance-5m").glob("*.feather"))
REASONS = {code: name for code, name in enums.EXIT_REASON_NAMES.items()}


def execution(sl=0.0, tp=0.0, trail=False, size=1.0, slippage=0.0) -> np.ndarray:
    """A kernel execution row from fractions."""
    return options.Execution(sl * 100, tp * 100, trail, size, slippage * 100).row()


def simulate(open_, high, low, close, entries, exits, *, fee_frac=0.0, next_open=False, **stops):
    """simulate_1d on hand-written bars; returns (metrics dict, trades, equity)."""
    n = len(close)
    metrics = np.full(enums.N_METRICS, np.nan)
    equity = np.empty(n)
    trades = np.empty(n, dtype=enums.TRADE_DTYPE)
    f = lambda x: np.asarray(x, dtype=float)  # noqa: E731
    k = simulate_1d(f(open_), f(close), np.asarray(entries, bool), np.asarray(exits, bool), np.arange(n, dtype=float),
                    fee_frac, 1000.0, next_open, 365.0, metrics, equity, trades, f(high), f(low),
                    execution(**stops))
    return dict(zip(enums.METRIC_NAMES, metrics, strict=True)), trades[:k], equity


def fills(trades) -> list[tuple[int, int, float, str]]:
    return [(int(t["bar"]), int(t["action"]), float(t["price"]), REASONS[int(t["reason"])]) for t in trades]


# --- SPEC 4.1 by hand ---------------------------------------------------------------------


def test_a_stop_loss_touched_inside_the_bar_fills_at_the_stop_price():
    #            entry   touched   never checked again
    open_ = [100.0, 100.0, 99.0, 90.0]
    high = [100.0, 101.0, 99.5, 95.0]
    low = [100.0, 99.0, 94.0, 85.0]
    close = [100.0, 100.0, 97.0, 90.0]
    _, trades, equity = simulate(open_, high, low, close, [True, False, False, False], [False] * 4, sl=0.05)
    assert fills(trades) == [(0, 1, 100.0, "signal"), (2, -1, 95.0, "stop_loss")]
    assert equity[-1] == 1000.0 / 100.0 * 95.0


def test_an_open_already_beyond_the_stop_fills_at_the_open():
    open_ = [100.0, 100.0, 90.0]
    high = [100.0, 100.0, 92.0]
    low = [100.0, 99.0, 80.0]
    close = [100.0, 100.0, 91.0]
    _, trades, _ = simulate(open_, high, low, close, [True, False, False], [False] * 3, sl=0.05)
    assert fills(trades)[1] == (2, -1, 90.0, "stop_loss")
    # A take-profit gapped through fills at the (better) open too.
    _, trades, _ = simulate([100.0, 100.0, 130.0], [100.0, 101.0, 131.0], [100.0, 99.0, 129.0],
                            [100.0, 100.0, 130.0], [True, False, False], [False] * 3, tp=0.1)
    assert fills(trades)[1] == (2, -1, 130.0, "take_profit")


def test_the_stop_loss_wins_when_both_stops_are_touched_in_one_bar():
    open_ = [100.0, 100.0]
    high = [100.0, 120.0]
    low = [100.0, 80.0]
    _, trades, _ = simulate(open_, high, low, [100.0, 100.0], [True, False], [False, False], sl=0.05, tp=0.1)
    assert fills(trades)[1] == (1, -1, 95.0, "stop_loss")
    _, trades, _ = simulate(open_, high, [100.0, 99.0], [100.0, 100.0], [True, False], [False, False],
                            sl=0.05, tp=0.1)
    assert fills(trades)[1] == (1, -1, 110.00000000000001, "take_profit")  # 100 * (1 + 0.1)


def test_stops_are_not_checked_on_the_entry_bar_and_beat_the_bars_own_signal():
    # The entry bar's low is far below the stop: not checked (the fill is at its close).
    open_ = [100.0, 100.0, 100.0]
    high = [100.0, 100.0, 100.0]
    low = [50.0, 94.0, 100.0]
    close = [100.0, 100.0, 100.0]
    # Bar 1 has an exit signal (fill at its close, 100) and an entry one: the stop comes first and is
    # the bar's one fill, so neither signal fills.
    _, trades, _ = simulate(open_, high, low, close, [True, True, False], [False, True, False], sl=0.05)
    assert fills(trades) == [(0, 1, 100.0, "signal"), (1, -1, 95.0, "stop_loss")]


def test_a_trailing_stop_moves_its_base_to_each_checked_high_after_that_bars_check():
    open_ = [100.0, 100.0, 110.0, 108.0]
    high = [200.0, 110.0, 120.0, 112.0]  # the entry bar's high (200) is never a base
    low = [100.0, 96.0, 105.0, 100.0]
    close = [100.0, 108.0, 115.0, 105.0]
    _, trades, _ = simulate(open_, high, low, close, [True, False, False, False], [False] * 4, sl=0.05,
                            trail=True)
    # Bar 1: stop 95 (base 100), low 96: held; base -> 110. Bar 2: stop 104.5, low 105: held;
    # base -> 120. Bar 3: stop 114, open 108 is below it: filled at the open.
    assert fills(trades)[1] == (3, -1, 108.0, "trailing_stop")


def test_next_open_a_stop_drops_the_order_waiting_for_the_open_and_the_signal_bar_can_reenter():
    open_ = [100.0, 100.0, 90.0, 91.0, 92.0]
    high = [100.0, 100.0, 91.0, 93.0, 93.0]
    low = [100.0, 99.0, 80.0, 90.0, 91.0]
    close = [100.0, 100.0, 90.0, 92.0, 92.0]
    entries = [True, False, True, False, False]
    exits = [False, True, False, False, False]  # a sell waiting for bar 2's open
    _, trades, _ = simulate(open_, high, low, close, entries, exits, next_open=True, sl=0.05)
    assert fills(trades) == [(1, 1, 100.0, "signal"), (2, -1, 90.0, "stop_loss"), (3, 1, 91.0, "signal")]


def test_slippage_moves_market_fills_against_the_trader_but_not_stop_fills():
    open_ = [100.0, 100.0, 100.0, 100.0]
    high = [100.0, 100.0, 100.0, 100.0]
    low = [100.0, 100.0, 100.0, 80.0]
    close = [100.0, 100.0, 100.0, 100.0]
    _, trades, _ = simulate(open_, high, low, close, [True, False, True, False], [False, True, False, False],
                            slippage=0.01, sl=0.1)
    assert fills(trades) == [(0, 1, 101.0, "signal"), (1, -1, 99.0, "signal"), (2, 1, 101.0, "signal"),
                             (3, -1, 101.0 * 0.9, "stop_loss")]


def test_size_commits_a_share_of_the_equity_and_keeps_the_rest_as_cash():
    close = [100.0, 200.0, 200.0]
    m, trades, equity = simulate(close, close, close, close, [True, False, False], [False, True, False],
                                 fee_frac=0.01, size=0.25)
    assert trades[0]["value"] == 250.0 and trades[0]["fee"] == 2.5 and trades[0]["units"] == 247.5 / 100.0
    assert equity[0] == 750.0 + 2.475 * 100.0
    assert m["final_value"] == 750.0 + 2.475 * 200.0 * 0.99
    assert m["win_rate_pct"] == 100.0


# --- against the plain-Python reference --------------------------------------------------


@st.composite
def ohlc(draw, min_size: int = 30, max_size: int = 300):
    n = draw(st.integers(min_size, max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    close = draw(st.sampled_from([0.07, 1.0, 1e4])) * np.exp(np.cumsum(rng.normal(0.0, 0.02, n)))
    open_ = np.empty(n)
    open_[0] = close[0]
    open_[1:] = close[:-1] * np.exp(rng.normal(0.0, 0.01, n - 1))  # gaps either way
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.01, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.01, n)))
    return open_, high, low, close


@pytest.mark.slow
@pytest.mark.parametrize("fill", ["close", "next_open"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_stops_size_and_slippage_match_the_reference_trade_by_trade(fill, data):
    open_, high, low, close = data.draw(ohlc())
    params = {"rsi_period": data.draw(st.integers(2, 10)), "oversold_threshold": 40.0, "overbought_threshold": 60.0}
    sl = data.draw(st.sampled_from([0.0, 0.005, 0.01, 0.03]))
    tp = data.draw(st.sampled_from([0.0, 0.01, 0.02, 0.05]))
    trail = sl > 0 and data.draw(st.booleans())
    size = data.draw(st.sampled_from([1.0, 0.5, 0.1]))
    slippage = data.draw(st.sampled_from([0.0, 0.001]))
    fee = data.draw(st.sampled_from([0.0, 0.001]))
    entries, exits, values = reference_signals("rsi", close, params)
    ref = reference_backtest(open_, close, entries, exits, values, fee, 1000.0, fill, 365.0, high=high, low=low,
                             sl=sl, tp=tp, trail=trail, size=size, slippage=slippage)
    row = strategies.combos_matrix(get_strategy("rsi"), [params])[0][0]
    metrics, trades, equity = strategies.get_strategy("rsi").kernels().run_single(
        (close.reshape(1, -1),), open_, close, row, fee, 1000.0, fill == "next_open", 365.0, 0, high, low,
        execution(sl, tp, trail, size, slippage))
    assert [(int(t["bar"]), int(t["action"]), REASONS[int(t["reason"])]) for t in trades] == [
        (t.bar, t.action, t.reason) for t in ref.trades]
    for field in ("price", "units", "value", "fee"):
        np.testing.assert_allclose(trades[field], [getattr(t, field) for t in ref.trades], rtol=1e-12, err_msg=field)
    np.testing.assert_allclose(equity, ref.equity, rtol=1e-12)
    for name in ("final_value", "num_trades", "closed_trades", "win_rate_pct", "max_drawdown_pct", "exposure_pct"):
        ours, theirs = metrics[enums.METRIC_NAMES.index(name)], ref.metrics[name]
        assert (math.isnan(ours) and math.isnan(theirs)) or ours == pytest.approx(theirs, rel=1e-12), name


def test_without_stops_the_highs_and_lows_are_never_read():
    rng = np.random.default_rng(3)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, 400)))
    open_ = close * np.exp(rng.normal(0.0, 0.01, 400))
    high, low = np.maximum(open_, close) * 1.01, np.minimum(open_, close) * 0.99
    entries, exits, values = reference_signals("rsi", close, strategies.resolve_params(get_strategy("rsi"), {"rsi_period": 3}))
    n = len(close)
    out = []
    for hi, lo in ((high, low), (np.full(n, np.nan), np.full(n, np.nan)), (None, None)):
        metrics = np.zeros(enums.N_METRICS)  # simulate_1d leaves the grid columns alone
        trades = np.zeros(n, dtype=enums.TRADE_DTYPE)
        k = simulate_1d(open_, close, np.array(entries), np.array(exits), np.array(values), 0.001, 1000.0, False,
                        365.0, metrics, np.empty(0), trades, hi, lo, execution(size=0.5, slippage=0.01))
        out.append((metrics.tobytes(), trades[:k].tobytes()))
    assert out[0] == out[1] == out[2]


# --- vectorbt, trade by trade on the real Binance sample ------------------------------------


def _binance() -> dict[str, tuple[np.ndarray, ...]]:
    markets = {}
    for path in BINANCE_FILES:
        table = feather.read_table(path, columns=["date", "open", "high", "low", "close"])
        markets[path.stem] = tuple(np.ascontiguousarray(table[c].to_numpy(), dtype=np.float64)
                                   for c in ("open", "high", "low", "close"))
    return markets


STOP_CASES = [
    {"sl": 0.01},
    {"tp": 0.015},
    {"sl": 0.01, "tp": 0.02},
    {"sl": 0.01, "trail": True},
    {"sl": 0.005, "tp": 0.03, "trail": True},
    {"sl": 0.01, "tp": 0.02, "trail": True, "size": 0.5, "slippage": 0.0005},
]


@pytest.mark.parametrize("fill", ["close", "next_open"])
@pytest.mark.parametrize("case", STOP_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_stops_match_vectorbt_from_signals_trade_by_trade_on_real_data(case, fill):
    vbt = pytest.importorskip("vectorbt")
    pd = pytest.importorskip("pandas")
    rsi = strategies.get_strategy("rsi").kernels()
    params = {"rsi_period": 14, "oversold_threshold": 30.0, "overbought_threshold": 70.0}
    row = strategies.combos_matrix(get_strategy("rsi"), [params])[0][0]
    compared = exits_by_stop = 0
    for symbol, (open_, high, low, close) in _binance().items():
        _, entries, exits = rsi.indicators_and_signals_single((close.reshape(1, -1),), close, row)
        _, trades, _ = rsi.run_single((close.reshape(1, -1),), open_, close, row, 0.0, 1000.0, fill == "next_open",
                                      105120.0, 0, high, low, execution(**case))
        # next_open in vectorbt: the signals a bar later, filled at that bar's open.
        if fill == "next_open":
            entries, exits = np.roll(entries, 1), np.roll(exits, 1)
            entries[0] = exits[0] = False
        frame = {k: pd.Series(v) for k, v in (("open", open_), ("high", high), ("low", low), ("close", close))}
        pf = vbt.Portfolio.from_signals(
            frame["close"], pd.Series(entries), pd.Series(exits), open=frame["open"], high=frame["high"],
            low=frame["low"], price=frame["open"] if fill == "next_open" else frame["close"],
            sl_stop=case.get("sl", np.nan) or np.nan, tp_stop=case.get("tp", np.nan) or np.nan,
            sl_trail=case.get("trail", False), stop_entry_price="fillprice", stop_exit_price="stoplimit",
            size=case.get("size", np.inf), size_type="percent" if "size" in case else "amount",
            slippage=case.get("slippage", 0.0), fees=0.0, init_cash=1000.0, direction="longonly",
            accumulate=False, freq="5min")
        theirs = pf.orders.records_readable
        ours = [(int(t["bar"]), "Buy" if t["action"] == enums.ACTION_BUY else "Sell", float(t["price"]),
                 float(t["units"])) for t in trades]
        assert [(o[0], o[1]) for o in ours] == list(zip(theirs["Timestamp"], theirs["Side"], strict=True)), symbol
        np.testing.assert_allclose([o[2] for o in ours], theirs["Price"], rtol=1e-12, err_msg=symbol)
        np.testing.assert_allclose([o[3] for o in ours], theirs["Size"], rtol=1e-12, err_msg=symbol)
        compared += len(ours)
        exits_by_stop += int(((trades["action"] == enums.ACTION_SELL) & (trades["reason"] != enums.EXIT_SIGNAL)).sum())
    assert compared > 40 and exits_by_stop > 10  # real trades, and real stop exits among them


# --- the run path: options, API rules, cache, results, sweeps --------------------------------


@pytest.mark.parametrize(("run", "message"), [
    ({"sl": -1}, "--sl -1 is out of range: must be a number >= 0 and < 100"),
    ({"sl": 100}, "--sl 100 is out of range"),
    ({"tp": -0.5}, "--tp -0.5 is out of range: must be a number >= 0"),
    ({"size": 0}, "--size 0 is out of range: must be a number > 0 and <= 1"),
    ({"size": 1.5}, "--size 1.5 is out of range"),
    ({"slippage": 100.0}, "--slippage 100.0 is out of range: must be a number >= 0 and < 100"),
    ({"sl": float("nan")}, "--sl nan is not a finite number"),
    ({"trail": True}, "--trail needs a stop-loss to trail"),
])
def test_bad_stops_size_or_slippage_are_one_line_naming_the_value_and_range(run, message):
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        options.run_config(get_strategy("rsi"), {}, **run)
    assert "\n" not in str(caught.value)


def test_run_parameters_join_a_sweeps_grid_and_combine_with_the_strategys():
    grid = options.parse_grid(get_strategy("rsi"), ["rsi_period=7,14", "sl=2:6:2", "trail=0,1"])
    assert len(grid) == 2 * 3 * 2
    config = options.run_config(get_strategy("rsi"), grid)
    assert len(config.params_list) == 12 and {e.sl_pct for e in config.executions} == {2.0, 4.0, 6.0}
    assert all(set(p) == {"rsi_period", "oversold_threshold", "overbought_threshold"} for p in config.params_list)
    # trail=1 without a stop-loss is dropped from a grid, refused for a single run.
    config = options.run_config(get_strategy("rsi"), options.parse_grid(get_strategy("rsi"), ["sl=0,3", "trail=0,1"]))
    assert [(e.sl_pct, e.trail) for e in config.executions] == [(0.0, False), (3.0, False), (3.0, True)]
    assert config.grid_dropped == 1
    with pytest.raises(PipelineError, match="sl is given twice"):
        options.run_config(get_strategy("rsi"), options.parse_grid(get_strategy("rsi"), ["sl=2,4"]), sl=5)
    with pytest.raises(PipelineError, match="bad grid spec 'size=0,1': size=0 is out of range"):
        options.parse_grid(get_strategy("rsi"), ["size=0,1"])
    with pytest.raises(PipelineError, match="unknown parameter 'stop'.*or a run parameter: sl, tp, trail"):
        options.parse_grid(get_strategy("rsi"), ["stop=1,2"])


def test_a_strategy_may_not_declare_a_run_parameters_name(tmp_path):
    text = (ROOT / "examples" / "strategies" / "donchian.py").read_text()
    (tmp_path / "clash.py").write_text(text.replace('NAME = "donchian"', 'NAME = "clash"').replace('"exit_period"',
                                                                                                  '"size"'))
    with pytest.raises(PipelineError, match="clash.py: parameter name 'size' is a run parameter every strategy has"):
        strategies.load_strategy_file(tmp_path / "clash.py")


def test_only_runs_with_stops_read_highs_and_lows():
    assert engine.columns_needed(options.run_config(get_strategy("rsi"), {}, size=0.5, slippage=0.1)) == ("close",)
    assert set(engine.columns_needed(options.run_config(get_strategy("rsi"), {}, tp=3))) == {"close", "open", "high", "low"}


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("stops")
    demo.build_sample_lake(root / "lake", n_symbols=3, years=0.3, sample=demo.DEFAULT_SAMPLE)
    return replace(Settings(), lake_root=root / "lake", results_root=root / "results", redis_url="")


def test_a_cached_result_without_stops_is_never_served_for_a_run_with_stops(lake, redis_url, redis_prefix):
    settings = replace(lake, redis_url=redis_url, cache_prefix=redis_prefix)
    cache = ResultCache.from_settings(settings)
    plain = runs.backtest(settings, options.run_config(get_strategy("rsi"), {}), ["ETH_BTC"], cache=cache)
    stopped = runs.backtest(settings, options.run_config(get_strategy("rsi"), {}, sl=1, tp=2), ["ETH_BTC"], cache=cache)
    assert plain.cache_misses == 1 and stopped.cache_hits == 0 and stopped.cache_misses == 1
    assert stopped.results[0]["final_value"] != plain.results[0]["final_value"]
    assert (stopped.results[0]["sl_pct"], stopped.results[0]["tp_pct"]) == (1.0, 2.0)
    again = runs.backtest(settings, options.run_config(get_strategy("rsi"), {}, sl=1, tp=2), ["ETH_BTC"], cache=cache)
    assert again.cache_hits == 1 and again.results[0]["final_value"] == stopped.results[0]["final_value"]
    for other in ({"sl": 1, "tp": 2, "trail": True}, {"sl": 1, "tp": 2, "size": 0.5}, {"sl": 1, "tp": 2,
                                                                                          "slippage": 0.1}):
        assert runs.backtest(settings, options.run_config(get_strategy("rsi"), {}, **other), ["ETH_BTC"], cache=cache).cache_hits == 0
    cache.close()


@pytest.mark.slow
def test_a_stop_sweep_equals_its_sets_run_one_by_one_and_writes_the_run_parameters_as_columns(lake):
    grid = options.parse_grid(get_strategy("rsi"), ["rsi_period=10,14", "sl=1,3", "trail=0,1", "size=0.5,1"])
    swept = runs.backtest(lake, options.run_config(get_strategy("rsi"), grid, tp=4), ["ETH_BTC", "LTC_BTC"]).results
    assert len(swept) == 2 * 16
    for result in swept[:: 5]:
        single = runs.backtest(lake, options.run_config(get_strategy("rsi"), result["params"], sl=result["sl_pct"], tp=4,
                                                        trail=result["trail"], size=result["size"]),
                               [result["symbol"]], write_results=False).results[0]
        assert single["final_value"] == result["final_value"] and single["num_trades"] == result["num_trades"]
    rows = duckdb.sql(f"SELECT sl_pct, tp_pct, trail, size, slippage_pct, params_json FROM read_parquet("
                      f"'{lake.results_root}/**/*.parquet', union_by_name = true)").fetchall()
    assert {(r[0], r[1], r[2], r[3], r[4]) for r in rows} >= {(1.0, 4.0, True, 0.5, 0.0), (3.0, 4.0, False, 1.0, 0.0)}
    assert all("sl" not in json.loads(r[5]) for r in rows)


def test_the_notebook_takes_stops_and_refuses_them_in_a_portfolio():
    frames = {path.stem.split("-")[0]: pl.read_ipc(path) for path in BINANCE_FILES[:2]}
    results = notebook.run_backtest(frames, "rsi", {}, sl=1, tp=2, trail=True, size=0.5, slippage=0.05)
    assert results["sl_pct"].to_list() == [1.0, 1.0] and results["trail"].to_list() == [True, True]
    with pytest.raises(PipelineError, match="stops .* are for single-symbol runs"):
        notebook.run_portfolio(frames, "rsi", sl=1)
