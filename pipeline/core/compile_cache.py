"""Numba's on-disk cache of machine code, safe when several processes fill it at once.

Numba keeps one index per function (signature -> data file) beside the data files, and saves a new
signature by reading the index, picking the first free data file name, then writing the index and the
data file, with no lock (numba issues #4807 and #10128, open). Two processes compiling two signatures of
one function at the same moment both pick `.1.nbc`: the index keeps one process's signature and the data
file may hold the other's machine code. Every later process then runs that code for the signature the
index names, on arguments of another type: garbage numbers and no error (tests/test_compile_cache.py
shows a float64 call answered with int64 bits). Our processes do compile at once: a Dask cluster's
workers, the API's workers, a CLI beside the API, the suite's two workers.

`lock_saves(caching)` makes each save one step under an exclusive lock of a file beside the index
(`<index>.lock`, flock), and each load read under a shared one: a save reads the index the last save
wrote, so names never collide, and a load never sees an index whose data file is not written yet.
Where the lock file cannot be opened (a read-only cache: nobody saves there) the read goes unlocked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX (Windows): numba's cache stays as numba ships it
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def _locked(index_path: str, mode: int) -> Iterator[None]:
    try:
        fd = os.open(f"{index_path}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _under(method: Callable[..., Any], mode: int) -> Callable[..., Any]:
    def locked(self: Any, *args: Any) -> Any:
        with _locked(self._index_path, mode):
            return method(self, *args)

    locked.__wrapped__ = method  # type: ignore[attr-defined]
    return locked


def lock_saves(caching: ModuleType) -> None:
    """Put numba's index-and-data cache file (`caching.IndexDataCacheFile`) under a per-index file lock:
    `save` exclusive, `load` shared. Once per process; a numba without that class is left as it is."""
    cache_file = getattr(caching, "IndexDataCacheFile", None)
    if fcntl is None or cache_file is None or hasattr(cache_file.save, "__wrapped__"):
        return
    cache_file.save = _under(cache_file.save, fcntl.LOCK_EX)
    cache_file.load = _under(cache_file.load, fcntl.LOCK_SH)


def has_machine_code(dispatcher: Any) -> bool:
    """Whether numba's cache holds machine code of this cached function (any signature): False means
    its first call compiles. True when the cache cannot be looked at (it is not ours to claim then)."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    index = getattr(cache_file, "_index_path", None)
    return index is None or os.path.exists(index)
