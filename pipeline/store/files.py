"""Append-only Parquet files: each table file written to a hidden temp file, fsynced, then
published under its final name with a hard link (never replacing a file); the writers' leases that
let `runlog.sweep_stale` remove only dead writers' temp files; `one_run`, which publishes a run's
files together."""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import fcntl
import os
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import objects, stopping
from pipeline.core.errors import InputError, PipelineError, disk_full, is_disk_full
from pipeline.core.objects import ObjectPath
from pipeline.store.values import (
    check_name,
)

# The file `results compact` merges a folder's files into, ``compacted-<first run id>~<last run id>.parquet``:
# it holds many runs' rows, where every other table file holds its run's alone (``<run_id>.parquet``). A run
# id has no "~" (values.SAFE_NAME): a query about one run opens only the compacted files whose range holds it.
COMPACTED_PREFIX = "compacted-"


def compacted_name(first_run: str, last_run: str) -> str:
    return f"{COMPACTED_PREFIX}{first_run}~{last_run}.parquet"


def may_hold_run(name: str, run_id: str) -> bool:
    """Whether the table file `name` may hold rows of `run_id`: its own file, or a compacted file whose run id
    range holds it."""
    if name == f"{run_id}.parquet":
        return True
    if not name.startswith(COMPACTED_PREFIX):
        return False
    first, tilde, last = name[len(COMPACTED_PREFIX):].removesuffix(".parquet").partition("~")
    return not tilde or first <= run_id <= last


def trades_root(results_root: str | os.PathLike[str]) -> Path:
    """Root of the trades table: the sibling ``trades`` directory of the results root."""
    return objects.location(results_root).parent / "trades"


def runs_root(results_root: str | os.PathLike[str]) -> Path:
    """Root of the runs table: the sibling ``runs`` directory of the results root."""
    return objects.location(results_root).parent / "runs"


def staging_root(root: Path | ObjectPath) -> Path:
    """Where the hidden temp files (and their writers' leases) of the table folder `root` live: in it on
    a local disk; on object storage in this machine's folder for it (pipeline.core.objects.local_folder),
    uploaded under their final names when published."""
    return objects.local_folder(root) if isinstance(root, ObjectPath) else root


def write_table(
    root: Path,
    run_id: str,
    strategy: str,
    when: datetime,
    rows: list[dict[str, Any]],
    schema: pa.Schema,
) -> Path:
    check_name(run_id, "run_id")
    check_name(strategy, "strategy")
    directory = root / f"run_date={when.date().isoformat()}" / f"strategy={strategy}"
    return _publish(rows_table(rows, schema), directory / f"{run_id}.parquet")


def rows_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    columns = {}
    for field in schema:
        values = [row.get(field.name) for row in rows]
        try:
            # from_pandas: NaN becomes NULL. An undefined metric is NULL in SQL, and DuckDB's
            # filter pushdown mishandles NaN in Parquet (`NOT isnan(x)` can keep NaN rows).
            columns[field.name] = pa.array(values, type=field.type, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise InputError(f"column {field.name!r}: {exc}") from None
    return pa.Table.from_pydict(columns, schema=schema)


class NothingToWrite(Exception):
    """A ResultSink that got no rows: its temp file is removed, nothing is published."""


class _Temp:
    """A hidden temp file beside `final` (``.<final>.<pid>-<random>.tmp``), listed in its writer's
    lease before it is made (`_lease`): `sweep_stale` removes only what dead writers' leases list."""

    def __init__(self, final: Path | ObjectPath, lease_root: Path | ObjectPath | None = None) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        self.final = final
        # Every table file is <root>/run_date=.../strategy=.../<file>; other files name their root.
        root = final.parent.parent.parent if lease_root is None else lease_root
        local_root = staging_root(root)
        local_final = local_root / str(final.relative_to(root)) if local_root is not root else final
        local_final.parent.mkdir(parents=True, exist_ok=True)
        self.root = local_root
        self.path = local_final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        with publishing(local_root, exclusive=False):  # not while `results compact` swaps a folder
            os.write(_lease(local_root), f"{self.path.relative_to(local_root)}\n".encode())
            self.handle = open(self.path, "xb")  # noqa: SIM115 - closed by `writing`

    def discard(self) -> None:
        """Remove the temp name (the published name, if any, stays)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@contextmanager
def publishing(root: Path, *, exclusive: bool) -> Iterator[None]:
    """The table folder `root`'s publish lock, held for the block: an flock on its `.writers` folder (no file
    of its own to leave behind). Writers take it shared while they make a temp file or publish one, our
    queries while they read, `results compact` exclusive while it swaps a folder of the table: a file is never
    made or linked into a folder being replaced, nor a folder swapped under a query."""
    folder = root / WRITERS
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextmanager
def reading(roots: list[Path | ObjectPath]) -> Iterator[None]:
    """The publish locks of the local table folders `roots` that exist, shared, for a query's life: a folder
    is not swapped under it. Unlocked where the lock cannot be taken (a read-only folder): such a query
    may fail if a compaction swaps a folder it listed, and is asked again."""
    with contextlib.ExitStack() as held:
        for root in roots:
            if isinstance(root, Path) and root.is_dir():
                with contextlib.suppress(OSError):
                    held.enter_context(publishing(root, exclusive=False))
        yield


# Each process that writes a table holds a lease in its folder, `<root>/.writers/<pid>-<random>.lease`:
# flocked for the life of the process, it lists every temp file the process makes there, before it
# makes it. A lease nobody holds is a dead writer's: what it lists can go. A process that ends
# with none of its temp files left removes its leases itself.
WRITERS = ".writers"
_LEASES: dict[Path, tuple[int, int, Path]] = {}  # table root -> (pid, fd, path) of this process's lease
_LEASES_LOCK = threading.Lock()


def _lease(root: Path) -> int:
    """This process's lease in the table folder `root` (an append-only fd), made on first use."""
    with _LEASES_LOCK:
        held = _LEASES.get(root)
        if held is not None and held[0] == os.getpid():
            return held[1]
        if not any(pid == os.getpid() for pid, _, _ in _LEASES.values()):
            atexit.register(_end_leases)
        folder = root / WRITERS
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            path = folder / f"{os.getpid()}-{secrets.token_hex(4)}.lease"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break  # not taken for a dead writer's by a sweep between its creation and the lock
            os.close(fd)
        _LEASES[root] = (os.getpid(), fd, path)
        return fd


def _end_leases() -> None:
    """At exit: remove this process's leases that list no temp file still there (else a later
    command's sweep removes the files and the lease)."""
    for root, (pid, fd, path) in list(_LEASES.items()):
        if pid != os.getpid():
            continue
        with contextlib.suppress(OSError):
            if not any((root / name).exists() for name in path.read_text(encoding="utf-8").splitlines()):
                path.unlink()
        with contextlib.suppress(OSError):
            os.close(fd)
        del _LEASES[root]


class Publication:
    """What a `one_run` block published: `done` once every file is under its final name."""

    done = False


# The temp files staged by the `one_run` block in progress, published at its end.
_STAGED: contextvars.ContextVar[list[_Temp] | None] = contextvars.ContextVar("staged", default=None)


@contextmanager
def one_run() -> Iterator[Publication]:
    """Publish every file the block appends (a run's results, trades and runs row) together.

    Inside the block each table is written to its hidden temp file only; when the block ends
    without an error the files are linked under their final names one after the other, the
    runs row last, and a failure while linking removes this run's files already linked. An
    error inside the block (a full disk, say) publishes nothing. So a run is in the tables
    whole or not at all; only a SIGKILL between two links (microseconds) can leave a run's
    results without its runs row, and readers that need whole runs join on ``runs``. A stop
    signal while linking waits for the links (`stopping.uninterrupted`); the yielded
    `Publication` says whether they were all made.
    """
    staged: list[_Temp] = []
    publication = Publication()
    token = _STAGED.set(staged)
    try:
        yield publication
    except BaseException:
        with stopping.uninterrupted():
            for temp in staged:
                temp.discard()
        raise
    finally:
        _STAGED.reset(token)
    published: list[Path] = []
    with stopping.uninterrupted():
        try:
            for temp in staged:
                _link(temp)
                published.append(temp.final)
        except BaseException:
            for final in published:
                with contextlib.suppress(FileNotFoundError):
                    final.unlink()
            raise
        finally:
            for temp in staged:
                temp.discard()
        publication.done = True
        for directory in {final.parent for final in published}:
            _fsync_dir(directory)


def _publish(table: pa.Table, final: Path, lease_root: Path | None = None) -> Path:
    """Write ``table`` to ``final`` atomically; never replaces an existing file (inside `one_run`,
    only staged: the block publishes it)."""
    with writing(final, table.nbytes, lease_root) as handle:
        pq.write_table(table, handle, compression="zstd")
    return final


@contextmanager
def writing(final: Path, needed_bytes: int | None = None, lease_root: Path | None = None) -> Iterator[Any]:
    """A hidden temp file beside ``final`` to write (`_Temp`, its lease in `lease_root`'s writers when
    given); when the block ends without an error it is fsynced and published under ``final`` (inside
    `one_run`: staged, published with the run); on an error it is removed and nothing is published."""
    try:
        temp = _Temp(final, lease_root)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(final.parent, needed_bytes, "CRYPTOBT_RESULTS_ROOT") from None
        raise
    staged = _STAGED.get()
    try:
        try:
            with temp.handle as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(final.parent, needed_bytes, "CRYPTOBT_RESULTS_ROOT") from None
            raise
        if staged is not None:
            staged.append(temp)
            return
        _link(temp)
    finally:
        if staged is None or temp not in staged:
            temp.discard()
    _fsync_dir(final.parent)


# A temp file of the tables, as a lease lists it: `run_date=.../strategy=.../.<final>.<pid>-<8 hex>.tmp`.
LEASED_TEMP = re.compile(r"^run_date=[^/]+/strategy=[^/]+/\.(?P<final>[^/]+\.parquet)\.\d+-[0-9a-f]{8}\.tmp$")


def sweep_lease(root: Path, lease: Path) -> list[tuple[Path, float]]:
    """If `lease`'s writer is gone: remove the temp files it lists, then the lease; returns the
    files removed with their last write (epoch seconds)."""
    fd = os.open(lease, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # its writer is alive
        if os.stat(lease).st_ino != os.fstat(fd).st_ino:
            return []  # swept by another command since it was opened
        with os.fdopen(os.dup(fd), encoding="utf-8", errors="replace") as listed:
            names = listed.read().splitlines()
        removed = []
        for name in dict.fromkeys(names):
            if not LEASED_TEMP.match(name):
                continue  # not a temp file of this table: never touched
            temp = root / name
            with contextlib.suppress(FileNotFoundError):
                last_write = temp.stat().st_mtime
                temp.unlink()
                removed.append((temp, last_write))
        lease.unlink()
        return removed
    finally:
        os.close(fd)


def publish_once(table: pa.Table, final: Path, lease_root: Path) -> bool:
    """Write ``table`` to ``final`` atomically (a hidden temp file, fsynced, hard-linked), outside any
    run's publication; False, writing nothing, when ``final`` is there already (the same content
    written by another attempt: a chunk a scheduler ran twice)."""
    if final.exists():
        return False
    try:
        _publish(table, final, lease_root)
    except PipelineError:
        if final.exists():
            return False
        raise
    return True


def _link(staged: _Temp) -> None:
    """Publish `staged` under its final name."""
    temp, final = staged.path, staged.final
    if isinstance(final, ObjectPath):
        # One PUT, only if no object has the name: published whole, never replacing one.
        if not final.put_if_absent(temp.read_bytes()):
            raise PipelineError(f"{final} already exists; results are append-only (use a new run id)")
        return
    try:
        # A hard link publishes atomically *and* fails if the name exists, which
        # os.replace would silently overwrite.
        with publishing(staged.root, exclusive=False):
            os.link(temp, final)
    except FileExistsError:
        raise PipelineError(
            f"{final} already exists; results are append-only (use a new run id)"
        ) from None
    except OSError:
        # Filesystems without hard links: check, then replace (same directory, atomic).
        if final.exists():
            raise PipelineError(f"{final} already exists; results are append-only") from None
        os.replace(temp, final)


def _fsync_dir(directory: Path | ObjectPath) -> None:
    # Makes the new directory entry durable; not possible on every platform (nor needed on S3).
    if isinstance(directory, ObjectPath):
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
