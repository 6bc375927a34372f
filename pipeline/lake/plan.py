"""What a commit changes, decided before anything is written: the snapshot it builds on (checked),
each symbol's native interval and lake id, the symbols replaced whole and the years rewritten.

`commit` (pipeline.lake.commit) plans, then stages (pipeline.lake.staging) what the plan says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core import import_guard as imports
from pipeline.core.errors import PipelineError, SnapshotDamaged
from pipeline.lake.rowhash import ROW_HASH, part_year
from pipeline.lake.snapshots import Snapshot, current_snapshot, load_state
from pipeline.lake.verify import check_snapshot

if TYPE_CHECKING:
    import polars as pl
else:
    pl = imports.deferred("polars")  # only the writer (commit) needs it: a run reads with DuckDB


@dataclass
class CommitPlan:
    """One commit's decisions; see `plan_commit`."""

    lake_root: Path
    parent: Snapshot | None  # the snapshot built on (None: a new lake, or a full rebuild past damage)
    state: dict  # the parent's export state: symbol -> its per-part hashes, stats and health
    source: str
    full: bool
    refused: dict[str, str]
    kept: set[str]  # refused symbols whose parent bars stay as they are
    whole: set[str]  # symbols replaced by their rows in `bars`
    parent_natives: dict[str, str]
    new_natives: dict[str, str]
    ids: dict[str, int]
    bars: pl.DataFrame  # the rows to merge, with their lake `symbol_id`, `_native` and `bars` (1)
    rehash: bool  # a lake written before row-sum hashes: rehashed whole, once
    years: set[int]  # the years rewritten
    whole_years: set[int]  # the years holding rows of a symbol replaced whole
    newest_year: int | None  # the year a full rewrite splits into base + tail

    @property
    def parent_files(self) -> dict[str, dict[str, dict]]:
        return self.parent.manifest["files"] if self.parent else {}

    @property
    def names_of(self) -> dict[int, str]:
        return {sid: name for name, sid in self.ids.items()}


def plan_commit(
    lake_root: Path,
    bars: pl.DataFrame,
    natives: dict[str, str],
    *,
    full: bool,
    source: str,
    whole: set[str] | frozenset[str],
    refused: dict[str, str],
) -> CommitPlan:
    """The plan of a commit of `bars` (see `commit` for what the arguments mean)."""
    parent, state, full = _parent(lake_root, source, full)
    parent_natives = {name: meta.get("native", "1h") for name, meta in state.items()}
    delta_names = set(bars["symbol"].unique().to_list())
    unknown = sorted(delta_names - set(natives))
    if unknown:
        raise PipelineError(f"bars for symbol(s) without a native interval: {', '.join(unknown[:5])}")
    # Refused symbols whose current bars stay as they are (never another source's bars for this one's symbol).
    kept = set(refused) & set(parent_natives) if parent and parent.manifest.get("source") == source else set()
    whole, new_natives = _natives(natives, parent_natives, delta_names, kept, whole, full)
    ids = _assign_ids(parent, set(new_natives) | set(parent_natives))
    bars = _with_ids(bars, ids, new_natives)
    parent_years = {int(y) for per in (parent.manifest["files"] if parent else {}).values() for y in per}
    rehash = parent is not None and parent.manifest.get("row_hash") != ROW_HASH
    years = set(bars["ts"].dt.year().unique().to_list())
    whole_years = {part_year(key) for name in whole for key in state.get(name, {}).get("year_hashes", {})}
    years |= parent_years if full or rehash else whole_years
    return CommitPlan(
        lake_root=lake_root, parent=parent, state=state, source=source, full=full, refused=refused, kept=kept, whole=whole, parent_natives=parent_natives,
        new_natives=new_natives, ids=ids, bars=bars, rehash=rehash, years=years, whole_years=whole_years,
        newest_year=max(parent_years | years, default=None))


def _parent(lake_root: Path, source: str, full: bool) -> tuple[Snapshot | None, dict, bool]:
    """The snapshot to build on, its export state, and whether the commit is full: a source other than
    the current snapshot's always is (a lake holds one source's data). A full commit checks every file's
    sha256 (rot keeps size and mtime, and unchanged rows would otherwise keep it current) and rebuilds
    from the source alone past any damage; an incremental one refuses a damaged parent."""
    try:
        parent = current_snapshot(lake_root)
        if parent is not None and parent.manifest.get("source") != source:
            full = True
        state = load_state(parent)
        if full and parent is not None:
            check_snapshot(parent, deep=True)
    except SnapshotDamaged:
        if not full:
            raise
        return None, {}, full
    return parent, state, full


def _natives(natives: dict[str, str], parent_natives: dict[str, str], delta_names: set[str], kept: set[str],
             whole: set[str] | frozenset[str], full: bool) -> tuple[set[str], dict[str, str]]:
    """The symbols replaced whole, and every symbol's native interval in the new snapshot."""
    if full:
        whole = set(natives) - kept
        new_natives = {**{name: natives[name] for name in delta_names}, **{n: parent_natives[n] for n in kept}}
        return whole, new_natives
    whole = (set(whole) | {n for n in delta_names if parent_natives.get(n, natives[n]) != natives[n]}) - kept
    new_natives = {**parent_natives, **{n: natives[n] for n in delta_names | (whole & set(natives))}}
    for name in whole - delta_names:  # replaced by nothing: the symbol is gone
        new_natives.pop(name, None)
    return whole, new_natives


def _assign_ids(parent: Snapshot | None, names: set[str]) -> dict[str, int]:
    """The lake's own ids: a name keeps the id it has in this lake; a new name gets the next one.
    Ids never come from a source, so two sources' ids can never clash (the name is the identity)."""
    ids = {name: int(meta["symbol_id"]) for name, meta in (parent.symbols.items() if parent else [])
           if name in names}
    next_id = max([int(m["symbol_id"]) for m in parent.symbols.values()] if parent else [0], default=0) + 1
    for name in sorted(names - set(ids)):
        ids[name] = next_id
        next_id += 1
    return ids


def _with_ids(bars: pl.DataFrame, ids: dict[str, int], new_natives: dict[str, str]) -> pl.DataFrame:
    """`bars` with each row's lake `symbol_id` and `_native`, and `bars` = 1 (a native bar counts itself)."""
    # Joined on the distinct names only, in the rows' own symbol type (an export's Enum joins by code).
    present = bars["symbol"].unique()
    id_frame = pl.DataFrame({
        "symbol": present,
        "symbol_id": pl.Series([ids.get(name) for name in present.to_list()], dtype=pl.Int32),
        "_native": pl.Series([new_natives.get(name) for name in present.to_list()], dtype=pl.String),
    }).filter(pl.col("symbol_id").is_not_null())
    return bars.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC"))).join(id_frame, on="symbol").with_columns(
        pl.lit(1, pl.Int32).alias("bars"))
