"""The lake: export semantics (SPEC section 2) and batched reads, against real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import psycopg
import pytest

from pipeline.core.config import Settings
from pipeline.core.errors import LakeBusy, PipelineError
from pipeline.lake import reader, retention
from pipeline.lake import snapshots as lake
from pipeline.lake.export import run_export
from pipeline.source import loaders

GLOB = "current/interval=*/*/*.parquet"


@pytest.fixture
def seeded(database_url, tmp_path) -> Settings:
    loaders.seed_database(database_url, n_symbols=6, years=0.4, seed=5)
    return replace(Settings(), database_url=database_url, lake_root=tmp_path / "lake",
                   results_root=tmp_path / "results", snapshot_keep=2, snapshot_keep_hours=0)


def _lake_rows(lake_root: Path) -> list[tuple]:
    return duckdb.sql(
        f"SELECT symbol, interval, ts, open, high, low, close, volume FROM read_parquet("
        f"'{lake_root}/{GLOB}', hive_partitioning = true) ORDER BY ALL"
    ).fetchall()


def _files_with_mtimes(lake_root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in lake_root.rglob("*.parquet")}


def test_export_twice_changes_nothing_a_reader_can_see(seeded):
    first = run_export(seeded)
    assert first.created and first.rows_read > 0
    before = _files_with_mtimes(seeded.lake_root)
    versions = lake.current_snapshot(seeded.lake_root).data_versions()
    second = run_export(seeded)
    assert not second.created
    assert second.rows_read == 0
    assert second.snapshot_id == first.snapshot_id
    assert _files_with_mtimes(seeded.lake_root) == before
    assert lake.current_snapshot(seeded.lake_root).data_versions() == versions


def test_full_reexport_of_unchanged_data_keeps_every_data_version(seeded):
    run_export(seeded)
    versions = lake.current_snapshot(seeded.lake_root).data_versions()
    rows = _lake_rows(seeded.lake_root)
    again = run_export(seeded, full=True)
    assert again.rows_read > 0 and not again.created
    assert lake.current_snapshot(seeded.lake_root).data_versions() == versions
    assert _lake_rows(seeded.lake_root) == rows


def test_glob_over_current_snapshot_returns_each_bar_once(seeded):
    run_export(seeded)
    dupes = duckdb.sql(
        f"SELECT symbol, interval, ts, count(*) AS n FROM read_parquet('{seeded.lake_root}/{GLOB}',"
        " hive_partitioning = true) GROUP BY ALL HAVING n > 1"
    ).fetchall()
    assert dupes == []
    with psycopg.connect(seeded.database_url) as conn:
        hourly = conn.execute("SELECT count(*) FROM crypto_prices WHERE interval_type = '1h'").fetchone()[0]
    counted = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{seeded.lake_root}/{GLOB}', hive_partitioning = true)"
        " WHERE interval = '1h'"
    ).fetchall()[0][0]
    assert counted == hourly


def test_incremental_export_reads_only_new_and_corrected_rows(seeded):
    run_export(seeded)
    parent = lake.current_snapshot(seeded.lake_root)
    versions = parent.data_versions()
    with psycopg.connect(seeded.database_url) as conn:
        (a_id, a_sym), (b_id, b_sym) = conn.execute(
            "SELECT id, symbol FROM cryptocurrencies ORDER BY id LIMIT 2").fetchall()
        last_a = conn.execute(
            "SELECT max(datetime), (array_agg(close_price ORDER BY datetime DESC))[1] FROM crypto_prices"
            " WHERE crypto_id = %s AND interval_type = '1h'", (a_id,)).fetchone()
        conn.execute(
            "INSERT INTO crypto_prices (crypto_id, interval_type, datetime, open_price, high_price,"
            " low_price, close_price, volume) VALUES (%s, '1h', %s, %s, %s, %s, %s, 10)",
            (a_id, last_a[0] + timedelta(hours=1), last_a[1], last_a[1] * 1.01, last_a[1] * 0.99, last_a[1]),
        )
        old_bar = conn.execute(
            "SELECT datetime, high_price FROM crypto_prices WHERE crypto_id = %s AND interval_type = '1h'"
            " ORDER BY datetime OFFSET 30 LIMIT 1", (b_id,)).fetchone()
        conn.execute(
            "UPDATE crypto_prices SET high_price = high_price * 2 WHERE crypto_id = %s"
            " AND interval_type = '1h' AND datetime = %s", (b_id, old_bar[0]))
    report = run_export(seeded)
    assert report.created
    assert report.rows_read == 2
    assert sorted(report.changed_symbols) == sorted([a_sym, b_sym])
    snapshot = lake.current_snapshot(seeded.lake_root)
    new_versions = snapshot.data_versions()
    for symbol, version in versions.items():
        if symbol in (a_sym, b_sym):
            assert new_versions[symbol] != version
        else:
            assert new_versions[symbol] == version
    day = old_bar[0].replace(hour=0, minute=0, second=0)
    batch = reader.read_prices(seeded.lake_root, [b_sym], "1h", old_bar[0], old_bar[0] + timedelta(hours=1),
                               columns=("high",))
    assert batch.columns["high"][0, 0] == pytest.approx(old_bar[1] * 2)
    daily = reader.read_prices(seeded.lake_root, [b_sym], "1d", day, day + timedelta(days=1), columns=("high",))
    assert daily.columns["high"][0, 0] == pytest.approx(old_bar[1] * 2)
    assert snapshot.symbols[a_sym]["1h"]["last"] == (last_a[0] + timedelta(hours=1)).isoformat()


APPEND_ONE_HOUR = (
    "INSERT INTO crypto_prices (crypto_id, interval_type, datetime, open_price, high_price, low_price, close_price,"
    " volume) SELECT crypto_id, '1h', datetime + interval '1 hour', close_price, close_price, close_price,"
    " close_price, 1 FROM (SELECT DISTINCT ON (crypto_id) * FROM crypto_prices WHERE interval_type = '1h'"
    " ORDER BY crypto_id, datetime DESC) last")


def test_incremental_export_cost_follows_the_rows_changed_not_the_year_file(database_url, tmp_path):
    """One new hour per symbol writes the newest year's tail only (its last day): the same files, about
    the same rows and bytes on a lake whose year file is five times larger, whose base is linked."""
    costs = []
    for scale, years in enumerate((0.15, 0.75)):  # both end in 2025: 55 and 273 days of it
        loaders.seed_database(database_url, n_symbols=6, years=years, seed=5, replace=True)
        settings = replace(Settings(), database_url=database_url, lake_root=tmp_path / f"lake{scale}")
        run_export(settings)
        parent = lake.current_snapshot(settings.lake_root)
        with psycopg.connect(database_url) as conn:
            conn.execute(APPEND_ONE_HOUR)
        report = run_export(settings)
        snapshot = lake.current_snapshot(settings.lake_root)
        assert report.created and report.rows_read == 6
        year = snapshot.manifest["files"]["1h"]["2025"]
        assert "tail" in year and year["tail_from"] <= snapshot.symbols[sorted(snapshot.symbols)[0]]["1h"]["last"]
        assert os.stat(snapshot.path / year["path"]).st_ino == os.stat(parent.path / year["path"]).st_ino
        dupes = duckdb.sql(f"SELECT symbol, interval, ts FROM read_parquet('{settings.lake_root}/{GLOB}', "
                           "hive_partitioning = true) GROUP BY ALL HAVING count(*) > 1").fetchall()
        assert dupes == []
        assert _lake_rows(settings.lake_root) == _lake_rows_of_a_full_export(settings, tmp_path / f"full{scale}")
        costs.append((report.files_written, report.rows_written, report.bytes_written, year["bytes"]))
    (files_small, rows_small, bytes_small, year_small), (files_big, rows_big, bytes_big, year_big) = costs
    assert year_big > 4 * year_small
    assert files_small == files_big == 2  # the 1h and 1d tails
    assert abs(rows_big - rows_small) <= 6 * 25 and rows_big <= 6 * 2 * 25
    assert bytes_big < 2 * bytes_small and bytes_big < year_big / 20


NEXT_HOUR = (
    "INSERT INTO crypto_prices (crypto_id, interval_type, datetime, open_price, high_price, low_price, close_price,"
    " volume) SELECT crypto_id, '1h', datetime + interval '1 hour', close_price, close_price, close_price,"
    " close_price, 1 FROM crypto_prices WHERE crypto_id = %s AND interval_type = '1h' ORDER BY datetime DESC LIMIT 1")


def test_a_writer_that_began_before_an_export_and_commits_after_it_reaches_the_next_export(seeded):
    """Issue 25 item 3: a transaction that had only read when an export took its snapshot (no transaction
    id yet) inserts a bar stamped with its own start and commits after that export: the next
    incremental export must read it, as `export --full` does."""
    run_export(seeded)
    with psycopg.connect(seeded.database_url) as conn:
        (late_id, late_symbol), (other_id, _) = conn.execute(
            "SELECT id, symbol FROM cryptocurrencies ORDER BY id LIMIT 2").fetchall()
    with psycopg.connect(seeded.database_url) as writer:  # BEGIN (implicit); reads only, so far
        writer.execute("SELECT max(datetime) FROM crypto_prices WHERE crypto_id = %s", (late_id,)).fetchone()
        with psycopg.connect(seeded.database_url, autocommit=True) as other:
            other.execute(NEXT_HOUR, (other_id,))
        during = run_export(seeded)  # publishes a snapshot while the writer's transaction is open
        assert during.created and during.rows_read == 1
        writer.execute(NEXT_HOUR, (late_id,))
        writer.commit()
    after = run_export(seeded)
    with psycopg.connect(seeded.database_url) as conn:
        bars, last = conn.execute("SELECT count(*), max(datetime) FROM crypto_prices WHERE crypto_id = %s AND "
                                  "interval_type = '1h'", (late_id,)).fetchone()
    meta = lake.current_snapshot(seeded.lake_root).symbols[late_symbol]["1h"]
    assert (meta["bars"], meta["last"]) == (bars, last.isoformat()), after
    assert after.created and late_symbol in after.changed_symbols
    assert _lake_rows(seeded.lake_root) == _lake_rows_of_a_full_export(seeded, seeded.lake_root.parent / "full")
    again = run_export(seeded)  # idempotent: what the late writer committed is read once more at most
    assert not again.created


def test_an_exporting_role_that_cannot_see_when_other_sessions_began_says_so(seeded):
    """The watermark waits for transactions pg_stat_activity shows; a role without pg_read_all_stats does not
    see when other roles' transactions began, so the export warns instead of silently not waiting."""
    import uuid

    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    role = f"cryptobt_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(seeded.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
    try:
        reader_url = make_conninfo(**{**conninfo_to_dict(seeded.database_url), "user": role})
        as_reader = replace(seeded, database_url=reader_url)
        # (No "no warning while nobody else is connected" check: on a busy shared server some other
        # session of this database, an autovacuum worker say, may be open at that moment; it failed so.)
        run_export(as_reader)
        with psycopg.connect(seeded.database_url) as writer:  # another role's transaction, open
            writer.execute("SELECT 1").fetchone()
            with psycopg.connect(seeded.database_url, autocommit=True) as other:
                other.execute(NEXT_HOUR, (1,))
            warned = run_export(as_reader).warnings
        assert any("session(s) of this database hide when their transactions began" in line
                   and "pg_read_all_stats" in line for line in warned), warned
    finally:
        with psycopg.connect(seeded.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _lake_rows_of_a_full_export(settings: Settings, lake_root: Path) -> list[tuple]:
    run_export(replace(settings, lake_root=lake_root), full=True)
    return _lake_rows(lake_root)


def test_tail_is_compacted_into_the_base_once_it_spans_a_week(seeded):
    run_export(seeded)
    first = lake.current_snapshot(seeded.lake_root)
    cut = first.manifest["files"]["1h"]["2025"]["tail_from"]
    with psycopg.connect(seeded.database_url) as conn:
        for _ in range(8):  # eight days of new hours: past COMPACT_AFTER
            conn.execute(APPEND_ONE_HOUR.replace("interval '1 hour'", "interval '1 day'"))
    run_export(seeded)
    snapshot = lake.current_snapshot(seeded.lake_root)
    entry = snapshot.manifest["files"]["1h"]["2025"]
    assert entry["tail_from"] > cut  # folded into the base, a new tail from the newest day
    assert entry["path"] and os.stat(snapshot.path / entry["path"]).st_ino != \
        os.stat(first.path / first.manifest["files"]["1h"]["2025"]["path"]).st_ino
    assert _lake_rows(seeded.lake_root) == _lake_rows_of_a_full_export(seeded, seeded.lake_root.parent / "full")
    full = lake.current_snapshot(seeded.lake_root.parent / "full")
    assert full.data_versions() == snapshot.data_versions()


def test_daily_lake_bars_of_real_binance_files_match_a_hand_computed_day(database_url, binance_files, tmp_path):
    import pyarrow.feather as feather

    loaders.import_files(database_url, binance_files)
    settings = replace(Settings(), database_url=database_url, lake_root=tmp_path / "lake")
    run_export(settings)
    table = feather.read_table(next(p for p in binance_files if p.name.startswith("ADA_BTC")))
    ts = table["date"].to_numpy().astype("datetime64[us]").astype(np.int64)
    day = datetime(2018, 1, 20, tzinfo=UTC)
    start = int(day.timestamp() * 1e6)
    mask = (ts >= start) & (ts < start + 86_400_000_000)
    hand = (table["open"].to_numpy()[mask][0], table["high"].to_numpy()[mask].max(),
            table["low"].to_numpy()[mask].min(), table["close"].to_numpy()[mask][-1],
            table["volume"].to_numpy()[mask].sum(), len(np.unique(ts[mask] // 3_600_000_000)))
    row = duckdb.sql(
        f"SELECT open, high, low, close, volume, bars FROM read_parquet('{settings.lake_root}/{GLOB}',"
        " hive_partitioning = true) WHERE interval = '1d' AND symbol = 'ADA_BTC'"
        " AND ts = TIMESTAMPTZ '2018-01-20 00:00:00+00'"
    ).fetchall()[0]
    assert row[:4] == hand[:4]
    assert row[4] == pytest.approx(hand[4], rel=1e-12)
    assert row[5] == hand[5]


EXPORT_CHILD = textwrap.dedent("""
    import sys
    from dataclasses import replace
    from pathlib import Path
    from pipeline.core.config import Settings
    from pipeline.lake.export import run_export
    settings = replace(Settings(), database_url=sys.argv[1], lake_root=Path(sys.argv[2]),
                       snapshot_keep=2, snapshot_keep_hours=0)
    run_export(settings, full=sys.argv[3] == "full", fail_at=sys.argv[4] or None)
""")


def _export_in_child(settings: Settings, fail_at: str = "", full: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", EXPORT_CHILD, settings.database_url, str(settings.lake_root),
         "full" if full else "incremental", fail_at],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _change_every_symbol(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE crypto_prices SET volume = volume + 1 WHERE interval_type = '1h'"
                     " AND datetime = (SELECT max(datetime) FROM crypto_prices)")
        conn.execute("UPDATE crypto_prices SET volume = volume + 1 WHERE interval_type = '1h'"
                     " AND (crypto_id, datetime) IN (SELECT crypto_id, min(datetime) FROM crypto_prices"
                     " GROUP BY crypto_id)")


@pytest.mark.slow
@pytest.mark.parametrize("fail_at", ["sigkill-during-read", "after-read", "mid-write", "before-commit"])
def test_export_killed_midway_leaves_previous_snapshot_and_next_export_completes(seeded, tmp_path, fail_at):
    run_export(seeded)
    previous = lake.current_snapshot(seeded.lake_root)
    rows_before = _lake_rows(seeded.lake_root)
    _change_every_symbol(seeded.database_url)
    if fail_at == "sigkill-during-read":
        # Hold the table so the child's read blocks inside PostgreSQL, then SIGKILL it there.
        with psycopg.connect(seeded.database_url) as blocker:
            blocker.execute("LOCK TABLE crypto_prices IN ACCESS EXCLUSIVE MODE")
            child = _export_in_child(seeded)
            deadline = time.monotonic() + 60
            with psycopg.connect(seeded.database_url, autocommit=True) as watcher:
                while time.monotonic() < deadline:
                    waiting = watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()").fetchone()[0]
                    if waiting:
                        break
                    time.sleep(0.05)
            assert waiting, "the export never reached PostgreSQL"
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
    else:
        child = _export_in_child(seeded, fail_at)
        child.wait(timeout=120)
    assert child.returncode != 0, child.stderr.read().decode()
    assert lake.current_snapshot(seeded.lake_root).id == previous.id
    assert _lake_rows(seeded.lake_root) == rows_before
    visible = {str(p) for p in seeded.lake_root.glob(GLOB)}
    assert all(".staging" not in p for p in visible)
    finished = run_export(seeded)
    assert finished.created
    # An uninterrupted export of the same PostgreSQL data gives the same lake.
    reference = replace(seeded, lake_root=tmp_path / "reference")
    run_export(reference)
    assert _lake_rows(seeded.lake_root) == _lake_rows(reference.lake_root)
    assert lake.current_snapshot(seeded.lake_root).data_versions() == \
        lake.current_snapshot(reference.lake_root).data_versions()


def test_second_concurrent_export_fails_clearly_while_the_first_holds_the_lock(seeded):
    with lake.export_lock(seeded.lake_root):
        with pytest.raises(LakeBusy, match="another export is writing the lake"):
            run_export(seeded)
    assert run_export(seeded).created


def test_vacuum_keeps_the_newest_snapshots_and_the_current_one(seeded):
    run_export(seeded)
    for _ in range(3):
        _change_every_symbol(seeded.database_url)
        run_export(seeded)  # vacuums with keep=2, keep_hours=0
    snapshots = lake.list_snapshots(seeded.lake_root)
    assert len(snapshots) == 2
    assert snapshots[-1].id == lake.current_snapshot(seeded.lake_root).id
    assert len(_lake_rows(seeded.lake_root)) > 0


def test_one_symbol_one_year_read_scans_only_its_file_and_row_groups(database_url, tmp_path):
    # Enough symbols that a year file holds several row groups.
    loaders.seed_database(database_url, n_symbols=60, years=1.2, seed=9)
    seeded = replace(Settings(), database_url=database_url, lake_root=tmp_path / "lake")
    run_export(seeded)
    snapshot = lake.current_snapshot(seeded.lake_root)
    symbol = sorted(snapshot.symbols)[30]
    year = int(snapshot.symbols[symbol]["1h"]["last"][:4])
    profile = json.loads(reader.explain_analyze(seeded.lake_root, symbol, year))

    def scans(node):
        if node.get("type") == "TABLE_SCAN":
            yield node
        for child in node.get("children", []):
            yield from scans(child)

    scan = next(s for op in profile["operator"] for s in scans(op))
    # The year's files only: its base and, for the newest year, its tail (the bars of its last day).
    assert scan["extra_info"]["Total Files Read"] == str(len(snapshot.files("1h", range(year, year + 1)))) in "12"
    assert f"year={year}" in scan["extra_info"]["Filename(s)"]
    assert scan["row_groups_scanned"] < scan["total_row_groups_to_scan"]
    assert "symbol_id" in str(scan["extra_info"]["Filters"])


def test_reader_aligns_symbols_on_one_grid_with_nan_for_missing_bars(seeded):
    run_export(seeded)
    batch = reader.read_prices(seeded.lake_root, None, "1h", columns=("open", "close"))
    snapshot = lake.current_snapshot(seeded.lake_root)
    assert batch.symbols == sorted(snapshot.symbols)
    assert batch.columns["close"].shape == (6, batch.times.size)
    assert np.all(np.diff(batch.times) == 3600)
    for i, symbol in enumerate(batch.symbols):
        assert batch.bars[i] == snapshot.symbols[symbol]["1h"]["bars"]
        assert np.count_nonzero(~np.isnan(batch.columns["close"][i])) == batch.bars[i]
    assert np.isnan(batch.columns["close"]).any(), "listing dates and outages leave NaN"
    assert batch.data_versions == [snapshot.symbols[s]["data_version"] for s in batch.symbols]


def test_auto_interval_picks_hourly_when_it_fits_else_daily(seeded):
    run_export(seeded)
    assert reader.read_prices(seeded.lake_root, interval="auto", max_points=100_000).interval == "1h"
    assert reader.read_prices(seeded.lake_root, interval="auto", max_points=100).interval == "1d"


@pytest.mark.parametrize(
    ("text", "message"),
    [("2024-01-01", "is not YYYYMMDD-YYYYMMDD"), ("20240230-", "'20240230' is not a date"),
     ("20240301-20240101", "start is after end"), ("-", "names no date")],
)
def test_bad_timerange_is_rejected_naming_it(text, message):
    with pytest.raises(PipelineError, match=message):
        reader.parse_timerange(text)


def test_timerange_end_day_is_inclusive_and_sides_may_be_open():
    assert reader.parse_timerange("20240101-20240131") == (
        datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC))
    assert reader.parse_timerange("20240101-") == (datetime(2024, 1, 1, tzinfo=UTC), None)


def test_unknown_symbol_is_an_error_naming_it(seeded):
    run_export(seeded)
    with pytest.raises(PipelineError, match="unknown symbol.*'NOPE'"):
        reader.read_prices(seeded.lake_root, ["NOPE"])


def test_lake_root_that_is_not_writable_fails_before_reading_postgres(seeded, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a directory")
    with pytest.raises(PipelineError, match="is not writable"):
        run_export(replace(seeded, lake_root=blocked / "lake"))
    assert os.path.isfile(blocked)


def test_cli_export_snapshots_and_vacuum(seeded, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.setenv("DATABASE_URL", seeded.database_url)
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(seeded.lake_root))
    runner = CliRunner()
    first = json.loads(runner.invoke(app, ["export", "--no-prefect", "--json"]).output.splitlines()[-1])
    assert first["created"] and first["rows_read"] > 0
    _change_every_symbol(seeded.database_url)
    second = json.loads(runner.invoke(app, ["export", "--no-prefect", "--json"]).output.splitlines()[-1])
    assert second["created"] and len(second["changed_symbols"]) == 6
    listed = json.loads(runner.invoke(app, ["lake", "snapshots", "--json"]).output)
    assert [s["snapshot_id"] for s in listed] == [first["snapshot_id"], second["snapshot_id"]]
    assert [s["current"] for s in listed] == [False, True]
    vacuumed = runner.invoke(app, ["lake", "vacuum", "--keep", "1", "--keep-hours", "0"])
    assert vacuumed.exit_code == 0 and first["snapshot_id"] in vacuumed.output
    assert [s["snapshot_id"] for s in json.loads(runner.invoke(app, ["lake", "snapshots", "--json"]).output)] == \
        [second["snapshot_id"]]
    assert runner.invoke(app, ["lake", "vacuum", "--keep", "0"]).exit_code == 1


def test_extract_without_psql_falls_back_to_psycopg_copy_with_the_same_rows(seeded, monkeypatch):
    from pipeline.source import postgres as source

    with_psql = source.extract_changed(seeded.database_url, None)
    monkeypatch.setattr(source.shutil, "which", lambda name: None)
    without = source.extract_changed(seeded.database_url, None)
    assert without.rows_read == with_psql.rows_read > 0
    key = ["symbol", "ts"]
    assert without.bars.sort(key).equals(with_psql.bars.sort(key))


def test_a_whole_snapshot_grid_is_kept_mapped_on_the_next_read_and_vacuumed_with_its_snapshot(tmp_path, monkeypatch):
    """The grid of a whole-history read of every symbol is kept beside the lake (pipeline.lake.grids): the
    next read maps it and equals a fresh scan; a new snapshot gets its own; vacuum removes the old one's;
    a subset or a time range is never served from it; CRYPTOBT_GRID_CACHE=0 turns it off."""
    from pipeline import demo
    from pipeline.lake import grids

    root = tmp_path / "lake"
    first = demo.build_sample_lake(root, n_symbols=4, years=0.2, sample=None)
    kept = root / grids.FOLDER / first.snapshot.id
    scanned = reader.read_prices(root, None, "1d", columns=("close", "volume"))
    assert len(list(kept.iterdir())) == 1
    mapped = reader.read_prices(root, None, "1d", columns=("close", "volume"))
    assert isinstance(mapped.columns["close"], np.memmap) and mapped.columns["close"].flags.writeable
    for name in ("close", "volume"):
        np.testing.assert_array_equal(mapped.columns[name], scanned.columns[name])
    np.testing.assert_array_equal(mapped.times, scanned.times)
    np.testing.assert_array_equal(mapped.coverage, scanned.coverage)
    assert list(mapped.bars) == list(scanned.bars) and mapped.snapshot_id == first.snapshot.id
    mapped.columns["close"][:] = 0.0  # copy-on-write: the kept grid is not changed
    np.testing.assert_array_equal(reader.read_prices(root, None, "1d", columns=("close", "volume")).columns["close"],
                                  scanned.columns["close"])
    names = sorted(lake.require_snapshot(root).symbols)
    subset = reader.read_prices(root, names[:2], "1d", columns=("close",))
    ranged = reader.read_prices(root, None, "1d", scanned_start := datetime.fromtimestamp(int(scanned.times[3]), UTC),
                                columns=("close",))
    assert not isinstance(subset.columns["close"], np.memmap) and not isinstance(ranged.columns["close"], np.memmap)
    assert ranged.times[0] == int(scanned_start.timestamp()) and len(list(kept.iterdir())) == 1

    second = demo.build_sample_lake(root, n_symbols=5, years=0.2, sample=None).snapshot.id
    assert second != first.snapshot.id
    assert not isinstance(reader.read_prices(root, None, "1d", columns=("close",)).columns["close"], np.memmap)
    assert (root / grids.FOLDER / second).is_dir()
    retention.vacuum(root, keep=1, keep_hours=0)
    assert not kept.exists() and (root / grids.FOLDER / second).is_dir()

    monkeypatch.setenv("CRYPTOBT_GRID_CACHE", "0")
    off = reader.read_prices(root, None, "1h", columns=("close",))
    assert not isinstance(off.columns["close"], np.memmap)
    assert len(list((root / grids.FOLDER / second).iterdir())) == 1  # the 1h read kept nothing
