"""Races (issue 18): a vacuum while a run reads the snapshot it removes; exports while backtests read."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import runs
from pipeline.core.config import Settings
from pipeline.engine import options
from pipeline.engine.strategies import get_strategy
from pipeline.lake import retention
from pipeline.lake.export import run_export
from pipeline.source import loaders


@pytest.fixture
def exported(database_url, tmp_path) -> Settings:
    loaders.seed_database(database_url, n_symbols=6, years=0.3, seed=9)
    settings = replace(Settings(), database_url=database_url, lake_root=tmp_path / "lake",
                       results_root=tmp_path / "results", redis_url="", snapshot_keep=50, snapshot_keep_hours=1e6)
    run_export(settings)
    return settings


def _new_snapshot(settings: Settings, k: int) -> str:
    import psycopg

    with psycopg.connect(settings.database_url) as conn:
        conn.execute("UPDATE crypto_prices SET volume = volume + %s WHERE interval_type = '1h'"
                     " AND datetime = (SELECT max(datetime) FROM crypto_prices)", (k,))
    return run_export(settings).snapshot_id


def _strip(results):
    return [{k: v for k, v in r.items() if k not in ("from_cache",)} for r in results]


def test_vacuum_leaves_the_snapshot_a_running_backtest_reads_and_removes_it_after(exported):
    config = options.run_config(get_strategy("macd"), [{"fast_period": f} for f in (5, 8, 12)])
    reference = runs.backtest(exported, config, write_results=False)
    started, proceed = threading.Event(), threading.Event()

    def hold(done: int, total: int) -> None:
        started.set()
        assert proceed.wait(60)

    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault(
        "run", runs.backtest(exported, config, on_progress=hold)))
    worker.start()
    assert started.wait(60)
    read = reference.snapshot_id
    newer = _new_snapshot(exported, 1)
    assert newer != read
    removed = retention.vacuum(exported.lake_root, keep=1, keep_hours=0)
    assert read not in removed and (exported.lake_root / "snapshots" / read).is_dir()
    proceed.set()
    worker.join(60)
    assert outcome["run"].snapshot_id == read
    assert _strip(outcome["run"].results) == _strip(reference.results)
    assert retention.vacuum(exported.lake_root, keep=1, keep_hours=0) == [read]


def test_an_export_while_five_backtests_read_changes_none_of_their_numbers(exported, tmp_path):
    import os

    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(exported.lake_root), "REDIS_URL": "",
           "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "race-results")}
    before = runs.backtest(exported, options.run_config(get_strategy("rsi"), {}), write_results=False)
    readers = [subprocess.Popen([sys.executable, "-m", "pipeline", "backtest", "rsi", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    for k in range(3):
        _new_snapshot(exported, 10 + k)
        retention.vacuum(exported.lake_root, keep=1, keep_hours=0)
    import json

    expected = {r["symbol"]: r["final_value"] for r in before.results}
    for child in readers:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        got = json.loads(out)["results"]
        # Each reader saw one whole snapshot: the first one (volume changes move no RSI number).
        assert {r["symbol"]: r["final_value"] for r in got} == expected
        assert len({r["snapshot_id"] for r in got}) == 1


WRITER = """
import sys
from dataclasses import replace
from pathlib import Path
from pathlib import Path
from pipeline import runs
from pipeline.engine import batch as engine
from pipeline.core.config import Settings
settings = replace(Settings(), lake_root=Path(sys.argv[1]), results_root=Path(sys.argv[2]), redis_url=sys.argv[3],
                   cache_prefix=sys.argv[4])
from pipeline.store.cache import ResultCache
from pipeline.engine.strategies import get_strategy
cache = ResultCache.from_settings(settings)
for k in range(int(sys.argv[5])):
    outcome = runs.backtest(settings, options.run_config(get_strategy("rsi"), {"rsi_period": 5 + k % 7}), cache=cache)
    print(outcome.run_id, len(outcome.results), flush=True)
"""


@pytest.mark.slow
def test_twenty_concurrent_writers_and_cache_invalidations_lose_and_duplicate_nothing(tmp_path, redis_url,
                                                                                      redis_prefix, redis_client):
    import duckdb

    from pipeline import demo
    from pipeline.store.cache import ResultCache

    demo.build_sample_lake(tmp_path / "lake", n_symbols=5, years=0.2, sample=None)
    settings = replace(Settings(), lake_root=tmp_path / "lake", results_root=tmp_path / "results",
                       redis_url=redis_url, cache_prefix=redis_prefix)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(settings.lake_root), str(settings.results_root),
                                 redis_url, redis_prefix, "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(20)]
    cache = ResultCache.from_settings(settings)
    invalidations = 0
    while any(w.poll() is None for w in writers):  # bounded: the writers end on their own
        cache.invalidate_symbol(f"SYN00{invalidations % 5}")
        invalidations += 1
    announced = {}
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        announced.update({line.split()[0]: int(line.split()[1]) for line in out.splitlines()})
    assert len(announced) == 40 and invalidations > 0
    rows = dict(duckdb.sql(
        f"SELECT run_id, count(*) FROM read_parquet('{settings.results_root}/run_date=*/strategy=*/*.parquet',"
        " union_by_name = true) GROUP BY run_id").fetchall())
    assert rows == announced  # every run whole, none lost, none twice
    # Whatever the invalidations raced with, a cached record is never another symbol's or another run's number.
    fresh = {(r["symbol"], r["params"]["rsi_period"]): r["final_value"]
             for k in range(7) for r in runs.backtest(settings, options.run_config(get_strategy("rsi"), {"rsi_period": 5 + k}),
                                                      write_results=False).results}
    for k in range(7):
        for r in runs.backtest(settings, options.run_config(get_strategy("rsi"), {"rsi_period": 5 + k}), cache=cache,
                               write_results=False).results:
            assert r["final_value"] == fresh[(r["symbol"], 5 + k)]


def test_threads_checking_one_results_folder_at_once_all_pass(tmp_path):
    # The API checks the results folder from many worker threads of one process: each probe must be
    # its own file (a pid-named probe was deleted by a neighbour, and a request failed "not writable").
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.store import results

    def check(_: int) -> None:
        results.check_writable(tmp_path / "results")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(check, range(2000)))


def test_duckdb_never_prints_a_progress_bar_into_stdout(tmp_path):
    # Under load a lake read passed DuckDB's two-second threshold and its progress bar landed in
    # the middle of a writer's stdout (and so of `--json` output); every connection turns it off.
    # A child process (as the writers were), where DuckDB's default turns the bar on.
    probe = (
        "from pipeline.lake import reader\nfrom pipeline.store import results\n"
        f"for con in (reader._connection(), results.connect({str(tmp_path)!r})):\n"
        "    print(con.execute(\"SELECT current_setting('enable_progress_bar')\").fetchall()[0][0])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
