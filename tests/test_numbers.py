"""Numbers a quant can defend (issue 19): warm-up before the range, honest annualisation, the equity
curve from the initial cash, the last mark net of its exit fee, degenerate parameters refused."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from pipeline import demo, runs
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.engine import batch as engine
from pipeline.engine import options
from pipeline.engine.strategies import get_strategy
from pipeline.lake import reader
from pipeline.lake import snapshots as lake
from pipeline.lake.commit import commit

BUILT_INS = ["rsi", "ma_crossover", "bollinger", "macd", "buy_and_hold"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("numbers")
    demo.build_sample_lake(root / "lake", n_symbols=4, years=0.6, sample=demo.DEFAULT_SAMPLE)
    return replace(Settings(), lake_root=root / "lake", results_root=root / "results", redis_url="")


def _trades(settings: Settings, config: options.RunConfig, symbol: str) -> list[tuple[str, str, float]]:
    result = runs.backtest(settings, replace(config, trades=True), [symbol], write_results=False).results[0]
    return [(t["time"], t["action"], t["price"]) for t in result["trades"]], result


@pytest.mark.parametrize("fill", ["close", "next_open"])
@pytest.mark.parametrize("strategy", BUILT_INS)
def test_a_ranged_run_warms_up_before_its_start_and_trades_as_the_full_run_inside_the_range(sample, strategy,
                                                                                             fill):
    config = options.run_config(get_strategy(strategy), {}, fee=0.1, fill=fill)
    checked = 0
    for symbol in ("SYN000", "SYN001", "SYN002"):
        full, whole = _trades(sample, config, symbol)
        assert whole["warmup_bars"] == 0
        # A range start where the full run is flat, late enough for every warm-up.
        sells = [time for time, action, _ in full if action == "sell"]
        day = (datetime.fromisoformat(sells[len(sells) // 2]) + timedelta(days=1)).date() if sells else \
            (datetime.fromisoformat(whole["start"]) + timedelta(days=60)).date()
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        inside = [t for t in full if datetime.fromisoformat(t[0]) >= start]
        if full and strategy != "buy_and_hold" and any(
                datetime.fromisoformat(t[0]) < start <= datetime.fromisoformat(u[0])
                for t, u in zip(full, full[1:], strict=False) if t[1] == "buy"):
            continue  # the full run holds a position across this start: not comparable
        ranged_config = replace(config, timerange_start=start)
        ranged, result = _trades(sample, ranged_config, symbol)
        assert result["warmup_bars"] > 0 and datetime.fromisoformat(result["start"]) >= start
        if strategy == "buy_and_hold":
            assert ranged[0][0] == result["start"] or fill == "next_open"  # buys at the range, not the history
        else:
            assert ranged == inside, (symbol, start)
        checked += 1
    assert checked >= 2


def test_buy_and_hold_filled_at_the_close_without_fees_returns_exactly_the_benchmark(sample):
    config = options.run_config(get_strategy("buy_and_hold"), {}, fee=0.0, fill="close")
    results = runs.backtest(sample, config, write_results=False).results
    assert len(results) == 8  # 4 synthetic + 4 real pairs
    for r in results:
        assert r["total_return_pct"] == r["buy_hold_return_pct"], r["symbol"]


def test_the_equity_curve_starts_at_the_initial_cash_so_the_first_fee_shows(sample):
    config = options.run_config(get_strategy("buy_and_hold"), {}, fee=0.1)
    batch = reader.read_prices(sample.lake_root, ["ETH_BTC"], "1h", columns=("open", "close"))
    result = engine.run(batch, config)[0]
    equity = engine.trade_log(batch, config, 0, {}).equity
    curve = np.concatenate(([1000.0], equity[~np.isnan(equity)]))
    returns = np.diff(curve) / curve[:-1]
    annual = result["bars_per_year"]
    assert result["sharpe"] == pytest.approx(returns.mean() / returns.std(ddof=1) * math.sqrt(annual), rel=1e-12)
    peak = np.maximum.accumulate(curve)
    assert result["max_drawdown_pct"] == pytest.approx(((peak - curve) / peak).max() * 100, rel=1e-12)
    assert result["max_drawdown_pct"] > 0.1 - 1e-9  # at least the entry fee
    # final_value_net takes the exit fee the open position would pay at the last close.
    assert result["final_value_net"] == pytest.approx(result["final_value"] * (1 - 0.001), rel=1e-12)


@pytest.fixture(scope="module")
def weekday_lake(tmp_path_factory):
    """An hourly market open on weekdays only (as forex), and one open every hour."""
    root = tmp_path_factory.mktemp("weekdays") / "lake"
    hours = pl.datetime_range(datetime(2023, 1, 2, tzinfo=UTC), datetime(2024, 12, 30, tzinfo=UTC), "1h",
                              eager=True)
    rng = np.random.default_rng(4)
    frames = []
    for symbol, weekdays_only in (("EURUSD", True), ("BTCUSD", False)):
        ts = hours.filter(hours.dt.weekday() <= 5) if weekdays_only else hours
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, len(ts))))
        frames.append(pl.DataFrame({"symbol": symbol, "ts": ts, "open": close, "high": close * 1.001,
                                    "low": close * 0.999, "close": close, "volume": 1.0}))
    hourly = pl.concat(frames)
    with lake.export_lock(root):
        commit(root, hourly, {"EURUSD": "1h", "BTCUSD": "1h"}, full=True, watermark=None,
               rows_read=hourly.height, source="test")
    return root


def test_observed_annualisation_counts_the_bars_a_market_really_has(weekday_lake, tmp_path):
    settings = replace(Settings(), lake_root=weekday_lake, results_root=tmp_path / "r", redis_url="")
    observed = {r["symbol"]: r for r in runs.backtest(settings, options.run_config(get_strategy("rsi"), {}),
                                                      write_results=False).results}
    calendar = {r["symbol"]: r for r in runs.backtest(settings, options.run_config(get_strategy("rsi"), {}, annualization="calendar"), write_results=False).results}
    eur, btc = observed["EURUSD"], observed["BTCUSD"]
    assert eur["annualization"] == "observed" and calendar["EURUSD"]["annualization"] == "calendar"
    assert 6_200 < eur["bars_per_year"] < 6_300  # 5 of 7 days: ~6,257 hourly bars a year
    assert btc["bars_per_year"] == pytest.approx(8_760, rel=1e-3)
    assert calendar["EURUSD"]["bars_per_year"] == 8_760
    # A calendar constant inflates a 5-day market's Sharpe by sqrt(8760 / 6257), about 1.18x.
    ratio = calendar["EURUSD"]["sharpe"] / eur["sharpe"]
    assert ratio == pytest.approx(math.sqrt(8_760 / eur["bars_per_year"]), rel=1e-12)
    assert 1.17 < ratio < 1.19


def test_annualization_is_part_of_the_cache_key_and_the_results_table(weekday_lake, tmp_path, redis_url,
                                                                        redis_prefix):
    import duckdb

    from pipeline.store.cache import ResultCache

    settings = replace(Settings(), lake_root=weekday_lake, results_root=tmp_path / "r", redis_url=redis_url,
                       cache_prefix=redis_prefix)
    cache = ResultCache.from_settings(settings)
    first = runs.backtest(settings, options.run_config(get_strategy("rsi"), {}), cache=cache)
    other = runs.backtest(settings, options.run_config(get_strategy("rsi"), {}, annualization="calendar"), cache=cache)
    assert first.cache_misses == 2 and other.cache_misses == 2, "a calendar Sharpe is another number"
    rows = duckdb.sql(f"SELECT annualization, bars_per_year FROM read_parquet('{settings.results_root}/"
                      "run_date=*/strategy=*/*.parquet', union_by_name = true) WHERE symbol = 'EURUSD'"
                      " ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == ["calendar", "observed"] and rows[0][1] == 8_760


@pytest.mark.parametrize(("strategy", "params", "message"), [
    ("macd", {"signal_period": 1}, "signal_period=1 is out of range: must be an integer >= 2"),
    ("macd", {"fast_period": 1}, "fast_period=1 is out of range: must be an integer >= 2"),
    ("bollinger", {"bb_period": 1}, "bb_period=1 is out of range: must be an integer >= 2"),
])
def test_parameters_that_can_never_trade_or_that_ta_lib_refuses_are_rejected(strategy, params, message):
    with pytest.raises(PipelineError, match=message):
        options.run_config(get_strategy(strategy), params)


def test_unknown_annualization_is_one_line_naming_it():
    with pytest.raises(PipelineError, match="--annualization 'yearly' is not allowed; use one of: observed, calendar"):
        options.run_config(get_strategy("rsi"), {}, annualization="yearly")


def test_daily_bars_built_from_a_few_hours_are_flagged_and_min_bar_coverage_drops_them(tmp_path):
    """A listing day with 3 hours and Sundays with 2 (as forex): partial daily bars."""
    root = tmp_path / "lake"
    hours = pl.datetime_range(datetime(2024, 1, 1, 21, tzinfo=UTC), datetime(2024, 6, 30, 23, tzinfo=UTC), "1h",
                              eager=True)
    # Saturdays closed, Sundays only from 22:00: each Sunday's daily bar has 2 hours.
    keep = (hours.dt.weekday() != 6) & ((hours.dt.weekday() != 7) | (hours.dt.hour() >= 22))
    ts = hours.filter(keep)
    close = 100 * np.exp(np.cumsum(np.random.default_rng(8).normal(0, 0.003, len(ts))))
    hourly = pl.DataFrame({"symbol": "FX", "ts": ts, "open": close, "high": close * 1.001, "low": close * 0.999,
                           "close": close, "volume": 1.0})
    with lake.export_lock(root):
        commit(root, hourly, {"FX": "1h"}, full=True, watermark=None, rows_read=hourly.height, source="test")
    days = ts.dt.date().value_counts()
    partial = days.filter(pl.col("count") < 24).height
    assert partial > 20  # the listing day (3 hours) and every Sunday (2 hours)
    settings = replace(Settings(), lake_root=root, results_root=tmp_path / "r", redis_url="")
    config = options.run_config(get_strategy("rsi"), {"rsi_period": 5})
    every = runs.backtest(settings, config, interval="1d", write_results=False).results[0]
    assert every["partial_bars"] == partial and every["bars"] == days.height
    dropped = runs.backtest(settings, replace(config, min_bar_coverage=0.5), interval="1d",
                            write_results=False).results[0]
    assert dropped["partial_bars"] == 0 and dropped["bars"] == days.height - partial
    hourly_run = runs.backtest(settings, replace(config, min_bar_coverage=0.5), write_results=False).results[0]
    assert hourly_run["partial_bars"] == 0 and hourly_run["bars"] == len(ts)  # an hour is always whole


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_min_bar_coverage_outside_zero_to_one_is_refused(value):
    with pytest.raises(PipelineError, match="--min-bar-coverage"):
        options.run_config(get_strategy("rsi"), {}, min_bar_coverage=value)
