"""A run, end to end: lake snapshot -> cache lookup -> kernels for the misses -> cache + results.

The CLI, the Prefect flows and the demo all call `backtest`; it is the one place
where the cache, the engine and the results table meet.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np

from pipeline import engine, intervals, lake, overfit, reader, results, walkforward
from pipeline.cache import ResultCache
from pipeline.config import Settings
from pipeline.engine import RunConfig

T = TypeVar("T")

# Symbols per kernel call when someone watches: small enough to stream or move a
# progress bar, large enough that the per-call read stays cheap.
STREAM_CHUNK = 16
PROGRESS_CHUNK = 64
# Bar-steps per kernel call (a tenth to a fifth of a second on two busy cores). Ctrl-C is honoured
# between calls, so a run of any size stops within about a second and keeps what finished.
CHUNK_BAR_STEPS = 10_000_000


@dataclass
class RunOutcome:
    run_id: str
    results: list[dict[str, Any]]
    snapshot_id: str
    interval: str
    cache_hits: int
    cache_misses: int
    seconds: float
    kernel_seconds: float
    bar_steps: int
    cache_used: bool
    paths: list[str] = field(default_factory=list)
    interrupted: bool = False
    planned: int = 0  # results the run would have had without an interruption
    findings: dict[str, list[str]] = field(default_factory=dict)  # symbol -> data health findings
    # --walk-forward: one summary per symbol (pipeline.walkforward.evaluate), best stitched return first.
    walk_forward: list[dict[str, Any]] = field(default_factory=list)

    @property
    def hit_ratio(self) -> float | None:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else None


def _key_fields(config: RunConfig, symbol: str, interval: str, c: int, version: str) -> dict:
    """The cache key of parameter set c on `symbol`: everything that decides its numbers."""
    return {
        "strategy": config.strategy, "params": config.params_list[c], "symbol": symbol, "interval": interval,
        "timerange_start": config.timerange_start, "timerange_end": config.timerange_end,
        "fill": config.fill, "fee_pct": config.fee_pct, "initial_investment": config.initial,
        "annualization": config.annualization, "min_bar_coverage": config.min_bar_coverage,
        **config.execution(c).fields(),
        "data_version": version, "engine_version": engine.code_version(config.strategy),
    }


# The pins a run holds on the snapshots it reads, released when the run returns (see `_pinning`).
_PINS: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar("pins", default=None)


def _pinning(run: Callable[..., T]) -> Callable[..., T]:
    """Hold what `_open_run` pins until `run` returns, so `lake vacuum` cannot remove a snapshot mid-read."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with contextlib.ExitStack() as stack:
            token = _PINS.set(stack)
            try:
                return run(*args, **kwargs)
            finally:
                _PINS.reset(token)

    return wrapper


def _open_run(settings: Settings, config: RunConfig, symbols: list[str] | None, interval: str,
              max_points: int, snapshot_id: str | None = None) -> tuple[lake.Snapshot, dict[str, str]]:
    """The snapshot a run reads (the current one, or `snapshot_id` if still kept; pinned for the run)
    and the interval of each of its symbols (`auto` decides per symbol); threads set. With no
    symbols named, symbols whose own bars are coarser than `interval` are left out; named ones
    are an error."""
    intervals.check(interval, extra=("auto",))
    engine.set_threads(settings.workers)
    snapshot = lake.require_snapshot(settings.lake_root, snapshot_id)
    stack = _PINS.get()
    if stack is not None:
        snapshot = stack.enter_context(lake.reading(settings.lake_root, snapshot))
    names = reader.resolve_symbols(snapshot, symbols)
    if interval == "auto":
        interval_of = reader.choose_interval(snapshot, names, config.timerange_start, config.timerange_end,
                                             max_points)
    else:
        if symbols:
            reader.check_readable(snapshot, names, interval)
        interval_of = {n: interval for n in names if reader.read_from(snapshot.symbols[n], interval)}
    _check_range_has_bars(snapshot, interval_of, config)
    return snapshot, interval_of


def data_findings(snapshot: lake.Snapshot, names: list[str]) -> dict[str, list[str]]:
    """The health findings worth a warning that the snapshot's manifest records for `names`."""
    from pipeline.health import worth_a_warning

    found = {n: worth_a_warning(snapshot.symbols[n].get("health", [])) for n in names}
    return {n: notes for n, notes in found.items() if notes}


def _check_range_has_bars(snapshot: lake.Snapshot, interval_of: dict[str, str], config: RunConfig) -> None:
    """Refuse, before any read or write, a --timerange in which none of the symbols has a bar."""
    start, end = config.timerange_start, config.timerange_end
    if start is None and end is None:
        return
    interval = "+".join(sorted(set(interval_of.values()), key=intervals.SECONDS.get))
    spans = [snapshot.symbols[s].get(reader.read_from(snapshot.symbols[s], iv) or iv) for s, iv in interval_of.items()]
    spans = [(datetime.fromisoformat(m["first"]), datetime.fromisoformat(m["last"])) for m in spans if m]
    if any((start is None or last >= start) and (end is None or first < end) for first, last in spans):
        return
    from pipeline.errors import PipelineError

    have = (f"the lake's {interval} bars of these symbols span {min(f for f, _ in spans):%Y-%m-%d} to "
            f"{max(la for _, la in spans):%Y-%m-%d}" if spans else f"these symbols have no {interval} bars")
    raise PipelineError(f"--timerange has no bars: {have}")


def _symbols_per_call(snapshot: lake.Snapshot, names: list[str], interval: str, n_params: int) -> int:
    """Symbols per read: all of them unless their parameter sets are a lot of work. A sweep's chunk
    of symbols gets all its sets in a few kernel calls (an indicator is computed once per distinct
    value within a call: one set per call over every symbol recomputed it for every set), and at
    least two symbols per thread (the kernel runs symbols in parallel)."""
    bars = [(snapshot.symbols[s].get(interval) or {}).get("bars", 0) for s in names]
    per_call = CHUNK_BAR_STEPS // max(max(bars, default=0) * n_params, 1)
    return max(1, min(len(names), max(per_call, 2 * engine.thread_count() if n_params > 1 else 1)))


def _plan_sweep(snapshot: lake.Snapshot, names: list[str], interval: str, n_params: int,
                confirm_seconds: float | None, on_plan: Callable[[str], None] | None) -> None:
    """Say how big a sweep is and about how long it takes (when it takes a while); refuse one past
    `confirm_seconds`."""
    from pipeline import options
    from pipeline.errors import PipelineError

    bar_steps = sum((snapshot.symbols[s].get(interval) or {}).get("bars", 0) for s in names) * n_params
    seconds = bar_steps / options.BAR_STEPS_PER_SECOND + n_params * len(names) * options.SECONDS_PER_BACKTEST
    plan = (f"sweep: {n_params:,} parameter sets x {len(names):,} symbols = {n_params * len(names):,} backtests, "
            f"{bar_steps / 1e6:,.1f} M bar-steps, about {seconds:,.0f} s")
    if confirm_seconds is not None and seconds > confirm_seconds:
        raise PipelineError(f"{plan}, more than {confirm_seconds:.0f} s: pass --yes to run it, or narrow the "
                            "grid, the symbols or --timerange")
    if on_plan is not None and seconds >= options.SWEEP_MENTION_SECONDS:
        on_plan(plan)


@_pinning
def backtest(
    settings: Settings,
    config: RunConfig,
    symbols: list[str] | None = None,
    interval: str = "1h",
    *,
    cache: ResultCache | None = None,
    write_results: bool = True,
    on_results: Callable[[list[dict[str, Any]]], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    command: str = "",
    max_points: int = reader.DEFAULT_MAX_POINTS,
    confirm_seconds: float | None = None,
    on_plan: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    snapshot_id: str | None = None,
) -> RunOutcome:
    """Run `config` over `symbols` (None = all) of the current snapshot (or of `snapshot_id`).

    Asks the cache once for every (symbol, parameter set), computes only the symbols
    with a miss (one batched read, one kernel call per chunk), stores them in one
    pipeline, and appends every result to the results table. `on_results` receives
    results as they are ready (cached ones first), for streaming; `on_progress`
    receives (backtests done, backtests in all), a backtest being one symbol and parameter set. A sweep's size and estimated time go to `on_plan`;
    one estimated to take longer than `confirm_seconds` is refused before any work (`--yes`).
    `should_stop` is asked between kernel calls (an HTTP client that went away): True stops the
    run as Ctrl-C does, keeping what finished.
    """
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    snapshot, interval_of = _open_run(settings, config, symbols, interval, max_points, snapshot_id)
    names = list(interval_of)
    versions = {s: snapshot.symbols[s]["data_version"] for s in names}
    n_params = len(config.params_list)
    if n_params > 1:
        _plan_sweep(snapshot, names, interval, n_params, confirm_seconds, on_plan)
    if write_results:
        results.check_writable(settings.results_root)
    # A sweep's rows carry statistics of its whole grid (PBO, deflated Sharpe), which a cached row
    # from another grid would get wrong: only single parameter sets are cached.
    use_cache = cache is not None and cache.enabled and n_params == 1

    hits: dict[tuple[str, int], dict[str, Any]] = {}
    keys: dict[tuple[str, int], str] = {}
    if use_cache:
        expected = {}
        for symbol in names:
            for c in range(n_params):
                fields = _key_fields(config, symbol, interval_of[symbol], c, versions[symbol])
                keys[(symbol, c)] = cache.key(**fields)
                expected[keys[(symbol, c)]] = fields
        found = cache.get_many(list(keys.values()), expected, results.record_problem)
        for slot, key in keys.items():
            record = found.get(key)
            if record is not None and (not config.trades or ("trades" in record and "round_trips" in record)):
                # Lineage: the row names the snapshot this run read (its data version proves the
                # number still holds there) and, apart, the snapshot it was first computed on.
                record["computed_snapshot_id"] = record.get("computed_snapshot_id") or record["snapshot_id"]
                record["snapshot_id"] = snapshot.id
                hits[slot] = record
    missing = [s for s in names if any((s, c) not in hits for c in range(n_params))]

    collected: list[dict[str, Any]] = []
    cached_now = [hits[(s, c)] for s in names for c in range(n_params) if (s, c) in hits and s not in missing]
    collected.extend(cached_now)
    if on_results and cached_now:
        on_results(cached_now)

    kernel_seconds = 0.0
    bar_steps = 0
    computed: list[dict[str, Any]] = []
    folds: list[dict[str, Any]] = []  # walk-forward summaries
    fold_rows: list[dict[str, Any]] = []  # and their results-table rows
    interrupted = False
    chunk = _symbols_per_call(snapshot, missing, min(interval_of.values(), key=intervals.SECONDS.get, default="1h"),
                              n_params)
    if on_results or on_progress:
        chunk = min(chunk, STREAM_CHUNK if on_results else PROGRESS_CHUNK)
    # Progress counts backtests (symbol x parameter set), so a sweep's bar moves within a chunk.
    total_backtests = len(names) * n_params
    if on_progress:
        on_progress((len(names) - len(missing)) * n_params, total_backtests)
    # One kernel call per (interval, chunk): `auto` can give symbols different intervals.
    by_interval: dict[str, list[str]] = {}
    for symbol in missing:
        by_interval.setdefault(interval_of[symbol], []).append(symbol)
    parts = [(iv, group[o: o + chunk]) for iv, group in by_interval.items() for o in range(0, len(group), chunk)]
    done = 0
    try:
        for part_interval, part in parts:
            # Only the columns the strategy and the fill read: the fewer, the faster the read.
            # From the start of the history: bars before --timerange warm the indicators up.
            batch = reader.read_prices(settings.lake_root, part, part_interval, None,
                                       config.timerange_end, columns=engine.columns_needed(config),
                                       snapshot=snapshot, min_coverage=config.min_bar_coverage)
            engine.check_memory(len(part), batch.times.size, n_params,
                                len(overfit.block_fractions(config)) - 1 if n_params > 1 else 0)
            # A sweep's parameter sets go to the kernel in slices of bounded work (CHUNK_BAR_STEPS).
            sets_per_call = max(1, CHUNK_BAR_STEPS // max(int(batch.bars.sum()), 1))
            blocks = overfit.new_blocks(len(part), config) if n_params > 1 else None
            fractions = overfit.block_fractions(config) if blocks is not None else None
            part_results: list[list[dict[str, Any]]] = []
            for first_set in range(0, n_params, sets_per_call):
                if should_stop is not None and should_stop():
                    raise KeyboardInterrupt
                sliced = config if sets_per_call >= n_params else config.sliced(first_set, first_set + sets_per_call)
                t0 = time.perf_counter()
                sliced_blocks = None if blocks is None else blocks[..., first_set: first_set + sets_per_call]
                fresh = engine.run(batch, sliced, fractions, sliced_blocks)
                kernel_seconds += time.perf_counter() - t0
                bar_steps += int(batch.bars.sum()) * len(sliced.params_list)
                part_results.append(fresh)
                computed.extend(fresh)
                collected.extend(fresh)
                if on_progress:
                    on_progress((len(names) - len(missing) + done) * n_params
                                + len(part) * (first_set + len(sliced.params_list)), total_backtests)
                if on_results:
                    # Copies for a sweep: its statistics are set on these dicts once the chunk is done,
                    # and what was streamed must stay what it was (late listeners replay it).
                    on_results(fresh if blocks is None else [dict(r) for r in fresh])
            if blocks is not None:
                # A sweep's statistics need every parameter set of a symbol: added to its results
                # (already streamed without them) once the chunk of symbols is done.
                rows_by_symbol = overfit.by_symbol(part_results, len(part))
                overfit.attach(rows_by_symbol, blocks, config)
                if config.walk_forward:
                    summaries, rows = walkforward.evaluate(blocks, fractions, config, rows_by_symbol,
                                                           _simulated_times(batch, config))
                    folds.extend(summaries)
                    fold_rows.extend(rows)
            done += len(part)
    except KeyboardInterrupt:
        # Keep what finished: it is cached and written below (a sweep's unfinished chunk of
        # symbols without its overfitting statistics, which need every parameter set).
        interrupted = True

    if use_cache and computed:
        cache.put_many([(keys[(r["symbol"], 0)], r) for r in computed])  # one parameter set (use_cache)
    hit_count = len(cached_now)
    miss_count = len(computed)
    if use_cache:
        cache.record_hits(hit_count, miss_count)

    ordered = engine.leaderboard(collected, *engine.ranking(config))
    run_id = results.new_run_id(started_at)
    paths: list[str] = []
    seconds = time.perf_counter() - started
    if write_results and ordered:
        with results.one_run():  # results, trades and the runs row are published together or not at all
            paths += [str(p) for p in results.append_results(settings.results_root, run_id, ordered + fold_rows,
                                                             started_at)]
            if config.trades:
                paths += [str(p) for p in results.append_trades(settings.results_root, run_id, ordered, started_at)]
            results.append_run_metrics(
                settings.results_root, run_id, started_at=started_at, duration_s=seconds,
                strategy=config.strategy, n_symbols=len(names), n_results=len(ordered), bars=bar_steps,
                cache_hits=hit_count if use_cache else 0, cache_misses=miss_count if use_cache else 0,
                snapshot_id=snapshot.id, command=command,
            )
    return RunOutcome(
        run_id=run_id, results=ordered, snapshot_id=snapshot.id, interval=_intervals_used(interval_of, interval),
        cache_hits=hit_count, cache_misses=miss_count, seconds=seconds, kernel_seconds=kernel_seconds,
        bar_steps=bar_steps, cache_used=use_cache, paths=paths, interrupted=interrupted,
        planned=len(names) * n_params,
        findings=data_findings(snapshot, names),
        walk_forward=sorted(folds, key=lambda f: -(f["oos"]["total_return_pct"] or -math.inf)),
    )


def _simulated_times(batch: reader.PriceBatch, config: RunConfig) -> list[Any]:
    """Each symbol's simulated bar times (epoch seconds), from the --timerange start."""
    start = engine.start_column(batch, config)
    close = batch.columns["close"][:, start:]
    return [batch.times[start:][~np.isnan(row)] for row in close]


def check_request(settings: Settings, config: RunConfig, symbols: list[str] | None, interval: str) -> str:
    """What a run would refuse (no snapshot, unknown symbols, a --timerange without bars), refused now,
    before a queued request waits its turn; returns the interval(s) it would read (`auto` resolved)."""
    return _intervals_used(_open_run(settings, config, symbols, interval, reader.DEFAULT_MAX_POINTS)[1], interval)


def _intervals_used(interval_of: dict[str, str], asked: str) -> str:
    """The intervals a run reads, finest first and joined by '+' ('1h+1d'); `asked` when it reads none."""
    used = sorted(set(interval_of.values()), key=lambda name: intervals.SECONDS[name])
    return "+".join(used) or asked


def execute(settings: Settings, config: RunConfig, symbols: list[str] | None, interval: str, *,
            no_cache: bool = False, on_warning: Callable[[str], None] | None = None, **kwargs: Any) -> RunOutcome:
    """A validated request (`options.run_request`) run with the configured cache: the CLI's and the API's
    one run path. `kwargs` go to `backtest` (callbacks, command, should_stop)."""
    cache = None if no_cache else ResultCache.from_settings(settings, on_warning=on_warning)
    try:
        return backtest(settings, config, symbols, interval, cache=cache, **kwargs)
    finally:
        if cache is not None:
            cache.close()


def equity_curves(settings: Settings, config: RunConfig, symbols: list[str], interval: str,
                  result: dict[str, Any] | None = None, snapshot_id: str | None = None) -> list:
    """Equity against buy & hold for `symbols` (for pictures): one batched read, one kernel each.

    The parameter set drawn is `result`'s (a sweep's best: its parameters and execution), else
    the run's first."""
    from pipeline import plots

    if not symbols:
        return []
    batch = reader.read_prices(settings.lake_root, symbols, interval, None,
                               config.timerange_end, columns=tuple(dict.fromkeys(
                                   ("open", *engine.columns_needed(config)))),
                               min_coverage=config.min_bar_coverage,
                               snapshot=lake.require_snapshot(settings.lake_root, snapshot_id))
    return plots.curves(batch, config, result)


@dataclass
class PortfolioOutcome:
    run_id: str
    results: list[dict[str, Any]]  # one per account, best total return first
    best: dict[str, Any] | None  # the best account in full: contributions, round trips, curves
    snapshot_id: str
    interval: str
    seconds: float
    kernel_seconds: float
    bar_steps: int
    paths: list[str] = field(default_factory=list)


@_pinning
def portfolio(
    settings: Settings,
    config: RunConfig,
    sets: list,
    symbols: list[str] | None = None,
    interval: str = "1h",
    *,
    rank_by: str = "auto",
    write_results: bool = True,
    command: str = "",
) -> PortfolioOutcome:
    """One shared account per entry of `sets` (pipeline.portfolio.make_sets) over `symbols` (None = all).

    One batched read; signals once per distinct strategy parameter set; the best account is
    re-simulated in full for its trade list and curves. Portfolio results are not cached
    (one account depends on every symbol's data); they are appended to the results table
    with mode = 'portfolio'.
    """
    from pipeline import portfolio as pf

    started_at = datetime.now(UTC)
    started = time.perf_counter()
    snapshot, interval_of = _open_run(settings, config, symbols, interval, reader.DEFAULT_MAX_POINTS)
    names = list(interval_of)
    # One account needs one grid: `auto` takes the coarsest interval any symbol needs.
    interval = max(interval_of.values(), key=intervals.SECONDS.get, default="1h")
    if write_results:
        results.check_writable(settings.results_root)
    columns = tuple(dict.fromkeys((*engine.columns_needed(config), "volume")))
    batch = reader.read_prices(settings.lake_root, names, interval, None,
                               config.timerange_end, columns=columns, snapshot=snapshot,
                               min_coverage=config.min_bar_coverage)
    engine.check_memory(len(names), batch.times.size, len(sets))
    t0 = time.perf_counter()
    accounts = pf.run(batch, config, sets, rank_by)
    kernel_seconds = time.perf_counter() - t0
    best = None
    if accounts:
        chosen = next(s for s in sets if s.params == accounts[0]["params"] and s.max_open == accounts[0]["max_open"]
                      and s.stake.value == accounts[0]["stake"])
        best = pf.detail(batch, config, chosen, rank_by)
    run_id = results.new_run_id(started_at)
    bar_steps = int(batch.bars.sum()) * len(sets)
    seconds = time.perf_counter() - started
    paths: list[str] = []
    if write_results and accounts:
        with results.one_run():
            paths += [str(p) for p in results.append_results(settings.results_root, run_id, accounts, started_at)]
            results.append_run_metrics(
                settings.results_root, run_id, started_at=started_at, duration_s=seconds, strategy=config.strategy,
                n_symbols=len(names), n_results=len(accounts), bars=bar_steps, snapshot_id=snapshot.id,
                command=command,
            )
    return PortfolioOutcome(run_id, accounts, best, snapshot.id, interval, seconds, kernel_seconds, bar_steps,
                            paths)


def check_strategy(settings: Settings, strategy: str, params: dict[str, Any], symbols: list[str] | None,
                   interval: str, limit: int = 3) -> list:
    """Look-ahead and warm-up checks of `strategy` on `symbols` (default: the lake's first `limit`)."""
    import numpy as np

    from pipeline import checks
    from pipeline.errors import PipelineError

    if interval not in ("1h", "1d"):
        raise PipelineError(f"--interval {interval!r} is not allowed; use 1h or 1d")
    config = engine.make_config(strategy, params)
    snapshot = lake.require_snapshot(settings.lake_root)
    with lake.reading(settings.lake_root, snapshot) as pinned:
        names = reader.resolve_symbols(pinned, symbols)[: None if symbols else limit]
        batch = reader.read_prices(settings.lake_root, names, interval, None, None,
                                   columns=engine.columns_needed(config), snapshot=pinned)
    reports = []
    for i, symbol in enumerate(batch.symbols):
        have = ~np.isnan(batch.columns["close"][i])
        columns = {name: np.ascontiguousarray(values[i][have]) for name, values in batch.columns.items()}
        reports.append(checks.check_symbol(strategy, params, symbol, columns))
    return reports
