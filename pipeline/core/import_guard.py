"""Keeps out of the process what our dependencies import on their own but a run never uses.

A cold `cryptobt backtest` has a second (issue 17). Three libraries load heavy optional
packages as they load themselves, whether or not their caller needs them:

- numba imports SciPy: `import scipy` for a version check, then `scipy.linalg.cython_blas`
  when its compiler context first loads, only to learn whether `np.convolve` may use BLAS
  (80-170 ms and 20 MB here). No kernel of ours uses BLAS. SciPy stays out while those two
  modules load; numba keeps the answer it would have found, and imports SciPy itself when
  it compiles a function that needs BLAS (`np.dot`, a user's strategy).
- pyarrow looks for pandas at its first conversion (`pa.array`) and imports it (140-200 ms,
  40 MB), to recognise pandas objects. A process that has not imported pandas holds none, so
  that first look is made with pandas out of reach; when pandas is imported later, pyarrow is
  told at once (`pa.array(series)` then behaves as without this module).
- redis imports `redis.asyncio` from its package (50-80 ms: asyncio and the async client); the
  synchronous client never uses it. Its code runs when one of its names is first used.

The same hook puts numba's on-disk cache under a file lock as it loads (`numba.core.caching`:
pipeline/core/compile_cache.py says why: two processes compiling at once could leave one signature's
machine code under another's).

`install()` (called by `pipeline/__init__.py`) adds one import hook doing only these, and only
for packages that load after it (numba's cache, already loaded, is locked at once); each module's
loader is its own again once it has loaded.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import ModuleType

from pipeline.core import compile_cache

# pyarrow's first look at pandas was made with pandas out of reach (pyarrow must be told when it arrives).
_pyarrow_told_no_pandas = False


class _Refuse:
    """A finder that refuses some packages: importing them raises ModuleNotFoundError."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (kept out while a library loads)", name=name)


@contextmanager
def _out_of_reach(*names: str) -> Iterator[bool]:
    """Inside the block, importing `names` fails as if they were not installed; yields whether that
    was done (not when one of them is already imported: then nothing is hidden)."""
    if any(name in sys.modules for name in names):
        yield False
        return
    refuse = _Refuse(names)
    sys.meta_path.insert(0, refuse)
    try:
        yield True
    finally:
        sys.meta_path.remove(refuse)


@contextmanager
def _numba(module: ModuleType) -> Iterator[None]:
    with _out_of_reach("scipy"):
        yield


@contextmanager
def _numba_arraymath(module: ModuleType) -> Iterator[None]:
    with _out_of_reach("scipy") as hidden:
        yield
    if hidden:
        # What numba's own probe (importing scipy.linalg.cython_blas) would have answered.
        module._HAVE_BLAS = importlib.util.find_spec("scipy") is not None


@contextmanager
def _numba_caching(module: ModuleType) -> Iterator[None]:
    yield
    compile_cache.lock_saves(module)


@contextmanager
def _pyarrow(module: ModuleType) -> Iterator[None]:
    global _pyarrow_told_no_pandas
    yield
    with _out_of_reach("pandas") as hidden:
        if hidden:
            module.lib._pandas_api.have_pandas  # noqa: B018 - pyarrow's first look, answered "no pandas"
            _pyarrow_told_no_pandas = True


@contextmanager
def _pandas(module: ModuleType) -> Iterator[None]:
    yield
    pyarrow = sys.modules.get("pyarrow")
    if _pyarrow_told_no_pandas and pyarrow is not None:
        pyarrow.lib._pandas_api.pd  # noqa: B018 - pyarrow imports pandas' API again and uses it from now on


@contextmanager
def _redis(module: ModuleType) -> Iterator[None]:
    name = "redis.asyncio"
    spec = None if name in sys.modules else importlib.machinery.PathFinder.find_spec(name, module.__path__)
    if spec is not None and spec.loader is not None:
        # The package is registered with its path but without running its code: redis's own modules import
        # submodules of it (an observability recorder); its code runs when one of its names is first used.
        package = importlib.util.module_from_spec(spec)
        lock = threading.Lock()

        def run_on_first_use(attribute: str) -> object:
            with lock:
                if package.__dict__.get("__getattr__") is run_on_first_use:
                    del package.__getattr__
                    spec.loader.exec_module(package)
            return getattr(package, attribute)

        package.__getattr__ = run_on_first_use
        sys.modules[name] = package
        module.asyncio = package
    yield


_AROUND: dict[str, Callable[[ModuleType], AbstractContextManager[None]]] = {
    "numba": _numba,
    "numba.np.arraymath": _numba_arraymath,
    "numba.core.caching": _numba_caching,
    "pyarrow": _pyarrow,
    "pandas": _pandas,
    "redis": _redis,
}


class _Around:
    """A module's own loader, with `_AROUND[name]` around the running of its code."""

    def __init__(self, loader: importlib.machinery.SourceFileLoader, around: Callable) -> None:
        self.loader = loader
        self.around = around

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The module's loader is its own again, whatever happens next.
        module.__loader__ = module.__spec__.loader = self.loader
        with self.around(module):
            self.loader.exec_module(module)

    def __getattr__(self, name: str) -> object:
        return getattr(self.loader, name)


class _Hook:
    """The import hook: finds the modules of `_AROUND` as usual and wraps their loader."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name not in _AROUND:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Around(spec.loader, _AROUND[name])
                return spec
        return None


_HOOK = _Hook()


def install() -> None:
    """Add the hook (once) in front of the other finders."""
    if not any(isinstance(finder, _Hook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _HOOK)
    if "numba.core.caching" in sys.modules:  # numba came first (a notebook that imported it before us)
        compile_cache.lock_saves(sys.modules["numba.core.caching"])


class Deferred(ModuleType):
    """Stands for module `name` and imports it when one of its attributes is first used.

    For our modules that need a heavy library only in some functions (polars in the lake's writer):
    a process that reads the lake, backtests and prints never loads it (70 ms, 40 MB)."""

    def __getattr__(self, attribute: str) -> object:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)  # later uses find the attributes directly
        return getattr(module, attribute)


def deferred(name: str) -> ModuleType:
    """The module `name` if it is imported, else a `Deferred` standing for it."""
    return sys.modules.get(name) or Deferred(name)
