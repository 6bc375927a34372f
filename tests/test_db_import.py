"""`cryptobt db import` (issue 25): every interval end to end, users' narrower columns, bounded memory.

Real PostgreSQL, the real `cryptobt` CLI in a subprocess, real files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest

from pipeline.core import intervals
from tests.test_data_trust import cli, env  # noqa: F401 - `env` is a fixture used by the tests below

# Mondays, so that a weekly file's bars are the open times of weeks (SPEC 4.2).
_START = {"1m": datetime(2024, 3, 4), "1w": datetime(2015, 1, 5)}


def _bars_csv(path: Path, interval: str, n: int, seed: int = 7) -> pl.DataFrame:
    """`n` bars of `interval` as a user's CSV (Date, Open, ... Volume), returned as written."""
    rng = np.random.default_rng(seed)
    close = 40 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[40.0, close[:-1]]
    start = _START.get(interval, _START["1m"] if intervals.SECONDS[interval] < 86_400 else datetime(2019, 1, 7))
    frame = pl.DataFrame({
        "Date": [start + intervals.delta(interval) * i for i in range(n)],
        "Open": open_, "High": np.maximum(open_, close) * 1.003, "Low": np.minimum(open_, close) * 0.997,
        "Close": close, "Volume": rng.uniform(1.0, 100.0, n),
    })
    frame.write_csv(path)
    return frame


def _pg_intervals(url: str, symbol: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute(
            "SELECT p.interval_type, count(*) FROM crypto_prices p JOIN cryptocurrencies c ON c.id = p.crypto_id "
            "WHERE c.symbol = %s GROUP BY 1", (symbol,)).fetchall())


def _buckets(frame: pl.DataFrame, interval: str) -> pl.DataFrame:
    """Reference resampling of a file's bars (weeks start on Monday; polars' do too)."""
    return (frame.with_columns(pl.col("Date").dt.truncate(intervals.POLARS_EVERY[interval]))
            .group_by("Date", maintain_order=True).agg(pl.col("Close").last()))


@pytest.mark.parametrize("native", intervals.NAMES)
def test_every_interval_imports_exports_and_backtests(env, tmp_path, native):  # noqa: F811
    n = 240
    frame = _bars_csv(tmp_path / "SYM.csv", native, n)
    coarser = intervals.coarser_than(native, intervals.NAMES)
    every = {**env, "CRYPTOBT_DERIVED_INTERVALS": ",".join(intervals.NAMES)}
    cli(every, "db", "init")
    imported = cli(every, "db", "import", str(tmp_path / "SYM.csv"))
    assert f"at {native}" in imported.stdout
    # PostgreSQL holds the file's interval under its own name, and every coarser one.
    stored = _pg_intervals(env["DATABASE_URL"], "SYM")
    assert stored == {native: n, **{c: _buckets(frame, c).height for c in coarser}}
    cli(every, "export", "--no-prefect")
    # Backtested at its own interval and at the next coarser one with at least two bars.
    checked = [native, *[c for c in coarser if _buckets(frame, c).height >= 2][:1]]
    for interval in checked:
        expected = _buckets(frame, interval)
        done = cli(every, "backtest", "buy_and_hold", "-s", "SYM", "--interval", interval, "--json")
        (result,) = json.loads(done.stdout)["results"]
        assert result["interval"] == interval
        assert result["bars"] == expected.height
        assert datetime.fromisoformat(result["start"]).replace(tzinfo=None) == expected["Date"][0]
        bh = (expected["Close"][-1] / expected["Close"][0] - 1) * 100
        assert result["buy_hold_return_pct"] == pytest.approx(bh, rel=1e-12)
    # Re-importing the same file changes nothing.
    assert f"at {native}: 0 rows changed" in cli(every, "db", "import", str(tmp_path / "SYM.csv")).stdout


def _relfilenodes(conn: psycopg.Connection) -> dict[str, int]:
    """The storage file of crypto_prices and each of its indexes: a rewrite or rebuild gives a new one."""
    rows = conn.execute(
        "SELECT c.relname, c.relfilenode FROM pg_class c WHERE c.oid = 'crypto_prices'::regclass "
        "UNION ALL SELECT i.indexrelid::regclass::text, c.relfilenode FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'crypto_prices'::regclass").fetchall()
    return dict(rows)


@pytest.mark.parametrize("column", ["text", "varchar(2)", "char(2)"])
def test_an_old_database_takes_every_interval_after_db_init(env, tmp_path, column):  # noqa: F811
    """A database made when SPEC named only '1h' and '1d' has a check of those two, and a users' one may
    hold interval_type in two characters: `db init` widens the column to text (varchar: in place, no
    rewrite of the table or its primary key) and the check to every interval, once; then a 30m file
    imports."""
    from pipeline.source import postgres as source

    url = env["DATABASE_URL"]
    with psycopg.connect(url) as conn:  # the fixture's database has our schema: make it a users' old one
        conn.execute("DROP TABLE crypto_prices")
        old = source.load_sql("001_schema.sql").replace("interval_type text NOT NULL",
                                                        f"interval_type {column} NOT NULL")
        old = old.replace("('1m', '5m', '15m', '30m', '1h', '4h', '1d', '1w')", "('1h', '1d')")
        assert f"interval_type {column}" in old and "('1h', '1d')" in old
        conn.execute(old)
        conn.execute("INSERT INTO cryptocurrencies (symbol) VALUES ('OLD') ON CONFLICT DO NOTHING")
        conn.execute(
            "INSERT INTO crypto_prices (crypto_id, interval_type, datetime, open_price, high_price, low_price, "
            "close_price, volume) SELECT c.id, iv, timestamptz '2020-01-01 00:00+00' + i * interval '1 day', "
            "10, 11, 9, 10, 1 FROM cryptocurrencies c, generate_series(0, 99) i, unnest(ARRAY['1h', '1d']) iv "
            "WHERE c.symbol = 'OLD'")
        conn.execute(source.load_sql("003_indexes.sql"))
        old_files = _relfilenodes(conn)
    cli(env, "db", "init")
    with psycopg.connect(url) as conn:
        kind = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                            "WHERE attrelid = 'crypto_prices'::regclass AND attname = 'interval_type'").fetchone()[0]
        check = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                             "WHERE conname = 'crypto_prices_interval_check'").fetchone()[0]
        before = _relfilenodes(conn)
        kept = conn.execute("SELECT interval_type, count(*) FROM crypto_prices GROUP BY 1 ORDER BY 1").fetchall()
    assert kind == "text"
    assert all(f"'{name}'" in check for name in intervals.NAMES), check
    assert kept == [("1d", 100), ("1h", 100)]
    if column != "char(2)":  # widened in place: the table and its primary key are not rewritten
        kept_files = ("crypto_prices", "crypto_prices_pkey")
        assert {name: before[name] for name in kept_files} == {name: old_files[name] for name in kept_files}
    # Applied again, the schema changes nothing: no rewrite, no index rebuilt.
    cli(env, "db", "init")
    with psycopg.connect(url) as conn:
        assert _relfilenodes(conn) == before
    _bars_csv(tmp_path / "HALF.csv", "30m", 96)
    imported = cli(env, "db", "import", str(tmp_path / "HALF.csv"))
    assert "at 30m" in imported.stdout
    assert _pg_intervals(url, "HALF") == {"30m": 96, "1h": 48, "1d": 2}


# --- item 13: a big file is imported in bounded memory, still in one transaction ------------------

def _minute_csv(path: Path, rows: int, start: datetime = datetime(2017, 1, 2), seed: int = 11) -> int:
    """`rows` 1m bars in an exchange dump's shape (about 63 bytes a line); returns the file's size."""
    rng = np.random.default_rng(seed)
    close = 30_000 * np.exp(np.cumsum(rng.normal(0, 0.0005, rows)))
    open_ = np.r_[30_000.0, close[:-1]]
    ts = np.datetime64(start, "m") + np.arange(rows)
    pl.DataFrame({
        "date": pl.Series(ts.astype("datetime64[us]")), "open": open_.round(2),
        "high": (np.maximum(open_, close) * 1.0005).round(2), "low": (np.minimum(open_, close) * 0.9995).round(2),
        "close": close.round(2), "volume": rng.uniform(0, 50, rows).round(6),
    }).write_csv(path, datetime_format="%Y-%m-%d %H:%M:%S")
    return path.stat().st_size


def _import_peak(environ: dict[str, str], *paths: Path, extra: tuple[str, ...] = ()) -> tuple[int, str, float]:
    """`cryptobt db import PATHS` in a child process: exit code, output, and the child's peak RSS in MB:
    its VmHWM, read by the child itself as it exits. (Not ru_maxrss from wait4: that counts the moment
    between fork and exec, when the child still maps the whole test worker, over 1 GB late in the suite.)"""
    import subprocess
    import sys

    out = Path(environ["_CWD"]) / "import.out"
    peak = Path(environ["_CWD"]) / "import.peak"
    runner = ("import atexit, runpy, sys\n"
              f"atexit.register(lambda: open({str(peak)!r}, 'w').write(open('/proc/self/status').read()))\n"
              "sys.argv = ['cryptobt', *sys.argv[1:]]\n"
              "runpy.run_module('pipeline', run_name='__main__')\n")
    with out.open("w") as sink:
        done = subprocess.run([sys.executable, "-c", runner, "db", "import", *extra, *map(str, paths)], env=environ,
                              stdout=sink, stderr=subprocess.STDOUT, cwd=environ["_CWD"], timeout=1800)
    text = out.read_text()
    assert "Traceback" not in text, text
    hwm = next(line for line in peak.read_text().splitlines() if line.startswith("VmHWM:"))
    return done.returncode, text, int(hwm.split()[1]) / 1024


@pytest.mark.slow
def test_a_big_csv_imports_in_memory_that_does_not_grow_with_the_file(env, tmp_path):  # noqa: F811
    cli(env, "db", "init")
    small, big = tmp_path / "SMALL.csv", tmp_path / "BIG.csv"
    small_mb = _minute_csv(small, 1_000_000) / 2**20
    big_mb = _minute_csv(big, 4_000_000, start=datetime(2010, 1, 4)) / 2**20
    code, text, small_peak = _import_peak(env, small)
    assert code == 0 and "1,000,000 1m" in text, text
    code, text, big_peak = _import_peak(env, big)
    assert code == 0 and "4,000,000 1m" in text, text
    # The reader's threads put a few batches in flight at once, how many depends on scheduling (peaks of one
    # file varied by 50 MB between runs): the bound is on the smaller of two imports of each file (the second
    # finds every row already there and reads the file the same way). With the small file's taken once, a
    # low first reading of it failed the bound in a full suite (447 vs 496 MB: 49 MB against 47).
    for path in (small, big):
        code, text, again_peak = _import_peak(env, path)
        assert code == 0, text
        if path == small:
            small_peak = min(small_peak, again_peak)
        else:
            big_peak = min(big_peak, again_peak)
    print(f"peak RSS: {small_mb:.0f} MB file -> {small_peak:.0f} MB; {big_mb:.0f} MB file -> {big_peak:.0f} MB")
    assert big_peak <= big_mb + 500
    # Four times the rows, (almost) the same memory: it is bounded by a batch, not by the file. Alone the peaks
    # differ by 13-15 MB; in a cold full suite (numba compiling beside it, PostgreSQL slower) by 49-56 MB, which
    # failed a quarter of the files' difference (47 MB) twice. Holding the file would add all of its 190 MB (its
    # parsed rows more): half of it is the bound.
    assert big_peak - small_peak < 0.5 * (big_mb - small_mb)
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        counts = dict(conn.execute("SELECT c.symbol, count(*) FROM crypto_prices p JOIN cryptocurrencies c "
                                   "ON c.id = p.crypto_id WHERE p.interval_type = '1m' GROUP BY 1").fetchall())
    assert counts == {"SMALL": 1_000_000, "BIG": 4_000_000}


_VARIANTS = {  # one small file's bytes in the shapes CSV writers give it
    "plain": b"date,open,high,low,close,volume\n" + b"".join(
        b"2024-01-01 %02d:00:00,1.5,2,1,1.25,%d\n" % (h, h) for h in range(24)),
    "quoted-crlf-no-final-newline": b'"Date","Open","High","Low","Close","Volume"\r\n' + b"\r\n".join(
        b'"2024-01-01T%02d:00:00Z","1.5","2","1","1.25","%d"' % (h, h) for h in range(24)),
    "bom-and-a-quoted-newline-in-a-spare-column": "\ufeffdate,open,high,low,close,volume,note\n".encode() + b"".join(
        b'2024-01-01 %02d:00:00,1.5,2,1,1.25,%d,"two\nlines"\n' % (h, h) for h in range(24)),
    "header-only": b"date,open,high,low,close,volume\n",
}


@pytest.mark.parametrize("variant", sorted(_VARIANTS))
@pytest.mark.parametrize("block_bytes", [1, 7, 64, 1 << 20])
def test_a_csv_read_in_blocks_gives_the_rows_read_whole(tmp_path, variant, block_bytes):
    from pipeline.source import ohlcv

    path = tmp_path / "X.csv"
    path.write_bytes(_VARIANTS[variant])
    whole = ohlcv.read_ohlcv_file(path, validate=False)
    batches = list(ohlcv.read_ohlcv_batches(path, block_bytes=block_bytes))
    joined = pl.concat(batches)
    assert joined["_row"].to_list() == list(range(joined.height))
    assert joined.drop("_row").sort("ts").equals(whole)
    assert whole.height == (0 if variant == "header-only" else 24)


def _loaded(url: str) -> tuple[list, int]:
    with psycopg.connect(url) as conn:
        return (conn.execute("SELECT symbol FROM cryptocurrencies ORDER BY 1").fetchall(),
                conn.execute("SELECT count(*) FROM crypto_prices").fetchone()[0])


def _edit_line(path: Path, line: int, edit: Callable[[list[str]], list[str]]) -> str:
    """Rewrite line `line` (1 = the header) of a CSV in place with `edit` on its fields; returns it."""
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[line - 1].rstrip("\n").split(",")
    lines[line - 1] = ",".join(edit(fields)) + "\n"
    path.write_text("".join(lines))
    return lines[line - 1]


def test_a_bad_row_deep_in_a_big_file_is_named_by_its_line_and_nothing_is_written(database_url, tmp_path):
    from pipeline.core.errors import InputError
    from pipeline.source import loaders

    path = tmp_path / "DEEP.csv"
    assert _minute_csv(path, 600_000) > 3 * (16 << 20) / 2  # past the first block or two
    _edit_line(path, 590_001, lambda f: [f[0], f[1], f[2], f[3], "-1", f[5]])
    with pytest.raises(InputError, match=r"DEEP.csv line 590001: prices must be > 0"):
        loaders.import_files(database_url, [path])
    assert _loaded(database_url) == ([], 0)


def test_two_different_bars_at_one_time_far_apart_in_a_big_file_are_refused_naming_both(database_url, tmp_path):
    from pipeline.core.errors import InputError
    from pipeline.source import loaders

    path = tmp_path / "TWICE.csv"
    _minute_csv(path, 600_000)
    first = path.read_text().splitlines()[10].split(",")  # line 11
    _edit_line(path, 580_001, lambda f: [first[0], *f[1:]])  # line 11's time, other prices
    with pytest.raises(InputError, match=r"TWICE.csv line 580001: timestamp .* appears again with different values "
                                         r"\(first at TWICE.csv line 11\)"):
        loaders.import_files(database_url, [path])
    assert _loaded(database_url) == ([], 0)


_CONTENT = ("SELECT interval_type, count(*), max(updated_at), md5(string_agg(concat_ws(',', crypto_id, datetime, "
            "open_price, high_price, low_price, close_price, volume), ';' ORDER BY crypto_id, datetime)) "
            "FROM crypto_prices GROUP BY 1 ORDER BY 1")


@pytest.mark.slow
def test_a_big_file_that_differs_from_the_existing_series_is_refused_whole_and_replace_takes_it(
        database_url, tmp_path):
    from pipeline.core.errors import InputError
    from pipeline.source import loaders

    path = tmp_path / "SYM.csv"
    _minute_csv(path, 600_000)  # a bit more than a year of 1m bars: two years' stretches
    loaders.import_files(database_url, [path])
    with psycopg.connect(database_url) as conn:
        before = conn.execute(_CONTENT).fetchall()
    _edit_line(path, 599_001, lambda f: [*f[:5], str(float(f[5]) + 1)])  # one volume, near the end
    with pytest.raises(InputError, match=r"refusing to mix two markets: SYM \(1 existing bars differ"):
        loaders.import_files(database_url, [path])
    with psycopg.connect(database_url) as conn:
        assert conn.execute(_CONTENT).fetchall() == before
    report = loaders.import_files(database_url, [path], replace=True)
    assert report.changed == 3  # the 1m bar, its hour and its day
    assert loaders.import_files(database_url, [path]).changed == 0


@pytest.mark.slow
def test_a_killed_import_leaves_nothing_behind(env, tmp_path):  # noqa: F811
    import os
    import signal
    import subprocess
    import sys
    import time

    spill = tmp_path / "tmp"
    spill.mkdir()
    path = tmp_path / "KILLED.csv"
    _minute_csv(path, 1_500_000)
    cli(env, "db", "init")
    child = subprocess.Popen([sys.executable, "-m", "pipeline", "db", "import", str(path)],
                             env={**env, "TMPDIR": str(spill)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    copying = False
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        deadline = time.monotonic() + 300
        while not copying and child.poll() is None and time.monotonic() < deadline:
            copying = bool(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND query LIKE 'COPY %%crypto_prices%%'").fetchone()[0])
            time.sleep(0.05)
    assert copying, "the import never reached its COPY into crypto_prices"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:  # its backend may still be rolling back
        deadline = time.monotonic() + 60
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchone()[0]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert _loaded(env["DATABASE_URL"]) == ([], 0)
    assert list(spill.iterdir()) == []  # the spilled years had no names
    done = cli(env, "db", "import", str(path))  # and a rerun completes it
    assert "1,500,000 1m" in done.stdout


def test_no_room_for_the_spill_is_one_line_naming_tmpdir(env, tmp_path):  # noqa: F811
    import subprocess

    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        path = tmp_path / "ROOMY.csv"
        _minute_csv(path, 200_000)  # 11 MB of spill
        cli(env, "db", "init")
        done = cli({**env, "TMPDIR": str(disk)}, "db", "import", str(path), check=False)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and str(disk) in done.stderr and "TMPDIR" in done.stderr
    assert _loaded(env["DATABASE_URL"]) == ([], 0)
