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

from pipeline.lake import grids
from pipeline.lake.snapshots import (
    MANIFEST,
    READERS,
    Snapshot,
    current_snapshot,
    fsync_dir,
    list_snapshots,
)

# A snapshot folder being removed by vacuum (hidden: never listed, never globbed).
REMOVING_PREFIX = ".removing-"


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
