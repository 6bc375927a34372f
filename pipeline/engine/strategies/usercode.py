"""Users' strategy code: what it is (its import closure, hashed) and how it fails (one line, file:line).

Code identity. A user's strategy (a file from `--strategy-path`, an entry point) may import helper
modules of its own. Its closure is every module the strategy module reaches through its globals (modules,
functions, Numba functions and classes it names, and theirs in turn) that is the user's code: its source
lies outside the Python installation and outside cryptobt, or in the strategy's own top-level package.
The bytes of every file of the closure go into the strategy's `code_version`, hence into every cache
key, every result row and the name of its compiled batch kernel. A closure with a module that has no
source file cannot be hashed: such a strategy runs but is never cached, and the run says so.

Numba keys its on-disk cache of a function by that function's file alone: a strategy file whose helper
changed would be served machine code compiled against the old helper. So Numba's cache is turned off for
every function of the closure; the batch kernel (`pipeline.engine.strategies.compiler`), named by the code
version, is the only cache of compiled user code.

Failures. Whatever the user's code raises (at import, in CHECK, in its Numba functions, `SystemExit`
included) becomes one PipelineError naming the file and the line of the deepest frame in the user's code
(Numba gives a line for an explicit `raise`, none for an index out of bounds: then the strategy's file).
`cryptobt strategies check` compiles the user's code with Numba's bounds checks (`enable_bounds_checks`),
so an index out of range is an IndexError there rather than a corrupted heap.
"""

from __future__ import annotations

import contextlib
import hashlib
import site
import sys
import sysconfig
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from numba.core.caching import NullCache
from numba.core.dispatcher import Dispatcher

from pipeline.core.errors import PipelineError

_PIPELINE = Path(__file__).resolve().parents[2]

def _installed_roots() -> tuple[Path, ...]:
    """Where Python's own modules and installed packages live (a distribution's dist-packages too)."""
    roots = [p for key in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_paths().get(key))]
    roots += site.getsitepackages() + [site.getusersitepackages()]
    roots += [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    return tuple({Path(p).resolve() for p in roots})


_INSTALLED = _installed_roots()

_bounds_checks = False
# Files hashed into a closure, by module name: a module whose file changed since is imported afresh.
_hashed: dict[str, tuple[str, str]] = {}


def is_user_file(filename: str | None) -> bool:
    """Whether a source file is the user's: not Python's own, not an installed package, not cryptobt."""
    if not filename or filename.startswith("<"):
        return False
    path = Path(filename).resolve()
    return not any(path.is_relative_to(root) for root in (_PIPELINE, *_INSTALLED))


@dataclass(frozen=True)
class Closure:
    """A strategy module's own code: its modules, their files and what hashes them."""

    modules: tuple[types.ModuleType, ...]
    files: tuple[str, ...]  # the strategy's file first
    source: bytes  # what the code version hashes: the strategy file, then each other module's
    problem: str | None  # why part of it cannot be hashed (then nothing of it is cached)


def _file_of(module: types.ModuleType) -> str | None:
    return getattr(module, "__file__", None)


def _is_made_at_run_time(module: types.ModuleType) -> bool:
    """A module with no file that is neither built into Python nor frozen: code with no source to hash."""
    if _file_of(module) or hasattr(module, "__path__") or module.__name__ in sys.builtin_module_names:
        return False
    spec = getattr(module, "__spec__", None)
    return getattr(spec, "origin", None) not in ("built-in", "frozen")


def _named_modules(module: types.ModuleType) -> Iterator[tuple[str, types.ModuleType | None, str | None]]:
    """What `module`'s globals name: (module name, the module if imported, the file of a function's code).

    A tuple or list of them (a table of functions) counts too, one level deep.
    """
    values: list[Any] = []
    for value in list(vars(module).values()):
        values += [value, *value] if isinstance(value, tuple | list) else [value]
    for value in values:
        if isinstance(value, types.ModuleType):
            yield value.__name__, value, None
            continue
        func = value.py_func if isinstance(value, Dispatcher) else value
        if isinstance(func, types.FunctionType | type):
            name = getattr(func, "__module__", None)
            code = getattr(func, "__code__", None)
            filename = code.co_filename if code is not None else None
            if isinstance(name, str):
                yield name, sys.modules.get(name), filename
            elif filename is not None:
                yield f"{func.__qualname__} of {filename}", None, filename


def closure(module: types.ModuleType, also: Iterable[str] = ()) -> Closure:
    """The user's code `module` reaches (see the module docstring); `also`: names of modules it imported."""
    top = module.__name__.partition(".")[0]

    def own(candidate: types.ModuleType) -> bool:
        if _is_made_at_run_time(candidate):
            return True
        filename = _file_of(candidate)
        if not filename or Path(filename).resolve().is_relative_to(_PIPELINE):
            return False
        return is_user_file(filename) or candidate.__name__.partition(".")[0] == top

    found = [module]
    seen = {module.__name__}
    problem = None
    queue = [module]
    while queue:
        current = queue.pop()
        named = list(_named_modules(current))
        if current is module:
            named += [(name, sys.modules.get(name), None) for name in also]
        for name, candidate, code_file in named:
            if name in seen:
                continue
            seen.add(name)
            if candidate is None:
                # A function of the user's whose module is nowhere to be found: its source cannot be told.
                if code_file is not None and (code_file.startswith("<") or is_user_file(code_file)):
                    problem = problem or f"{name} comes from no module file"
                continue
            if own(candidate):
                found.append(candidate)
                queue.append(candidate)
    own_file: list[tuple[str, str, bytes]] = []
    others: list[tuple[str, str, bytes]] = []
    for member in found:
        filename = _file_of(member)
        if filename is None:
            problem = problem or f"module {member.__name__} has no source file"
            continue
        try:
            data = Path(filename).read_bytes()
        except OSError as exc:
            problem = problem or f"cannot read {filename} ({exc.strerror})"
            continue
        _hashed[member.__name__] = (filename, hashlib.sha256(data).hexdigest())
        (own_file if member is module else others).append((member.__name__, filename, data))
    others.sort()
    # The strategy file alone hashes as it always has; each further module adds its name and its bytes
    # (names, not paths: the same code in another folder or on another machine is the same code).
    source = b"".join([data for _, _, data in own_file] +
                      [b"\0" + name.encode() + b"\0" + data for name, _, data in others])
    return Closure(modules=tuple(found), files=tuple(f for _, f, _ in own_file + others), source=source,
                   problem=problem)


def forget_edited_modules() -> None:
    """Drop from `sys.modules` the user's modules whose file changed since hashed: the next import reads them."""
    for name, (filename, digest) in list(_hashed.items()):
        try:
            current = hashlib.sha256(Path(filename).read_bytes()).hexdigest()
        except OSError:
            current = None
        if current != digest:
            sys.modules.pop(name, None)
            del _hashed[name]


def _dispatchers(modules: Iterable[types.ModuleType]) -> Iterator[Dispatcher]:
    for module in modules:
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher) and value.py_func.__module__ == module.__name__:
                yield value


def compile_fresh(modules: Iterable[types.ModuleType]) -> None:
    """Turn Numba's on-disk cache off for the functions of `modules`, and bounds checks on where enabled."""
    for dispatcher in _dispatchers(modules):
        dispatcher._cache = NullCache()  # Numba has no public switch; its own constructor sets this
        if _bounds_checks and not dispatcher.overloads:
            dispatcher.targetoptions["boundscheck"] = True


def enable_bounds_checks(loaded: Iterable[types.ModuleType] = ()) -> None:
    """Compile users' code from now on with Numba's bounds checks (`cryptobt strategies check`).

    `loaded`: modules of strategies loaded already (not compiled yet) that get them too.
    """
    global _bounds_checks
    _bounds_checks = True
    compile_fresh(loaded)


def bounds_checked() -> bool:
    """Whether users' code is compiled with bounds checks in this process."""
    return _bounds_checks


def _where(exc: BaseException, origin: str) -> str:
    """`file:line` of the deepest frame of the user's code in `exc`'s traceback, else `origin`."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{exc.filename}:{exc.lineno}"
    where = origin
    tb = exc.__traceback__
    while tb is not None:
        if is_user_file(tb.tb_frame.f_code.co_filename):
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def failure(exc: BaseException, origin: str, what: str) -> PipelineError:
    """One line for an exception out of the user's code: `file:line: <what> failed: <the exception>`."""
    if isinstance(exc, SystemError) and exc.__cause__ is not None:
        exc = exc.__cause__  # a Numba parallel loop wraps what its body raised
    if isinstance(exc, SystemExit):
        detail = f"it called sys.exit({exc.code!r})"
    else:
        text = " ".join(str(exc).split())
        detail = f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
    return PipelineError(f"{_where(exc, origin)}: {what} failed: {detail}")


@contextlib.contextmanager
def running(origin: str, what: str) -> Iterator[None]:
    """Run the user's code: anything it raises (SystemExit too, not Ctrl-C) becomes `failure(...)`."""
    try:
        yield
    except (PipelineError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: BLE001 - the user's code: whatever it raises is one line
        raise failure(exc, origin, what) from None


class _Guarded:
    """A compiled kernel of a user's strategy: a call's failure is `failure(...)`; the rest is the kernel's."""

    def __init__(self, func: Any, origin: str, what: str) -> None:
        self._func = func
        self._origin = origin
        self._what = what

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with running(self._origin, self._what):
            return self._func(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._func, name)


class GuardedKernels:
    """A user strategy's kernel module whose functions report failures as `running` does."""

    def __init__(self, module: types.ModuleType, origin: str, strategy_name: str) -> None:
        self._module = module
        self._origin = origin
        self._what = f"strategy {strategy_name!r}"

    @property
    def module(self) -> types.ModuleType:
        """The kernel module itself, unguarded (to look at its functions, not to run them)."""
        return self._module

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        return _Guarded(value, self._origin, self._what) if callable(value) else value
