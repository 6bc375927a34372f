"""Aligned price grids of whole snapshots, kept on disk beside the lake for the next read.

A snapshot never changes once committed, so the (symbols x time) grid a whole-history read of
all its symbols builds (DuckDB scan, scatter onto the grid, coverage) is the same every time:
the reader keeps it as plain `.npy` files under ``<lake>/.grids/<snapshot id>/<key>/`` and the
next such read maps them (copy-on-write, so nothing a run does can change the files) instead of
scanning Parquet again. That is most of a warm run's read and of a cold process's.

Checked on every read: the grid's ``grid.json`` (format version, pipeline.core.formats) records each
file's size and 64-bit checksum (pipeline.lake.checksum) and the sha256 of each lake file it
was built from. A read maps the files, checksums all of their bytes and compares; a grid that
does not verify (a flipped bit, a lost file, other lake files) is warned about once and rebuilt
from the lake; `lake verify` names its bad file. The checksum costs about what touching the
memory does (2 ms per 74 MB), which the kernels that read the grid pay anyway.

Derived data only: a grid is keyed by the snapshot id, the interval, the symbols, the columns
and the coverage rule; it is written to a hidden temporary folder and renamed into place (a
reader sees a whole grid or none). A process writing (or replacing) a grid holds a lease on its
temporaries: an flock on ``.<key>.<token>.lease`` beside them, which dies with the process.
`lake vacuum` removes the grids of snapshots it removes and the temporaries of processes that
are gone, never those of a live one. Nothing reads the lake's Parquet files through it: DuckDB
globs and the size figures see the snapshots alone. ``CRYPTOBT_GRID_CACHE=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from pipeline.core import formats
from pipeline.core.errors import PipelineWarning
from pipeline.lake import snapshots as lake
from pipeline.lake.checksum import checksum_words

FOLDER = ".grids"
META = "grid.json"
# A writer's hidden names beside the grid it writes: `.<key>.<token>` + one of these.
TEMPORARY_KINDS = ("tmp", "old", "lease")


def enabled() -> bool:
    return os.environ.get("CRYPTOBT_GRID_CACHE", "1") != "0"


def _path(lake_root: Path, snapshot_id: str, interval: str, names: list[str], columns: tuple[str, ...],
          min_coverage: float) -> Path:
    key = hashlib.sha256(json.dumps([interval, names, list(columns), min_coverage]).encode()).hexdigest()[:32]
    return lake.local_folder(lake_root) / FOLDER / snapshot_id / key


class _Unusable(Exception):
    """A grid that cannot be used. With a `path`, it is damaged (warned about); without, it predates checksums."""

    def __init__(self, path: Path | None = None, reason: str = "") -> None:
        super().__init__(f"{path}: {reason}" if path else "written before checksums")
        self.path, self.reason = path, reason


def load(lake_root: Path, snapshot: lake.Snapshot, interval: str, names: list[str], columns: tuple[str, ...],
         min_coverage: float) -> dict[str, np.ndarray] | None:
    """The arrays a read stored (`times`, `bars`, each column, `coverage` if any), checked against their
    checksums; None when there are none, or when they do not verify (one PipelineWarning; the grid is
    removed for the caller to store a new one). A grid of a newer format is refused (UnsupportedFormat)."""
    folder = _path(lake_root, snapshot.id, interval, names, columns, min_coverage)
    try:
        return _open(folder, snapshot, ("times", "bars", *columns))
    except _Unusable as exc:
        if exc.path is not None:
            warnings.warn(f"the price grid {folder} does not verify ({exc.path.name}: {exc.reason}); read from "
                          "the lake instead and rebuilt", PipelineWarning, stacklevel=2)
        _discard(folder)
        return None


def _open(folder: Path, snapshot: lake.Snapshot, required: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The grid in `folder` mapped, every file checksummed; None if there is none; _Unusable if it does not verify."""
    meta_path = folder / META
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        if not folder.is_dir():
            return None
        raise _Unusable() from None  # format version 1: no grid.json, no checksums
    except (OSError, ValueError) as exc:
        raise _Unusable(meta_path, f"unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise _Unusable(meta_path, "not a JSON object")
    if formats.PRICE_GRID.version(meta_path, meta) == 1:
        raise _Unusable()
    recorded = _recorded(snapshot)
    built_from = meta.get("built_from")
    if not isinstance(built_from, dict) or not built_from or any(
            recorded.get(name, "") != digest for name, digest in built_from.items()):
        raise _Unusable(meta_path, f"built from other lake files than snapshot {snapshot.id} holds")
    files = meta.get("files")
    if not isinstance(files, dict) or set(required) - set(files):
        raise _Unusable(meta_path, f"lists no {', '.join(sorted(set(required) - set(files or {})))}.npy")
    return {name: _verified(folder / f"{name}.npy", record) for name, record in files.items()}


def _verified(path: Path, record: object) -> np.ndarray:
    """The array in `path`, mapped copy-on-write (flagged writable: numba types a read-only array slowly),
    after checking every byte of the file against `record`."""
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="c")
    except FileNotFoundError:
        raise _Unusable(path, "missing") from None
    except (OSError, ValueError) as exc:  # an emptied file cannot be mapped
        raise _Unusable(path, f"cannot be mapped ({exc})") from None
    if not isinstance(record, dict) or raw.size != record.get("bytes"):
        raise _Unusable(path, "size differs from the one recorded")
    if checksum(raw) != record.get("checksum"):
        raise _Unusable(path, "checksum differs from the one recorded (damaged)")
    try:
        return _npy_array(raw)
    except ValueError as exc:
        raise _Unusable(path, f"not an array file ({exc})") from None


def checksum(raw: np.ndarray) -> str:
    """The 64-bit checksum (pipeline.lake.checksum) of a uint8 array: every byte, in 64-bit words."""
    whole = raw.size // 8 * 8
    total = int(checksum_words(raw[:whole].view(np.uint64), 0))
    if whole < raw.size:
        tail = np.zeros(8, dtype=np.uint8)
        tail[: raw.size - whole] = raw[whole:]
        total = (total + int(checksum_words(tail.view(np.uint64), whole // 8))) & 0xFFFF_FFFF_FFFF_FFFF
    return f"{total:016x}"


def _npy_array(raw: np.ndarray) -> np.ndarray:
    """The array of a `.npy` file's bytes, as a view of them (no copy)."""
    header = io.BytesIO(raw[: 1 << 16].tobytes())
    version = npy.read_magic(header)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy version {version}")
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, fortran, dtype = read_header(header)
    data = raw[header.tell():]
    if dtype.hasobject or data.size != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError("its size or type does not match its header")
    return data.view(dtype).reshape(shape, order="F" if fortran else "C")


def _recorded(snapshot: lake.Snapshot) -> dict[str, str | None]:
    """The sha256 the manifest records of each file of `snapshot` (None before checksums), by path in it."""
    return {record["path"]: record.get("sha256") for per in snapshot.manifest["files"].values()
            for entry in per.values() for record in lake.file_records(entry)}


def store(lake_root: Path, snapshot: lake.Snapshot, interval: str, names: list[str], columns: tuple[str, ...],
          min_coverage: float, scanned: list[Path], arrays: dict[str, np.ndarray]) -> None:
    """Keep `arrays` (read from the snapshot's files `scanned`) for the next read of the same grid, with
    their checksums; best effort (a failure costs a later read)."""
    folder = _path(lake_root, snapshot.id, interval, names, columns, min_coverage)
    if folder.exists():
        return
    recorded = _recorded(snapshot)
    built_from = {name: recorded.get(name) for name in sorted(str(p.relative_to(snapshot.path)) for p in scanned)}
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _leased(folder) as stem:
            temp = _temporary(stem, "tmp")
            temp.mkdir()
            files = {}
            for name, values in arrays.items():
                np.save(temp / f"{name}.npy", values)
                raw = np.memmap(temp / f"{name}.npy", dtype=np.uint8, mode="c")
                files[name] = {"bytes": int(raw.size), "checksum": checksum(raw)}
                del raw
            meta = formats.PRICE_GRID.stamped({
                "snapshot_id": snapshot.id, "interval": interval, "symbols": len(names), "columns": list(columns),
                "min_coverage": min_coverage, "built_from": built_from, "files": files})
            (temp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
            os.rename(temp, folder)  # whole or not at all; a concurrent writer's grid is the same
    except OSError:
        pass


def _discard(folder: Path) -> None:
    """Take an unusable grid out of the way (renamed, then removed): the next store writes a new one."""
    with contextlib.suppress(OSError), _leased(folder) as stem:
        os.rename(folder, _temporary(stem, "old"))


def _temporary(stem: Path, kind: str) -> Path:
    return stem.with_name(f"{stem.name}.{kind}")


@contextlib.contextmanager
def _leased(folder: Path) -> Iterator[Path]:
    """A hidden stem beside `folder` for this process's temporaries (`<stem>.tmp`, `<stem>.old`), under a
    lease: an flock on `<stem>.lease` held for the block (it dies with the process), so `remove_except`
    leaves them alone while this process lives. Whatever the block leaves is removed after it."""
    stem = folder.with_name(f".{folder.name}.{secrets.token_hex(6)}")
    lease = _temporary(stem, "lease")
    handle = open(lease, "x")  # noqa: SIM115 - held for the block
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if os.stat(lease).st_ino != os.fstat(handle.fileno()).st_ino:
            # A vacuum found the lease before it was locked and took it for a dead writer's.
            raise FileNotFoundError(f"{lease} was removed")
        yield stem
    finally:
        for kind in ("tmp", "old"):
            shutil.rmtree(_temporary(stem, kind), ignore_errors=True)
        lease.unlink(missing_ok=True)
        handle.close()


@contextlib.contextmanager
def _claimed(lease: Path) -> Iterator[bool]:
    """True (holding the flock) when no live process holds `lease`, or there is none; False otherwise."""
    try:
        handle = open(lease)  # noqa: SIM115 - held for the block
    except FileNotFoundError:
        handle = None
    if handle is None:
        yield True
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            free = False
        yield free


def _remove_dead_temporaries(folder: Path) -> None:
    """Remove the temporaries in `folder` of writers that are gone (their lease is free or missing)."""
    stems = set()
    for entry in folder.iterdir():
        stem, _, kind = entry.name.rpartition(".")
        if stem.startswith(".") and len(stem) > 1 and kind in TEMPORARY_KINDS:
            stems.add(folder / stem)
    for stem in stems:
        with _claimed(_temporary(stem, "lease")) as free:
            if free:
                for kind in ("tmp", "old"):
                    shutil.rmtree(_temporary(stem, kind), ignore_errors=True)
                _temporary(stem, "lease").unlink(missing_ok=True)


def remove_except(lake_root: Path, snapshot_ids: set[str]) -> None:
    """Remove the grids of every snapshot not in `snapshot_ids`, and the temporaries of writers that are
    gone; never a live writer's (its lease is held): those wait for a later call."""
    root = lake.local_folder(lake_root) / FOLDER
    if not root.is_dir():
        return
    for folder in root.iterdir():
        if not folder.is_dir() or folder.is_symlink():
            folder.unlink(missing_ok=True)
            continue
        _remove_dead_temporaries(folder)
        if folder.name in snapshot_ids:
            continue
        for grid in folder.iterdir():
            if not grid.name.startswith("."):
                shutil.rmtree(grid, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # stays while a live writer's temporaries are in it


def verify(lake_root: Path, snapshot: lake.Snapshot) -> list[str]:
    """One line per kept grid of `snapshot` that does not verify, naming its bad file (for `lake verify`)."""
    root = lake.local_folder(lake_root) / FOLDER / snapshot.id
    if not root.is_dir():
        return []
    problems = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith("."):
            continue  # a writer's temporaries
        try:
            _open(folder, snapshot, ("times", "bars"))
        except _Unusable as exc:
            if exc.path is not None:
                problems.append(f"{exc} (a damaged price grid: never read as it is; the next read rebuilds it)")
    return problems
