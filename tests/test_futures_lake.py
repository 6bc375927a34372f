"""Perpetual futures from PostgreSQL to a backtest (SPEC 4.3): `db import --market futures`, `--kind funding`
and `--kind mark` into their own tables, the export into the same snapshot (checksummed, incremental: a
new funding rate alone makes a new snapshot and a new data version), and `backtest --market futures`
reading them in the run's batched read, with the notebook's numbers on the same real data."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import psycopg
import pytest

from pipeline.notebook import run_backtest, run_portfolio
from tests.test_data_trust import cli, env  # noqa: F401 - `env` is a fixture used by the tests below

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample" / "binance-futures"
XRP = "XRP_USDT_USDT"
RSI = ("--param", "rsi_period=6", "--param", "oversold_threshold=40", "--param", "overbought_threshold=60")


def _import_all(environ: dict[str, str]) -> None:
    cli(environ, "db", "import", str(SAMPLE / f"{XRP}-1h-futures.feather"), "--market", "futures")
    cli(environ, "db", "import", str(SAMPLE / f"{XRP}-8h-funding_rate.feather"), "--market", "futures", "--kind",
        "funding")
    cli(environ, "db", "import", str(SAMPLE / f"{XRP}-1h-mark.feather"), "--market", "futures", "--kind", "mark")
    # The spot series of the same name is another market: both live side by side.
    cli(environ, "db", "import", str(SAMPLE / f"{XRP}-1h-futures.feather"))


def _backtest(environ: dict[str, str], *args: str) -> dict:
    done = cli(environ, "backtest", "rsi", *RSI, "--json", *args)
    (result,) = json.loads(done.stdout)["results"]
    return result


def test_futures_import_export_and_backtest_equal_the_notebook_on_real_data(env):  # noqa: F811
    _import_all(env)
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert {r[0] for r in conn.execute("SELECT symbol FROM cryptocurrencies")} == {XRP, f"{XRP}:futures"}
        assert conn.execute("SELECT count(*) FROM crypto_funding_rates").fetchone()[0] == 91
        assert conn.execute("SELECT interval_type, count(*) FROM crypto_mark_prices GROUP BY 1").fetchall() == [
            ("1h", 100)]
    # Re-importing the same funding file changes nothing.
    again = cli(env, "db", "import", str(SAMPLE / f"{XRP}-8h-funding_rate.feather"), "--market", "futures",
                "--kind", "funding")
    assert "0 rows changed" in again.stdout
    cli(env, "export", "--no-prefect")
    assert "every file matches" in cli(env, "lake", "verify").stdout

    futures = _backtest(env, "--market", "futures", "-s", XRP, "--leverage", "3", "--direction", "both")
    spot = _backtest(env, "-s", XRP)
    assert (futures["symbol"], futures["market"], spot["symbol"], spot["market"]) == (
        f"{XRP}:futures", "futures", XRP, "spot")
    assert futures["data_version"] != spot["data_version"]
    frames = {XRP: pl.read_ipc(SAMPLE / f"{XRP}-1h-futures.feather")}
    notebook = run_backtest(frames, "rsi", {"rsi_period": 6, "oversold_threshold": 40, "overbought_threshold": 60},
                            market="futures", leverage=3, direction="both",
                            funding={XRP: pl.read_ipc(SAMPLE / f"{XRP}-8h-funding_rate.feather")},
                            mark={XRP: pl.read_ipc(SAMPLE / f"{XRP}-1h-mark.feather")}).row(0, named=True)
    for name in ("final_value", "funding_paid", "num_trades", "max_margin_ratio", "bars_without_mark", "sharpe"):
        assert futures[name] == pytest.approx(notebook[name], rel=1e-12), name
    # --all on futures runs the perpetuals only, on spot the spot symbols only.
    every_future = json.loads(cli(env, "backtest", "rsi", "--all", "--market", "futures", "--json").stdout)["results"]
    every_spot = json.loads(cli(env, "backtest", "rsi", "--all", "--json").stdout)["results"]
    assert [r["symbol"] for r in every_future] == [f"{XRP}:futures"]
    assert [r["symbol"] for r in every_spot] == [XRP]
    # A leverage x direction sweep: each set is its own backtest, and `results show` names both axes.
    sweep = json.loads(cli(env, "sweep", "rsi", "--market", "futures", "--all", "-g", "leverage=1,3", "-g",
                           "direction=long,short,both", "-g", "rsi_period=6", "-g", "oversold_threshold=40", "-g",
                           "overbought_threshold=60", "--top", "6", "--json").stdout)
    by_set = {(r["leverage"], r["direction"]): r for r in sweep["best"]}
    assert len(by_set) == 6
    assert by_set[(3.0, "both")]["final_value"] == pytest.approx(futures["final_value"], rel=1e-12)
    shown = cli(env, "results", "show", sweep["run_id"], "--n", "6").stdout
    assert "direction = both, long, short; leverage = 1, 3" in " ".join(shown.split())
    assert shown.count(f"{XRP}:futures") == 6

    # A futures portfolio from the lake (one slot, all in) is the backtest's account, the notebook's too,
    # and its row says which market it traded.
    account = json.loads(cli(env, "portfolio", "rsi", *RSI, "--market", "futures", "--all", "--leverage", "3",
                             "--direction", "both", "--max-open", "1", "--stake", "1", "--json").stdout)
    (row,) = account["accounts"]
    assert (row["market"], row["leverage"], row["direction"], row["margin"], row["symbols"]) == (
        "futures", 3.0, "both", "isolated", [f"{XRP}:futures"])
    for name in ("final_value", "funding_paid", "num_trades", "max_margin_ratio", "bars_without_mark"):
        assert row[name] == pytest.approx(futures[name], rel=1e-12), name
    assert {t["side"] for t in account["best"]["round_trips"]} == {"long", "short"}
    notebook_account = run_portfolio(frames, "rsi", {"rsi_period": 6, "oversold_threshold": 40,
                                                     "overbought_threshold": 60}, max_open=1, stake=1,
                                     market="futures", leverage=3, direction="both",
                                     funding={XRP: pl.read_ipc(SAMPLE / f"{XRP}-8h-funding_rate.feather")},
                                     mark={XRP: pl.read_ipc(SAMPLE / f"{XRP}-1h-mark.feather")})
    assert notebook_account.accounts["final_value"][0] == pytest.approx(row["final_value"], rel=1e-12)
    stored = duckdb.sql(f"SELECT market, leverage, direction, funding_paid FROM read_parquet("
                        f"'{env['CRYPTOBT_RESULTS_ROOT']}/**/*.parquet', hive_partitioning = true, union_by_name = true)"
                        f" WHERE run_id = '{account['run_id']}'").fetchall()
    assert stored == [("futures", 3.0, "both", pytest.approx(row["funding_paid"], rel=1e-12))]
    # A leverage the tiers refuse at the account's size is reported, by the backtest and the portfolio alike.
    for command in ("backtest", "portfolio"):
        levered = cli(env, command, "rsi", "--market", "futures", "--all", "--leverage", "50")
        assert f"--leverage 50: {XRP}:futures's tiers" in " ".join(levered.stderr.split()), command


def test_a_new_funding_rate_alone_makes_a_new_snapshot_and_version_of_its_perpetual(env):  # noqa: F811
    _import_all(env)
    cli(env, "export", "--no-prefect")
    before = _backtest(env, "--market", "futures", "-s", XRP, "--direction", "short")
    assert "unchanged" in cli(env, "export", "--no-prefect").stdout
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        conn.execute("UPDATE crypto_funding_rates SET rate = rate * 10 WHERE datetime < '2021-11-20'")
    exported = cli(env, "export", "--no-prefect").stdout
    assert "new snapshot" in exported and "1 symbols changed" in exported
    after = _backtest(env, "--market", "futures", "-s", XRP, "--direction", "short")
    spot = _backtest(env, "-s", XRP)
    assert after["data_version"] != before["data_version"] and after["snapshot_id"] != before["snapshot_id"]
    # Shorts receive the (positive) rates: ten times the early ones, more received.
    assert after["funding_paid"] < before["funding_paid"] < 0
    assert spot["snapshot_id"] == after["snapshot_id"]


@pytest.mark.parametrize(("args", "message"), [
    (("--kind", "funding"), "--kind funding is a perpetual's series: add --market futures"),
    (("--market", "perp"), "--market 'perp' is not allowed; use one of: spot, futures"),
    (("--market", "futures", "--kind", "candles"), "--kind 'candles' is not allowed; use one of: ohlcv, funding, mark"),
])
def test_bad_import_options_are_one_line(env, args, message):  # noqa: F811
    done = cli(env, "db", "import", str(SAMPLE / f"{XRP}-8h-funding_rate.feather"), *args, check=False)
    assert done.returncode != 0 and message in done.stderr and done.stderr.count("\n") <= 2


def test_a_funding_file_with_a_duplicate_time_or_a_nan_rate_is_refused_before_writing(env, tmp_path):  # noqa: F811
    funding = pl.read_ipc(SAMPLE / f"{XRP}-8h-funding_rate.feather")
    twice = tmp_path / f"{XRP}-dup.feather"
    pl.concat([funding, funding.slice(5, 1)]).write_ipc(twice)
    nan = tmp_path / f"{XRP}-nan.csv"
    funding.select("date", "open").with_columns(pl.when(pl.int_range(pl.len()) == 7).then(float("nan"))
                                                .otherwise(pl.col("open")).alias("open")).write_csv(nan)
    for path, message in ((twice, "funding time 2021-11-19 16:00:00.005000+00:00 appears 2 times"),
                          (nan, "is nan, not a finite number")):
        done = cli(env, "db", "import", str(path), "--market", "futures", "--kind", "funding", check=False)
        assert done.returncode != 0 and message in done.stderr, done.stderr
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM crypto_funding_rates").fetchone()[0] == 0


def test_a_perpetual_without_funding_or_mark_series_is_run_and_the_run_says_so(env):  # noqa: F811
    """SPEC 4.3: "Without a funding series there is no funding, and the run says so" (and without a mark series
    the price bars stand in, counted): the backtest and the portfolio warn, naming the perpetual."""
    cli(env, "db", "import", str(SAMPLE / f"{XRP}-1h-futures.feather"), "--market", "futures")
    cli(env, "export", "--no-prefect")
    for command in ("backtest", "portfolio"):
        said = " ".join(cli(env, command, "rsi", "--market", "futures", "--all").stderr.split())
        assert "1 perpetual(s) have no funding series in snapshot" in said and "its positions pay no funding" in said
        assert f"({XRP}:futures): funding and liquidation use its price bars (bars_without_mark)" in said, command
