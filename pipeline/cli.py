"""The `cryptobt` command line: parses, calls the pipeline, prints. Nothing else lives here."""

from __future__ import annotations

import atexit
import contextvars
import functools
import gc
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.exceptions import TyperException

from pipeline.core import stopping, tables
from pipeline.core.config import Settings, redact, redact_url
from pipeline.core.errors import PipelineError
from pipeline.engine import options

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
db_app = typer.Typer(help="PostgreSQL: schema, synthetic seed, file import.", no_args_is_help=True)
lake_app = typer.Typer(help="The Parquet lake: snapshots and retention.", no_args_is_help=True)
results_app = typer.Typer(help="The append-only results table (plain DuckDB works too).", no_args_is_help=True)
cache_app = typer.Typer(help="The Redis result cache.", no_args_is_help=True)
data_app = typer.Typer(help="What the lake holds: list symbols and intervals, check data health.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
strategies_app = typer.Typer(help="The strategies a run can name: parameters, defaults, allowed ranges.",
                             invoke_without_command=True)
app.add_typer(strategies_app, name="strategies")
app.add_typer(db_app, name="db")
app.add_typer(lake_app, name="lake")
app.add_typer(results_app, name="results")
app.add_typer(cache_app, name="cache")

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _one_line(message: str) -> str:
    """A message on one line (DuckDB adds 'LINE 1: ...' and a caret line under it)."""
    lines = [line.strip() for line in message.splitlines()]
    return " ".join(line for line in lines if line and set(line) != {"^"}) or "no message"


def _print_error(message: str) -> None:
    """One line on stderr; any password in any connection-string form is masked first."""
    err_console.print(f"[bold red]error:[/] {escape(redact(_one_line(message)))}", highlight=False, soft_wrap=True)


def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(redact(message))}", highlight=False, soft_wrap=True)


def _show_warnings(show: Callable[..., None]) -> Callable[..., None]:
    """Python's `warnings.showwarning`, printing the pipeline's own warnings (PipelineWarning) as `_warn` does."""
    from pipeline.core.errors import PipelineWarning

    def shown(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, PipelineWarning):
            _warn(str(message))
        else:
            show(message, category, *args, **kwargs)

    return shown


def user_errors(func: F) -> F:
    """Print a PipelineError as one line on stderr and exit 1; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            _print_error(str(exc))
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
            _print_error(f"unexpected {type(exc).__name__}: {exc} (CRYPTOBT_DEBUG=1 shows the traceback)")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


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


@strategies_app.callback()
@user_errors
def strategies_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    strategy_path: Annotated[list[Path] | None, typer.Option(
        "--strategy-path", help="Folder of your own strategy files (repeatable; also CRYPTOBT_STRATEGY_PATH).")] = None,
) -> None:
    """List every strategy with its parameters, defaults and allowed ranges.

    Example: cryptobt strategies
    """
    options.load_strategy_paths(strategy_path)
    if ctx.invoked_subcommand is not None:
        return
    rows = options.strategy_catalog()
    if as_json:
        import json

        print(json.dumps(rows))
        return
    for row in rows:
        console.print(f"[bold]{escape(row['name'])}[/] ({escape(row['origin'])}): {escape(row['description'])}",
                      highlight=False)
        for p in row["parameters"]:
            console.print(f"  {p['name']} = {p['default']}  ({p['allowed']}): {p['description']}", highlight=False)
        if not row["parameters"]:
            console.print("  (no parameters)")
    from pipeline.core.config import strategy_path_env

    # Where a user's own strategies come from, so a stranger knows where to put one.
    folders = [*(strategy_path or []), *strategy_path_env()]
    own = sum(1 for row in rows if row["origin"] != "built-in")
    console.print(f"your strategies: {own} from {', '.join(str(f) for f in folders)}" if folders else
                  "your strategies: none; put a strategy file (one .py, e.g. examples/strategies/donchian.py) in a "
                  "folder and pass --strategy-path FOLDER or set CRYPTOBT_STRATEGY_PATH; `cryptobt strategies check "
                  "NAME --strategy-path FOLDER` tests it for look-ahead", highlight=False)


@strategies_app.command("check")
@user_errors
def strategies_check(
    strategy: Annotated[str, typer.Argument(help="The strategy to check (a built-in or your own).")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="name=value (repeatable).")] = None,
    symbol: Annotated[list[str] | None, typer.Option("--symbol", "-s", help="Symbol (repeatable); default: "
                                                     "the lake's first three.")] = None,
    interval: Annotated[str, typer.Option(help="1h or 1d.")] = "1h",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    strategy_path: Annotated[list[Path] | None, typer.Option(
        "--strategy-path", help="Folder of your own strategy files (repeatable; also CRYPTOBT_STRATEGY_PATH).")] = None,
) -> None:
    """Look-ahead and warm-up checks: exit 1 when the strategy reads bars after the one it decides on.

    Look-ahead: every output (indicators, entries, exits, the logged value) is recomputed on the data
    cut right after every bar; any value that changes at or before that bar is named. Warm-up: the
    indicators are recomputed with the first 100/200/500/1000 bars dropped; the relative change of
    each at the last bar is printed. Your own code runs with bounds checks: an index out of range is
    an error naming the file.

    Example: cryptobt strategies check donchian --strategy-path examples/strategies -p entry_period=30
    """
    from pipeline import runs
    from pipeline.engine import strategies

    strategies.enable_bounds_checks()
    options.load_strategy_paths(strategy_path)
    reports = runs.check_strategy(Settings.from_env(), options.resolve_strategy(strategy),
                                  options.parse_params(param or []), symbol, interval)
    peeks = [line for report in reports for line in report.lookahead]
    if as_json:
        import json
        from dataclasses import asdict

        print(json.dumps({"strategy": strategy, "lookahead": bool(peeks),
                          "symbols": [asdict(report) for report in reports]}))
    else:
        for report in reports:
            console.print(f"[bold]{report.symbol}[/] ({report.bars} bars, {report.cuts_checked} cuts): "
                          + ("[red]LOOK-AHEAD[/]" if report.lookahead else "no look-ahead"), highlight=False)
            for line in report.lookahead:
                console.print(f"  {line}", highlight=False, soft_wrap=True)
            for drop, changes in report.warmup.items():
                shown = ", ".join(f"{name} {'n/a' if v is None else f'{v:.2e}'}" for name, v in changes.items())
                console.print(f"  first {drop} bars dropped: relative change at the last bar: {shown or '-'}",
                              highlight=False)
    if peeks:
        raise typer.Exit(1)


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err_console, transient=transient,
        disable=not err_console.is_terminal and os.environ.get("CRYPTOBT_PROGRESS") != "1",
    )


@db_app.command("init")
@user_errors
def db_init() -> None:
    """Create the database if needed, apply sql/*.sql and list the strategies in crypto_strategies (idempotent).

    Example: cryptobt db init
    """
    from pipeline.engine import strategies
    from pipeline.source import postgres as source

    settings = Settings.from_env()
    applied = source.apply_schema(settings.database_url)
    names = strategies.strategy_names()
    source.write_strategies(settings.database_url, {n: strategies.STRATEGIES[n].defaults for n in names})
    console.print(f"schema applied to {redact_url(settings.database_url)}: {', '.join(applied)}; "
                  f"crypto_strategies lists {', '.join(names)}")


@db_app.command("seed")
@user_errors
def db_seed(
    cryptos: Annotated[int, typer.Option(help="Number of synthetic cryptos.")] = 211,
    years: Annotated[float, typer.Option(help="Years of hourly history (the longest listing).")] = 5.0,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same market.")] = 42,
    replace: Annotated[bool, typer.Option("--replace", help="Replace the symbols' series whole (without it, a "
                                                             "symbol whose bars differ is refused).")] = False,
) -> None:
    """Write a synthetic market (hourly bars + the derived intervals, default 1d) with binary COPY.

    Symbols that already have different bars are refused, naming them, unless --replace; the
    same seed again changes 0 rows.

    Example: cryptobt db seed --cryptos 211 --years 5 --seed 7
    """
    from pipeline.source import loaders
    from pipeline.source import postgres as source

    loaders.check_seed_args(cryptos, years, seed)
    settings = Settings.from_env()
    source.apply_schema(settings.database_url)
    with progress_bar() as progress:
        task = progress.add_task("rows copied", total=None)
        report = loaders.seed_database(
            settings.database_url, cryptos, years, seed,
            connections=settings.export_connections, replace=replace, derived=settings.derived_intervals,
            on_total=lambda total: progress.update(task, total=total),
            progress=lambda n: progress.advance(task, n),
        )
    console.print(
        f"seeded {report.symbols} cryptos: {report.changed:,} rows changed ({_per_interval(report.rows)} rows sent) "
        f"in {report.seconds:.2f} s ({report.rows_per_second:,.0f} rows/s)"
    )


def _per_interval(rows: dict[str, int]) -> str:
    from pipeline.core import intervals

    return " + ".join(f"{rows[i]:,} {i}" for i in sorted(rows, key=intervals.SECONDS.get))


def _print_findings(findings: dict[str, list[str]], strict: bool = False) -> None:
    """Health findings, one line per symbol (warnings; `--strict` already refused them)."""
    names = sorted(findings)
    label = "[red]error:[/]" if strict else "[yellow]warning:[/]"
    for name in names[:10]:
        err_console.print(f"{label} {name}: {'; '.join(findings[name])}", highlight=False, soft_wrap=True)
    if len(names) > 10:
        err_console.print(f"{label} and {len(names) - 10} more symbol(s) with findings; `cryptobt data check` "
                          "lists them all", highlight=False)


@db_app.command("import")
@user_errors
def db_import(
    paths: Annotated[list[Path], typer.Argument(help="CSV, Parquet or Feather OHLCV files.")],
    symbol: Annotated[str | None, typer.Option(help="Symbol for a single file (default: file name before '-').")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="The file becomes the symbol's whole series (without it, "
                                                             "a symbol whose bars differ is refused).")] = False,
    interval: Annotated[str | None, typer.Option(help="The file's interval (default: the most common gap between "
                                                      "its bars; needed for a single bar).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse files with data findings (gaps, jumps, stale or "
                                                           "zero prices...) instead of warning.")] = False,
) -> None:
    """Import OHLCV files at their own interval (1m .. 1w), plus the coarser ones of
    CRYPTOBT_DERIVED_INTERVALS (default 1h and 1d). Re-importing the same file changes 0 rows; a
    file whose bars differ from a symbol's existing ones is refused unless --replace. Data
    health is checked and reported at the end (`cryptobt data check`).

    Examples: cryptobt db import data/sample/binance-5m/*.feather | cryptobt db import GOOG.csv --replace
    """
    from pipeline.source import loaders
    from pipeline.source import postgres as source

    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PipelineError(f"no such file: {', '.join(missing)}")
    settings = Settings.from_env()
    source.apply_schema(settings.database_url)
    from pipeline.source import health

    report = loaders.import_files(settings.database_url, list(paths), symbol, replace=replace, interval=interval,
                                  derived=settings.derived_intervals, strict=strict,
                                  thresholds=health.Thresholds(settings.jump_ratio, settings.stale_bars),
                                  window=settings.bar_window)
    natives = ", ".join(sorted(set(report.natives.values()), key=lambda i: health.intervals.SECONDS[i]))
    console.print(
        f"imported {len(paths)} file(s), {report.symbols} symbol(s) at {natives}: {report.changed:,} rows changed "
        f"({_per_interval(report.rows)} bars) in {report.seconds:.2f} s"
    )
    _print_findings(report.findings)


# --- export and lake -------------------------------------------------------


@app.command("export")
@user_errors
def export_command(
    full: Annotated[bool, typer.Option("--full", help="Re-read everything (also drops rows deleted in PostgreSQL).")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another export's lock.")] = 0.0,
    prefect: Annotated[bool | None, typer.Option(
        "--prefect/--no-prefect", help="Run as a Prefect flow (tracked in its UI, artifacts). Default: when a "
                                       "Prefect server is configured (PREFECT_API_URL); without one the same steps "
                                       "run in-process with the same retries. --prefect without a server starts a "
                                       "temporary one (~10 s); --no-prefect runs in-process, one attempt.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse to commit changed symbols with data findings "
                                                           "(gaps, jumps, stale or zero prices...).")] = False,
) -> None:
    """Export PostgreSQL into a new lake snapshot (incremental unless --full).

    A lake holds one source's data, by symbol name: when the current snapshot came from
    another source (the demo's sample, another database), the export reads everything and its
    snapshot replaces that source's symbols (older snapshots keep them until vacuumed).
    Data health of the changed symbols is checked and printed at the end.

    Examples: cryptobt export | cryptobt export --full --no-prefect
    """
    import json

    from pipeline.core.errors import SnapshotDamaged
    from pipeline.lake import snapshots as lake
    from pipeline.source import postgres as source

    wait = options.check_number("--wait", wait, 0, 86_400)
    settings = Settings.from_env()
    try:
        current = lake.current_snapshot(settings.lake_root)
    except SnapshotDamaged:
        current = None  # the export says what to do (a full export heals)
    here = source.source_id(settings.database_url)
    if current is not None and current.manifest.get("source") != here:
        err_console.print(f"the current snapshot {current.id} came from {current.manifest.get('source')}; reading "
                          f"{here} whole: its snapshot replaces those symbols", highlight=False, soft_wrap=True)
    from flows.launch import export as run_export

    summary = run_export(full=full, wait_seconds=wait, strict=strict, prefect=prefect,
                         log=lambda m: err_console.print(m, highlight=False, markup=False, soft_wrap=True))
    if not summary.pop("prefect"):
        for line in summary["warnings"]:  # the flow logs its own (a scheduled run has no console)
            _warn(line)
    if as_json:
        print(json.dumps(summary))
        return
    state = "new snapshot" if summary["created"] else "unchanged, snapshot stands"
    console.print(f"{state}: {summary['snapshot_id']} ({summary['rows_read']:,} rows read, "
                  f"{len(summary['changed_symbols'])} symbols changed)")
    committed = lake.current_snapshot(settings.lake_root)
    if committed is not None and summary["created"]:
        _print_findings({n: committed.symbols[n]["health"] for n in summary["changed_symbols"]
                         if committed.symbols.get(n, {}).get("health")})


@lake_app.command("snapshots")
@user_errors
def lake_snapshots(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the lake's snapshots, oldest first; * marks the current one.

    Example: cryptobt lake snapshots
    """
    import json

    from pipeline.lake import snapshots as lake

    settings = Settings.from_env()
    current = lake.current_snapshot(settings.lake_root)
    rows = [{"snapshot_id": s.id, "created_at": s.manifest["created_at"], "source": s.manifest["source"],
             "symbols": len(s.symbols), "changed": len(s.manifest["changed_symbols"]),
             "rows_read": s.manifest["rows_read"], "current": current is not None and s.id == current.id}
            for s in lake.list_snapshots(settings.lake_root)]
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        console.print(f"no snapshots under {settings.lake_root}")
        return
    # The snapshot id is what a user copies (--snapshot): never cut; other columns go first.
    columns = [tables.Column("", required=True), tables.Column("snapshot", required=True, right=False),
               tables.Column("created (UTC)", drop_rank=2, right=False), tables.Column("source", drop_rank=1, right=False),
               tables.Column("symbols", drop_rank=3), tables.Column("changed", drop_rank=4),
               tables.Column("rows read", drop_rank=5)]
    tables.print_table(console, columns, [["*" if r["current"] else "", r["snapshot_id"], r["created_at"][:19],
                                           r["source"], *(tables.formatted(r[k], "count") for k in
                                                          ("symbols", "changed", "rows_read"))] for r in rows],
                       "snapshots, oldest first (* = current)")


@lake_app.command("verify")
@user_errors
def lake_verify(
    all_: Annotated[bool, typer.Option("--all", help="Every snapshot, not only the current one.")] = False,
) -> None:
    """Check a snapshot against the checksums its manifest recorded at commit: manifest, state, every file,
    and its kept price grids.

    Prints one line per problem (damaged, missing or stray file) and exits 1 if there is any.
    Example: cryptobt lake verify --all
    """
    from pipeline.lake import snapshots as lake

    settings = Settings.from_env()
    root = Path(settings.lake_root)
    if all_:
        folder = root / "snapshots"
        paths = sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    else:
        paths = [lake.require_snapshot(root).path]
    problems = [problem for path in paths for problem in lake.verify(path)]
    for problem in problems:
        console.print(problem, highlight=False, soft_wrap=True)
    if problems:
        raise PipelineError(f"{len(problems)} problem(s) in {len(paths)} snapshot(s); "
                            "`cryptobt export --full` writes a good snapshot")
    console.print(f"{len(paths)} snapshot(s) verified: every file matches its recorded checksum")


@lake_app.command("vacuum")
@user_errors
def lake_vacuum(
    keep: Annotated[int | None, typer.Option(help="Snapshots to keep (default CRYPTOBT_SNAPSHOT_KEEP).")] = None,
    keep_hours: Annotated[float | None, typer.Option(help="Keep any younger than this.")] = None,
) -> None:
    """Remove snapshots past the retention (never the current one).

    Example: cryptobt lake vacuum --keep 3 --keep-hours 0
    """
    from pipeline.lake import snapshots as lake

    if keep is not None and keep < 1:
        raise PipelineError(f"--keep {keep} must be >= 1")
    if keep_hours is not None:
        keep_hours = options.check_number("--keep-hours", keep_hours, 0, options.MAX_HOURS)
    settings = Settings.from_env()
    with lake.export_lock(settings.lake_root, wait_seconds=30):
        removed = lake.vacuum(settings.lake_root, keep=keep or settings.snapshot_keep,
                              keep_hours=settings.snapshot_keep_hours if keep_hours is None else keep_hours)
    console.print(f"removed {len(removed)} snapshot(s)" + (": " + ", ".join(removed) if removed else ""))


# --- data -------------------------------------------------------------------


@data_app.command("list")
@user_errors
def data_list(
    snapshot: Annotated[str | None, typer.Option(help="A kept snapshot instead of the current one.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False,
) -> None:
    """Every symbol of the lake: its own interval, the intervals it can be read at, first and last
    bar, bars, gaps, data version and source.

    Example: cryptobt data list --json
    """
    import json

    from pipeline.lake import contents as data

    rows = data.listing(Settings.from_env().lake_root, snapshot)
    if as_json:
        print(json.dumps(rows))
        return
    title = (f"{len(rows)} symbol(s) in snapshot {rows[0]['snapshot_id']} from {rows[0]['source']}" if rows
             else "no symbols")
    columns = [tables.Column("symbol", required=True, right=False), tables.Column("interval", required=True),
               tables.Column("readable at", drop_rank=2, right=False),
               tables.Column("first bar (UTC)", required=True, right=False),
               tables.Column("last bar (UTC)", required=True, right=False), tables.Column("bars", required=True),
               tables.Column("gaps", drop_rank=1), tables.Column("data version", drop_rank=3, right=False)]
    refused = [r for r in rows if r["refused"]]
    rows = [[r["symbol"] + (" *" if r["refused"] else ""), r["interval"] or "-", " ".join(r["intervals"]) or "-",
             (r["first"] or "-")[:16].replace("T", " "), (r["last"] or "-")[:16].replace("T", " "), f"{r['bars']:,}",
             f"{r['gaps']:,}" if r["gaps"] is not None else "-", r["data_version"] or "-"] for r in rows]
    tables.print_table(console, columns, rows, title)
    for r in refused:
        console.print(f"* {r['symbol']}: refused by the export: {r['refused']}", highlight=False, soft_wrap=True)


@data_app.command("check")
@user_errors
def data_check(
    targets: Annotated[list[str] | None, typer.Argument(help="Symbols of the lake or OHLCV files (default: every "
                                                             "symbol).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when anything is found.")] = False,
    snapshot: Annotated[str | None, typer.Option(help="A kept snapshot instead of the current one.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Data health: gaps, jumps beyond CRYPTOBT_JUMP_RATIO (10x), stale closes (CRYPTOBT_STALE_BARS
    equal closes in a row, 24), zero prices, zero volume, high below low, duplicate timestamps.
    Findings are warnings (exit 0) unless --strict.

    Examples: cryptobt data check | cryptobt data check SYN001 ETH_BTC | cryptobt data check prices.csv --strict
    """
    import json

    from pipeline.lake import contents as data
    from pipeline.source import health

    settings = Settings.from_env()
    thresholds = health.Thresholds(settings.jump_ratio, settings.stale_bars)
    found = data.check(settings.lake_root, targets or [], thresholds, snapshot)
    if as_json:
        print(json.dumps(found))
    else:
        flagged = {name: notes for name, notes in found.items() if notes}
        for name in sorted(flagged):
            label = "[red]error:[/]" if strict else "[yellow]warning:[/]"
            console.print(f"{label} {name}: {'; '.join(flagged[name])}", highlight=False, soft_wrap=True)
        console.print(f"checked {len(found)}: {len(flagged)} with findings, {len(found) - len(flagged)} clean "
                      f"(jumps beyond {thresholds.jump_ratio:g}x, stale from {thresholds.stale_bars} equal closes)")
    if strict and any(found.values()):
        raise typer.Exit(1)


# --- backtests --------------------------------------------------------------

INTERVAL_HELP = ("1m, 5m, 15m, 30m, 1h, 4h, 1d, 1w (a symbol is read at its own interval or a coarser one, "
                 "aggregated on read when the lake does not store it) or auto: per symbol, 1h when its hourly "
                 "bars in range span at most 50,000 hours, else 1d; a symbol whose own bars are coarser than 1h "
                 "keeps its own interval.")
# SPEC 4.1's run parameters, the same on backtest and sweep (a sweep can also vary them: -g sl=2:10:2).
SlOption = Annotated[float, typer.Option("--sl", help="Stop-loss in percent below the entry fill price (0 = none); "
                                                      "checked from the bar after the entry against its open, "
                                                      "high and low.")]
TpOption = Annotated[float, typer.Option("--tp", help="Take-profit in percent above the entry fill price "
                                                      "(0 = none).")]
TrailOption = Annotated[bool, typer.Option("--trail", help="The stop-loss trails the highest high since the "
                                                           "entry (needs --sl).")]
SizeOption = Annotated[float, typer.Option("--size", help="Share of the equity committed at each entry, in (0, 1] "
                                                          "(1 = all in).")]
SlippageOption = Annotated[float, typer.Option("--slippage", help="Percent against the trader on every market "
                                                                  "fill (close and next_open fills; stop fills get "
                                                                  "none).")]

# The leaderboard's columns; among the optional ones, the highest drop_rank is left out first
# when the terminal is narrow (pipeline/core/tables.py).
BOARD_COLUMNS = (
    ("symbol", tables.Column("symbol", required=True, right=False)),
    ("total_return_pct", tables.Column("return %", required=True)),
    ("buy_hold_return_pct", tables.Column("b&h %", drop_rank=3)),
    # Closed round trips and the position still open apart: win % counts the closed ones only.
    ("closed_trades", tables.Column("trades", drop_rank=2)),
    ("open", tables.Column("open", drop_rank=2)),
    ("win_rate_pct", tables.Column("win %", drop_rank=4)),
    ("max_drawdown_pct", tables.Column("max dd %", drop_rank=1)),
    ("sharpe", tables.Column("sharpe", drop_rank=1)),
    ("bars", tables.Column("bars", drop_rank=5)),
    ("days_of_data", tables.Column("days", drop_rank=6)),
)
SWEEP_LEFT_OUT = ("buy_hold_return_pct", "bars", "days_of_data")
# A sweep's rows add how much of the result is luck (README "Overfitting statistics").
SWEEP_ADDED = (
    ("deflated_sharpe", tables.Column("dsr", drop_rank=2)),
    ("pbo", tables.Column("pbo", drop_rank=2)),
)


def _value(record: dict[str, Any], key: str) -> Any:
    """A record's field, or one derived for printing: `open` = entries not closed (the open position)."""
    if key == "open":
        entries, closed = record.get("num_trades"), record.get("closed_trades")
        return None if entries is None or closed is None else int(entries) - int(closed)
    return record.get(key)


def _print_board(results: list[dict[str, Any]], title: str, limit: int, with_params: bool = False) -> None:
    shown = [(key, col) for key, col in BOARD_COLUMNS if not (with_params and key in SWEEP_LEFT_OUT)]
    if with_params:
        shown += SWEEP_ADDED
    rows = results[:limit]
    # A sweep's rows name their parameters: those that vary get a column each (never cut), those
    # fixed across the shown rows go in the title.
    varying: list[str] = []
    sets: list[dict[str, Any]] = [{} for _ in rows]
    if with_params and rows:
        from pipeline.engine.batch import set_parameters

        sets = set_parameters(rows)
        names = list(sets[0])
        varying = [k for k in names if len({s[k] for s in sets}) > 1] or names[:1]
        fixed = [f"{k}={tables.param(v)}" for k, v in sets[0].items() if k not in varying]
        title += f"; {' '.join(fixed)}" if fixed else ""
    columns = [shown[0][1], *[tables.Column(tables.param_header(k), required=True) for k in varying],
               *[col for _, col in shown[1:]]]
    cells = [[r["symbol"], *[tables.param(s[k]) for k in varying],
              *[tables.cell(key, _value(r, key)) for key, _ in shown[1:]]] for r, s in zip(rows, sets, strict=True)]
    tables.print_table(console, columns, cells, title)


def _print_walk_forward(summaries: list[dict[str, Any]], config: Any, limit: int) -> None:
    """Per symbol: the stitched out-of-sample result and how much of the in-sample objective survived."""
    columns = [tables.Column("symbol", required=True, right=False), tables.Column("oos return %", required=True),
               tables.Column("oos sharpe", required=True), tables.Column("oos/is", drop_rank=1),
               tables.Column("sets chosen", drop_rank=2, right=False)]
    cells = []
    for s in summaries[:limit]:
        chosen = " | ".join(",".join(tables.param(v) for v in f["params"].values()) for f in s["folds"])
        cells.append([s["symbol"], tables.cell("total_return_pct", s["oos"]["total_return_pct"]),
                      tables.cell("sharpe", s["oos"]["sharpe"]), tables.cell("oos_is_ratio", s["oos_is_ratio"]), chosen])
    kind = "anchored" if config.anchored else "rolling"
    start = "each test part starting flat" if config.walk_forward_flat_start else "positions carried in"
    tables.print_table(console, columns, cells, f"walk-forward: {config.walk_forward} {kind} folds, train "
                       f"{config.train_ratio:.0%} of each, best by {config.objective}; out of sample ({start}), "
                       "stitched")


def _emit_json(results: list[dict[str, Any]] | dict[str, Any]) -> None:
    print(tables.json_text(results))


def _run_header(outcome: Any) -> dict[str, Any]:
    """What `backtest --json` and `sweep --json` say of the run itself, before its results: its id, the
    snapshot and interval it read, and the symbols of the lake it left out with why."""
    return {"run_id": outcome.run_id, "snapshot_id": outcome.snapshot_id, "interval": outcome.interval,
            "left_out": outcome.left_out}


def _run(strategy: Any, params: list[dict[str, Any]] | dict[str, Any], symbols: list[str] | None, all_: bool,
         interval: str, stream: bool, command: str, no_cache: bool = False,
         confirm_seconds: float | None = None, snapshot: str | None = None, keep: int | None = None,
         **run: Any) -> tuple[Any, Any, Settings]:
    """A validated backtest or sweep of `strategy` (resolved: options.resolve_strategy), run; `run` are
    `options.run_config`'s options (fee, fill, sl, ...)."""
    from pipeline import runs

    config, symbols, interval = options.run_request(strategy, params, symbols, all_, interval, **run)
    settings = Settings.from_env()
    on_results = None
    if stream:
        def on_results(batch: list[dict[str, Any]]) -> None:
            for result in batch:
                print(tables.json_text(result), flush=True)

    with progress_bar(transient=True) as progress:
        task = progress.add_task("backtests", total=None)
        watch = None if stream or progress.disable else (
            lambda done, total: progress.update(task, completed=done, total=total))
        outcome = runs.execute(settings, config, symbols, interval, no_cache=no_cache, on_warning=_warn,
                               on_results=on_results, on_progress=watch, command=command,
                               confirm_seconds=confirm_seconds,
                               on_plan=lambda m: err_console.print(m, highlight=False), snapshot_id=snapshot,
                               keep=keep, should_stop=stopping.requested)
    ran = _RAN.get()
    if ran is not None:
        ran.update(outcome=outcome, settings=settings)
    _warn_findings(outcome.findings)
    _say_left_out(outcome.left_out, interval)
    return outcome, config, settings


def _say_left_out(left_out: dict[str, str], interval: str) -> None:
    """One line naming the symbols a run over the whole lake left out, and why."""
    if not left_out:
        return
    names = list(left_out)
    shown = "; ".join(f"{n} ({left_out[n]})" for n in names[:3])
    err_console.print(f"left out {len(names)} symbol(s) with no {interval} bars: {shown}"
                      f"{f'; and {len(names) - 3} more (--json lists them)' if len(names) > 3 else ''}; "
                      "--interval auto runs each at its own interval", highlight=False, soft_wrap=True)


def _warn_findings(findings: dict[str, list[str]]) -> None:
    """One line for the symbols whose data has health findings (the manifest records them)."""
    if not findings:
        return
    names = sorted(findings)
    first = f"{names[0]}: {findings[names[0]][0]}"
    err_console.print(f"[yellow]warning:[/] {len(names)} symbol(s) have data findings ({first}"
                      f"{'; ...' if len(names) > 1 or len(findings[names[0]]) > 1 else ''}); "
                      f"see `cryptobt data check {' '.join(names[:3])}{' ...' if len(names) > 3 else ''}`",
                      highlight=False, soft_wrap=True)
# The run of the `stoppable` command under way, once it has returned: its outcome and settings.
_RAN: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("ran", default=None)


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
        token = _RAN.set(ran)
        try:
            with stopping.cooperative(on_request=_stopping_note):
                result = func(*args, **kwargs)
        except stopping.RunStopped as exc:
            _say_stopped(str(exc))
        except BaseException as exc:  # before the run began writing, or after it returned
            if not isinstance(exc, KeyboardInterrupt) and not stopping.at_once(exc):
                raise
            _say_stopped("nothing was kept (the run had not begun)" if "outcome" not in ran else
                         _kept(ran["outcome"], ran["settings"], "the run was written before it stopped: "))
        finally:
            _RAN.reset(token)
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


def _plot(path: Path, settings: Settings, config: Any, outcome: Any, sweep: bool, top: int) -> None:
    from pipeline import plots, runs

    best = outcome.results[:top]
    # A run whose symbols were read at several intervals (--interval auto) draws at the coarsest.
    curves = runs.equity_curves(settings, config, [r["symbol"] for r in best[:5]], outcome.interval.split("+")[-1],
                                best[0] if best else None, snapshot_id=outcome.snapshot_id)
    # A sweep's leaderboard bars are each symbol's best set (all sets would draw over each other).
    from pipeline.engine import batch as engine

    bars = engine.top_per_symbol(outcome.results, 1, *engine.ranking(config)) if sweep else outcome.results
    written = plots.write_plot(path, f"{config.strategy.name} on snapshot {outcome.snapshot_id}",
                               bars, curves, outcome.set_returns if sweep else None)
    err_console.print(f"picture written to {written}")


@app.command("backtest")
@user_errors
@stoppable
def backtest_command(
    strategy: Annotated[str, typer.Argument(help="A strategy (`cryptobt strategies` lists them).")],
    symbol: Annotated[list[str] | None, typer.Option("--symbol", "-s", help="Symbol (repeatable).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every symbol in the lake (the default).")] = False,
    interval: Annotated[str, typer.Option(help=INTERVAL_HELP)] = "1h",
    timerange: Annotated[str | None, typer.Option(help="YYYYMMDD-YYYYMMDD, either side open.")] = None,
    snapshot: Annotated[str | None, typer.Option(help="Run against this kept snapshot (`cryptobt lake snapshots`) "
                                                      "instead of the current one.")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="name=value (repeatable).")] = None,
    fee: Annotated[float, typer.Option(help="Fee in percent per fill (0.1 = 0.1 %).")] = 0.1,
    fill: Annotated[str, typer.Option(help="close (signal bar) or next_open.")] = "close",
    initial: Annotated[float, typer.Option(help="Starting cash.")] = 1000.0,
    trades: Annotated[bool, typer.Option("--trades", help="Include each result's trade log (fills) and round "
                                                          "trips.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document: the run (run_id, snapshot_id, "
                                                          "interval, left_out) and its results.")] = False,
    stream: Annotated[bool, typer.Option("--stream", help="Print each result as an NDJSON line when ready.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write pictures to this .html or .png file.")] = None,
    top: Annotated[int, typer.Option(help="Rows in the printed leaderboard.")] = 20,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the Redis cache.")] = False,
    annualization: Annotated[str, typer.Option(
        help="Sharpe and its kin: observed (each symbol's bars a year) or calendar (8,760 for 1h).")] = "observed",
    min_bar_coverage: Annotated[float, typer.Option(
        help="Drop bars built from less than this share of their interval's hours (0.5: a daily bar "
             "needs 12 hours); 0 keeps all.")] = 0.0,
    strategy_path: Annotated[list[Path] | None, typer.Option(
        "--strategy-path", help="Folder of your own strategy files (repeatable; also CRYPTOBT_STRATEGY_PATH).")] = None,
    sl: SlOption = 0.0,
    tp: TpOption = 0.0,
    trail: TrailOption = False,
    size: SizeOption = 1.0,
    slippage: SlippageOption = 0.0,
) -> None:
    """Backtest one strategy over many symbols at once.

    Examples:
      cryptobt backtest rsi --all
      cryptobt backtest macd -s SYN001 -s SYN002 --interval 1d --timerange 20230101- --json
      cryptobt backtest rsi -p rsi_period=21 -p oversold_threshold=25 --fill next_open --plot out/rsi.html
      cryptobt backtest rsi --all --sl 5 --tp 10 --trail --size 0.5 --slippage 0.05
    """
    options.load_strategy_paths(strategy_path)
    options.check_top(top)
    options.check_plot(plot)
    outcome, config, settings = _run(options.resolve_strategy(strategy), options.parse_params(param or []), symbol,
                                     all_, interval, stream,
                                     "backtest", no_cache, snapshot=snapshot, timerange=timerange, fee=fee,
                                     fill=fill, initial=initial, trades=trades, annualization=annualization,
                                     min_bar_coverage=min_bar_coverage, sl=sl, tp=tp, trail=trail, size=size,
                                     slippage=slippage)
    if plot and outcome.results:
        _plot(plot, settings, config, outcome, False, top)
    if stream:
        return
    if as_json:
        _emit_json({**_run_header(outcome), "results": outcome.results})
        return
    shown = min(top, len(outcome.results))
    _print_board(outcome.results, f"{strategy} on {len(outcome.results)} symbols ({outcome.interval})"
                 + (f": best {shown} of {len(outcome.results)} (--top)" if shown < len(outcome.results) else ""), top)
    cache_note = (f"{outcome.cache_hits} from cache, {outcome.cache_misses} computed" if outcome.cache_used
                  else "cache off")
    console.print(f"run {outcome.run_id}: {outcome.seconds * 1000:.0f} ms ({cache_note}); "
                  f"snapshot {outcome.snapshot_id}; results in {settings.results_root}")


@app.command("sweep")
@user_errors
@stoppable
def sweep_command(
    strategy: Annotated[str, typer.Argument(help="Strategy to sweep.")],
    grid: Annotated[list[str], typer.Option("--grid", "-g", help="name=start:stop:step or name=v1,v2 (repeatable).")],
    symbol: Annotated[list[str] | None, typer.Option("--symbol", "-s")] = None,
    all_: Annotated[bool, typer.Option("--all")] = False,
    interval: Annotated[str, typer.Option(help=INTERVAL_HELP)] = "1h",
    timerange: Annotated[str | None, typer.Option(help="YYYYMMDD-YYYYMMDD.")] = None,
    snapshot: Annotated[str | None, typer.Option(help="Run against this kept snapshot instead of the current one.")] = None,
    fee: Annotated[float, typer.Option(help="Fee in percent.")] = 0.1,
    fill: Annotated[str, typer.Option(help="close or next_open.")] = "close",
    initial: Annotated[float, typer.Option(help="Starting cash.")] = 1000.0,
    top: Annotated[int, typer.Option(help="Best N per symbol and overall.")] = 5,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write pictures (with a heatmap) to .html or .png.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the Redis cache.")] = False,
    annualization: Annotated[str, typer.Option(
        help="Sharpe and its kin: observed (each symbol's bars a year) or calendar (8,760 for 1h).")] = "observed",
    min_bar_coverage: Annotated[float, typer.Option(
        help="Drop bars built from less than this share of their interval's hours (0.5: a daily bar "
             "needs 12 hours); 0 keeps all.")] = 0.0,
    yes: Annotated[bool, typer.Option("--yes", help=f"Run a sweep estimated to take more than "
                                      f"{options.SWEEP_CONFIRM_SECONDS:.0f} s.")] = False,
    strategy_path: Annotated[list[Path] | None, typer.Option(
        "--strategy-path", help="Folder of your own strategy files (repeatable; also CRYPTOBT_STRATEGY_PATH).")] = None,
    sl: SlOption = 0.0,
    tp: TpOption = 0.0,
    trail: TrailOption = False,
    size: SizeOption = 1.0,
    slippage: SlippageOption = 0.0,
    objective: Annotated[str, typer.Option(
        help="What best means: total_return, sharpe, sortino, calmar, profit_factor or expectancy.")] = "total_return",
    min_trades: Annotated[int, typer.Option(
        help="Sets with fewer entries than this never win (they rank after every set that has them).")] = 5,
    pbo_blocks: Annotated[int, typer.Option(
        help="Time blocks of the PBO's cross-validation (even, 2..24; 0 = no PBO).")] = 16,
    samples: Annotated[int | None, typer.Option(
        help="Run this many grid points drawn at random (for grids too large to run whole).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --samples: the same seed draws the same points.")] = 0,
    walk_forward: Annotated[int, typer.Option(
        "--walk-forward", help="Cut each symbol's bars into K folds; in each, the best set on the train part "
                               "(by --objective) is judged on the test part that follows (0 = off).")] = 0,
    train_ratio: Annotated[float, typer.Option(help="Share of each fold that trains (walk-forward).")] = 0.7,
    anchored: Annotated[bool, typer.Option(
        "--anchored", help="Walk-forward trains from the first bar up to each test part.")] = False,
    walk_forward_flat_start: Annotated[bool, typer.Option(
        "--walk-forward-flat-start", help="Walk-forward test parts start flat with fresh cash (no position "
                                          "carried in from the full-history path).")] = False,
) -> None:
    """Run a parameter grid over many symbols in one pass; print the best sets.

    The sweep's size and estimated time are printed first; one estimated past
    a minute needs --yes. The run parameters sl, tp, trail (0 or 1), size and slippage
    join the grid like the strategy's own (-g sl=2:10:2); --sl and the others set them
    for every set.

    Examples:
      cryptobt sweep rsi -g rsi_period=7:28:7 -g oversold_threshold=20,25,30 -g overbought_threshold=70,75,80
      cryptobt sweep ma_crossover -g fast_period=5:20:5 -g slow_period=30:90:30 --top 3 --json
      cryptobt sweep rsi -g sl=2:10:2 -g tp=5,10,20 -g trail=0,1
    """
    from pipeline.engine import batch as engine

    options.load_strategy_paths(strategy_path)
    options.check_top(top)
    options.check_plot(plot)
    chosen = options.resolve_strategy(strategy)
    params_list = options.parse_grid(chosen, grid, samples, seed)
    if params_list.dropped:
        err_console.print(f"skipped {params_list.dropped} invalid combination(s), e.g. {params_list.dropped_example}")
    outcome, config, settings = _run(chosen, params_list, symbol, all_, interval, False, "sweep", no_cache,
                                     None if yes else options.SWEEP_CONFIRM_SECONDS, snapshot, timerange=timerange,
                                     fee=fee, fill=fill, initial=initial, annualization=annualization,
                                     min_bar_coverage=min_bar_coverage, sl=sl, tp=tp, trail=trail, size=size,
                                     slippage=slippage, objective=objective, min_trades=min_trades,
                                     pbo_blocks=pbo_blocks, walk_forward=walk_forward, train_ratio=train_ratio,
                                     anchored=anchored, walk_forward_flat_start=walk_forward_flat_start,
                                     keep=top)
    best = outcome.results[:top]
    per_symbol = engine.top_per_symbol(outcome.results, top, *engine.ranking(config))
    if plot and outcome.results:
        _plot(plot, settings, config, outcome, True, top)
    if as_json:
        _emit_json({**_run_header(outcome), "best": engine.sweep_best(outcome.results, top, *engine.ranking(config)),
                    **({"walk_forward": outcome.walk_forward} if config.walk_forward else {})})
        return
    _print_board(best, f"best {len(best)} of {outcome.n_results:,} ({len(config.params_list)} sets x symbols)",
                 top, True)
    _print_board(per_symbol, f"best {top} per symbol", top * 10, True)
    if config.walk_forward:
        _print_walk_forward(outcome.walk_forward, config, top * 10)
    console.print(f"run {outcome.run_id}: {outcome.seconds:.2f} s, {outcome.bar_steps / max(outcome.seconds, 1e-9) / 1e6:,.1f} "
                  f"M bar-steps/s; results in {settings.results_root}")


def _split_values(items: list[str]) -> list[str]:
    """`--max-open 5,10 --max-open 20` -> ['5', '10', '20']."""
    return [v.strip() for item in items for v in item.split(",") if v.strip()]


@app.command("portfolio")
@user_errors
def portfolio_command(
    strategy: Annotated[str, typer.Argument(help="Strategy whose signals drive the account.")],
    symbol: Annotated[list[str] | None, typer.Option("--symbol", "-s", help="Symbol (repeatable).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every symbol in the lake (the default).")] = False,
    max_open: Annotated[list[str] | None, typer.Option(
        "--max-open", help="Most positions open at once (comma list or repeated = a sweep).")] = None,
    stake: Annotated[list[str] | None, typer.Option(
        "--stake", help="Per entry: a fraction of equity in (0, 1] (0.1 or 10%) or an amount of cash > 1 "
                        "(comma list or repeated = a sweep).")] = None,
    rank_by: Annotated[str, typer.Option(
        help="Which same-bar entries win free slots: auto (volume when the lake has it), volume (trailing 24h "
             "quote volume) or name; ties go to the symbol name.")] = "auto",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="name=value (repeatable).")] = None,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", "-g", help="Strategy parameter sweep: name=start:stop:step or name=v1,v2.")] = None,
    interval: Annotated[str, typer.Option(help="1m .. 1w (see backtest --help) or auto (the coarsest interval "
                                                "any symbol needs: one account needs one grid).")] = "1h",
    timerange: Annotated[str | None, typer.Option(help="YYYYMMDD-YYYYMMDD, either side open.")] = None,
    fee: Annotated[float, typer.Option(help="Fee in percent per fill (0.1 = 0.1 %).")] = 0.1,
    slippage: Annotated[float, typer.Option(help="Slippage in percent against every market fill.")] = 0.0,
    fill: Annotated[str, typer.Option(help="close (signal bar) or next_open.")] = "close",
    initial: Annotated[float, typer.Option(help="Starting cash of the one account.")] = 1000.0,
    top: Annotated[int, typer.Option(help="Accounts and symbols in the printed tables.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the accounts and the best one's trades.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Picture of the best account vs equal-weight buy & hold "
                                                   "(.html or .png).")] = None,
    annualization: Annotated[str, typer.Option(
        help="Sharpe and its kin: observed (each symbol's bars a year) or calendar (8,760 for 1h).")] = "observed",
    min_bar_coverage: Annotated[float, typer.Option(
        help="Drop bars built from less than this share of their interval's hours (0.5: a daily bar "
             "needs 12 hours); 0 keeps all.")] = 0.0,
    strategy_path: Annotated[list[Path] | None, typer.Option(
        "--strategy-path", help="Folder of your own strategy files (repeatable; also CRYPTOBT_STRATEGY_PATH).")] = None,
) -> None:
    """One account over many symbols: shared cash, at most --max-open positions, ranked entries.

    At each bar exits are filled before entries; entries that fire on the same bar compete for
    free slots and cash in --rank-by order. An entry that finds no slot or too little cash is
    skipped and counted.

    Examples:
      cryptobt portfolio rsi --all --max-open 10 --stake 10%
      cryptobt portfolio macd --max-open 5,10,20 --stake 0.05,0.1 --rank-by volume --plot out/portfolio.html
      cryptobt portfolio rsi -g rsi_period=10:20:5 --max-open 10 --stake 100 --json
    """
    from pipeline import runs
    from pipeline.engine import portfolio as pf
    from pipeline.engine import strategies

    options.load_strategy_paths(strategy_path)
    symbols = options.check_symbols(symbol, all_)
    options.check_top(top)
    options.check_plot(plot)
    options.check_interval(interval)
    slots = []
    for text in _split_values(max_open or ["10"]):
        if not text.isascii() or not text.isdigit() or int(text) < 1:
            raise PipelineError(f"--max-open {text!r} is not allowed: an integer >= 1")
        slots.append(int(text))
    stakes = [pf.Stake.parse(text) for text in _split_values(stake or ["10%"])]
    if rank_by not in pf.RANK_BY:
        raise PipelineError(f"--rank-by {rank_by!r} is not allowed; use one of: {', '.join(pf.RANK_BY)}")
    if grid and param:
        raise PipelineError("use either --param or --grid, not both")
    chosen = options.resolve_strategy(strategy)
    params: Any = list(strategies.parse_grid(chosen, grid)) if grid else options.parse_params(param or [])
    config = options.run_config(chosen, params, timerange=timerange, fee=fee, fill=fill, initial=initial,
                                annualization=annualization, min_bar_coverage=min_bar_coverage, slippage=slippage)
    sets = pf.make_sets(config, sorted(set(slots)), list(dict.fromkeys(stakes)))
    settings = Settings.from_env()
    outcome = runs.portfolio(settings, config, sets, symbols, interval, rank_by=rank_by, command="portfolio")
    _say_left_out(outcome.left_out, interval)
    best = outcome.best
    if plot and best:
        _plot_portfolio(plot, best, outcome, top)
    if as_json:
        import json

        detail = {k: v for k, v in (best or {}).items() if k != "equity_curve"}
        print(json.dumps({"run_id": outcome.run_id, "accounts": outcome.results, "best": detail},
                         default=str, allow_nan=False))
        return
    # Only the strategy parameters that vary get a column; fixed ones go in the title.
    varying = [k for k in config.params_list[0] if len({p[k] for p in config.params_list}) > 1]
    fixed = " ".join(f"{k}={tables.param(v)}" for k, v in config.params_list[0].items() if k not in varying)
    from rich import box

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title=f"{strategy} portfolio over "
                  f"{len(best['symbols']) if best else 0} symbols ({outcome.interval})"
                  f"{', ' + fixed if fixed else ''}: best {min(top, len(outcome.results))} of "
                  f"{len(outcome.results)} accounts")
    # Headers and cells never truncate: a symbol or a parameter value cut short is a wrong value.
    for header in ("slots", "stake", *varying, "return %", "b&h %", "trades", "open", "skipped", "max dd %", "sharpe"):
        table.add_column(header, no_wrap=True, justify="left" if header in ("stake",) else "right")
    for r in outcome.results[:top]:
        table.add_row(str(r["max_open"]), pf.Stake(r["stake"], r["stake_mode"] == "fraction").label(),
                      *[tables.param(r["params"][k]) for k in varying], tables.cell("total_return_pct",
                      r["total_return_pct"]), tables.cell("buy_hold_return_pct", r["buy_hold_return_pct"]),
                      tables.cell("closed_trades", r["closed_trades"]), tables.cell("open", _value(r, "open")),
                      tables.cell("bars", r["skipped_no_slot"] + r["skipped_no_cash"]),
                      tables.cell("max_drawdown_pct", r["max_drawdown_pct"]), tables.cell("sharpe", r["sharpe"]))
    console.print(table)
    if best:
        board = Table("symbol", "round trips", "P&L", "skipped", title="best account: largest contributions")
        for c in sorted(best["contributions"], key=lambda c: -abs(c["pnl"]))[:top]:
            board.add_row(c["symbol"], str(c["round_trips"]), tables.cell("pnl", c["pnl"]), str(c["skipped_entries"]))
        console.print(board)
        console.print(f"best account: final value {tables.cell('final_value', best['final_value'])} from "
                      f"{tables.cell('initial_investment', initial)}; "
                      f"{best['skipped_no_slot']} entries skipped for want of a slot, {best['skipped_no_cash']} "
                      f"for want of cash; ranked by {best['rank_by']}")
    console.print(f"run {outcome.run_id}: {outcome.seconds * 1000:.0f} ms (kernel {outcome.kernel_seconds * 1000:.0f}"
                  f" ms); snapshot {outcome.snapshot_id}; results in {settings.results_root} (mode = 'portfolio')")


def _plot_portfolio(path: Path, best: dict[str, Any], outcome: Any, top: int) -> None:
    from pipeline import plots
    from pipeline.engine import portfolio as pf

    stake = pf.Stake(best["stake"], best["stake_mode"] == "fraction").label()
    written = plots.write_portfolio_plot(path, best, f"{best['strategy']} portfolio, max open {best['max_open']}, "
                                         f"stake {stake}, snapshot {outcome.snapshot_id}", top)
    err_console.print(f"picture written to {written}")


# --- results, cache, stats -------------------------------------------------


def _print_rows(columns: list[str], rows: list[tuple], as_json: bool) -> None:
    """A query's rows: every column the query asked for, none cut (the terminal wraps if it must)."""
    if as_json:
        _emit_json([dict(zip(columns, row, strict=True)) for row in rows])
        return
    tables.print_table(console, [tables.Column(c, required=True) for c in columns],
                       [[tables.number(v) for v in row] for row in rows])


# Result columns as the results tables print them; among the optional ones the highest drop_rank
# is left out first when the terminal is narrow. Run settings (stops, sizing) show only where a
# shown row has one set (`_setting_columns`).
RESULT_COLUMNS = {
    "symbol": tables.Column("symbol", required=True, right=False),
    "strategy": tables.Column("strategy", required=True, right=False),
    "params_json": tables.Column("params", required=True, right=False),
    "interval": tables.Column("interval", drop_rank=5, right=False),
    "total_return_pct": tables.Column("return %", required=True),
    "buy_hold_return_pct": tables.Column("b&h %", drop_rank=4),
    "sharpe": tables.Column("sharpe", drop_rank=2),
    "max_drawdown_pct": tables.Column("max dd %", drop_rank=3),
    "win_rate_pct": tables.Column("win %", drop_rank=6),
    "closed_trades": tables.Column("trades", drop_rank=1),
    "open": tables.Column("open", drop_rank=1),
    "final_value": tables.Column("final value", drop_rank=7),
    "sl_pct": tables.Column("sl %", drop_rank=3),
    "tp_pct": tables.Column("tp %", drop_rank=3),
    "trail": tables.Column("trail", drop_rank=3),
    "size": tables.Column("size", drop_rank=3),
    "slippage_pct": tables.Column("slip %", drop_rank=3),
    "deflated_sharpe": tables.Column("dsr", drop_rank=2),
    "pbo": tables.Column("pbo", drop_rank=2),
    "fold": tables.Column("fold", required=True),
    "split": tables.Column("part", required=True, right=False),
    "start": tables.Column("from", drop_rank=4, right=False),
    "end": tables.Column("to", drop_rank=4, right=False),
    # A round trip's (`results trades`).
    "entry_time": tables.Column("entry (UTC)", required=True, right=False),
    "exit_time": tables.Column("exit (UTC)", required=True, right=False),
    "entry_price": tables.Column("entry price", drop_rank=2),
    "exit_price": tables.Column("exit price", drop_rank=2),
    "units": tables.Column("units", drop_rank=4),
    "fees": tables.Column("fees", drop_rank=3),
    "pnl": tables.Column("P&L", required=True),
    "return_pct": tables.Column("return %", drop_rank=1),
    "bars_held": tables.Column("bars", drop_rank=2),
    "exit_reason": tables.Column("exit reason", required=True, right=False),
    "snapshot_id": tables.Column("snapshot", drop_rank=10, right=False),
    "market": tables.Column("market", required=True, right=False),
    "source": tables.Column("source", required=True, right=False),
    "data_version": tables.Column("data version", drop_rank=9, right=False),
    "run_id": tables.Column("run", drop_rank=8, right=False),
    "created_at": tables.Column("created (UTC)", drop_rank=9, right=False),
}
# Walk-forward parts: what each measures.
SPLIT_NAMES = {"train": "train (in sample)", "test": "test (out of sample)", "oos": "oos stitched"}


def _params_cell(params_json: str | None, leave_out: Iterable[str] = ()) -> str:
    """One name=value per line: the cell breaks between parameters, never inside one."""
    import json

    params = json.loads(params_json) if params_json else {}
    return "\n".join(f"{k}={tables.param(v)}" for k, v in params.items() if k not in leave_out) or "-"


def _setting_columns(records: list[dict[str, Any]]) -> list[str]:
    """The run settings (stop-loss, take-profit, trailing, size, slippage) set on any of `records`."""
    from pipeline.store.results import RUN_SETTING_DEFAULTS

    return [k for k, default in RUN_SETTING_DEFAULTS.items()
            if any(r.get(k) is not None and r[k] != default for r in records)]


def _result_cells(records: list[dict[str, Any]], keys: list[str], leave_out: Iterable[str] = ()) -> list[list[str]]:
    """Rows of result records as table cells, each column in its kind's format."""
    def text(record: dict[str, Any], key: str) -> str:
        value = _value(record, key)
        if key == "params_json":
            return _params_cell(value, leave_out)
        if key in ("created_at", "start", "end", "entry_time", "exit_time"):
            return "-" if value is None else str(value)[:16 if key != "created_at" else 19]
        if key == "split":
            return SPLIT_NAMES.get(value, value or "-")
        if key == "trail":
            return "yes" if value else "-"
        return tables.cell(key, value)

    return [[text(r, k) for k in keys] for r in records]


def _records(columns: list[str], rows: list[tuple]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in rows]


@results_app.command("sql")
@user_errors
def results_sql(
    query: Annotated[str, typer.Argument(help="SQL over the views results, trades and runs.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Query the results with DuckDB (read-only, sandboxed).

    Allowed: SELECT statements over the views results, trades and runs (and read_parquet on their
    own folders). Refused: anything that writes (COPY, CREATE, INSERT, ATTACH, SET ...), reading any
    other file, network access and extensions. For anything else open the Parquet files with your
    own DuckDB (see the README); this command is local only and no HTTP endpoint reaches it.

    Example: cryptobt results sql "SELECT symbol, max(total_return_pct) FROM results GROUP BY ALL ORDER BY 2 DESC LIMIT 5"
    """
    from pipeline.store import results

    _print_rows(*results.query(Settings.from_env().results_root, query), as_json)


@results_app.command("top")
@user_errors
def results_top(
    strategy: Annotated[str | None, typer.Option(help="Only this strategy.")] = None,
    n: Annotated[int, typer.Option(help="How many.")] = 10,
    min_trades: Annotated[int | None, typer.Option(help="Only results with at least this many entries.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The best results ever recorded (newest run of each backtest; walk-forward folds and portfolio
    accounts are not listed).

    Example: cryptobt results top --strategy rsi --n 5 --min-trades 10
    """
    from pipeline.store import results

    options.check_top(n, "--n")
    if min_trades is not None:
        options.check_count("--min-trades", min_trades)
    if strategy is not None:
        options.resolve_strategy(strategy)
    columns, rows = results.top(Settings.from_env().results_root, strategy, n, min_trades=min_trades)
    records = _records(columns, rows)
    if as_json:
        _emit_json(records)
        return
    # Two series of one name (another source, another market) are told apart: those columns show
    # whenever the rows hold more than one of them.
    mixed = [k for k in ("market", "source") if len({r[k] for r in records}) > 1]
    keys = ["symbol", *mixed, "strategy", "params_json", "interval", "total_return_pct", "buy_hold_return_pct",
            "sharpe", "max_drawdown_pct", "win_rate_pct", "closed_trades", "open", *_setting_columns(records),
            "final_value", "data_version", "run_id", "created_at"]
    tables.print_table(console, [RESULT_COLUMNS[k] for k in keys], _result_cells(records, keys),
                       f"best {len(rows)} result(s) recorded" + (f" for {strategy}" if strategy else "")
                       + (f" with at least {min_trades} entries" if min_trades else ""))


@results_app.command("show")
@user_errors
def results_show(
    run_id: Annotated[str | None, typer.Argument(help="The run id a backtest or sweep printed (default: the "
                                                      "newest run).")] = None,
    n: Annotated[int, typer.Option(help="Rows of its leaderboard.")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A past run's leaderboard and parameters, from the results table (freqtrade's backtesting-show).

    A sweep's title says which parameters it swept (a column each) and which it held fixed;
    walk-forward rows (fold, train / test part, stitched out-of-sample) come in a table of their own.
    Example: cryptobt results show 20261122T235959123456Z-ab12cd
    """
    from pipeline.store import results

    shown = results.show(Settings.from_env().results_root, run_id, n)
    run, records = shown["run"], _records(shown["columns"], shown["rows"])
    folds = _records(shown["columns"], shown["walk_forward"])
    if as_json:
        _emit_json({"run": run, "results": records, "walk_forward": folds})
        return
    console.print(f"run {run['run_id']} ({run['command'] or 'unknown command'}) at {str(run['created_at'])[:19]}: "
                  f"{run['strategy']} on {run['symbols']} symbol(s) at {', '.join(run['intervals'])}, "
                  f"{run['results']:,} result(s); snapshot {run['snapshot_id']}; fill {run['fill']}, fee "
                  f"{tables.cell('fee_pct', run['fee_pct'])} %, initial "
                  f"{tables.cell('initial_investment', run['initial_investment'])}, timerange "
                  f"{run['timerange_start'] or '-'} .. {run['timerange_end'] or '-'}"
                  + (f"; interrupted: {run['results']:,}{_of(run['planned'])} results kept" if run["interrupted"]
                     else ""), highlight=False)
    swept, fixed = run["swept"], run["fixed"]
    if swept:
        console.print("swept: " + "; ".join(f"{k} = {', '.join(tables.param(v) for v in values)}"
                                            for k, values in swept.items()), highlight=False, soft_wrap=True)
    if fixed:
        console.print("fixed: " + " ".join(f"{k}={tables.param(v)}" for k, v in fixed.items()), highlight=False,
                      soft_wrap=True)
    # A swept parameter gets a column (fixed ones are in the header); settings are columns already.
    import json

    swept_params = [k for k in swept if k not in results.RUN_SETTING_DEFAULTS]
    params_columns = [tables.Column(tables.param_header(k), required=True) for k in swept_params]

    def print_rows(rows: list[dict[str, Any]], keys: list[str], title: str) -> None:
        cells = _result_cells(rows, keys)
        for row, record in zip(cells, rows, strict=True):
            params = json.loads(record["params_json"] or "{}")
            row[1:1] = [tables.param(params[k]) if k in params else "-" for k in swept_params]
        columns = [RESULT_COLUMNS[k] for k in keys]
        tables.print_table(console, [columns[0], *params_columns, *columns[1:]], cells, title)

    settings_shown = [k for k in _setting_columns(records) if k in swept]
    keys = ["symbol", "interval", "total_return_pct", "buy_hold_return_pct", "closed_trades", "open", "win_rate_pct",
            "max_drawdown_pct", "sharpe", *settings_shown,
            *(["deflated_sharpe", "pbo"] if any(r["pbo"] is not None or r["deflated_sharpe"] is not None
                                                for r in records) else [])]
    print_rows(records, keys, f"best {len(records)} of {run['full_range_results']:,} (whole range)")
    if folds:
        print_rows(folds, ["symbol", "fold", "split", "start", "end", "total_return_pct", "sharpe", *settings_shown],
                   "walk-forward: each fold's set chosen in sample (train), judged out of sample (test); "
                   "oos = the test parts stitched")


@results_app.command("trades")
@user_errors
def results_trades(
    run_id: Annotated[str | None, typer.Argument(help="A run id (default: the newest run).")] = None,
    symbol: Annotated[str | None, typer.Option("--symbol", "-s", help="Only this symbol.")] = None,
    n: Annotated[int, typer.Option(help="Round trips to print (--json prints all).")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A run's round trips (entry and exit, fees, P&L, exit reason), from the trades table.

    Only runs made with --trades (and portfolios) keep them.
    Example: cryptobt results trades 20261122T235959123456Z-ab12cd --symbol ETH_BTC
    """
    from pipeline.store import results

    options.check_top(n, "--n")
    found = results.round_trips(Settings.from_env().results_root, run_id, symbol)
    records = _records(found["columns"], found["rows"])
    if as_json:
        _emit_json(records)
        return
    keys = ["symbol", "params_json", "entry_time", "entry_price", "exit_time", "exit_price", "units", "fees", "pnl",
            "return_pct", "bars_held", "exit_reason"]
    varied = {r["params_json"] for r in records}
    if len(varied) == 1:
        keys.remove("params_json")
    tables.print_table(console, [RESULT_COLUMNS[k] for k in keys], _result_cells(records[:n], keys),
                       f"run {found['run_id']}: {min(n, len(records))} of {len(records):,} round trip(s)"
                       + (f" of {symbol}" if symbol else "")
                       + (f"; {_params_cell(varied.pop()).replace(chr(10), ' ')}" if len(varied) == 1 else ""))


@results_app.command("runs")
@user_errors
def results_runs(
    n: Annotated[int, typer.Option(help="How many of the newest runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The run history, newest first: when, which command and strategy, symbols, results, sets, and
    whether a stop signal interrupted the run (it kept what had finished).

    Example: cryptobt results runs --n 5
    """
    from pipeline.store import results

    options.check_top(n, "--n")
    columns, rows = results.run_history(Settings.from_env().results_root, n)
    records = _records(columns, rows)
    if as_json:
        _emit_json(records)
        return
    # The run id is what a user copies into `results show`: never left out, never cut.
    keys = {"run_id": tables.Column("run", required=True, right=False),
            "created_at": tables.Column("created (UTC)", drop_rank=2, right=False),
            "command": tables.Column("command", drop_rank=3, right=False),
            "strategy": tables.Column("strategy", required=True, right=False),
            "symbols": tables.Column("symbols", drop_rank=4), "results": tables.Column("results", drop_rank=5),
            "sets": tables.Column("sets", drop_rank=6), "duration_s": tables.Column("seconds", drop_rank=7),
            "interrupted": tables.Column("interrupted", drop_rank=1, right=False)}
    def text(record: dict[str, Any], key: str) -> str:
        value = record[key]
        if key == "interrupted":
            return "yes" if value else "no"
        if key == "created_at":
            return str(value)[:19]
        if key in ("symbols", "results", "sets"):
            return tables.formatted(value, "count")
        return tables.number(value) if key == "duration_s" else value or "-"

    cells = [[text(r, k) for k in keys] for r in records]
    tables.print_table(console, list(keys.values()), cells, f"newest {len(records)} run(s)")


def _of(planned: int | None) -> str:
    return "" if planned is None else f" of {planned:,}"


def _cache() -> Any:
    from pipeline.store.cache import ResultCache

    return ResultCache.from_settings(Settings.from_env(),
                                     on_warning=_warn)


@cache_app.command("stats")
@user_errors
def cache_stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Keys, hits, misses, hit rate and memory of the cache.

    Example: cryptobt cache stats
    """
    import json

    stats = _cache().stats()
    if as_json:
        print(json.dumps(stats, default=str))
        return
    for key, value in stats.items():
        console.print(f"{key}: {value}")


@cache_app.command("clear")
@user_errors
def cache_clear() -> None:
    """Delete every cached result (only keys under the cache prefix).

    Example: cryptobt cache clear
    """
    cache = _cache()
    console.print(f"deleted {cache.clear()} key(s) under the prefix {cache.prefix!r} (results, indexes, counters)")


@cache_app.command("invalidate")
@user_errors
def cache_invalidate(symbol: Annotated[str, typer.Option(help="Symbol whose results to drop.")]) -> None:
    """Drop one symbol's cached results.

    Example: cryptobt cache invalidate --symbol SYN001
    """
    console.print(f"deleted {_cache().invalidate_symbol(symbol)} key(s) of {symbol}")


@app.command("stats")
@user_errors
def stats_command(
    hours: Annotated[float, typer.Option(help="Look back this many hours.")] = 24.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run metrics: p50/p95/p99 duration, cache hit rate, throughput.

    Example: cryptobt stats --hours 24
    """
    import json

    from pipeline.store import results

    hours = options.check_number("--hours", hours, 0, options.MAX_HOURS, above=True)
    stats = results.run_stats(Settings.from_env().results_root, hours)
    if as_json:
        print(json.dumps(stats, default=str))
        return
    for key, value in stats.items():
        console.print(f"{key}: {tables.number(value)}")


# --- scheduling and demo ------------------------------------------------------


@app.command("serve")
@user_errors
def serve_command(
    export_cron: Annotated[str, typer.Option(help="Cron for the export flow.")] = "0 * * * *",
    backtest_cron: Annotated[str, typer.Option(help="Cron for the backtest flow.")] = "30 2 * * *",
) -> None:
    """Serve the export (hourly) and backtest (nightly) flows on schedules with Prefect.

    Example: cryptobt serve --export-cron "5 * * * *" --backtest-cron "0 3 * * *"
    """
    from prefect import serve
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    for option, text in (("--export-cron", export_cron), ("--backtest-cron", backtest_cron)):
        try:
            CronSchedule(cron=text)
        except ValidationError:
            raise PipelineError(f"{option} {text!r} is not a cron expression (five fields, e.g. '0 * * * *')") from None
    if not os.environ.get("PREFECT_API_URL"):
        err_console.print(
            "PREFECT_API_URL is not set: Prefect starts a temporary server for this process; its deployments "
            "vanish when it stops and other shells cannot reach them. For a lasting server run "
            "`prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api first.",
            highlight=False, soft_wrap=True)

    from flows.backtest import backtest_flow
    from flows.export import export_flow
    from flows.temporary_server import tie_to_this_process

    tie_to_this_process()
    serve(
        export_flow.to_deployment(name="export-hourly", cron=export_cron),
        backtest_flow.to_deployment(name="backtest-nightly", cron=backtest_cron),
    )


@app.command("api")
@user_errors
def api_command(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 = every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs) and the dashboard (/) with uvicorn.

    Runs go through the same path as `cryptobt backtest`; CRYPTOBT_API_WORKERS runs at once,
    CRYPTOBT_API_QUEUE more wait; admin endpoints need CRYPTOBT_ADMIN_TOKEN. Only requests whose Host
    is localhost, 127.0.0.1, ::1, the --host address or in CRYPTOBT_API_ALLOWED_HOSTS are served.
    Example: cryptobt api --host 127.0.0.1 --port 8000
    """
    import gc

    from pipeline.api.app import create_app, serve

    if not 1 <= port <= 65535:
        raise PipelineError(f"--port {port} is out of range: an integer from 1 to 65535")
    settings = Settings.from_env()
    err_console.print(f"cryptobt api on http://{host}:{port}/ (OpenAPI at /docs; lake {settings.lake_root}; "
                      f"admin endpoints {'on' if settings.admin_token else 'off: CRYPTOBT_ADMIN_TOKEN is unset'})",
                      highlight=False, soft_wrap=True)
    served = create_app(settings, host=host)
    # What start-up built lives as long as the server: full garbage collections, which stop every thread
    # (the event loop too), need not walk it again. Measured: the checks of a million-point grid paused
    # all threads up to 1.76 s per collection without this, 0.32 s with it.
    gc.freeze()
    serve(served, host, port)


@app.command("demo")
@user_errors
def demo_command(
    workdir: Annotated[Path, typer.Option(help="Where the sample lake, results and pictures go.")] = Path("data"),
    sample: Annotated[Path | None, typer.Option(help="Folder of real OHLCV files to include.")] = None,
    symbols: Annotated[int, typer.Option(help="Synthetic symbols in the sample lake.")] = 60,
    years: Annotated[float, typer.Option(help="Years of synthetic history.")] = 2.0,
) -> None:
    """Build a sample lake (or use PostgreSQL/Redis when DATABASE_URL/REDIS_URL are set), run a
    backtest of every symbol and a small sweep, write results and pictures.

    Example: cryptobt demo --workdir /tmp/cryptobt-demo
    """
    from pipeline import demo

    demo.run_demo(workdir, sample, symbols, years, console=console, err_console=err_console)


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
        _print_error(f"{message}{where}")
        return 2
    except click_errors.ClickException as exc:
        _print_error(" ".join(exc.format_message().split()))
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print(f"interrupted ({stopping.name()})")
        return stopping.exit_code()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
