"""Simulator and batch kernels: SPEC section 4 by hand, the reference, causality, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import numba
import numpy as np
import pyarrow.feather as feather
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine import strategies
from pipeline.engine.kernels import enums
from pipeline.engine.kernels.simulate import simulate_1d
from pipeline.engine.strategies import get_strategy
from tests.random_runs import assert_same_run, random_bars
from tests.reference import reference_backtest, reference_signals

HYP = settings(max_examples=25, deadline=None)
BINANCE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample" / "binance-5m"
BINANCE_FILES = sorted(BINANCE_DIR.glob("*.feather"))
SIM_METRICS = enums.SPEC_METRIC_NAMES
SIM_SLOTS = [enums.METRIC_SLOTS[name] for name in SIM_METRICS]
ALL_STRATEGIES = ["rsi", "ma_crossover", "bollinger", "macd", "buy_and_hold"]


# --- helpers ----------------------------------------------------------------------


def simulate(open_, close, entries, exits, fee_frac=0.001, initial=1000.0, next_open=False,
             bars_per_year=365.0):
    """simulate_1d with a trade log and equity curve; returns (metrics dict, trades, equity)."""
    n = len(close)
    metrics = np.full(enums.N_METRICS, np.nan)
    equity = np.empty(n)
    trades = np.empty(n, dtype=enums.TRADE_DTYPE)
    k = simulate_1d(np.asarray(open_, float), np.asarray(close, float), np.asarray(entries, bool),
                    np.asarray(exits, bool), np.arange(n, dtype=float), fee_frac, initial,
                    next_open, bars_per_year, metrics, equity, trades)
    return dict(zip(enums.METRIC_NAMES, metrics, strict=True)), trades[:k], equity


def _columns(name: str, open_: np.ndarray, close: np.ndarray) -> tuple[np.ndarray, ...]:
    prices = {"open": open_, "close": close}
    return tuple(np.ascontiguousarray(prices[c]).reshape(-1, close.shape[-1])
                 for c in strategies.get_strategy(name).columns)


def run_single(name, open_, close, row, *rest):
    """The strategy's compiled run_single kernel on one symbol's (T,) arrays."""
    kernels = strategies.get_strategy(name).kernels()
    return kernels.run_single(_columns(name, open_, close), open_, close, row, *rest)


def run_grid(name, open_, close, combos, recompute, *rest):
    """The strategy's compiled run_grid kernel on (S x T) arrays."""
    kernels = strategies.get_strategy(name).kernels()
    kernels.run_grid(_columns(name, open_, close), open_, close, combos, recompute, *rest)


def param_row(strategy: str, params: dict) -> np.ndarray:
    combos, _, _ = strategies.combos_matrix(get_strategy(strategy), [params])
    return combos[0]


@st.composite
def markets(draw, min_size: int = 2, max_size: int = 300):
    """(open, close) of a random walk at a crypto price level, with flat stretches."""
    n = draw(st.integers(min_size, max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    level = draw(st.sampled_from([4.3e-5, 0.07, 1.0, 1e4]))
    steps = rng.normal(0.0, draw(st.sampled_from([5e-3, 2e-2, 5e-2])), n)
    steps[rng.random(n) < draw(st.sampled_from([0.0, 0.2, 0.6]))] = 0.0
    close = level * np.exp(np.cumsum(steps))
    open_ = np.empty(n)
    open_[0] = close[0]
    open_[1:] = close[:-1] * np.exp(rng.normal(0.0, 1e-3, n - 1))
    return np.ascontiguousarray(open_), np.ascontiguousarray(close)


@st.composite
def strategy_params(draw, name: str) -> dict:
    if name == "rsi":
        oversold = draw(st.integers(5, 60))
        return {"rsi_period": draw(st.integers(2, 20)), "oversold_threshold": float(oversold),
                "overbought_threshold": float(draw(st.integers(oversold + 1, 95)))}
    if name == "ma_crossover":
        fast = draw(st.integers(1, 12))
        return {"fast_period": fast, "slow_period": draw(st.integers(fast + 1, 30))}
    if name == "bollinger":
        return {"bb_period": draw(st.integers(2, 25)),
                "bb_std": draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]))}
    if name == "macd":
        # TA-Lib's MACD (the reference) needs fast >= 2.
        fast = draw(st.integers(2, 10))
        return {"fast_period": fast, "slow_period": draw(st.integers(fast + 1, 25)),
                "signal_period": draw(st.integers(2, 9))}
    return {}


def assert_metrics_close(ours: dict, ref: dict) -> None:
    for name in SIM_METRICS:
        a, b = float(ours[name]), float(ref[name])
        if math.isnan(b):
            assert math.isnan(a), f"{name}: {a} but the reference is NaN"
        else:
            assert a == pytest.approx(b, rel=1e-9, abs=1e-9), name


# --- SPEC section 4 by hand ---------------------------------------------------------


def test_fee_formulas_and_metrics_of_one_round_trip_filled_at_close():
    close = [100.0, 110.0, 121.0]
    m, trades, equity = simulate(close, close, [True, False, False], [False, False, True])
    # Buy: fee = cash * f, units = (cash - fee) / price. Sell: fee = proceeds * f.
    assert trades[0]["action"] == enums.ACTION_BUY
    assert trades[0]["fee"] == 1000.0 * 0.001
    assert trades[0]["units"] == (1000.0 - 1.0) / 100.0
    assert trades[0]["value"] == 1000.0
    proceeds = trades[0]["units"] * 121.0
    assert trades[1]["action"] == enums.ACTION_SELL
    assert trades[1]["fee"] == proceeds * 0.001
    assert trades[1]["value"] == proceeds - proceeds * 0.001
    assert m["final_value"] == proceeds - proceeds * 0.001
    assert m["total_return_pct"] == pytest.approx((m["final_value"] / 1000.0 - 1) * 100)
    assert m["buy_hold_return_pct"] == pytest.approx(21.0)
    assert (m["num_trades"], m["closed_trades"], m["win_rate_pct"]) == (1, 1, 100.0)
    assert m["exposure_pct"] == pytest.approx(200.0 / 3.0)  # held at the closes of bars 0 and 1
    # The curve starts at the initial cash: the entry fee paid on bar 0 is a drawdown.
    assert m["max_drawdown_pct"] == pytest.approx((1000.0 - 999.0) / 1000.0 * 100.0)
    units = (1000.0 - 1.0) / 100.0
    np.testing.assert_array_equal(equity, [units * 100.0, units * 110.0, m["final_value"]])
    curve = np.concatenate(([1000.0], equity))
    r = np.diff(curve) / curve[:-1]
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(365.0))
    assert m["final_value_net"] == m["final_value"]  # flat at the end: nothing left to pay


def test_next_open_fills_at_the_following_open_and_ignores_a_signal_on_the_last_bar():
    open_ = [10.0, 20.0, 30.0, 40.0]
    close = [11.0, 21.0, 31.0, 41.0]
    m, trades, equity = simulate(open_, close, [True, False, False, False],
                                 [False, True, False, False], fee_frac=0.0, next_open=True)
    assert [(t["bar"], t["signal_bar"], t["price"]) for t in trades] == [(1, 0, 20.0), (2, 1, 30.0)]
    assert m["final_value"] == 1000.0 / 20.0 * 30.0
    np.testing.assert_array_equal(equity, [1000.0, 1050.0, 1500.0, 1500.0])
    m2, trades2, _ = simulate(open_, close, [False, False, False, True], [False] * 4,
                              next_open=True)
    assert len(trades2) == 0 and m2["num_trades"] == 0 and m2["final_value"] == 1000.0


def test_position_open_after_the_last_bar_is_marked_at_the_last_close_not_sold():
    close = [100.0, 80.0, 50.0]
    m, trades, _ = simulate(close, close, [True, False, False], [False] * 3, fee_frac=0.01)
    assert len(trades) == 1 and m["closed_trades"] == 0
    assert math.isnan(m["win_rate_pct"])
    assert m["final_value"] == trades[0]["units"] * 50.0
    assert m["exposure_pct"] == 100.0
    assert m["max_drawdown_pct"] == pytest.approx((1000.0 - 495.0) / 1000.0 * 100.0)
    # final_value_net: the exit fee the open position would pay at the last close.
    assert m["final_value_net"] == pytest.approx(m["final_value"] * (1 - 0.01))


def test_signals_that_do_not_change_the_state_are_ignored():
    close = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    entries = [True, True, False, False, False, True]
    exits = [True, False, False, True, True, False]
    m, trades, _ = simulate(close, close, entries, exits, fee_frac=0.0)
    assert [(t["bar"], t["action"]) for t in trades] == [(0, 1), (3, -1), (5, 1)]
    assert (m["num_trades"], m["closed_trades"]) == (2, 1)


def test_a_losing_round_trip_is_not_a_win_and_fees_alone_can_make_one_lose():
    close = [100.0, 100.0]
    m, _, _ = simulate(close, close, [True, False], [False, True], fee_frac=0.001)
    assert m["win_rate_pct"] == 0.0 and m["final_value"] < 1000.0


def test_sharpe_is_nan_without_two_returns_or_without_variation():
    m, _, _ = simulate([5.0], [5.0], [True], [False])
    assert math.isnan(m["sharpe"])  # one return (from the initial cash to the first close)
    flat = [5.0] * 10
    m, _, _ = simulate(flat, flat, [False] * 10, [False] * 10)
    assert math.isnan(m["sharpe"])  # never invested: every return is 0


# --- against the plain-Python reference -------------------------------------------------


@pytest.mark.parametrize("fill", ["close", "next_open"])
@pytest.mark.parametrize("name", ALL_STRATEGIES)
@HYP
@given(data=st.data())
def test_simulator_matches_the_reference_trade_by_trade(name, fill, data):
    open_, close = data.draw(markets())
    params = data.draw(strategy_params(name))
    fee_frac = data.draw(st.sampled_from([0.0, 0.001, 0.0075]))
    bars_per_year = data.draw(st.sampled_from([365.0, 8760.0]))
    entries, exits, values = reference_signals(name, close, params)
    ref = reference_backtest(open_, close, entries, exits, values, fee_frac, 1000.0, fill,
                             bars_per_year)
    metrics, trades, equity = run_single(
        name, open_, close, param_row(name, params), fee_frac,
        1000.0, fill == "next_open", bars_per_year, 0)
    assert [(int(t["bar"]), int(t["signal_bar"]), int(t["action"])) for t in trades] == [
        (t.bar, t.signal_bar, t.action) for t in ref.trades
    ]
    for field in ("price", "units", "value", "fee", "indicator"):
        np.testing.assert_allclose(trades[field], [getattr(t, field) for t in ref.trades],
                                   rtol=1e-9, atol=0, err_msg=field)
    np.testing.assert_allclose(equity, ref.equity, rtol=1e-9, atol=0)
    assert_metrics_close(dict(zip(enums.METRIC_NAMES, metrics, strict=True)), ref.metrics)


@pytest.fixture(scope="module")
def binance_markets():
    if len(BINANCE_FILES) != 4:
        pytest.fail(f"expected the four real Binance 5m sample files in {BINANCE_DIR}")
    markets = {}
    for path in BINANCE_FILES:
        table = feather.read_table(path, columns=["open", "close"])
        markets[path.stem] = tuple(
            np.ascontiguousarray(table[c].to_numpy(), dtype=np.float64) for c in ("open", "close")
        )
    return markets


@pytest.mark.slow
@pytest.mark.parametrize("fill", ["close", "next_open"])
def test_simulator_matches_the_reference_on_real_binance_files(binance_markets, fill):
    total_trades = 0
    for symbol, (open_, close) in binance_markets.items():
        for name in ALL_STRATEGIES:
            params = strategies.resolve_params(get_strategy(name), {})
            entries, exits, values = reference_signals(name, close, params)
            ref = reference_backtest(open_, close, entries, exits, values, 0.001, 1000.0, fill,
                                     105120.0)
            metrics, trades, equity = run_single(
                name, open_, close, param_row(name, params), 0.001,
                1000.0, fill == "next_open", 105120.0, 0)
            where = f"{symbol} {name}"
            assert [(int(t["bar"]), int(t["action"])) for t in trades] == [
                (t.bar, t.action) for t in ref.trades], where
            for field in ("price", "units", "value", "fee", "indicator"):
                np.testing.assert_allclose(trades[field], [getattr(t, field) for t in ref.trades],
                                           rtol=1e-9, atol=0, err_msg=f"{where} {field}")
            np.testing.assert_allclose(equity, ref.equity, rtol=1e-9, atol=0, err_msg=where)
            assert_metrics_close(dict(zip(enums.METRIC_NAMES, metrics, strict=True)), ref.metrics)
            total_trades += len(trades)
    assert total_trades > 100  # the comparison is about real trades, not empty logs


# --- causality ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rsi", "ma_crossover", "bollinger", "macd"])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_changing_later_bars_never_changes_earlier_signals_trades_or_equity(name, data):
    open_, close = data.draw(markets(min_size=40))
    params = data.draw(strategy_params(name))
    next_open = data.draw(st.booleans())
    t = data.draw(st.integers(1, len(close) - 1))
    factor = data.draw(st.sampled_from([0.5, 0.999, 2.0]))
    open2, close2 = open_.copy(), close.copy()
    open2[t:] *= factor
    close2[t:] *= factor
    row = param_row(name, params)
    kernels = strategies.get_strategy(name).kernels()

    def signals(c):
        return kernels.indicators_and_signals_single(_columns(name, c, c), c, row)

    for a, b in zip(signals(close), signals(close2), strict=True):
        np.testing.assert_array_equal(a[..., :t], b[..., :t])
    _, trades1, eq1 = run_single(name, open_, close, row, 0.001, 1000.0, next_open, 365.0, 0)
    _, trades2, eq2 = run_single(name, open2, close2, row, 0.001, 1000.0, next_open, 365.0, 0)
    np.testing.assert_array_equal(trades1[trades1["bar"] < t], trades2[trades2["bar"] < t])
    np.testing.assert_array_equal(eq1[:t], eq2[:t])


# --- the batch kernel -----------------------------------------------------------------


def gappy_panel(rng: np.random.Generator, n_symbols: int, n_time: int, level: float = 1.0):
    close = level * np.exp(np.cumsum(rng.normal(0.0, 0.02, (n_symbols, n_time)), axis=1))
    open_ = close * np.exp(rng.normal(0.0, 1e-3, close.shape))
    missing = rng.random(close.shape) < 0.15
    missing[0, :] = False  # one symbol without gaps
    if n_symbols > 1:
        missing[1, : n_time // 3] = True  # listed late
    close[missing] = np.nan
    open_[missing] = np.nan
    return open_, close


SWEEPS = {
    "rsi": ["rsi_period=5:20:5", "oversold_threshold=20,30", "overbought_threshold=70,80"],
    "ma_crossover": ["fast_period=2:10:4", "slow_period=10:30:10"],
    "bollinger": ["bb_period=5,20", "bb_std=1.0:2.5:0.5"],
    "macd": ["fast_period=3,12", "slow_period=20,26", "signal_period=5,9"],
    "buy_and_hold": [],
}


@pytest.mark.parametrize("next_open", [False, True])
@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_run_grid_over_a_sweep_equals_the_same_combos_run_one_by_one(name, next_open):
    rng = np.random.default_rng(11)
    open_, close = gappy_panel(rng, 4, 600)
    combos, recompute, _ = strategies.combos_matrix(get_strategy(name), strategies.parse_grid(get_strategy(name), SWEEPS[name]))
    assert recompute[0] and (name == "buy_and_hold" or len(combos) > 1)
    out = np.empty((4, len(combos), enums.N_METRICS))
    run_grid(name, open_, close, combos, recompute, 0.001, 1000.0, next_open, np.full(4, 8760.0), 0, out)
    for s in range(4):
        for c in range(len(combos)):
            single, _, _ = run_single(name, open_[s], close[s], combos[c], 0.001, 1000.0,
                                            next_open, 8760.0, 0)
            np.testing.assert_array_equal(out[s, c], single, err_msg=f"symbol {s}, combo {c}")
    assert np.nansum(out[:, :, enums.M_NUM_TRADES]) > 0


def test_run_grid_is_bit_identical_with_one_thread_and_with_two():
    rng = np.random.default_rng(5)
    open_, close = gappy_panel(rng, 9, 800)
    grid = strategies.parse_grid(get_strategy("rsi"), SWEEPS["rsi"])
    combos, recompute, _ = strategies.combos_matrix(get_strategy("rsi"), grid)
    assert numba.config.NUMBA_NUM_THREADS >= 2, "set NUMBA_NUM_THREADS >= 2 to test parallel runs"
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            out = np.empty((9, len(combos), enums.N_METRICS))
            run_grid("rsi", open_, close, combos, recompute, 0.001, 1000.0,
                           False, np.full(9, 8760.0), 0, out)
            results.append(out)
    finally:
        numba.set_num_threads(before)
    assert results[0].tobytes() == results[1].tobytes() == results[2].tobytes()


def test_missing_bars_are_skipped_not_filled():
    rng = np.random.default_rng(2)
    open_, close = gappy_panel(rng, 3, 500)
    combos, recompute, _ = strategies.combos_matrix(get_strategy("ma_crossover"), [{}])
    out = np.empty((3, 1, enums.N_METRICS))
    run_grid("ma_crossover", open_, close, combos, recompute, 0.001, 1000.0,
                   False, np.full(3, 365.0), 0, out)
    for s in range(3):
        have = ~np.isnan(close[s])
        compact_open = np.ascontiguousarray(open_[s][have])
        compact_close = np.ascontiguousarray(close[s][have])
        single, trades, equity = run_single("ma_crossover", compact_open,
                                                  compact_close, combos[0], 0.001, 1000.0, False,
                                                  365.0, 0)
        np.testing.assert_array_equal(out[s, 0, SIM_SLOTS], single[SIM_SLOTS])
        assert out[s, 0, enums.M_FIRST_INDEX] == np.flatnonzero(have)[0]
        assert out[s, 0, enums.M_LAST_INDEX] == np.flatnonzero(have)[-1]
        assert out[s, 0, enums.M_BARS] == have.sum()
        # Trade bars map back to the grid: each fill sits on a bar the symbol has.
        _, grid_trades, grid_equity = run_single("ma_crossover", open_[s],
                                                       close[s], combos[0], 0.001, 1000.0,
                                                       False, 365.0, 0)
        np.testing.assert_array_equal(grid_trades["bar"], np.flatnonzero(have)[trades["bar"]])
        np.testing.assert_array_equal(grid_equity[have], equity)
        assert np.all(np.isnan(grid_equity[~have]))


def test_symbols_with_too_few_bars_or_none_get_a_status_and_zero_trades():
    n_time = 100
    close = np.full((3, n_time), np.nan)
    rng = np.random.default_rng(0)
    close[0] = 100 * np.exp(np.cumsum(rng.normal(0, 0.05, n_time)))
    close[1, 40:55] = close[0, 40:55]  # 15 bars: rsi_period 14 needs 16
    open_ = close.copy()
    combos, recompute, _ = strategies.combos_matrix(get_strategy("rsi"), [{}])
    assert strategies.warmup_bars(get_strategy("rsi"), {}) == 16
    out = np.empty((3, 1, enums.N_METRICS))
    run_grid("rsi", open_, close, combos, recompute, 0.001, 1000.0, False,
                   np.full(3, 365.0), 0, out)
    status = out[:, 0, enums.M_STATUS]
    assert list(status) == [enums.STATUS_OK, enums.STATUS_TOO_FEW_BARS, enums.STATUS_NO_BARS]
    assert out[1, 0, enums.M_NUM_TRADES] == 0 and out[1, 0, enums.M_FINAL_VALUE] == 1000.0
    assert (out[1, 0, enums.M_FIRST_INDEX], out[1, 0, enums.M_LAST_INDEX]) == (40, 54)
    assert out[2, 0, enums.M_NUM_TRADES] == 0 and out[2, 0, enums.M_BARS] == 0
    assert (out[2, 0, enums.M_FIRST_INDEX], out[2, 0, enums.M_LAST_INDEX]) == (-1, -1)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_no_signal_fires_before_the_warmup(name, data):
    _, close = data.draw(markets(min_size=2, max_size=80))
    params = data.draw(strategy_params(name))
    entries, exits, _ = reference_signals(name, close, params)
    first = next((t for t in range(len(close)) if entries[t] or exits[t]), None)
    if first is not None:
        assert first + 1 >= strategies.warmup_bars(get_strategy(name), params)


def test_a_signal_can_fire_on_the_last_warmup_bar():
    # RSI(2) is first defined at bar 2; a cross below 30 at bar 3 needs 4 bars = warm-up.
    close = np.array([10.0, 11.0, 12.0, 8.0])
    entries, _, _ = reference_signals("rsi", close, {"rsi_period": 2, "oversold_threshold": 30.0,
                                                     "overbought_threshold": 70.0})
    assert entries[3] and strategies.warmup_bars(get_strategy("rsi"), {"rsi_period": 2}) == 4



@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_skipping_the_bars_without_a_fill_changes_no_number(data):
    """simulate_1d skips a flat bar without an entry signal and runs a held bar without an exit signal (and
    without stops) in a loop of its own; with per-bar block sums it runs every bar through the one loop.
    Both give the same metrics, trades and equity, bit for bit: with entries on the first bar (a first
    return that is not 0, which turns the skip off), losses that leave the flat bars under the peak, stops,
    sizes below all-in, slippage and next-open fills."""
    from pipeline.engine import options
    from pipeline.engine.kernels import blocks as kb

    rng, open_, high, low, close = random_bars(data)
    n = close.size
    rate = data.draw(st.sampled_from([0.01, 0.05, 0.3]))
    entries, exits = rng.random(n) < rate, rng.random(n) < rate
    if n and data.draw(st.booleans()):
        entries[0] = True
    sl = data.draw(st.sampled_from([0.0, 0.01, 0.03]))
    row = options.Execution(sl * 100, data.draw(st.sampled_from([0.0, 2.0])), sl > 0 and data.draw(st.booleans()),
                            data.draw(st.sampled_from([1.0, 0.5])), data.draw(st.sampled_from([0.0, 0.1]))).row()
    fill_next_open = data.draw(st.booleans())
    fee = data.draw(st.sampled_from([0.0, 0.001]))

    def run(every_bar: bool):
        metrics, equity = np.full(enums.N_METRICS, np.nan), np.empty(n)  # slots it does not write stay NaN
        trades = np.empty(n, dtype=enums.TRADE_DTYPE)
        blocks = (np.array([0.0, 1.0]), np.empty((1, kb.N_BLOCK_STATS))) if every_bar else (None, None)
        k = simulate_1d(open_, close, entries, exits, close, fee, 1000.0, fill_next_open, 8760.0, metrics, equity,
                        trades, high, low, row, *blocks)
        return metrics, equity, trades[:k]

    assert_same_run(run(False), run(True))
