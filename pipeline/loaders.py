"""Getting prices into PostgreSQL: the synthetic seed and the file importer."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline import source
from pipeline.errors import InputError
from pipeline.ohlcv import read_ohlcv_file, symbol_from_path, to_hourly_and_daily
from pipeline.synthetic import daily_from_hourly, generate_market

Progress = Callable[[int], None]


@dataclass(frozen=True)
class LoadReport:
    symbols: int
    rows: dict[str, int]  # interval -> rows sent
    seconds: float

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds > 0 else float("inf")


def _with_ids(frame: pl.DataFrame, ids: list[int], index_column: str) -> pl.DataFrame:
    lookup = pl.DataFrame({index_column: range(len(ids)), "crypto_id": ids},
                          schema={index_column: pl.Int32, "crypto_id": pl.Int32})
    return frame.join(lookup, on=index_column, how="left").drop(index_column)


def check_seed_args(n_symbols: int, years: float, seed: int) -> None:
    """The seed's sizes, before anything connects or writes."""
    if not 1 <= n_symbols <= 10_000:
        raise InputError(f"--cryptos {n_symbols} is out of range: an integer from 1 to 10,000")
    if not (math.isfinite(years) and 1 / 365 <= years <= 20):
        raise InputError(f"--years {years} is out of range: a number from 1/365 (one day) to 20")
    if not 0 <= seed < 2**32:
        raise InputError(f"--seed {seed} is out of range: an integer from 0 to 2**32 - 1")


def seed_database(
    url: str,
    n_symbols: int,
    years: float,
    seed: int = 42,
    *,
    connections: int = 2,
    on_total: Callable[[int], None] | None = None,
    progress: Progress | None = None,
) -> LoadReport:
    """Write a synthetic market (hourly bars and the matching daily bars) with binary COPY.

    Symbols that already have prices are merged (corrected bars replace old ones),
    new ones are copied straight in, all in one transaction.
    """
    check_seed_args(n_symbols, years, seed)
    symbols, hourly = generate_market(n_symbols, years, seed)
    daily = daily_from_hourly(hourly, "symbol_index").drop("bars")
    if on_total:
        on_total(hourly.height + daily.height)
    started = time.perf_counter()
    with source.connect(url) as conn:
        ids_by_symbol = source.register_symbols(conn, symbols)
        conn.commit()
        ids = [ids_by_symbol[s] for s in symbols]
        existing = source.has_prices(conn, ids)
    frames = {"1h": _with_ids(hourly, ids, "symbol_index"), "1d": _with_ids(daily, ids, "symbol_index")}
    source.load_prices_parallel(url, frames, upsert=bool(existing), connections=connections,
                                progress=progress)
    return LoadReport(
        symbols=n_symbols,
        rows={"1h": hourly.height, "1d": daily.height},
        seconds=time.perf_counter() - started,
    )


def import_files(url: str, paths: list[Path], symbol: str | None = None,
                 progress: Progress | None = None) -> LoadReport:
    """Import OHLCV files, resampled to 1h and 1d, upserted in one transaction.

    Every file is read and validated before anything is written, so one bad file
    leaves the database untouched. Re-importing the same file changes nothing.
    """
    if not paths:
        raise InputError("no files given; pass one or more CSV, Parquet or Feather files")
    if symbol is not None and len(paths) > 1:
        raise InputError("--symbol names one symbol; import one file at a time with it")
    started = time.perf_counter()
    parsed: list[tuple[str, dict[str, pl.DataFrame]]] = []
    for path in paths:
        frame = read_ohlcv_file(Path(path))
        name = symbol or symbol_from_path(Path(path))
        if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise InputError(
                f"{path}: symbol {name!r} is not allowed; use letters, digits, '_', '-' or '.' (1-64 chars)"
            )
        parsed.append((name, to_hourly_and_daily(frame, str(path))))
    rows = {"1h": 0, "1d": 0}
    with source.connect(url) as conn:
        ids = source.register_symbols(conn, sorted({name for name, _ in parsed}))
        frames: dict[str, list[pl.DataFrame]] = {"1h": [], "1d": []}
        for name, by_interval in parsed:
            for interval, frame in by_interval.items():
                frames[interval].append(frame.with_columns(pl.lit(ids[name], pl.Int32).alias("crypto_id")))
                rows[interval] += frame.height
        merged = {k: pl.concat(v) for k, v in frames.items() if v}
        source.load_prices(conn, merged, upsert=True, progress=progress)
    return LoadReport(symbols=len(ids), rows=rows, seconds=time.perf_counter() - started)
