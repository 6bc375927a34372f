"""Stop signals: SIGINT (Ctrl-C) and SIGTERM mean the same, once and twice.

`install` (the CLI's entry point) makes SIGTERM behave as Ctrl-C. Inside `cooperative` (a run that
checks `requested` between its chunks) the first signal only asks: the run stops after its current
chunk and keeps what finished. The second signal, or the first one outside `cooperative`, raises
at once (`StopNow`, a KeyboardInterrupt), except inside `uninterrupted`: a block that publishes
files (a few links) finishes first, so what a run says it kept is what the tables hold.

Handlers run in the main thread only; elsewhere (the API's run threads) these are no-ops and the
run is stopped through its `should_stop` callback instead.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopNow(KeyboardInterrupt):  # noqa: N818 - a KeyboardInterrupt, named for what it asks
    """A stop signal that ends the work at once (nothing more is written)."""


class RunStopped(StopNow):
    """A run ended at once by a second stop signal; says truthfully what of it the tables hold."""

    def __init__(self, run_id: str, kept: int, finished: int, planned: int, recorded: bool) -> None:
        self.run_id, self.kept, self.finished, self.planned = run_id, kept, finished, planned
        if kept:
            text = (f"the run was written before it stopped: kept and wrote the {kept:,} of {planned:,} results "
                    f"(run {run_id})")
        else:
            text = (f"nothing was kept (the {finished:,} of {planned:,} results that had finished were not written; "
                    f"run {run_id}{' marked interrupted' if recorded else ''})")
        super().__init__(text)


class ChunksKept(StopNow):
    """A distributed sweep stopped between its chunks: the parts written stay for `--resume`."""


class _State:
    def __init__(self) -> None:
        self.first: int | None = None  # the first stop signal received
        self.requested = threading.Event()
        self.cooperative = 0  # depth of `cooperative` blocks
        self.on_request: Callable[[int], None] | None = None
        self.critical = 0  # depth of `uninterrupted` blocks
        self.pending: int | None = None  # a signal held back by `uninterrupted`
        self.raised = False  # StopNow was raised (a C extension may turn it into its own error)


_state = _State()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _handler(signum: int, frame: Any) -> None:
    if _state.first is None:
        _state.first = signum
    if _state.cooperative and not _state.requested.is_set():
        _state.requested.set()
        if _state.on_request is not None:
            _state.on_request(signum)
        return
    _state.requested.set()
    if _state.critical:
        _state.pending = signum
        return
    _state.raised = True
    raise StopNow(signal.Signals(signum).name)


def install() -> None:
    """SIGINT and SIGTERM both stop the process as Ctrl-C does (KeyboardInterrupt), and both are
    asked for between a run's chunks inside `cooperative`. Main thread only."""
    if _main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handler)


def received() -> int | None:
    """The first stop signal this process received (None: none)."""
    return _state.first


def exit_code(default: int = signal.SIGINT) -> int:
    """128 + the first stop signal (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + (_state.first or default)


def name() -> str:
    return signal.Signals(_state.first or signal.SIGINT).name


def at_once(exc: BaseException) -> bool:
    """`exc` is a stop at once: StopNow, or the error a C extension raised instead when StopNow was
    raised inside it (DuckDB answers 'Query interrupted')."""
    return isinstance(exc, StopNow) or _state.raised


def requested() -> bool:
    """A stop was asked for (what a run's `should_stop` asks between chunks)."""
    return _state.requested.is_set()


@contextmanager
def cooperative(on_request: Callable[[int], None] | None = None) -> Iterator[None]:
    """Inside, the first stop signal only sets `requested` (and calls `on_request`); the next one
    raises StopNow. Installs the handlers for the block if `install` has not (main thread only)."""
    if not _main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    if not _state.cooperative:  # a fresh start (a signal before it would have raised already)
        _state.first, _state.pending, _state.raised = None, None, False
        _state.requested.clear()
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    _state.cooperative += 1
    _state.on_request, before = on_request, _state.on_request
    try:
        yield
    finally:
        _state.cooperative -= 1
        _state.on_request = before
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A block a stop signal does not cut short (publishing a run: a few links): a signal that
    arrives inside raises StopNow when the block ends. No-op outside the main thread."""
    if not _main_thread():
        yield
        return
    _state.critical += 1
    try:
        yield
    except BaseException:
        _state.pending = None  # the block's own error goes on; the process is ending anyway
        raise
    finally:
        _state.critical -= 1
    if not _state.critical and _state.pending is not None:
        signum, _state.pending = _state.pending, None
        _state.raised = True
        raise StopNow(signal.Signals(signum).name)
