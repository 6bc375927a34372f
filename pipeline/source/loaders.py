"""Getting prices into PostgreSQL: the synthetic seed and the file importer."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline.core import intervals, markets
from pipeline.core.config import BarWindow
from pipeline.core.errors import InputError
from pipeline.source import health, price_load
from pipeline.source import postgres as source
from pipeline.source.bar_rules import PRICE_COLUMNS, derive, interval_of_spacing
from pipeline.source.ohlcv import SpilledFile, check_file, symbol_from_path
from pipeline.source.synthetic import generate_market

Progress = Callable[[int], None]
# Rows an import sends a COPY write: 65,536 (~6 MB) kept a 4 M-row CSV's peak RSS at 444-457 MB, where 500,000
# (the seeder's, sized for throughput) gave 471-486 MB and a peak that varied with the file, in the same time.
IMPORT_COPY_ROWS = 65_536


@dataclass(frozen=True)
class LoadReport:
    symbols: int
    rows: dict[str, int]  # interval -> rows sent
    seconds: float
    changed: int = 0  # rows inserted, updated or deleted: 0 when the same load runs again
    natives: dict[str, str] = field(default_factory=dict)  # symbol -> the interval its bars came in
    findings: dict[str, list[str]] = field(default_factory=dict)  # symbol -> data health findings

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds > 0 else float("inf")


def check_seed_args(n_symbols: int, years: float, seed: int) -> None:
    """The seed's sizes, before anything connects or writes."""
    if not 1 <= n_symbols <= 10_000:
        raise InputError(f"--cryptos {n_symbols} is out of range: an integer from 1 to 10,000")
    if not (math.isfinite(years) and 1 / 365 <= years <= 20):
        raise InputError(f"--years {years} is out of range: a number from 1/365 (one day) to 20")
    if not 0 <= seed < 2**32:
        raise InputError(f"--seed {seed} is out of range: an integer from 0 to 2**32 - 1")


def _listed(items: list[str], limit: int = 5) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _mode(conn: object, ids_by_symbol: dict[str, int], natives: dict[str, str], replace: bool,
          how: str) -> str:
    """The load mode for these symbols, refusing (before any row is written) a symbol whose bars
    in PostgreSQL come in another interval than the load's, unless `replace`."""
    states = {s.symbol: s for s in source.symbol_states(conn, sorted(ids_by_symbol.values()))}
    existing = {name: state.native for name, state in states.items() if state.native}
    if not existing:
        return "new"
    if replace:
        return "replace"
    other = [f"{name} has {existing[name]} bars, this load {natives[name]}" for name in sorted(existing)
             if name in natives and existing[name] != natives[name]]
    if other:
        raise InputError(f"refusing to mix two series in one symbol: {_listed(other)}; nothing was written. {how}")
    return "merge"


def _refuse_conflicts(counts: price_load.LoadCounts, names: dict[int, str], how: str) -> None:
    if not counts.conflicts:
        return
    described = [f"{names[i]} ({n:,} existing bars differ, first at {first.isoformat()})"
                 for i, (n, first) in sorted(counts.conflicts.items(), key=lambda item: names[item[0]])]
    raise InputError(f"refusing to mix two markets: {_listed(described)}; nothing was written. {how}")


def seed_database(
    url: str,
    n_symbols: int,
    years: float,
    seed: int = 42,
    *,
    connections: int = 2,
    replace: bool = False,
    derived: tuple[str, ...] = ("1h", "1d"),
    on_total: Callable[[int], None] | None = None,
    progress: Progress | None = None,
) -> LoadReport:
    """Write a synthetic market (hourly bars and the derived coarser ones) with binary COPY.

    New symbols are copied straight in. Symbols that already have bars take the new ones only
    where they agree with what is there (a re-run changes 0 rows); a differing bar refuses the
    whole load unless `replace`, which makes the new series each symbol's whole series.
    """
    check_seed_args(n_symbols, years, seed)
    symbols, hourly = generate_market(n_symbols, years, seed)
    built = derive(hourly, "1h", derived, by=("symbol_index",))
    if on_total:
        on_total(sum(frame.height for frame in built.values()))
    started = time.perf_counter()
    how = "Pass --replace to replace these symbols' series whole with the new seed (or seed another database)."
    with source.connect(url) as conn:
        # Only the symbols that exist: new ones are registered in the transactions that copy their prices.
        mode = _mode(conn, source.symbol_ids(conn, symbols), dict.fromkeys(symbols, "1h"), replace, how)
    frames = {interval: frame.drop("bars") for interval, frame in built.items()}
    counts, ids_by_symbol = price_load.load_prices_parallel(url, symbols, frames, mode=mode, connections=connections,
                                                        progress=progress)
    _refuse_conflicts(counts, {i: s for s, i in ids_by_symbol.items()}, how)
    return LoadReport(
        symbols=n_symbols,
        rows={interval: frame.height for interval, frame in built.items()},
        seconds=time.perf_counter() - started,
        changed=counts.changed,
        natives=dict.fromkeys(symbols, "1h"),
    )


def import_names(paths: list[Path], symbol: str | None, market: str = "spot") -> dict[Path, str]:
    """Each file's series: its symbol (`symbol`, else its name before '-'), checked before any file is read,
    qualified by `market` (`XRP_USDT:futures`)."""
    if not paths:
        raise InputError("no files given; pass one or more CSV, Parquet or Feather files")
    if symbol is not None and len(paths) > 1:
        raise InputError("--symbol names one symbol; import one file at a time with it")
    names: dict[Path, str] = {}
    for path in map(Path, paths):
        check_file(path)
        name = symbol or symbol_from_path(path)
        if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise InputError(
                f"{path}: symbol {name!r} is not allowed; use letters, digits, '_', '-' or '.' (1-64 chars)"
            )
        name = markets.series_name(name, market)
        if name in names.values():
            raise InputError(f"{path}: a second file for symbol {name}; import one file per symbol")
        names[path] = name
    return names


def _with_neighbours(conn: object, crypto_id: int, by_interval: dict[str, pl.DataFrame],
                     derived: tuple[str, ...]) -> dict[str, pl.DataFrame]:
    """Derived bars rebuilt from the symbol's existing native bars in the buckets the file touches
    plus the file's: a file that appends one hour rebuilds that day from all of its hours, not
    from the one hour. Only the touched buckets are returned; the native bars are the file's."""
    native, frame = next(iter(by_interval.items()))
    targets = [t for t in by_interval if t != native]
    if not targets or frame.height == 0:
        return by_interval
    coarsest = max(targets, key=intervals.SECONDS.get)
    every = intervals.POLARS_EVERY[coarsest]
    start = frame["ts"].min()
    start = pl.select(pl.lit(start).dt.truncate(every)).item()
    end = pl.select(pl.lit(frame["ts"].max()).dt.truncate(every)).item() + intervals.delta(coarsest)
    existing = conn.execute(source.load_sql("native_bars_in_range.sql"),
                            {"id": crypto_id, "interval": native, "start": start, "end": end}).fetchall()
    if not existing:
        return by_interval
    old = pl.DataFrame(existing, schema=["ts", *PRICE_COLUMNS], orient="row").with_columns(
        pl.col("ts").dt.convert_time_zone("UTC").dt.cast_time_unit("us"))
    union = pl.concat([frame.drop("bars"), old.join(frame.select("ts"), on="ts", how="anti")]).sort("ts")
    rebuilt = derive(union, native, derived, clean=False)
    out = {native: frame}
    for target in targets:
        touched = frame.select(pl.col("ts").dt.truncate(intervals.POLARS_EVERY[target])).unique()
        out[target] = rebuilt[target].join(touched, on="ts", how="semi")
    return out


def import_files(url: str, paths: list[Path], symbol: str | None = None,
                 progress: Progress | None = None, *, market: str = "spot", replace: bool = False,
                 interval: str | None = None,
                 derived: tuple[str, ...] = ("1h", "1d"), strict: bool = False,
                 thresholds: health.Thresholds | None = None, window: BarWindow | None = None) -> LoadReport:
    """Import OHLCV files at their native interval plus the `derived` coarser ones, in one transaction.

    Every file is read and validated (bar times within `window`, default 1970-01-01 .. now + 1 day)
    before anything is written, a batch at a time (`SpilledFile`), then loaded a year at a time:
    memory holds a batch or a year, never a file. Anything refused (a bad file, a --strict finding, a
    conflict) leaves the database untouched. Re-importing the same file changes 0 rows; a file whose
    bars differ from a symbol's existing ones is refused unless `replace` (the file becomes its series).
    """
    started = time.perf_counter()
    names = import_names(paths, symbol, market)
    thresholds = thresholds or health.Thresholds()
    rows: dict[str, int] = {}
    findings: dict[str, list[str]] = {}
    how = ("Pass --replace to replace these symbols' series whole with the file's, or --symbol NAME to "
           "import it under another name.")
    with ExitStack() as spilled:
        files: dict[str, SpilledFile] = {}
        natives: dict[str, str] = {}
        for path, name in names.items():  # each file whole, checked, before the next is read
            files[name] = spilled.enter_context(SpilledFile(path, window))
            natives[name] = interval_of_spacing(files[name].spacing, str(path), interval)
        with source.connect(url) as conn:
            ids = source.register_symbols(conn, sorted(files))
            mode = _mode(conn, ids, natives, replace, how)
            load = price_load.PriceLoad(conn, mode=mode, natives={ids[n]: natives[n] for n in files}, progress=progress,
                                         chunk_rows=IMPORT_COPY_ROWS)
            for name, file in files.items():
                native, records = natives[name], []
                for bars in file.years():
                    by_interval = derive(bars.drop("_row"), native, derived)
                    records += health.measure(by_interval[native], native, thresholds)
                    if mode == "merge":
                        by_interval = _with_neighbours(conn, ids[name], by_interval, derived)
                    load.add({iv_name: frame.drop("bars").with_columns(pl.lit(ids[name], pl.Int32).alias("crypto_id"))
                              for iv_name, frame in by_interval.items()})
                    for iv_name, frame in by_interval.items():
                        rows[iv_name] = rows.get(iv_name, 0) + frame.height
                notes = health.findings(health.combine(records, thresholds), thresholds) if records else []
                if notes:
                    findings[name] = notes
            _refuse_findings(findings, strict)
            counts = load.finish()
            if counts.conflicts:
                conn.rollback()
            _refuse_conflicts(counts, {i: s for s, i in ids.items()}, how)
    return LoadReport(symbols=len(ids), rows=rows, seconds=time.perf_counter() - started,
                      changed=counts.changed, natives=natives, findings=findings)


def _refuse_findings(found: dict[str, list[str]], strict: bool) -> None:
    """--strict: data findings refuse the load (the caller's transaction rolls back)."""
    if strict and found:
        first = sorted(found)[0]
        raise InputError(f"--strict: {len(found)} symbol(s) have data findings ({first}: {'; '.join(found[first])}); "
                         "nothing was written. Fix the data, or import without --strict to keep them as warnings")
