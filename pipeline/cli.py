"""The `cryptobt` command line: parses, calls the pipeline, prints. Nothing else lives here."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.config import Settings, redact_url
from pipeline.errors import PipelineError

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    name="cryptobt",
    help="Backtest strategies over every crypto at once: PostgreSQL -> Parquet lake -> Numba -> Redis + results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="PostgreSQL: schema, synthetic seed, file import.", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Print a PipelineError as one line on stderr and exit 1; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; work that finished was kept")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err_console, transient=transient,
        disable=not err_console.is_terminal and os.environ.get("CRYPTOBT_PROGRESS") != "1",
    )


@db_app.command("init")
@user_errors
def db_init() -> None:
    """Create the database if needed and apply sql/*.sql (idempotent).

    Example: cryptobt db init
    """
    from pipeline import source

    settings = Settings.from_env()
    applied = source.apply_schema(settings.database_url)
    console.print(f"schema applied to {redact_url(settings.database_url)}: {', '.join(applied)}")


@db_app.command("seed")
@user_errors
def db_seed(
    cryptos: Annotated[int, typer.Option(help="Number of synthetic cryptos.")] = 211,
    years: Annotated[float, typer.Option(help="Years of hourly history (the longest listing).")] = 5.0,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same market.")] = 42,
) -> None:
    """Write a synthetic market (hourly + daily bars) with binary COPY.

    Example: cryptobt db seed --cryptos 211 --years 5 --seed 7
    """
    from pipeline import loaders, source

    settings = Settings.from_env()
    source.apply_schema(settings.database_url)
    with progress_bar() as progress:
        task = progress.add_task("rows copied", total=None)
        report = loaders.seed_database(
            settings.database_url, cryptos, years, seed,
            connections=settings.export_connections,
            on_total=lambda total: progress.update(task, total=total),
            progress=lambda n: progress.advance(task, n),
        )
    console.print(
        f"seeded {report.symbols} cryptos: {report.rows['1h']:,} hourly + {report.rows['1d']:,} daily rows "
        f"in {report.seconds:.2f} s ({report.rows_per_second:,.0f} rows/s)"
    )


@db_app.command("import")
@user_errors
def db_import(
    paths: Annotated[list[Path], typer.Argument(help="CSV, Parquet or Feather OHLCV files.")],
    symbol: Annotated[str | None, typer.Option(help="Symbol for a single file (default: file name before '-').")] = None,
) -> None:
    """Import real OHLCV files, resampled to 1h and 1d, upserted (re-import is a no-op).

    Example: cryptobt db import ../shared/data/binance-5m/*.feather
    """
    from pipeline import loaders, source

    settings = Settings.from_env()
    source.apply_schema(settings.database_url)
    report = loaders.import_files(settings.database_url, list(paths), symbol)
    console.print(
        f"imported {len(paths)} file(s), {report.symbols} symbol(s): {report.rows['1h']:,} hourly + "
        f"{report.rows['1d']:,} daily bars in {report.seconds:.2f} s"
    )


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="cryptobt")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
