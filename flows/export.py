"""Prefect flow: export PostgreSQL into a new lake snapshot (hourly schedule).

The flow is the plan; each step is a task that can be retried on its own and hands
the next one a path. The export lock is held for the whole plan.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.core.config import Settings
from pipeline.lake import export
from pipeline.lake import snapshots as lake
from pipeline.lake.commit import CommitResult


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a restart of PostgreSQL explains (`export.is_transient`); a bad query fails at once."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the predicate decides
        return export.is_transient(exc)
    return False


@task(name="extract-changed-rows", retries=len(export.EXTRACT_RETRY_DELAYS),
      retry_delay_seconds=list(export.EXTRACT_RETRY_DELAYS),
      retry_condition_fn=_transient, cache_policy=NO_CACHE)
def extract_task(settings: Settings, since: Any) -> export.StagedExtract:
    staged = export.extract_to_staging(settings, since)
    get_run_logger().info("read %s rows changed since %s in %.2f s", f"{staged.rows_read:,}",
                          since.isoformat() if since else "the beginning", staged.seconds)
    return staged


@task(name="commit-snapshot", cache_policy=NO_CACHE)
def commit_task(settings: Settings, staged: export.StagedExtract, full: bool,
                strict: bool = False) -> CommitResult:
    result = export.commit_staged(settings, staged, full, strict=strict)
    logger = get_run_logger()
    for line in export.warnings(staged, result):
        logger.warning(line)
    if result.created:
        logger.info("snapshot %s: %d symbols changed, %d files written, %d linked", result.snapshot.id,
                    len(result.changed_symbols), result.files_written, result.files_linked)
    else:
        logger.info("nothing changed; snapshot %s stands", result.snapshot.id)
    return result


@task(name="vacuum-snapshots", cache_policy=NO_CACHE)
def vacuum_task(settings: Settings) -> list[str]:
    removed = export.vacuum(settings)
    if removed:
        get_run_logger().info("removed %d old snapshot(s): %s", len(removed), ", ".join(removed))
    return removed


@flow(name="export-prices", log_prints=True)
def export_flow(full: bool = False, wait_seconds: float = 0.0, strict: bool = False) -> dict[str, Any]:
    """PostgreSQL -> lake snapshot: incremental unless `full`."""
    settings = Settings.from_env()
    lake.check_writable(settings.lake_root)
    with lake.export_lock(settings.lake_root, wait_seconds=wait_seconds):
        planned = export.plan(settings, full)
        for line in planned.warnings:
            get_run_logger().warning(line)
        staged = extract_task(settings, planned.since)
        result = commit_task(settings, staged, planned.full, strict)
        removed = vacuum_task(settings)
    return {
        "snapshot_id": result.snapshot.id, "created": result.created, "rows_read": result.rows_read,
        "changed_symbols": result.changed_symbols, "removed_snapshots": removed,
        "warnings": planned.warnings + export.warnings(staged, result),
    }

