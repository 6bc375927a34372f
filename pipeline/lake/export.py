"""The export's steps, PostgreSQL -> lake. `flows/export.py` runs them as Prefect tasks;
`run_export` runs the same steps in-process (cron, tests, `cryptobt export --no-prefect`).

The flow's steps hand each other paths, not frames: the extract lands in the lake's staging
area as Arrow IPC, so a retried commit never re-reads PostgreSQL. `run_export` runs both steps in
one process and hands the frame over in memory (writing and reading back the staged rows cost a
fifth of a full export).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import polars as pl

from pipeline.core.config import Settings
from pipeline.core.errors import FileDamaged, SnapshotDamaged, disk_full, is_disk_full
from pipeline.lake import retention, verify
from pipeline.lake import snapshots as lake
from pipeline.lake.commit import CommitResult, commit
from pipeline.source import bar_rules, extract, health
from pipeline.source import postgres as source

T = TypeVar("T")


# The extract's retries, the same in the Prefect task and in-process: a restart of PostgreSQL
# explains a refused or dropped connection, which a few seconds later may be gone; a bad query
# fails at once. (No retry library is in our tree; Prefect's retries need its API server, which
# an in-process export does not start.)
EXTRACT_RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed extract is worth another attempt: PostgreSQL unreachable, not a bad query."""
    import psycopg

    from pipeline.core.errors import ServiceUnavailable

    return isinstance(exc, psycopg.OperationalError | ServiceUnavailable)


def with_retries(step: Callable[[], T], log: Callable[[str], None], delays: tuple[float, ...] = EXTRACT_RETRY_DELAYS,
                 ) -> T:
    """`step()`, tried again after each of `delays` while it fails with a transient error."""
    for attempt, delay in enumerate((*delays, None), start=1):
        try:
            return step()
        except Exception as exc:
            if delay is None or not is_transient(exc):
                raise
            log(f"attempt {attempt} failed ({str(exc).strip().splitlines()[0][:200]}); retrying in {delay:g} s")
            time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class StagedExtract:
    path: Path | None  # Arrow IPC file of the changed rows, each symbol's at its native interval
    symbols_path: Path | None  # natives, symbols read whole
    watermark: datetime
    rows_read: int
    seconds: float
    # Symbols whose rows in PostgreSQL the lake refuses (their rows are not staged), with what is wrong.
    refused: dict[str, str] = field(default_factory=dict)
    orphans: dict[int, int] = field(default_factory=dict)  # crypto id without a symbol row -> its price rows
    # In memory instead of the two files (`run_export`): the rows, and {"natives": ..., "whole": [...]}.
    bars: pl.DataFrame | None = None
    symbols: dict | None = None
    hidden_sessions: int = 0  # see extract.Extract
    # The perpetuals' funding and mark rows, read whole (pipeline.lake.futures_table): in memory, or
    # staged beside the prices (`futures_path`).
    futures: pl.DataFrame | None = None
    futures_path: Path | None = None

    def remove(self) -> None:
        """Remove the staged files (if any)."""
        for path in (self.path, self.symbols_path, self.futures_path):
            if path is not None:
                path.unlink(missing_ok=True)


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
    warnings: list[str] = field(default_factory=list)
    rows_written: int = 0  # rows in the Parquet files written (linked files cost nothing)
    bytes_written: int = 0

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else float("inf")


def since_for(settings: Settings, full: bool) -> datetime | None:
    """The watermark to read from: None (everything) for a full or first export, and when the
    current snapshot came from another source (a watermark belongs to one database; the new
    snapshot then replaces the other source's symbols, see pipeline.lake.commit)."""
    if full:
        return None
    parent = lake.current_snapshot(settings.lake_root)
    if parent is None or parent.manifest.get("source") != source.source_id(settings.database_url):
        return None
    return parent.watermark


@dataclass(frozen=True)
class Plan:
    """What an export reads: every row (`full`) or the rows changed since `since`; `warnings` say why a
    full read was not asked for."""

    full: bool
    since: datetime | None
    warnings: list[str] = field(default_factory=list)


def plan(settings: Settings, full: bool) -> Plan:
    """What an export reads, decided under the export lock before PostgreSQL is read.

    An incremental export builds on the current snapshot: it links the files it keeps and reads the
    ones it rewrites. It first compares the sha256 of every one of them with the manifest's (a stat
    cannot see bit rot that keeps size and mtime): a damaged file makes it read every row from
    PostgreSQL, the source of truth, as `--full` does, so the new snapshot holds nothing of it. A
    full export checks the same, to say so (`commit` rebuilds a damaged snapshot, and would keep a
    rotten one whose rows PostgreSQL still has unchanged). A damaged manifest or export state refuses
    an incremental export (`verify.check_snapshot`); a full one rebuilds without it."""
    try:
        current = lake.current_snapshot(settings.lake_root)
        if current is not None and current.manifest.get("source") == source.source_id(settings.database_url):
            verify.check_snapshot(current, deep=True)
    except FileDamaged as exc:
        return Plan(True, None, [f"{exc.path} {exc.problem}; the export read every row from PostgreSQL and "
                                 "rebuilt the snapshot without it"])
    except SnapshotDamaged:
        if not full:
            raise
    return Plan(full, since_for(settings, full))


def extract_to_staging(settings: Settings, since: datetime | None, in_memory: bool = False) -> StagedExtract:
    """Read the rows changed since `since` and park them in the lake's staging area (or keep them
    in memory: `in_memory`, for a commit in the same process)."""
    started = time.perf_counter()
    # Only an incremental read compares natives (a full one reads everything, even past a damaged lake).
    parent = lake.current_snapshot(settings.lake_root) if since is not None else None
    natives_before = {name: meta.get("native", "1h") for name, meta in parent.symbols.items()} if parent else {}
    staging = lake.local_folder(settings.lake_root) / ".staging"  # psql's streams are spooled here first
    staging.mkdir(parents=True, exist_ok=True)
    extracted = extract.extract_changed(
        settings.database_url, since, connections=settings.export_connections, natives_before=natives_before,
        reread=set(parent.manifest.get("refused", {})) if parent else set(), spool=staging,
    )
    # One symbol's bad rows (a user's own INSERT: NaN, a BC time...) never block the others: it is refused alone.
    refused = bar_rules.bad_symbols(extracted.bars, extracted.natives, settings.bar_window)
    bars = extracted.bars.filter(~pl.col("symbol").is_in(list(refused))) if refused else extracted.bars
    symbols = {"natives": extracted.natives, "whole": sorted(extracted.whole)}
    futures = source.read_futures(settings.database_url)
    if in_memory:
        return StagedExtract(None, None, extracted.watermark, extracted.rows_read, time.perf_counter() - started,
                             refused, extracted.orphans, bars, symbols, extracted.hidden_sessions, futures)
    stem = lake.new_snapshot_id()
    path = staging / f"extract-{stem}.arrow"
    symbols_path = staging / f"extract-{stem}.symbols.json"
    futures_path = staging / f"extract-{stem}.futures.arrow"
    try:
        bars.write_ipc(path, compression="uncompressed")
        symbols_path.write_text(json.dumps(symbols))
        futures.write_ipc(futures_path, compression="uncompressed")
    except BaseException as exc:
        path.unlink(missing_ok=True)
        symbols_path.unlink(missing_ok=True)
        futures_path.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(settings.lake_root, _bytes_needed(extracted.rows_read), "CRYPTOBT_LAKE_ROOT") from None
        raise
    return StagedExtract(path, symbols_path, extracted.watermark, extracted.rows_read,
                         time.perf_counter() - started, refused, extracted.orphans,
                         hidden_sessions=extracted.hidden_sessions, futures_path=futures_path)


def commit_staged(settings: Settings, staged: StagedExtract, full: bool,
                  fail_at: str | None = None, strict: bool = False) -> CommitResult:
    """Merge the staged rows into a new snapshot (or none, if nothing changed). The staged
    extract is removed whatever happens: a retry reads PostgreSQL again."""
    try:
        if staged.bars is not None:
            bars, meta, futures = staged.bars, staged.symbols, staged.futures
        else:
            bars, meta = pl.read_ipc(staged.path), json.loads(staged.symbols_path.read_text())
            futures = (pl.read_ipc(staged.futures_path) if staged.futures_path is not None
                       and staged.futures_path.exists() else None)
        return commit(
            settings.lake_root, bars, meta["natives"], full=full, watermark=staged.watermark,
            rows_read=staged.rows_read, source=source.source_id(settings.database_url),
            whole=set(meta["whole"]), refused=staged.refused, derived=settings.derived_intervals,
            thresholds=health.Thresholds(settings.jump_ratio, settings.stale_bars), strict=strict, fail_at=fail_at,
            futures=futures,
        )
    finally:
        staged.remove()


def warnings(staged: StagedExtract, result: CommitResult) -> list[str]:
    """One line per source problem the export stepped around, naming the symbol (or crypto id)."""
    lines = [f"crypto id {crypto_id}: {rows:,} price row(s) in crypto_prices have no cryptocurrencies row; skipped "
             "(give them a symbol: INSERT INTO cryptocurrencies (id, symbol) ..., or delete them)"
             for crypto_id, rows in staged.orphans.items()]
    if staged.hidden_sessions:
        lines.append(f"{staged.hidden_sessions} session(s) of this database hide when their transactions began "
                     "from the exporting role (other roles' sessions, or track_activities off): a writer among "
                     "them that began before this export and commits after it is not waited for, and the next "
                     "incremental export may miss its rows (GRANT pg_read_all_stats TO the exporting role)")
    for name, problem in staged.refused.items():
        fate = ("kept its bars of the previous snapshot" if name in result.snapshot.symbols
                else "left out of the snapshot")
        lines.append(f"{name}: {problem}; {fate} (fix or delete those rows in PostgreSQL: the next export reads "
                     "the symbol whole)")
    return lines


def _bytes_needed(rows: int) -> int:
    """About what an export of `rows` writes: the staged extract (uncompressed Arrow IPC, ~52 bytes
    a row) and the new snapshot files (zstd Parquet, ~10 bytes a row)."""
    return rows * 62


def vacuum(settings: Settings) -> list[str]:
    return retention.vacuum(settings.lake_root, keep=settings.snapshot_keep,
                       keep_hours=settings.snapshot_keep_hours)


def run_export(
    settings: Settings,
    *,
    full: bool = False,
    wait_seconds: float = 0.0,
    fail_at: str | None = None,
    strict: bool = False,
    log: Callable[[str], None] = lambda _: None,
    retries: tuple[float, ...] = (),
) -> ExportReport:
    """Export PostgreSQL into a new lake snapshot, in-process; the extract is tried again after each of
    `retries` seconds while PostgreSQL is unreachable (the flow's policy: EXTRACT_RETRY_DELAYS).
    `fail_at` is for kill tests."""
    started = time.perf_counter()
    lake.check_writable(settings.lake_root)
    with lake.export_lock(settings.lake_root, wait_seconds=wait_seconds):
        planned = plan(settings, full)
        full, since = planned.full, planned.since
        log(f"reading rows changed since {since.isoformat() if since else 'the beginning'}")
        staged = None
        try:
            staged = with_retries(lambda: extract_to_staging(settings, since, in_memory=True), log, retries)
            log(f"read {staged.rows_read:,} rows in {staged.seconds:.2f} s")
            if fail_at == "after-read":
                os._exit(137)
            result = commit_staged(settings, staged, full, fail_at=fail_at, strict=strict)
        except Exception as exc:
            if is_disk_full(exc) and staged is not None:
                raise disk_full(settings.lake_root, _bytes_needed(staged.rows_read), "CRYPTOBT_LAKE_ROOT") from None
            raise
        finally:
            # The export's own staging goes on every exit path (a SIGKILL's leftovers go at the next vacuum).
            if staged is not None:
                staged.remove()
        removed = vacuum(settings)
    return ExportReport(
        snapshot_id=result.snapshot.id, created=result.created, rows_read=result.rows_read,
        changed_symbols=result.changed_symbols, files_written=result.files_written,
        files_linked=result.files_linked, removed_snapshots=removed,
        seconds=time.perf_counter() - started, warnings=planned.warnings + warnings(staged, result),
        rows_written=result.rows_written, bytes_written=result.bytes_written,
    )
