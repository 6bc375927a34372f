"""A full disk under the lake or the results (issue 18): one line naming the path and the space, nothing lost.

Each test mounts its own small tmpfs (root only; skipped with the reason elsewhere).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from pipeline import runs
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.engine import options
from pipeline.engine.strategies import get_strategy
from pipeline.lake import snapshots as lake
from pipeline.lake.export import run_export
from pipeline.source import loaders


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs, unmounted after the test."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill the disk until only about `leave` bytes are free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    if free > leave:
        with open(disk / "ballast", "wb") as handle:
            handle.write(b"\0" * (free - leave))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "ballast")


def test_export_onto_a_full_disk_fails_in_one_line_and_keeps_the_previous_snapshot(database_url, small_disk):
    loaders.seed_database(database_url, n_symbols=3, years=0.1, seed=1)
    settings = replace(Settings(), database_url=database_url, lake_root=small_disk / "lake")
    first = run_export(settings)
    before = _files(settings.lake_root)
    rows_before = duckdb.sql(f"SELECT count(*) FROM read_parquet('{settings.lake_root}/current/interval=*/*/*.parquet')"
                             ).fetchall()
    loaders.seed_database(database_url, n_symbols=12, years=0.3, seed=2, replace=True)  # more than the space left
    _fill(small_disk, 200_000)
    with pytest.raises(PipelineError) as caught:
        run_export(settings)
    message = str(caught.value)
    assert "\n" not in message and str(settings.lake_root) in message and "free" in message and "needed" in message
    assert lake.current_snapshot(settings.lake_root).id == first.snapshot_id
    assert _files(settings.lake_root) == before, "no temporary file is left behind"
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{settings.lake_root}/current/interval=*/*/*.parquet')"
                      ).fetchall() == rows_before
    (small_disk / "ballast").unlink()
    assert run_export(settings).created  # with room again, the next export goes through


def test_a_full_export_whose_spooled_read_fills_the_disk_fails_in_one_line_and_keeps_the_snapshot(database_url,
                                                                                                  small_disk):
    """A full export spools psql's streams beside the lake (pipeline.source.extract): a disk that fills while
    they are written is named with the space a read of the table needs, nothing is left in the staging area."""
    loaders.seed_database(database_url, n_symbols=3, years=0.1, seed=1)
    settings = replace(Settings(), database_url=database_url, lake_root=small_disk / "lake")
    first = run_export(settings, full=True)
    before = _files(settings.lake_root)
    loaders.seed_database(database_url, n_symbols=12, years=0.3, seed=2, replace=True)
    _fill(small_disk, 100_000)
    with pytest.raises(PipelineError) as caught:
        run_export(settings, full=True)
    message = str(caught.value)
    # Named where the read was spooled (before, the full read was held in memory and failed in the staging write).
    assert message.startswith(f"no space left on the disk holding {settings.lake_root / '.staging'}:")
    assert "\n" not in message and "MiB needed" in message and "lost PostgreSQL" not in message
    assert lake.current_snapshot(settings.lake_root).id == first.snapshot_id
    assert _files(settings.lake_root) == before, "no spooled stream is left behind"
    (small_disk / "ballast").unlink()
    assert run_export(settings, full=True).created


def test_results_onto_a_full_disk_fail_in_one_line_and_keep_earlier_results(tmp_path, small_disk):
    from pipeline import demo

    lake_root = tmp_path / "lake"
    demo.build_sample_lake(lake_root, n_symbols=6, years=0.3, sample=None)
    settings = replace(Settings(), lake_root=lake_root, results_root=small_disk / "results", redis_url="")
    config = options.run_config(get_strategy("rsi"), {})
    first = runs.backtest(settings, config)
    before = _files(small_disk)
    _fill(small_disk, 4_000)
    big = options.run_config(get_strategy("rsi"), [{"rsi_period": p} for p in range(2, 60)])
    with pytest.raises(PipelineError) as caught:
        runs.backtest(settings, big)
    message = str(caught.value)
    assert "\n" not in message and str(settings.results_root) in message and "free" in message
    assert _files(small_disk) == before, "no temporary file is left behind"
    rows = duckdb.sql(f"SELECT run_id, count(*) FROM read_parquet('{settings.results_root}/**/*.parquet') "
                      "GROUP BY run_id").fetchall()
    assert rows == [(first.run_id, 6)]


@pytest.mark.slow
def test_cli_says_one_line_on_a_full_disk(tmp_path, small_disk):
    from pipeline import demo

    lake_root = tmp_path / "lake"
    demo.build_sample_lake(lake_root, n_symbols=6, years=0.3, sample=None)
    _fill(small_disk, 4_000)
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(lake_root), "CRYPTOBT_RESULTS_ROOT": str(small_disk / "results"),
           "REDIS_URL": ""}
    done = subprocess.run([sys.executable, "-m", "pipeline", "sweep", "rsi", "-g", "rsi_period=2:60:1"], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1 and "no space left" in lines[0], done.stderr
