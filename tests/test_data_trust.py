"""Issue 11's defects, end to end: real PostgreSQL, the real `cryptobt` CLI in a subprocess.

Each test reproduces a path a new user takes (demo then PostgreSQL, a second seed, a
daily-only file, a pandas CSV, `--interval auto` over mixed histories) and checks the
numbers against the source rows, not against the lake's own idea of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest

from pipeline.core.markets import series_name
from pipeline.demo import FUTURES_SYMBOL
from pipeline.source.synthetic import generate_market

PROJECT = Path(__file__).resolve().parents[1]


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`cryptobt ARGS` in a fresh process, as a user runs it."""
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=env.get("_CWD", str(PROJECT)))
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    if check:
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def env(tmp_path, database_url) -> dict[str, str]:
    values = dict(os.environ)
    values.update({
        "DATABASE_URL": database_url, "REDIS_URL": "", "CRYPTOBT_LAKE_ROOT": str(tmp_path / "data" / "lake"),
        "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "data" / "results"), "PREFECT_HOME": str(tmp_path / "prefect"),
        "PYTHONPATH": str(PROJECT), "_CWD": str(tmp_path),
    })
    return values


def _pg_series(url: str, symbol: str, interval: str = "1h") -> pl.DataFrame:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT p.datetime, p.close_price FROM crypto_prices p JOIN cryptocurrencies c ON c.id = p.crypto_id "
            "WHERE c.symbol = %s AND p.interval_type = %s ORDER BY 1", (symbol, interval)).fetchall()
    return pl.DataFrame(rows, schema=["ts", "close"], orient="row")


def _assert_backtest_reads_the_source(env: dict[str, str], symbol: str) -> None:
    """`backtest -s SYMBOL` covers exactly the source's hourly bars of SYMBOL, first to last close."""
    series = _pg_series(env["DATABASE_URL"], symbol)
    assert series.height > 0
    done = cli(env, "backtest", "buy_and_hold", "-s", symbol, "--json")
    (result,) = json.loads(done.stdout)["results"]
    assert result["symbol"] == symbol
    assert result["bars"] == series.height
    assert datetime.fromisoformat(result["start"]) == series["ts"][0]
    assert datetime.fromisoformat(result["end"]) == series["ts"][-1]
    expected = (series["close"][-1] / series["close"][0] - 1.0) * 100.0
    assert result["buy_hold_return_pct"] == pytest.approx(expected, rel=1e-12)


def _no_staging_leftovers(lake_root: Path) -> None:
    staging = lake_root / ".staging"
    assert not staging.exists() or not list(staging.iterdir()), list(staging.iterdir())


def _load_postgres(env: dict[str, str], binance_files: list[Path]) -> None:
    cli(env, "db", "init")
    cli(env, "db", "seed", "--cryptos", "21", "--years", "0.3")
    cli(env, "db", "import", *map(str, binance_files))


@pytest.mark.slow
def test_demo_lake_then_postgresql_export_serves_postgresql_bars_by_symbol_name(env, tmp_path, binance_files):
    demo_env = {k: v for k, v in env.items() if k not in ("DATABASE_URL",)}
    cli(demo_env, "demo", "--workdir", str(tmp_path / "data"), "--symbols", "60", "--years", "0.5")
    _load_postgres(env, binance_files)
    done = cli(env, "export", "--no-prefect")
    assert "new snapshot" in done.stdout
    lake_root = Path(env["CRYPTOBT_LAKE_ROOT"])
    _no_staging_leftovers(lake_root)
    for symbol in ("SYN020", "SYN000", "ADA_BTC", "XMR_BTC"):
        _assert_backtest_reads_the_source(env, symbol)
    # The snapshot holds PostgreSQL's symbols only: the demo's SYN021..SYN059 came from another source.
    listed = json.loads(cli(env, "data", "list", "--json").stdout)
    assert sorted(row["symbol"] for row in listed) == sorted(
        [f"SYN{i:03d}" for i in range(21)] + ["ADA_BTC", "ETH_BTC", "LTC_BTC", "XMR_BTC"])
    # An incremental export on top of it changes nothing.
    assert "unchanged" in cli(env, "export", "--no-prefect").stdout


@pytest.mark.slow
def test_postgresql_export_then_demo_lake_serves_the_demo_bars(env, tmp_path, binance_files):
    _load_postgres(env, binance_files)
    cli(env, "export", "--no-prefect")
    demo_env = {k: v for k, v in env.items() if k not in ("DATABASE_URL",)}
    cli(demo_env, "demo", "--workdir", str(tmp_path / "data"), "--symbols", "30", "--years", "0.5")
    lake_root = Path(env["CRYPTOBT_LAKE_ROOT"])
    _no_staging_leftovers(lake_root)
    names, hourly = generate_market(30, 0.5, seed=42)
    # SYN020 is the demo's SYN020 (seed 42, 30 symbols), not PostgreSQL's nor a Binance pair.
    own = hourly.filter(pl.col("symbol_index") == names.index("SYN020")).sort("ts")
    done = cli(env, "backtest", "buy_and_hold", "-s", "SYN020", "--json")
    (result,) = json.loads(done.stdout)["results"]
    assert result["bars"] == own.height
    assert result["buy_hold_return_pct"] == pytest.approx((own["close"][-1] / own["close"][0] - 1) * 100, rel=1e-12)
    listed = {row["symbol"] for row in json.loads(cli(env, "data", "list", "--json").stdout)}
    # The demo ships the sample perpetual too, a market of its own beside the spot names.
    futures = series_name(FUTURES_SYMBOL, "futures")
    assert listed == set(names) | {"ADA_BTC", "ETH_BTC", "LTC_BTC", "XMR_BTC", futures}
    # And back: PostgreSQL's export replaces the demo's symbols again, by name.
    cli(env, "export", "--no-prefect")
    _no_staging_leftovers(lake_root)
    for symbol in ("SYN020", "ETH_BTC"):
        _assert_backtest_reads_the_source(env, symbol)


def test_second_seed_with_other_data_is_refused_and_replace_replaces_whole(env):
    cli(env, "db", "init")
    first = cli(env, "db", "seed", "--cryptos", "3", "--years", "0.2", "--seed", "42")
    assert "rows changed" in first.stdout
    before = _pg_series(env["DATABASE_URL"], "SYN001")
    refused = cli(env, "db", "seed", "--cryptos", "3", "--years", "0.2", "--seed", "7", check=False)
    assert refused.returncode == 1
    assert "SYN000" in refused.stderr and "--replace" in refused.stderr
    assert _pg_series(env["DATABASE_URL"], "SYN001").equals(before)

    replaced = cli(env, "db", "seed", "--cryptos", "3", "--years", "0.2", "--seed", "7", "--replace")
    names, hourly = generate_market(3, 0.2, seed=7)
    own = hourly.filter(pl.col("symbol_index") == 1).sort("ts")
    after = _pg_series(env["DATABASE_URL"], "SYN001")
    assert after["ts"].to_list() == own["ts"].to_list()  # no row of seed 42 survives in a gap of seed 7
    assert np.array_equal(after["close"].to_numpy(), own["close"].to_numpy())
    assert "rows changed" in replaced.stdout
    again = cli(env, "db", "seed", "--cryptos", "3", "--years", "0.2", "--seed", "7")
    assert "0 rows changed" in again.stdout
    # The lake follows: an export after the replacement holds seed 7's series whole.
    cli(env, "export", "--no-prefect")
    cli(env, "db", "seed", "--cryptos", "3", "--years", "0.2", "--seed", "42", "--replace")
    cli(env, "export", "--no-prefect")
    _assert_backtest_reads_the_source(env, "SYN001")


def test_reimporting_the_same_files_says_zero_rows_changed(env, binance_files):
    cli(env, "db", "init")
    first = cli(env, "db", "import", *map(str, binance_files[:2]))
    assert "0 rows changed" not in first.stdout and "rows changed" in first.stdout
    second = cli(env, "db", "import", *map(str, binance_files[:2]))
    assert "0 rows changed" in second.stdout


def _daily_file(path: Path, days: int = 400) -> pl.DataFrame:
    rng = np.random.default_rng(5)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, days)))
    open_ = np.r_[100.0, close[:-1]]
    frame = pl.DataFrame({
        "Date": [(datetime(2020, 1, 1) + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(days)],
        "Open": open_, "High": np.maximum(open_, close) * 1.01, "Low": np.minimum(open_, close) * 0.99,
        "Close": close, "Volume": rng.uniform(1e5, 1e6, days),
    })
    frame.write_csv(path)
    return frame


def test_daily_only_file_is_backtestable_at_its_own_interval(env, tmp_path):
    frame = _daily_file(tmp_path / "GOOG.csv")
    cli(env, "db", "init")
    cli(env, "db", "import", str(tmp_path / "GOOG.csv"))
    cli(env, "export", "--no-prefect")
    done = cli(env, "backtest", "buy_and_hold", "--interval", "1d", "-s", "GOOG", "--json")
    (result,) = json.loads(done.stdout)["results"]
    assert result["interval"] == "1d"
    assert result["bars"] == frame.height
    expected = (frame["Close"][-1] / frame["Close"][0] - 1) * 100
    assert result["buy_hold_return_pct"] == pytest.approx(expected, rel=1e-12)
    # Asking it at an interval finer than its own says so in one line.
    finer = cli(env, "backtest", "rsi", "--interval", "1h", "-s", "GOOG", check=False)
    assert finer.returncode == 1 and "1d" in finer.stderr and "GOOG" in finer.stderr


def test_pandas_to_csv_file_with_unnamed_index_column_imports(env, tmp_path):
    import pandas as pd

    days = _daily_file(tmp_path / "plain.csv", 50).to_pandas()
    hourly = pd.DataFrame(
        {c.lower(): days[c].to_numpy() for c in ("Open", "High", "Low", "Close", "Volume")},
        index=pd.date_range("2024-03-01", periods=50, freq="h", tz="UTC"),
    )
    hourly.to_csv(tmp_path / "PANDA.csv")
    assert (tmp_path / "PANDA.csv").read_text().startswith(",open,")
    cli(env, "db", "init")
    done = cli(env, "db", "import", str(tmp_path / "PANDA.csv"))
    assert "rows changed" in done.stdout
    series = _pg_series(env["DATABASE_URL"], "PANDA")
    assert series.height == 50
    assert series["ts"][0] == datetime(2024, 3, 1, tzinfo=UTC)
    # A first column that is not a timestamp is still refused, naming it.
    hourly.reset_index(drop=True).to_csv(tmp_path / "NODATE.csv")
    refused = cli(env, "db", "import", str(tmp_path / "NODATE.csv"), check=False)
    assert refused.returncode == 1 and "NODATE.csv" in refused.stderr


def _hourly_csv(path: Path, start: datetime, hours: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, hours)))
    open_ = np.r_[50.0, close[:-1]]
    pl.DataFrame({
        "date": [start + timedelta(hours=i) for i in range(hours)],
        "open": open_, "high": np.maximum(open_, close) * 1.002, "low": np.minimum(open_, close) * 0.998,
        "close": close, "volume": np.full(hours, 10.0),
    }).write_csv(path)


def test_interval_auto_decides_per_symbol(env, tmp_path):
    # LONG spans more than 50,000 hours; SHORT has 481 hourly bars.
    _hourly_csv(tmp_path / "LONG.csv", datetime(2018, 1, 1), 52_000, 1)
    _hourly_csv(tmp_path / "SHORT.csv", datetime(2023, 6, 1), 481, 2)
    cli(env, "db", "init")
    cli(env, "db", "import", str(tmp_path / "LONG.csv"), str(tmp_path / "SHORT.csv"))
    cli(env, "export", "--no-prefect")
    done = cli(env, "backtest", "rsi", "--interval", "auto", "--json")
    by_symbol = {r["symbol"]: r for r in json.loads(done.stdout)["results"]}
    assert by_symbol["SHORT"]["interval"] == "1h"
    assert by_symbol["SHORT"]["bars"] == 481 and by_symbol["SHORT"]["reason"] is None
    assert by_symbol["LONG"]["interval"] == "1d"
    help_text = cli({**env, "COLUMNS": "200"}, "backtest", "--help").stdout
    assert "per symbol" in " ".join(word for word in help_text.split() if word != "│")


def _pandas_bars(path: Path, rule: str):
    """Reference resampling with pandas: UTC buckets labelled by open time, empty buckets dropped."""
    import pandas as pd

    frame = pl.read_ipc(path).to_pandas()
    date = next(c for c in frame.columns if c.lower() in ("date", "datetime", "timestamp"))
    frame = frame.set_index(pd.to_datetime(frame[date], utc=True)).sort_index()
    frame = frame[~frame.index.duplicated()]
    out = frame.resample(rule, label="left", closed="left").agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    return out.dropna(subset=["close"])


@pytest.mark.parametrize(("interval", "rule", "period"), [("5m", "5min", 14), ("15m", "15min", 14),
                                                         ("1h", "1h", 14), ("1d", "1D", 2)])
def test_5m_file_backtests_at_coarser_intervals_with_talib_rsi_on_resampled_bars(env, binance_files, interval,
                                                                                 rule, period):
    import talib

    path = next(p for p in binance_files if p.name.startswith("ETH_BTC"))
    cli(env, "db", "init")
    imported = cli(env, "db", "import", str(path))
    assert "at 5m" in imported.stdout
    cli(env, "export", "--no-prefect")
    reference = _pandas_bars(path, rule)
    done = cli(env, "backtest", "rsi", "-s", "ETH_BTC", "--interval", interval, "-p", f"rsi_period={period}",
               "--trades", "--json")
    (result,) = json.loads(done.stdout)["results"]
    assert result["interval"] == interval
    assert result["bars"] == len(reference)
    assert datetime.fromisoformat(result["start"]) == reference.index[0]
    rsi = talib.RSI(reference["close"].to_numpy(), period)
    at = {ts: value for ts, value in zip(reference.index, rsi, strict=True)}
    assert result["trades"], "no trade to compare indicator values on"
    for trade in result["trades"]:
        assert trade["indicator"] == pytest.approx(at[datetime.fromisoformat(trade["time"])], rel=1e-12, abs=1e-9)
    expected_bh = (reference["close"].iloc[-1] / reference["close"].iloc[0] - 1) * 100
    assert result["buy_hold_return_pct"] == pytest.approx(expected_bh, rel=1e-12)


def _planted_file(path: Path, zero: bool = True) -> None:
    """Two days of hourly bars with a jump (x20), a gap (5 missing hours), a stale stretch and a zero price."""
    hours = 48
    start = datetime(2024, 5, 1)
    ts = [start + timedelta(hours=i) for i in range(hours) if not 10 <= i < 15]
    close = np.linspace(100, 110, len(ts))
    close[20] = close[19] * 20  # jump up, and back down at 21
    close[25:35] = close[24]  # 11 equal closes (stale at a threshold of 10)
    frame = pl.DataFrame({"date": ts, "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
                          "volume": np.full(len(ts), 5.0)})
    if zero:
        frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 40).then(0.0).otherwise(pl.col(c)).alias(c)
                                   for c in ("open", "low", "close"))
    frame.write_csv(path)


def test_data_check_finds_planted_jump_gap_stale_stretch_and_zero_price(env, tmp_path):
    _planted_file(tmp_path / "PLANT.csv")
    env = {**env, "CRYPTOBT_STALE_BARS": "10"}
    done = cli(env, "data", "check", str(tmp_path / "PLANT.csv"), "--json")
    (notes,) = json.loads(done.stdout).values()
    text = " | ".join(notes)
    assert "1 gap(s), longest 5 missing 1h bar(s)" in text
    assert "jump(s) beyond 10x, largest x20.0" in text
    assert "1 stale stretch(es) of >= 10 equal closes, longest 11" in text
    assert "1 zero or negative price(s)" in text
    strict = cli(env, "data", "check", str(tmp_path / "PLANT.csv"), "--strict", check=False)
    assert strict.returncode == 1 and "PLANT.csv" in strict.stdout
    # The importer refuses the zero price; without it the file imports, warns, and the lake records the rest.
    refused = cli(env, "db", "import", str(tmp_path / "PLANT.csv"), check=False)
    assert refused.returncode == 1 and "prices must be > 0" in refused.stderr


def test_health_is_recorded_at_import_and_export_and_warned_at_backtest(env, tmp_path):
    _planted_file(tmp_path / "PLANT.csv", zero=False)
    env = {**env, "CRYPTOBT_STALE_BARS": "10"}
    cli(env, "db", "init")
    strict = cli(env, "db", "import", str(tmp_path / "PLANT.csv"), "--strict", check=False)
    assert strict.returncode == 1 and "--strict" in strict.stderr and "jump" in strict.stderr
    imported = cli(env, "db", "import", str(tmp_path / "PLANT.csv"))
    assert "warning: PLANT:" in imported.stderr and "jump" in imported.stderr
    exported = cli(env, "export", "--no-prefect")
    assert "warning: PLANT:" in exported.stderr
    manifest = json.loads((Path(env["CRYPTOBT_LAKE_ROOT"]) / "current" / "_manifest.json").read_text())
    assert any("stale" in note for note in manifest["symbols"]["PLANT"]["health"])
    run = cli(env, "backtest", "buy_and_hold", "-s", "PLANT")
    warnings = [line for line in run.stderr.splitlines() if "data findings" in line]
    assert len(warnings) == 1 and "PLANT" in warnings[0]
    listed = json.loads(cli(env, "data", "list", "--json").stdout)
    assert listed[0]["symbol"] == "PLANT" and listed[0]["gaps"] == 1 and listed[0]["interval"] == "1h"
    assert listed[0]["intervals"] == ["1h", "4h", "1d", "1w"]
    table = cli(env, "data", "list").stdout
    assert "PLANT" in table and "1h" in table
    unknown = cli(env, "backtest", "rsi", "-s", "NOPE", check=False)
    assert unknown.returncode == 1 and "cryptobt data list" in unknown.stderr


def test_backtest_on_an_older_snapshot_and_results_show(env, redis_url, redis_prefix):
    env = {**env, "REDIS_URL": redis_url, "CRYPTOBT_CACHE_PREFIX": redis_prefix}
    cli(env, "db", "init")
    cli(env, "db", "seed", "--cryptos", "2", "--years", "0.1", "--seed", "3")
    cli(env, "export", "--no-prefect")
    old = json.loads(cli(env, "lake", "snapshots", "--json").stdout)[-1]["snapshot_id"]
    old_run = json.loads(cli(env, "backtest", "rsi", "--json").stdout)["results"]
    cli(env, "db", "seed", "--cryptos", "2", "--years", "0.1", "--seed", "4", "--replace")
    cli(env, "export", "--no-prefect")
    new = json.loads(cli(env, "lake", "snapshots", "--json").stdout)[-1]["snapshot_id"]
    assert new != old
    current = json.loads(cli(env, "backtest", "rsi", "--json").stdout)["results"]
    again_old = json.loads(cli(env, "backtest", "rsi", "--snapshot", old, "--json").stdout)["results"]
    # The older snapshot's numbers come back for it, never for the current one, cached or not.
    strip = ("snapshot_id", "computed_snapshot_id", "from_cache")
    assert [{k: v for k, v in r.items() if k not in strip} for r in again_old] == \
        [{k: v for k, v in r.items() if k not in strip} for r in old_run]
    assert all(r["snapshot_id"] == old for r in again_old)
    after = json.loads(cli(env, "backtest", "rsi", "--json").stdout)["results"]
    assert [r["total_return_pct"] for r in after] == [r["total_return_pct"] for r in current]
    assert all(r["snapshot_id"] == new for r in after)
    assert {r["data_version"] for r in after}.isdisjoint({r["data_version"] for r in again_old})
    missing = cli(env, "backtest", "rsi", "--snapshot", "nope", check=False)
    assert missing.returncode == 1 and "lake snapshots" in missing.stderr
    # results show: the leaderboard and parameters of a past run.
    run_id = next(line.split()[1].rstrip(":") for line in cli(env, "backtest", "rsi", "--snapshot", old).stdout
                  .splitlines() if line.startswith("run "))
    shown = json.loads(cli(env, "results", "show", run_id, "--json").stdout)
    assert shown["run"]["snapshot_id"] == old and shown["run"]["strategy"] == "rsi"
    assert sorted(r["symbol"] for r in shown["results"]) == ["SYN000", "SYN001"]
    assert json.loads(shown["results"][0]["params_json"])["rsi_period"] == 14
    assert "SYN00" in cli(env, "results", "show", run_id).stdout
    unknown = cli(env, "results", "show", "nope", check=False)
    assert unknown.returncode == 1 and "nope" in unknown.stderr


def test_native_interval_mismatch_is_refused_and_replace_switches_it(env, tmp_path, binance_files):
    path = next(p for p in binance_files if p.name.startswith("LTC_BTC"))
    cli(env, "db", "init")
    cli(env, "db", "import", str(path))
    _hourly_csv(tmp_path / "LTC_BTC.csv", datetime(2018, 1, 10), 100, 3)
    refused = cli(env, "db", "import", str(tmp_path / "LTC_BTC.csv"), check=False)
    assert refused.returncode == 1
    assert "LTC_BTC has 5m bars, this load 1h" in refused.stderr and "--replace" in refused.stderr
    cli(env, "export", "--no-prefect")
    cli(env, "db", "import", str(tmp_path / "LTC_BTC.csv"), "--replace")
    cli(env, "export", "--no-prefect")
    listed = json.loads(cli(env, "data", "list", "--json").stdout)
    assert listed[0]["interval"] == "1h" and listed[0]["bars"] == 100
    _assert_backtest_reads_the_source(env, "LTC_BTC")


@pytest.mark.slow
def test_demo_with_database_url_into_an_existing_sample_lake(env, tmp_path, prefect_home):
    """`make demo` with DATABASE_URL set, over a lake the sample demo built: the full path's export
    reads PostgreSQL whole and its snapshot replaces the sample's symbols (issue 11, item 1)."""
    demo_env = {k: v for k, v in env.items() if k != "DATABASE_URL"}
    cli(demo_env, "demo", "--workdir", str(tmp_path / "data"), "--symbols", "70", "--years", "0.3")
    # No Prefect server configured: the export runs in-process (a configured one would track it).
    env = {**env, "PREFECT_HOME": str(prefect_home)}
    done = cli(env, "demo", "--workdir", str(tmp_path / "data"))
    assert "export: snapshot" in done.stdout
    _no_staging_leftovers(Path(env["CRYPTOBT_LAKE_ROOT"]))
    listed = {row["symbol"] for row in json.loads(cli(env, "data", "list", "--json").stdout)}
    assert "SYN065" not in listed and {"SYN059", "ETH_BTC"} <= listed
    for symbol in ("SYN059", "ETH_BTC"):
        _assert_backtest_reads_the_source(env, symbol)
