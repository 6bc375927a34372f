"""Whether a snapshot's files are the ones it committed: each file's fingerprint (sha256, size,
mtime) is recorded in the manifest at commit and compared here.

Every read pays a stat per file (`check_files`); an export compares every sha256 of the snapshot it
builds on (`check_snapshot`, deep), since bit rot keeps size and mtime; `cryptobt lake verify` lists
every problem of a snapshot (`problems`), its kept price grids included.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.core.errors import FileDamaged, SnapshotDamaged
from pipeline.core.objects import ObjectPath
from pipeline.lake import grids
from pipeline.lake.snapshots import (
    MANIFEST,
    STATE,
    Snapshot,
    all_file_records,
    load_snapshot,
    load_state,
)


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


def damaged_files(snapshot: Snapshot, paths: list[Path] | None = None, *,
                  deep: bool = False) -> list[tuple[Path, str]]:
    """The files of `snapshot` (all, or those of `paths`) that are not the ones committed, each with
    what is wrong: "missing", or "changed" (size or sha256 differs from the manifest's).

    A stat per file, and its sha256 when size or mtime differ: what every read pays. `deep` compares
    every file's sha256, since bit rot keeps size and mtime: what an export pays for the snapshot it
    builds on (~0.14 s of CPU per 232 MB lake, a thread per core), and `lake verify`. Files of
    snapshots written before checksums existed are not checked."""
    recorded = {str(snapshot.path / record["path"]): record for record in all_file_records(snapshot.manifest)}
    wanted = list(recorded) if paths is None else [str(path) for path in paths]
    if isinstance(snapshot.path, ObjectPath):
        return _damaged_objects(snapshot, recorded, wanted, deep)

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


def _damaged_objects(snapshot: Snapshot, recorded: dict[str, dict], wanted: list[str],
                     deep: bool) -> list[tuple[ObjectPath, str]]:
    """`damaged_files` on object storage: one LIST of the snapshot's prefix gives every size (an
    object's time is its upload's, not the commit's file's, so only the size is compared); `deep`
    reads each object whole for its sha256."""
    listed = snapshot.path.walk_files()
    prefix = str(snapshot.path) + "/"

    def problem(key: str) -> str | None:
        record = recorded.get(key)
        if record is None or "sha256" not in record:
            return None
        found = listed.get(key[len(prefix):])
        if found is None:
            return "missing"
        if found.st_size != record["bytes"]:
            return "changed"
        if not deep:
            return None
        return "changed" if hashlib.sha256(ObjectPath(key).read_bytes()).hexdigest() != record["sha256"] else None

    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = list(pool.map(problem, wanted))
    return [(ObjectPath(key), what) for key, what in zip(wanted, problems, strict=True) if what]


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
    """The whole-snapshot check an export builds on: state checksum, then each file (`check_files`).

    On object storage `deep` compares sizes only: hashing would download the whole lake on every
    export, and the store checks each object's bytes itself (`lake verify` still hashes them)."""
    load_state(snapshot)
    check_files(snapshot, deep=deep and not isinstance(snapshot.path, ObjectPath))


def problems(snapshot_path: Path) -> list[str]:
    """Every problem of one snapshot, one line each: manifest, state, each file's sha256, stray files, and
    its kept price grids (pipeline.lake.grids)."""
    try:
        snapshot = load_snapshot(snapshot_path)
    except SnapshotDamaged as exc:
        return [str(exc)]
    found = []
    try:
        load_state(snapshot)
    except SnapshotDamaged as exc:
        found.append(str(exc))
    known = {MANIFEST, STATE}
    records = all_file_records(snapshot.manifest)
    damaged = dict(damaged_files(snapshot, deep=True))
    for entry in records:
        known.add(entry["path"])
        path = snapshot.path / entry["path"]
        if damaged.get(path) == "missing" or not path.is_file():
            found.append(f"{path}: missing")
        elif "sha256" not in entry:
            found.append(f"{path}: no checksum recorded (written before checksums; re-export to add them)")
        elif path in damaged:
            found.append(f"{path}: sha256 differs from the one recorded at commit (damaged)")
    if isinstance(snapshot.path, ObjectPath):
        present = sorted(snapshot.path.walk_files())
    else:
        present = sorted(str(p.relative_to(snapshot.path)) for p in snapshot.path.rglob("*") if p.is_file())
    for relative in present:
        if relative not in known:
            found.append(f"{snapshot.path / relative}: stray file (not part of the snapshot; readers ignore it)")
    return found + grids.verify(snapshot_path.parent.parent, snapshot)
