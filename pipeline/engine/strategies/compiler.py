"""Each strategy's batch kernel: the template `pipeline/engine/kernels/strategy_kernel.py` with the
strategy's Numba functions bound in, written once into the kernel cache and imported.

Numba caches machine code per source file and does not notice when a function
that file calls changes, so the copy's file name carries a hash of everything
compiled into it (the template, the shared kernels, the strategy's code with every
helper module it imports, and Numba's version): an edited strategy or helper gets a
new copy and a fresh compile, an unchanged one loads its machine code from the cache
in every later process. (A user's own functions are never cached by Numba on their
own, see `usercode`; compiled with bounds checks, they get a copy of their own.)
A strategy whose code cannot be hashed compiles its copy in a scratch folder that
goes with the process.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numba
import numpy as np

from pipeline.core import compile_cache, config
from pipeline.core.errors import PipelineError
from pipeline.engine.strategies import usercode

if TYPE_CHECKING:
    from pipeline.engine.strategies import Strategy

KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels"
TEMPLATE = KERNELS_DIR / "strategy_kernel.py"
TEMPLATE_BINDING = '"__strategy_module__"'
# Everything the template compiles in besides the strategy itself.
SHARED_SOURCES = ("strategy_kernel.py", "batch.py", "simulate.py", "futures.py", "blocks.py", "enums.py",
                  "indicators.py", "signals.py")
# The table the kernels' metric slots are numbered from (enums).
METRICS_TABLE = KERNELS_DIR.parent.parent / "core" / "metrics.py"

_loaded: dict[str, ModuleType | usercode.GuardedKernels] = {}
_scratch: list[Path] = []


def _shared_digest() -> str:
    digest = hashlib.sha256(numba.__version__.encode())
    for name in SHARED_SOURCES:
        digest.update((KERNELS_DIR / name).read_bytes())
    digest.update(METRICS_TABLE.read_bytes())
    return digest.hexdigest()


_SHARED = _shared_digest()


def code_version(strategy_source: bytes) -> str:
    """Hash of all code that decides a strategy's results: its code (`usercode.Closure.source`) and the
    shared kernels."""
    return hashlib.sha256(_SHARED.encode() + strategy_source).hexdigest()


def _write_once(path: Path, text: str) -> None:
    # Rewriting an identical file would change its mtime and throw away Numba's cache of it.
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _scratch_dir() -> Path:
    """A folder of this process's own, removed when it exits: kernels of code that is never cached."""
    if not _scratch:
        _scratch.append(Path(tempfile.mkdtemp(prefix="cryptobt-kernels-")))
        atexit.register(shutil.rmtree, _scratch[0], True)
    return _scratch[0]


def kernel_module(strategy: Strategy) -> ModuleType | usercode.GuardedKernels:
    """The compiled batch kernels of `strategy` (run_grid, run_single, signals_on_grid, ...).

    A user's strategy's are wrapped in `usercode.GuardedKernels`: what its code raises is one PipelineError.
    """
    checked = not strategy.builtin and usercode.bounds_checked()
    key = f"{strategy.module_name}:{strategy.code_version}:{checked}"
    cached = _loaded.get(key)
    if cached is not None:
        return cached
    # The copy imports the strategy by module name: two copies of one file at two paths differ.
    identity = f"{strategy.code_version}:{strategy.module_name}" + (":boundscheck" if checked else "")
    tag = hashlib.sha256(identity.encode()).hexdigest()[:16]
    name = f"cryptobt_kernel_{strategy.name}_{tag}"
    text = TEMPLATE.read_text()
    if TEMPLATE_BINDING not in text:
        raise PipelineError(f"the kernel template {TEMPLATE} lost its binding line")
    text = text.replace(TEMPLATE_BINDING, repr(strategy.module_name), 1)
    folder = config.kernel_cache_dir() if strategy.cache_problem is None else _scratch_dir()
    path = folder / f"{name}.py"
    try:
        _write_once(path, text)
    except OSError as exc:
        raise PipelineError(f"cannot write the kernel cache {path.parent} ({exc.strerror}); "
                            "set CRYPTOBT_KERNEL_CACHE to a writable folder") from None
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    kernels: ModuleType | usercode.GuardedKernels = module
    if not strategy.builtin:  # a built-in that does not compile is caught by the test suite, not at start-up
        _probe(strategy, module)
        kernels = usercode.GuardedKernels(module, strategy.origin, strategy.name)
    _loaded[key] = kernels
    return kernels


def compiled_before(strategy: Strategy) -> bool:
    """Whether this version of `strategy`'s batch kernel was compiled by an earlier process (its run
    then loads machine code; else it compiles first, the better part of a minute)."""
    kernels = kernel_module(strategy)
    module = kernels.module if isinstance(kernels, usercode.GuardedKernels) else kernels
    return compile_cache.has_machine_code(module.run_grid)


def _probe(strategy: Strategy, module: ModuleType) -> None:
    """Compile the strategy's functions now, so a user's nopython error is one line naming the file
    (and anything else its code raises on a short series, as `usercode.running` words it)."""
    n = 64
    close = np.linspace(100.0, 120.0, n).reshape(1, n) * (1.0 + 0.01 * np.sin(np.arange(n)))
    columns = tuple(np.ascontiguousarray(close) for _ in strategy.input_columns)
    params = np.array([float(p.default) for p in strategy.params], dtype=np.float64)
    with usercode.running(strategy.origin, f"strategy {strategy.name!r}"):
        try:
            module.indicators_and_signals_single(columns, close[0], params)
        except (numba.core.errors.NumbaError, TypeError, AttributeError) as exc:
            first = str(exc).strip().splitlines()
            detail = next((line for line in first if line.strip() and "Failed in" not in line), "")
            raise PipelineError(
                f"{strategy.origin}: strategy {strategy.name!r} does not compile in Numba's nopython mode: "
                f"{detail.strip()[:300]}"
            ) from None
