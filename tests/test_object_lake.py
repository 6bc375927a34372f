"""The lake on S3-compatible object storage (issue 31), against a real S3 server (moto's, a process):
the same numbers as on a local disk, atomic commits by a conditional head write, vacuum that never
takes what a head or a reader still names, damage refused, bad settings in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import psycopg
import pytest

from pipeline.core import objects
from pipeline.core.config import Settings
from pipeline.core.errors import FileDamaged, LakeBusy
from pipeline.core.objects import ObjectPath
from pipeline.demo import build_sample_lake
from pipeline.lake import commit as lake_commit
from pipeline.lake import retention, verify
from pipeline.lake import snapshots as lake
from pipeline.lake.export import run_export
from pipeline.source import loaders
from tests.cli_env import ROOT, cli_environment


def _rows(lake_root: Path | ObjectPath) -> list[tuple]:
    """Every stored bar of the current snapshot (every interval), read with DuckDB, sorted."""
    snapshot = lake.current_snapshot(lake_root)
    con = duckdb.connect()
    found = []
    for interval in sorted(snapshot.manifest["files"]):
        paths = snapshot.files(interval)
        files = (con.from_arrow(objects.dataset(paths)) if isinstance(lake_root, ObjectPath)
                 else con.read_parquet([str(p) for p in paths]))
        found += [(interval, *row) for row in
                  files.project("symbol_id, ts, open, high, low, close, volume").order("symbol_id, ts").fetchall()]
    return found


def _cli(lake_root: Path | ObjectPath, results: Path, *args: str) -> subprocess.CompletedProcess:
    environment = cli_environment(lake_root, results)  # type: ignore[arg-type]
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=environment, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _numbers(stdout: str) -> list[dict]:
    """A --json answer's results without what differs between two runs (ids, times)."""
    answer = json.loads(stdout)
    return [{k: v for k, v in r.items() if k not in ("run_id", "snapshot_id", "computed_snapshot_id")} for r in answer.get("results", answer.get("best"))]


@pytest.mark.slow
def test_a_lake_on_s3_gives_the_numbers_of_the_same_lake_on_disk(s3_bucket, tmp_path):
    remote = ObjectPath(f"s3://{s3_bucket}/team/lake")
    local = tmp_path / "lake"
    for root in (remote, local):
        build_sample_lake(root, n_symbols=4, years=0.5, sample=None)
    assert _rows(remote) == _rows(local)
    assert lake.current_snapshot(remote).data_versions() == lake.current_snapshot(local).data_versions()
    for command in (["backtest", "rsi", "--all", "--json"],
                    ["sweep", "rsi", "--all", "--grid", "rsi_period=7,14", "--grid", "oversold_threshold=25,30",
                     "--json"]):
        on_s3 = _cli(remote, tmp_path / "results-s3", *command)
        on_disk = _cli(local, tmp_path / "results-disk", *command)
        assert on_s3.returncode == 0, on_s3.stderr
        assert on_disk.returncode == 0, on_disk.stderr
        assert _numbers(on_s3.stdout) == _numbers(on_disk.stdout)
        assert _numbers(on_s3.stdout)
    # Nothing of the lake was written to this machine but its own cache (lock, staging, kept grids).
    assert not any(p.name == "lake" for p in tmp_path.glob("results-s3/**"))
    listing = _cli(remote, tmp_path / "results-s3", "lake", "snapshots", "--json")
    assert listing.returncode == 0, listing.stderr


@pytest.mark.slow
def test_export_from_postgresql_to_s3_full_then_incremental_equals_a_local_export(s3_bucket, database_url,
                                                                                  tmp_path):
    loaders.seed_database(database_url, n_symbols=4, years=0.4, seed=5)
    remote = replace(Settings(), database_url=database_url, lake_root=ObjectPath(f"s3://{s3_bucket}/lake"),
                     results_root=tmp_path / "results", snapshot_keep=2, snapshot_keep_hours=0)
    local = replace(remote, lake_root=tmp_path / "lake")
    first = run_export(remote)
    assert first.created
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE crypto_prices SET volume = volume + 1 WHERE interval_type = '1h'"
                     " AND datetime = (SELECT max(datetime) FROM crypto_prices)")
    second = run_export(remote)
    assert second.created and second.snapshot_id != first.snapshot_id
    assert second.files_linked > 0  # the years it did not rewrite: server-side copies of the parent's objects
    run_export(local, full=True)
    assert _rows(remote.lake_root) == _rows(local.lake_root)
    assert lake.current_snapshot(remote.lake_root).data_versions() == \
        lake.current_snapshot(local.lake_root).data_versions()
    assert verify.problems(lake.current_snapshot(remote.lake_root).path) == []
    assert not run_export(remote).created  # nothing changed: the current snapshot stands


def test_two_commits_built_on_the_same_head_one_wins_and_the_other_leaves_nothing(s3_bucket, monkeypatch):
    root = ObjectPath(f"s3://{s3_bucket}/lake")
    first = build_sample_lake(root, n_symbols=2, years=0.2, sample=None).snapshot
    # The loser read the heads before the winner wrote its own: replay that order for certain.
    heads_then = lake.list_heads(root)
    winner = build_sample_lake(root, n_symbols=3, years=0.2, sample=None).snapshot
    with monkeypatch.context() as patched, \
            pytest.raises(LakeBusy, match=f"another export committed snapshot {winner.id}"):
        patched.setattr(lake_commit, "list_heads", lambda _root: heads_then)
        build_sample_lake(root, n_symbols=4, years=0.2, sample=None)
    assert lake.current_snapshot(root).id == winner.id
    assert [s.id for s in lake.list_snapshots(root)] == [first.id, winner.id]
    assert [p.name for p in (root / "snapshots").iterdir()] == [first.id, winner.id]  # the loser's objects went


def test_a_conditional_write_has_exactly_one_winner_among_racing_writers(s3_bucket):
    from concurrent.futures import ThreadPoolExecutor

    key = ObjectPath(f"s3://{s3_bucket}/lake/_heads/000000000001.json")
    with ThreadPoolExecutor(max_workers=8) as pool:
        won = list(pool.map(lambda i: key.put_if_absent(f"writer {i}".encode()), range(8)))
    assert won.count(True) == 1
    assert key.read_text() == f"writer {won.index(True)}"


KILLED_COMMIT = textwrap.dedent("""
    import sys
    from pipeline.core.objects import ObjectPath
    from pipeline.demo import build_sample_lake
    from pipeline.lake import commit
    real = commit.publish_objects
    def dying(*args):
        return real(*args[:-1], "before-commit")
    commit.publish_objects = dying
    build_sample_lake(ObjectPath(sys.argv[1]), n_symbols=3, years=0.2, sample=None)
""")


@pytest.mark.slow
def test_a_commit_killed_before_its_head_leaves_the_lake_as_it_was(s3_bucket, tmp_path):
    root = ObjectPath(f"s3://{s3_bucket}/lake")
    before = build_sample_lake(root, n_symbols=2, years=0.2, sample=None).snapshot
    rows = _rows(root)
    child = subprocess.run([sys.executable, "-c", KILLED_COMMIT, str(root)], env=dict(os.environ), cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 137, child.stderr
    # Its objects are all there, manifest included, but no head names them: no reader sees them.
    assert len(list((root / "snapshots").iterdir())) == 2
    assert lake.current_snapshot(root).id == before.id
    assert [s.id for s in lake.list_snapshots(root)] == [before.id]
    assert _rows(root) == rows
    # A vacuum within the grace hour leaves them (an export elsewhere may be uploading); after it, they go.
    retention.vacuum(root, keep=5, keep_hours=0)
    assert len(list((root / "snapshots").iterdir())) == 2
    retention.vacuum(root, keep=5, keep_hours=0, now=datetime.now(UTC) + timedelta(hours=2))
    assert [p.name for p in (root / "snapshots").iterdir()] == [before.id]
    after = build_sample_lake(root, n_symbols=3, years=0.2, sample=None).snapshot
    assert lake.current_snapshot(root).id == after.id


def test_vacuum_keeps_the_current_snapshot_and_one_a_run_reads(s3_bucket):
    root = ObjectPath(f"s3://{s3_bucket}/lake")
    made = [build_sample_lake(root, n_symbols=n, years=0.1, sample=None).snapshot for n in (2, 3, 4)]
    with lake.reading(root, made[0]):
        removed = retention.vacuum(root, keep=1, keep_hours=0)
        assert removed == [made[1].id]  # the read one waits for a later vacuum
        assert [s.id for s in lake.list_snapshots(root)] == [made[0].id, made[2].id]
    assert retention.vacuum(root, keep=1, keep_hours=0) == [made[0].id]
    assert [s.id for s in lake.list_snapshots(root)] == [made[2].id]
    assert [p.name for p in (root / "snapshots").iterdir()] == [made[2].id]
    assert retention.vacuum(root, keep=1, keep_hours=0) == []  # never the current one
    assert len(_rows(root)) > 0


def test_an_object_rewritten_behind_the_lake_is_refused_and_named(s3_bucket, tmp_path):
    root = ObjectPath(f"s3://{s3_bucket}/lake")
    snapshot = build_sample_lake(root, n_symbols=2, years=0.2, sample=None).snapshot
    victim = snapshot.files("1h")[0]
    victim.write_bytes(victim.read_bytes()[:-10])  # truncated by someone else's tool
    with pytest.raises(FileDamaged, match="is not the file snapshot"):
        verify.check_files(snapshot)
    assert any(str(victim) in p for p in verify.problems(snapshot.path))
    answer = _cli(root, tmp_path / "results", "backtest", "rsi", "--all")
    assert answer.returncode != 0
    assert str(victim) in answer.stderr and "Traceback" not in answer.stderr


@pytest.mark.parametrize(("variables", "named"), [
    ({"CRYPTOBT_LAKE_ROOT": "s3://no-such-bucket-here/lake"}, "CRYPTOBT_LAKE_ROOT=s3://no-such-bucket-here/lake"),
    ({"AWS_ENDPOINT_URL": "ftp://nowhere"}, "AWS_ENDPOINT_URL 'ftp://nowhere'"),
    ({"CRYPTOBT_LAKE_ROOT": "s3://"}, "'s3://' is not an object location"),
])
def test_bad_object_storage_settings_fail_in_one_line(s3_bucket, tmp_path, variables, named):
    environment = cli_environment(ObjectPath(f"s3://{s3_bucket}/lake"), tmp_path / "results")  # type: ignore[arg-type]
    environment.update(variables)
    answer = subprocess.run([sys.executable, "-m", "pipeline", "backtest", "rsi", "--all"], env=environment,
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert answer.returncode != 0
    assert named in answer.stderr, answer.stderr
    assert "Traceback" not in answer.stderr
    assert len(answer.stderr.strip().splitlines()) <= 2, answer.stderr


@pytest.mark.skipif(shutil.which("minio") is None, reason="no `minio` binary on PATH: the MinIO run is skipped "
                    "(moto's S3 server runs every other test of this module)")
def test_the_same_lake_on_minio(tmp_path, monkeypatch):
    import time
    import urllib.request

    import boto3

    from tests.api_server import free_port

    port = free_port()
    server = subprocess.Popen(["minio", "server", str(tmp_path / "minio"), "--address", f"127.0.0.1:{port}"],
                              env={**os.environ, "MINIO_ROOT_USER": "minioadmin", "MINIO_ROOT_PASSWORD": "minioadmin"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/minio/health/live", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "minioadmin",
                            "AWS_SECRET_ACCESS_KEY": "minioadmin", "AWS_DEFAULT_REGION": "us-east-1",
                            "CRYPTOBT_LOCAL_CACHE": str(tmp_path / "cache")}.items():
            monkeypatch.setenv(name, value)
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="lake-minio")
        remote = ObjectPath("s3://lake-minio/lake")
        build_sample_lake(remote, n_symbols=3, years=0.2, sample=None)
        build_sample_lake(tmp_path / "lake", n_symbols=3, years=0.2, sample=None)
        assert _rows(remote) == _rows(tmp_path / "lake")
        key = remote / "_heads" / "000000000001.json"
        assert not key.put_if_absent(b"{}")  # MinIO honours If-None-Match
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.slow
def test_a_sweep_on_workers_with_lake_and_results_on_s3_equals_one_process_on_disk(s3_bucket, tmp_path):
    """Issue 31's whole path: the lake and the results table on S3, the sweep's chunks on two local Dask
    workers that read the lake and write their parts there; the published rows equal, bit for bit, those of
    one process on the same lake on a local disk. `results` commands read the table on S3."""
    import math

    import pyarrow.parquet as pq

    remote = ObjectPath(f"s3://{s3_bucket}/lake")
    local = tmp_path / "lake"
    for root in (remote, local):
        build_sample_lake(root, n_symbols=4, years=0.3, sample=None)
    sweep = ["sweep", "rsi", "-g", "rsi_period=7,14,21", "-g", "oversold_threshold=20,25,30", "--all",
             "--stats", "spa,psr", "--reps", "50", "--json", "--yes"]
    results_on_s3 = f"s3://{s3_bucket}/results"
    spread = _cli(remote, results_on_s3, *sweep, "--workers", "2", "--chunk-sets", "4")  # type: ignore[arg-type]
    single = _cli(local, tmp_path / "results", *sweep)
    assert spread.returncode == 0, spread.stderr
    assert single.returncode == 0, single.stderr
    spread_id, single_id = json.loads(spread.stdout)["run_id"], json.loads(single.stdout)["run_id"]
    files = [k for k in ObjectPath(results_on_s3).walk_files() if k.endswith(f"{spread_id}.parquet")]
    assert len(files) == 1, files
    on_s3 = pq.read_table(f"{s3_bucket}/results/{files[0]}", filesystem=objects.filesystem())
    on_disk = pq.read_table(next((tmp_path / "results").glob(f"run_date=*/strategy=*/{single_id}.parquet")))
    skip = {"run_id", "created_at", "snapshot_id", "computed_snapshot_id"}
    assert on_s3.column_names == on_disk.column_names
    for name in (n for n in on_disk.column_names if n not in skip):
        for a, b in zip(on_s3.column(name).to_pylist(), on_disk.column(name).to_pylist(), strict=True):
            assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), name
    assert not (ObjectPath(f"s3://{s3_bucket}/sweeps") / spread_id).exists()  # parts gone once published
    shown = _cli(remote, results_on_s3, "results", "show", spread_id, "--json")  # type: ignore[arg-type]
    assert shown.returncode == 0, shown.stderr
    counted = _cli(remote, results_on_s3, "results", "sql",  # type: ignore[arg-type]
                   f"SELECT count(*) AS n FROM results WHERE run_id = '{spread_id}'", "--json")
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout) == [{"n": on_s3.num_rows}]


def test_the_api_serves_a_lake_and_results_on_s3(s3_bucket):
    """`cryptobt api` over a lake and a results table on S3: the catalog, a backtest, the run's rows."""
    import httpx

    from tests.api_server import serving

    root = ObjectPath(f"s3://{s3_bucket}/lake")
    build_sample_lake(root, n_symbols=2, years=0.3, sample=None)
    settings = replace(Settings(), lake_root=root, results_root=ObjectPath(f"s3://{s3_bucket}/results"),
                       redis_url="", cache_enabled=False)
    with serving(settings) as (base, _app), httpx.Client(base_url=base, timeout=60) as client:
        symbols = client.get("/api/symbols")
        assert symbols.status_code == 200, symbols.text
        answer = client.post("/api/backtest", json={"strategy": "rsi", "all": True})
        assert answer.status_code == 200, answer.text
        rows = client.get(f"/api/results/{answer.headers['x-run-id']}")
        assert rows.status_code == 200, rows.text
        assert sorted(r["symbol"] for r in rows.json()) == sorted(r["symbol"] for r in answer.json())
    assert any(key.endswith(f"{answer.headers['x-run-id']}.parquet")
               for key in ObjectPath(f"s3://{s3_bucket}/results").walk_files())


EXPORT_CHILD = textwrap.dedent("""
    import sys
    from dataclasses import replace
    from pipeline.core import objects
    from pipeline.core.config import Settings
    from pipeline.lake.export import run_export
    settings = replace(Settings(), database_url=sys.argv[1], lake_root=objects.location(sys.argv[2]),
                       snapshot_keep=2, snapshot_keep_hours=0)
    run_export(settings, fail_at=sys.argv[3])
""")


@pytest.mark.slow
@pytest.mark.parametrize("fail_at", ["after-read", "mid-write", "before-commit"])
def test_an_export_to_s3_killed_midway_leaves_the_lake_as_it_was_and_the_next_completes(s3_bucket, database_url,
                                                                                        tmp_path, fail_at):
    """The local disk's kill test (tests/test_lake.py), with the lake on S3."""
    loaders.seed_database(database_url, n_symbols=3, years=0.3, seed=7)
    remote = replace(Settings(), database_url=database_url, lake_root=ObjectPath(f"s3://{s3_bucket}/lake"),
                     results_root=tmp_path / "results", snapshot_keep=2, snapshot_keep_hours=0)
    previous = run_export(remote).snapshot_id
    rows = _rows(remote.lake_root)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE crypto_prices SET volume = volume + 1 WHERE interval_type = '1h'"
                     " AND datetime = (SELECT max(datetime) FROM crypto_prices)")
    child = subprocess.run([sys.executable, "-c", EXPORT_CHILD, database_url, str(remote.lake_root), fail_at],
                           env=dict(os.environ), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert child.returncode == 137, child.stderr
    assert lake.current_snapshot(remote.lake_root).id == previous
    assert [s.id for s in lake.list_snapshots(remote.lake_root)] == [previous]
    assert _rows(remote.lake_root) == rows
    finished = run_export(remote)
    assert finished.created
    reference = replace(remote, lake_root=tmp_path / "reference")
    run_export(reference)
    assert _rows(remote.lake_root) == _rows(reference.lake_root)
