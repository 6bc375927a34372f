"""Where the command line prints: the consoles, warnings, the progress bar, JSON and data findings."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.core import tables
from pipeline.core.config import redact

console = Console()
err_console = Console(stderr=True)


def print_whole(table: Any) -> None:
    """A table at its natural width, past the terminal's if it must: rich would otherwise cut its cells short
    with an ellipsis, and a cut number or symbol is a wrong one."""
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
    width = console.width
    console.width = max(width, needed)  # print's own width= is capped at the console's
    try:
        console.print(table)
    finally:
        console.width = width


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(redact(message))}", highlight=False, soft_wrap=True)


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err_console, transient=transient,
        disable=not err_console.is_terminal and os.environ.get("CRYPTOBT_PROGRESS") != "1",
    )


def emit_json(results: list[dict[str, Any]] | dict[str, Any]) -> None:
    print(tables.json_text(results))


def print_findings(findings: dict[str, list[str]], strict: bool = False) -> None:
    """Health findings, one line per symbol (warnings; `--strict` already refused them)."""
    names = sorted(findings)
    label = "[red]error:[/]" if strict else "[yellow]warning:[/]"
    for name in names[:10]:
        err_console.print(f"{label} {name}: {'; '.join(findings[name])}", highlight=False, soft_wrap=True)
    if len(names) > 10:
        err_console.print(f"{label} and {len(names) - 10} more symbol(s) with findings; `cryptobt data check` "
                          "lists them all", highlight=False)
