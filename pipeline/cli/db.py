"""`cryptobt db`: PostgreSQL's schema, the synthetic seed and file import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import user_errors
from pipeline.cli.output import console, print_findings, progress_bar
from pipeline.core.config import Settings, redact_url
from pipeline.core.errors import PipelineError

app = typer.Typer(help="PostgreSQL: schema, synthetic seed, file import.", no_args_is_help=True)


@app.command("init")
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


@app.command("seed")
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



@app.command("import")
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
    market: Annotated[str, typer.Option(help="spot, or futures: the file is a perpetual's candles (its series is "
                                             "SYMBOL:futures, apart from the spot symbol's).")] = "spot",
    kind: Annotated[str, typer.Option(help="ohlcv (candles), or a perpetual's funding rates (funding: time and rate, "
                                           "or freqtrade's *-funding_rate.feather) or mark prices (mark: OHLC).")
                    ] = "ohlcv",
) -> None:
    """Import OHLCV files at their own interval (1m .. 1w), plus the coarser ones of
    CRYPTOBT_DERIVED_INTERVALS (default 1h and 1d). Re-importing the same file changes 0 rows; a
    file whose bars differ from a symbol's existing ones is refused unless --replace. Data
    health is checked and reported at the end (`cryptobt data check`).

    Examples: cryptobt db import data/sample/binance-5m/*.feather | cryptobt db import GOOG.csv --replace
    """
    from pipeline.core import markets
    from pipeline.source import futures, loaders
    from pipeline.source import postgres as source

    if market not in markets.MARKETS:
        raise PipelineError(f"--market {market!r} is not allowed; use one of: {', '.join(markets.MARKETS)}")
    if kind not in futures.KINDS:
        raise PipelineError(f"--kind {kind!r} is not allowed; use one of: {', '.join(futures.KINDS)}")
    if kind != "ohlcv" and market != "futures":
        raise PipelineError(f"--kind {kind} is a perpetual's series: add --market futures")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PipelineError(f"no such file: {', '.join(missing)}")
    settings = Settings.from_env()
    if kind != "ohlcv":
        names = loaders.import_names(list(paths), symbol)
        source.apply_schema(settings.database_url)
        for path, name in names.items():
            series, changed, native = futures.import_series(settings.database_url, path, name, kind, interval)
            console.print(f"imported {path.name}: {kind} of {series}{f' at {native}' if native else ''}, "
                          f"{changed:,} rows changed")
        return
    source.apply_schema(settings.database_url)
    from pipeline.source import health

    report = loaders.import_files(settings.database_url, list(paths), symbol, market=market, replace=replace,
                                  interval=interval,
                                  derived=settings.derived_intervals, strict=strict,
                                  thresholds=health.Thresholds(settings.jump_ratio, settings.stale_bars),
                                  window=settings.bar_window)
    natives = ", ".join(sorted(set(report.natives.values()), key=lambda i: health.intervals.SECONDS[i]))
    console.print(
        f"imported {len(paths)} file(s), {report.symbols} symbol(s) at {natives}: {report.changed:,} rows changed "
        f"({_per_interval(report.rows)} bars) in {report.seconds:.2f} s"
    )
    print_findings(report.findings)
