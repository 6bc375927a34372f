"""Kills at random moments (issue 18): exports, results appends and vacuums SIGKILLed at random delays.

Chosen kill points are tested in test_lake.py; here the delay is random (seeded, so a failure
reproduces), the processes and the PostgreSQL server are real, and every loop is bounded in
count and time. After each kill the current snapshot must read completely with the README's
plain-DuckDB glob, no temporary file may be visible to it, and the results table may hold
whole runs only. Each test reports its counts on stdout (`pytest -s` shows them).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import duckdb
import psycopg
import pytest

from pipeline.core.config import Settings
from pipeline.lake import retention
from pipeline.lake import snapshots as lake
from pipeline.lake.export import run_export
from pipeline.source import loaders

GLOB = "current/interval=*/*/*.parquet"
RESULTS_GLOB = "**/*.parquet"

EXPORT_CHILD = textwrap.dedent("""
    import sys
    from dataclasses import replace
    from pathlib import Path
    from pipeline.core.config import Settings
    from pipeline.lake.export import run_export
    settings = replace(Settings(), database_url=sys.argv[1], lake_root=Path(sys.argv[2]),
                       snapshot_keep=3, snapshot_keep_hours=0)
    run_export(settings, full=sys.argv[3] == "full")
""")

# Says when it starts removing, so the kill lands inside the few milliseconds a vacuum takes.
VACUUM_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipeline.lake import retention
    print("go", flush=True)
    retention.vacuum(Path(sys.argv[1]), keep=1, keep_hours=0)
""")


@pytest.fixture(scope="module")
def market(pg_admin_url, tmp_path_factory):
    """A database big enough that an export takes a few seconds in a fresh process."""
    import uuid

    name = f"cryptobt_test_chaos_{uuid.uuid4().hex[:8]}"
    url = pg_admin_url.rsplit("/", 1)[0] + "/" + name
    from pipeline.source import postgres as source

    source.apply_schema(url)
    loaders.seed_database(url, n_symbols=24, years=1.0, seed=5)
    yield url
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _touch_every_symbol(url: str, k: int) -> None:
    """A correction of one bar per symbol, so the next export has work to do."""
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE crypto_prices SET volume = volume + %s WHERE interval_type = '1h'"
                     " AND datetime = (SELECT max(datetime) FROM crypto_prices)", (k,))


def _check_current_reads_completely(lake_root: Path) -> int:
    """The README's glob reads every bar the current manifest promises, and no temporary file."""
    snapshot = lake.current_snapshot(lake_root)
    assert snapshot is not None
    files = [str(p) for p in lake_root.glob(GLOB)]
    assert all(".staging" not in f and not Path(f).name.startswith(".") for f in files), files
    counts = dict(duckdb.sql(
        f"SELECT interval, count(*) FROM read_parquet('{lake_root}/{GLOB}', hive_partitioning = true)"  # noqa: S608
        " GROUP BY interval").fetchall())
    promised = Counter()
    for meta in snapshot.symbols.values():
        for interval in ("1h", "1d"):
            if meta.get(interval):
                promised[interval] += meta[interval]["bars"]
    assert counts == dict(promised)
    return sum(counts.values())


def _kill_at_random(command: list[str], delay: float, env: dict | None = None) -> bool:
    """Start `command`, SIGKILL it after `delay` seconds; True if it was still running then."""
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        child.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        return True


def _timed(command: list[str], env: dict | None = None) -> float:
    """How long `command` takes warm, at its quickest of three runs: the first run may compile Numba's
    kernels into the cache, and on a busy machine one slow run would put most kills after the end."""
    spans = []
    for _ in range(4):
        started = time.monotonic()
        subprocess.run(command, check=True, capture_output=True, env=env, timeout=300)
        spans.append(time.monotonic() - started)
    return min(spans[1:])


@pytest.mark.slow
def test_thirty_random_kills_during_exports_never_leave_a_torn_snapshot(market, tmp_path):
    rng = random.Random(18)
    settings = replace(Settings(), database_url=market, lake_root=tmp_path / "lake", snapshot_keep=3,
                       snapshot_keep_hours=0)
    run_export(settings, full=True)
    command = [sys.executable, "-c", EXPORT_CHILD, market, str(settings.lake_root)]
    _touch_every_symbol(market, 1)
    span = _timed([*command, "full"])  # how long a whole export takes in a fresh process
    killed = finished = 0
    deadline = time.monotonic() + 600
    for k in range(90):  # until 30 kills have landed mid-export (a load spike can let a run finish first)
        if killed == 30:
            break
        assert time.monotonic() < deadline, f"kill loop ran out of time after {killed} kills"
        _touch_every_symbol(market, k + 2)
        if _kill_at_random([*command, rng.choice(["full", "incremental"])], rng.uniform(0.0, span)):
            killed += 1
        else:
            finished += 1
        _check_current_reads_completely(settings.lake_root)
    print(f"\nexport: {killed} SIGKILLs landed mid-export; {finished} exports finished before their kill")
    assert killed == 30
    run_export(settings)
    reference = replace(settings, lake_root=tmp_path / "reference")
    run_export(reference, full=True)
    assert lake.current_snapshot(settings.lake_root).data_versions() == \
        lake.current_snapshot(reference.lake_root).data_versions()
    assert _check_current_reads_completely(settings.lake_root) == _check_current_reads_completely(
        reference.lake_root)


@pytest.mark.slow
def test_thirty_random_kills_during_results_appends_leave_whole_runs_only(market, tmp_path):
    rng = random.Random(81)
    settings = replace(Settings(), database_url=market, lake_root=tmp_path / "lake",
                       results_root=tmp_path / "results")
    run_export(settings, full=True)
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(settings.lake_root),
           "CRYPTOBT_RESULTS_ROOT": str(settings.results_root), "REDIS_URL": ""}
    # 24 symbols x 12 parameter sets = 288 rows a run.
    command = [sys.executable, "-m", "pipeline", "sweep", "rsi", "-g", "rsi_period=7:18:1", "--json"]
    span = _timed(command, env)
    killed = finished = 0
    deadline = time.monotonic() + 600
    for _ in range(90):  # until 30 kills have landed mid-run
        if killed == 30:
            break
        assert time.monotonic() < deadline, f"kill loop ran out of time after {killed} kills"
        if _kill_at_random(command, rng.uniform(span * 0.3, span), env):
            killed += 1
        else:
            finished += 1
    rows = duckdb.sql(
        f"SELECT run_id, count(*), count(DISTINCT (symbol, params_json)) FROM read_parquet("  # noqa: S608
        f"'{settings.results_root}/{RESULTS_GLOB}', hive_partitioning = true, union_by_name = true) GROUP BY run_id"
    ).fetchall()
    published = len(rows) - 4 - finished  # less the four timing runs and the runs that finished first
    print(f"\nresults: {killed} SIGKILLs landed mid-run ({published} after publishing its results); "
          f"{finished} runs finished before their kill")
    assert killed == 30
    for run_id, n, distinct in rows:
        assert n == distinct == 288, f"run {run_id} holds {n} rows ({distinct} distinct): not a whole run"
    visible = list(settings.results_root.rglob("*.parquet"))
    assert all(not p.name.startswith(".") for p in visible)


@pytest.mark.slow
def test_ten_random_kills_during_vacuum_keep_the_current_snapshot_whole(market, tmp_path):
    rng = random.Random(10)
    settings = replace(Settings(), database_url=market, lake_root=tmp_path / "lake", snapshot_keep=100,
                       snapshot_keep_hours=1e6)
    killed = 0
    for k in range(10):
        for j in range(3):  # snapshots for the vacuum to remove
            _touch_every_symbol(market, 100 + 3 * k + j)
            run_export(settings)
        before = len(lake.list_snapshots(settings.lake_root))
        child = subprocess.Popen([sys.executable, "-c", VACUUM_CHILD, str(settings.lake_root)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "go"
        time.sleep(rng.uniform(0.0, 0.004))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        removed = before - len(lake.list_snapshots(settings.lake_root))
        killed += child.returncode == -signal.SIGKILL and removed < before - 1
        _check_current_reads_completely(settings.lake_root)
        # Every snapshot still listed is whole: a killed vacuum never leaves one half-deleted.
        for snapshot in lake.list_snapshots(settings.lake_root):
            missing = [str(p) for i in ("1h", "1d") for p in snapshot.files(i) if not p.is_file()]
            assert missing == [], snapshot.id
    print(f"\nvacuum: {killed} of 10 SIGKILLs landed mid-vacuum")
    retention.vacuum(settings.lake_root, keep=1, keep_hours=0)
    _check_current_reads_completely(settings.lake_root)
    current = lake.current_snapshot(settings.lake_root)
    assert [s.id for s in lake.list_snapshots(settings.lake_root)] == [current.id]
    # and the next vacuum removes what a killed one left behind
    assert sorted(p.name for p in (settings.lake_root / "snapshots").iterdir()) == [current.id]
