"""Informative intervals (issue 29; the contract's "Informative intervals"): a strategy reading a slower series
sees, at bar t, the last bar of that series closed by bar t's close, never one still open.

On real Binance 5-minute candles (data/sample/binance-5m), aggregated here by plain loops (not our code):
the daily values an hourly run hands a strategy equal the days rebuilt from the raw candles closed by each
hour's close; the naive merge by date would hand each hour its own day's close, hours before it happened;
and the example daily_trend strategy trades exactly as an independent loop over those same candles does.
"""

from __future__ import annotations

import math
import shutil
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import talib

from pipeline.core.errors import PipelineError
from pipeline.engine import checks, strategies
from pipeline.engine.strategies import informative_column
from pipeline.notebook import prices, run_backtest, with_informative
from tests.reference import reference_backtest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "binance-5m"
DAILY_TREND = ROOT / "examples" / "strategies" / "daily_trend.py"
PAIRS = ("ADA_BTC", "ETH_BTC", "LTC_BTC")  # ADA_BTC misses two whole hours: gaps are covered
HOUR, DAY = 3600, 86_400


def _raw(pair: str) -> list[tuple[int, float, float, float, float, float]]:
    frame = pl.read_ipc(SAMPLE / f"{pair}-5m.feather")
    return list(zip(frame["date"].dt.epoch("s").to_list(), frame["open"].to_list(), frame["high"].to_list(),
                    frame["low"].to_list(), frame["close"].to_list(), frame["volume"].to_list(), strict=True))


def _buckets(rows, every: int) -> OrderedDict[int, list[float]]:
    """Bars of `every` seconds from raw candles: first open, highest high, lowest low, last close, volume."""
    out: OrderedDict[int, list[float]] = OrderedDict()
    for ts, o, h, lo, c, v in rows:
        key = ts - ts % every
        if key not in out:
            out[key] = [o, h, lo, c, v]
        else:
            bar = out[key]
            bar[1], bar[2], bar[3], bar[4] = max(bar[1], h), min(bar[2], lo), c, bar[4] + v
    return out


RAW = {pair: _raw(pair) for pair in PAIRS}
HOURS = {pair: _buckets(RAW[pair], HOUR) for pair in PAIRS}
DAYS = {pair: _buckets(RAW[pair], DAY) for pair in PAIRS}
FRAMES = {pair: pl.DataFrame({"date": pl.from_epoch(pl.Series(list(HOURS[pair])), "s").dt.replace_time_zone("UTC"),
                              **{c: [bar[j] for bar in HOURS[pair].values()]
                                 for j, c in enumerate(("open", "high", "low", "close", "volume"))}})
          for pair in PAIRS}


@pytest.fixture(scope="module")
def daily_trend(tmp_path_factory):
    folder = tmp_path_factory.mktemp("informative_strategies")
    shutil.copy(DAILY_TREND, folder / "daily_trend.py")
    strategies.add_strategy_paths([folder])
    return strategies.get_strategy("daily_trend")


def _last_closed_day(pair: str, hour_open: int) -> list[float] | None:
    """The day (rebuilt from the raw candles) of the latest open d with d + 1 day <= the hour's close."""
    seen = None
    for day_open, bar in DAYS[pair].items():
        if day_open + DAY <= hour_open + HOUR:
            seen = bar
    return seen


def test_each_hour_sees_the_last_day_closed_by_its_close_rebuilt_from_raw_candles(daily_trend):
    batch = with_informative(prices(FRAMES), daily_trend, FRAMES)
    checked = 0
    for row, pair in enumerate(batch.symbols):
        for t, hour_open in enumerate(batch.times):
            if np.isnan(batch.columns["close"][row, t]):
                continue
            day = _last_closed_day(pair, int(hour_open))
            got = (batch.columns[informative_column(0, "open")][row, t],
                   batch.columns[informative_column(0, "close")][row, t])
            if day is None:
                assert all(math.isnan(v) for v in got), (pair, t)
            else:
                assert got == (day[0], day[3]), (pair, t, got, day)
            checked += 1
    assert checked > 1000


def test_the_naive_merge_by_date_would_have_looked_ahead_and_ours_does_not(daily_trend):
    """The classic trap: joining day D's bar onto D's hours hands the 00:00 hour a close that happens 24 hours
    later. On this data the naive value of every hour but a day's last is a later hour's close; ours is always
    the close of an hour that has already closed."""
    batch = with_informative(prices(FRAMES), daily_trend, FRAMES)
    unseen = early_hours = ours_ahead = 0
    for row, pair in enumerate(batch.symbols):
        hours = [(int(t), c) for t, c in zip(batch.times, batch.columns["close"][row], strict=True) if not np.isnan(c)]
        ours = batch.columns[informative_column(0, "close")][row][~np.isnan(batch.columns["close"][row])]
        for k, (hour_open, _) in enumerate(hours):
            day = hour_open - hour_open % DAY
            naive = DAYS[pair][day][3]  # the merge by date: this hour's own day's close
            later = [c for t, c in hours[k + 1:] if t < day + DAY]
            past = {c for _, c in hours[:k + 1]}
            if later:  # not the day's last hour: the naive value is that last hour's close, still to come
                early_hours += 1
                assert naive == later[-1], (pair, hour_open)
                unseen += naive not in past  # not even equal to a close seen so far (prices repeat at tick size)
            ours_ahead += not np.isnan(ours[k]) and ours[k] not in past
    assert early_hours > 1000
    assert unseen > 0.8 * early_hours
    assert ours_ahead == 0


def _reference_daily_trend(pair: str, period: int):
    """daily_trend's rule (its docstring) over the raw-candle hours and days, as plain loops and TA-Lib."""
    opens = [bar[0] for bar in HOURS[pair].values()]
    closes = [bar[3] for bar in HOURS[pair].values()]
    times = list(HOURS[pair])
    sma = talib.SMA(np.array(closes), period)
    n = len(closes)
    entries, exits, values = [False] * n, [False] * n, [float(v) for v in sma]
    for t in range(1, n):
        day = _last_closed_day(pair, times[t])
        up_day = day is not None and day[3] > day[0]
        above = closes[t] > sma[t] and closes[t - 1] <= sma[t - 1]
        below = closes[t] < sma[t] and closes[t - 1] >= sma[t - 1]
        entries[t] = bool(up_day and above)
        exits[t] = bool(below)
    return np.array(opens), np.array(closes), entries, exits, values


@pytest.mark.parametrize("fill", ["close", "next_open"])
@pytest.mark.parametrize("period", [6, 24])
def test_daily_trend_on_hourly_bars_equals_an_independent_loop_on_real_data(daily_trend, fill, period):
    ours = run_backtest(FRAMES, "daily_trend", {"period": period}, fill=fill, trades=True, fee=0.1,
                        annualization="calendar")
    traded = 0
    for pair in PAIRS:
        opens, closes, entries, exits, values = _reference_daily_trend(pair, period)
        ref = reference_backtest(opens, closes, entries, exits, values, 0.001, 1000.0, fill, 8760.0)
        row = ours.filter(pl.col("symbol") == pair).row(0, named=True)
        fills = row["trades"]
        assert [(f["action"], f["time"]) for f in fills] == [
            ("buy" if t.action == 1 else "sell",
             pl.from_epoch(pl.Series([list(HOURS[pair])[t.bar]]), "s").dt.replace_time_zone("UTC")
             .dt.to_string("%Y-%m-%dT%H:%M:%S+00:00")[0]) for t in ref.trades], pair
        for mine, theirs in zip(fills, ref.trades, strict=True):
            assert mine["price"] == pytest.approx(theirs.price, rel=1e-9)
            assert mine["value"] == pytest.approx(theirs.value, rel=1e-9)
        assert row["final_value"] == pytest.approx(ref.metrics["final_value"], rel=1e-9)
        traded += len(fills)
    assert traded > 20


LEAKY = '''
from pipeline.engine.strategies.api import Param, njit

NAME = "{name}"
PARAMS = (Param("period", int, 3, "bars", minimum=1),)
COLUMNS = ("close",)
INFORMATIVE = {informative}
INDICATORS = ("day",)
INDICATOR_PARAMS = ()


@njit(cache=True)
def indicators(prices, params, ind, informative):
    n = prices.shape[1]
    for t in range(n):
        ind[0, t] = informative[0, 0, {reads}] if {reads} < n else informative[0, 0, t]


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value, informative):
    for t in range(prices.shape[1]):
        entries[t] = prices[0, t] > ind[0, t]
        exits[t] = prices[0, t] < ind[0, t]
        sig_value[t] = ind[0, t]


@njit(cache=True)
def warmup(params):
    return 1
'''


def _strategy_file(folder: Path, name: str, informative: str, reads: str = "t") -> strategies.Strategy:
    (folder / f"{name}.py").write_text(textwrap.dedent(LEAKY.format(name=name, informative=informative, reads=reads)))
    return strategies.load_strategy_file(folder / f"{name}.py")


def test_the_check_covers_informative_inputs(tmp_path):
    """`strategies check` truncates the informative rows with the bars: a strategy reading the next bar's
    daily value is named; one reading its own bar's is clean."""
    batch = prices(FRAMES)
    for name, reads, leaks in (("reads_its_own_day", "t", False), ("reads_the_next_bar", "t + 1", True)):
        strategy = _strategy_file(tmp_path, name, '("1d",)', reads)
        joined = with_informative(batch, strategy, FRAMES)
        have = ~np.isnan(joined.columns["close"][1])
        columns = {c: np.ascontiguousarray(v[1][have]) for c, v in joined.columns.items()}
        report = checks.check_symbol(strategy, {}, "ETH_BTC", columns)
        assert bool(report.lookahead) is leaks, report.lookahead


def test_bad_informative_declarations_and_intervals_are_one_line(tmp_path):
    finer = _strategy_file(tmp_path, "reads_five_minutes", '("5m",)')
    with pytest.raises(PipelineError) as caught:
        run_backtest(FRAMES, "reads_five_minutes")
    assert str(caught.value) == ("strategy 'reads_five_minutes' reads 5m bars (INFORMATIVE), finer than the run's "
                                 "1h: an informative interval is the run's or a coarser one")
    assert finer.informative == ((None, "5m"),)
    _strategy_file(tmp_path, "reads_btc", '(("BTC_USDT", "1d"),)')
    with pytest.raises(PipelineError, match="reads BTC_USDT 1d bars .INFORMATIVE. but no frame is named 'BTC_USDT'"):
        run_backtest(FRAMES, "reads_btc")
    for declared, message in (('"1d"', "must be a tuple of intervals"), ('("2d",)', "is not an interval"),
                              ('("1d", "1d")', "names '1d' twice")):
        with pytest.raises(PipelineError, match=message):
            _strategy_file(tmp_path, "bad_declaration", declared)


def test_another_symbols_days_filter_every_symbol_and_join_its_data_version(tmp_path):
    """A market filter: every symbol reads ETH_BTC's days (as ETH_BTC reads its own); ETH_BTC's version joins
    every other row's."""
    batch = prices(FRAMES)
    market = with_informative(batch, _strategy_file(tmp_path, "reads_eth_days", '(("ETH_BTC", "1d"),)'), FRAMES)
    own = with_informative(batch, _strategy_file(tmp_path, "reads_own_days", '("1d",)'), FRAMES)
    eth = batch.symbols.index("ETH_BTC")
    column = informative_column(0, "close")
    for row, pair in enumerate(batch.symbols):
        both = ~np.isnan(batch.columns["close"][row]) & ~np.isnan(batch.columns["close"][eth])
        np.testing.assert_array_equal(market.columns[column][row][both], own.columns[column][eth][both])
        assert market.data_versions[row] != batch.data_versions[row], pair


@pytest.fixture(scope="module")
def sample_lake(build_lake):
    from pipeline import demo

    return build_lake(n_symbols=1, years=0.05, sample=demo.DEFAULT_SAMPLE)


@pytest.mark.slow
def test_the_lake_path_reads_the_informative_series_and_equals_the_notebook(daily_trend, sample_lake, tmp_path):
    """A run from the lake (5-minute bars aggregated to 1h and 1d on read) hands the strategy the same days as
    the notebook's frames, so its results are the same; a finer informative interval is refused at planning."""
    from dataclasses import replace

    from pipeline import runs
    from pipeline.core.config import Settings
    from pipeline.engine import options

    settings = replace(Settings(), lake_root=sample_lake, results_root=tmp_path / "results", redis_url="")
    config = options.run_config(daily_trend, {"period": 24})
    outcome = runs.execute(settings, config, list(PAIRS), "1h", no_cache=True)
    notebook = run_backtest(FRAMES, "daily_trend", {"period": 24})
    for row in outcome.results:
        theirs = notebook.filter(pl.col("symbol") == row["symbol"]).row(0, named=True)
        for name in ("final_value", "num_trades", "sharpe", "max_drawdown_pct"):
            assert row[name] == pytest.approx(theirs[name], rel=1e-12), (row["symbol"], name)
    assert sum(r["num_trades"] for r in outcome.results) > 10
    finer = _strategy_file(tmp_path, "reads_hours_on_days", '("1h",)')
    with pytest.raises(PipelineError, match="reads 1h bars .INFORMATIVE., finer than the run's 1d"):
        runs.execute(settings, options.run_config(finer, {}), list(PAIRS), "1d", no_cache=True)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*reads_hours*"))


def test_a_portfolio_reads_the_informative_series_too(daily_trend):
    """One account over the pairs, its signals from daily_trend's hours and days: one slot and all in on one
    symbol is that symbol's own backtest."""
    from pipeline.notebook import run_portfolio

    one = {"ETH_BTC": FRAMES["ETH_BTC"]}
    account = run_portfolio(one, "daily_trend", {"period": 24}, max_open=1, stake=1)
    single = run_backtest(one, "daily_trend", {"period": 24})
    assert account.accounts["final_value"][0] == pytest.approx(single["final_value"][0], rel=1e-12)
    assert account.accounts["num_trades"][0] == single["num_trades"][0] > 0
    every = run_portfolio(FRAMES, "daily_trend", {"period": 24}, max_open=2, stake="50%")
    assert every.accounts["num_trades"][0] > 0
