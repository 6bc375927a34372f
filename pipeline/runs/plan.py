"""A run's plan, decided from its request before any price is read: the snapshot it reads (pinned
for the run), the interval of each symbol, the sweep's size, whether it caches and writes, its id."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pipeline.core import intervals, markets
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.engine import batch as engine
from pipeline.engine import options
from pipeline.engine.options import RunConfig
from pipeline.lake import reader
from pipeline.lake import snapshots as lake
from pipeline.runs import informative
from pipeline.store import results
from pipeline.store.cache import ResultCache

T = TypeVar("T")

# Symbols per kernel call when someone watches: small enough to stream or move a
# progress bar, large enough that the per-call read stays cheap.
STREAM_CHUNK = 16
PROGRESS_CHUNK = 64
# Bar-steps per kernel call (a tenth to a fifth of a second on two busy cores for a run's kernel). Ctrl-C
# is honoured between calls, so a run of any size stops within about a second and keeps what finished.
CHUNK_BAR_STEPS = 10_000_000
# A sweep's calls after its first are sized from the time the last one took, to about this long: the
# sweep kernel does 10 M bar-steps in about 10 ms, and a call per set paid each call's own work (every
# symbol's buffers and indicators again) on every set.
SWEEP_CALL_SECONDS = 0.5
# A sweep's chunk of symbols in memory (metrics, block sums, result columns): a 100,000-set sweep
# runs two symbols at a time (one per core) within it.
SWEEP_CHUNK_BYTES = 640 * 2**20
# Below that bound, a sweep's chunk holds at least this much: each chunk pays a read, a results write and
# its first small kernel calls, and the 1,000-set sweep over 211 symbols in chunks of 4 symbols (53 chunks)
# spent ~1.4 s of its 12.8 s on them (11.4 s in 7 chunks of 31; peak RSS 403 -> 540 MB).
SWEEP_PART_BYTES = 64 * 2**20

# The pins a run holds on the snapshots it reads, released when the run returns (see `pinning`).
_PINS: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar("pins", default=None)


def pinning(run: Callable[..., T]) -> Callable[..., T]:
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
    names = reader.resolve_symbols(snapshot, symbols, config.market)
    if interval == "auto":
        interval_of = reader.choose_interval(snapshot, names, config.timerange_start, config.timerange_end,
                                             max_points)
    else:
        if symbols:
            reader.check_readable(snapshot, names, interval)
        interval_of = {n: interval for n in names if reader.read_from(snapshot.symbols[n], interval)}
    if config.detail is not None and not symbols:  # a run over the whole lake leaves out, and says, what lacks them
        interval_of = {n: iv for n, iv in interval_of.items() if reader.read_from(snapshot.symbols[n], config.detail)}
    _check_range_has_bars(snapshot, interval_of, config)
    informative.check(snapshot, config.strategy, interval_of)
    _check_detail(snapshot, config, interval_of)
    return snapshot, interval_of


def _check_detail(snapshot: lake.Snapshot, config: RunConfig, interval_of: dict[str, str]) -> None:
    """--detail: finer than every interval of the run, and bars the lake holds (or builds) for every symbol."""
    if config.detail is None:
        return
    for interval in set(interval_of.values()):
        options.check_detail(config.detail, interval)
    lacking = [n for n in interval_of if reader.read_from(snapshot.symbols[n], config.detail) is None]
    if lacking:
        meta = snapshot.symbols[lacking[0]]
        raise PipelineError(f"--detail {config.detail}: the lake has no {config.detail} bars of {lacking[0]} (its "
                            f"own bars are {meta.get('native') or reader.stored(meta)[0]})"
                            + (f" nor of {len(lacking) - 1} more symbol(s)" if len(lacking) > 1 else ""))


def left_out(snapshot: lake.Snapshot, interval_of: dict[str, str], interval: str,
             symbols: list[str] | None, market: str = "spot", detail: str | None = None) -> dict[str, str]:
    """The symbols (of `market`) a run over the whole lake (`symbols` None) leaves out (`_open_run`: their own bars are
    coarser than `interval`, or than --detail's), each with why; a run naming its symbols refuses such a one instead."""
    if symbols:
        return {}
    return {n: (f"it has no {detail} bars for --detail (its own bars are {_own(meta)})"
                if detail and interval != "auto" and reader.read_from(meta, interval) else
                f"its own bars are {_own(meta)}, coarser than {interval}")
            for n, meta in sorted(snapshot.symbols.items())
            if n not in interval_of and markets.market_of(n) == market}


def _own(meta: dict) -> str:
    return meta.get("native") or reader.stored(meta)[0]


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

    have = (f"the lake's {interval} bars of these symbols span {min(f for f, _ in spans):%Y-%m-%d} to "
            f"{max(la for _, la in spans):%Y-%m-%d}" if spans else f"these symbols have no {interval} bars")
    raise PipelineError(f"--timerange has no bars: {have}")


def symbols_per_call(snapshot: lake.Snapshot, names: list[str], interval: str, n_params: int,
                      n_blocks: int, daily: bool = False) -> int:
    """Symbols per read: all of them unless their parameter sets are a lot of work. A sweep's chunk
    of symbols gets all its sets in a few kernel calls (an indicator is computed once per distinct
    value within a call: one set per call over every symbol recomputed it for every set), at least two
    symbols per thread (the kernel runs symbols in parallel) and at least SWEEP_PART_BYTES of work (a
    chunk's read and write cost the same whatever its sets), unless its metrics, block sums and result
    columns (and, with `daily`, each set's equity at every day's end: --stats) would pass
    SWEEP_CHUNK_BYTES: memory is bounded by the chunk."""
    bars = [(snapshot.symbols[s].get(interval) or {}).get("bars", 0) for s in names]
    per_call = CHUNK_BAR_STEPS // max(max(bars, default=0) * n_params, 1)
    if n_params == 1:
        return max(1, min(len(names), per_call))
    n_days = 0
    if daily:
        n_days = max(bars, default=0) * intervals.SECONDS.get(interval, 3600) // 86_400 + 2
    per_symbol = engine.estimate_memory(1, 0, n_params, n_blocks, n_days)
    fits = max(1, SWEEP_CHUNK_BYTES // max(per_symbol, 1))
    least = max(per_call, 2 * engine.thread_count(), SWEEP_PART_BYTES // max(per_symbol, 1))
    return max(1, min(len(names), fits, least))


def _plan_sweep(snapshot: lake.Snapshot, names: list[str], interval: str, n_params: int,
                confirm_seconds: float | None, on_plan: Callable[[str], None] | None) -> None:
    """Say how big a sweep is and about how long it takes (when it takes a while); refuse one past
    `confirm_seconds`."""

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
                "left_out": left_out(self.snapshot, self.interval_of, self.interval, self.symbols,
                                     self.config.market, self.config.detail)}


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


def check_request(settings: Settings, config: RunConfig, symbols: list[str] | None, interval: str) -> str:
    """What a run would refuse (no snapshot, unknown symbols, a --timerange without bars), refused now,
    before a queued request waits its turn; returns the interval(s) it would read (`auto` resolved)."""
    return intervals_used(_open_run(settings, config, symbols, interval, reader.DEFAULT_MAX_POINTS)[1], interval)


def intervals_used(interval_of: dict[str, str], asked: str) -> str:
    """The intervals a run reads, finest first and joined by '+' ('1h+1d'); `asked` when it reads none."""
    used = sorted(set(interval_of.values()), key=lambda name: intervals.SECONDS[name])
    return "+".join(used) or asked
