"""The root command `cryptobt`: its callback, its sub-apps in the order --help lists them, and main()."""

from __future__ import annotations

import atexit
import gc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli import cache, data, db, lake, portfolio, results, runs, serve, strategies
from pipeline.cli.errors import print_error
from pipeline.cli.output import err_console, warn
from pipeline.core import stopping

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Without PREFECT_API_URL, `export` and `serve` start Prefect's temporary server; its 20 s start-up
# limit is too short on a busy 2-core machine (the README tour's `cryptobt export` timed out there).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(
    name="cryptobt",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Top-level commands first, then the groups: the order `cryptobt --help` lists them.
app.add_typer(lake.commands)
app.add_typer(runs.app)
app.add_typer(portfolio.app)
app.add_typer(results.commands)
app.add_typer(serve.app)
app.add_typer(data.app, name="data")
app.add_typer(strategies.app, name="strategies")
app.add_typer(db.app, name="db")
app.add_typer(lake.app, name="lake")
app.add_typer(results.app, name="results")
app.add_typer(cache.app, name="cache")


def _show_warnings(show: Callable[..., None]) -> Callable[..., None]:
    """Python's `warnings.showwarning`, printing the pipeline's own warnings (PipelineWarning) as `warn` does."""
    from pipeline.core.errors import PipelineWarning

    def shown(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, PipelineWarning):
            warn(str(message))
        else:
            show(message, category, *args, **kwargs)

    return shown


def _print_version(value: bool) -> None:
    if value:
        from pipeline.core.versions import ENGINE_VERSION, __version__

        print(f"cryptobt {__version__} (engine {ENGINE_VERSION})")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Backtest strategies over every crypto at once: PostgreSQL -> Parquet lake -> Numba -> Redis + results.

    Settings come from the environment and from a .env file in the current folder (a variable
    already in the environment wins); see the README's configuration table.
    """
    import warnings

    from dotenv import load_dotenv

    # The current folder's .env only: find_dotenv() would climb to any parent's, whose settings
    # (CRYPTOBT_STRATEGY_PATH names code that runs) nobody here chose.
    load_dotenv(Path.cwd() / ".env", override=False)
    warnings.showwarning = _show_warnings(warnings.showwarning)


def main() -> int:
    """The console entry point: a usage error is one line on stderr (exit 2), never a panel or a traceback."""
    # A command allocates objects in bursts (numba's registries, a run's records): collecting after
    # every 700 cost a cold backtest 90 ms in 300 collections; after every 50,000, 40 ms in 4.
    gc.set_threshold(50_000)
    # Once the process ends (after the other exit handlers: this one is registered first), its last
    # collections would walk every object the libraries made, 170 ms for nothing: files are closed.
    atexit.register(gc.freeze)
    stopping.install()  # SIGTERM stops as Ctrl-C does
    try:  # typer >= 0.20 vendors click
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover - older typer on plain click
        from click import exceptions as click_errors

    try:
        result = app(prog_name="cryptobt", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else exc)
        return 0
    except click_errors.UsageError as exc:
        where = f"; see `{exc.ctx.command_path} --help`" if exc.ctx else ""
        message = " ".join(exc.format_message().split()).rstrip(".")
        print_error(f"{message}{where}")
        return 2
    except click_errors.ClickException as exc:
        print_error(" ".join(exc.format_message().split()))
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print(f"interrupted ({stopping.name()})")
        return stopping.exit_code()
    return result if isinstance(result, int) else 0
