"""Corruption from outside (issues 18 and 20): damaged files, pointer, manifest and state are detected,
named with what to do, never read into numbers, and `export --full` always heals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from pipeline.core.config import Settings
from pipeline.lake import snapshots as lake
from pipeline.lake.export import run_export
from pipeline.source import loaders


@pytest.fixture
def exported(database_url, tmp_path) -> Settings:
    loaders.seed_database(database_url, n_symbols=4, years=1.2, seed=3)
    settings = replace(Settings(), database_url=database_url, lake_root=tmp_path / "lake",
                       results_root=tmp_path / "results", redis_url="")
    run_export(settings)
    return settings


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "CRYPTOBT_LAKE_ROOT": str(settings.lake_root),
           "CRYPTOBT_RESULTS_ROOT": str(settings.results_root), "REDIS_URL": ""}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _one_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr + done.stdout
    return lines[0]


def _a_file(settings: Settings) -> Path:
    return lake.current_snapshot(settings.lake_root).files("1h")[-1]


def _heals(settings: Settings) -> None:
    assert _cli(settings, "export", "--full", "--no-prefect").returncode == 0
    assert _cli(settings, "lake", "verify").returncode == 0
    done = _cli(settings, "backtest", "rsi", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["results"]) == 4


def _truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle: middle + 64] = bytes(64)  # same size: only the checksum can tell
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_truncate, _garble], ids=["truncated", "garbled"])
def test_a_damaged_parquet_file_is_named_never_read_and_full_export_heals(exported, damage):
    victim = _a_file(exported)
    damage(victim)
    message = _one_line(_cli(exported, "backtest", "rsi"))
    assert str(victim) in message and "export --full" in message
    verify = _cli(exported, "lake", "verify")
    assert verify.returncode == 1 and str(victim) in verify.stdout
    assert not list(exported.results_root.rglob("*.parquet")) if exported.results_root.exists() else True
    # An incremental export does not carry the damage into the next snapshot: it names the file and
    # rebuilds from PostgreSQL.
    healed = _cli(exported, "export", "--no-prefect")
    assert healed.returncode == 0 and str(victim) in " ".join(healed.stderr.split()), healed.stderr
    assert _cli(exported, "lake", "verify").returncode == 0
    _heals(exported)


@pytest.mark.slow
def test_a_deleted_current_pointer_is_explained_and_the_next_export_heals(exported):
    (exported.lake_root / "current").unlink()
    message = _one_line(_cli(exported, "backtest", "rsi"))
    assert "current pointer" in message and "cryptobt export" in message
    assert _cli(exported, "export", "--no-prefect").returncode == 0
    _heals(exported)


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["garbage", "swapped_ids"])
def test_a_garbled_or_edited_manifest_is_refused_and_full_export_heals(exported, edit):
    manifest_path = lake.current_snapshot(exported.lake_root).path / lake.MANIFEST
    if edit == "garbage":
        manifest_path.write_text('{"snapshot_id": ')
    else:  # swap two symbols' ids: would silently swap their results
        manifest = json.loads(manifest_path.read_text())
        a, b = sorted(manifest["symbols"])[:2]
        ids = manifest["symbols"]
        ids[a]["symbol_id"], ids[b]["symbol_id"] = ids[b]["symbol_id"], ids[a]["symbol_id"]
        manifest_path.write_text(json.dumps(manifest))
    lake._loaded.clear()
    message = _one_line(_cli(exported, "backtest", "rsi"))
    assert str(manifest_path) in message and "export --full" in message
    assert "export --full" in _one_line(_cli(exported, "export", "--no-prefect"))
    _heals(exported)


@pytest.mark.slow
def test_an_emptied_state_file_refuses_the_incremental_export_instead_of_dropping_symbols(exported):
    state = lake.current_snapshot(exported.lake_root).path / lake.STATE
    state.write_text("{}")
    message = _one_line(_cli(exported, "export", "--no-prefect"))
    assert str(state) in message and "export --full" in message
    _heals(exported)
    assert len(lake.current_snapshot(exported.lake_root).symbols) == 4


def test_stray_files_stay_out_of_the_readme_globs_and_verify_names_them(exported):
    assert _cli(exported, "backtest", "rsi").returncode == 0
    snapshot = lake.current_snapshot(exported.lake_root)
    strays = [exported.lake_root / "stray.parquet", snapshot.path / "stray.parquet",
              snapshot.path / "interval=1h" / "notes.txt", exported.results_root / "stray.parquet",
              exported.results_root / "run_date=2020-01-01" / "stray.txt"]
    for stray in strays:
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"not a parquet file")
    lake_files = duckdb.sql(f"SELECT DISTINCT filename FROM read_parquet('{exported.lake_root}/current/"
                            "interval=*/year=*/*.parquet', filename = true)").fetchall()
    assert lake_files and not any(Path(name).name.startswith("stray") for (name,) in lake_files)
    results = duckdb.sql(f"SELECT count(*) FROM read_parquet('{exported.results_root}/run_date=*/strategy=*/"
                         "*.parquet', hive_partitioning = true, union_by_name = true)").fetchall()
    assert results == [(4,)]
    verify = _cli(exported, "lake", "verify")
    assert verify.returncode == 1 and "stray file" in verify.stdout and str(snapshot.path / "stray.parquet") in \
        verify.stdout
    assert _cli(exported, "backtest", "rsi").returncode == 0  # readers go by the manifest, never a glob


def _rot(path: Path) -> None:
    """Flip one byte of `path` keeping its size and modification time (bit rot under a file system
    that does not notice): the first flip from the middle on that still decodes, into other rows."""
    import pyarrow.parquet as pq

    stat = path.stat()
    good = path.read_bytes()
    rows = pq.read_table(path).to_pylist()
    for at in range(len(good) // 2, len(good)):
        data = bytearray(good)
        data[at] ^= 0x10
        path.write_bytes(bytes(data))
        try:
            rotten = pq.read_table(path).to_pylist()
        except Exception:  # noqa: BLE001 - a flip that breaks decoding is the easy case: look on
            continue
        if rotten != rows:
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
            return
    raise AssertionError(f"no byte of {path} flips into other rows that still decode")


def _lake_and_postgresql_rows(settings: Settings) -> tuple[list[tuple], list[tuple]]:
    import psycopg

    snapshot = lake.current_snapshot(settings.lake_root)
    files = ", ".join(f"'{path}'" for path in snapshot.files("1h"))
    in_lake = duckdb.sql(f"SELECT symbol, ts, open, high, low, close, volume FROM read_parquet([{files}]) "
                         "ORDER BY ALL").fetchall()
    with psycopg.connect(settings.database_url) as conn:
        in_postgresql = conn.execute(
            "SELECT c.symbol, p.datetime, open_price, high_price, low_price, close_price, volume FROM crypto_prices p"
            " JOIN cryptocurrencies c ON c.id = p.crypto_id WHERE interval_type = '1h' ORDER BY 1, 2, 3, 4, 5, 6, 7"
        ).fetchall()
    return in_lake, in_postgresql


@pytest.mark.parametrize("part", ["tail", "base"])
def test_bit_rot_keeping_size_and_mtime_is_never_carried_into_the_next_snapshot(exported, part):
    """Issue 25 item 2: a flipped byte in a data file that keeps its size and mtime passes a read's stat.
    The next incremental export reads the tail (and would rewrite the rot under a fresh checksum)
    and links the base (the rot would ride along by hard link): it checks the sha256 of every file it
    builds on, names the rotten one and re-reads the rows from PostgreSQL, the source of truth."""
    import psycopg

    snapshot = lake.current_snapshot(exported.lake_root)
    newest = max(snapshot.manifest["files"]["1h"])
    entry = snapshot.manifest["files"]["1h"][newest]
    victim = snapshot.path / (entry["tail"] if part == "tail" else entry)["path"]
    _rot(victim)
    with psycopg.connect(exported.database_url) as conn:
        conn.execute("INSERT INTO crypto_prices (crypto_id, interval_type, datetime, open_price, high_price, low_price,"
                     " close_price, volume) SELECT crypto_id, '1h', datetime + interval '1 hour', close_price,"
                     " close_price, close_price, close_price, 1 FROM crypto_prices WHERE interval_type = '1h'"
                     " ORDER BY datetime DESC LIMIT 1")
    done = _cli(exported, "export", "--no-prefect")
    assert done.returncode == 0, done.stderr
    new = lake.current_snapshot(exported.lake_root)
    assert new.id != snapshot.id
    verify = _cli(exported, "lake", "verify")
    assert verify.returncode == 0, verify.stdout
    in_lake, in_postgresql = _lake_and_postgresql_rows(exported)
    assert [row for row in in_lake if row not in in_postgresql] == []  # no rotten row was carried along
    assert in_lake == in_postgresql
    assert str(victim) in " ".join(done.stderr.split()), done.stderr  # named (the console may wrap it)
    assert all(os.stat(path).st_ino != victim.stat().st_ino for path in new.files("1h"))


def test_export_full_heals_bit_rot_though_postgresql_did_not_change(exported):
    """`export --full`, the documented way out, must not keep a snapshot whose file rotted because the
    rows it reads hash like the ones the rotten snapshot recorded."""
    snapshot = lake.current_snapshot(exported.lake_root)
    victim = _a_file(exported)
    _rot(victim)
    done = _cli(exported, "export", "--full", "--no-prefect")
    assert done.returncode == 0, done.stderr
    verify = _cli(exported, "lake", "verify")
    assert verify.returncode == 0, verify.stdout
    assert lake.current_snapshot(exported.lake_root).id != snapshot.id
    assert str(victim) in " ".join(done.stderr.split()), done.stderr
