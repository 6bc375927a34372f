"""Retention: which snapshots the lake keeps, and removing the rest (`cryptobt lake vacuum`, and the
last step of every export).

A snapshot a run is reading (`snapshots.reading`) is never removed: it goes at a later vacuum. A
snapshot is renamed out of the listing before it is deleted, so a vacuum killed midway leaves a
hidden folder, never a listed snapshot with some of its files gone.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.core.errors import SnapshotDamaged
from pipeline.core.objects import ObjectPath
from pipeline.lake import grids
from pipeline.lake.snapshots import (
    LEASE_HOURS,
    MANIFEST,
    OBJECT_READERS,
    READERS,
    Snapshot,
    current_snapshot,
    fsync_dir,
    head_key,
    list_heads,
    list_snapshots,
    load_snapshot,
    local_folder,
)

# A snapshot folder being removed by vacuum (hidden: never listed, never globbed).
REMOVING_PREFIX = ".removing-"


def vacuum(lake_root: Path, *, keep: int, keep_hours: float, now: datetime | None = None) -> list[str]:
    """Remove snapshots beyond the newest `keep` that are older than `keep_hours`,
    and staging left by killed exports. Never removes the current snapshot, nor one a run is
    reading (`reading`): that one goes at a later vacuum. Caller holds `export_lock`.
    Returns the removed snapshot ids.
    """
    if isinstance(lake_root, ObjectPath):
        return _vacuum_objects(lake_root, keep=keep, keep_hours=keep_hours, now=now or datetime.now(UTC))
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
        fsync_dir(folder)
        for leftover in folder.iterdir():
            # What earlier killed vacuums left: renamed folders, or folders whose manifest went first.
            if leftover.name.startswith(REMOVING_PREFIX) or not (leftover / MANIFEST).exists():
                _remove(leftover)
    staging = lake_root / ".staging"
    if staging.exists():  # the caller holds the export lock: nothing in here is in use
        for leftover in staging.iterdir():
            _remove(leftover)
    grids.remove_except(lake_root, {s.id for s in list_snapshots(lake_root)})
    return removed


# What an export on another machine is uploading is not named by a head yet: vacuum leaves an unnamed
# snapshot folder this long before taking it for what a killed or beaten export left.
UNNAMED_GRACE = timedelta(hours=1)


def _vacuum_objects(lake_root: ObjectPath, *, keep: int, keep_hours: float, now: datetime) -> list[str]:
    """`vacuum` on object storage: a snapshot goes by its head first (one DELETE: it is no longer
    listed nor read), then its objects; a vacuum killed between the two leaves an unnamed folder,
    which a later vacuum removes. Never the newest head (the current snapshot), nor a snapshot with a
    reader's lease younger than LEASE_HOURS, nor an unnamed folder younger than UNNAMED_GRACE."""
    heads = list_heads(lake_root)
    removable = heads[: max(len(heads) - keep, 0)]
    if heads and heads[-1] in removable:
        removable.remove(heads[-1])
    removed: list[str] = []
    for head in removable:
        snapshot_id = head["snapshot_id"]
        folder = lake_root / "snapshots" / snapshot_id
        try:
            created = load_snapshot(folder).created_at
        except SnapshotDamaged:
            created = now - timedelta(hours=keep_hours + 1)  # a damaged one is never read: it may go
        if now - created < timedelta(hours=keep_hours) or _leased(lake_root, snapshot_id, now):
            continue
        (lake_root / head_key(head["seq"])).unlink(missing_ok=True)
        folder.remove_tree()
        removed.append(snapshot_id)
    named = {h["snapshot_id"] for h in list_heads(lake_root)}
    for folder in (lake_root / "snapshots").iterdir():
        if folder.name in named:
            continue
        listed = folder.walk_files()
        newest = max((s.st_mtime_ns for s in listed.values()), default=0)
        if now - datetime.fromtimestamp(newest / 1e9, UTC) >= UNNAMED_GRACE:
            folder.remove_tree()
    staging = local_folder(lake_root) / ".staging"
    if staging.exists():  # the caller holds this machine's export lock: nothing in here is in use
        for leftover in staging.iterdir():
            _remove(leftover)
    grids.remove_except(lake_root, named)
    return removed


def _leased(lake_root: ObjectPath, snapshot_id: str, now: datetime) -> bool:
    """Whether a run holds a lease on the snapshot that is younger than LEASE_HOURS."""
    leases = (lake_root / OBJECT_READERS / snapshot_id).walk_files()
    return any(now - datetime.fromtimestamp(s.st_mtime_ns / 1e9, UTC) < timedelta(hours=LEASE_HOURS)
               for s in leases.values())


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
