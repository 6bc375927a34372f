"""Races (issue 18): a vacuum while a run reads the snapshot it removes; exports while backtests read."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace

import pytest

from pipeline import engine, lake, loaders, runs
from pipeline.config import Settings
from pipeline.export import run_export


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
    config = engine.make_config("macd", [{"fast_period": f} for f in (5, 8, 12)])
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
    removed = lake.vacuum(exported.lake_root, keep=1, keep_hours=0)
    assert read not in removed and (exported.lake_root / "snapshots" / read).is_dir()
    proceed.set()
    worker.join(60)
    assert outcome["run"].snapshot_id == read
    assert _strip(outcome["run"].results) == _strip(reference.results)
    assert lake.vacuum(exported.lake_root, keep=1, keep_hours=0) == [read]


def test_an_export_while_five_backtests_read_changes_none_of_their_numbers(exported, tmp_path):
    import os

    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(exported.lake_root), "REDIS_URL": "",
           "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "race-results")}
    before = runs.backtest(exported, engine.make_config("rsi", {}), write_results=False)
    readers = [subprocess.Popen([sys.executable, "-m", "pipeline", "backtest", "rsi", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    for k in range(3):
        _new_snapshot(exported, 10 + k)
        lake.vacuum(exported.lake_root, keep=1, keep_hours=0)
    import json

    expected = {r["symbol"]: r["final_value"] for r in before.results}
    for child in readers:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        got = json.loads(out)
        # Each reader saw one whole snapshot: the first one (volume changes move no RSI number).
        assert {r["symbol"]: r["final_value"] for r in got} == expected
        assert len({r["snapshot_id"] for r in got}) == 1
