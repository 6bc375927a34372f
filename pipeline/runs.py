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
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np

from pipeline.core import intervals, stopping
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.engine import batch as engine
from pipeline.engine import options, overfit, strategies, walkforward
from pipeline.engine.options import RunConfig
from pipeline.lake import reader
from pipeline.lake import snapshots as lake
from pipeline.store import results
from pipeline.store.cache import ResultCache

T = TypeVar("T")

# Symbols per kernel call when someone watches: small enough to stream or move a
# progress bar, large enough that the per-call read stays cheap.
STREAM_CHUNK = 16
PROGRESS_CHUNK = 64
# Bar-steps per kernel call (a tenth to a fifth of a second on two busy cores). Ctrl-C is honoured
# between calls, so a run of any size stops within about a second and keeps what finished.
CHUNK_BAR_STEPS = 10_000_000
# A sweep's chunk of symbols in memory (metrics, block sums, result columns): a 100,000-set sweep
# runs two symbols at a time (one per core) within it.
SWEEP_CHUNK_BYTES = 640 * 2**20


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

    @property
    def hit_ratio(self) -> float | None:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else None


def _key_fields(config: RunConfig, symbol: str, interval: str, c: int, version: str) -> dict:
    """The cache key of parameter set c on `symbol`: everything that decides its numbers."""
    return {
        "strategy": config.strategy.name, "params": config.params_list[c], "symbol": symbol, "interval": interval,
        **config.key_fields(c), "market": config.market, "data_version": version, "engine_version": engine.code_version(config.strategy),
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


def left_out(snapshot: lake.Snapshot, interval_of: dict[str, str], interval: str,
             symbols: list[str] | None) -> dict[str, str]:
    """The symbols a run over the whole lake (`symbols` None) leaves out (`_open_run`: their own bars are
    coarser than `interval`), each with why; a run naming its symbols refuses such a one instead."""
    if symbols:
        return {}
    return {n: f"its own bars are {meta.get('native') or reader.stored(meta)[0]}, coarser than {interval}"
            for n, meta in sorted(snapshot.symbols.items()) if n not in interval_of}


def data_findings(snapshot: lake.Snapshot, names: list[str]) -> dict[str, list[str]]:
    """The health findings worth a warning that the snapshot's manifest records for `names`."""
    from pipeline.source.health import worth_a_warning

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
    from pipeline.core.errors import PipelineError

    have = (f"the lake's {interval} bars of these symbols span {min(f for f, _ in spans):%Y-%m-%d} to "
            f"{max(la for _, la in spans):%Y-%m-%d}" if spans else f"these symbols have no {interval} bars")
    raise PipelineError(f"--timerange has no bars: {have}")


def _symbols_per_call(snapshot: lake.Snapshot, names: list[str], interval: str, n_params: int,
                      n_blocks: int) -> int:
    """Symbols per read: all of them unless their parameter sets are a lot of work. A sweep's chunk
    of symbols gets all its sets in a few kernel calls (an indicator is computed once per distinct
    value within a call: one set per call over every symbol recomputed it for every set), and at
    least two symbols per thread (the kernel runs symbols in parallel), unless its metrics, block
    sums and result columns would pass SWEEP_CHUNK_BYTES: memory is bounded by the chunk."""
    bars = [(snapshot.symbols[s].get(interval) or {}).get("bars", 0) for s in names]
    per_call = CHUNK_BAR_STEPS // max(max(bars, default=0) * n_params, 1)
    if n_params == 1:
        return max(1, min(len(names), per_call))
    per_symbol = engine.estimate_memory(1, 0, n_params, n_blocks)
    fits = max(1, SWEEP_CHUNK_BYTES // max(per_symbol, 1))
    return max(1, min(len(names), fits, max(per_call, 2 * engine.thread_count())))


def _plan_sweep(snapshot: lake.Snapshot, names: list[str], interval: str, n_params: int,
                confirm_seconds: float | None, on_plan: Callable[[str], None] | None) -> None:
    """Say how big a sweep is and about how long it takes (when it takes a while); refuse one past
    `confirm_seconds`."""
    from pipeline.core.errors import PipelineError
    from pipeline.engine import options

    bar_steps = sum((snapshot.symbols[s].get(interval) or {}).get("bars", 0) for s in names) * n_params
    seconds = bar_steps / options.BAR_STEPS_PER_SECOND + n_params * len(names) * options.SECONDS_PER_BACKTEST
    plan = (f"sweep: {n_params:,} parameter sets x {len(names):,} symbols = {n_params * len(names):,} backtests, "
            f"{bar_steps / 1e6:,.1f} M bar-steps, about {seconds:,.0f} s")
    if confirm_seconds is not None and seconds > confirm_seconds:
        raise PipelineError(f"{plan}, more than {confirm_seconds:.0f} s: pass --yes to run it, or narrow the "
                            "grid, the symbols or --timerange")
    if on_plan is not None and seconds >= options.SWEEP_MENTION_SECONDS:
        on_plan(plan)


@dataclass
class RunPlan:
    """A run as decided from its request, before any price is read: the snapshot it reads (pinned)
    and the interval of each of its symbols, whether it caches and writes its results, and its id."""

    settings: Settings
    config: RunConfig
    symbols: list[str] | None  # as asked (None = every symbol of the lake)
    interval: str  # as asked (`auto` is decided per symbol: interval_of)
    snapshot: lake.Snapshot
    interval_of: dict[str, str]
    started_at: datetime
    started: float  # time.perf_counter() at the start
    run_id: str
    write_results: bool
    use_cache: bool
    command: str

    @property
    def names(self) -> list[str]:
        return list(self.interval_of)

    @property
    def n_params(self) -> int:
        return len(self.config.params_list)

    @property
    def planned(self) -> int:
        """Backtests (symbol x parameter set) the run makes when nothing stops it."""
        return len(self.interval_of) * self.n_params

    def outcome_fields(self) -> dict[str, Any]:
        """What every outcome of the run says of it: its id, snapshot, intervals and left-out symbols."""
        return {"run_id": self.run_id, "snapshot_id": self.snapshot.id,
                "left_out": left_out(self.snapshot, self.interval_of, self.interval, self.symbols)}


def plan_run(settings: Settings, config: RunConfig, symbols: list[str] | None, interval: str, *,
             cache: ResultCache | None = None, write_results: bool = True, command: str = "",
             max_points: int = reader.DEFAULT_MAX_POINTS, confirm_seconds: float | None = None,
             on_plan: Callable[[str], None] | None = None, snapshot_id: str | None = None) -> RunPlan:
    """The plan of a run of `config` over `symbols` (None = all) of the current snapshot (or of
    `snapshot_id`); refuses, before any read or write, what the run would refuse (`_open_run`), a
    sweep past `confirm_seconds` (its size and time go to `on_plan`) and a results table it cannot write."""
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    snapshot, interval_of = _open_run(settings, config, symbols, interval, max_points, snapshot_id)
    n_params = len(config.params_list)
    if n_params > 1 and (confirm_seconds is not None or on_plan is not None):
        _plan_sweep(snapshot, list(interval_of), interval, n_params, confirm_seconds, on_plan)
    if write_results:
        results.check_writable(settings.results_root)
    # A sweep's rows carry statistics of its whole grid (PBO, deflated Sharpe), which a cached row
    # from another grid would get wrong: only single parameter sets are cached.
    use_cache = cache is not None and cache.enabled and n_params == 1
    return RunPlan(settings, config, symbols, interval, snapshot, interval_of, started_at, started,
                   results.new_run_id(started_at), write_results, use_cache, command)


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


def _look_up(plan: RunPlan, cache: ResultCache | None) -> CacheLookup:
    """Ask the cache once for every (symbol, parameter set) of the plan (nothing when it does not cache)."""
    found = CacheLookup()
    if not plan.use_cache or cache is None:
        return found
    config, snapshot = plan.config, plan.snapshot
    expected = {}
    for symbol in plan.names:
        for c in range(plan.n_params):
            fields = _key_fields(config, symbol, plan.interval_of[symbol], c,
                                 snapshot.symbols[symbol]["data_version"])
            found.keys[(symbol, c)] = cache.key(**fields)
            expected[found.keys[(symbol, c)]] = fields
    records = cache.get_many(list(found.keys.values()), expected, results.record_problem)
    for slot, key in found.keys.items():
        record = records.get(key)
        if record is not None and (not config.trades or ("trades" in record and "round_trips" in record)):
            # Lineage: the row names the snapshot this run read (its data version proves the
            # number still holds there) and, apart, the snapshot it was first computed on.
            record["computed_snapshot_id"] = record.get("computed_snapshot_id") or record["snapshot_id"]
            record["snapshot_id"] = snapshot.id
            record["source"] = snapshot.manifest.get("source", "")  # records cached before it was kept
            record.setdefault("market", config.market)
            found.hits[slot] = record
    return found


def _parts(plan: RunPlan, missing: list[str], streaming: bool, watched: bool) -> list[tuple[str, list[str]]]:
    """The (interval, symbols) of each read and kernel call: one interval each (`auto` can give symbols
    different intervals), in chunks of symbols (smaller when someone watches: `streaming` results or
    a `watched` progress)."""
    chunk = _symbols_per_call(plan.snapshot, missing, min(plan.interval_of.values(), key=intervals.SECONDS.get,
                                                          default="1h"),
                              plan.n_params, len(overfit.block_fractions(plan.config)) - 1)
    if streaming or watched:
        chunk = min(chunk, STREAM_CHUNK if streaming else PROGRESS_CHUNK)
    by_interval: dict[str, list[str]] = {}
    for symbol in missing:
        by_interval.setdefault(plan.interval_of[symbol], []).append(symbol)
    return [(iv, group[o: o + chunk]) for iv, group in by_interval.items() for o in range(0, len(group), chunk)]


def _read(plan: RunPlan, interval: str, symbols: list[str]) -> reader.PriceBatch:
    """One batched read of `symbols`' prices, refused when the run over them would not fit in memory."""
    config = plan.config
    # Only the columns the strategy and the fill read: the fewer, the faster the read.
    # From the start of the history: bars before --timerange warm the indicators up.
    batch = reader.read_prices(plan.settings.lake_root, symbols, interval, None, config.timerange_end,
                               columns=engine.columns_needed(config), snapshot=plan.snapshot,
                               min_coverage=config.min_bar_coverage)
    engine.check_memory(len(symbols), batch.times.size, plan.n_params,
                        len(overfit.block_fractions(config)) - 1 if plan.n_params > 1 else 0)
    return batch


@dataclass
class Computed:
    """What the kernels gave a run: every result it answers with (`collected`, cached ones first), those
    computed now of a single parameter set (`fresh`, to cache), and whether a stop cut it short."""

    collected: list[dict[str, Any]]
    fresh: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False


def _compute(plan: RunPlan, parts: list[tuple[str, list[str]]], computed: Computed, sweep: _Sweep | None,
             progress: _Progress, on_results: Callable[[list[dict[str, Any]]], None] | None,
             should_stop: Callable[[], bool] | None) -> None:
    """Read and run each part in turn, into `computed`. Ctrl-C (or `should_stop`) between kernel calls
    stops the run keeping what finished: cached and written by `_publish` (a sweep's unfinished chunk of
    symbols without its overfitting statistics, which need every parameter set)."""
    try:
        for part_interval, part in parts:
            batch = _read(plan, part_interval, part)
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
             sweep: _Sweep | None, sink: results.ResultSink | None, progress: _Progress) -> RunOutcome:
    """Cache what was computed, write the results (a sweep's went as its chunks finished), the trades
    and the runs row; the run's outcome."""
    config, settings, use_cache = plan.config, plan.settings, plan.use_cache and cache is not None
    if use_cache and computed.fresh:
        cache.put_many([(lookup.keys[(r["symbol"], 0)], r) for r in computed.fresh])  # one parameter set (use_cache)
    hit_count = len(lookup.served(plan))
    miss_count = len(computed.fresh)
    if use_cache:
        cache.record_hits(hit_count, miss_count)
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
        **plan.outcome_fields(), results=ordered, interval=_intervals_used(plan.interval_of, plan.interval),
        cache_hits=hit_count, cache_misses=miss_count, seconds=seconds, kernel_seconds=progress.kernel_seconds,
        bar_steps=progress.bar_steps, cache_used=plan.use_cache, paths=paths, interrupted=computed.interrupted,
        planned=plan.planned, n_results=n_results, findings=data_findings(plan.snapshot, plan.names),
        walk_forward=[] if sweep is None else sorted(
            sweep.summaries, key=lambda f: -(f["oos"]["total_return_pct"] or -math.inf)),
        set_returns=[] if sweep is None else sweep.set_returns(),
    )


def _record_stopped(plan: RunPlan, sink: results.ResultSink | None, publication: results.Publication,
                    progress: _Progress, outcome: RunOutcome | None) -> stopping.RunStopped:
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
    keep: int | None = None,
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

    A sweep (several parameter sets) writes every result to the results table in chunks of
    symbols, as columns, and returns (and streams) each symbol's `keep` best results (all of them
    with None): memory holds a chunk, not the grid.

    The stages: plan (`plan_run`), the cache (`_look_up`), read and compute (`_compute`, a `_read` per
    part), publish (`_publish`: the cache, the results table, the run log).
    """
    plan = plan_run(settings, config, symbols, interval, cache=cache, write_results=write_results,
                    command=command, max_points=max_points, confirm_seconds=confirm_seconds, on_plan=on_plan,
                    snapshot_id=snapshot_id)
    lookup = _look_up(plan, cache)
    served = lookup.served(plan)
    if on_results and served:
        on_results(served)
    missing = lookup.missing(plan)
    progress = _Progress(on_progress, plan.planned, (len(plan.names) - len(missing)) * plan.n_params)
    parts = _parts(plan, missing, on_results is not None, on_progress is not None)
    sink = results.ResultSink(settings.results_root, plan.run_id, config.strategy.name, plan.started_at,
                              results.result_schema(config.params_list)) if write_results else None
    sweep = _Sweep(config, sink, keep, on_results, should_stop, progress) if plan.n_params > 1 else None
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
        return outcome
    except BaseException as exc:
        if not stopping.at_once(exc):
            raise
        raise _record_stopped(plan, sink, publication, progress, outcome) from None


class _Progress:
    """Backtests done (symbol x parameter set) for `on_progress`, and the kernel's time and bar-steps."""

    def __init__(self, on_progress: Callable[[int, int], None] | None, total: int, done: int) -> None:
        self.on_progress, self.total, self.done = on_progress, total, done
        self.kernel_seconds = 0.0
        self.bar_steps = 0
        self._report(done)

    def advance(self, backtests: int) -> None:
        self.done += backtests
        self._report(self.done)

    def within(self, backtests: int) -> None:
        """Backtests done in the chunk under way (a sweep's slices of sets), not yet `advance`d."""
        self._report(self.done + backtests)

    def _report(self, done: int) -> None:
        self.reported = done  # backtests finished, those of the chunk under way included
        if self.on_progress is not None:
            self.on_progress(done, self.total)


class _Sweep:
    """A sweep's chunks of symbols: every parameter set in bounded kernel calls (CHUNK_BAR_STEPS),
    the chunk's results as columns into the results file (no dict per result), its overfitting
    statistics and walk-forward, and only the `keep` best results of each symbol kept as dicts
    (all with None)."""

    def __init__(self, config: RunConfig, sink: results.ResultSink | None, keep: int | None,
                 on_results: Callable[[list[dict[str, Any]]], None] | None,
                 should_stop: Callable[[], bool] | None, progress: _Progress) -> None:
        self.config, self.sink, self.keep = config, sink, keep
        self.on_results, self.should_stop, self.progress = on_results, should_stop, progress
        self.rows = 0
        self.summaries: list[dict[str, Any]] = []  # walk-forward, one per symbol
        self.fold_rows: list[dict[str, Any]] = []  # and its results-table rows
        n_params = len(config.params_list)
        self.return_sums, self.return_counts = np.zeros(n_params), np.zeros(n_params, dtype=np.int64)
        self._part: tuple[reader.PriceBatch, np.ndarray, int] | None = None  # the chunk under way

    def run_part(self, batch: reader.PriceBatch) -> list[dict[str, Any]]:
        config, n_params = self.config, len(self.config.params_list)
        fractions = overfit.block_fractions(config)
        blocks = overfit.new_blocks(len(batch.symbols), config)
        cube = np.empty((len(batch.symbols), n_params, engine.enums.N_METRICS))
        sets_per_call = max(1, CHUNK_BAR_STEPS // max(int(batch.bars.sum()), 1))
        annual = engine.bars_per_year(batch, config, engine.start_column(batch, config))
        self._part = (batch, cube, 0)
        for first in range(0, n_params, sets_per_call):
            if self.should_stop is not None and self.should_stop():
                raise KeyboardInterrupt
            stop = min(first + sets_per_call, n_params)
            t0 = time.perf_counter()
            cube[:, first:stop] = engine.run_metrics(batch, config.sliced(first, stop), fractions,
                                                     blocks[..., first:stop], annual)
            self.progress.kernel_seconds += time.perf_counter() - t0
            self.progress.bar_steps += int(batch.bars.sum()) * (stop - first)
            self._part = (batch, cube, stop)
            self.progress.within(len(batch.symbols) * stop)
        self._part = None
        columns = engine.result_columns(batch, config, cube, annual, engine.partial_bars(batch, config))
        has_reason = np.array([r is not None for r in columns.fields["reason"]]).reshape(len(batch.symbols), -1)
        columns.fields.update({name: values.ravel() for name, values in
                               overfit.result_statistics(blocks, config, has_reason).items()})
        if config.walk_forward:
            def row_of(y: int, c: int) -> dict[str, Any]:
                return engine.column_rows(batch, config, cube, columns, [y * n_params + c])[0]

            summaries, rows = walkforward.evaluate(blocks, fractions, config, row_of, len(batch.symbols),
                                                   _simulated_times(batch, config), batch)
            self.summaries.extend(summaries)
            self.fold_rows.extend(rows)
        kept = self._keep(batch, cube, columns)
        self.progress.advance(len(batch.symbols) * n_params)
        return kept

    def finish_interrupted(self) -> list[dict[str, Any]]:
        """The sets of the chunk under way that finished before Ctrl-C: written and kept, without
        the overfitting statistics (they need every set)."""
        if self._part is None or self._part[2] == 0:
            return []
        batch, cube, done = self._part
        self._part = None
        config = self.config.sliced(0, done)
        columns = engine.result_columns(batch, config, cube[:, :done], engine.bars_per_year(
            batch, config, engine.start_column(batch, config)), engine.partial_bars(batch, config))
        return self._keep(batch, cube[:, :done], columns, config)

    def _keep(self, batch: reader.PriceBatch, cube: np.ndarray, columns: engine.ResultColumns,
              config: RunConfig | None = None) -> list[dict[str, Any]]:
        """Write the chunk's results, add them to the per-set returns, and return the kept ones."""
        config = config or self.config
        if self.sink is not None:
            self.sink.write_columns(columns)
        self.rows += columns.n_rows
        returns = columns.fields["total_return_pct"].reshape(len(batch.symbols), -1)
        width = returns.shape[1]
        self.return_sums[:width] += np.nansum(returns, axis=0)
        self.return_counts[:width] += np.isfinite(returns).sum(axis=0)
        kept = engine.column_rows(batch, config, cube, columns,
                                  engine.best_rows(columns, self.keep, *engine.ranking(self.config)))
        if self.on_results and kept:
            self.on_results(kept)
        return kept

    def set_returns(self) -> list[dict[str, Any]]:
        """Each parameter set's mean total return over the symbols that have one (a sweep's heatmap)."""
        return [{"params": params, "symbols": int(count), "total_return_pct": float(total / count)}
                for params, total, count in zip(self.config.params_list, self.return_sums, self.return_counts,
                                                strict=True) if count]


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
    problem = config.strategy.cache_problem
    if problem is not None and not no_cache:
        message = f"results of {config.strategy.name!r} are not cached: part of its code cannot be hashed ({problem})"
        if on_warning is not None:
            on_warning(message)
        else:
            warnings.warn(message, stacklevel=2)
    cache = None if no_cache or problem is not None else ResultCache.from_settings(settings, on_warning=on_warning)
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
    left_out: dict[str, str] = field(default_factory=dict)  # as RunOutcome's


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
    """One shared account per entry of `sets` (pipeline.engine.portfolio.make_sets) over `symbols` (None = all).

    One batched read; signals once per distinct strategy parameter set; the best account is
    re-simulated in full for its trade list and curves. Portfolio results are not cached
    (one account depends on every symbol's data); they are appended to the results table
    with mode = 'portfolio'. The stages: plan (`plan_run`), read, compute (`_accounts`), publish.
    """
    plan = plan_run(settings, config, symbols, interval, write_results=write_results, command=command)
    # One account needs one grid: `auto` takes the coarsest interval any symbol needs.
    interval = max(plan.interval_of.values(), key=intervals.SECONDS.get, default="1h")
    batch = reader.read_prices(settings.lake_root, plan.names, interval, None, config.timerange_end,
                               columns=tuple(dict.fromkeys((*engine.columns_needed(config), "volume"))),
                               snapshot=plan.snapshot, min_coverage=config.min_bar_coverage)
    engine.check_memory(len(plan.names), batch.times.size, len(sets))
    t0 = time.perf_counter()
    accounts, best = _accounts(batch, config, sets, rank_by)
    kernel_seconds = time.perf_counter() - t0
    bar_steps = int(batch.bars.sum()) * len(sets)
    seconds = time.perf_counter() - plan.started
    paths: list[str] = []
    if write_results and accounts:
        with results.one_run():
            paths += [str(p) for p in results.append_results(settings.results_root, plan.run_id, accounts,
                                                             plan.started_at)]
            results.append_run_metrics(
                settings.results_root, plan.run_id, started_at=plan.started_at, duration_s=seconds,
                strategy=config.strategy.name, n_symbols=len(plan.names), n_results=len(accounts), bars=bar_steps,
                snapshot_id=plan.snapshot.id, command=command,
            )
    return PortfolioOutcome(plan.run_id, accounts, best, plan.snapshot.id, interval, seconds, kernel_seconds,
                            bar_steps, paths, left_out(plan.snapshot, plan.interval_of, interval, symbols))


def _accounts(batch: reader.PriceBatch, config: RunConfig, sets: list,
              rank_by: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every account of `sets`, best first, and the best one in full (contributions, round trips, curves)."""
    from pipeline.engine import portfolio as pf

    accounts = pf.run(batch, config, sets, rank_by)
    if not accounts:
        return accounts, None
    chosen = next(s for s in sets if s.params == accounts[0]["params"] and s.max_open == accounts[0]["max_open"]
                  and s.stake.value == accounts[0]["stake"])
    return accounts, pf.detail(batch, config, chosen, rank_by)


def check_strategy(settings: Settings, strategy: strategies.Strategy, params: dict[str, Any], symbols: list[str] | None,
                   interval: str, limit: int = 3) -> list:
    """Look-ahead and warm-up checks of `strategy` on `symbols` (default: the lake's first `limit`)."""
    import numpy as np

    from pipeline.core.errors import PipelineError
    from pipeline.engine import checks

    if interval not in ("1h", "1d"):
        raise PipelineError(f"--interval {interval!r} is not allowed; use 1h or 1d")
    config = options.run_config(strategy, params)
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
