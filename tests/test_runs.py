"""Runs end to end: cache (real Redis), results table, CLI output, streaming, pictures, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import duckdb
import psycopg
import pytest
import redis
from typer.testing import CliRunner

from pipeline import runs
from pipeline.cli import app
from pipeline.core.config import Settings
from pipeline.engine import options
from pipeline.engine.strategies import get_strategy
from pipeline.lake import snapshots as lake
from pipeline.lake.export import run_export
from pipeline.source import loaders
from pipeline.store.cache import ResultCache


@pytest.fixture(scope="module")
def sample_lake(build_lake) -> Path:
    return build_lake(n_symbols=12, years=0.5)


@pytest.fixture
def settings(sample_lake, tmp_path, redis_url, redis_prefix) -> Settings:
    return replace(Settings(), lake_root=sample_lake, results_root=tmp_path / "results", redis_url=redis_url,
                   cache_prefix=redis_prefix)


@pytest.fixture
def cli_env(monkeypatch, settings):
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(settings.lake_root))
    monkeypatch.setenv("CRYPTOBT_RESULTS_ROOT", str(settings.results_root))
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("CRYPTOBT_CACHE_PREFIX", settings.cache_prefix)
    return settings


def _strip(results):
    return [{k: v for k, v in r.items() if k != "from_cache"} for r in results]


def test_second_identical_run_is_served_entirely_from_cache_and_equals_the_first(settings):
    cache = ResultCache.from_settings(settings)
    config = options.run_config(get_strategy("rsi"), {"rsi_period": 10}, trades=True)
    first = runs.backtest(settings, config, cache=cache)
    second = runs.backtest(settings, config, cache=cache)
    assert first.cache_misses == 12 and first.cache_hits == 0
    assert second.cache_hits == 12 and second.cache_misses == 0 and second.bar_steps == 0
    assert all(r["from_cache"] for r in second.results)
    assert _strip(first.results) == _strip(second.results)
    stats = cache.stats()
    assert stats["hits"] == 12 and stats["misses"] == 12


def test_a_run_served_from_the_cache_makes_one_round_trip_to_redis(settings, monkeypatch):
    """The hit counters ride in the MGET's round trip: a single hit made two (MGET, then a pipeline of the
    counters), 0.2 of its 0.6 ms. A run that computes counts its misses in a second one, beside the put."""
    cache = ResultCache.from_settings(settings)
    config = options.run_config(get_strategy("rsi"), {"rsi_period": 9}, trades=True)
    symbol = next(iter(lake.current_snapshot(settings.lake_root).symbols))
    runs.backtest(settings, config, [symbol], cache=cache)
    sent: list[bytes] = []
    send = redis.connection.AbstractConnection.send_packed_command
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command",
                        lambda self, command, *a, **k: (sent.append(command), send(self, command, *a, **k))[1])

    served = runs.backtest(settings, config, [symbol], cache=cache, write_results=False)

    assert served.cache_hits == 1 and served.cache_misses == 0
    assert len(sent) == 1
    monkeypatch.undo()
    assert (cache.stats()["hits"], cache.stats()["misses"]) == (1, 1)
    # A record cached without trades is sound: a run asking for trades recomputes it, counted as a miss.
    runs.backtest(settings, options.run_config(get_strategy("rsi"), {"rsi_period": 8}), [symbol], cache=cache)
    again = runs.backtest(settings, options.run_config(get_strategy("rsi"), {"rsi_period": 8}, trades=True),
                          [symbol], cache=cache, write_results=False)
    assert again.cache_misses == 1 and again.results[0]["trades"] is not None
    assert (cache.stats()["hits"], cache.stats()["misses"]) == (1, 3)


def test_new_export_that_changes_one_symbol_recomputes_exactly_that_symbol(database_url, tmp_path, redis_url,
                                                                           redis_prefix):
    loaders.seed_database(database_url, n_symbols=5, years=0.3, seed=2)
    settings = replace(Settings(), database_url=database_url, lake_root=tmp_path / "lake",
                       results_root=tmp_path / "results", redis_url=redis_url, cache_prefix=redis_prefix)
    run_export(settings)
    cache = ResultCache.from_settings(settings)
    config = options.run_config(get_strategy("macd"), {})
    runs.backtest(settings, config, cache=cache)
    with psycopg.connect(database_url) as conn:
        symbol = conn.execute("SELECT symbol FROM cryptocurrencies ORDER BY id LIMIT 1").fetchone()[0]
        conn.execute("UPDATE crypto_prices SET close_price = (high_price + low_price) / 2 WHERE crypto_id ="
                     " (SELECT id FROM cryptocurrencies WHERE symbol = %s) AND interval_type = '1h'"
                     " AND datetime = (SELECT max(datetime) FROM crypto_prices)", (symbol,))
    assert run_export(settings).changed_symbols == [symbol]
    again = runs.backtest(settings, config, cache=cache)
    assert again.cache_misses == 1 and again.cache_hits == 4
    assert [r["symbol"] for r in again.results if not r["from_cache"]] == [symbol]


def test_invalidate_symbol_forces_only_that_symbol_to_be_recomputed(settings):
    cache = ResultCache.from_settings(settings)
    config = options.run_config(get_strategy("bollinger"), {})
    first = runs.backtest(settings, config, cache=cache)
    target = first.results[0]["symbol"]
    assert cache.invalidate_symbol(target) == 1
    again = runs.backtest(settings, config, cache=cache)
    assert [r["symbol"] for r in again.results if not r["from_cache"]] == [target]
    cache.clear()
    assert runs.backtest(settings, config, cache=cache).cache_hits == 0


def test_run_completes_uncached_with_one_warning_when_redis_is_down(settings, cli_env, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    result = CliRunner().invoke(app, ["backtest", "rsi", "--json"])
    assert result.exit_code == 0, result.output
    assert result.output.count("warning:") == 1
    payload = json.loads(result.output[result.output.index("{"):])["results"]
    assert len(payload) == 12


@pytest.mark.parametrize("command", [["backtest", "rsi"], ["sweep", "rsi", "-g", "rsi_period=10,14"]])
def test_no_cache_neither_reads_nor_writes_redis(cli_env, redis_client, command):
    for _ in range(2):
        result = CliRunner().invoke(app, [*command, "--no-cache", "--json"])
        assert result.exit_code == 0, result.output
        answer = json.loads(result.output)
        assert not any(r["from_cache"] for r in answer.get("results", answer.get("best")))
    assert list(redis_client.scan_iter(match=f"{cli_env.cache_prefix}*")) == []
    cached = CliRunner().invoke(app, [*command, "--json"])
    # Sweeps are never cached: their rows carry statistics of the whole grid (PBO, deflated Sharpe).
    written = list(redis_client.scan_iter(match=f"{cli_env.cache_prefix}*"))
    assert cached.exit_code == 0 and bool(written) == (command[0] == "backtest")


def test_results_table_read_by_plain_duckdb_matches_the_json_output(cli_env):
    result = CliRunner().invoke(app, ["backtest", "ma_crossover", "-p", "fast_period=5", "-p", "slow_period=20",
                                      "--json"])
    assert result.exit_code == 0, result.output
    printed = {r["symbol"]: r for r in json.loads(result.output)["results"]}
    rows = duckdb.sql(
        f"SELECT symbol, final_value, num_trades, fast_period, slow_period, params_json, data_version FROM "
        f"read_parquet('{cli_env.results_root}/**/*.parquet', hive_partitioning = true)"
        " WHERE strategy = 'ma_crossover'"
    ).fetchall()
    assert len(rows) == len(printed) == 12
    for symbol, final_value, trades, fast, slow, params, version in rows:
        assert final_value == pytest.approx(printed[symbol]["final_value"], rel=1e-12)
        assert trades == printed[symbol]["num_trades"]
        assert (fast, slow) == (5, 20)
        assert json.loads(params) == {"fast_period": 5, "slow_period": 20}
        assert version == printed[symbol]["data_version"]


def test_stream_prints_one_json_line_per_symbol(cli_env):
    result = CliRunner().invoke(app, ["backtest", "rsi", "--stream"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert sorted(r["symbol"] for r in parsed) == sorted(lake.current_snapshot(cli_env.lake_root).symbols)


def test_trades_are_listed_with_spec_fields_and_follow_the_state_machine(cli_env):
    result = CliRunner().invoke(app, ["backtest", "rsi", "--trades", "--json", "--fill", "next_open"])
    assert result.exit_code == 0, result.output
    for r in json.loads(result.output)["results"]:
        actions = [t["action"] for t in r["trades"]]
        assert actions[::2] == ["buy"] * len(actions[::2]) and actions[1::2] == ["sell"] * len(actions[1::2])
        assert r["num_trades"] == actions.count("buy") and r["closed_trades"] == actions.count("sell")
        for t in r["trades"]:
            assert set(t) == {"time", "action", "price", "units", "value", "fee", "indicator"}


def test_plot_html_and_png_contain_the_expected_series(cli_env, tmp_path):
    html = tmp_path / "rsi.html"
    png = tmp_path / "rsi.png"
    for path in (html, png):
        result = CliRunner().invoke(app, ["sweep", "rsi", "-g", "rsi_period=7,14", "-g", "oversold_threshold=25,30",
                                          "--plot", str(path)])
        assert result.exit_code == 0, result.output
    text = html.read_text()
    assert "buy & hold" in text and "strategy" in text and "Leaderboard" in text
    assert "Sweep: mean total return % by" in text and '"type":"heatmap"' in text
    assert "cdn.plot.ly" not in text.split("<script")[1][:200]  # plotly.js inlined: opens offline
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib import image

    pixels = image.imread(png)
    assert pixels.shape[0] > 800 and pixels.std() > 0.05  # drawn, not blank


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backtest", "nope"], "unknown strategy 'nope'"),
        (["backtest", "rsi", "-p", "rsi_period=1"], "rsi_period"),
        (["backtest", "rsi", "-p", "bogus=3"], "bogus"),
        (["backtest", "ma_crossover", "-p", "fast_period=30", "-p", "slow_period=10"], "fast_period"),
        (["backtest", "rsi", "--fee", "-1"], "--fee"),
        (["backtest", "rsi", "--fill", "open"], "--fill 'open'"),
        (["backtest", "rsi", "--timerange", "2024"], "--timerange"),
        (["backtest", "rsi", "--timerange", "20240301-20240101"], "start is after end"),
        (["backtest", "rsi", "--symbol", "x'); DROP TABLE crypto_prices;--"], "unknown symbol"),
        (["backtest", "rsi", "--interval", "7m"], "--interval '7m'"),
        (["sweep", "rsi", "-g", "rsi_period=a:b"], "rsi_period"),
        # Issue 12: each of these ran, or wrote results, before it was refused.
        (["backtest", "rsi", "--timerange", "20300101-"], "--timerange has no bars"),
        (["sweep", "rsi", "-g", "rsi_period=7,14", "--timerange", "-19990101"], "--timerange has no bars"),
        (["backtest", "rsi", "--plot", "out.svg"], "use a .html or .png file name"),
        (["sweep", "rsi", "-g", "rsi_period=7,14", "--plot", "out.svg"], "use a .html or .png file name"),
        (["backtest", "rsi", "--top", "-3"], "--top -3 is out of range"),
        (["backtest", "rsi", "--top", "0"], "--top 0 is out of range"),
        (["sweep", "rsi", "-g", "rsi_period=7,14", "--top", "0"], "--top 0 is out of range"),
        (["results", "top", "--n", "0"], "--n 0"),
    ],
)
def test_bad_input_is_one_line_error_naming_it_with_nonzero_exit(cli_env, args, message):
    before = sorted(p.name for p in Path(cli_env.results_root).rglob("*.parquet")) if Path(
        cli_env.results_root).exists() else []
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output
    after = sorted(p.name for p in Path(cli_env.results_root).rglob("*.parquet")) if Path(
        cli_env.results_root).exists() else []
    assert after == before, "nothing is written on bad input"


def test_symbol_with_sql_injection_cannot_touch_postgres(database_url, tmp_path):
    evil = "x'); DROP TABLE crypto_prices;--"
    csv = tmp_path / "evil.csv"
    csv.write_text("Date,Open,High,Low,Close,Volume\n2024-01-01 00:00:00,1,2,0.5,1.5,10\n")
    from pipeline.core.errors import InputError

    with pytest.raises(InputError, match="is not allowed"):
        loaders.import_files(database_url, [csv], symbol=evil)
    with psycopg.connect(database_url) as conn:
        # Parameterised all the way: registering the name stores it verbatim.
        from pipeline.source import postgres as source

        ids = source.register_symbols(conn, [evil])
        assert list(ids) == [evil]
        assert conn.execute("SELECT count(*) FROM crypto_prices").fetchone()[0] == 0


@pytest.mark.slow
def test_demo_runs_end_to_end_without_services(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path / "d"), "--symbols", "8", "--years", "0.5"])
    assert result.exit_code == 0, result.output
    assert "RSI(14, 30/70) leaderboard" in result.output and "read_parquet(" in result.output
    assert (tmp_path / "d" / "plots" / "rsi.html").stat().st_size > 1_000_000
    count = duckdb.sql(f"SELECT count(DISTINCT strategy) FROM read_parquet('{tmp_path}/d/results/**/*.parquet',"
                       " hive_partitioning = true)").fetchall()[0][0]
    assert count == 5


@pytest.mark.slow
def test_concurrent_backtest_processes_give_identical_results(cli_env):
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(cli_env.lake_root),
           "CRYPTOBT_RESULTS_ROOT": str(cli_env.results_root), "REDIS_URL": cli_env.redis_url,
           "CRYPTOBT_CACHE_PREFIX": cli_env.cache_prefix}
    # Ten processes, five per core of a 2-core CI machine, all racing for the same cache keys and
    # results folder: twenty made the same race with twice the cold starts.
    processes = [subprocess.Popen([sys.executable, "-m", "pipeline", "backtest", "rsi", "--all", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(10)]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()
        outputs.append(_strip(json.loads(out)["results"]))
    assert all(o == outputs[0] for o in outputs)
    rows = duckdb.sql(f"SELECT count(*), count(DISTINCT run_id) FROM read_parquet("
                      f"'{cli_env.results_root}/**/*.parquet', hive_partitioning = true)").fetchall()[0]
    assert rows == (10 * 12, 10)


def test_results_cache_and_stats_commands_report_what_the_runs_did(cli_env):
    runner = CliRunner()
    assert runner.invoke(app, ["backtest", "rsi"]).exit_code == 0
    assert runner.invoke(app, ["backtest", "rsi"]).exit_code == 0  # served from cache
    top = json.loads(runner.invoke(app, ["results", "top", "--strategy", "rsi", "--n", "3", "--json"]).output)
    assert len(top) == 3 and all(r["strategy"] == "rsi" for r in top)
    rows = json.loads(runner.invoke(app, ["results", "sql", "SELECT count(*) AS n, count(DISTINCT run_id) AS runs"
                                          " FROM results", "--json"]).output)
    assert rows == [{"n": 24, "runs": 2}]
    stats = json.loads(runner.invoke(app, ["stats", "--json"]).output)
    assert stats["runs"] == 2 and stats["hit_rate"] == pytest.approx(0.5)
    cache = json.loads(runner.invoke(app, ["cache", "stats", "--json"]).output)
    assert cache["keys"] == 12 and cache["hits"] == 12 and cache["misses"] == 12
    symbol = top[0]["symbol"]
    out = runner.invoke(app, ["cache", "invalidate", "--symbol", symbol]).output
    assert f"deleted 1 key(s) of {symbol}" in out
    assert runner.invoke(app, ["cache", "clear"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["cache", "stats", "--json"]).output)["keys"] == 0
    bad = runner.invoke(app, ["results", "sql", "SELECT nope FROM results"])
    assert bad.exit_code == 1 and "Traceback" not in bad.output


def test_cached_row_carries_the_snapshot_it_was_read_from_and_the_one_it_was_computed_on(
        database_url, tmp_path, redis_url, redis_prefix):
    """Lineage: a result served from cache after a new export names the snapshot the run read."""
    loaders.seed_database(database_url, n_symbols=3, years=0.2, seed=4)
    settings = replace(Settings(), database_url=database_url, lake_root=tmp_path / "lake",
                       results_root=tmp_path / "results", redis_url=redis_url, cache_prefix=redis_prefix)
    first_snapshot = run_export(settings).snapshot_id
    cache = ResultCache.from_settings(settings)
    config = options.run_config(get_strategy("rsi"), {})
    first = runs.backtest(settings, config, cache=cache)
    with psycopg.connect(database_url) as conn:  # a new snapshot that changes one symbol only
        changed = conn.execute("SELECT symbol FROM cryptocurrencies ORDER BY id LIMIT 1").fetchone()[0]
        conn.execute("UPDATE crypto_prices SET volume = volume + 1 WHERE crypto_id ="
                     " (SELECT id FROM cryptocurrencies WHERE symbol = %s) AND interval_type = '1h'"
                     " AND datetime = (SELECT max(datetime) FROM crypto_prices)", (changed,))
    second_snapshot = run_export(settings).snapshot_id
    assert second_snapshot != first_snapshot
    second = runs.backtest(settings, config, cache=cache)
    assert second.cache_hits == 2 and second.snapshot_id == second_snapshot
    assert {r["snapshot_id"] for r in first.results} == {first_snapshot}
    assert {r["computed_snapshot_id"] for r in first.results} == {first_snapshot}
    assert {r["snapshot_id"] for r in second.results} == {second_snapshot}
    assert {r["symbol"]: r["computed_snapshot_id"] for r in second.results} == {
        r["symbol"]: second_snapshot if r["symbol"] == changed else first_snapshot for r in second.results}
    rows = duckdb.sql(
        f"SELECT run_id, snapshot_id, computed_snapshot_id FROM read_parquet("
        f"'{settings.results_root}/**/*.parquet', hive_partitioning = true, union_by_name = true)"
    ).fetchall()
    assert sorted(rows) == sorted([(first.run_id, first_snapshot, first_snapshot)] * 3
                                  + [(second.run_id, second_snapshot, first_snapshot)] * 2
                                  + [(second.run_id, second_snapshot, second_snapshot)])


def test_a_sweeps_chunks_of_symbols_amortise_their_read_and_write_within_the_memory_bound():
    """A 1,000-set sweep over 211 symbols of 5 years hourly ran in chunks of 4 symbols (53 reads and writes,
    ~1.4 s of a 12.8 s sweep): a chunk now holds at least SWEEP_PART_BYTES of work, two symbols per thread,
    and never more than SWEEP_CHUNK_BYTES (a 100,000-set sweep's chunk stays a few symbols)."""
    from types import SimpleNamespace

    from pipeline.engine import batch as engine
    from pipeline.runs import plan

    names = [f"SYM{k}" for k in range(211)]
    snapshot = SimpleNamespace(symbols={name: {"1h": {"bars": 43_800}} for name in names})
    for n_sets in (1_000, 10_000, 100_000):
        chunk = plan.symbols_per_call(snapshot, names, "1h", n_sets, 16)
        per_symbol = engine.estimate_memory(1, 0, n_sets, 16)
        assert chunk * per_symbol <= plan.SWEEP_CHUNK_BYTES or chunk == 1
        assert chunk >= min(2 * engine.thread_count(), plan.SWEEP_CHUNK_BYTES // per_symbol)
        assert (chunk + 1) * per_symbol > plan.SWEEP_PART_BYTES or chunk == len(names)
    assert plan.symbols_per_call(snapshot, names, "1h", 1_000, 16) >= 30
    assert plan.symbols_per_call(snapshot, names[:3], "1h", 1_000, 16) == 3
