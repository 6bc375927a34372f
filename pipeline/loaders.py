"""Getting prices into PostgreSQL: the synthetic seed and the file importer."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline import health, intervals, source
from pipeline.config import BarWindow
from pipeline.errors import InputError
from pipeline.ohlcv import PRICE_COLUMNS, derive, native_interval, read_ohlcv_file, symbol_from_path
from pipeline.synthetic import generate_market

Progress = Callable[[int], None]


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


def _refuse_conflicts(counts: source.LoadCounts, names: dict[int, str], how: str) -> None:
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
    counts, ids_by_symbol = source.load_prices_parallel(url, symbols, frames, mode=mode, connections=connections,
                                                        progress=progress)
    _refuse_conflicts(counts, {i: s for s, i in ids_by_symbol.items()}, how)
    return LoadReport(
        symbols=n_symbols,
        rows={interval: frame.height for interval, frame in built.items()},
        seconds=time.perf_counter() - started,
        changed=counts.changed,
        natives=dict.fromkeys(symbols, "1h"),
    )


def read_import_files(paths: list[Path], symbol: str | None = None, interval: str | None = None,
                      derived: tuple[str, ...] = ("1h", "1d"),
                      window: BarWindow | None = None) -> dict[str, dict[str, pl.DataFrame]]:
    """Read and validate every file (nothing is written): symbol -> interval -> bars (native first)."""
    if not paths:
        raise InputError("no files given; pass one or more CSV, Parquet or Feather files")
    if symbol is not None and len(paths) > 1:
        raise InputError("--symbol names one symbol; import one file at a time with it")
    parsed: dict[str, dict[str, pl.DataFrame]] = {}
    for path in paths:
        frame = read_ohlcv_file(Path(path), window=window)
        name = symbol or symbol_from_path(Path(path))
        if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise InputError(
                f"{path}: symbol {name!r} is not allowed; use letters, digits, '_', '-' or '.' (1-64 chars)"
            )
        if name in parsed:
            raise InputError(f"{path}: a second file for symbol {name}; import one file per symbol")
        native = native_interval(frame, str(path), interval)
        parsed[name] = derive(frame, native, derived)
    return parsed


def check_health(parsed: dict[str, dict[str, pl.DataFrame]], thresholds: health.Thresholds,
                 strict: bool) -> dict[str, list[str]]:
    """Findings per symbol of freshly read series at their native interval; `strict` refuses them."""
    found = {}
    for name, by_interval in parsed.items():
        native, frame = next(iter(by_interval.items()))
        records = health.measure(frame, native, thresholds)
        notes = health.findings(health.combine(records, thresholds), thresholds) if records else []
        if notes:
            found[name] = notes
    if strict and found:
        first = sorted(found)[0]
        raise InputError(f"--strict: {len(found)} symbol(s) have data findings ({first}: {'; '.join(found[first])}); "
                         "nothing was written. Fix the data, or import without --strict to keep them as warnings")
    return found


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
                 progress: Progress | None = None, *, replace: bool = False, interval: str | None = None,
                 derived: tuple[str, ...] = ("1h", "1d"), strict: bool = False,
                 thresholds: health.Thresholds | None = None, window: BarWindow | None = None) -> LoadReport:
    """Import OHLCV files at their native interval plus the `derived` coarser ones, in one transaction.

    Every file is read and validated (bar times within `window`, default 1970-01-01 .. now + 1 day)
    before anything is written, so one bad file leaves the database untouched. Re-importing the
    same file changes 0 rows; a file whose bars differ from a symbol's existing ones is refused
    unless `replace` (the file becomes its series).
    """
    started = time.perf_counter()
    parsed = read_import_files(paths, symbol, interval, derived, window)
    findings = check_health(parsed, thresholds or health.Thresholds(), strict)
    natives = {name: next(iter(by_interval)) for name, by_interval in parsed.items()}
    rows: dict[str, int] = {}
    how = ("Pass --replace to replace these symbols' series whole with the file's, or --symbol NAME to "
           "import it under another name.")
    with source.connect(url) as conn:
        ids = source.register_symbols(conn, sorted(parsed))
        mode = _mode(conn, ids, natives, replace, how)
        if mode == "merge":
            parsed = {name: _with_neighbours(conn, ids[name], by_interval, derived)
                      for name, by_interval in parsed.items()}
        frames: dict[str, list[pl.DataFrame]] = {}
        for name, by_interval in parsed.items():
            for iv_name, frame in by_interval.items():
                frames.setdefault(iv_name, []).append(
                    frame.drop("bars").with_columns(pl.lit(ids[name], pl.Int32).alias("crypto_id")))
                rows[iv_name] = rows.get(iv_name, 0) + frame.height
        merged = {k: pl.concat(v) for k, v in frames.items()}
        counts = source.load_prices(conn, merged, mode=mode, progress=progress,
                                    natives={ids[n]: natives[n] for n in parsed})
        if counts.conflicts:
            conn.rollback()
        _refuse_conflicts(counts, {i: s for s, i in ids.items()}, how)
    return LoadReport(symbols=len(ids), rows=rows, seconds=time.perf_counter() - started,
                      changed=counts.changed, natives=natives, findings=findings)
