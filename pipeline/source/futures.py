"""Perpetual futures' own series (SPEC 4.3): funding rates and mark prices, read from files.

freqtrade's layouts: `*-funding_rate.feather` holds the rate in `open` (high, low, close and volume
are 0) at times a few milliseconds past the funding hour; `*-mark.feather` is OHLC (volume empty). Our
CSV layouts: `date,rate` (or `open`) and `date,open,high,low,close`.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.core.errors import InputError
from pipeline.source.ohlcv import parse_dates

TIME_COLUMNS = ("date", "ts", "datetime", "time", "timestamp")


def check_funding(times: pl.Series, rates: pl.Series, where: str) -> None:
    """Refuse a funding series with a duplicate time or a rate that is not a finite number, naming the first."""
    duplicated = times.is_duplicated()
    if duplicated.any():
        first = times.filter(duplicated).sort()[0]
        raise InputError(f"{where}: funding time {first} appears {int((times == first).sum())} times; each funding "
                         "time once")
    bad = rates.is_null() | ~rates.is_finite()
    if bad.any():
        index = int(bad.arg_max())
        raise InputError(f"{where}: the funding rate at {times[index]} is {rates[index]}, not a finite number")


def _frame(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".feather", ".arrow", ".ipc"):
            frame = pl.read_ipc(path)
        elif suffix == ".parquet":
            frame = pl.read_parquet(path)
        else:
            frame = pl.read_csv(path, infer_schema_length=10_000)
    except Exception as exc:  # noqa: BLE001 - any reader failure is one line naming the file
        raise InputError(f"{path}: cannot read it ({str(exc).strip().splitlines()[0][:200]})") from None
    return frame.rename({c: c.lower() for c in frame.columns})


def _times(frame: pl.DataFrame, path: Path) -> pl.Series:
    time = next((c for c in TIME_COLUMNS if c in frame.columns), None)
    if time is None:
        raise InputError(f"{path}: no time column (one of {', '.join(TIME_COLUMNS)})")
    ts = frame[time]
    if ts.dtype == pl.Datetime:
        ts = ts.dt.replace_time_zone("UTC") if ts.dtype.time_zone is None else ts.dt.convert_time_zone("UTC")
    else:
        ts = parse_dates(ts)
    if ts.null_count():
        raise InputError(f"{path}: {time} {frame[time].filter(ts.is_null())[0]!r} is not a time")
    return ts.dt.cast_time_unit("us").alias("datetime")


def read_funding(path: Path) -> pl.DataFrame:
    """A funding-rate file as (datetime UTC, rate), checked: each time once, every rate finite."""
    frame = _frame(path)
    column = "rate" if "rate" in frame.columns else "open" if "open" in frame.columns else None
    if column is None:
        raise InputError(f"{path}: no funding rate column (`rate`, or `open` as in freqtrade's funding files)")
    times = _times(frame, path)
    try:
        rates = frame[column].cast(pl.Float64)
    except pl.exceptions.InvalidOperationError:
        raise InputError(f"{path}: the {column} column is not numbers") from None
    check_funding(times, rates, str(path))
    return pl.DataFrame({"datetime": times, "rate": rates}).sort("datetime")


def read_mark(path: Path) -> pl.DataFrame:
    """A mark-price file as (datetime UTC, open, high, low, close), checked: each time once, prices finite
    and positive, low <= open, close <= high."""
    frame = _frame(path)
    missing = [c for c in ("open", "high", "low", "close") if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: no {', '.join(missing)} column(s); a mark file is OHLC")
    times = _times(frame, path)
    bars = pl.DataFrame({"datetime": times, **{c: frame[c].cast(pl.Float64) for c in ("open", "high", "low", "close")}})
    duplicated = times.is_duplicated()
    if duplicated.any():
        raise InputError(f"{path}: mark bar {times.filter(duplicated).sort()[0]} appears more than once")
    bad = bars.filter(~pl.all_horizontal(pl.col("open", "high", "low", "close").is_finite() &
                                         (pl.col("open", "high", "low", "close") > 0))
                      | (pl.col("low") > pl.min_horizontal("open", "close"))
                      | (pl.col("high") < pl.max_horizontal("open", "close")))
    if bad.height:
        row = bad.row(0, named=True)
        raise InputError(f"{path}: mark bar {row['datetime']} is not a valid OHLC bar ({row})")
    return bars.sort("datetime")


KINDS = ("ohlcv", "funding", "mark")


def import_series(url: str, path: Path, symbol: str, kind: str, interval: str | None = None) -> tuple[str, int, str]:
    """Import one funding-rate or mark-price file for the perpetual `symbol` (its series `symbol:futures`),
    read and checked whole before one transaction writes it. Returns (series, rows changed, interval:
    the mark's, '' for funding)."""
    from pipeline.core import intervals, markets
    from pipeline.source import postgres as source
    from pipeline.source.bar_rules import interval_of_spacing

    frame = read_funding(path) if kind == "funding" else read_mark(path)
    if frame.height == 0:
        raise InputError(f"{path}: no rows")
    series = markets.series_name(symbol, "futures")
    native = ""
    if kind == "mark":
        spacing = frame["datetime"].diff().drop_nulls().mode().sort()
        native = interval_of_spacing(spacing[0] if len(spacing) else None, str(path), interval)
        step = intervals.delta(native)
        misaligned = frame.filter(pl.col("datetime").dt.truncate(intervals.POLARS_EVERY[native]) != pl.col("datetime"))
        if misaligned.height:
            raise InputError(f"{path}: mark bar {misaligned['datetime'][0]} is not on a {native} bar's open "
                             f"(every {step})")
    with source.connect(url) as conn:
        crypto_id = source.register_symbols(conn, [series])[series]
        if kind == "funding":
            cursor = conn.execute(source.load_sql("upsert_funding.sql"), {
                "id": crypto_id, "times": frame["datetime"].to_list(), "rates": frame["rate"].to_list()})
        else:
            cursor = conn.execute(source.load_sql("upsert_mark.sql"), {
                "id": crypto_id, "interval": native, "times": frame["datetime"].to_list(),
                **{c: frame[c].to_list() for c in ("open", "high", "low", "close")}})
        changed = cursor.rowcount
    return series, changed, native
