"""A sweep on Dask `distributed` workers (issue 31): its chunks (a block of symbols x a block of parameter
sets) run anywhere, each writing its kernel output as a part under the run id; the run's results are put
together from the parts, in a fixed order, when every chunk is there, and are those of the single-process
run bit for bit.

The stages: `SweepRequest` (what was asked, kept as the run's `request.json` before any chunk runs, so
`--resume RUN_ID` needs nothing else), `chunks_of` (the layout), `run_chunk` (a worker's whole job: read
the lake, run the kernels over the chunk, write its part; run twice it writes once), `sweep` (plan, the
missing chunks on an executor, then `_publish_parts`: each block of symbols through the same
`Sweep.finish_part` as a single-process run, its parts put together in set order, so every statistic (PBO,
deflated Sharpe, --stats, walk-forward) sums the same numbers in the same order).

Any `concurrent.futures.Executor` runs the chunks: a Dask client's (`Client.get_executor()`), whose
scheduler retries a chunk whose worker died, or none (this process, chunk after chunk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import intervals, objects, stopping
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.engine import batch as engine
from pipeline.engine import options, overfit, strategies
from pipeline.engine.options import RunConfig
from pipeline.lake import snapshots as lake
from pipeline.runs.backtest import CacheLookup, Computed, RunOutcome, _parts, _publish, read_batch
from pipeline.runs.plan import CHUNK_BAR_STEPS, RunPlan, pinning, plan_run
from pipeline.runs.sweep import Progress, Sweep, kernel_part
from pipeline.store import results, sweep_parts
from pipeline.store.files import runs_root
from pipeline.store.returns_file import ReturnsWriter

# Bar-steps of a chunk when --chunk-sets does not say: about a second of one worker's kernels, so the
# scheduler's few milliseconds a task, the chunk's read and its part's write stay small beside it.
CLUSTER_CHUNK_BAR_STEPS = 4 * CHUNK_BAR_STEPS
REQUEST_VERSION = 1


@dataclass(frozen=True)
class Chunk:
    """Chunk `index` of a distributed sweep: `symbols` (read at `interval`) x parameter sets first..stop-1."""

    index: int
    interval: str
    symbols: tuple[str, ...]
    first: int
    stop: int

    @property
    def backtests(self) -> int:
        return len(self.symbols) * (self.stop - self.first)


@dataclass
class SweepRequest:
    """What a distributed sweep was asked, in plain values (its `request.json`): the strategy by name (and
    the file of a user's), its parameter sets, symbols as asked, interval, the run options by name, and,
    once planned, its run id, start, snapshot, symbols' intervals and chunks."""

    strategy: str
    origin: str
    code_version: str
    params_list: list[dict[str, Any]]
    symbols: list[str] | None
    interval: str
    run: dict[str, Any]
    keep: int | None = None
    returns_out: str | None = None
    run_id: str = ""
    started_at: str = ""
    snapshot_id: str = ""
    interval_of: dict[str, str] = dataclasses.field(default_factory=dict)
    chunks: list[list[Any]] = dataclasses.field(default_factory=list)  # [interval, symbols, first, stop]

    @classmethod
    def asked(cls, strategy: strategies.Strategy, params_list: list[dict[str, Any]], symbols: list[str] | None,
              interval: str, run: dict[str, Any], keep: int | None, returns_out: Path | None) -> SweepRequest:
        return cls(strategy.name, strategy.origin, engine.code_version(strategy), [dict(p) for p in params_list],
                   None if symbols is None else list(symbols), interval, dict(run), keep,
                   None if returns_out is None else str(Path(returns_out).resolve()))

    @classmethod
    def of_run(cls, settings: Settings, run_id: str) -> SweepRequest:
        """The request of the distributed sweep `run_id` (`--resume`); a one-line error if it has none."""
        kept = sweep_parts.read_request(settings.results_root, run_id)
        if kept.get("version") != REQUEST_VERSION:
            raise PipelineError(f"--resume {run_id!r}: its request is of version {kept.get('version')!r}, this "
                                f"cryptobt reads version {REQUEST_VERSION}")
        kept.pop("version")
        return cls(**kept)

    def config(self) -> RunConfig:
        """The run's config, checked as the CLI checks one; a strategy whose code changed since the run began
        is refused (its parts were computed by the old code)."""
        if self.origin != "built-in":
            options.load_strategy_paths([Path(self.origin).parent])
        strategy = options.resolve_strategy(self.strategy)
        if engine.code_version(strategy) != self.code_version:
            raise PipelineError(f"strategy {self.strategy!r} changed since sweep {self.run_id or ''} began (code "
                                f"{engine.code_version(strategy)}, its chunks {self.code_version}); start a new sweep")
        return options.run_config(strategy, self.params_list, **self.run)

    def layout(self) -> list[Chunk]:
        return [Chunk(i, iv, tuple(names), first, stop) for i, (iv, names, first, stop) in enumerate(self.chunks)]

    def as_json(self) -> dict[str, Any]:
        return {"version": REQUEST_VERSION, **dataclasses.asdict(self)}


def chunks_of(plan: RunPlan, daily: bool, chunk_symbols: int = 0, chunk_sets: int = 0) -> list[Chunk]:
    """A sweep's chunks, block of symbols after block of symbols (each read at one interval), each block's
    sets in order: the blocks a single-process run reads (`chunk_symbols` of them when given), cut into
    `chunk_sets` sets (default: about CLUSTER_CHUNK_BAR_STEPS each)."""
    blocks = _parts(plan, plan.names, False, True, daily)
    if chunk_symbols:
        by_interval: dict[str, list[str]] = {}
        for iv, names in blocks:
            by_interval.setdefault(iv, []).extend(names)
        blocks = [(iv, names[o: o + chunk_symbols]) for iv, names in by_interval.items()
                  for o in range(0, len(names), chunk_symbols)]
    chunks: list[Chunk] = []
    for iv, names in blocks:
        bars = sum((plan.snapshot.symbols[s].get(iv) or {}).get("bars", 0) for s in names)
        sets = chunk_sets or max(1, CLUSTER_CHUNK_BAR_STEPS // max(bars, 1))
        chunks += [Chunk(len(chunks) + k, iv, tuple(names), first, min(first + sets, plan.n_params))
                   for k, first in enumerate(range(0, plan.n_params, sets))]
    return chunks


# A worker process runs one chunk at a time (a `dask worker --nthreads 4` too): it holds one chunk's grids.
_ONE_CHUNK = threading.Lock()
_CONFIGS: dict[str, tuple[SweepRequest, RunConfig]] = {}  # the last run's config, per worker process


def run_chunk(folder: str, index: int, lake_root: Any) -> dict[str, Any]:
    """Chunk `index` of the distributed sweep whose parts are in `folder`: read its symbols from the lake at
    `lake_root`, run its sets through the kernels and write its part. A chunk whose part is there already
    (another attempt wrote it) is not computed again. Returns what it did, in plain values."""
    with _ONE_CHUNK:
        where = objects.location(folder)
        if index in sweep_parts.present(where):
            return {"index": index, "written": False, "kernel_seconds": 0.0, "pid": os.getpid()}
        if folder not in _CONFIGS:
            request = _request_in(where)
            _CONFIGS.clear()
            _CONFIGS[folder] = (request, request.config())
        request, config = _CONFIGS[folder]
        chunk = request.layout()[index]
        daily = bool(config.stats or request.returns_out)
        snapshot = lake.require_snapshot(lake_root, request.snapshot_id)
        with lake.reading(lake_root, snapshot) as pinned:
            batch = read_batch(lake_root, pinned, config, chunk.interval, list(chunk.symbols), daily,
                               chunk.stop - chunk.first)
        if list(batch.symbols) != list(chunk.symbols):
            raise PipelineError(f"chunk {index}: read {list(batch.symbols)}, not {list(chunk.symbols)}")
        started = time.perf_counter()
        cube, blocks, days = kernel_part(batch, config.sliced(chunk.first, chunk.stop), daily)
        seconds = time.perf_counter() - started
        written = sweep_parts.write_part(where, index, list(chunk.symbols), chunk.first, chunk.stop, cube, blocks,
                                         days, {"kernel_seconds": seconds, "bar_steps": int(batch.bars.sum())
                                                * (chunk.stop - chunk.first), "pid": os.getpid()})
        return {"index": index, "written": written, "kernel_seconds": seconds, "pid": os.getpid()}


def _request_in(folder: Path) -> SweepRequest:
    kept = sweep_parts.request_in(folder)
    kept.pop("version", None)
    return SweepRequest(**kept)


ExecutorFactory = Callable[[], contextlib.AbstractContextManager[Executor | None]]


@contextlib.contextmanager
def in_process() -> Iterator[None]:
    """No executor: the chunks run in this process, one after the other."""
    yield None


def _complete(settings: Settings, request: SweepRequest) -> bool:
    """Whether the run's results are published (its runs row is there)."""
    day = datetime.fromisoformat(request.started_at).date().isoformat()
    return (runs_root(settings.results_root) / f"run_date={day}" / f"strategy={request.strategy}"
            / f"{request.run_id}.parquet").exists()


@pinning
def sweep(settings: Settings, request: SweepRequest, *, resume: bool = False, executor: ExecutorFactory = in_process,
          chunk_symbols: int = 0, chunk_sets: int = 0, on_progress: Callable[[int, int], None] | None = None,
          on_plan: Callable[[str], None] | None = None, confirm_seconds: float | None = None,
          snapshot_id: str | None = None, should_stop: Callable[[], bool] | None = None,
          command: str = "sweep") -> tuple[RunOutcome, RunConfig]:
    """Run `request` (a new sweep; `resume`: the kept request of a distributed sweep) as chunks on the
    executor `executor()` opens once the plan holds: only the chunks whose parts are missing, then the run's
    results from every part, published as a single-process run publishes them (results, runs row), and the
    parts' folder removed. `on_progress(backtests done, backtests in all)` hears of each chunk finished;
    `on_plan` gets the run's id, chunks and, while they run, where its parts are. Stopped (`should_stop`)
    or killed, the parts written stay: `--resume RUN_ID` computes the rest."""
    config = request.config()
    if len(config.params_list) < 2:
        raise PipelineError("--cluster, --workers and --resume run a sweep of at least two parameter sets; this grid has "
                            f"{len(config.params_list)}")
    if resume and _complete(settings, request):
        sweep_parts.remove(sweep_parts.run_folder(settings.results_root, request.run_id))
        raise PipelineError(f"--resume {request.run_id!r}: that sweep is complete; `cryptobt results show "
                            f"{request.run_id}` shows it")
    plan = plan_run(settings, config, request.symbols, request.interval, command=command,
                    confirm_seconds=None if resume else confirm_seconds, on_plan=on_plan,
                    snapshot_id=request.snapshot_id if resume else snapshot_id)
    daily = bool(config.stats or request.returns_out)
    if resume:
        if plan.interval_of != request.interval_of:
            raise PipelineError(f"--resume {request.run_id!r}: snapshot {request.snapshot_id} no longer gives the run's "
                                "symbols and intervals; start a new sweep")
        plan = dataclasses.replace(plan, run_id=request.run_id, started_at=datetime.fromisoformat(request.started_at))
    else:
        chunks = chunks_of(plan, daily, chunk_symbols, chunk_sets)
        request = dataclasses.replace(request, run_id=plan.run_id, started_at=plan.started_at.isoformat(),
                                      snapshot_id=plan.snapshot.id, interval_of=dict(plan.interval_of),
                                      chunks=[[c.interval, list(c.symbols), c.first, c.stop] for c in chunks])
    folder = sweep_parts.run_folder(settings.results_root, request.run_id)
    if not resume:
        sweep_parts.write_request(folder, request.as_json())
    chunks = request.layout()
    there = sweep_parts.present(folder)
    missing = [c for c in chunks if c.index not in there]
    if on_plan is not None:
        on_plan(f"sweep {request.run_id}: {len(chunks)} chunks ({len(missing)} to compute) of at most "
                f"{max(len(c.symbols) for c in chunks)} symbols x {max(c.stop - c.first for c in chunks)} sets; "
                f"parts in {folder} (`cryptobt sweep --resume {request.run_id}` goes on from them)")
    progress = Progress(on_progress, plan.planned, sum(c.backtests for c in chunks if c.index in there))
    if missing:
        with executor() as pool:
            _run_chunks(pool, folder, missing, settings.lake_root, progress, should_stop, request.run_id, len(chunks))
    return _publish_parts(plan, request, folder, chunks, config, daily), config


def _run_chunks(pool: Executor | None, folder: Path, missing: list[Chunk], lake_root: Any, progress: Progress,
                should_stop: Callable[[], bool] | None, run_id: str, n_chunks: int) -> None:
    """The missing chunks on `pool` (None: here, in order), each advancing `progress` as it finishes. A chunk
    that fails fails the run (its error, once: the rest are cancelled; the parts written stay)."""
    def stopped() -> None:
        if should_stop is not None and should_stop():
            kept = len(sweep_parts.present(folder))
            raise stopping.ChunksKept(f"{kept} of {n_chunks} chunks are kept in {folder}; "
                                      f"`cryptobt sweep --resume {run_id}` computes the rest")

    if pool is None:
        for chunk in missing:
            stopped()
            run_chunk(str(folder), chunk.index, lake_root)
            progress.advance(chunk.backtests)
        return
    futures: dict[Future, Chunk] = {pool.submit(run_chunk, str(folder), c.index, lake_root): c for c in missing}
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: futures[f].index):
                future.result()
                progress.advance(futures[future].backtests)
            stopped()
    finally:
        for future in pending:
            future.cancel()


def _publish_parts(plan: RunPlan, request: SweepRequest, folder: Path, chunks: list[Chunk], config: RunConfig,
                   daily: bool) -> RunOutcome:
    """The run's results from its parts, block of symbols after block of symbols, each block's parts put
    together in set order and finished as a single-process sweep finishes its chunk (`Sweep.finish_part`):
    the same rows, statistics and runs row, published together; then the parts' folder goes."""
    settings, n_params = plan.settings, plan.n_params
    progress = Progress(None, plan.planned, 0)
    sink = results.ResultSink(settings.results_root, plan.run_id, config.strategy.name, plan.started_at,
                              results.result_schema(config.params_list))
    writer = ReturnsWriter(Path(request.returns_out), config.params_list) if request.returns_out else None
    sweep_run = Sweep(config, sink, request.keep, None, None, progress, writer)
    blocks_of: dict[tuple[str, tuple[str, ...]], list[Chunk]] = {}
    for chunk in chunks:
        blocks_of.setdefault((chunk.interval, chunk.symbols), []).append(chunk)
    try:
        with results.one_run(), sink:
            computed = Computed([])
            for (interval, names), parts in blocks_of.items():
                batch = read_batch(settings.lake_root, plan.snapshot, config, interval, list(names), daily)
                cube = np.empty((len(names), n_params, engine.enums.N_METRICS))
                blocks = overfit.new_blocks(len(names), config)
                days = None if not daily else np.full((len(names), intervals.grid_days(batch.times)[1], n_params),
                                                      np.nan)
                for chunk in sorted(parts, key=lambda c: c.first):
                    meta, part_cube, part_blocks, part_days = sweep_parts.read_part(folder, chunk.index)
                    if (meta["symbols"], meta["first"], meta["stop"]) != (list(names), chunk.first, chunk.stop):
                        raise PipelineError(f"{sweep_parts.part_path(folder, chunk.index)} holds other results than "
                                            f"chunk {chunk.index}; remove it and resume")
                    cube[:, chunk.first:chunk.stop] = part_cube
                    blocks[..., chunk.first:chunk.stop] = part_blocks
                    if days is not None:
                        days[:, :, chunk.first:chunk.stop] = part_days
                    progress.kernel_seconds += meta["kernel_seconds"]
                    progress.bar_steps += meta["bar_steps"]
                computed.collected.extend(sweep_run.finish_part(batch, cube, blocks, days))
                del cube, blocks, days
            outcome = _publish(plan, None, CacheLookup(), computed, sweep_run, sink, progress)
        if writer is not None:
            outcome.returns_path = str(writer.close())
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    sweep_parts.remove(folder)
    return outcome
