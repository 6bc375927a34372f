"""The lake's commit: changed bars into a new snapshot, made current atomically.

A commit reads as its steps: plan (pipeline.lake.plan: the parent it builds on, checked, and what
changes), stage (pipeline.lake.staging: the changed years written, the rest linked), verify (what
changed, and its data health: `strict` refuses findings), publish (manifest and export state written
and synced, the folder renamed into ``snapshots/``, `current` pointed at it). Retention
(pipeline.lake.retention) is the export's next step, under the same lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core import formats
from pipeline.core.errors import LakeBusy, PipelineError
from pipeline.core.objects import ObjectPath
from pipeline.lake import futures_table, staging
from pipeline.lake.plan import CommitPlan, plan_commit
from pipeline.lake.rowhash import ROW_HASH, data_version, year_sums
from pipeline.lake.snapshots import (
    MANIFEST,
    MANIFEST_CHECKSUM,
    STATE,
    Snapshot,
    all_file_records,
    fsync_dir,
    head_key,
    list_heads,
    load_snapshot,
    manifest_checksum,
    new_snapshot_id,
)
from pipeline.source import health

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class CommitResult:
    snapshot: Snapshot
    created: bool  # False: nothing changed, the current snapshot stands
    changed_symbols: list[str]
    rows_read: int
    files_written: int
    files_linked: int
    rows_written: int = 0  # rows in the files this commit wrote (linked files cost nothing)
    bytes_written: int = 0


def commit(
    lake_root: Path,
    bars: pl.DataFrame,
    natives: dict[str, str],
    *,
    full: bool,
    watermark: datetime | None,
    rows_read: int,
    source: str,
    whole: set[str] | frozenset[str] = frozenset(),
    refused: dict[str, str] | None = None,
    derived: tuple[str, ...] = ("1h", "1d"),
    thresholds: health.Thresholds | None = None,
    strict: bool = False,
    fail_at: str | None = None,
    futures: pl.DataFrame | None = None,
) -> CommitResult:
    """Merge changed bars into a new snapshot and make it current, atomically.

    `bars` has symbol, ts, open..volume: each symbol's rows at its native interval
    (`natives[symbol]`). A symbol is its name: the lake assigns its own ids. With `full`, `bars`
    is the whole source and replaces the lake (symbols and rows it lacks disappear); a source
    other than the current snapshot's always commits as full (a lake holds one source's
    data). Otherwise rows are upserted into the current snapshot, and the symbols in `whole`
    (or whose native interval changed) are replaced by their rows in `bars`. A symbol in `refused`
    (name -> what is wrong with its source rows; it has no rows in `bars`) keeps its bars of the
    current snapshot, full or not, if that snapshot came from the same source, else is left out;
    the manifest lists it under `refused` (the next export reads it whole). Coarser intervals
    are derived from the native rows. If no symbol's content changed, nothing is written and
    the current snapshot stands (idempotent export). Data health is measured per (symbol,
    year) as years are written and recorded in the manifest (`symbols.<name>.health`); with
    `strict`, a changed symbol with findings refuses the commit. The caller holds
    `export_lock`. `fail_at` names a step at which to die (tests). `futures` are the perpetuals'
    funding and mark rows, whole (pipeline.lake.futures_table; None keeps the parent's): a change in
    them alone makes a new snapshot too, naming the perpetuals it changed.
    """
    lake_root = lake_root if isinstance(lake_root, ObjectPath) else Path(lake_root)
    # On object storage the commit writes the head after the newest one now: one written meanwhile
    # (another export) makes this commit lose instead of overwriting it.
    base_seq = heads[-1]["seq"] if isinstance(lake_root, ObjectPath) and (heads := list_heads(lake_root)) else 0
    thresholds = thresholds or health.Thresholds()
    plan = plan_commit(lake_root, bars, natives, full=full, source=source, whole=whole,
                       refused=dict(sorted((refused or {}).items())))
    snapshot_id = new_snapshot_id()
    with staging.folder(lake_root, snapshot_id) as folder:
        staged = staging.write_parts(plan, folder, derived, thresholds, fail_at)
        parent_futures = plan.parent.manifest.get("futures") if plan.parent is not None else None
        futures_record = futures_table.stage(
            futures, folder, parent_futures,
            plan.parent.path / parent_futures["path"] if parent_futures and plan.parent is not None else None)
        before = (parent_futures or {}).get("symbols", {})
        after = (futures_record or {}).get("symbols", {})
        changed = changed_symbols(plan, staged) | {n for n in set(before) | set(after) if before.get(n) != after.get(n)}
        if not changed and plan.parent is not None and plan.refused == plan.parent.manifest.get("refused", {}):
            shutil.rmtree(folder)
            return CommitResult(plan.parent, False, [], rows_read, 0, 0)
        files = staging.link_unchanged(plan, staged, folder)
        symbols, state = symbol_entries(plan, staged, thresholds)
        verify_health(symbols, changed, strict)
        manifest = _manifest(plan, snapshot_id, files, symbols, changed, watermark=watermark, rows_read=rows_read,
                             thresholds=thresholds)
        if futures_record is not None:
            manifest["futures"] = futures_record
        if isinstance(lake_root, ObjectPath):
            final = publish_objects(lake_root, folder, snapshot_id, manifest, state, plan.parent, base_seq, fail_at)
        else:
            final = publish(lake_root, folder, snapshot_id, manifest, state, fail_at)
    return CommitResult(load_snapshot(final), True, sorted(changed), rows_read, files.written, files.linked,
                        files.rows_written, files.bytes_written)


def changed_symbols(plan: CommitPlan, staged: staging.Staged) -> set[str]:
    """The symbols whose content (per-year row-sum hashes) or native interval the commit changes."""
    if plan.rehash:
        changed = set(staged.year_hashes) | set(plan.state)
    else:
        changed = {name for name in set(staged.year_hashes) | set(staged.old_sums)
                   if year_sums(staged.year_hashes.get(name, {})) != staged.old_sums.get(name, {})}
    # A symbol whose native interval changed changes even if its hashes happen to agree.
    return changed | {n for n in plan.new_natives
                      if n in plan.parent_natives and plan.parent_natives[n] != plan.new_natives[n]}


def symbol_entries(plan: CommitPlan, staged: staging.Staged,
                   thresholds: health.Thresholds) -> tuple[dict[str, dict], dict[str, dict]]:
    """Each symbol's manifest entry (id, data version, native, span per interval, health findings) and
    its export state (per-part hashes, stats and health)."""
    symbols: dict[str, dict] = {}
    state: dict[str, dict] = {}
    for name in sorted(staged.year_hashes):
        hashes = staged.year_hashes[name]
        if not hashes or name not in plan.new_natives:
            continue
        native = plan.new_natives[name]
        meta = {"symbol_id": plan.ids[name], "data_version": data_version(hashes, native), "native": native}
        per_interval_stats = {iv: per for iv, per in staged.year_stats.get(name, {}).items() if per}
        state[name] = {"native": native, "year_hashes": hashes, "year_stats": per_interval_stats,
                       "year_health": staged.year_health.get(name, {})}
        for interval, per_year in per_interval_stats.items():
            meta[interval] = {
                "first": min(s["first"] for s in per_year.values()),
                "last": max(s["last"] for s in per_year.values()),
                "bars": sum(s["bars"] for s in per_year.values()),
            }
        parts = list(staged.year_health.get(name, {}).values())
        if parts:
            combined = health.combine(parts, thresholds)
            meta["gaps"] = combined["gaps"]
            meta["health"] = health.findings(combined, thresholds)
        symbols[name] = meta
    return symbols, state


def verify_health(symbols: dict[str, dict], changed: set[str], strict: bool) -> None:
    """With `strict`, refuse the commit if a changed symbol has data findings."""
    flagged = sorted(n for n in changed if symbols.get(n, {}).get("health"))
    if strict and flagged:
        raise PipelineError(
            f"--strict: {len(flagged)} changed symbol(s) have data findings ({flagged[0]}: "
            f"{'; '.join(symbols[flagged[0]]['health'])}); no snapshot was written. "
            "`cryptobt data check` lists them; export without --strict to keep them as warnings")


def _manifest(plan: CommitPlan, snapshot_id: str, files: staging.StagedFiles, symbols: dict[str, dict],
              changed: set[str], *, watermark: datetime | None, rows_read: int, thresholds: health.Thresholds) -> dict:
    parent = plan.parent
    manifest = {
        "snapshot_id": snapshot_id,
        "created_at": datetime.now(UTC).isoformat(),
        "parent": parent.id if parent else None,
        "source": plan.source,
        "full": plan.full,
        "watermark": watermark.isoformat() if watermark else (
            parent.manifest.get("watermark") if parent and not plan.full else None),
        "rows_read": rows_read,
        "changed_symbols": sorted(changed),
        "refused": plan.refused,
        "health_thresholds": {"jump_ratio": thresholds.jump_ratio, "stale_bars": thresholds.stale_bars},
        "files": files.files,
        "row_hash": ROW_HASH,
        "symbols": symbols,
    }
    return formats.LAKE_MANIFEST.stamped(manifest)


def publish(lake_root: Path, folder: Path, snapshot_id: str, manifest: dict, state: dict[str, dict],
            fail_at: str | None = None) -> Path:
    """Write the export state and the manifest (each checksummed) into the staged `folder`, sync it,
    rename it into ``snapshots/`` and point `current` at it; the snapshot's path."""
    _seal(folder, manifest, state)
    if fail_at == "before-commit":
        os._exit(137)
    final = lake_root / "snapshots" / snapshot_id
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(folder, final)
    fsync_dir(final.parent)
    _point_current(lake_root, final)
    return final


def _seal(folder: Path, manifest: dict, state: dict[str, dict]) -> None:
    """Write the export state and the manifest, each checksummed, into the staged `folder`, synced."""
    state_text = json.dumps(formats.EXPORT_STATE.stamped({"symbols": state}), sort_keys=True)
    (folder / STATE).write_text(state_text)
    manifest["state_sha256"] = hashlib.sha256(state_text.encode()).hexdigest()
    manifest[MANIFEST_CHECKSUM] = manifest_checksum(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    fsync_dir(folder)


def publish_objects(lake_root: ObjectPath, folder: Path, snapshot_id: str, manifest: dict,
                    state: dict[str, dict], parent: Snapshot | None, base_seq: int,
                    fail_at: str | None = None) -> ObjectPath:
    """`publish` on object storage: upload the staged files (a file the commit kept from the parent is
    a server-side copy of the parent's object), the export state, the manifest, then write the head
    `base_seq + 1` only if no object has its key. Until that head exists no reader lists or reads the
    snapshot; if another export wrote it first, this one removes what it uploaded and says so."""
    _seal(folder, manifest, state)
    final = lake_root / "snapshots" / snapshot_id

    def put(relative: str) -> None:
        local = folder / relative
        if local.exists():
            (final / relative).upload(local)
        else:  # kept from the parent: staging did not link it (no links on object storage)
            assert parent is not None, relative
            (final / relative).copy_from(parent.path / relative)

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:  # S3 latency, not bandwidth, bounds small files
            list(pool.map(put, [record["path"] for record in all_file_records(manifest)] + [STATE]))
        put(MANIFEST)
        if fail_at == "before-commit":
            os._exit(137)
        head = {"seq": base_seq + 1, "snapshot_id": snapshot_id, "parent": parent.id if parent else None}
        won = (lake_root / head_key(base_seq + 1)).put_if_absent(json.dumps(head, sort_keys=True).encode())
    except BaseException:
        final.remove_tree()
        raise
    if not won:
        final.remove_tree()
        try:
            winner = json.loads((lake_root / head_key(base_seq + 1)).read_text())["snapshot_id"]
        except (OSError, ValueError, KeyError, TypeError):
            winner = "(unreadable head)"
        raise LakeBusy(f"another export committed snapshot {winner} to {lake_root} while this one was being built; "
                       "nothing of this export was kept: run it again (it builds on the new snapshot)")
    shutil.rmtree(folder, ignore_errors=True)
    return final


def _point_current(lake_root: Path, target: Path) -> None:
    # rename() over the old link is atomic: a reader resolves either the old or the new.
    temporary = lake_root / f".current-{secrets.token_hex(4)}"
    os.symlink(os.path.relpath(target, lake_root), temporary)
    os.replace(temporary, lake_root / "current")
    fsync_dir(lake_root)
