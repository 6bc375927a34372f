"""The runs table: one row per run (`append_run_metrics`), and the runs that killed processes left
behind, swept up and recorded as interrupted (`sweep_stale`)."""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

from pipeline.core import objects
from pipeline.core.config import check_writable_folder
from pipeline.core.errors import PipelineError
from pipeline.core.objects import ObjectPath
from pipeline.core.versions import ENGINE_VERSION, __version__
from pipeline.store.files import (
    LEASED_TEMP,
    WRITERS,
    runs_root,
    staging_root,
    sweep_lease,
    trades_root,
    write_table,
)
from pipeline.store.schemas import (
    RUN_SCHEMA,
)
from pipeline.store.values import (
    SAFE_NAME,
    as_utc,
)


def append_run_metrics(
    results_root: str | os.PathLike[str],
    run_id: str,
    *,
    started_at: datetime,
    duration_s: float,
    strategy: str,
    n_symbols: int | None,
    n_results: int,
    bars: int | None,
    cache_hits: int = 0,
    cache_misses: int = 0,
    snapshot_id: str | None = None,
    command: str = "",
    code_version: str = __version__,
    engine_version: str = ENGINE_VERSION,
    interrupted: bool = False,
    planned: int | None = None,
) -> Path:
    """Append one row to the runs table; ``bars`` is the bar-steps simulated in the run."""
    started = as_utc(started_at, "started_at")
    lookups = cache_hits + cache_misses
    row = {
        "run_id": run_id,
        "started_at": started,
        "duration_s": float(duration_s),
        "strategy": strategy,
        "n_symbols": n_symbols,
        "n_results": n_results,
        "bars": bars,
        "cache_hits": cache_hits,
        "cache_misses": cache_misses,
        "hit_ratio": cache_hits / lookups if lookups else None,
        "throughput": bars / duration_s if duration_s > 0 and bars is not None else None,
        "snapshot_id": snapshot_id,
        "engine_version": engine_version,
        "code_version": code_version,
        "command": command,
        "interrupted": interrupted,
        "planned": planned,
    }
    return write_table(runs_root(results_root), run_id, strategy, started, [row], RUN_SCHEMA)


def check_writable(results_root: str | os.PathLike[str]) -> None:
    """Fail before a run computes anything if any of its three tables' folders cannot be written;
    sweep up what killed runs left there."""
    for root in (objects.location(results_root), trades_root(results_root), runs_root(results_root)):
        if isinstance(root, ObjectPath):
            objects.check_reachable(root, "CRYPTOBT_RESULTS_ROOT")
        check_writable_folder(staging_root(root), "CRYPTOBT_RESULTS_ROOT")
    sweep_stale(results_root)


def sweep_stale(results_root: str | os.PathLike[str]) -> list[Path]:
    """Remove the temp files that dead writers left in the three tables; returns them.

    Only what the lease of a writer that is gone lists (`_lease`): a live process's files are never
    touched, and the cost is a look at each table's `.writers` folder, not a walk of the tables.
    A results file of a run that was never published means the run was killed: it is recorded in
    ``runs`` as interrupted, with no results. Best effort: what cannot be removed stays."""
    removed: list[Path] = []
    results = objects.location(results_root)
    for root in (results, trades_root(results_root), runs_root(results_root)):
        local = staging_root(root)  # where the temp files are (this machine's disk for a table on S3)
        try:
            leases = [entry.path for entry in os.scandir(local / WRITERS) if entry.name.endswith(".lease")]
        except OSError:
            continue
        for lease in leases:
            with contextlib.suppress(OSError):
                for temp, last_write in sweep_lease(local, Path(lease)):
                    removed.append(temp)
                    if root == results:
                        _record_killed(results_root, temp, last_write)
    return removed


def _record_killed(results_root: str | os.PathLike[str], temp: Path, last_write: float) -> None:
    """A runs row for the run whose results temp file `temp` a killed process left: interrupted,
    no results (unless the run was published after all: a kill between its links and the
    removal of its temp files)."""
    name = LEASED_TEMP.match(f"{temp.parent.parent.name}/{temp.parent.name}/{temp.name}")["final"]
    final = objects.location(results_root) / temp.parent.parent.name / temp.parent.name / name
    run_id = final.name.removesuffix(".parquet")
    strategy = final.parent.name.partition("=")[2]
    if final.exists() or not SAFE_NAME.match(run_id) or not SAFE_NAME.match(strategy):
        return
    try:
        started = datetime.strptime(run_id[:22], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:  # a run id of another form: the results folder's day
        started = datetime.fromisoformat(final.parent.parent.name.partition("=")[2]).replace(tzinfo=UTC)
    with contextlib.suppress(PipelineError, OSError):  # recorded already (another command swept it too)
        append_run_metrics(results_root, run_id, started_at=started,
                           duration_s=max(last_write - started.timestamp(), 0.0), strategy=strategy,
                           n_symbols=None, n_results=0, bars=None, command="(killed)", interrupted=True)
