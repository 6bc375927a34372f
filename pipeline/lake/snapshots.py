"""The Parquet lake's snapshots: what a snapshot is (its manifest and export state), listing and
resolving them, and the locks of the writer (`export_lock`) and of the runs reading one (`reading`).

Written by the commit (pipeline.lake.commit: plan, stage, verify, publish), checked against the
files' recorded fingerprints by pipeline.lake.verify, removed by pipeline.lake.retention.

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
since `tail_from`, not the year. A tail spanning staging.COMPACT_AFTER is folded into the base by the next
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

On object storage (``CRYPTOBT_LAKE_ROOT=s3://bucket/prefix``, pipeline.lake.objects) there are no
symlinks, hard links or renames: the same ``snapshots/<id>/`` folders hold the same files (a year
the commit did not rewrite is a server-side copy of the parent's object), and a snapshot becomes
current when its head is written last::

    _heads/<seq>.json      {"seq": 7, "snapshot_id": ..., "parent": ...}   (written If-None-Match: *)
    _readers/<id>/<token>  (a run reading snapshot <id>; vacuum leaves it for a later vacuum)

`current` is the newest head; a snapshot no head names (an export killed before its head, or one
that lost the race for the head) is never listed nor read, and vacuum removes its objects. A commit
builds on head `seq` and writes head `seq + 1` only if no object has that key: of two concurrent
exports built on the same head exactly one wins; the other removes what it uploaded and says so.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core import formats, objects
from pipeline.core.config import check_writable_folder
from pipeline.core.errors import LakeBusy, PipelineError, SnapshotDamaged
from pipeline.core.objects import ObjectPath

if TYPE_CHECKING:
    import polars as pl

MANIFEST = "_manifest.json"
# The manifest's own checksum (sha256 of its canonical JSON without this key).
MANIFEST_CHECKSUM = "manifest_sha256"
# Shared locks of the runs reading each snapshot (see `reading`).
READERS = ".readers"
# On object storage: the commit pointers, and the leases of the runs reading each snapshot.
HEADS = "_heads"
OBJECT_READERS = "_readers"
# A reader's lease older than this is a killed reader's: vacuum no longer waits for it.
LEASE_HOURS = 24.0
# Per (symbol, year) content hashes and bar stats: what the next commit needs to
# compute versions, kept out of the manifest so readers parse a small file.
STATE = "_state.json"


@dataclass(frozen=True)
class Snapshot:
    """A committed snapshot, as its manifest describes it."""

    id: str
    path: Path | ObjectPath
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

    def files(self, interval: str, years: range | None = None) -> list[Path | ObjectPath]:
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


def new_snapshot_id(now: datetime | None = None) -> str:
    """Sortable and unique: UTC time to the microsecond plus a random suffix."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_snapshot(lake_root: Path | ObjectPath) -> Snapshot | None:
    """The snapshot `current` points at (the newest head on object storage), or None for an empty lake."""
    if isinstance(lake_root, ObjectPath):
        heads = list_heads(lake_root)
        return load_snapshot(lake_root / "snapshots" / heads[-1]["snapshot_id"]) if heads else None
    link = Path(lake_root) / "current"
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    path = (link.parent / target).resolve()
    return load_snapshot(path)


_loaded: dict[str, Snapshot] = {}


def list_heads(lake_root: ObjectPath) -> list[dict]:
    """The commit pointers of a lake on object storage, oldest first (`seq` order)."""
    heads = []
    for path in (lake_root / HEADS).iterdir():
        if path.name.endswith(".json"):
            try:
                head = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # never written whole by us: S3 objects appear whole; someone else's
            if isinstance(head, dict) and isinstance(head.get("seq"), int) and isinstance(head.get("snapshot_id"), str):
                heads.append(head)
    return sorted(heads, key=lambda head: head["seq"])


def head_key(seq: int) -> str:
    return f"{HEADS}/{seq:012d}.json"


def load_snapshot(path: Path | ObjectPath) -> Snapshot:
    """The snapshot at `path`. A committed snapshot never changes, so it is parsed once per process."""
    key = str(path)
    snapshot = _loaded.get(key)
    if snapshot is None:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            if isinstance(manifest, dict):  # before the checksum: a newer format may sum differently
                formats.LAKE_MANIFEST.version(path / MANIFEST, manifest)
            valid = isinstance(manifest, dict) and isinstance(manifest.get("snapshot_id"), str) and (
                MANIFEST_CHECKSUM not in manifest or manifest[MANIFEST_CHECKSUM] == manifest_checksum(manifest))
        except (OSError, ValueError):
            valid = False
        if not valid:
            raise SnapshotDamaged(f"the manifest {path / MANIFEST} does not verify (garbled, edited or missing); "
                                  "`cryptobt export --full` writes a good snapshot")
        snapshot = _loaded[key] = Snapshot(id=manifest["snapshot_id"], path=path, manifest=manifest)
    return snapshot


def manifest_checksum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def load_state(snapshot: Snapshot | None) -> dict:
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


def require_snapshot(lake_root: Path | ObjectPath, snapshot_id: str | None = None) -> Snapshot:
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
        if isinstance(lake_root, ObjectPath):
            objects.check_reachable(lake_root, "CRYPTOBT_LAKE_ROOT")  # a missing bucket lists as an empty lake
        elif list_snapshots(lake_root):
            raise SnapshotDamaged(
                f"the lake's current pointer {Path(lake_root) / 'current'} is missing though snapshots exist; "
                "`cryptobt export` (or `cryptobt export --full`) makes a new current snapshot"
            )
        raise PipelineError(
            f"the lake at {lake_root} has no snapshot yet; run `cryptobt export` "
            "(from PostgreSQL) or `cryptobt demo` (sample lake) first"
        )
    return snapshot


def list_snapshots(lake_root: Path | ObjectPath) -> list[Snapshot]:
    """Every committed snapshot, oldest first (on object storage: those a head names)."""
    if isinstance(lake_root, ObjectPath):
        found = []
        for head in list_heads(lake_root):
            try:
                found.append(load_snapshot(lake_root / "snapshots" / head["snapshot_id"]))
            except SnapshotDamaged:
                continue  # `lake verify` names it; it is never read
        return found
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
def export_lock(lake_root: Path | ObjectPath, *, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the lake's export lock; LakeBusy if another export holds it past `wait_seconds`.

    An flock dies with its process, so a killed export never leaves the lake locked. On object
    storage the lock is this machine's (a local file per lake location): exports on other machines
    are kept apart by the conditional head write instead (see the module's docstring).
    """
    lock_folder = local_folder(lake_root)
    lock_folder.mkdir(parents=True, exist_ok=True)
    handle = open(lock_folder / ".export.lock", "a+")  # noqa: SIM115 - held for the block
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


def local_folder(lake_root: Path | ObjectPath) -> Path:
    """Where this machine keeps what belongs to a lake but not in it: the lake root itself on a local
    disk; for a lake on object storage a folder per location under the user's cache (the export lock,
    the staging of a commit, the kept price grids)."""
    return objects.local_folder(lake_root) if isinstance(lake_root, ObjectPath) else Path(lake_root)


@contextmanager
def _pin(lake_root: Path | ObjectPath, snapshot_id: str) -> Iterator[None]:
    """A reader's pin on a snapshot for the block: a shared flock on `<lake>/.readers/<id>.lock` (it dies
    with the reader); on object storage a lease object `_readers/<id>/<token>`, removed when the block
    ends (a killed reader's expires after LEASE_HOURS). A read-only local lake pins nothing: nothing can
    vacuum it under the reader either."""
    if isinstance(lake_root, ObjectPath):
        lease = lake_root / OBJECT_READERS / snapshot_id / f"{os.getpid()}-{secrets.token_hex(6)}"
        lease.write_bytes(b"")
        try:
            yield
        finally:
            lease.unlink(missing_ok=True)
        return
    try:
        folder = lake_root / READERS
        folder.mkdir(exist_ok=True)
        handle = open(folder / f"{snapshot_id}.lock", "a+")  # noqa: SIM115 - held for the block
    except OSError:
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield
    finally:
        handle.close()


@contextmanager
def reading(lake_root: Path | ObjectPath, snapshot: Snapshot) -> Iterator[Snapshot]:
    """Pin `snapshot` while a run reads it (`_pin`): `vacuum` leaves a pinned snapshot for a later vacuum.

    If the snapshot was superseded and removed between resolving it and pinning it, the current
    snapshot is pinned instead; a snapshot named explicitly that is gone is an error saying so.
    """
    lake_root = lake_root if isinstance(lake_root, ObjectPath) else Path(lake_root)
    for _ in range(3):
        with _pin(lake_root, snapshot.id):
            if (snapshot.path / MANIFEST).exists():
                yield snapshot
                return
        latest = current_snapshot(lake_root)
        if latest is None or latest.id == snapshot.id:
            break
        snapshot = latest
    raise PipelineError(f"snapshot {snapshot.id} was removed by `cryptobt lake vacuum` before this run could "
                        "read it; run again (it reads the current snapshot)")


def read_whole(path: Path | ObjectPath) -> pl.DataFrame:
    """One lake file whole (what a commit merges into), from a local disk or object storage."""
    import polars as pl

    if isinstance(path, ObjectPath):
        return pl.read_parquet(io.BytesIO(path.read_bytes()))
    return pl.read_parquet(path)


def check_writable(lake_root: Path | ObjectPath) -> None:
    """Fail before any work if the lake root cannot be written."""
    if isinstance(lake_root, ObjectPath):
        objects.check_reachable(lake_root, "CRYPTOBT_LAKE_ROOT")
        check_writable_folder(local_folder(lake_root), "CRYPTOBT_LOCAL_CACHE")
        return
    check_writable_folder(Path(lake_root), "CRYPTOBT_LAKE_ROOT")


def all_file_records(manifest: dict) -> list[dict]:
    """Every file a snapshot's manifest records: the price files of every (interval, year), then the
    futures file (pipeline.lake.futures_table), if any."""
    records = [record for per in manifest["files"].values() for entry in per.values()
               for record in file_records(entry)]
    return records + ([manifest["futures"]] if manifest.get("futures") else [])


def file_records(entry: dict) -> list[dict]:
    """The files of one (interval, year) manifest entry: its base (`path`...) and its tail, if any.

    Base and tail never share a bar (the base holds bars before `tail_from`, the tail the rest),
    so reading both, or globbing the folder, sees each bar once."""
    base = [{k: v for k, v in entry.items() if k not in ("tail", "tail_from")}] if "path" in entry else []
    return base + ([entry["tail"]] if "tail" in entry else [])
