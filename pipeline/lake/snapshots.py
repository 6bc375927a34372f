"""The Parquet lake: immutable snapshots, atomic commits, data versions, retention.

Layout under the lake root::

    snapshots/<snapshot_id>/interval=5m/year=2024/5m-2024.parquet   (symbols whose own interval is 5m)
    snapshots/<snapshot_id>/interval=1h/year=2024/1h-2024.parquet
    snapshots/<snapshot_id>/interval=1h/year=2025/1h-2025.parquet        (the newest year's base ...)
    snapshots/<snapshot_id>/interval=1h/year=2025/1h-2025-tail.parquet   (... and its tail)
    snapshots/<snapshot_id>/interval=1d/year=2024/1d-2024.parquet
    snapshots/<snapshot_id>/_manifest.json
    current -> snapshots/<snapshot_id>        (symlink, replaced atomically)
    .staging/                                  (snapshots being built; never read)
    .export.lock                               (one export at a time)

One file per (interval, year), rows sorted by (symbol_id, ts), zstd: the smallest and
fastest layout measured here, and a one-symbol read skips other row groups by their
min/max statistics. A snapshot that changes only 2025 writes only 2025's files; the
other years are hard links to the previous snapshot's files, so snapshots are cheap
and deleting an old one never touches a file another snapshot still uses.

The newest year is split at `tail_from` (a UTC midnight, so no stored bar's bucket straddles it):
its base holds the bars before, its tail the bars from it on. New hours land in the tail, so an
incremental export rewrites the tail files alone and links the base: its cost follows the rows
since `tail_from`, not the year. A tail spanning COMPACT_AFTER is folded into the base by the next
export. Data versions and health are kept per part (base, tail) and combined, so a version does
not depend on where the split lies (content hashes are row sums: base + tail = the whole year).

Plain DuckDB reads the current snapshot with one glob, every row once::

    SELECT * FROM read_parquet('data/lake/current/interval=*/year=*/*.parquet', hive_partitioning = true)

The manifest holds the snapshot id, its source, the PostgreSQL watermark, and per symbol
its lake id, native interval, data version (a hash of its native rows' content: it changes
iff the symbol's rows change), first/last bar and bar count per stored interval, and its
data health findings. A symbol is its name: ids are the lake's own, never a source's.
Coarser intervals are always derived from the lake's native rows (SPEC section 2), so the
intervals of a symbol can never disagree.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from pipeline.core import formats, intervals
from pipeline.core import import_guard as imports
from pipeline.core.config import check_writable_folder
from pipeline.core.errors import FileDamaged, LakeBusy, PipelineError, SnapshotDamaged
from pipeline.source import health
from pipeline.source.ohlcv import derive

if TYPE_CHECKING:
    import polars as pl
else:
    pl = imports.deferred("polars")  # only the writer (commit) needs it: a run reads with DuckDB

PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
MANIFEST = "_manifest.json"
# The manifest's own checksum (sha256 of its canonical JSON without this key).
MANIFEST_CHECKSUM = "manifest_sha256"
# A snapshot folder being removed by vacuum (hidden: never listed, never globbed).
REMOVING_PREFIX = ".removing-"
# Shared locks of the runs reading each snapshot (see `reading`).
READERS = ".readers"
# Per (symbol, year) content hashes and bar stats: what the next commit needs to
# compute versions, kept out of the manifest so readers parse a small file.
STATE = "_state.json"
ROW_GROUP_ROWS = 65_536
# The newest year is kept as a base file (bars before its `tail_from`, a UTC midnight) and a tail
# file (bars from it on): an incremental export whose rows all fall in the tail rewrites the tail
# only. A tail spanning COMPACT_AFTER or more is folded into the base by the next export.
TAIL_FILE = "-tail"
COMPACT_AFTER = timedelta(days=7)
# The manifest mark of row-sum content hashes (`_hash_symbols`): hashes of a year's parts add up.
ROW_HASH = "rowsum64-v1"


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


@dataclass(frozen=True)
class Snapshot:
    """A committed snapshot, as its manifest describes it."""

    id: str
    path: Path
    manifest: dict

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.manifest["created_at"])

    @property
    def watermark(self) -> datetime | None:
        raw = self.manifest.get("watermark")
        return datetime.fromisoformat(raw) if raw else None

    @property
    def symbols(self) -> dict[str, dict]:
        return self.manifest["symbols"]

    def files(self, interval: str, years: range | None = None) -> list[Path]:
        """The snapshot's files of `interval` (each year's base, then its tail), optionally only those of `years`."""
        entries = self.manifest["files"].get(interval, {})
        return [
            self.path / record["path"]
            for year, entry in sorted(entries.items())
            if years is None or int(year) in years
            for record in file_records(entry)
        ]

    def data_versions(self) -> dict[str, str]:
        return {symbol: meta["data_version"] for symbol, meta in self.symbols.items()}


@dataclass(frozen=True)
class CommitResult:
    snapshot: Snapshot
    created: bool  # False: nothing changed, the current snapshot stands
    changed_symbols: list[str]
    rows_read: int
    files_written: int
    files_linked: int
    rows_written: int = 0  # rows in the files this commit wrote (linked files cost nothing)
    bytes_written: int = 0


def new_snapshot_id(now: datetime | None = None) -> str:
    """Sortable and unique: UTC time to the microsecond plus a random suffix."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_snapshot(lake_root: Path) -> Snapshot | None:
    """The snapshot `current` points at, or None for an empty lake."""
    link = Path(lake_root) / "current"
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    path = (link.parent / target).resolve()
    return load_snapshot(path)


_loaded: dict[str, Snapshot] = {}


def load_snapshot(path: Path) -> Snapshot:
    """The snapshot at `path`. A committed snapshot never changes, so it is parsed once per process."""
    key = str(path)
    snapshot = _loaded.get(key)
    if snapshot is None:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            if isinstance(manifest, dict):  # before the checksum: a newer format may sum differently
                formats.LAKE_MANIFEST.version(path / MANIFEST, manifest)
            valid = isinstance(manifest, dict) and isinstance(manifest.get("snapshot_id"), str) and (
                MANIFEST_CHECKSUM not in manifest or manifest[MANIFEST_CHECKSUM] == _manifest_checksum(manifest))
        except (OSError, ValueError):
            valid = False
        if not valid:
            raise SnapshotDamaged(f"the manifest {path / MANIFEST} does not verify (garbled, edited or missing); "
                                  "`cryptobt export --full` writes a good snapshot")
        snapshot = _loaded[key] = Snapshot(id=manifest["snapshot_id"], path=path, manifest=manifest)
    return snapshot


def _manifest_checksum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _load_state(snapshot: Snapshot | None) -> dict:
    """The export state of `snapshot`: symbol -> its per-year hashes, stats and health."""
    if snapshot is None:
        return {}
    path = snapshot.path / STATE
    try:
        text = path.read_text()
        expected = snapshot.manifest.get("state_sha256")
        if expected is not None and hashlib.sha256(text.encode()).hexdigest() != expected:
            raise ValueError("checksum")
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError("not an object")
        # Version 1 is a bare {symbol: state} object (a symbol may even be called `format_version`).
        if isinstance(document.get(formats.FIELD), dict) or formats.EXPORT_STATE.version(path, document) == 1:
            return document
        if not isinstance(document.get("symbols"), dict):
            raise ValueError("no symbols")
        return document["symbols"]
    except (OSError, ValueError):
        raise SnapshotDamaged(f"the export state {path} does not verify (garbled, edited or missing); "
                              "`cryptobt export --full` writes a good snapshot") from None


def damaged_files(snapshot: Snapshot, paths: list[Path] | None = None, *,
                  deep: bool = False) -> list[tuple[Path, str]]:
    """The files of `snapshot` (all, or those of `paths`) that are not the ones committed, each with
    what is wrong: "missing", or "changed" (size or sha256 differs from the manifest's).

    A stat per file, and its sha256 when size or mtime differ: what every read pays. `deep` compares
    every file's sha256, since bit rot keeps size and mtime: what an export pays for the snapshot it
    builds on (~0.14 s of CPU per 232 MB lake, a thread per core), and `lake verify`. Files of
    snapshots written before checksums existed are not checked."""
    recorded = {str(snapshot.path / record["path"]): record for per in snapshot.manifest["files"].values()
                for entry in per.values() for record in file_records(entry)}
    wanted = list(recorded) if paths is None else [str(path) for path in paths]

    def problem(key: str) -> str | None:
        record = recorded.get(key)
        if record is None or "sha256" not in record:
            return None
        try:
            stat = os.stat(key)
        except OSError:
            return "missing"
        if stat.st_size != record["bytes"]:
            return "changed"
        if not deep and stat.st_mtime_ns == record["mtime_ns"]:
            return None
        return "changed" if file_fingerprint(Path(key))["sha256"] != record["sha256"] else None

    if deep and len(wanted) > 1:  # hashlib lets go of the GIL: one file per core at a time
        with ThreadPoolExecutor(max_workers=min(len(wanted), os.cpu_count() or 1)) as pool:
            problems = list(pool.map(problem, wanted))
    else:
        problems = [problem(key) for key in wanted]
    return [(Path(key), what) for key, what in zip(wanted, problems, strict=True) if what]


def check_files(snapshot: Snapshot, paths: list[Path] | None = None, *, deep: bool = False) -> None:
    """Refuse to read a file of `snapshot` that is not the one committed (truncated, rewritten, gone; with
    `deep`, also rotted): FileDamaged naming the first such file of `paths` (default: all).
    See `damaged_files` for what is compared."""
    damaged = damaged_files(snapshot, paths, deep=deep)
    if not damaged:
        return
    path, what = damaged[0]
    problem = (f"is missing from snapshot {snapshot.id}" if what == "missing" else
               f"is not the file snapshot {snapshot.id} committed (size or sha256 differs)")
    others = f" (and {len(damaged) - 1} other file(s))" if len(damaged) > 1 else ""
    error = FileDamaged(f"{path} {problem}{others}; `cryptobt lake verify` lists what else is damaged; "
                        "`cryptobt export --full` writes a good snapshot")
    error.path, error.problem = str(path), f"{problem}{others}"
    raise error


def check_snapshot(snapshot: Snapshot, *, deep: bool = False) -> None:
    """The whole-snapshot check an export builds on: state checksum, then each file (`check_files`)."""
    _load_state(snapshot)
    check_files(snapshot, deep=deep)


def verify(snapshot_path: Path) -> list[str]:
    """Every problem of one snapshot, one line each: manifest, state, each file's sha256, stray files, and
    its kept price grids (pipeline.lake.grids)."""
    try:
        snapshot = load_snapshot(snapshot_path)
    except SnapshotDamaged as exc:
        return [str(exc)]
    problems = []
    try:
        _load_state(snapshot)
    except SnapshotDamaged as exc:
        problems.append(str(exc))
    known = {MANIFEST, STATE}
    records = [record for per_interval in snapshot.manifest["files"].values()
               for year_entry in per_interval.values() for record in file_records(year_entry)]
    damaged = dict(damaged_files(snapshot, deep=True))
    for entry in records:
        known.add(entry["path"])
        path = snapshot.path / entry["path"]
        if damaged.get(path) == "missing" or not path.is_file():
            problems.append(f"{path}: missing")
        elif "sha256" not in entry:
            problems.append(f"{path}: no checksum recorded (written before checksums; re-export to add them)")
        elif path in damaged:
            problems.append(f"{path}: sha256 differs from the one recorded at commit (damaged)")
    for path in sorted(snapshot.path.rglob("*")):
        relative = str(path.relative_to(snapshot.path))
        if path.is_file() and relative not in known:
            problems.append(f"{path}: stray file (not part of the snapshot; readers ignore it)")
    from pipeline.lake import grids

    return problems + grids.verify(snapshot_path.parent.parent, snapshot)


def require_snapshot(lake_root: Path, snapshot_id: str | None = None) -> Snapshot:
    """The current snapshot, or the kept snapshot `snapshot_id`; a one-line error otherwise."""
    if snapshot_id is not None:
        kept = list_snapshots(lake_root)
        found = next((s for s in kept if s.id == snapshot_id), None)
        if found is None:
            ids = ", ".join(s.id for s in kept[-5:]) or "none"
            raise PipelineError(f"--snapshot {snapshot_id!r} is not kept in the lake at {lake_root} (newest kept: "
                                f"{ids}); `cryptobt lake snapshots` lists them")
        return found
    snapshot = current_snapshot(lake_root)
    if snapshot is None:
        if list_snapshots(lake_root):
            raise SnapshotDamaged(
                f"the lake's current pointer {Path(lake_root) / 'current'} is missing though snapshots exist; "
                "`cryptobt export` (or `cryptobt export --full`) makes a new current snapshot"
            )
        raise PipelineError(
            f"the lake at {lake_root} has no snapshot yet; run `cryptobt export` "
            "(from PostgreSQL) or `cryptobt demo` (sample lake) first"
        )
    return snapshot


def list_snapshots(lake_root: Path) -> list[Snapshot]:
    """Every committed snapshot, oldest first."""
    root = Path(lake_root) / "snapshots"
    if not root.exists():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if not path.name.startswith(".") and (path / MANIFEST).exists():
            try:
                found.append(load_snapshot(path))
            except SnapshotDamaged:
                continue  # `lake verify` names it; it is never read
    return found


@contextmanager
def export_lock(lake_root: Path, *, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the lake's export lock; LakeBusy if another export holds it past `wait_seconds`.

    An flock dies with its process, so a killed export never leaves the lake locked.
    """
    lake_root = Path(lake_root)
    lake_root.mkdir(parents=True, exist_ok=True)
    handle = open(lake_root / ".export.lock", "a+")  # noqa: SIM115 - held for the block
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LakeBusy(
                        f"another export is writing the lake at {lake_root}; "
                        "wait for it to finish (or pass --wait SECONDS)"
                    ) from None
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


@contextmanager
def reading(lake_root: Path, snapshot: Snapshot) -> Iterator[Snapshot]:
    """Pin `snapshot` while a run reads it: `vacuum` leaves a pinned snapshot for a later vacuum.

    A shared flock on `<lake>/.readers/<id>.lock` (it dies with the reader, so a killed reader
    never pins forever). If the snapshot was superseded and removed between resolving it and
    pinning it, the current snapshot is pinned instead; a snapshot named explicitly that is
    gone is an error saying so.
    """
    lake_root = Path(lake_root)
    for _ in range(3):
        try:
            folder = lake_root / READERS
            folder.mkdir(exist_ok=True)
            handle = open(folder / f"{snapshot.id}.lock", "a+")  # noqa: SIM115 - held for the block
        except OSError:  # a read-only lake: nothing can vacuum it under us either
            yield snapshot
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_SH)
            if (snapshot.path / MANIFEST).exists():
                yield snapshot
                return
        finally:
            handle.close()
        latest = current_snapshot(lake_root)
        if latest is None or latest.id == snapshot.id:
            break
        snapshot = latest
    raise PipelineError(f"snapshot {snapshot.id} was removed by `cryptobt lake vacuum` before this run could "
                        "read it; run again (it reads the current snapshot)")


def check_writable(lake_root: Path) -> None:
    """Fail before any work if the lake root cannot be written."""
    check_writable_folder(Path(lake_root), "CRYPTOBT_LAKE_ROOT")


def file_records(entry: dict) -> list[dict]:
    """The files of one (interval, year) manifest entry: its base (`path`...) and its tail, if any.

    Base and tail never share a bar (the base holds bars before `tail_from`, the tail the rest),
    so reading both, or globbing the folder, sees each bar once."""
    base = [{k: v for k, v in entry.items() if k not in ("tail", "tail_from")}] if "path" in entry else []
    return base + ([entry["tail"]] if "tail" in entry else [])


def _read_records(snapshot: Snapshot, records: list[dict]) -> pl.DataFrame | None:
    paths = [snapshot.path / record["path"] for record in records]
    if not paths:
        return None
    check_files(snapshot, paths)
    return pl.concat([pl.read_parquet(path) for path in paths])


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


def _part_key(year: int, tail: bool) -> str:
    """The export state's key of a year's base ("2026") or tail ("2026t")."""
    return f"{year}t" if tail else str(year)


def _part_year(key: str) -> int:
    return int(key.rstrip("t"))


_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_ROW_SEED, _WORD_MULTIPLIER = np.uint64(0xD1B54A32D192ED03), np.uint64(0x9E3779B97F4A7C15)
_MASK64 = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array (numpy's uint64 arithmetic wraps, as it must)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX[0]
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX[1]
    return x ^ (x >> np.uint64(31))


def _hash_symbols(frame: pl.DataFrame) -> dict[int, str]:
    """Content hash of each symbol's rows in a (symbol_id, ts)-sorted frame: the sum (mod 2^64) of a
    64-bit hash of each row's (ts, open..volume) bits, and the row count.

    A sum does not care how the rows are split: a year's base and tail hashes add up to the
    hash of the whole year (`_year_sums`), so a version does not depend on where the tail starts
    and an export that rewrites only the tail never reads the base. Each row's words are chained
    (xor, multiply, xorshift), so values swapped between rows or columns change the row hashes."""
    ids = frame["symbol_id"].to_numpy()
    if ids.size == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    counts = np.diff(np.r_[starts, ids.size])
    words = [frame["ts"].dt.epoch("us").to_numpy().view(np.uint64)]
    words += [np.ascontiguousarray(frame[column].to_numpy()).view(np.uint64) for column in PRICE_COLUMNS]
    row = np.full(ids.size, _ROW_SEED, dtype=np.uint64)
    shifted = np.empty_like(row)
    for word in words:  # in place: a pass per operation, no temporaries (0.13 s per 1.45 M rows)
        np.bitwise_xor(row, word, out=row)
        np.multiply(row, _WORD_MULTIPLIER, out=row)
        np.right_shift(row, np.uint64(32), out=shifted)
        np.bitwise_xor(row, shifted, out=row)
    sums = np.add.reduceat(_mix(row), starts)
    return {int(ids[start]): f"{int(total):016x}:{int(n)}" for start, total, n in zip(starts, sums, counts, strict=True)}


def _year_sums(parts: dict[str, str]) -> dict[str, str]:
    """Per year, the sum of its parts' row-sum hashes (base + tail): the hash of the year's rows."""
    sums: dict[str, list[int]] = {}
    for key, digest in parts.items():
        total = sums.setdefault(str(_part_year(key)), [0, 0])
        value, rows = digest.split(":")
        total[0] = (total[0] + int(value, 16)) & _MASK64
        total[1] += int(rows)
    return {year: f"{value:016x}:{rows}" for year, (value, rows) in sums.items()}


def _data_version(parts: dict[str, str], native: str) -> str:
    """A symbol's data version from its parts' hashes: the same rows give the same version however
    the lake split them."""
    content: dict[str, str] = _year_sums(parts)
    # Another native interval than 1h is part of the content.
    content = content if native == "1h" else {"native": native, **content}
    return hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=8).hexdigest()


def _write_parquet(frame: pl.DataFrame, path: Path) -> dict:
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


def file_fingerprint(path: Path) -> dict:
    """What the manifest records of a file at commit: its sha256, size and modification time.

    Size and mtime make the check on every read a stat (a file truncated or rewritten from
    outside changes them); `lake verify` and any mismatch compare the sha256.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    stat = path.stat()
    return {"sha256": digest.hexdigest(), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


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


def _assign_ids(parent: Snapshot | None, names: set[str]) -> dict[str, int]:
    """The lake's own ids: a name keeps the id it has in this lake; a new name gets the next one.
    Ids never come from a source, so two sources' ids can never clash (the name is the identity)."""
    ids = {name: int(meta["symbol_id"]) for name, meta in (parent.symbols.items() if parent else [])
           if name in names}
    next_id = max([int(m["symbol_id"]) for m in parent.symbols.values()] if parent else [0], default=0) + 1
    for name in sorted(names - set(ids)):
        ids[name] = next_id
        next_id += 1
    return ids


def commit(
    lake_root: Path,
    bars: pl.DataFrame,
    natives: dict[str, str],
    *,
    full: bool,
    watermark: datetime | None,
    rows_read: int,
    source: str,
    whole: set[str] | frozenset[str] = frozenset(),
    refused: dict[str, str] | None = None,
    derived: tuple[str, ...] = ("1h", "1d"),
    thresholds: health.Thresholds | None = None,
    strict: bool = False,
    fail_at: str | None = None,
) -> CommitResult:
    """Merge changed bars into a new snapshot and make it current, atomically.

    `bars` has symbol, ts, open..volume: each symbol's rows at its native interval
    (`natives[symbol]`). A symbol is its name: the lake assigns its own ids. With `full`, `bars`
    is the whole source and replaces the lake (symbols and rows it lacks disappear); a source
    other than the current snapshot's always commits as full (a lake holds one source's
    data). Otherwise rows are upserted into the current snapshot, and the symbols in `whole`
    (or whose native interval changed) are replaced by their rows in `bars`. A symbol in `refused`
    (name -> what is wrong with its source rows; it has no rows in `bars`) keeps its bars of the
    current snapshot, full or not, if that snapshot came from the same source, else is left out;
    the manifest lists it under `refused` (the next export reads it whole). Coarser intervals
    are derived from the native rows. If no symbol's content changed, nothing is written and
    the current snapshot stands (idempotent export). Data health is measured per (symbol,
    year) as years are written and recorded in the manifest (`symbols.<name>.health`); with
    `strict`, a changed symbol with findings refuses the commit. The caller holds
    `export_lock`. `fail_at` names a step at which to die (tests).
    """
    lake_root = Path(lake_root)
    thresholds = thresholds or health.Thresholds()
    refused = dict(sorted((refused or {}).items()))
    try:
        parent = current_snapshot(lake_root)
        if parent is not None and parent.manifest.get("source") != source:
            full = True
        state = _load_state(parent)
        if full and parent is not None:
            # Every file's sha256: rot keeps size and mtime, and unchanged rows would otherwise keep it current.
            check_snapshot(parent, deep=True)
    except SnapshotDamaged:
        if not full:
            raise
        # A full export rebuilds from the source alone: the way out of any damage to the lake.
        parent, state = None, {}
    parent_natives = {name: meta.get("native", "1h") for name, meta in state.items()}
    unknown = sorted(set(bars["symbol"].unique().to_list()) - set(natives))
    if unknown:
        raise PipelineError(f"bars for symbol(s) without a native interval: {', '.join(unknown[:5])}")
    delta_names = set(bars["symbol"].unique().to_list())
    # Refused symbols whose current bars stay as they are (never another source's bars for this one's symbol).
    kept = set(refused) & set(parent_natives) if parent and parent.manifest.get("source") == source else set()
    if full:
        whole = set(natives) - kept
        new_natives = {**{name: natives[name] for name in delta_names}, **{n: parent_natives[n] for n in kept}}
    else:
        whole = (set(whole) | {n for n in delta_names if parent_natives.get(n, natives[n]) != natives[n]}) - kept
        new_natives = {**parent_natives, **{n: natives[n] for n in delta_names | (whole & set(natives))}}
        for name in whole - delta_names:  # replaced by nothing: the symbol is gone
            new_natives.pop(name, None)
    ids = _assign_ids(parent, set(new_natives) | set(parent_natives))
    names_of = {sid: name for name, sid in ids.items()}
    # Joined on the distinct names only, in the rows' own symbol type (an export's Enum joins by code).
    present = bars["symbol"].unique()
    id_frame = pl.DataFrame({
        "symbol": present,
        "symbol_id": pl.Series([ids.get(name) for name in present.to_list()], dtype=pl.Int32),
        "_native": pl.Series([new_natives.get(name) for name in present.to_list()], dtype=pl.String),
    }).filter(pl.col("symbol_id").is_not_null())
    bars = bars.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC"))).join(id_frame, on="symbol").with_columns(
        pl.lit(1, pl.Int32).alias("bars"))

    parent_files = parent.manifest["files"] if parent else {}
    parent_years = {int(y) for per in parent_files.values() for y in per}
    # A lake written before row-sum hashes is rehashed whole, once (its versions change once).
    rehash = parent is not None and parent.manifest.get("row_hash") != ROW_HASH
    years = set(bars["ts"].dt.year().unique().to_list())
    whole_years = {_part_year(key) for name in whole for key in state.get(name, {}).get("year_hashes", {})}
    if full or rehash:
        years |= parent_years
    else:
        years |= whole_years
    years_list = sorted(years)
    # The year a full rewrite splits into base + tail (the newest one: where the next hours land).
    newest_year = max(parent_years | years, default=None)

    snapshot_id = new_snapshot_id()
    staging = lake_root / ".staging" / snapshot_id
    staging.mkdir(parents=True)
    try:
        year_hashes: dict[str, dict[str, str]] = {
            sym: dict(meta.get("year_hashes", {})) for sym, meta in state.items()}
        year_stats: dict[str, dict[str, dict[str, dict]]] = {
            sym: {iv: dict(per) for iv, per in meta.get("year_stats", {}).items()} for sym, meta in state.items()}
        year_health: dict[str, dict[str, dict]] = {
            sym: dict(meta.get("year_health", {})) for sym, meta in state.items()}
        old_sums = {} if rehash else {name: _year_sums(parts) for name, parts in year_hashes.items()}
        by_year = {
            key[0]: frame for key, frame in bars.with_columns(pl.col("ts").dt.year().alias("_year"))
            .partition_by("_year", as_dict=True, include_key=False).items()
        }
        empty = bars.clear()
        kept_old = kept | {name for name in parent_natives if name not in whole and not full}
        whole_list = sorted(whole)

        # Years whose changes all fall in their tail (on or after its cut, no symbol replaced whole):
        # only the tail is rewritten, the base files are linked. O(rows since the cut), not O(year).
        tail_cuts: dict[int, datetime] = {}
        if not full and not rehash and parent is not None:
            for year in years_list:
                delta = by_year.get(year, empty)
                cut = _tail_from(parent_files, year)
                if cut is None or year in whole_years or (delta.height and (
                        delta["ts"].min() < cut or delta["symbol"].is_in(whole_list).any())):
                    continue
                tail_cuts[year] = cut

        def merged(year: int, read: Callable[[Snapshot | None, str, int], pl.DataFrame | None]) -> dict:
            delta = by_year.get(year, empty)
            base: dict[str, pl.DataFrame] = {}
            for native in sorted(set(new_natives.values()) | set(parent_natives.values()), key=intervals.SECONDS.get):
                part = delta.filter(pl.col("_native") == native).select(list(lake_schema()))
                old = read(parent, native, year) if kept_old else None
                if old is not None:
                    own = [ids[n] for n in kept_old if parent_natives[n] == native]
                    old = old.filter(pl.col("symbol_id").is_in(own))
                    old = old.join(part.select("symbol_id", "ts"), on=["symbol_id", "ts"], how="anti")
                    part = pl.concat([old.select(list(lake_schema())), part.cast({"symbol": pl.String})])
                if part.height:
                    base[native] = part.sort("symbol_id", "ts")
            return base

        def merge_year(year: int) -> list[tuple[int, bool, dict[str, pl.DataFrame]]]:
            """The parts of `year` to write: its tail alone, or the whole year (split at a cut if newest)."""
            cut = tail_cuts.get(year)
            if cut is not None:
                tail = merged(year, _read_tail)
                newest = max((frame["ts"].max() for frame in tail.values()), default=cut)
                if newest - cut < COMPACT_AFTER:
                    return [(year, True, tail)]
                # The tail grew past COMPACT_AFTER: this export folds it into the base (compaction).
            frames = merged(year, _read_year)
            if year != newest_year or not frames:
                tail_cuts.pop(year, None)
                return [(year, False, frames)]
            # The tail starts at the day of the earliest last bar among the symbols still trading (a
            # last bar within COMPACT_AFTER of the newest), so each of them appends into the tail.
            lasts = pl.concat([frame.group_by("symbol_id").agg(pl.col("ts").max()) for frame in frames.values()])["ts"]
            recent = lasts.filter(lasts >= lasts.max() - COMPACT_AFTER).min()
            cut = tail_cuts[year] = recent.replace(hour=0, minute=0, second=0, microsecond=0)
            return [(year, False, {n: f.filter(pl.col("ts") < cut) for n, f in frames.items()}),
                    (year, True, {n: f.filter(pl.col("ts") >= cut) for n, f in frames.items()})]

        def build_part(part: tuple[int, bool, dict[str, pl.DataFrame]]) -> tuple:
            """Hashes, health and the written files of one part (a year's base or tail)."""
            year, tail, frames = part
            hashes: dict[int, str] = {}
            measured: list[dict] = []
            outputs: dict[str, list[pl.DataFrame]] = {}
            for native, frame in frames.items():
                if not frame.height:
                    continue
                hashes.update(_hash_symbols(frame))
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
                    [part.cast({"symbol": pl.String}) for part in outputs[interval]]).sort("symbol_id", "ts")
                relative = f"interval={interval}/year={year}/{interval}-{year}{TAIL_FILE if tail else ''}.parquet"
                fingerprint = _write_parquet(frame, staging / relative)
                if fail_at == "mid-write":
                    os._exit(137)
                done.append((interval, relative, frame.height, fingerprint, _symbol_stats(frame)))
            return year, tail, hashes, measured, done

        with ThreadPoolExecutor(max_workers=2) as pool:
            parts = [part for found in pool.map(merge_year, years_list) for part in found]
            built_parts = list(pool.map(build_part, parts))
        tail_only = {year for year, tail, _ in parts if tail} - {year for year, tail, _ in parts if not tail}
        # The state keys rebuilt: a tail-only year's tail, else both parts of the year.
        rebuilt = {_part_key(year, True) for year in years_list} | {
            _part_key(year, False) for year in years_list if year not in tail_only}
        for per_symbol in (*year_hashes.values(), *year_health.values(),
                           *(per for by_iv in year_stats.values() for per in by_iv.values())):
            for key in rebuilt & set(per_symbol):
                del per_symbol[key]
        for year, tail, hashes, measured, done in built_parts:
            key = _part_key(year, tail)
            for sid, digest in hashes.items():
                year_hashes.setdefault(names_of[sid], {})[key] = digest
            for record in measured:
                year_health.setdefault(names_of[record.pop("symbol_id")], {})[key] = record
            for interval, _, _, _, stats in done:
                for sid, per in stats.items():
                    year_stats.setdefault(names_of[sid], {}).setdefault(interval, {})[key] = per
        if rehash:
            changed = set(year_hashes) | set(state)
        else:
            changed = {name for name in set(year_hashes) | set(old_sums)
                       if _year_sums(year_hashes.get(name, {})) != old_sums.get(name, {})}
        # A symbol whose native interval changed changes even if its hashes happen to agree.
        changed |= {n for n in new_natives if n in parent_natives and parent_natives[n] != new_natives[n]}

        if not changed and parent is not None and refused == parent.manifest.get("refused", {}):
            shutil.rmtree(staging)
            return CommitResult(parent, False, [], rows_read, 0, 0)

        files: dict[str, dict[str, dict]] = {}
        written = linked = rows_written = bytes_written = 0

        def link(record: dict) -> dict:
            nonlocal linked
            target = staging / record["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            # Never carry damage forward: a stat here; the export checked every file's sha256 under this
            # lock before reading PostgreSQL (`export.plan`), and read the rows whole if one differed.
            check_files(parent, [parent.path / record["path"]])
            os.link(parent.path / record["path"], target)
            linked += 1
            return record if "sha256" in record else {**record, **file_fingerprint(target)}

        for interval, per_year in parent_files.items():
            for year, entry in per_year.items():
                if int(year) in years and int(year) not in tail_only:
                    continue  # rewritten whole
                kept_entry = {k: v for k, v in entry.items() if k != "tail"}
                if "path" in entry:
                    kept_entry.update(link({k: v for k, v in entry.items() if k not in ("tail", "tail_from")}))
                if "tail" in entry and int(year) not in tail_only:
                    kept_entry["tail"] = link(entry["tail"])
                if "path" in kept_entry or "tail" in kept_entry:
                    files.setdefault(interval, {})[year] = kept_entry
        for year, tail, _, _, done in built_parts:
            for interval, relative, rows, fingerprint, _ in done:
                entry = files.setdefault(interval, {}).setdefault(str(year), {})
                record = {"path": relative, "rows": rows, **fingerprint}
                if tail:
                    entry["tail"] = record
                else:
                    entry.update(record)
                written += 1
                rows_written += rows
                bytes_written += fingerprint["bytes"]
        for per_year in files.values():
            for year, entry in per_year.items():
                if int(year) in tail_cuts:
                    entry["tail_from"] = tail_cuts[int(year)].isoformat()
                elif int(year) in years:
                    entry.pop("tail_from", None)

        symbol_meta = {}
        new_state: dict[str, dict] = {}
        for name in sorted(year_hashes):
            hashes = year_hashes[name]
            if not hashes or name not in new_natives:
                continue
            native = new_natives[name]
            meta = {"symbol_id": ids[name], "data_version": _data_version(hashes, native), "native": native}
            per_interval_stats = {iv: per for iv, per in year_stats.get(name, {}).items() if per}
            new_state[name] = {"native": native, "year_hashes": hashes, "year_stats": per_interval_stats,
                               "year_health": year_health.get(name, {})}
            for interval, per_year in per_interval_stats.items():
                meta[interval] = {
                    "first": min(s["first"] for s in per_year.values()),
                    "last": max(s["last"] for s in per_year.values()),
                    "bars": sum(s["bars"] for s in per_year.values()),
                }
            parts = list(year_health.get(name, {}).values())
            if parts:
                combined = health.combine(parts, thresholds)
                meta["gaps"] = combined["gaps"]
                meta["health"] = health.findings(combined, thresholds)
            symbol_meta[name] = meta
        flagged = sorted(n for n in changed if symbol_meta.get(n, {}).get("health"))
        if strict and flagged:
            raise PipelineError(
                f"--strict: {len(flagged)} changed symbol(s) have data findings ({flagged[0]}: "
                f"{'; '.join(symbol_meta[flagged[0]]['health'])}); no snapshot was written. "
                "`cryptobt data check` lists them; export without --strict to keep them as warnings")
        manifest = {
            "snapshot_id": snapshot_id,
            "created_at": datetime.now(UTC).isoformat(),
            "parent": parent.id if parent else None,
            "source": source,
            "full": full,
            "watermark": watermark.isoformat() if watermark else (
                parent.manifest.get("watermark") if parent and not full else None),
            "rows_read": rows_read,
            "changed_symbols": sorted(changed),
            "refused": refused,
            "health_thresholds": {"jump_ratio": thresholds.jump_ratio, "stale_bars": thresholds.stale_bars},
            "files": files,
            "row_hash": ROW_HASH,
            "symbols": symbol_meta,
        }
        manifest = formats.LAKE_MANIFEST.stamped(manifest)
        state_text = json.dumps(formats.EXPORT_STATE.stamped({"symbols": new_state}), sort_keys=True)
        (staging / STATE).write_text(state_text)
        manifest["state_sha256"] = hashlib.sha256(state_text.encode()).hexdigest()
        manifest[MANIFEST_CHECKSUM] = _manifest_checksum(manifest)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _fsync_dir(staging)
        if fail_at == "before-commit":
            os._exit(137)
        final = lake_root / "snapshots" / snapshot_id
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
        _fsync_dir(final.parent)
        _point_current(lake_root, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    snapshot = load_snapshot(final)
    return CommitResult(snapshot, True, sorted(changed), rows_read, written, linked, rows_written, bytes_written)


def _point_current(lake_root: Path, target: Path) -> None:
    # rename() over the old link is atomic: a reader resolves either the old or the new.
    temporary = lake_root / f".current-{secrets.token_hex(4)}"
    os.symlink(os.path.relpath(target, lake_root), temporary)
    os.replace(temporary, lake_root / "current")
    _fsync_dir(lake_root)


def vacuum(lake_root: Path, *, keep: int, keep_hours: float, now: datetime | None = None) -> list[str]:
    """Remove snapshots beyond the newest `keep` that are older than `keep_hours`,
    and staging left by killed exports. Never removes the current snapshot, nor one a run is
    reading (`reading`): that one goes at a later vacuum. Caller holds `export_lock`.
    Returns the removed snapshot ids.
    """
    lake_root = Path(lake_root)
    now = now or datetime.now(UTC)
    current = current_snapshot(lake_root)
    snapshots = list_snapshots(lake_root)
    removable = snapshots[: max(len(snapshots) - keep, 0)]
    removed: list[str] = []
    folder = lake_root / "snapshots"
    for snapshot in removable:
        if current is not None and snapshot.id == current.id:
            continue
        if now - snapshot.created_at < timedelta(hours=keep_hours):
            continue
        if _remove_unless_read(lake_root, snapshot, folder):  # one a run still reads waits for the next vacuum
            removed.append(snapshot.id)
    if folder.exists():
        _fsync_dir(folder)
        for leftover in folder.iterdir():
            # What earlier killed vacuums left: renamed folders, or folders whose manifest went first.
            if leftover.name.startswith(REMOVING_PREFIX) or not (leftover / MANIFEST).exists():
                _remove(leftover)
    staging = lake_root / ".staging"
    if staging.exists():  # the caller holds the export lock: nothing in here is in use
        for leftover in staging.iterdir():
            _remove(leftover)
    from pipeline.lake import grids

    grids.remove_except(lake_root, {s.id for s in list_snapshots(lake_root)})
    return removed


def _remove_unless_read(lake_root: Path, snapshot: Snapshot, folder: Path) -> bool:
    """Rename `snapshot` out of the listing unless a run holds it (`reading`); True if renamed."""
    lock = lake_root / READERS / f"{snapshot.id}.lock"
    lock.parent.mkdir(exist_ok=True)
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # Renamed out of the listing first (atomic), deleted after: a vacuum killed midway
        # leaves a hidden folder, never a listed snapshot with some of its files gone.
        os.rename(snapshot.path, folder / f"{REMOVING_PREFIX}{snapshot.id}")
        lock.unlink(missing_ok=True)
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
