"""How the command line fails: one line on stderr, never a traceback."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape
from typer.exceptions import TyperException

from pipeline.cli.output import err_console
from pipeline.core import stopping
from pipeline.core.config import redact
from pipeline.core.errors import PipelineError

F = TypeVar("F", bound=Callable[..., Any])


def one_line(message: str) -> str:
    """A message on one line (DuckDB adds 'LINE 1: ...' and a caret line under it)."""
    lines = [line.strip() for line in message.splitlines()]
    return " ".join(line for line in lines if line and set(line) != {"^"}) or "no message"


def print_error(message: str) -> None:
    """One line on stderr; any password in any connection-string form is masked first."""
    err_console.print(f"[bold red]error:[/] {escape(redact(one_line(message)))}", highlight=False, soft_wrap=True)


def user_errors(func: F) -> F:
    """Print a PipelineError as one line on stderr and exit 1; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            print_error(str(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            # A run stopped at once says what it kept; else no claim (`stoppable` says it for backtest
            # and sweep; other commands publish whole or not at all).
            said = f": {exc}" if isinstance(exc, stopping.RunStopped) else ""
            err_console.print(f"interrupted ({stopping.name()}){said}", highlight=False, soft_wrap=True)
            raise typer.Exit(stopping.exit_code()) from None
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
            if stopping.at_once(exc):  # a stop signal that a library turned into its own error
                err_console.print(f"interrupted ({stopping.name()})")
                raise typer.Exit(stopping.exit_code()) from None
            if os.environ.get("CRYPTOBT_DEBUG"):
                raise
            print_error(f"unexpected {type(exc).__name__}: {exc} (CRYPTOBT_DEBUG=1 shows the traceback)")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
