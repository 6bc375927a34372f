"""A backtest or sweep, as its stages: plan (`plan.plan_run`) -> cache lookup -> read and compute
(the kernels, for the misses) -> publish (cache, results table, trades, run log)."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.core import intervals, stopping
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.engine import batch as engine
from pipeline.engine import overfit
from pipeline.engine.options import RunConfig
from pipeline.lake import reader
from pipeline.lake import snapshots as lake
from pipeline.runs.informative import with_informative
from pipeline.runs.plan import (
    PROGRESS_CHUNK,
    STREAM_CHUNK,
    RunPlan,
    data_findings,
    intervals_used,
    pinning,
    plan_run,
    symbols_per_call,
)
from pipeline.runs.sweep import Progress, Sweep
from pipeline.store import results
from pipeline.store.cache import ResultCache
from pipeline.store.returns_file import ReturnsWriter


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
    # --walk-forward: one summary per symbol (pipeline.engine.walkforward.evaluate), best stitched return first.
    walk_forward: list[dict[str, Any]] = field(default_factory=list)
    n_results: int = 0  # results written (a sweep returns only each symbol's `keep` best)
    # A sweep's mean total return of each parameter set over its symbols (for the heatmap).
    set_returns: list[dict[str, Any]] = field(default_factory=list)
    # Symbols of the lake a run over all of them did not run, each with why (never silently).
    left_out: dict[str, str] = field(default_factory=dict)
    # A sweep's --stats (pipeline.runs.sweep.DailyStatistics.outcome): empty without.
    stats: dict[str, Any] = field(default_factory=dict)
    returns_path: str | None = None  # --returns-out, once written
    stats_seconds: float = 0.0  # the statistics' share of `seconds`

    @property
    def hit_ratio(self) -> float | None:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else None


def _key_fields(config: RunConfig, symbol: str, interval: str, c: int, version: str,
                set_fields: dict[str, Any] | None = None) -> dict:
    """The cache key of parameter set c on `symbol`: everything that decides its numbers (`set_fields`:
    `_set_fields(config, c)` when the caller has them, the same for every symbol)."""
    return {"symbol": symbol, "interval": interval, "data_version": version,
            **(set_fields if set_fields is not None else _set_fields(config, c))}


def _set_fields(config: RunConfig, c: int) -> dict:
    """The key fields of parameter set c that do not depend on the symbol."""
    return {"strategy": config.strategy.name, "params": config.params_list[c], **config.key_fields(c),
            "market": config.market, "engine_version": engine.code_version(config.strategy)}


@dataclass
class CacheLookup:
    """What the cache holds of a run: the records found and the key of each (symbol, parameter set)."""

    hits: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    keys: dict[tuple[str, int], str] = field(default_factory=dict)

    def missing(self, plan: RunPlan) -> list[str]:
        """The symbols the run computes: those with any parameter set not in the cache."""
        return [s for s in plan.names if any((s, c) not in self.hits for c in range(plan.n_params))]

    def served(self, plan: RunPlan) -> list[dict[str, Any]]:
        """The cached results the run answers with: those of the symbols it does not compute."""
        missing = set(self.missing(plan))
        return [self.hits[(s, c)] for s in plan.names for c in range(plan.n_params)
                if (s, c) in self.hits and s not in missing]


def _look_up(plan: RunPlan, cache: ResultCache | None, every_set: bool = False) -> CacheLookup:
    """Ask the cache once for every (symbol, parameter set) of the plan (nothing when it does not cache, or
    when the run needs `every_set` computed: a sweep's daily returns are not cached)."""
    found = CacheLookup()
    if not plan.use_cache or cache is None or every_set:
        return found
    config, snapshot = plan.config, plan.snapshot
    expected = {}
    per_set = [_set_fields(config, c) for c in range(plan.n_params)]
    key_of = [cache.key_function(("symbol", "interval", "data_version"), **fields) for fields in per_set]
    for symbol in plan.names:
        version = reader.series_version(snapshot, symbol)
        interval = plan.interval_of[symbol]
        for c in range(plan.n_params):
            key = found.keys[(symbol, c)] = key_of[c](symbol, interval, version)
            expected[key] = _key_fields(config, symbol, interval, c, version, per_set[c])
    # A record cached by a run without trades is sound but cannot serve one that asks for them.
    usable = (lambda record: "trades" in record and "round_trips" in record) if config.trades else None
    records = cache.get_many(list(found.keys.values()), expected, results.record_problem, usable)
    for slot, key in found.keys.items():
        record = records.get(key)
        if record is not None:
            # Lineage: the row names the snapshot this run read (its data version proves the
            # number still holds there) and, apart, the snapshot it was first computed on.
            record["computed_snapshot_id"] = record.get("computed_snapshot_id") or record["snapshot_id"]
            record["snapshot_id"] = snapshot.id
            record["source"] = snapshot.manifest.get("source", "")  # records cached before it was kept
            record.setdefault("market", config.market)
            if plan.n_params > 1:
                record["set"] = slot[1]
            found.hits[slot] = record
    return found


def _parts(plan: RunPlan, missing: list[str], streaming: bool, watched: bool,
           daily: bool = False) -> list[tuple[str, list[str]]]:
    """The (interval, symbols) of each read and kernel call: one interval each (`auto` can give symbols
    different intervals), in chunks of symbols (smaller when someone watches: `streaming` results or
    a `watched` progress)."""
    if not missing:  # all served from the cache: no chunk to size (a single hit's 0.05 of 0.5 ms)
        return []
    chunk = symbols_per_call(plan.snapshot, missing, min(plan.interval_of.values(), key=intervals.SECONDS.get,
                                                          default="1h"),
                              plan.n_params, len(overfit.block_fractions(plan.config)) - 1, daily)
    if streaming or watched:
        chunk = min(chunk, STREAM_CHUNK if streaming else PROGRESS_CHUNK)
    by_interval: dict[str, list[str]] = {}
    for symbol in missing:
        by_interval.setdefault(plan.interval_of[symbol], []).append(symbol)
    return [(iv, group[o: o + chunk]) for iv, group in by_interval.items() for o in range(0, len(group), chunk)]


def _read(plan: RunPlan, interval: str, symbols: list[str], daily: bool = False) -> reader.PriceBatch:
    """One batched read of `symbols`' prices, refused when the run over them (with `daily`, each set's equity
    at every day's end too) would not fit in memory."""
    return read_batch(plan.settings.lake_root, plan.snapshot, plan.config, interval, symbols, daily)


def read_batch(lake_root: Any, snapshot: lake.Snapshot, config: RunConfig, interval: str, symbols: list[str],
               daily: bool = False, n_sets: int | None = None) -> reader.PriceBatch:
    """`_read` of a run of `config` over `snapshot` (a distributed sweep's chunk of `n_sets` of its sets too:
    the same read, so the same grid, as the single-process run's)."""
    n_params = len(config.params_list) if n_sets is None else n_sets
    # Only the columns the strategy and the fill read: the fewer, the faster the read.
    # From the start of the history: bars before --timerange warm the indicators up.
    batch = reader.read_prices(lake_root, symbols, interval, None, config.timerange_end,
                               columns=engine.columns_needed(config), snapshot=snapshot,
                               min_coverage=config.min_bar_coverage)
    if config.market == "futures":
        batch = reader.with_futures(batch, snapshot)
    batch = with_informative(batch, config.strategy, lake_root, snapshot, config.timerange_end)
    if config.detail is not None:
        batch = with_detail(batch, lake_root, snapshot, config.detail, config.timerange_end)
    engine.check_memory(len(symbols), batch.times.size, n_params,
                        len(overfit.block_fractions(config)) - 1 if len(config.params_list) > 1 else 0,
                        intervals.grid_days(batch.times)[1] if daily else 0)
    return batch


@dataclass
class Computed:
    """What the kernels gave a run: every result it answers with (`collected`, cached ones first), those
    computed now of a single parameter set (`fresh`, to cache), and whether a stop cut it short."""

    collected: list[dict[str, Any]]
    fresh: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False


def _compute(plan: RunPlan, parts: list[tuple[str, list[str]]], computed: Computed, sweep: Sweep | None,
             progress: Progress, on_results: Callable[[list[dict[str, Any]]], None] | None,
             should_stop: Callable[[], bool] | None) -> None:
    """Read and run each part in turn, into `computed`. Ctrl-C (or `should_stop`) between kernel calls
    stops the run keeping what finished: cached and written by `_publish` (a sweep's unfinished chunk of
    symbols without its overfitting statistics, which need every parameter set)."""
    try:
        for part_interval, part in parts:
            batch = _read(plan, part_interval, part, sweep is not None and sweep.daily is not None)
            if sweep is not None:
                computed.collected.extend(sweep.run_part(batch))
                continue
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            t0 = time.perf_counter()
            fresh = engine.run(batch, plan.config)
            progress.kernel_seconds += time.perf_counter() - t0
            progress.bar_steps += int(batch.bars.sum())
            computed.fresh.extend(fresh)
            computed.collected.extend(fresh)
            progress.advance(len(part))
            if on_results:
                on_results(fresh)
    except stopping.StopNow:
        raise  # a second stop signal: nothing more is written
    except KeyboardInterrupt:
        computed.interrupted = True
        if sweep is not None:
            computed.collected.extend(sweep.finish_interrupted())


def _publish(plan: RunPlan, cache: ResultCache | None, lookup: CacheLookup, computed: Computed,
             sweep: Sweep | None, sink: results.ResultSink | None, progress: Progress) -> RunOutcome:
    """Cache what was computed, write the results (a sweep's went as its chunks finished), the trades
    and the runs row; the run's outcome."""
    config, settings, use_cache = plan.config, plan.settings, plan.use_cache and cache is not None
    if use_cache and computed.fresh:
        cache.put_many([(lookup.keys[(r["symbol"], 0)], r) for r in computed.fresh])  # one parameter set (use_cache)
    hit_count = len(lookup.served(plan))  # the cache's own counters were kept by its lookup
    miss_count = len(computed.fresh)
    ordered = engine.leaderboard(computed.collected, *engine.ranking(config))
    n_results = len(ordered) if sweep is None else hit_count + sweep.rows
    paths: list[str] = []
    seconds = time.perf_counter() - plan.started
    if sink is not None:
        sink.write_records(ordered if sweep is None else sweep.fold_rows)
        sink.flush()  # the results first: a full disk names the results table, not the runs row
        if sink.rows:
            paths.append(str(sink.path))
            if config.trades:
                paths += [str(p) for p in results.append_trades(settings.results_root, plan.run_id, ordered,
                                                                plan.started_at)]
        if sink.rows or computed.interrupted:  # an interrupted run is recorded even if it kept nothing
            results.append_run_metrics(
                settings.results_root, plan.run_id, started_at=plan.started_at, duration_s=seconds,
                strategy=config.strategy.name, n_symbols=len(plan.names), n_results=n_results,
                bars=progress.bar_steps, cache_hits=hit_count if plan.use_cache else 0,
                cache_misses=miss_count if plan.use_cache else 0, snapshot_id=plan.snapshot.id,
                command=plan.command, interrupted=computed.interrupted, planned=plan.planned,
            )
    return RunOutcome(
        **plan.outcome_fields(), results=ordered, interval=intervals_used(plan.interval_of, plan.interval),
        cache_hits=hit_count, cache_misses=miss_count, seconds=seconds, kernel_seconds=progress.kernel_seconds,
        bar_steps=progress.bar_steps, cache_used=plan.use_cache, paths=paths, interrupted=computed.interrupted,
        planned=plan.planned, n_results=n_results, findings=data_findings(plan.snapshot, plan.names),
        stats=sweep.daily.outcome() if sweep is not None and sweep.daily is not None else {},
        stats_seconds=sweep.daily.seconds if sweep is not None and sweep.daily is not None else 0.0,
        walk_forward=[] if sweep is None else sorted(
            sweep.summaries, key=lambda f: -(f["oos"]["total_return_pct"] or -math.inf)),
        set_returns=[] if sweep is None else sweep.set_returns(),
    )


def _record_stopped(plan: RunPlan, sink: results.ResultSink | None, publication: results.Publication,
                    progress: Progress, outcome: RunOutcome | None) -> stopping.RunStopped:
    """A run stopped at once (a second stop signal): nothing more is written but the runs row saying
    so (if the run was not published whole already: then it is in the tables, and says itself what
    it kept). The RunStopped to raise."""
    recorded = publication.done
    if sink is not None and not publication.done:
        try:
            with stopping.uninterrupted():
                results.append_run_metrics(
                    plan.settings.results_root, plan.run_id, started_at=plan.started_at,
                    duration_s=time.perf_counter() - plan.started, strategy=plan.config.strategy.name,
                    n_symbols=len(plan.names), n_results=0, bars=progress.bar_steps, snapshot_id=plan.snapshot.id,
                    command=plan.command, interrupted=True, planned=plan.planned)
            recorded = True
        except (PipelineError, OSError, stopping.StopNow):
            pass
    kept = outcome.n_results if publication.done and outcome is not None else 0
    return stopping.RunStopped(plan.run_id, kept, progress.reported, plan.planned, recorded)


@pinning
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
    keep: int | None = None,
    returns_out: Any = None,
) -> RunOutcome:
    """Run `config` over `symbols` (None = all) of the current snapshot (or of `snapshot_id`).

    Asks the cache once for every (symbol, parameter set), computes only the symbols
    with a miss (one batched read, one kernel call per chunk), stores them in one
    pipeline, and appends every result to the results table. `on_results` receives
    results as they are ready (cached ones first), for streaming; `on_progress`
    receives (backtests done, backtests in all), a backtest being one symbol and parameter set. A sweep's size and estimated time go to `on_plan`;
    one estimated to take longer than `confirm_seconds` is refused before any work (`--yes`).
    `should_stop` is asked between kernel calls (an HTTP client that went away): True stops the
    run as Ctrl-C does, keeping what finished. `returns_out` (a path) writes a sweep's daily return
    matrix there when the run finishes whole (pipeline.store.returns_file).

    A sweep (several parameter sets) writes every result to the results table in chunks of
    symbols, as columns, and returns (and streams) each symbol's `keep` best results (all of them
    with None): memory holds a chunk, not the grid.

    The stages: plan (`plan_run`), the cache (`_look_up`), read and compute (`_compute`, a `_read` per
    part), publish (`_publish`: the cache, the results table, the run log).
    """
    plan = plan_run(settings, config, symbols, interval, cache=cache, write_results=write_results,
                    command=command, max_points=max_points, confirm_seconds=confirm_seconds, on_plan=on_plan,
                    snapshot_id=snapshot_id)
    daily = plan.n_params > 1 and bool(config.stats or returns_out)
    lookup = _look_up(plan, cache, every_set=daily)
    served = lookup.served(plan)
    if on_results and served:
        on_results(served)
    missing = lookup.missing(plan)
    progress = Progress(on_progress, plan.planned, (len(plan.names) - len(missing)) * plan.n_params)
    parts = _parts(plan, missing, on_results is not None, on_progress is not None, daily)
    sink = results.ResultSink(settings.results_root, plan.run_id, config.strategy.name, plan.started_at,
                              results.result_schema(config.params_list)) if write_results else None
    writer = ReturnsWriter(returns_out, config.params_list) if returns_out is not None and plan.n_params > 1 else None
    sweep = Sweep(config, sink, keep, on_results, should_stop, progress, writer) if plan.n_params > 1 else None
    publication = results.Publication()
    outcome = None
    try:
        with contextlib.ExitStack() as publishing:
            if sink is not None:
                # Results, trades and the runs row are published together or not at all; a sweep's
                # chunks of symbols stream into the results file as they finish.
                publication = publishing.enter_context(results.one_run())
                publishing.enter_context(sink)
            computed = Computed(list(served))
            _compute(plan, parts, computed, sweep, progress, on_results, should_stop)
            outcome = _publish(plan, cache, lookup, computed, sweep, sink, progress)
        if writer is not None:
            if computed.interrupted:  # a part of the matrix is not the matrix: nothing is written
                writer.discard()
            else:
                outcome.returns_path = str(writer.close())
        return outcome
    except BaseException as exc:
        if writer is not None:
            writer.discard()
        if not stopping.at_once(exc):
            raise
        raise _record_stopped(plan, sink, publication, progress, outcome) from None


def execute(settings: Settings, config: RunConfig, symbols: list[str] | None, interval: str, *,
            no_cache: bool = False, on_warning: Callable[[str], None] | None = None, **kwargs: Any) -> RunOutcome:
    """A validated request (`options.run_request`) run with the configured cache: the CLI's and the API's
    one run path. `kwargs` go to `backtest` (callbacks, command, should_stop)."""
    problem = config.strategy.cache_problem
    if problem is not None and not no_cache:
        message = f"results of {config.strategy.name!r} are not cached: part of its code cannot be hashed ({problem})"
        if on_warning is not None:
            on_warning(message)
        else:
            warnings.warn(message, stacklevel=2)
    cache = None if no_cache or problem is not None else ResultCache.from_settings(settings, on_warning=on_warning)
    try:
        outcome = backtest(settings, config, symbols, interval, cache=cache, **kwargs)
    finally:
        if cache is not None:
            cache.close()
    symbols = list(dict.fromkeys(r["symbol"] for r in outcome.results))
    snapshot = lake.require_snapshot(settings.lake_root, outcome.snapshot_id) if config.market == "futures" else None
    for message in futures_notes(config, snapshot, symbols):
        if on_warning is not None:
            on_warning(message)
        else:
            warnings.warn(message, stacklevel=2)
    return outcome


def with_detail(batch: reader.PriceBatch, lake_root: Any, snapshot: lake.Snapshot, detail: str,
                end: Any) -> reader.PriceBatch:
    """`batch` with its symbols' finer bars (--detail), one batched read, refused when they would not fit."""
    import dataclasses

    fine = reader.read_prices(lake_root, batch.symbols, detail, None, end, columns=("open", "high", "low"),
                              snapshot=snapshot)
    if "funding" in batch.columns:  # a perpetual's: its mark bars on the finer grid too
        fine = reader.with_futures(fine, snapshot)
    need = 4 * 8 * len(fine.symbols) * fine.times.size
    if need > 0.5 * engine.available_memory():
        raise PipelineError(f"--detail {detail} over {len(fine.symbols)} symbols needs about {need / 2**30:.1f} GiB "
                            "of finer bars; narrow the symbols or the --timerange")
    return dataclasses.replace(batch, detail=fine)


def futures_notes(config: RunConfig, snapshot: lake.Snapshot | None, symbols: list[str]) -> list[str]:
    """What a futures run says of its perpetuals (SPEC 4.3): those without a funding series (they pay none) or
    without a mark series (funding and liquidation on the price bars) in `snapshot`, and a leverage the tiers'
    maxLeverage refuses (not enforced: engine.tiers)."""
    if config.market != "futures" or config.tier_table is None:
        return []
    notes = []
    if snapshot is not None and symbols:
        kinds = {(row["symbol"], row["kind"]) for row in reader.futures_kinds(snapshot, symbols)}
        for kind, effect in (("funding", "its positions pay no funding"),
                             ("mark", "funding and liquidation use its price bars (bars_without_mark)")):
            lacking = [s for s in symbols if (s, kind) not in kinds]
            if lacking:
                notes.append(f"{len(lacking)} perpetual(s) have no {kind} series in snapshot {snapshot.id} "
                             f"({', '.join(lacking[:3])}{', ...' if len(lacking) > 3 else ''}): {effect}")
    return notes + config.tier_table.leverage_notes(list(dict.fromkeys(symbols)),
                                            [config.execution(c).leverage for c in range(len(config.params_list))],
                                            config.initial)


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
