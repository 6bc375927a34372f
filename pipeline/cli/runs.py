"""`cryptobt backtest` and `cryptobt sweep`: a run over many symbols, its leaderboard, JSON and pictures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli import boards
from pipeline.cli.errors import user_errors
from pipeline.cli.output import console, emit_json, err_console, progress_bar, warn
from pipeline.cli.run_flags import AllSymbols, Params, StrategyPaths, Symbols, run_options
from pipeline.cli.stoppable import RAN, stoppable
from pipeline.core import stopping, tables
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.run_options import BY_NAME, SCALE_OUT, check_scale_out
from pipeline.engine import options

app = typer.Typer()

def _run_header(outcome: Any) -> dict[str, Any]:
    """What `backtest --json` and `sweep --json` say of the run itself, before its results: its id, the
    snapshot and interval it read, and the symbols of the lake it left out with why."""
    return {"run_id": outcome.run_id, "snapshot_id": outcome.snapshot_id, "interval": outcome.interval,
            "left_out": outcome.left_out}


def _run(strategy: Any, params: list[dict[str, Any]] | dict[str, Any], symbols: list[str] | None, all_: bool,
         stream: bool, command: str, no_cache: bool = False, confirm_seconds: float | None = None,
         snapshot: str | None = None, keep: int | None = None, returns_out: Path | None = None, *, interval: str,
         **run: Any) -> tuple[Any, Any, Settings]:
    """A validated backtest or sweep, run; `run` are the command's run options (fee, fill, sl, ...)."""
    from pipeline import runs

    config, symbols, interval = options.run_request(strategy, params, symbols, all_, interval, **run)
    if returns_out is not None and len(config.params_list) < 2:
        raise PipelineError("--returns-out needs a sweep of at least two parameter sets; this grid has 1")
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
        outcome = runs.execute(settings, config, symbols, interval, no_cache=no_cache, on_warning=warn,
                               on_results=on_results, on_progress=watch, command=command,
                               confirm_seconds=confirm_seconds,
                               on_plan=lambda m: err_console.print(m, highlight=False), snapshot_id=snapshot,
                               keep=keep, should_stop=stopping.requested,
                               **({"returns_out": returns_out} if returns_out is not None else {}))
    ran = RAN.get()
    if ran is not None:
        ran.update(outcome=outcome, settings=settings)
    _warn_findings(outcome.findings)
    say_left_out(outcome.left_out, interval)
    return outcome, config, settings


def say_left_out(left_out: dict[str, str], interval: str) -> None:
    """One line naming the symbols a run over the whole lake left out, and why."""
    if not left_out:
        return
    names = list(left_out)
    shown = "; ".join(f"{n} ({left_out[n]})" for n in names[:3])
    coarse = any("coarser than" in why for why in left_out.values())
    err_console.print(f"left out {len(names)} symbol(s) {f'with no {interval} bars' if coarse else 'the run cannot take'}"
                      f": {shown}{f'; and {len(names) - 3} more (--json lists them)' if len(names) > 3 else ''}"
                      f"{'; --interval auto runs each at its own interval' if coarse else ''}", highlight=False,
                      soft_wrap=True)


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
@run_options("backtest")
def backtest_command(
    strategy: Annotated[str, typer.Argument(help="A strategy (`cryptobt strategies` lists them).")],
    symbol: Symbols = None,
    all_: AllSymbols = False,
    snapshot: Annotated[str | None, typer.Option(help="Run against this kept snapshot (`cryptobt lake snapshots`) "
                                                      "instead of the current one.")] = None,
    param: Params = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document: the run (run_id, snapshot_id, "
                                                          "interval, left_out) and its results.")] = False,
    stream: Annotated[bool, typer.Option("--stream", help="Print each result as an NDJSON line when ready.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write pictures to this .html or .png file.")] = None,
    top: Annotated[int, typer.Option(help="Rows in the printed leaderboard.")] = 20,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the Redis cache.")] = False,
    strategy_path: StrategyPaths = None,
    **run: Any,
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
    outcome, config, settings = _run(options.resolve_strategy(strategy), options.parse_params(param or []), symbol, all_, stream,
                                     "backtest", no_cache, snapshot=snapshot, **run)
    if plot and outcome.results:
        _plot(plot, settings, config, outcome, False, top)
    if stream:
        return
    if as_json:
        emit_json({**_run_header(outcome), "results": outcome.results})
        return
    shown = min(top, len(outcome.results))
    boards.print_board(outcome.results, f"{strategy} on {len(outcome.results)} symbols ({outcome.interval})"
                 + (f": best {shown} of {len(outcome.results)} (--top)" if shown < len(outcome.results) else ""), top)
    cache_note = (f"{outcome.cache_hits} from cache, {outcome.cache_misses} computed" if outcome.cache_used
                  else "cache off")
    console.print(f"run {outcome.run_id}: {outcome.seconds * 1000:.0f} ms ({cache_note}); "
                  f"snapshot {outcome.snapshot_id}; results in {settings.results_root}")


@app.command("sweep")
@user_errors
@stoppable
@run_options("sweep", SCALE_OUT)
def sweep_command(
    strategy: Annotated[str | None, typer.Argument(help="Strategy to sweep (none with --resume).")] = None,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", "-g", help="name=start:stop:step or name=v1,v2 (repeatable; none with --resume).")] = None,
    symbol: Annotated[list[str] | None, typer.Option("--symbol", "-s")] = None,
    all_: Annotated[bool, typer.Option("--all")] = False,
    snapshot: Annotated[str | None, typer.Option(help="Run against this kept snapshot instead of the current one.")] = None,
    top: Annotated[int, typer.Option(help="Best N per symbol and overall.")] = 5,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write pictures (with a heatmap) to .html or .png.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the Redis cache.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help=f"Run a sweep estimated to take more than "
                                      f"{options.SWEEP_CONFIRM_SECONDS:.0f} s.")] = False,
    strategy_path: StrategyPaths = None,
    samples: Annotated[int | None, typer.Option(
        help="Run this many grid points drawn at random (for grids too large to run whole).")] = None,
    returns_out: Annotated[Path | None, typer.Option(
        help="Write every set's daily returns to this .parquet file (long format: symbol, set, the parameters, "
             "day, return) when the sweep finishes.")] = None,
    **run: Any,
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
      cryptobt sweep rsi -g rsi_period=7:28:1 -g oversold_threshold=20:35:5 --stats all --returns-out daily.parquet
      cryptobt sweep rsi -g rsi_period=7:28:1 -g oversold_threshold=20:35:1 --cluster tcp://10.0.0.5:8786
      cryptobt sweep --resume 20261206T101500123456Z-1a2b3c4d --workers 4
    """
    from pipeline.engine import batch as engine
    from pipeline.store.returns_file import check_path

    scale = check_scale_out(**{o.name: run.pop(o.name) for o in SCALE_OUT})
    if scale["resume"] is not None:
        _check_resume(scale["resume"], strategy=strategy, grid=grid, symbol=symbol, all_=all_, snapshot=snapshot,
                      samples=samples, returns_out=returns_out, strategy_path=strategy_path, run=run)
    elif strategy is None:
        raise PipelineError("Missing argument 'STRATEGY' (or --resume RUN_ID).")
    elif not grid:
        raise PipelineError("Missing option '--grid' / '-g' (or --resume RUN_ID).")
    options.load_strategy_paths(strategy_path)
    options.check_top(top)
    options.check_plot(plot)
    check_path(returns_out)
    if scale["resume"] is not None or scale["cluster"] is not None or scale["workers"]:
        outcome, config, settings = _run_distributed(strategy, grid, symbol, all_, snapshot, top, samples,
                                                     returns_out, yes, scale, run)
    else:
        chosen = options.resolve_strategy(strategy)
        params_list = options.parse_grid(chosen, grid, samples, run["seed"])
        if params_list.dropped:
            err_console.print(f"skipped {params_list.dropped} invalid combination(s), e.g. {params_list.dropped_example}")
        outcome, config, settings = _run(chosen, params_list, symbol, all_, False, "sweep", no_cache,
                                         None if yes else options.SWEEP_CONFIRM_SECONDS, snapshot, keep=top,
                                         returns_out=returns_out, **run)
    best = outcome.results[:top]
    per_symbol = engine.top_per_symbol(outcome.results, top, *engine.ranking(config))
    if plot and outcome.results:
        _plot(plot, settings, config, outcome, True, top)
        if outcome.stats:
            from pipeline import plots

            written = plots.write_stats_plot(plots.stats_path(plot), outcome.stats,
                                             f"{config.strategy.name} on snapshot {outcome.snapshot_id}")
            err_console.print(f"statistics picture written to {written}")
    if as_json:
        emit_json({**_run_header(outcome), "best": engine.sweep_best(outcome.results, top, *engine.ranking(config)),
                    **({"walk_forward": outcome.walk_forward} if config.walk_forward else {}),
                    **({"stats": outcome.stats} if outcome.stats else {}),
                    **({"returns_out": outcome.returns_path} if outcome.returns_path else {})})
        return
    boards.print_board(best, f"best {len(best)} of {outcome.n_results:,} ({len(config.params_list)} sets x symbols)",
                 top, True)
    boards.print_board(per_symbol, f"best {top} per symbol", top * 10, True)
    if config.walk_forward:
        boards.print_walk_forward(outcome.walk_forward, config, top * 10)
    if outcome.stats:
        boards.print_stats(outcome.stats, top * 4)
    if outcome.returns_path:
        console.print(f"daily returns written to {outcome.returns_path}")
    console.print(f"run {outcome.run_id}: {outcome.seconds:.2f} s, {outcome.bar_steps / max(outcome.seconds, 1e-9) / 1e6:,.1f} "
                  f"M bar-steps/s; results in {settings.results_root}")


def _check_resume(run_id: str, *, run: dict[str, Any], **asked: Any) -> None:
    """`--resume RUN_ID` runs the sweep as first asked: refuse a strategy, grid, symbols or run option given
    with it (one line naming it), before anything is read or written."""
    given = [name for name, value in asked.items() if value not in (None, False, [])]
    given += [BY_NAME[name].flag for name, value in run.items() if value != BY_NAME[name].default]
    if given:
        first = {"strategy": "STRATEGY", "grid": "--grid", "symbol": "--symbol", "all_": "--all",
                 "returns_out": "--returns-out", "strategy_path": "--strategy-path"}.get(given[0], given[0])
        first = first if first.startswith(("-", "S")) else "--" + first.replace("_", "-")
        raise PipelineError(f"--resume {run_id!r} runs the sweep as it was first asked: drop {first} (only "
                            "--cluster or --workers, --top, --json and --plot go with it)")


def _run_distributed(strategy: str | None, grid: list[str] | None, symbols: list[str] | None, all_: bool,
                     snapshot: str | None, top: int, samples: int | None, returns_out: Path | None, yes: bool,
                     scale: dict[str, Any], run: dict[str, Any]) -> tuple[Any, Any, Settings]:
    """A sweep in chunks on a Dask cluster (`--cluster`), a local one (`--workers`) or, resumed without
    either, in this process (pipeline.runs.cluster), under the one progress bar of every run."""
    from pipeline.runs import cluster

    settings = Settings.from_env()
    if scale["resume"] is not None:
        request = cluster.SweepRequest.of_run(settings, scale["resume"])
        request.keep = top
    else:
        chosen = options.resolve_strategy(strategy or "")
        params_list = options.parse_grid(chosen, grid or [], samples, run["seed"])
        if params_list.dropped:
            err_console.print(f"skipped {params_list.dropped} invalid combination(s), e.g. {params_list.dropped_example}")
        interval = run.pop("interval")
        config, symbols, interval = options.run_request(chosen, params_list, symbols, all_, interval, **run)
        if returns_out is not None and len(config.params_list) < 2:
            raise PipelineError("--returns-out needs a sweep of at least two parameter sets; this grid has 1")
        request = cluster.SweepRequest.asked(chosen, list(params_list), symbols, interval, run, top, returns_out)
    with progress_bar(transient=True) as progress:
        task = progress.add_task("chunks' backtests", total=None)
        watch = None if progress.disable else (lambda done, total: progress.update(task, completed=done, total=total))
        outcome, config = cluster.sweep(
            settings, request, resume=scale["resume"] is not None,
            executor=lambda: _dask(scale["cluster"], scale["workers"]), chunk_symbols=scale["chunk_symbols"],
            chunk_sets=scale["chunk_sets"], on_progress=watch, on_plan=lambda m: err_console.print(m, highlight=False,
                                                                                               soft_wrap=True),
            confirm_seconds=None if yes else options.SWEEP_CONFIRM_SECONDS, snapshot_id=snapshot,
            should_stop=stopping.requested)
    ran = RAN.get()
    if ran is not None:
        ran.update(outcome=outcome, settings=settings)
    _warn_findings(outcome.findings)
    say_left_out(outcome.left_out, outcome.interval)
    return outcome, config, settings


@contextlib.contextmanager
def _dask(address: str | None, workers: int) -> Iterator[Any]:
    """An executor on the Dask scheduler at `address`, or on a local cluster of `workers` processes (one thread
    each), its dashboard's address printed; none (this process) without either."""
    if address is None and not workers:
        yield None
        return
    import logging

    from distributed import Client, LocalCluster

    quiet_teardown = _TeardownNoise()
    with contextlib.ExitStack() as stack:
        for name in _TEARDOWN_LOGGERS:
            stack.callback(logging.getLogger(name).removeFilter, quiet_teardown)
        if address is not None:
            try:
                client = stack.enter_context(Client(address, timeout="10s"))
            except (OSError, TimeoutError) as exc:
                raise PipelineError(f"--cluster {address}: no Dask scheduler answers there ({exc}); start one with "
                                    "`dask scheduler` and workers with `dask worker ADDRESS`") from None
        else:
            # Its processes' records below CRITICAL are comm noise as the sweep stops (a worker's heartbeat to
            # the scheduler closing before it: "Failed to communicate with scheduler during heartbeat" with a
            # traceback, printed by the worker process above the resume line): a chunk's failure reaches the
            # sweep as its exception, said in one line.
            local = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                     dashboard_address=":0", silence_logs=logging.CRITICAL))
            client = stack.enter_context(Client(local))
        n_workers = len(client.scheduler_info().get("workers", {}))
        err_console.print(f"dask: {client.scheduler.address} with {n_workers} worker(s); dashboard "
                          f"{client.dashboard_link}", highlight=False, soft_wrap=True)
        try:
            yield client.get_executor()
        except BaseException:
            # Runs last-in first-out: the filter is on before the client closes, off after the cluster has.
            for name in _TEARDOWN_LOGGERS:
                logging.getLogger(name).addFilter(quiet_teardown)
            raise


_TEARDOWN_LOGGERS = ("tornado.application", "distributed.scheduler")


class _TeardownNoise:
    """A logging filter for a Dask client closed under a stopped or failed sweep. A chunk that finished just
    before the stop still has its result on the way to the executor (distributed's `ClientExecutor`
    forwards it in a callback on the client's event loop); closing the client cuts that transfer: tornado
    logs the callback's error with its traceback, and a local scheduler that it could not gather the
    chunk's key. The sweep has already stopped and says what it kept (the chunk's part is on disk), so these
    records are dropped; every other record passes."""

    def filter(self, record: Any) -> bool:
        import asyncio
        import concurrent.futures

        error = record.exc_info[1] if record.exc_info else None
        cut_off = isinstance(error, (OSError, asyncio.CancelledError, concurrent.futures.CancelledError,
                                     concurrent.futures.InvalidStateError))
        return not cut_off and not str(record.msg).startswith("Couldn't gather keys")
