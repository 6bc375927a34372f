"""Loading prices into PostgreSQL: binary COPY in the caller's transaction, in one of LOAD_MODES,
over one connection (`PriceLoad`, `load_prices`) or several (`load_prices_parallel`)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
import psycopg

from pipeline.core import intervals as iv
from pipeline.core.errors import InputError
from pipeline.source.binary_copy import copy_frames
from pipeline.source.postgres import connect, load_sql, register_symbols

# How a load meets a symbol's existing bars: `new` (it has none: straight COPY), `merge`
# (new bars are added, a differing bar is a conflict and nothing is written), `replace`
# (the load becomes the symbol's whole series).
LOAD_MODES = ("new", "merge", "replace")


@dataclass(frozen=True)
class LoadCounts:
    """What a load did: rows sent, rows that changed (inserted, updated or deleted), and per
    crypto id the bars that differ from existing ones (a `merge` with conflicts writes nothing)."""

    sent: int = 0
    changed: int = 0
    conflicts: dict[int, tuple[int, datetime]] = field(default_factory=dict)  # id -> (differing, first at)

    def __add__(self, other: LoadCounts) -> LoadCounts:
        return LoadCounts(self.sent + other.sent, self.changed + other.changed,
                          {**self.conflicts, **other.conflicts})


class PriceLoad:
    """One load of price frames, written with binary COPY in the caller's transaction as they come
    (`add`, any number of times: memory holds one batch, not the load) and settled by `finish`.

    `mode` is one of LOAD_MODES: `new` copies straight into crypto_prices (a duplicate key fails
    the whole load); `merge` copies into a staging table, refuses (returns the conflicts, writes
    nothing) if any staged bar of a symbol's native interval (`natives`: crypto id -> interval,
    default 1h) differs from an existing one, else inserts new bars and updates derived ones; `replace`
    makes the staged bars the symbols' whole series. Identical bars are never rewritten, so a
    repeated load changes 0 rows. The caller rolls back when there are conflicts.
    """

    def __init__(self, conn: psycopg.Connection, *, mode: str, natives: dict[int, str] | None = None,
                 chunk_rows: int = 500_000, progress: Callable[[int], None] | None = None) -> None:
        if mode not in LOAD_MODES:
            raise ValueError(f"mode {mode!r} is not one of {LOAD_MODES}")
        self.conn, self.mode, self.natives = conn, mode, natives or {}
        self.chunk_rows, self.progress = chunk_rows, progress
        self.sent, self.ids = 0, set()
        if mode != "new":
            conn.execute(load_sql("create_staging_prices.sql"))

    def add(self, frames: dict[str, pl.DataFrame]) -> None:
        """Copy price frames (keyed by interval; columns crypto_id, ts, open..volume)."""
        for interval in frames:
            if interval not in iv.SECONDS:
                raise InputError(f"interval {interval!r} is not allowed; use one of {', '.join(iv.NAMES)}")
        target = "crypto_prices" if self.mode == "new" else "staging_prices"
        with self.conn.cursor() as cursor:
            self.sent += copy_frames(cursor, target, frames, self.chunk_rows, self.progress)
        self.ids.update(int(i) for frame in frames.values() for i in frame["crypto_id"].unique().to_list())

    def finish(self) -> LoadCounts:
        if self.mode == "new":
            return LoadCounts(self.sent, self.sent)
        ids = sorted(self.ids)
        deleted = 0
        with self.conn.cursor() as cursor:
            if self.mode == "merge":
                pairs = {"ids": ids, "natives": [self.natives.get(i, "1h") for i in ids]}
                conflicts = {crypto_id: (int(n), first) for crypto_id, n, first in
                             cursor.execute(load_sql("conflicting_prices.sql"), pairs).fetchall()}
                if conflicts:
                    return LoadCounts(self.sent, 0, conflicts)
            else:
                deleted = int(cursor.execute(load_sql("replace_series.sql"), {"ids": ids}).fetchone()[0])
            cursor.execute(load_sql("merge_staging_prices.sql"))
            return LoadCounts(self.sent, deleted + max(cursor.rowcount, 0))


def load_prices(
    conn: psycopg.Connection,
    frames: dict[str, pl.DataFrame],
    *,
    mode: str,
    natives: dict[int, str] | None = None,
    chunk_rows: int = 500_000,
    progress: Callable[[int], None] | None = None,
) -> LoadCounts:
    """Write price frames (keyed by interval) in one `PriceLoad` (which says what each mode does)."""
    load = PriceLoad(conn, mode=mode, natives=natives, chunk_rows=chunk_rows, progress=progress)
    load.add(frames)
    return load.finish()


def load_prices_parallel(
    url: str,
    symbols: list[str],
    frames: dict[str, pl.DataFrame],
    *,
    mode: str,
    connections: int = 2,
    progress: Callable[[int], None] | None = None,
) -> tuple[LoadCounts, dict[str, int]]:
    """`load_prices` of `symbols` split over `connections` connections (one backend per core). `frames`
    (keyed by interval) identify a row's symbol by `symbol_index`, its position in `symbols`.

    Each connection registers its share of the symbols in the same transaction that copies their
    prices, so a symbol is never committed without them (a killed load leaves none behind), and
    commits only once all have copied without a conflict: a failure or a conflict in any of them
    rolls every one back. Returns the counts and every symbol's id.
    """
    connections = max(1, min(connections, len(symbols)))
    shards = [list(range(shard, len(symbols), connections)) for shard in range(connections)]

    def load_shard(conn: psycopg.Connection, indexes: list[int]) -> tuple[LoadCounts, dict[str, int]]:
        ids = register_symbols(conn, [symbols[i] for i in indexes])
        lookup = pl.DataFrame({"symbol_index": indexes, "crypto_id": [ids[symbols[i]] for i in indexes]},
                              schema={"symbol_index": pl.Int32, "crypto_id": pl.Int32})
        own = {interval: frame.join(lookup, on="symbol_index").drop("symbol_index") for interval, frame in frames.items()}
        return load_prices(conn, own, mode=mode, progress=progress), ids

    conns = [connect(url) for _ in range(connections)]
    try:
        with ThreadPoolExecutor(max_workers=connections) as pool:
            parts = list(pool.map(lambda pair: load_shard(*pair), zip(conns, shards, strict=True)))
        counts = sum((part for part, _ in parts), LoadCounts())
        for conn in conns:
            if counts.conflicts:
                conn.rollback()
            else:
                conn.commit()
    except BaseException:
        for conn in conns:
            conn.rollback()
        raise
    finally:
        for conn in conns:
            conn.close()
    return counts, {name: crypto_id for _, ids in parts for name, crypto_id in ids.items()}
