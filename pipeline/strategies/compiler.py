"""Each strategy's batch kernel: the template `pipeline/kernels/strategy_kernel.py` with the
strategy's Numba functions bound in, written once into the kernel cache and imported.

Numba caches machine code per source file and does not notice when a function
that file calls changes, so the copy's file name carries a hash of everything
compiled into it (the template, the shared kernels, the strategy's source and
Numba's version): an edited strategy gets a new copy and a fresh compile, an
unchanged one loads its machine code from the cache in every later process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numba
import numpy as np

from pipeline import config
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.strategies import Strategy

KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels"
TEMPLATE = KERNELS_DIR / "strategy_kernel.py"
TEMPLATE_BINDING = '"__strategy_module__"'
# Everything the template compiles in besides the strategy itself.
SHARED_SOURCES = ("strategy_kernel.py", "batch.py", "simulate.py", "enums.py", "indicators.py", "signals.py")

_loaded: dict[str, ModuleType] = {}


def _shared_digest() -> str:
    digest = hashlib.sha256(numba.__version__.encode())
    for name in SHARED_SOURCES:
        digest.update((KERNELS_DIR / name).read_bytes())
    return digest.hexdigest()


_SHARED = _shared_digest()


def code_version(strategy_source: bytes) -> str:
    """Hash of all code that decides a strategy's results: its file and the shared kernels."""
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


def kernel_module(strategy: Strategy) -> ModuleType:
    """The compiled batch kernels of `strategy` (run_grid, run_single, signals_on_grid, ...)."""
    cached = _loaded.get(strategy.module_name + strategy.code_version)
    if cached is not None:
        return cached
    # The copy imports the strategy by module name: two copies of one file at two paths differ.
    tag = hashlib.sha256(f"{strategy.code_version}:{strategy.module_name}".encode()).hexdigest()[:16]
    name = f"cryptobt_kernel_{strategy.name}_{tag}"
    text = TEMPLATE.read_text()
    if TEMPLATE_BINDING not in text:
        raise PipelineError(f"the kernel template {TEMPLATE} lost its binding line")
    text = text.replace(TEMPLATE_BINDING, repr(strategy.module_name), 1)
    path = config.kernel_cache_dir() / f"{name}.py"
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
    if not strategy.builtin:  # a built-in that does not compile is caught by the test suite, not at start-up
        _probe(strategy, module)
    _loaded[strategy.module_name + strategy.code_version] = module
    return module


def _probe(strategy: Strategy, module: ModuleType) -> None:
    """Compile the strategy's functions now, so a user's nopython error is one line naming the file."""
    n = 64
    close = np.linspace(100.0, 120.0, n).reshape(1, n) * (1.0 + 0.01 * np.sin(np.arange(n)))
    columns = tuple(np.ascontiguousarray(close) for _ in strategy.columns)
    params = np.array([float(p.default) for p in strategy.params], dtype=np.float64)
    try:
        module.indicators_and_signals_single(columns, close[0], params)
    except (numba.core.errors.NumbaError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if line.strip() and "Failed in" not in line), "")
        raise PipelineError(
            f"{strategy.origin}: strategy {strategy.name!r} does not compile in Numba's nopython mode: "
            f"{detail.strip()[:300]}"
        ) from None
