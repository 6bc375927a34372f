"""Issue 20: integrity gaps an adversarial test found. Real processes, real PostgreSQL and Redis.

Each test names the defect it pins down; each failed on the code before its fix.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_env import cli_environment


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _one_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, done.stdout[-500:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def small_lake(build_lake) -> dict[str, str]:
    lake = build_lake(n_symbols=3, years=0.1)
    return cli_environment(lake, lake.parent / "results", DATABASE_URL="postgresql://postgres@127.0.0.1:1/none",
                           COLUMNS="200")


# --- item 9: inputs that traced back or went silently wrong ---------------------------------

BAD_INPUTS = [
    (["backtest", "rsi", "--initial", "1e-320"], {}, "--initial 1e-320 is out of range"),
    (["backtest", "rsi", "--initial", "1e308"], {}, "--initial 1e+308 is out of range"),
    (["backtest", "rsi", "--timerange", "-99991231"], {}, "'99991231' is out of range"),
    (["backtest", "rsi", "--timerange", "2024111-"], {}, "'2024111' is not a date in YYYYMMDD form"),
    (["backtest", "rsi", "--timerange", "\u0662\u0660\u0662\u0664\u0660\u0661\u0660\u0661-"], {}, "YYYYMMDD"),
    (["backtest", "rsi", "-p", "rsi_period=1_4"], {}, "rsi_period='1_4' is not a number"),
    (["backtest", "rsi", "-p", "rsi_period=\u0661\u0664"], {}, "is not a number"),
    (["sweep", "rsi", "-g", "rsi_period=1_4,20"], {}, "'1_4' is not a number"),
    (["stats", "--hours", "nan"], {}, "--hours nan is not a finite number"),
    (["lake", "vacuum", "--keep-hours", "inf"], {}, "--keep-hours inf is not a finite number"),
    (["results", "sql", ""], {}, "the query is empty"),
    (["db", "seed", "--years", "1e-9"], {}, "--years 1e-09 is out of range"),
    (["db", "seed", "--seed", "-1"], {}, "--seed -1 is out of range"),
    (["backtest", "rsi"], {"REDIS_URL": "redis://127.0.0.1:6379/0", "CRYPTOBT_REDIS_TIMEOUT": "nan"},
     "CRYPTOBT_REDIS_TIMEOUT='nan' is not a number"),
    (["backtest", "rsi"], {"REDIS_URL": "garbage"}, "REDIS_URL='garbage' is not a Redis URL"),
    (["backtest", "rsi"], {"CRYPTOBT_SNAPSHOT_KEEP_HOURS": "inf"}, "CRYPTOBT_SNAPSHOT_KEEP_HOURS='inf'"),
    (["sweep", "rsi", "-g", "rsi_period=5:1000:1", "-g", "oversold_threshold=10:40:0.1"], {},
     "pass --yes to run it"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "extra", "message"), BAD_INPUTS,
                         ids=[" ".join(a) + (" " + " ".join(e) if e else "") for a, e, _ in BAD_INPUTS])
@pytest.mark.slow
def test_bad_inputs_are_one_line_before_anything_is_written(small_lake, tmp_path, args, extra, message):
    env = {**small_lake, **extra, "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "results")}
    line = _one_line(_cli(args, env, tmp_path))
    assert message in line
    assert not (tmp_path / "results").exists(), "nothing is written on bad input"


@pytest.mark.slow
def test_a_lake_root_that_is_a_file_is_one_line_naming_it(small_lake, tmp_path):
    afile = tmp_path / "not-a-folder"
    afile.write_text("x")
    for args in (["backtest", "rsi"], ["lake", "snapshots"], ["results", "top"]):
        line = _one_line(_cli(args, {**small_lake, "CRYPTOBT_LAKE_ROOT": str(afile)}, tmp_path))
        assert f"CRYPTOBT_LAKE_ROOT='{afile}' is a file" in line


@pytest.mark.slow
def test_a_sweep_that_takes_a_while_prints_its_size_and_estimate_first(small_lake, tmp_path):
    env = {**small_lake, "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "results")}
    grid = ["-g", "rsi_period=5:100:1", "-g", "oversold_threshold=10:45:1"]
    done = _cli(["sweep", "rsi", *grid, "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sweep: 3,456 parameter sets x 3 symbols = 10,368 backtests" in done.stderr and "about" in done.stderr
    quiet = _cli(["sweep", "rsi", "-g", "rsi_period=5:20:5", "--json"], env, tmp_path)
    assert quiet.returncode == 0 and "sweep:" not in quiet.stderr


@pytest.mark.slow
def test_initial_at_the_bounds_gives_finite_values(small_lake, tmp_path):
    import json

    env = {**small_lake, "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "results")}
    for initial in ("0.01", "1e12"):
        done = _cli(["backtest", "rsi", "--initial", initial, "--json"], env, tmp_path)
        assert done.returncode == 0, done.stderr
        rows = json.loads(done.stdout)["results"]
        assert rows and all(r["final_value"] is not None and r["final_value"] > 0 for r in rows)


# --- item 8: results sql is sandboxed ----------------------------------------------------------


@pytest.mark.slow
def test_results_sql_reads_its_tables_but_no_other_file_and_writes_nothing(small_lake, tmp_path):
    import duckdb

    env = {**small_lake, "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "results")}
    assert _cli(["backtest", "rsi"], env, tmp_path).returncode == 0
    results = tmp_path / "results"
    target = next(results.rglob("*.parquet"))
    before = target.read_bytes()
    ok = _cli(["results", "sql", "SELECT count(*) AS n FROM results", "--json"], env, tmp_path)
    assert ok.returncode == 0 and '"n": 3' in ok.stdout, ok.stderr
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n42\n")
    attacks = [
        f"SELECT * FROM read_csv('{secret}')",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"COPY (SELECT 1 AS a) TO '{tmp_path / 'written.csv'}'",
        f"COPY (SELECT * REPLACE (total_return_pct * 100 AS total_return_pct) FROM results) TO '{target}'",
        f"SELECT 1; COPY (SELECT 1) TO '{tmp_path / 'written2.csv'}'",
        f"ATTACH '{tmp_path / 'x.duckdb'}' AS x",
        "SET enable_external_access = true",
        "INSTALL httpfs",
        "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
        "CREATE TABLE t AS SELECT 1",
    ]
    for sql in attacks:
        done = _cli(["results", "sql", sql], env, tmp_path)
        assert done.returncode == 1 and "Traceback" not in done.stderr, (sql, done.stdout, done.stderr)
        assert "42" not in done.stdout and "root:" not in done.stdout, sql
    assert target.read_bytes() == before
    assert not any(p.exists() for p in (tmp_path / "written.csv", tmp_path / "written2.csv", tmp_path / "x.duckdb"))
    # Plain DuckDB still reads the same files, as the README says.
    with duckdb.connect() as con:
        assert con.execute(f"SELECT count(*) FROM read_parquet('{results}/**/*.parquet')").fetchone()[0] == 3


@pytest.mark.slow
def test_results_sql_help_says_what_is_allowed(small_lake, tmp_path):
    done = _cli(["results", "sql", "--help"], small_lake, tmp_path)
    text = " ".join(done.stdout.split())
    assert "Allowed: SELECT" in text and "Refused" in text and "no HTTP endpoint" in text


# --- item 7: passwords ------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "postgresql://postgres:notsecretpw@127.0.0.1:1/db",
    "postgresql://postgres@127.0.0.1:1/db?password=notsecretpw",
    "postgresql://postgres@127.0.0.1:1/db?sslmode=disable&password=notsecretpw",
    "host=127.0.0.1 port=1 user=postgres password=notsecretpw dbname=x",
    "host=127.0.0.1 port=1 user=postgres password='notsecretpw' dbname=x",
])
@pytest.mark.slow
def test_no_message_shows_a_password_in_any_dsn_form(small_lake, tmp_path, url):
    for args in (["db", "init"], ["export", "--no-prefect"]):
        done = _cli(args, {**small_lake, "DATABASE_URL": url, "CRYPTOBT_LAKE_ROOT": str(tmp_path / "lake")}, tmp_path)
        assert done.returncode == 1
        assert "notsecretpw" not in done.stderr + done.stdout, done.stderr
        assert "***" in done.stderr


# The export's argv and environment: tests/test_secrets.py (every DSN form, sslpassword too).


# --- item 3: cache records are checked against their key and the results schema -------------------


def test_a_cache_record_that_is_not_its_keys_is_dropped_and_recomputed(small_lake, tmp_path, redis_url, redis_prefix,
                                                                      redis_client):
    import json

    env = {**small_lake, "REDIS_URL": redis_url, "CRYPTOBT_CACHE_PREFIX": redis_prefix,
           "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "results")}
    args = ["backtest", "rsi", "-s", "SYN001", "-s", "SYN002", "--json"]
    first = _cli(args, env, tmp_path)
    assert first.returncode == 0, first.stderr
    truth = {r["symbol"]: r["total_return_pct"] for r in json.loads(first.stdout)["results"]}
    (key1,) = redis_client.smembers(f"{redis_prefix}:sym:SYN001")
    (key2,) = redis_client.smembers(f"{redis_prefix}:sym:SYN002")
    redis_client.set(key1, redis_client.get(key2))  # SYN002's record under SYN001's key
    swapped = _cli(args, env, tmp_path)
    assert swapped.returncode == 0, swapped.stderr
    rows = json.loads(swapped.stdout)["results"]
    assert sorted(r["symbol"] for r in rows) == ["SYN001", "SYN002"]
    assert {r["symbol"]: r["total_return_pct"] for r in rows} == truth
    assert [r["from_cache"] for r in rows if r["symbol"] == "SYN001"] == [False]
    assert swapped.stderr.count("warning") == 1 and "symbol 'SYN002' under a key for 'SYN001'" in swapped.stderr

    record = json.loads(redis_client.get(key2))
    record["total_return_pct"] = "12.5"
    redis_client.set(key2, json.dumps(record))
    typed = _cli(args, env, tmp_path)
    assert typed.returncode == 0, typed.stderr
    assert {r["symbol"]: r["total_return_pct"] for r in json.loads(typed.stdout)["results"]} == truth
    assert typed.stderr.count("warning") == 1 and "total_return_pct='12.5'" in typed.stderr
    # Dropped records were recomputed and stored again: the next run is all hits, no warning.
    again = _cli(args, env, tmp_path)
    assert all(r["from_cache"] for r in json.loads(again.stdout)["results"]) and "warning" not in again.stderr


def test_a_garbage_hit_counter_does_not_break_cache_stats(small_lake, tmp_path, redis_url, redis_prefix, redis_client):
    env = {**small_lake, "REDIS_URL": redis_url, "CRYPTOBT_CACHE_PREFIX": redis_prefix}
    redis_client.set(f"{redis_prefix}:stats:hits", "garbage")
    done = _cli(["cache", "stats", "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"hits": 0' in done.stdout and "not a count" in done.stderr


# --- item 4: a run is one unit across the results, trades and runs tables ---------------------------


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")


@pytest.fixture
def mounts():
    made: list[Path] = []
    yield lambda where, options: (_mount_tmpfs(where, options), made.append(where))
    for where in made:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _parquet_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith(".")) if root.exists() else []


@pytest.mark.slow
def test_a_run_whose_runs_row_cannot_be_written_publishes_no_results_or_trades(small_lake, tmp_path, mounts):
    base = tmp_path / "out"
    mounts(base / "runs", "size=64k")  # the runs table's own disk, filled to the last byte below
    with open(base / "runs" / "ballast", "wb") as handle:
        with contextlib.suppress(OSError):
            handle.write(b"\0" * (1 << 20))
    env = {**small_lake, "CRYPTOBT_RESULTS_ROOT": str(base / "results")}
    line = _one_line(_cli(["backtest", "rsi", "--trades"], env, tmp_path))
    assert "no space left on the disk" in line
    assert _parquet_files(base / "results") == [] and _parquet_files(base / "trades") == []
    leftovers = [p for p in base.rglob("*") if p.is_file() and p.name != "ballast"]
    assert leftovers == []


def test_an_unwritable_results_root_fails_before_the_run_computes_or_caches(small_lake, tmp_path, mounts, redis_url,
                                                                          redis_prefix, redis_client):
    readonly = tmp_path / "ro"
    mounts(readonly, "ro,size=64k")
    env = {**small_lake, "CRYPTOBT_RESULTS_ROOT": str(readonly / "results"), "REDIS_URL": redis_url,
           "CRYPTOBT_CACHE_PREFIX": redis_prefix}
    line = _one_line(_cli(["backtest", "rsi"], env, tmp_path))
    assert f"{readonly / 'results'} is not writable" in line and "CRYPTOBT_RESULTS_ROOT" in line
    assert list(redis_client.scan_iter(match=f"{redis_prefix}:*")) == [], "nothing computed, nothing cached"



# --- item 2: staging and half-removed snapshots never accumulate --------------------------------------

# The flow's extract task stages its rows as files (`run_export` keeps them in memory): killed after it.
EXPORT_KILLED_AFTER_READ = (
    "import os, sys\nfrom dataclasses import replace\nfrom pathlib import Path\n"
    "from pipeline.core.config import Settings\nfrom pipeline.lake.export import extract_to_staging\n"
    "extract_to_staging(replace(Settings(), database_url=sys.argv[1], lake_root=Path(sys.argv[2])), None)\n"
    "os._exit(137)\n"
)


def test_vacuum_removes_a_killed_exports_staging_files_and_manifestless_snapshot_folders(database_url, tmp_path):
    from dataclasses import replace

    from pipeline.core.config import Settings
    from pipeline.lake.export import run_export
    from pipeline.source import loaders

    loaders.seed_database(database_url, 3, 0.05, 1)
    lake_root = tmp_path / "lake"
    run_export(replace(Settings(), database_url=database_url, lake_root=lake_root), full=True)
    killed = subprocess.run([sys.executable, "-c", EXPORT_KILLED_AFTER_READ, database_url, str(lake_root)],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == 137, killed.stderr
    staged = [p for p in (lake_root / ".staging").iterdir()]
    assert staged and all(p.is_file() for p in staged), "a killed export leaves its extract (files) behind"
    half_removed = lake_root / "snapshots" / "20200101T000000000000Z-dead00"
    (half_removed / "interval=1h" / "year=2020").mkdir(parents=True)
    (half_removed / "interval=1h" / "year=2020" / "1h-2020.parquet").write_bytes(b"PAR1")
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(lake_root), "REDIS_URL": ""}
    done = _cli(["lake", "vacuum", "--keep", "1", "--keep-hours", "0"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert list((lake_root / ".staging").iterdir()) == []
    assert not half_removed.exists()
    assert _cli(["backtest", "buy_and_hold", "--json"], env, tmp_path).returncode == 0


# --- item 9 (last): a killed Prefect-run export takes its temporary Prefect server with it -----------


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append((int(entry.name), cmdline))
    return found


def _alive(pid: int) -> bool:
    try:
        return "uvicorn" in (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@pytest.mark.slow
def test_killing_a_prefect_export_stops_its_temporary_prefect_server(tmp_path):
    import signal
    import time

    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    # PostgreSQL is unreachable: the flow's extract task retries for ~15 s, time to find and kill it.
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), DATABASE_URL="postgresql://postgres@127.0.0.1:1/none",
               CRYPTOBT_LAKE_ROOT=str(tmp_path / "lake"), REDIS_URL="",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    export = subprocess.Popen([sys.executable, "-m", "pipeline", "export", "--prefect"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    deadline = time.monotonic() + 180
    try:
        while server is None and time.monotonic() < deadline and export.poll() is None:
            server = next((pid for pid, cmd in _children(export.pid) if "prefect.server.api.server" in cmd), None)
            time.sleep(0.2)
        assert server is not None, "the export started no temporary Prefect server"
        export.send_signal(signal.SIGKILL)
        export.wait(timeout=30)
        gone_by = time.monotonic() + 30
        while _alive(server) and time.monotonic() < gone_by:
            time.sleep(0.2)
        assert not _alive(server), "the temporary Prefect server outlived the killed export"
    finally:
        if export.poll() is None:
            export.kill()
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)


# --- item 1: imports that poisoned every later export ---------------------------------------------

POISON = {
    "INF": "1514764800,1,2,0.5,1.5,10\n1514768400,1.5,2,1,1.2,inf\n",
    "HUGE": "2018-01-01 00:00:00,1,1e308,0.5,1.5,10\n2018-01-01 01:00:00,1,2,0.5,1.5,10\n",
    "BC": "-0075-05-25 00:00:00,1,2,0.5,1.5,10\n-0075-05-25 01:00:00,1,2,0.5,1.5,10\n",
    "FUTURE": "9019-01-01 00:00:00,1,2,0.5,1.5,10\n9019-01-01 01:00:00,1,2,0.5,1.5,10\n",
}


@pytest.mark.parametrize("name", sorted(POISON))
def test_an_import_refuses_non_finite_huge_or_out_of_window_rows_in_one_line(database_url, tmp_path, name):
    path = tmp_path / f"{name}.csv"
    path.write_text("date,open,high,low,close,volume\n" + POISON[name])
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": ""}
    line = _one_line(_cli(["db", "import", str(path)], env, tmp_path))
    assert f"{name}.csv line" in line


def test_an_epoch_seconds_csv_imports_as_the_message_promises(database_url, tmp_path):
    path = tmp_path / "EPOCH.csv"
    path.write_text("date,open,high,low,close,volume\n1514764800,1,2,0.5,1.5,10\n1514768400,1.5,2,1,1.2,3\n")
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": ""}
    done = _cli(["db", "import", str(path)], env, tmp_path)
    assert done.returncode == 0, done.stderr


# Rows a user's own INSERT can put in PostgreSQL, one kind per symbol: (symbol, time, values, problem named).
# The schema's CHECK constraints stop the negative price and high < low; a database that another tool
# created may lack them, so the test drops them.
PLANTED = [
    ("SYN001", "last + interval '1 hour'", "'NaN', 'NaN', 'NaN', 'NaN', 1", "NaN or infinite"),
    ("SYN002", "last + interval '1 hour'", "1, 'Infinity', 0.5, 1, 'Infinity'", "NaN or infinite"),
    ("SYN003", "last + interval '1 hour'", "-1, 2, -2, 1, 1", "prices must be > 0"),
    ("SYN004", "'0075-05-25 00:00 BC'::timestamptz", "1, 2, 0.5, 1.5, 10", "the time is outside"),
    ("SYN005", "'9999-06-01'::timestamptz", "1, 2, 0.5, 1.5, 10", "the time is outside"),
    ("SYN006", "'infinity'::timestamptz", "1, 2, 0.5, 1.5, 10", "the time is outside"),
    ("SYN007", "last + interval '1 hour'", "1, 0.5, 2, 1, 1", "high is below low"),
    ("SYN008", "last + interval '90 minutes'", "1, 2, 0.5, 1.5, 10", "not the open time of a 1h bar"),
]


def _sql(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def _plant(url: str, symbol: str, time: str, values: str) -> None:
    _sql(url, "INSERT INTO crypto_prices (crypto_id, interval_type, datetime, open_price, high_price, low_price, "
              f"close_price, volume) SELECT c.id, '1h', {time}, {values} FROM cryptocurrencies c, LATERAL "
              "(SELECT max(datetime) AS last FROM crypto_prices WHERE crypto_id = c.id) m WHERE c.symbol = %s",
         (symbol,))


def _listed(env: dict[str, str], cwd: Path) -> dict[str, dict]:
    import json

    done = _cli(["data", "list", "--json"], env, cwd)
    assert done.returncode == 0, done.stderr
    return {row["symbol"]: row for row in json.loads(done.stdout)}


def _warnings(done: subprocess.CompletedProcess) -> list[str]:
    """The export's warnings about its source (a refused symbol, orphan prices), not data health findings."""
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return [line for line in done.stderr.splitlines()
            if line.startswith("warning:") and ("in PostgreSQL" in line or "crypto_prices" in line)]


def test_an_export_skips_a_symbol_whose_postgresql_rows_are_bad_and_names_it(database_url, tmp_path):
    from pipeline.source import loaders

    loaders.seed_database(database_url, 10, 0.05, 1)
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": "", "CRYPTOBT_LAKE_ROOT": str(tmp_path / "lake"),
           "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "results"), "COLUMNS": "200"}
    assert _cli(["export", "--no-prefect"], env, tmp_path).returncode == 0
    before = _listed(env, tmp_path)
    _sql(database_url, "ALTER TABLE crypto_prices DROP CONSTRAINT crypto_prices_positive_check, "
                       "DROP CONSTRAINT crypto_prices_range_check")
    for symbol, time, values, _ in PLANTED:
        _plant(database_url, symbol, time, values)
    _plant(database_url, "SYN000", "last + interval '1 hour'", "1, 2, 0.5, 1.5, 10")  # a good new bar
    # A symbol the lake has never had, whose only rows are bad: nothing to keep, it is left out.
    _sql(database_url, "INSERT INTO cryptocurrencies (symbol, name) VALUES ('FRESH', 'FRESH')")
    _plant(database_url, "FRESH", "'2025-01-01'::timestamptz", "'NaN', 1, 1, 1, 1")
    refused = {symbol: problem for symbol, _, _, problem in PLANTED}

    for args in (["export", "--no-prefect"], ["export", "--no-prefect", "--full"]):
        warned = _warnings(_cli(args, env, tmp_path))
        for symbol, problem in refused.items():
            lines = [line for line in warned if line.startswith(f"warning: {symbol}:")]
            assert len(lines) == 1 and problem in lines[0] and "kept its bars of the previous snapshot" in lines[0], \
                (symbol, warned)
        (fresh,) = [line for line in warned if line.startswith("warning: FRESH:")]
        assert "NaN or infinite" in fresh and "left out of the snapshot" in fresh
        listed = _listed(env, tmp_path)
        assert listed["SYN000"]["bars"] == before["SYN000"]["bars"] + 1, "the other symbols are exported"
        assert listed["SYN009"]["data_version"] == before["SYN009"]["data_version"]
        for symbol, problem in refused.items():
            assert listed[symbol]["bars"] == before[symbol]["bars"]
            assert listed[symbol]["data_version"] == before[symbol]["data_version"]
            assert problem in listed[symbol]["refused"]
        assert listed["FRESH"]["bars"] == 0 and "NaN or infinite" in listed["FRESH"]["refused"]
        assert listed["SYN000"]["refused"] is None
        run = _cli(["backtest", "buy_and_hold", "--json"], env, tmp_path)
        assert run.returncode == 0, run.stderr

    # Rows put right in PostgreSQL: the next incremental export reads the refused symbols whole.
    _sql(database_url, "DELETE FROM crypto_prices WHERE NOT (isfinite(datetime) AND datetime > '1970-01-01' "
                       "AND datetime < '2100-01-01') OR open_price::text IN ('NaN', '-1') OR high_price < low_price "
                       "OR high_price = 'Infinity' OR extract(minute FROM datetime) <> 0")
    assert _warnings(_cli(["export", "--no-prefect"], env, tmp_path)) == []
    listed = _listed(env, tmp_path)
    assert all(row["refused"] is None for row in listed.values())
    assert "FRESH" not in listed  # no row left
    for symbol in refused:
        assert listed[symbol]["bars"] == before[symbol]["bars"]


def _bars_csv(path: Path, start: str, count: int, minutes: int = 60) -> None:
    from datetime import datetime, timedelta

    first = datetime.fromisoformat(start)
    lines = [f"{(first + timedelta(minutes=minutes * i)).isoformat(sep=' ')},1,2,0.5,{1 + i % 3 * 0.1},10"
             for i in range(count)]
    path.write_text("date,open,high,low,close,volume\n" + "\n".join(lines) + "\n")


def test_the_bar_time_window_is_a_setting_checked_in_one_line(database_url, tmp_path):
    import json

    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": "", "CRYPTOBT_LAKE_ROOT": str(tmp_path / "lake"),
           "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "results")}
    _bars_csv(tmp_path / "OLD.csv", "1965-03-01 00:00", 48)
    older = {**env, "CRYPTOBT_EARLIEST_BAR": "1960-01-01"}
    done = _cli(["db", "import", str(tmp_path / "OLD.csv")], older, tmp_path)
    assert done.returncode == 0, done.stderr
    line = _one_line(_cli(["db", "import", str(tmp_path / "OLD.csv"), "--symbol", "OLDER"], env, tmp_path))
    assert "OLD.csv line 2: the time is outside 1970-01-01 .. now + 1 day (CRYPTOBT_EARLIEST_BAR" in line
    assert _cli(["export", "--no-prefect"], older, tmp_path).returncode == 0
    run = _cli(["backtest", "buy_and_hold", "-s", "OLD", "--json"], older, tmp_path)
    (result,) = json.loads(run.stdout)["results"]
    assert result["bars"] == 48 and result["start"].startswith("1965-03-01")
    # A narrower window refuses what the default takes.
    _bars_csv(tmp_path / "NEWER.csv", "2018-01-01 00:00", 48)
    line = _one_line(_cli(["db", "import", str(tmp_path / "NEWER.csv")],
                          {**env, "CRYPTOBT_EARLIEST_BAR": "2020-01-01"}, tmp_path))
    assert "NEWER.csv line 2: the time is outside 2020-01-01 .. now + 1 day" in line
    for setting, value, message in [
        ("CRYPTOBT_EARLIEST_BAR", "garbage", "CRYPTOBT_EARLIEST_BAR='garbage' is not a date; use YYYY-MM-DD"),
        ("CRYPTOBT_EARLIEST_BAR", "1800-01-01", "CRYPTOBT_EARLIEST_BAR='1800-01-01' is out of range"),
        ("CRYPTOBT_EARLIEST_BAR", "2999-01-01", "CRYPTOBT_EARLIEST_BAR='2999-01-01' is out of range"),
        ("CRYPTOBT_MAX_DAYS_AHEAD", "nan", "CRYPTOBT_MAX_DAYS_AHEAD='nan' is not a number"),
        ("CRYPTOBT_MAX_DAYS_AHEAD", "-1", "CRYPTOBT_MAX_DAYS_AHEAD=-1.0 is out of range"),
    ]:
        for args in (["db", "import", str(tmp_path / "NEWER.csv")], ["export", "--no-prefect"]):
            assert message in _one_line(_cli(args, {**env, setting: value}, tmp_path))


def test_a_single_bar_file_needs_its_interval_and_is_stored_at_it(database_url, tmp_path):
    import json

    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": "", "CRYPTOBT_LAKE_ROOT": str(tmp_path / "lake"),
           "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "results")}
    _bars_csv(tmp_path / "ONE.csv", "2024-01-01 00:05", 1)
    line = _one_line(_cli(["db", "import", str(tmp_path / "ONE.csv")], env, tmp_path))
    assert "ONE.csv: a single bar says nothing about its interval; pass --interval" in line
    assert _sql(database_url, "SELECT count(*) FROM cryptocurrencies") == [(0,)], "nothing was written"
    done = _cli(["db", "import", str(tmp_path / "ONE.csv"), "--interval", "5m"], env, tmp_path)
    assert done.returncode == 0 and "at 5m" in done.stdout, done.stderr
    _bars_csv(tmp_path / "TWO.csv", "2024-01-01 00:05", 2, minutes=5)
    done = _cli(["db", "import", str(tmp_path / "TWO.csv")], env, tmp_path)
    assert done.returncode == 0 and "at 5m" in done.stdout, done.stderr
    stored = _sql(database_url, "SELECT c.symbol, p.interval_type, p.datetime, p.bars FROM cryptocurrencies c "
                                "JOIN LATERAL (SELECT interval_type, min(datetime) AS datetime, count(*) AS bars "
                                "FROM crypto_prices WHERE crypto_id = c.id GROUP BY 1) p ON true "
                                "WHERE p.interval_type = '5m' ORDER BY 1")
    assert [(s, i, n) for s, i, _, n in stored] == [("ONE", "5m", 1), ("TWO", "5m", 2)]
    assert stored[0][2].isoformat() == "2024-01-01T00:05:00+00:00"  # a 5m bar, not a day labelled at midnight
    assert _cli(["export", "--no-prefect"], env, tmp_path).returncode == 0
    listed = {row["symbol"]: row for row in json.loads(_cli(["data", "list", "--json"], env, tmp_path).stdout)}
    assert listed["ONE"]["interval"] == "5m" and listed["ONE"]["bars"] == 1
    assert listed["TWO"]["interval"] == "5m" and listed["TWO"]["bars"] == 2


def test_a_refused_symbol_keeps_its_bars_from_its_own_source_only(tmp_path):
    from datetime import UTC, datetime, timedelta

    import polars as pl

    from pipeline.lake import snapshots as lake
    from pipeline.lake.commit import commit

    def bars(symbols: list[str]) -> pl.DataFrame:
        ts = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=i) for i in range(30)]
        return pl.concat([pl.DataFrame({"symbol": s, "ts": ts, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5,
                                        "volume": 1.0}) for s in symbols])

    root = tmp_path / "lake"
    with lake.export_lock(root):
        commit(root, bars(["A", "B"]), {"A": "1h", "B": "1h"}, full=True, watermark=None, rows_read=60,
               source="one")
        kept = commit(root, bars(["B"]), {"A": "1h", "B": "1h"}, full=True, watermark=None, rows_read=30,
                      source="one", refused={"A": "bad"})
        assert sorted(kept.snapshot.symbols) == ["A", "B"] and kept.snapshot.manifest["refused"] == {"A": "bad"}
        other = commit(root, bars(["B"]), {"A": "1h", "B": "1h"}, full=False, watermark=None, rows_read=30,
                      source="two", refused={"A": "bad"})
        assert sorted(other.snapshot.symbols) == ["B"], "another source's A is never kept for this source's A"


# --- item 6: source changes the export follows ---------------------------------------------------------------


def _exported_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    from pipeline.source import loaders

    loaders.seed_database(database_url, 3, 0.05, 1)
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": "", "CRYPTOBT_LAKE_ROOT": str(tmp_path / "lake"),
           "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "results"), "COLUMNS": "200"}
    assert _cli(["export", "--no-prefect"], env, tmp_path).returncode == 0
    return env


def _closes(url: str, symbol: str) -> list[float]:
    return [c for (c,) in _sql(url, "SELECT p.close_price FROM crypto_prices p JOIN cryptocurrencies c ON c.id = "
                                    "p.crypto_id WHERE c.symbol = %s AND p.interval_type = '1h' ORDER BY p.datetime",
                               (symbol,))]


def _buy_and_hold(env: dict[str, str], cwd: Path, symbol: str) -> dict:
    import json

    done = _cli(["backtest", "buy_and_hold", "-s", symbol, "--json"], env, cwd)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)["results"]
    return result


def test_a_symbol_renamed_in_postgresql_is_exported_under_its_new_name_only(database_url, tmp_path):
    env = _exported_env(database_url, tmp_path)
    before = _listed(env, tmp_path)
    closes = _closes(database_url, "SYN001")
    for args, old, new in ((["export", "--no-prefect"], "SYN001", "RENAMED"),
                           (["export", "--no-prefect", "--full"], "RENAMED", "AGAIN")):
        _sql(database_url, "UPDATE cryptocurrencies SET symbol = %s WHERE symbol = %s", (new, old))
        assert _warnings(_cli(args, env, tmp_path)) == [], args
        listed = _listed(env, tmp_path)
        assert sorted(listed) == sorted(["SYN000", "SYN002", new]), (args, sorted(listed))  # no ghost of `old`
        assert listed[new]["bars"] == before["SYN001"]["bars"] == len(closes)
        assert listed[new]["data_version"] == before["SYN001"]["data_version"]  # the same rows
        result = _buy_and_hold(env, tmp_path, new)
        assert result["bars"] == len(closes)
        assert result["buy_hold_return_pct"] == pytest.approx((closes[-1] / closes[0] - 1) * 100, rel=1e-12)
        assert "unchanged" in _cli(["export", "--no-prefect"], env, tmp_path).stdout


def test_prices_whose_symbol_row_was_deleted_are_skipped_with_one_warning(database_url, tmp_path):
    env = _exported_env(database_url, tmp_path)
    ((crypto_id, rows),) = _sql(database_url, "SELECT c.id, count(*) FROM cryptocurrencies c JOIN crypto_prices p "
                                              "ON p.crypto_id = c.id WHERE c.symbol = 'SYN001' GROUP BY c.id")
    _sql(database_url, "DELETE FROM cryptocurrencies WHERE symbol = 'SYN001'")
    for args in (["export", "--no-prefect"], ["export", "--no-prefect", "--full"]):
        warned = _warnings(_cli(args, env, tmp_path))
        assert warned == [f"warning: crypto id {crypto_id}: {rows:,} price row(s) in crypto_prices have no "
                          "cryptocurrencies row; skipped (give them a symbol: INSERT INTO cryptocurrencies (id, "
                          "symbol) ..., or delete them)"], warned
        assert sorted(_listed(env, tmp_path)) == ["SYN000", "SYN002"]
        assert _buy_and_hold(env, tmp_path, "SYN002")["bars"] > 0
    # Given its row back, the symbol returns whole, incrementally.
    _sql(database_url, "INSERT INTO cryptocurrencies (id, symbol) VALUES (%s, 'SYN001')", (crypto_id,))
    assert _warnings(_cli(["export", "--no-prefect"], env, tmp_path)) == []
    assert _buy_and_hold(env, tmp_path, "SYN001")["bars"] == len(_closes(database_url, "SYN001"))


def test_a_seed_killed_inside_copy_leaves_no_symbol_without_prices_and_a_rerun_completes(database_url, tmp_path):
    import signal
    import time

    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": ""}
    args = [sys.executable, "-m", "pipeline", "db", "seed", "--cryptos", "60", "--years", "2", "--seed", "3"]
    seed = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    copying = "SELECT count(*) FROM pg_stat_progress_copy WHERE datname = current_database() AND tuples_processed > 0"
    try:
        deadline = time.monotonic() + 300
        while seed.poll() is None and time.monotonic() < deadline and _sql(database_url, copying) == [(0,)]:
            time.sleep(0.01)
        assert seed.poll() is None, "the seed finished before it was seen copying"
        seed.send_signal(signal.SIGKILL)
        seed.wait(timeout=30)
    finally:
        if seed.poll() is None:
            seed.kill()
    others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    deadline = time.monotonic() + 60
    while _sql(database_url, others) != [(0,)] and time.monotonic() < deadline:  # the server notices the EOF
        time.sleep(0.1)
    ((symbols, without, rows),) = _sql(database_url, "SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT 1 "
                                                     "FROM crypto_prices p WHERE p.crypto_id = c.id)), (SELECT count(*) "
                                                     "FROM crypto_prices) FROM cryptocurrencies c")
    assert rows < 60 * 17_520, "the kill landed before the load committed"
    assert without == 0, f"{without} of {symbols} symbols were committed without prices"
    rerun = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert _sql(database_url, "SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM crypto_prices p "
                              "WHERE p.crypto_id = c.id)) FROM cryptocurrencies c") == [(60, 0)]
