"""Prefect flow: a sweep in chunks, each chunk a Prefect task, so a scheduled deployment spreads a large
sweep over a Dask cluster through `prefect_dask.DaskTaskRunner`, resumable like `cryptobt sweep --cluster`.

The chunks, their parts under the run id and the publication of the run are pipeline.runs.cluster's, the
same code `cryptobt sweep --cluster/--workers/--resume` runs: this flow only hands the chunks to Prefect's
task runner instead of a Dask client. The results equal a single-process sweep's bit for bit.

    from prefect_dask import DaskTaskRunner
    from flows.sweep import sweep_flow
    sweep_flow.with_options(task_runner=DaskTaskRunner(address="tcp://SCHEDULER:8786"))(
        "rsi", ["rsi_period=7:28:1", "oversold_threshold=20:35:1"])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.core import objects
from pipeline.core.config import Settings
from pipeline.core.run_options import BY_NAME as OPTION
from pipeline.engine import options
from pipeline.runs import cluster


@task(name="sweep-chunk", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def chunk_task(folder: str, index: int, lake_root: str) -> dict[str, Any]:
    """One chunk on whichever worker the task runner picks: its part is written once (a retry of a chunk
    whose part is there does nothing)."""
    return cluster.run_chunk(folder, index, objects.location(lake_root))


class TaskExecutor(Executor):
    """`cluster.sweep`'s executor over Prefect tasks: each chunk `chunk_task.submit`ted to the flow's task
    runner, its outcome handed on as a concurrent.futures.Future."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if fn is not cluster.run_chunk or kwargs:
            raise TypeError("TaskExecutor runs the chunks of a sweep (cluster.run_chunk) only")
        folder, index, lake_root = args
        outcome: Future = Future()
        submitted = chunk_task.submit(folder, index, str(lake_root))

        def settle(done: Any) -> None:
            try:
                outcome.set_result(done.result())
            except BaseException as exc:  # the chunk's error fails the run, as on a Dask client
                outcome.set_exception(exc)

        submitted.add_done_callback(settle)
        return outcome


@contextlib.contextmanager
def _tasks() -> Iterator[Executor]:
    yield TaskExecutor()


@flow(name="sweep-chunks", log_prints=True)
def sweep_flow(
    strategy: str | None = None,
    grid: list[str] | None = None,
    symbols: list[str] | None = None,
    interval: str = OPTION["interval"].default,
    resume: str | None = None,
    chunk_sets: int = 0,
    chunk_symbols: int = 0,
    top: int = 10,
) -> dict[str, Any]:
    """A sweep of `strategy` over `grid` (`-g` specs) on `symbols` (None: all) in chunks, or with `resume` the
    missing chunks of the distributed sweep of that run id. Returns the run id, its snapshot and best rows."""
    settings = Settings.from_env()
    if resume is not None:
        if strategy is not None or grid:
            raise ValueError(f"resume={resume!r} runs the sweep as it was first asked: drop strategy and grid")
        request = cluster.SweepRequest.of_run(settings, resume)
        request.keep = top
    else:
        if strategy is None or not grid:
            raise ValueError("a sweep needs a strategy and a grid (or resume=RUN_ID)")
        chosen = options.resolve_strategy(strategy)
        params_list = options.parse_grid(chosen, grid, None, OPTION["seed"].default)
        config, names, interval = options.run_request(chosen, params_list, symbols, symbols is None, interval)
        request = cluster.SweepRequest.asked(chosen, list(config.params_list), names, interval, {}, top, None)
    logger = get_run_logger()
    outcome, config = cluster.sweep(settings, request, resume=resume is not None, executor=_tasks,
                                    chunk_symbols=chunk_symbols, chunk_sets=chunk_sets, on_plan=logger.info,
                                    command="flow:sweep")
    logger.info("sweep %s: %d results in %.2f s on snapshot %s", outcome.run_id, len(outcome.results),
                outcome.seconds, outcome.snapshot_id)
    return {"run_id": outcome.run_id, "snapshot_id": outcome.snapshot_id, "best": outcome.results[:top]}
