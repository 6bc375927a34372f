"""The run options of `pipeline.core.run_options` as Typer options of backtest, sweep and portfolio."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from pipeline.core.run_options import RunOption, for_command

F = TypeVar("F", bound=Callable[..., Any])

# The options several commands take besides the table's, declared once (their flags and help).
StrategyPaths = Annotated[list[Path] | None, typer.Option(
    "--strategy-path", help="Folder of your own strategy files (repeatable; also CRYPTOBT_STRATEGY_PATH).")]
Params = Annotated[list[str] | None, typer.Option("--param", "-p", help="name=value (repeatable).")]
Symbols = Annotated[list[str] | None, typer.Option("--symbol", "-s", help="Symbol (repeatable).")]
AllSymbols = Annotated[bool, typer.Option("--all", help="Every symbol in the lake (the default).")]


def run_options(command: str, extra: tuple[RunOption, ...] = ()) -> Callable[[F], F]:
    """Add the table's options that `command` takes (and `extra` ones: a sweep's scale-out options) to the
    command's signature, after its own, as Typer options (flag, default, help); the command receives them by
    name in its `**run`."""

    def add(func: F) -> F:
        own = inspect.signature(func, eval_str=True)
        added = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default, annotation=Annotated[
            o.type | None if o.nullable else o.type, typer.Option(o.flag, help=o.help_for(command))])
            for o in (*for_command(command), *extra)]
        func.__signature__ = own.replace(parameters=[  # type: ignore[attr-defined]
            *(p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD), *added])
        return func

    return add
