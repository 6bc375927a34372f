"""A backtest or sweep under SIGINT and SIGTERM: stop after the current chunk, keep what finished, say so."""

from __future__ import annotations

import contextvars
import functools
from typing import Any

import typer

from pipeline.cli.errors import F
from pipeline.cli.output import err_console
from pipeline.core import stopping
from pipeline.core.config import Settings

# The run of the `stoppable` command under way, once it has returned: its outcome and settings.
RAN: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("ran", default=None)


def _stopping_note(signum: int) -> None:
    err_console.print(f"{stopping.name()}: stopping after the current chunk and writing what finished (a second "
                      "SIGINT or SIGTERM stops at once, without writing it)", highlight=False, soft_wrap=True)


def stoppable(func: F) -> F:
    """A backtest or sweep under SIGINT (Ctrl-C) and SIGTERM alike: the first stops the run after its
    current chunk, keeps and writes what finished and marks the run interrupted; a second stops at
    once. Either way the last line says what the results table holds of the run, and the exit code
    is 128 + the first signal (130, 143)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ran: dict[str, Any] = {}
        token = RAN.set(ran)
        try:
            with stopping.cooperative(on_request=_stopping_note):
                result = func(*args, **kwargs)
        except stopping.RunStopped as exc:
            _say_stopped(str(exc))
        except stopping.ChunksKept as exc:
            err_console.print(f"stopped ({stopping.name()}): {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(stopping.exit_code()) from None
        except BaseException as exc:  # before the run began writing, or after it returned
            if not isinstance(exc, KeyboardInterrupt) and not stopping.at_once(exc):
                raise
            _say_stopped("nothing was kept (the run had not begun)" if "outcome" not in ran else
                         _kept(ran["outcome"], ran["settings"], "the run was written before it stopped: "))
        finally:
            RAN.reset(token)
        if stopping.requested() and "outcome" in ran:
            outcome = ran["outcome"]
            after = "" if outcome.interrupted else " after the run had finished"
            err_console.print(f"interrupted ({stopping.name()}){after}: {_kept(outcome, ran['settings'])}",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(stopping.exit_code())
        return result

    return wrapper  # type: ignore[return-value]


def _say_stopped(what: str) -> None:
    err_console.print(f"stopped at once ({stopping.name()}, then a second signal): {what}", highlight=False,
                      soft_wrap=True)
    raise typer.Exit(stopping.exit_code())


def _kept(outcome: Any, settings: Settings, prefix: str = "") -> str:
    """What of `outcome`'s run the results table holds, in words."""
    marked = " marked interrupted" if outcome.interrupted else ""
    if outcome.n_results:
        return (f"{prefix}kept and wrote the {outcome.n_results:,} of {outcome.planned:,} results that finished "
                f"(run {outcome.run_id}{marked}; results in {settings.results_root})")
    return f"none of the {outcome.planned:,} results had finished; nothing was kept (run {outcome.run_id}{marked})"
