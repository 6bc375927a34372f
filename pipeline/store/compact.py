"""`cryptobt results compact`: a past day's files of a strategy merged into one, swapped in whole.

Every run appends a file per table (results, trades, runs), so a long history is thousands of small
files, and a query over all of it pays for opening each one (10 M rows in 500 files: 0.36 s to count
them, `results top` 0.66 s; issue 32). Compaction rewrites each folder ``run_date=D/strategy=S`` of a
day before yesterday (UTC) that holds two files or more into one file, ``compacted-<first>~<last run id>.parquet``,
with exactly the rows of the files it replaces (their columns' union). The results file holds them best total
return first, so that `results top` reads the first row groups of each file and skips the others by their
statistics; trades and runs keep run id order, a row group per few runs, so that a query about one run reads
only its row groups.

The new folder is built outside the table (``<results root>/../.compacting``) and exchanged with the
old one in one `renameat2(RENAME_EXCHANGE)`: a reader lists the old files or the new file, never both
and never neither (a query that listed the old files and opens them after the swap fails and is asked
again). Writers take the table's publish lock (`files.publishing`) shared while they make or publish a
file; compaction takes it exclusive for each folder and leaves a folder holding any temp file (a run in
progress) as it is. A compaction killed at any point leaves the table as it was or as it will be;
what it left outside the table is removed by the next one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import objects
from pipeline.core.errors import InputError, PipelineError
from pipeline.core.objects import ObjectPath
from pipeline.lake.snapshots import fsync_dir
from pipeline.store.files import compacted_name, publishing, runs_root, trades_root
from pipeline.store.runlog import sweep_stale
from pipeline.store.values import utc_now

# A row group is written once it holds this many rows (DuckDB's own size is 122,880): of trades and runs, whole
# runs' files in run id order, so a query about one run decodes one or two groups. Smaller groups cost the scans
# over every row more than they save a run's (10 M rows, 20,000-row groups: `results top` 334 ms, `show` 149 ms;
# 131,072: 194 ms and 167 ms; bench/results_queries.py).
_GROUP_ROWS = 131_072
_STAGING = ".compacting"
# The results' order in a compacted file: best total return first, so that `results top`'s cut and its ranking
# skip every row group but the first few of each file (bench.results_queries, 10 M rows in 28 files: top 211 ->
# 166 ms; `results show`, whose run's rows are now spread over its day's groups, 76-94 -> 137 ms; the run list
# 124-152 -> 166 ms; the compaction 26.8 -> 53.3 s). The run,
# symbol and parameters break ties, so a folder compacts to the same file whatever order its files came in.
_RESULTS_ORDER = "total_return_pct DESC NULLS LAST, run_id, symbol, params_json"
_SORTED_RESULTS_SQL = f"SELECT * FROM merged ORDER BY {_RESULTS_ORDER}"  # noqa: S608 (a constant)
# DuckDB sorts out of core: this much memory, the rest spilled beside the new file.
_SORT_MEMORY = "512MB"


@dataclass(frozen=True)
class Compacted:
    """One folder merged: its table, folder, how many files became one, and the rows they hold."""

    table: str
    folder: str
    files: int
    rows: int
    bytes_before: int
    bytes_after: int


def compact(results_root: str | os.PathLike[str], before: date | None = None,
            progress: Callable[[int, int], None] | None = None) -> list[Compacted]:
    """Merge the files of every ``run_date=D/strategy=S`` folder with D before `before` (default: the day
    before yesterday and earlier, UTC) of the results, trades and runs tables; returns what was merged.
    `progress(done, total)` is told after each folder looked at."""
    root = objects.location(results_root)
    if isinstance(root, ObjectPath):
        raise InputError(f"results compact works on a local results table; {root} is on object storage "
                         "(where a query lists a table's files in one request)")
    last = utc_now().date() - timedelta(days=1) if before is None else before
    sweep_stale(results_root)  # dead writers' temp files: a folder holding one is left alone
    staging = root.parent / _STAGING
    folders = [(table, table_root, folder)
               for table, table_root in (("results", root), ("trades", trades_root(results_root)),
                                         ("runs", runs_root(results_root)))
               for folder in sorted(table_root.glob("run_date=*/strategy=*"))
               if folder.is_dir() and (day := _day(folder.parent.name)) is not None and day < last]
    done: list[Compacted] = []
    for k, (table, table_root, folder) in enumerate(folders, 1):
        merged = _compact_folder(table, table_root, folder, staging / table)
        if merged is not None:
            done.append(merged)
        if progress is not None:
            progress(k, len(folders))
    for empty in (staging / "results", staging / "trades", staging / "runs", staging):
        with contextlib.suppress(OSError):
            empty.rmdir()  # only if empty: another compaction may be working in it
    return done


def _day(name: str) -> date | None:
    with contextlib.suppress(ValueError):
        return date.fromisoformat(name.partition("=")[2])
    return None


def _compact_folder(table: str, table_root: Path, folder: Path, staging: Path) -> Compacted | None:
    with publishing(table_root, exclusive=True):
        files = sorted(folder.glob("*.parquet"))
        if len(files) < 2 or any(p.name.startswith(".") for p in folder.iterdir()):
            return None  # nothing to merge, or a run is writing here (its hidden temp file)
        _clear(staging)
        new = staging / f"{folder.parent.name}.{folder.name}"
        new.mkdir(parents=True)
        try:
            rows, first, last = _merge(files, new / "merging.parquet", by_return=table == "results")
            (new / "merging.parquet").rename(new / compacted_name(first, last))
            for other in folder.iterdir():  # a file of the user's in the folder moves with it
                if other.suffix != ".parquet":
                    os.link(other, new / other.name)
            merged = new / compacted_name(first, last)
            fsync_dir(new)
            before = sum(p.stat().st_size for p in files)
            after = merged.stat().st_size
            _exchange(new, folder)  # `new` now names the old folder
            fsync_dir(folder.parent)
        finally:
            shutil.rmtree(new, ignore_errors=True)
    return Compacted(table, str(folder.relative_to(table_root)), len(files), rows, before, after)


def _merge(files: list[Path], target: Path, by_return: bool = False) -> tuple[int, str, str]:
    """Write the rows of `files` to `target`, their schemas unified, in the files' order (`by_return`: in
    `_RESULTS_ORDER`); checks the count. Returns it, with the smallest and largest run id written."""
    schema = pa.unify_schemas([pq.read_schema(p) for p in files], promote_options="permissive")
    expected = sum(pq.ParquetFile(p).metadata.num_rows for p in files)
    runs: set[str | None] = set()

    def groups() -> Iterator[pa.Table]:
        for path in files:
            source = pq.ParquetFile(path)
            for group in range(source.num_row_groups):
                table = source.read_row_group(group)
                runs.update(pc.unique(table.column("run_id")).to_pylist())
                yield table

    tables = _sorted_by_return(schema, groups(), target.parent / "spill") if by_return else groups()
    written = _write_file(target, schema, tables, expected, "wrote")
    runs.discard(None)
    return written, min(runs), max(runs)


def _sorted_by_return(schema: pa.Schema, tables: Iterable[pa.Table], spill: Path) -> Iterator[pa.Table]:
    """`tables` (conformed to `schema`) again in `_RESULTS_ORDER`, in batches: DuckDB reads them as one stream
    and sorts, out of core past `_SORT_MEMORY` (spilling to `spill`, removed after), so the rows are read and
    written once."""
    from pipeline.lake.reader import connect_duckdb

    stream = pa.RecordBatchReader.from_batches(
        schema, (batch for table in tables for batch in _conform(table, schema).to_batches()))
    con = connect_duckdb()
    try:
        con.execute(f"SET memory_limit = '{_SORT_MEMORY}'")
        con.execute("SET temp_directory = ?", [str(spill)])
        con.register("merged", stream)
        # A relation's reader streams the sorted rows; a DB-API result's would copy them all first (DuckDB 2.0).
        for batch in con.sql(_SORTED_RESULTS_SQL).to_arrow_reader(_GROUP_ROWS):
            yield pa.Table.from_batches([batch])
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _write_file(target: Path, schema: pa.Schema, tables: Iterable[pa.Table], expected: int, verb: str) -> int:
    """`tables`, each conformed to `schema`, into the new file `target` in row groups of about `_GROUP_ROWS`,
    synced to disk; checks that it holds `expected` rows (else nothing is replaced). Returns how many."""
    written, pending = 0, []
    with open(target, "xb") as handle, pq.ParquetWriter(handle, schema, compression="zstd") as writer:
        for table in tables:
            pending.append(_conform(table, schema))
            if sum(t.num_rows for t in pending) >= _GROUP_ROWS:
                written += _write(writer, pending)
        written += _write(writer, pending)
        writer.close()
        handle.flush()
        os.fsync(handle.fileno())
    if written != expected or pq.ParquetFile(target).metadata.num_rows != expected:
        raise PipelineError(f"compacting {target.parent.name}: {verb} {written:,} rows of {expected:,}; nothing replaced")
    return written


def _write(writer: pq.ParquetWriter, pending: list[pa.Table]) -> int:
    if not pending:
        return 0
    table = pa.concat_tables(pending)
    pending.clear()
    writer.write_table(table, row_group_size=max(table.num_rows, 1))
    return table.num_rows


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns: one it lacks (a file written before the column was added) as NULL."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _clear(staging: Path) -> None:
    """What a killed compaction left (under the exclusive lock no other one is running)."""
    if staging.is_dir():
        for leftover in staging.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swap the names `a` and `b` in one step (Linux renameat2 with RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None or renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno() if renameat2 is not None else errno.ENOSYS
        raise PipelineError(f"cannot swap {b} for its compacted copy ({os.strerror(code)}): compaction needs "
                            "Linux and a file system with atomic exchange (ext4, xfs, btrfs, tmpfs); nothing replaced")
