"""The export's steps, PostgreSQL -> lake. `flows/export.py` runs them as Prefect tasks;
`run_export` runs the same steps in-process (cron, tests, `cryptobt export --no-prefect`).

Steps hand each other paths, not frames: the extract lands in the lake's staging area
as Parquet, so a retried commit never re-reads PostgreSQL.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from pipeline import lake, source
from pipeline.config import Settings
from pipeline.errors import disk_full, is_disk_full


@dataclass(frozen=True)
class StagedExtract:
    path: Path  # Arrow IPC file of the changed hourly rows
    symbols_path: Path
    watermark: datetime
    rows_read: int
    seconds: float


@dataclass(frozen=True)
class ExportReport:
    snapshot_id: str
    created: bool
    rows_read: int
    changed_symbols: list[str]
    files_written: int
    files_linked: int
    removed_snapshots: list[str]
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else float("inf")


def since_for(settings: Settings, full: bool) -> datetime | None:
    """The watermark to read from: None (everything) for a full or first export."""
    if full:
        return None
    parent = lake.current_snapshot(settings.lake_root)
    return None if parent is None else parent.watermark


def extract_to_staging(settings: Settings, since: datetime | None) -> StagedExtract:
    """Read the rows changed since `since` and park them in the lake's staging area."""
    started = time.perf_counter()
    extract = source.extract_changed(
        settings.database_url, since, connections=settings.export_connections
    )
    staging = Path(settings.lake_root) / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    stem = lake.new_snapshot_id()
    path = staging / f"extract-{stem}.arrow"
    symbols_path = staging / f"extract-{stem}.symbols.json"
    try:
        extract.frames["1h"].rename({"crypto_id": "symbol_id"}).write_ipc(path, compression="uncompressed")
        symbols_path.write_text(json.dumps({str(k): v for k, v in extract.symbols.items()}))
    except BaseException as exc:
        path.unlink(missing_ok=True)
        symbols_path.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(settings.lake_root, _bytes_needed(extract.rows_read), "CRYPTOBT_LAKE_ROOT") from None
        raise
    return StagedExtract(path, symbols_path, extract.watermark, extract.rows_read,
                         time.perf_counter() - started)


def commit_staged(settings: Settings, staged: StagedExtract, full: bool,
                  fail_at: str | None = None) -> lake.CommitResult:
    """Merge the staged rows into a new snapshot (or none, if nothing changed)."""
    hourly = pl.read_ipc(staged.path)
    symbols = {int(k): v for k, v in json.loads(staged.symbols_path.read_text()).items()}
    result = lake.commit(
        settings.lake_root, hourly, symbols, full=full, watermark=staged.watermark,
        rows_read=staged.rows_read, source="postgresql", fail_at=fail_at,
    )
    staged.path.unlink(missing_ok=True)
    staged.symbols_path.unlink(missing_ok=True)
    return result


def _bytes_needed(rows: int) -> int:
    """About what an export of `rows` writes: the staged extract (uncompressed Arrow IPC, ~52 bytes
    a row) and the new snapshot files (zstd Parquet, ~10 bytes a row)."""
    return rows * 62


def vacuum(settings: Settings) -> list[str]:
    return lake.vacuum(settings.lake_root, keep=settings.snapshot_keep,
                       keep_hours=settings.snapshot_keep_hours)


def run_export(
    settings: Settings,
    *,
    full: bool = False,
    wait_seconds: float = 0.0,
    fail_at: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> ExportReport:
    """Export PostgreSQL into a new lake snapshot, in-process. `fail_at` is for kill tests."""
    started = time.perf_counter()
    lake.check_writable(settings.lake_root)
    with lake.export_lock(settings.lake_root, wait_seconds=wait_seconds):
        if not full:
            # An incremental export builds on the current snapshot: it must be whole (a stat per file).
            current = lake.current_snapshot(settings.lake_root)
            if current is not None:
                lake.check_snapshot(current)
        since = since_for(settings, full)
        log(f"reading rows changed since {since.isoformat() if since else 'the beginning'}")
        staged = None
        try:
            staged = extract_to_staging(settings, since)
            log(f"read {staged.rows_read:,} rows in {staged.seconds:.2f} s")
            if fail_at == "after-read":
                os._exit(137)
            result = commit_staged(settings, staged, full, fail_at=fail_at)
        except Exception as exc:
            if is_disk_full(exc) and staged is not None:
                raise disk_full(settings.lake_root, _bytes_needed(staged.rows_read), "CRYPTOBT_LAKE_ROOT") from None
            raise
        finally:
            # The export's own staging goes on every exit path (a SIGKILL's leftovers go at the next vacuum).
            if staged is not None:
                staged.path.unlink(missing_ok=True)
                staged.symbols_path.unlink(missing_ok=True)
        removed = vacuum(settings)
    return ExportReport(
        snapshot_id=result.snapshot.id, created=result.created, rows_read=result.rows_read,
        changed_symbols=result.changed_symbols, files_written=result.files_written,
        files_linked=result.files_linked, removed_snapshots=removed,
        seconds=time.perf_counter() - started,
    )
