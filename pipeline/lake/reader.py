"""DuckDB reads from the lake into aligned arrays for the kernels: one batched read.

For a set of symbols (or all), an interval, a date range and a column list, one
DuckDB scan over the snapshot's files (only the years in range; row groups of other
symbols are skipped by their statistics) fills (symbols x time) float64 arrays on a
regular grid, NaN where a symbol has no bar. Kernels skip NaN bars, so a gap stays a
gap (SPEC section 3).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline.core import intervals, markets, objects
from pipeline.core.errors import PipelineError, SnapshotDamaged
from pipeline.core.objects import ObjectPath
from pipeline.lake import grids
from pipeline.lake import snapshots as lake
from pipeline.lake.align import bar_span, funding_to_grid, scatter_to_grid
from pipeline.lake.verify import check_files

if TYPE_CHECKING:
    import duckdb
    import polars as pl

ALLOWED_COLUMNS = ("open", "high", "low", "close", "volume")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Rows per Arrow batch asked of DuckDB (it hands over a row group, 65,536 rows, at a time).
BATCH_ROWS = 1_000_000
DEFAULT_MAX_POINTS = 50_000


@dataclass
class PriceBatch:
    """Aligned prices of many symbols: `columns[name][i, t]` is symbol i at `times[t]`."""

    snapshot_id: str
    interval: str
    symbols: list[str]
    times: np.ndarray  # int64 epoch seconds of each grid column (bar open time, UTC)
    columns: dict[str, np.ndarray]
    data_versions: list[str]
    requested_start: datetime | None = None
    requested_end: datetime | None = None
    bars: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Share of an interval's hours a bar was built from (a daily bar from 3 hours: 0.125); None = all whole.
    coverage: np.ndarray | None = None
    # Where the bars came from (the snapshot's source: `postgresql://host:port/db`, `sample`, `frames`).
    source: str = ""
    # --detail: the same symbols' finer bars (open, high, low, close) on a grid of their own.
    detail: PriceBatch | None = None

    @property
    def bars_per_year(self) -> int:
        return intervals.BARS_PER_YEAR[self.interval]

    def first_last(self) -> tuple[np.ndarray, np.ndarray]:
        """Grid index of each symbol's first and last bar (-1 when it has none)."""
        valid = ~np.isnan(self.columns["close"])
        has = valid.any(axis=1)
        first = np.where(has, valid.argmax(axis=1), -1)
        last = np.where(has, valid.shape[1] - 1 - valid[:, ::-1].argmax(axis=1), -1)
        return first, last


_local = threading.local()


def connect_duckdb() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection as every part of the project opens one: without DuckDB's
    progress bar, which a query past two seconds (a busy machine) printed into stdout, into the
    middle of `--json` output."""
    import duckdb  # not before a scan: a read of a kept grid (pipeline.lake.grids) needs none

    con = duckdb.connect(":memory:")
    con.execute("SET enable_progress_bar = false")
    return con


def _connection() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB connection per thread: opening one costs ~15 ms."""
    con = getattr(_local, "con", None)
    if con is None:
        con = _local.con = connect_duckdb()
    return con


def _sql(snapshot: lake.Snapshot, query: str, params: dict[str, object]) -> duckdb.DuckDBPyRelation:
    """`query` over `read_parquet($files)`; for a snapshot on object storage over a pyarrow dataset of the
    same files (pipeline.core.objects.dataset) in its place: DuckDB pushes the columns and the range
    filters into pyarrow's scan, which reads only those row groups' column chunks."""
    con = _connection()
    if isinstance(snapshot.path, ObjectPath):
        con.register("lake_files", objects.dataset([ObjectPath(f) for f in params["files"]]))  # type: ignore[union-attr]
        query = query.replace("read_parquet($files)", "lake_files")
        params = {k: v for k, v in params.items() if k != "files"}
    return con.sql(query, params=params)


# Dates a --timerange may name: Unix time's start to the last day nanosecond timestamps reach.
TIMERANGE_FIRST = datetime(1970, 1, 1, tzinfo=UTC)
TIMERANGE_LAST = datetime(2262, 4, 10, tzinfo=UTC)


def parse_timerange(text: str | None) -> tuple[datetime | None, datetime | None]:
    """freqtrade's `YYYYMMDD-YYYYMMDD`, either side open (`20240101-`, `-20241231`).

    The end date is inclusive: `20240101-20240131` covers all of January.
    """
    if text is None or text.strip() == "":
        return None, None
    parts = text.strip().split("-")
    if len(parts) != 2:
        raise PipelineError(f"--timerange {text!r} is not YYYYMMDD-YYYYMMDD (either side may be empty)")

    def parse(part: str) -> datetime | None:
        if part == "":
            return None
        # Exactly 8 ASCII digits: strptime alone reads `2024111` as 2024-11-01 and takes other scripts' digits.
        if not (len(part) == 8 and part.isascii() and part.isdigit()):
            raise PipelineError(f"--timerange {text!r}: {part!r} is not a date in YYYYMMDD form (8 digits)")
        try:
            day = datetime.strptime(part, "%Y%m%d").replace(tzinfo=UTC)
        except ValueError:
            raise PipelineError(f"--timerange {text!r}: {part!r} is not a date in YYYYMMDD form") from None
        if not TIMERANGE_FIRST <= day <= TIMERANGE_LAST:
            raise PipelineError(f"--timerange {text!r}: {part!r} is out of range: dates from "
                                f"{TIMERANGE_FIRST:%Y%m%d} to {TIMERANGE_LAST:%Y%m%d}")
        return day

    start, end = parse(parts[0]), parse(parts[1])
    if start is None and end is None:
        raise PipelineError(f"--timerange {text!r} names no date; use YYYYMMDD-YYYYMMDD")
    if end is not None:
        end = end + timedelta(days=1)  # inclusive end day -> exclusive bound
    if start is not None and end is not None and start >= end:
        raise PipelineError(f"--timerange {text!r}: start is after end")
    return start, end


def resolve_symbols(snapshot: lake.Snapshot, symbols: list[str] | None, market: str | None = None) -> list[str]:
    """The requested symbols in lake order, or all; unknown ones are an error naming them. With a
    `market`, the symbols' series on that market (`XRP_USDT` -> `XRP_USDT:futures`), or all of its series."""
    known = snapshot.symbols
    if market is not None:
        symbols = [markets.series_name(s, market) for s in symbols] if symbols else None
        if not symbols:
            return sorted(name for name in known if markets.market_of(name) == market)
    if not symbols:
        return sorted(known)
    missing = [s for s in symbols if s not in known]
    if missing:
        sample = ", ".join(sorted(known)[:8])
        raise PipelineError(
            f"unknown symbol(s) {', '.join(repr(s) for s in missing)}; snapshot {snapshot.id} has {len(known)} "
            f"symbols (e.g. {sample}); `cryptobt data list` lists them"
        )
    return list(dict.fromkeys(symbols))


def stored(meta: dict) -> list[str]:
    """The intervals the lake has files of for a symbol (its manifest entry), finest first."""
    return [name for name in intervals.NAMES if name in meta]


def read_from(meta: dict, interval: str) -> str | None:
    """The stored interval to read a symbol's `interval` bars from: itself, else the coarsest
    stored one that tiles it (aggregated on read); None when the symbol's bars are coarser."""
    have = stored(meta)
    if interval in have:
        return interval
    finer = [name for name in have if intervals.divides(name, interval)]
    return finer[-1] if finer else None


def check_readable(snapshot: lake.Snapshot, names: list[str], interval: str) -> None:
    """An error naming the symbols whose own bars are coarser than `interval`."""
    coarse = [n for n in names if read_from(snapshot.symbols[n], interval) is None]
    if coarse:
        described = ", ".join(f"{n} ({snapshot.symbols[n].get('native', stored(snapshot.symbols[n])[0])})"
                              for n in coarse[:5])
        raise PipelineError(f"no {interval} bars for {described}: a series can be read at its own interval or "
                            f"a coarser one; pass --interval with one of those, or leave these symbols out")


def choose_interval(snapshot: lake.Snapshot, symbols: list[str], start: datetime | None,
                    end: datetime | None, max_points: int) -> dict[str, str]:
    """`auto`, per symbol: 1h when the symbol's hourly bars in range span at most `max_points`
    hours, else 1d; a symbol whose own bars are coarser than 1h keeps its own interval."""
    chosen = {}
    for name in symbols:
        meta = snapshot.symbols[name]
        native = meta.get("native", "1h")
        if intervals.SECONDS[native] > intervals.SECONDS["1h"]:
            chosen[name] = native
            continue
        span = meta.get("1h") or meta.get(native)
        first, last = datetime.fromisoformat(span["first"]), datetime.fromisoformat(span["last"])
        lo = max(first, start) if start else first
        hi = min(last + timedelta(hours=1), end) if end else last + timedelta(hours=1)
        hours = max((hi - lo).total_seconds() / 3600, 0)
        chosen[name] = "1h" if hours <= max_points else "1d"
    return chosen


def _bar_unit_seconds(meta: dict, source: str) -> int:
    """What one unit of the lake's `bars` column is worth in seconds for `source` rows: a native
    bar counts itself; a derived bar counts the bars of the interval it was built from (the
    coarsest stored interval finer than it that tiles it: hours for a daily bar)."""
    native = meta.get("native", "1h")
    if source == native:
        return intervals.SECONDS[source]
    finer = [i for i in stored(meta) if i != source and intervals.divides(i, source)]
    return intervals.SECONDS[finer[-1]] if finer else intervals.SECONDS[source]


_AGGREGATE = {"open": "arg_min(open, ts)", "high": "max(high)", "low": "min(low)", "close": "arg_max(close, ts)",
              "volume": "sum(volume)"}


def read_prices(
    lake_root: Path,
    symbols: list[str] | None = None,
    interval: str = "1h",
    start: datetime | None = None,
    end: datetime | None = None,
    columns: tuple[str, ...] = ("open", "close"),
    max_points: int = DEFAULT_MAX_POINTS,
    snapshot: lake.Snapshot | None = None,
    min_coverage: float = 0.0,
) -> PriceBatch:
    """One batched read of `columns` for `symbols` (None = all) in [start, end).

    An interval the lake does not store for a symbol is aggregated on read from the coarsest
    stored one that tiles it (SPEC section 2 rules, UTC buckets, weeks from Monday).
    Bars coarser than an hour carry their coverage (hours used / hours in the interval);
    those below `min_coverage` are dropped (NaN, so the kernels skip them like any gap).
    """
    snapshot = snapshot or lake.require_snapshot(lake_root)
    names, interval, columns = _check_request(snapshot, symbols, interval, start, end, columns, max_points)
    versions = [snapshot.symbols[s]["data_version"] for s in names]
    ids = np.array([snapshot.symbols[s]["symbol_id"] for s in names], dtype=np.int64)
    source = snapshot.manifest.get("source", "")
    empty = PriceBatch(snapshot.id, interval, names, np.zeros(0, dtype=np.int64),
                       {c: np.full((len(names), 0), np.nan) for c in columns}, versions, start, end,
                       np.zeros(len(names), dtype=np.int64), source=source)
    if not names:
        return empty
    queries, scanned = _queries(snapshot, names, ids, bool(symbols), interval, columns, start, end)
    if not queries:
        return empty
    # A whole-history read of every symbol of a market (`--all`: the spot pairs, or the perpetuals) builds the
    # same grid each time on an immutable snapshot: kept beside the lake (pipeline.lake.grids), mapped and
    # checksummed instead of scanned the next time. (Keeping only reads of the whole lake missed every
    # `--all` on a lake holding both markets, the demo's: each run scanned it, and paid DuckDB's memory.)
    keep_grid = start is None and end is None and _whole_market(snapshot, names) and grids.enabled()
    kept = grids.load(lake_root, snapshot, interval, names, columns, min_coverage) if keep_grid else None
    if kept is not None:
        return PriceBatch(snapshot.id, interval, names, kept["times"], {c: kept[c] for c in columns}, versions,
                          start, end, kept["bars"], kept.get("coverage"), source=source)
    # The grid spans the first to the last bar read. A read of whole histories knows that span from
    # the manifest and places each batch of rows as it arrives (memory: the grid plus one batch);
    # a read of a time range learns it from the rows, so it holds them all first.
    span = None if start is not None or end is not None else _manifest_span(snapshot, names, interval)
    grid = _scan_to_grid(snapshot, queries, ids, interval, columns, span, min_coverage)
    if grid is None:
        return empty
    times, out, bars, coverage = grid
    if keep_grid:
        grids.store(lake_root, snapshot, interval, names, columns, min_coverage, scanned,
                    {"times": times, "bars": bars, **out, **({"coverage": coverage} if coverage is not None else {})})
    return PriceBatch(snapshot.id, interval, names, times, out, versions, start, end, bars, coverage, source=source)


def _whole_market(snapshot: lake.Snapshot, names: list[str]) -> bool:
    """Whether `names` are every symbol of one market of the snapshot."""
    market = markets.market_of(names[0])
    return set(names) == {n for n in snapshot.symbols if markets.market_of(n) == market}


def _check_request(snapshot: lake.Snapshot, symbols: list[str] | None, interval: str, start: datetime | None,
                   end: datetime | None, columns: tuple[str, ...],
                   max_points: int) -> tuple[list[str], str, tuple[str, ...]]:
    """The symbols read (lake order), the interval (`auto` resolved) and the columns (close first) of a
    read, or a one-line error naming what is wrong with it."""
    intervals.check(interval, extra=("auto",))
    bad = [c for c in columns if c not in ALLOWED_COLUMNS]
    if bad:
        raise PipelineError(f"unknown column(s) {', '.join(bad)}; allowed: {', '.join(ALLOWED_COLUMNS)}")
    if start is not None and end is not None and start >= end:
        raise PipelineError(f"start {start.isoformat()} is not before end {end.isoformat()}")
    names = resolve_symbols(snapshot, symbols)
    if interval == "auto":
        interval = max(choose_interval(snapshot, names, start, end, max_points).values(),
                       key=intervals.SECONDS.get, default="1h")
    check_readable(snapshot, names, interval)
    return names, interval, tuple(dict.fromkeys(("close", *columns)))


def _queries(snapshot: lake.Snapshot, names: list[str], ids: np.ndarray, chosen: bool, interval: str,
             columns: tuple[str, ...], start: datetime | None,
             end: datetime | None) -> tuple[list[tuple[str, dict[str, object]]], list[Path]]:
    """The DuckDB queries of a read (one per group of symbols read alike) and the files they scan
    (each checked against its recorded size and mtime). `chosen`: the caller named the symbols."""
    years = None
    if start is not None or end is not None:
        lo_year = start.year if start else 1970
        hi_year = (end - timedelta(microseconds=1)).year if end else 9999
        years = range(lo_year, hi_year + 1)
    # Groups of symbols read alike: from which stored interval, and what one unit of its `bars`
    # column is worth in seconds (the interval it was built from; a native bar counts itself).
    groups: dict[tuple[str, int], list[int]] = {}
    for name, symbol_id in zip(names, ids, strict=True):
        meta = snapshot.symbols[name]
        source = read_from(meta, interval)
        groups.setdefault((source, _bar_unit_seconds(meta, source)), []).append(int(symbol_id))
    queries: list[tuple[str, dict[str, object]]] = []
    scanned: list[Path] = []
    for (source, unit), group_ids in groups.items():
        paths = snapshot.files(source, years)
        check_files(snapshot, paths)
        scanned += paths
        if not paths:
            continue
        filters = []
        params: dict[str, object] = {"files": [str(p) for p in paths]}
        if chosen or len(groups) > 1:
            filters.append("list_contains($ids, symbol_id)")
            params["ids"] = group_ids
        if start is not None:
            filters.append("ts >= $start")
            params["start"] = start
        if end is not None:
            filters.append("ts < $end")
            params["end"] = end
        queries.append((_query(source, unit, interval, columns, filters), params))
    return queries, scanned


def _query(source: str, unit: int, interval: str, columns: tuple[str, ...], filters: list[str]) -> str:
    """The query of one group: symbol_id, ts (epoch us), `columns` and, for bars coarser than an hour,
    coverage; aggregated into `interval` buckets when read from a finer `source` interval."""
    where = ("WHERE " + " AND ".join(filters)) if filters else ""
    partial_possible = intervals.SECONDS[interval] > 3_600
    step_us = intervals.SECONDS[interval] * 1_000_000
    offset_us = intervals.BUCKET_OFFSET_SECONDS[interval] * 1_000_000
    # Coverage of a bar coarser than an hour: the share of its length the source bars fill.
    share = f"* {unit}.0 / {intervals.SECONDS[interval]}"
    if source == interval:
        select = ", ".join(columns) + (f", bars {share} AS coverage" if partial_possible else "")
        return f"SELECT symbol_id, epoch_us(ts) AS ts, {select} FROM read_parquet($files) {where}"  # noqa: S608 - names checked
    bucket = f"(epoch_us(ts) - {offset_us}) // {step_us} * {step_us} + {offset_us}"
    aggregates = ", ".join(f"{_AGGREGATE[c]} AS {c}" for c in columns)
    aggregates += f", sum(bars) {share} AS coverage" if partial_possible else ""
    query = (f"SELECT symbol_id, {bucket} AS bucket, {aggregates} "  # noqa: S608 - names checked
             f"FROM read_parquet($files) {where} GROUP BY ALL")
    picked = ", ".join(columns) + (", coverage" if partial_possible else "")
    return f"SELECT symbol_id, bucket AS ts, {picked} FROM ({query})"  # noqa: S608


def _scan_to_grid(snapshot: lake.Snapshot, queries: list[tuple[str, dict[str, object]]], ids: np.ndarray,
                  interval: str, columns: tuple[str, ...], span: tuple[int, int] | None, min_coverage: float,
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray | None] | None:
    """The rows of `queries` scattered onto the (symbols x time) grid spanning `span` (epoch us; None: the
    rows' own span): times (epoch seconds), the column matrices, each symbol's bar count and the coverage
    (bars under `min_coverage` made NaN); None when no row was read."""
    partial_possible = intervals.SECONDS[interval] > 3_600
    step_us = intervals.SECONDS[interval] * 1_000_000
    values = (*columns, "coverage") if partial_possible else columns
    batches = _batches(snapshot, queries)
    if span is None:
        batches = list(batches)
        ts_seen = [_as_numpy(batch.column("ts")) for batch in batches if batch.num_rows]
        if not ts_seen:
            return None
        span = min(int(ts.min()) for ts in ts_seen), max(int(ts.max()) for ts in ts_seen)
    t0, t_last = span
    width = (t_last - t0) // step_us + 1
    row_of = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    row_of[ids] = np.arange(ids.size)
    cells = {name: np.full((ids.size, width), np.nan) for name in values}
    outside = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        symbol_ids, ts = _as_numpy(batch.column("symbol_id")), _as_numpy(batch.column("ts"))
        for name in values:
            outside += scatter_to_grid(symbol_ids, ts, _as_numpy(batch.column(name)), row_of, t0, step_us,
                                      cells[name])
    out = {name: cells[name] for name in columns}
    # Every row inside the grid, and bars on its first and last column: the grid is the one the rows span.
    close = out["close"]
    if outside or np.isnan(close[:, 0]).all() or np.isnan(close[:, -1]).all():
        raise SnapshotDamaged(f"the files of snapshot {snapshot.id} do not hold the bars its manifest lists "
                              f"({interval}); `cryptobt lake verify` names damaged files; `cryptobt export --full` "
                              "writes a good snapshot")
    coverage = cells.get("coverage")
    if coverage is not None and min_coverage > 0:
        thin = coverage < min_coverage
        for matrix in (*out.values(), coverage):
            matrix[thin] = np.nan
    times = t0 // 1_000_000 + np.arange(width, dtype=np.int64) * intervals.SECONDS[interval]
    return times, out, bar_span(close, 0)[0], coverage


def _manifest_span(snapshot: lake.Snapshot, names: list[str], interval: str) -> tuple[int, int] | None:
    """First and last bar time (epoch us) of the whole histories of `names` read at `interval`, from the
    manifest; None when an entry lacks them."""
    step_us = intervals.SECONDS[interval] * 1_000_000
    offset_us = intervals.BUCKET_OFFSET_SECONDS[interval] * 1_000_000
    firsts, lasts = [], []
    for name in names:
        meta = snapshot.symbols[name]
        source = read_from(meta, interval)
        stats = meta.get(source) if source else None
        if not stats or "first" not in stats or "last" not in stats:
            return None
        first, last = _epoch_us(stats["first"]), _epoch_us(stats["last"])
        if source != interval:  # aggregated on read: the buckets of those bars (the query's arithmetic)
            first = (first - offset_us) // step_us * step_us + offset_us
            last = (last - offset_us) // step_us * step_us + offset_us
        firsts.append(first)
        lasts.append(last)
    return min(firsts), max(lasts)


def _epoch_us(iso: str) -> int:
    return (datetime.fromisoformat(iso) - EPOCH) // timedelta(microseconds=1)


def _batches(snapshot: lake.Snapshot, queries: list[tuple[str, dict[str, object]]]) -> Iterator[pa.RecordBatch]:
    """The rows of each query, one Arrow batch (a row group) at a time."""
    import duckdb

    try:
        for query, params in queries:
            yield from _sql(snapshot, query, params).to_arrow_reader(BATCH_ROWS)  # names checked
    except (duckdb.Error, pa.ArrowException) as exc:  # damaged in a way size, mtime and the footer did not show
        raise SnapshotDamaged(f"a file of snapshot {snapshot.id} cannot be read ({str(exc).splitlines()[0]}); "
                              "`cryptobt lake verify` names it; `cryptobt export --full` writes a good snapshot"
                              ) from None


def _as_numpy(column: pa.Array) -> np.ndarray:
    """A column without nulls as a NumPy view of its Arrow buffer (which it keeps alive).

    Not `to_numpy()`: that goes through pyarrow's pandas converter, which imports pandas (140-200 ms
    of a cold run). Flagged writable, though nothing writes to it: numba's dispatcher types a read-only
    array in Python on every call (and imports numpy.ma for it), a writable one in C."""
    if column.null_count:
        raise SnapshotDamaged(f"a lake column read as {column.type} holds nulls")
    kind = np.dtype(column.type.to_pandas_dtype())
    buffer = column.buffers()[1]
    memory = (ctypes.c_char * (len(column) * kind.itemsize)).from_address(buffer.address + column.offset * kind.itemsize)
    memory.arrow_buffer = buffer
    return np.frombuffer(memory, dtype=kind)


def explain_analyze(lake_root: Path, symbol: str, year: int, interval: str = "1h") -> str:
    """DuckDB's EXPLAIN ANALYZE of the one-symbol, one-year read (for tests and the docs)."""
    snapshot = lake.require_snapshot(lake_root)
    symbol_id = snapshot.symbols[symbol]["symbol_id"]
    files = [str(p) for p in snapshot.files(interval, range(year, year + 1))]
    start = datetime(year, 1, 1, tzinfo=UTC)
    with connect_duckdb() as con:
        con.execute("PRAGMA enable_profiling = 'json'")
        rows = con.execute(
            "EXPLAIN ANALYZE SELECT epoch(ts), close FROM read_parquet(?) "
            "WHERE symbol_id = ? AND ts >= ? AND ts < ?",
            [files, symbol_id, start, start.replace(year=year + 1)],
        ).fetchall()
    return "\n".join(str(r[1]) for r in rows)


def _futures_rows(snapshot: lake.Snapshot, names: list[str]) -> pl.DataFrame:
    """The funding and mark rows of the perpetuals `names` in `snapshot`'s futures file (checked like every
    lake file), in one DuckDB read."""
    import polars as pl

    path = snapshot.path / snapshot.manifest["futures"]["path"]
    check_files(snapshot, [path])
    table = _sql(snapshot, "SELECT * FROM read_parquet($files) WHERE list_contains($names::VARCHAR[], symbol)",
                 {"files": [str(path)], "names": names}).to_arrow_table()
    return pl.from_arrow(table)


def futures_kinds(snapshot: lake.Snapshot, names: list[str]) -> list[dict]:
    """The (symbol, kind) pairs of the perpetuals `names` that have funding or mark rows in `snapshot`."""
    if not (snapshot.manifest.get("futures") or {}).get("symbols"):
        return []
    return _futures_rows(snapshot, names).select("symbol", "kind").unique().to_dicts()


def series_version(snapshot: lake.Snapshot, name: str) -> str:
    """The data version of series `name` in `snapshot`: its bars', and a perpetual's funding and mark rows
    (pipeline.lake.futures_table) folded in."""
    import hashlib

    version = snapshot.symbols[name]["data_version"]
    digest = (snapshot.manifest.get("futures") or {}).get("symbols", {}).get(name)
    return version if digest is None else hashlib.sha256(f"{version}:{digest}".encode()).hexdigest()[:32]


def with_futures(batch: PriceBatch, snapshot: lake.Snapshot) -> PriceBatch:
    """`batch` (perpetuals' series) with their funding rates and mark bars from `snapshot` on its grid (the
    kernels' `funding`, `mark_open`, `mark_high`, `mark_low`, `mark_close`, NaN where none) and data versions that cover
    them: a new funding rate or mark bar is a new version of its perpetual. Funding floors to the bar
    holding it (summed); mark bars of the batch's interval, or of the coarsest finer one aggregated
    (first open, highest high, lowest low, last close)."""
    import dataclasses

    import polars as pl

    shape = batch.columns["close"].shape
    digests = (snapshot.manifest.get("futures") or {}).get("symbols", {})
    versions = [series_version(snapshot, name) for name in batch.symbols]
    columns = dict(batch.columns)
    for name in ("funding", "mark_open", "mark_high", "mark_low", "mark_close"):
        columns[name] = np.full(shape, np.nan)
    rows = _futures_rows(snapshot, batch.symbols) if digests and batch.times.size else None
    if rows is not None and rows.height:
        step = intervals.SECONDS[batch.interval]
        t0 = int(batch.times[0])
        row_of = pl.DataFrame({"symbol": batch.symbols, "row": np.arange(len(batch.symbols), dtype=np.int64)})
        rows = rows.join(row_of, on="symbol").with_columns(pl.col("datetime").dt.epoch("us").alias("us"))
        funding = rows.filter(pl.col("kind") == "funding")
        if funding.height:
            columns["funding"] = funding_to_grid(funding["row"].to_numpy(), funding["us"].to_numpy(),
                                                 funding["open"].to_numpy(), t0 * 1_000_000, step * 1_000_000, shape)
        mark = rows.filter((pl.col("kind") == "mark") & (pl.col("interval").replace_strict(
            intervals.SECONDS, default=None, return_dtype=pl.Int64) <= step))
        if mark.height:
            finest_fit = mark.group_by("symbol").agg(pl.col("interval").sort_by(
                pl.col("interval").replace_strict(intervals.SECONDS, return_dtype=pl.Int64)).last().alias("use"))
            bars = (mark.join(finest_fit, on="symbol").filter(pl.col("interval") == pl.col("use"))
                    .with_columns(((pl.col("us") // 1_000_000 - t0) // step).alias("column"))
                    .filter((pl.col("column") >= 0) & (pl.col("column") < shape[1]))
                    .sort("datetime").group_by("row", "column")
                    .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last()))
            where = (bars["row"].to_numpy(), bars["column"].to_numpy())
            for name in ("open", "high", "low", "close"):
                columns[f"mark_{name}"][where] = bars[name].to_numpy()
    return dataclasses.replace(batch, columns=columns, data_versions=versions)
