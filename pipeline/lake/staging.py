"""Staging a snapshot: the files a commit writes, under ``<lake>/.staging/<snapshot id>/`` until
it is published (renamed into ``snapshots/``). Nothing reads the staging area.

A commit rewrites the years its plan names (pipeline.lake.plan) and hard-links the parent's other
files. Each rewritten year merges the parent's rows with the new ones; the newest year is written
as a base (bars before its `tail_from`, a UTC midnight) and a tail (bars from it on), so an
incremental export whose rows all fall in the tail rewrites the tail alone. A tail spanning
COMPACT_AFTER or more is folded into the base by the next export. Each part (a year's base or tail)
is hashed (pipeline.lake.rowhash) and its data health measured as it is written.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pyarrow.parquet as pq

from pipeline.core import import_guard as imports
from pipeline.core import intervals
from pipeline.core.objects import ObjectPath
from pipeline.lake.plan import CommitPlan
from pipeline.lake.rowhash import hash_symbols, part_key, year_sums
from pipeline.lake.snapshots import Snapshot, file_records, local_folder, read_whole
from pipeline.lake.verify import check_files, file_fingerprint
from pipeline.source import health
from pipeline.source.bar_rules import PRICE_COLUMNS, derive

if TYPE_CHECKING:
    import polars as pl
else:
    pl = imports.deferred("polars")  # only the writer (commit) needs it: a run reads with DuckDB

ROW_GROUP_ROWS = 65_536
# The newest year is kept as a base file (bars before its `tail_from`, a UTC midnight) and a tail
# file (bars from it on): an incremental export whose rows all fall in the tail rewrites the tail
# only. A tail spanning COMPACT_AFTER or more is folded into the base by the next export.
TAIL_FILE = "-tail"
COMPACT_AFTER = timedelta(days=7)


@functools.cache
def lake_schema() -> dict[str, pl.DataType]:
    """The columns of the lake's files and their types."""
    return {
        "symbol_id": pl.Int32,
        "symbol": pl.String,
        "ts": pl.Datetime("us", "UTC"),
        "open": pl.Float64,
        "high": pl.Float64,
        "low": pl.Float64,
        "close": pl.Float64,
        "volume": pl.Float64,
        # How many source bars built this one: hours for a daily bar, 1 for an hourly bar.
        "bars": pl.Int32,
    }


class Part(NamedTuple):
    """A year's base or tail to write: its rows per native interval."""

    year: int
    tail: bool
    frames: dict[str, pl.DataFrame]


class WrittenFile(NamedTuple):
    interval: str
    path: str  # relative to the snapshot folder
    rows: int
    fingerprint: dict
    stats: dict[int, dict]  # symbol id -> first, last, bars


class BuiltPart(NamedTuple):
    """What writing a part gave: per symbol id its row-sum hash and health, and the files."""

    year: int
    tail: bool
    hashes: dict[int, str]
    measured: list[dict]
    files: list[WrittenFile]


@dataclass
class Staged:
    """The written parts and the export state they make: per symbol, per part key, hashes, stats
    (per interval) and health; the parent's entries of the parts rewritten are replaced."""

    parts: list[BuiltPart]
    tail_cuts: dict[int, datetime]  # year -> where its tail starts (the years with a tail)
    tail_only: set[int]  # years whose tail alone was rewritten (their base is linked)
    old_sums: dict[str, dict[str, str]]  # the parent's per-year hashes of each symbol
    year_hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    year_stats: dict[str, dict[str, dict[str, dict]]] = field(default_factory=dict)
    year_health: dict[str, dict[str, dict]] = field(default_factory=dict)


@dataclass
class StagedFiles:
    """Every file of the new snapshot, as its manifest lists them (interval -> year -> entry)."""

    files: dict[str, dict[str, dict]]
    written: int = 0
    linked: int = 0
    rows_written: int = 0
    bytes_written: int = 0


@contextmanager
def folder(lake_root: Path, snapshot_id: str) -> Iterator[Path]:
    """The staging folder of `snapshot_id`, removed if the block fails (publishing renames it away)."""
    path = local_folder(lake_root) / ".staging" / snapshot_id  # on object storage: this machine's
    path.mkdir(parents=True)
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def write_parts(plan: CommitPlan, staging: Path, derived: tuple[str, ...], thresholds: health.Thresholds,
                fail_at: str | None = None) -> Staged:
    """Write the years `plan` rewrites into `staging` (a year's tail alone when its changes all fall
    in it) with the `derived` intervals, hashing each part and measuring its health by `thresholds`; two threads (polars and pyarrow let go of the GIL)."""
    years = _Years(plan)
    with ThreadPoolExecutor(max_workers=2) as pool:
        parts = [part for found in pool.map(years.merge, sorted(plan.years)) for part in found]
        built = list(pool.map(functools.partial(_build_part, staging, derived, thresholds, fail_at), parts))
    tail_only = {part.year for part in parts if part.tail} - {part.year for part in parts if not part.tail}
    staged = Staged(built, years.tail_cuts, tail_only, {})
    _fold_into_state(plan, staged)
    return staged


class _Years:
    """Merging the parent's rows of a year with the new ones (`merge`, one year per call, threads)."""

    def __init__(self, plan: CommitPlan) -> None:
        self.plan = plan
        self.by_year = {
            key[0]: frame for key, frame in plan.bars.with_columns(pl.col("ts").dt.year().alias("_year"))
            .partition_by("_year", as_dict=True, include_key=False).items()
        }
        self.empty = plan.bars.clear()
        # The parent's symbols whose rows stay (merged with the new ones).
        self.kept_old = plan.kept | {name for name in plan.parent_natives if name not in plan.whole and not plan.full}
        self.tail_cuts = self._tail_cuts()

    def _tail_cuts(self) -> dict[int, datetime]:
        """Years whose changes all fall in their tail (on or after its cut, no symbol replaced whole):
        only the tail is rewritten, the base files are linked. O(rows since the cut), not O(year)."""
        plan, cuts = self.plan, {}
        if plan.full or plan.rehash or plan.parent is None:
            return cuts
        whole_list = sorted(plan.whole)
        for year in sorted(plan.years):
            delta = self.by_year.get(year, self.empty)
            cut = _tail_from(plan.parent_files, year)
            if cut is None or year in plan.whole_years or (delta.height and (
                    delta["ts"].min() < cut or delta["symbol"].is_in(whole_list).any())):
                continue
            cuts[year] = cut
        return cuts

    def merged(self, year: int, read: Callable[[Snapshot | None, str, int], pl.DataFrame | None]) -> dict:
        """Per native interval, the rows of `year` (as `read` gives the parent's) with the new ones, sorted."""
        plan = self.plan
        delta = self.by_year.get(year, self.empty)
        base: dict[str, pl.DataFrame] = {}
        natives = set(plan.new_natives.values()) | set(plan.parent_natives.values())
        for native in sorted(natives, key=intervals.SECONDS.get):
            part = delta.filter(pl.col("_native") == native).select(list(lake_schema()))
            old = read(plan.parent, native, year) if self.kept_old else None
            if old is not None:
                own = [plan.ids[n] for n in self.kept_old if plan.parent_natives[n] == native]
                old = old.filter(pl.col("symbol_id").is_in(own))
                old = old.join(part.select("symbol_id", "ts"), on=["symbol_id", "ts"], how="anti")
                part = pl.concat([old.select(list(lake_schema())), part.cast({"symbol": pl.String})])
            if part.height:
                base[native] = part.sort("symbol_id", "ts")
        return base

    def merge(self, year: int) -> list[Part]:
        """The parts of `year` to write: its tail alone, or the whole year (split at a cut if newest)."""
        cut = self.tail_cuts.get(year)
        if cut is not None:
            tail = self.merged(year, _read_tail)
            newest = max((frame["ts"].max() for frame in tail.values()), default=cut)
            if newest - cut < COMPACT_AFTER:
                return [Part(year, True, tail)]
            # The tail grew past COMPACT_AFTER: this export folds it into the base (compaction).
        frames = self.merged(year, _read_year)
        if year != self.plan.newest_year or not frames:
            self.tail_cuts.pop(year, None)
            return [Part(year, False, frames)]
        # The tail starts at the day of the earliest last bar among the symbols still trading (a
        # last bar within COMPACT_AFTER of the newest), so each of them appends into the tail.
        lasts = pl.concat([frame.group_by("symbol_id").agg(pl.col("ts").max()) for frame in frames.values()])["ts"]
        recent = lasts.filter(lasts >= lasts.max() - COMPACT_AFTER).min()
        cut = self.tail_cuts[year] = recent.replace(hour=0, minute=0, second=0, microsecond=0)
        return [Part(year, False, {n: f.filter(pl.col("ts") < cut) for n, f in frames.items()}),
                Part(year, True, {n: f.filter(pl.col("ts") >= cut) for n, f in frames.items()})]


def _build_part(staging: Path, derived: tuple[str, ...], thresholds: health.Thresholds, fail_at: str | None,
                part: Part) -> BuiltPart:
    """Hashes, health and the written files of one part (a year's base or tail)."""
    hashes: dict[int, str] = {}
    measured: list[dict] = []
    outputs: dict[str, list[pl.DataFrame]] = {}
    for native, frame in part.frames.items():
        if not frame.height:
            continue
        hashes.update(hash_symbols(frame))
        measured += health.measure(frame, native, thresholds, by="symbol_id")
        built = derive(frame.drop("bars"), native, tuple(stored_intervals(native, derived)[1:]),
                       by=("symbol_id", "symbol"), clean=False)
        built[native] = frame
        for interval, rows in built.items():
            outputs.setdefault(interval, []).append(rows.select(list(lake_schema())))
    done = []
    for interval in sorted(outputs, key=intervals.SECONDS.get):
        # One frame is sorted already (native rows by `merged`, derived ones by `derive`).
        frame = outputs[interval][0] if len(outputs[interval]) == 1 else pl.concat(
            [rows.cast({"symbol": pl.String}) for rows in outputs[interval]]).sort("symbol_id", "ts")
        relative = f"interval={interval}/year={part.year}/{interval}-{part.year}{TAIL_FILE if part.tail else ''}.parquet"
        fingerprint = write_parquet(frame, staging / relative)
        if fail_at == "mid-write":
            os._exit(137)
        done.append(WrittenFile(interval, relative, frame.height, fingerprint, _symbol_stats(frame)))
    return BuiltPart(part.year, part.tail, hashes, measured, done)


def _fold_into_state(plan: CommitPlan, staged: Staged) -> None:
    """The parent's export state with the rewritten parts' entries replaced by the written ones."""
    state = plan.state
    staged.year_hashes = {sym: dict(meta.get("year_hashes", {})) for sym, meta in state.items()}
    staged.year_stats = {
        sym: {iv: dict(per) for iv, per in meta.get("year_stats", {}).items()} for sym, meta in state.items()}
    staged.year_health = {sym: dict(meta.get("year_health", {})) for sym, meta in state.items()}
    staged.old_sums = {} if plan.rehash else {name: year_sums(parts) for name, parts in staged.year_hashes.items()}
    # The state keys rebuilt: a tail-only year's tail, else both parts of the year.
    rebuilt = {part_key(year, True) for year in plan.years} | {
        part_key(year, False) for year in plan.years if year not in staged.tail_only}
    for per_symbol in (*staged.year_hashes.values(), *staged.year_health.values(),
                       *(per for by_iv in staged.year_stats.values() for per in by_iv.values())):
        for key in rebuilt & set(per_symbol):
            del per_symbol[key]
    names_of = plan.names_of
    for part in staged.parts:
        key = part_key(part.year, part.tail)
        for sid, digest in part.hashes.items():
            staged.year_hashes.setdefault(names_of[sid], {})[key] = digest
        for record in part.measured:
            staged.year_health.setdefault(names_of[record.pop("symbol_id")], {})[key] = record
        for written in part.files:
            for sid, per in written.stats.items():
                staged.year_stats.setdefault(names_of[sid], {}).setdefault(written.interval, {})[key] = per


def link_unchanged(plan: CommitPlan, staged: Staged, staging: Path) -> StagedFiles:
    """Hard-link the parent's files of the years not rewritten into `staging`, and list every file of
    the new snapshot: linked, then written, each year with where its tail starts."""
    result = StagedFiles({})
    for interval, per_year in plan.parent_files.items():
        for year, entry in per_year.items():
            if int(year) in plan.years and int(year) not in staged.tail_only:
                continue  # rewritten whole
            kept_entry = {k: v for k, v in entry.items() if k != "tail"}
            if "path" in entry:
                kept_entry.update(_link(plan.parent, {k: v for k, v in entry.items() if k not in ("tail", "tail_from")},
                                        staging, result))
            if "tail" in entry and int(year) not in staged.tail_only:
                kept_entry["tail"] = _link(plan.parent, entry["tail"], staging, result)
            if "path" in kept_entry or "tail" in kept_entry:
                result.files.setdefault(interval, {})[year] = kept_entry
    for part in staged.parts:
        for written in part.files:
            entry = result.files.setdefault(written.interval, {}).setdefault(str(part.year), {})
            record = {"path": written.path, "rows": written.rows, **written.fingerprint}
            if part.tail:
                entry["tail"] = record
            else:
                entry.update(record)
            result.written += 1
            result.rows_written += written.rows
            result.bytes_written += written.fingerprint["bytes"]
    for per_year in result.files.values():
        for year, entry in per_year.items():
            if int(year) in staged.tail_cuts:
                entry["tail_from"] = staged.tail_cuts[int(year)].isoformat()
            elif int(year) in plan.years:
                entry.pop("tail_from", None)
    return result


def _link(parent: Snapshot, record: dict, staging: Path, result: StagedFiles) -> dict:
    """Hard-link one of the parent's files into `staging`; its manifest record (fingerprinted if it had none)."""
    target = staging / record["path"]
    target.parent.mkdir(parents=True, exist_ok=True)
    # Never carry damage forward: a stat here; the export checked every file's sha256 under this
    # lock before reading PostgreSQL (`export.plan`), and read the rows whole if one differed.
    check_files(parent, [parent.path / record["path"]])
    if isinstance(parent.path, ObjectPath):  # copied server-side when published (commit.publish_objects)
        result.linked += 1
        return record
    os.link(parent.path / record["path"], target)
    result.linked += 1
    return record if "sha256" in record else {**record, **file_fingerprint(target)}


def _read_records(snapshot: Snapshot, records: list[dict]) -> pl.DataFrame | None:
    paths = [snapshot.path / record["path"] for record in records]
    if not paths:
        return None
    check_files(snapshot, paths)
    return pl.concat([read_whole(path) for path in paths])


def _read_year(snapshot: Snapshot | None, interval: str, year: int) -> pl.DataFrame | None:
    entry = snapshot.manifest["files"].get(interval, {}).get(str(year)) if snapshot else None
    return _read_records(snapshot, file_records(entry)) if entry else None


def _read_tail(snapshot: Snapshot | None, interval: str, year: int) -> pl.DataFrame | None:
    entry = snapshot.manifest["files"].get(interval, {}).get(str(year)) if snapshot else None
    return _read_records(snapshot, [entry["tail"]]) if entry and "tail" in entry else None


def _tail_from(files: dict[str, dict[str, dict]], year: int) -> datetime | None:
    """Where `year`'s tail starts (the start of the year for a year the lake has no files of), or
    None when the year has no tail (it is rewritten whole)."""
    cuts = {per[str(year)].get("tail_from") for per in files.values() if str(year) in per}
    if not cuts:
        return datetime(year, 1, 1, tzinfo=UTC)
    if len(cuts) != 1 or None in cuts:
        return None
    return datetime.fromisoformat(cuts.pop())


def write_parquet(frame: pl.DataFrame, path: Path) -> dict:
    """Write `frame` as a lake file at `path`, synced; its fingerprint for the manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = frame.select(list(lake_schema())).cast(lake_schema()).to_arrow()
    pq.write_table(
        table, path, compression="zstd", compression_level=3,
        row_group_size=ROW_GROUP_ROWS, use_dictionary=["symbol"], write_statistics=True,
        # Splitting float bytes into streams lets zstd see the shared exponents: ~30 % smaller.
        use_byte_stream_split=list(PRICE_COLUMNS),
        column_encoding={"ts": "DELTA_BINARY_PACKED", "symbol_id": "DELTA_BINARY_PACKED", "bars": "DELTA_BINARY_PACKED"},
    )
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    return file_fingerprint(path)


def _symbol_stats(frame: pl.DataFrame) -> dict[int, dict]:
    stats = frame.group_by("symbol_id").agg(
        pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"), pl.len().alias("bars")
    )
    return {
        row["symbol_id"]: {"first": row["first"].isoformat(), "last": row["last"].isoformat(), "bars": row["bars"]}
        for row in stats.iter_rows(named=True)
    }


def stored_intervals(native: str, derived: tuple[str, ...]) -> list[str]:
    """The intervals the lake writes for a symbol: its native one and the derived ones coarser than
    it, except weeks (a week can straddle two years' files; the reader derives weeks on read)."""
    return [native, *(i for i in intervals.coarser_than(native, derived) if i != "1w")]
