"""`cryptobt demo`: the whole pipeline on a fresh clone, with or without services.

Without DATABASE_URL/REDIS_URL in the environment it builds a sample lake (a
synthetic market plus the project's real Binance sample, data/sample) and runs
the local engine; with them it runs PostgreSQL -> export flow -> lake -> engine ->
Redis + results.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from pipeline import plots, runs
from pipeline.core import markets
from pipeline.core.config import PROJECT_ROOT, Settings
from pipeline.core.errors import PipelineError
from pipeline.core.tables import cell
from pipeline.engine import options, strategies
from pipeline.engine.options import RunConfig
from pipeline.engine.strategies import compiler
from pipeline.lake import snapshots as lake
from pipeline.lake.commit import CommitResult, commit
from pipeline.source import futures
from pipeline.source.bar_rules import native_interval
from pipeline.source.ohlcv import read_ohlcv_file, symbol_from_path
from pipeline.source.synthetic import generate_market
from pipeline.store.cache import ResultCache

# Real Binance pairs shipped with the project (data/sample/README.md says where they come from).
DEFAULT_SAMPLE = PROJECT_ROOT / "data" / "sample" / "binance-5m"
# A real perpetual with its funding rates and mark prices (data/sample/README.md).
DEFAULT_FUTURES = PROJECT_ROOT / "data" / "sample" / "binance-futures"
FUTURES_SYMBOL = "XRP_USDT_USDT"
SWEEP_GRID = ["rsi_period=7,14,21,28", "oversold_threshold=20,25,30,35", "overbought_threshold=65,70,75,80"]
FUTURES_RUNS = ((3, "isolated"), (50, "cross"))  # (leverage, margin) of the demo's runs on the perpetual


def build_sample_lake(lake_root: Path, n_symbols: int, years: float, sample: Path | None,
                      futures_sample: Path | None = None) -> CommitResult:
    """A lake without PostgreSQL: synthetic symbols, plus real files from `sample` if it exists, plus the
    real perpetual of `futures_sample` (DEFAULT_FUTURES) with its funding rates and mark prices.

    Its snapshot replaces whatever the lake held (source `sample`): symbols are names, so a
    sample symbol never takes another source's bars."""
    names, hourly = generate_market(n_symbols, years, seed=42)
    lookup = pl.DataFrame({"symbol_index": range(len(names)), "symbol": names},
                          schema={"symbol_index": pl.Int32, "symbol": pl.String})
    frames = [hourly.join(lookup, on="symbol_index")]
    natives = dict.fromkeys(names, "1h")
    if sample is not None and sample.exists():
        for path in sorted(sample.glob("*.*")):
            if path.suffix.lower() not in (".feather", ".parquet", ".csv"):
                continue
            name = symbol_from_path(path)
            frame = read_ohlcv_file(path)
            natives[name] = native_interval(frame, str(path))
            frames.append(frame.with_columns(pl.lit(name).alias("symbol")))
    extra = None
    if futures_sample is not None and futures_sample.exists():
        name = markets.series_name(FUTURES_SYMBOL, "futures")
        frame = read_ohlcv_file(futures_sample / f"{FUTURES_SYMBOL}-1h-futures.feather")
        natives[name] = native_interval(frame, name)
        frames.append(frame.with_columns(pl.lit(name).alias("symbol")))
        extra = _futures_rows(futures_sample, name)
    merged = pl.concat([f.select("symbol", "ts", "open", "high", "low", "close", "volume") for f in frames])
    with lake.export_lock(lake_root, wait_seconds=30):
        return commit(lake_root, merged, natives, full=True, watermark=None,
                      rows_read=merged.height, source="sample", futures=extra)


def _futures_rows(folder: Path, name: str) -> pl.DataFrame:
    """The sample perpetual's funding rates and hourly mark bars as the lake's futures rows."""
    funding = futures.read_funding(folder / f"{FUTURES_SYMBOL}-8h-funding_rate.feather")
    mark = futures.read_mark(folder / f"{FUTURES_SYMBOL}-1h-mark.feather")
    return pl.concat([
        funding.select(pl.lit(name).alias("symbol"), pl.lit("funding").alias("kind"),
                       pl.lit(None, pl.String).alias("interval"), "datetime", pl.col("rate").alias("open"),
                       *(pl.lit(None, pl.Float64).alias(c) for c in ("high", "low", "close"))),
        mark.select(pl.lit(name).alias("symbol"), pl.lit("mark").alias("kind"), pl.lit("1h").alias("interval"),
                    "datetime", "open", "high", "low", "close"),
    ])


def _futures_run(leverage: int, margin: str) -> str:
    """The key of a run on the perpetual in `demo_runs`."""
    return f"futures {leverage}x {margin}"


def demo_runs() -> dict[str, RunConfig]:
    """The demo's runs in the order it makes them: each strategy's defaults, the RSI sweep (SWEEP_GRID),
    then RSI(6, 40/60) long and short on the sample perpetual at 3x isolated and at 50x cross (where
    this data liquidates), keyed "futures 3x isolated" and "futures 50x cross"."""
    configs = {name: options.run_config(options.resolve_strategy(name), {}) for name in strategies.strategy_names()}
    rsi = configs["rsi"].strategy
    configs["sweep"] = options.run_config(rsi, strategies.parse_grid(rsi, SWEEP_GRID))
    for leverage, margin in FUTURES_RUNS:
        configs[_futures_run(leverage, margin)] = options.run_config(
            rsi, {"rsi_period": 6, "oversold_threshold": 40, "overbought_threshold": 60}, market="futures",
            leverage=leverage, direction="both", margin=margin)
    return configs


def compile_ahead(lake_root: str) -> None:
    """The demo's runs on two symbols (the perpetual's on it), its sweep first and the rest in reverse
    order, nothing written or cached.

    Run beside a demo on empty caches (`_start_compiling_ahead`): Numba compiles one function at a time
    in a process, so this second process compiles the kernels of the demo's sweep and last runs while
    the demo compiles its first ones, and each finds in the cache what the other compiled (the cache's
    file lock, pipeline/core/compile_cache.py, keeps two processes filling it at once from mixing
    signatures)."""
    settings = replace(Settings.from_env(), lake_root=Path(lake_root))
    snapshot = lake.require_snapshot(settings.lake_root)
    perpetual = markets.series_name(FUTURES_SYMBOL, "futures")
    spot = [name for name in sorted(snapshot.symbols) if name != perpetual][:2]
    configs = demo_runs()
    runs.equity_curves(settings, configs["rsi"], spot[:1], "1h")  # the demo's last step: its pictures
    # The sweep first: it compiles longest, and in reverse order the demo reached it before this process
    # had compiled it (the first demo's figures: docs/benchmarks.md, sixth session).
    sweep = configs.pop("sweep")
    for config in [sweep, *reversed(configs.values())]:
        symbols = [perpetual] if config.market == "futures" else spot
        if set(symbols) <= snapshot.symbols.keys():
            runs.backtest(settings, config, symbols, "1h", write_results=False)


def _start_compiling_ahead(lake_root: Path) -> subprocess.Popen | None:
    """`compile_ahead` in a process of its own, silent: it only fills the caches, and if it fails the demo
    compiles what it needs itself."""
    package_parent = str(Path(__file__).resolve().parents[1])
    # No grid cache: its reads would keep aligned arrays of two-symbol sets in the lake (pipeline/lake/grids.py).
    env = {**os.environ, "CRYPTOBT_GRID_CACHE": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    code = f"from pipeline.demo import compile_ahead; compile_ahead({str(lake_root)!r})"
    try:
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
    except OSError:
        return None


def _futures_demo(settings: Settings, configs: dict[str, RunConfig], cache: ResultCache | None,
                  console: Console) -> None:
    """RSI on the sample perpetual, long and short at 3x, and at 50x where this data liquidates."""
    snapshot = lake.require_snapshot(settings.lake_root)
    if markets.series_name(FUTURES_SYMBOL, "futures") not in snapshot.symbols:
        return
    lines = []
    for leverage, margin in FUTURES_RUNS:
        config = configs[_futures_run(leverage, margin)]
        (r,) = runs.backtest(settings, config, None, "1h", cache=cache, command="demo futures").results
        lines.append(f"{leverage}x {margin}: {cell('total_return_pct', r['total_return_pct'])} %, "
                     f"{r['num_trades']} trades, funding paid {r['funding_paid']:+.2f}, "
                     f"{r['liquidations']} liquidation(s)")
    console.print(f"futures: RSI(6, 40/60) long and short on {FUTURES_SYMBOL}:futures (real Binance perpetual, "
                  f"funding and mark prices): " + "; ".join(lines), highlight=False)


def _full_path(settings: Settings, console: Console) -> None:
    from flows.launch import export
    from pipeline.source import loaders
    from pipeline.source import postgres as source

    source.apply_schema(settings.database_url)
    with source.connect(settings.database_url) as conn:
        empty = not source.has_prices(conn)
    if empty:
        report = loaders.seed_database(settings.database_url, 60, 2.0)
        console.print(f"seeded PostgreSQL: {report.total_rows:,} rows ({report.rows_per_second:,.0f} rows/s)")
        if DEFAULT_SAMPLE.exists():
            loaders.import_files(settings.database_url, sorted(DEFAULT_SAMPLE.glob("*.feather")))
        if DEFAULT_FUTURES.exists():
            loaders.import_files(settings.database_url, [DEFAULT_FUTURES / f"{FUTURES_SYMBOL}-1h-futures.feather"],
                                 market="futures")
            for kind, file in (("funding", "8h-funding_rate"), ("mark", "1h-mark")):
                futures.import_series(settings.database_url, DEFAULT_FUTURES / f"{FUTURES_SYMBOL}-{file}.feather",
                                      FUTURES_SYMBOL, kind)
    summary = export(full=False)
    console.print(f"export{' flow' if summary['prefect'] else ''}: snapshot {summary['snapshot_id']} "
                  f"({summary['rows_read']:,} rows read)")


def run_demo(workdir: Path, sample: Path | None, n_symbols: int, years: float, *,
             console: Console, err_console: Console) -> dict:
    workdir = Path(workdir)
    if sample is not None and not Path(sample).is_dir():
        raise PipelineError(f"--sample {sample}: no such folder; give a folder of CSV, Parquet or Feather "
                            f"OHLCV files (the project's own is {DEFAULT_SAMPLE})")
    if not 1 <= n_symbols <= 1000:
        raise PipelineError(f"--symbols {n_symbols} is out of range: an integer from 1 to 1000")
    if not (math.isfinite(years) and 0 < years <= 20):
        raise PipelineError(f"--years {years} is out of range: a number > 0 and <= 20")
    use_services = bool(os.environ.get("DATABASE_URL"))
    base = Settings.from_env()
    settings = replace(base, lake_root=workdir / "lake", results_root=workdir / "results")
    lake.check_writable(settings.lake_root)
    started = time.perf_counter()
    if use_services:
        os.environ["CRYPTOBT_LAKE_ROOT"] = str(settings.lake_root)
        os.environ["CRYPTOBT_RESULTS_ROOT"] = str(settings.results_root)
        _full_path(settings, console)
    else:
        result = build_sample_lake(settings.lake_root, n_symbols, years, sample or DEFAULT_SAMPLE, DEFAULT_FUTURES)
        snapshot = result.snapshot
        real = sorted(symbol_from_path(p) for p in (sample or DEFAULT_SAMPLE).glob("*.*"))
        console.print(f"sample lake {settings.lake_root}: snapshot {snapshot.id}, {len(snapshot.symbols)} symbols "
                      f"({result.rows_read:,} bars): {n_symbols} synthetic and {len(real)} real Binance "
                      f"pairs from {sample or 'data/sample'} ({', '.join(real)})"
                      + (f", and the real perpetual {FUTURES_SYMBOL}:futures" if DEFAULT_FUTURES.exists() else ""))
    cache = ResultCache.from_settings(settings, on_warning=lambda m: err_console.print(f"[yellow]warning:[/] {m}")) \
        if os.environ.get("REDIS_URL") else None

    helper = None
    if not compiler.compiled_before(strategies.get_strategy("rsi")):
        # Otherwise the next line appears a minute or two later, with nothing said in between.
        console.print("first run on this machine: Numba compiles each kernel once (about a minute on 2 cores); "
                      "later runs load the machine code in seconds")
        helper = _start_compiling_ahead(settings.lake_root)
    try:
        return _runs_and_pictures(settings, workdir, cache, console, started)
    finally:
        if helper is not None:  # done or not, its work is no longer needed
            helper.kill()
            helper.wait()


def _runs_and_pictures(settings: Settings, workdir: Path, cache: ResultCache | None, console: Console,
                       started: float) -> dict:
    """The demo on its lake: `demo_runs` in order, their tables and lines, then the pictures."""
    configs = demo_runs()
    table = Table("strategy", "symbols", "best symbol", "best return %", "median return %", "ms", title="All-crypto backtests (1h)")
    outcomes = {}
    for name in strategies.strategy_names():
        config = configs[name]
        outcome = runs.backtest(settings, config, None, "1h", cache=cache, command="demo")
        outcomes[name] = (config, outcome)
        returns = sorted(r["total_return_pct"] for r in outcome.results if r["total_return_pct"] is not None)
        best = outcome.results[0]
        table.add_row(name, str(len(outcome.results)), best["symbol"], cell("total_return_pct", best["total_return_pct"]),
                      cell("total_return_pct", returns[len(returns) // 2]), f"{outcome.seconds * 1000:,.0f}")
    console.print(table)

    rsi_config, rsi_outcome = outcomes["rsi"]
    board = Table("symbol", "return %", "buy & hold %", "trades", "open", "win %", "max dd %", "sharpe",
                  title="RSI(14, 30/70) leaderboard, top 10")
    for r in rsi_outcome.results[:10]:
        # Closed round trips and the position still open apart: win % counts the closed ones.
        board.add_row(r["symbol"], *(cell(k, r[k]) for k in ("total_return_pct", "buy_hold_return_pct", "closed_trades")),
                      cell("open", r["num_trades"] - r["closed_trades"]),
                      *(cell(k, r[k]) for k in ("win_rate_pct", "max_drawdown_pct", "sharpe")))
    console.print(board)

    sweep_config = configs["sweep"]
    grid = sweep_config.params_list
    sweep = runs.backtest(settings, sweep_config, None, "1h", cache=cache, command="demo sweep")
    console.print(f"sweep: {len(grid)} RSI parameter sets x {len(sweep.results) // len(grid)} symbols in "
                  f"{sweep.seconds:.2f} s; best {sweep.results[0]['symbol']} {sweep.results[0]['params']} "
                  f"{cell('total_return_pct', sweep.results[0]['total_return_pct'])} %")

    _futures_demo(settings, configs, cache, console)

    pictures = workdir / "plots"
    top_symbols = [r["symbol"] for r in rsi_outcome.results[:5]]
    curves = runs.equity_curves(settings, rsi_config, top_symbols, "1h")
    written = [
        plots.write_plot(pictures / "rsi.html", "RSI(14, 30/70): top symbols", rsi_outcome.results, curves, sweep.results),
        plots.write_plot(pictures / "rsi.png", "RSI(14, 30/70): top symbols", rsi_outcome.results, curves, sweep.results),
    ]
    console.print(f"pictures: {', '.join(str(p) for p in written)}")
    console.print(f"results:  {settings.results_root} (append-only Parquet)")
    query = (f"SELECT strategy, symbol, total_return_pct FROM read_parquet('{settings.results_root}/run_date=*/strategy=*/*.parquet', "  # noqa: S608 - printed example
             "hive_partitioning = true, union_by_name = true) ORDER BY total_return_pct DESC LIMIT 10")
    console.print("query them with plain DuckDB (any client), e.g. from this venv:", highlight=False)
    console.print(f"  .venv/bin/python -c \"import duckdb; duckdb.sql(\\\"{query}\\\").show()\"",
                  highlight=False, soft_wrap=True)
    console.print(f"demo finished in {time.perf_counter() - started:.1f} s")
    return {"outcomes": outcomes, "sweep": sweep, "pictures": written, "settings": settings}
