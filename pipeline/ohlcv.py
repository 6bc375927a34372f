"""OHLCV frames: reading real files, validating them, resampling to 1h and 1d.

A price frame is a polars DataFrame with `ts` (Datetime[us, UTC], the bar's open time)
and Float64 `open, high, low, close, volume`, plus optional key columns (a symbol id).
Resampling is the one place where SPEC section 2's aggregation rules live; the
importer, the seeder and the lake all call it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from pipeline import intervals
from pipeline.errors import InputError

PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
# Accepted bars: finite values up to 1e15 (larger ones overflow a backtest's products) and times from
# the Unix epoch to a day ahead (a BC or year-9019 row would break every later export).
MAX_VALUE = 1e15
OLDEST_BAR = datetime(1970, 1, 1, tzinfo=UTC)
NEWEST_BAR_AHEAD = timedelta(days=1)
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".feather", ".arrow", ".ipc")
_DATE_NAMES = ("date", "datetime", "timestamp", "time", "ts", "open_time")


def resample(frame: pl.DataFrame, every: str, by: tuple[str, ...] = ()) -> pl.DataFrame:
    """Aggregate bars into `every` buckets (UTC, labelled by open time), per `by` key.

    open = first open, high = max high, low = min low, close = last close,
    volume = sum; a bucket exists only if at least one bar fell in it, and `bars`
    records how many did (a day built from 23 hours says 23).
    """
    keys = [*by, "ts"]
    return (
        frame.sort(keys)
        .with_columns(pl.col("ts").dt.truncate(every))
        .group_by(keys, maintain_order=True)
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
            pl.len().cast(pl.Int32).alias("bars"),
        )
    )


def symbol_from_path(path: Path) -> str:
    """freqtrade naming: `ETH_BTC-5m.feather` -> `ETH_BTC`."""
    return path.stem.split("-", 1)[0]


def _parse_dates(raw: pl.Series) -> pl.Series:
    """ISO-like strings or epoch numbers to UTC. Naive times are read as UTC; offsets are honoured."""
    if not raw.dtype.is_numeric() and raw.len() and raw.cast(pl.String).str.strip_chars().str.contains(
            r"^-?[0-9]+$").all():
        raw = raw.cast(pl.String).str.strip_chars().cast(pl.Int64)  # a CSV of epoch seconds or milliseconds
    if raw.dtype.is_numeric():
        values = raw.cast(pl.Int64, strict=False)
        # Epoch seconds or milliseconds, decided by magnitude (ms after 1973 exceed 1e11).
        unit = "ms" if values.abs().max() is not None and values.abs().max() > 100_000_000_000 else "s"
        scale = 1_000 if unit == "ms" else 1_000_000
        return (values * scale).cast(pl.Datetime("us", "UTC"))
    text = (
        raw.cast(pl.String).str.strip_chars()
        .str.replace("T", " ", literal=True).str.replace(r"Z$", "+00:00")
    )
    candidates = [
        text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f%z", strict=False, time_zone="UTC", time_unit="us"),
        text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us").dt.replace_time_zone("UTC"),
        text.str.to_datetime("%Y-%m-%d %H:%M", strict=False, time_unit="us").dt.replace_time_zone("UTC"),
        text.str.to_datetime("%Y-%m-%d", strict=False, time_unit="us").dt.replace_time_zone("UTC"),
    ]
    return pl.select(pl.coalesce(candidates)).to_series().alias("ts")


def _is_index_name(name: str) -> bool:
    """A column pandas wrote for its index: empty header, `Unnamed: 0`, or Parquet's index name."""
    lowered = name.strip().lower()
    return lowered in ("", "index", "__index_level_0__") or lowered.startswith("unnamed")


def _row_label(path: Path, index: int) -> str:
    # CSV users look for the line in an editor (header is line 1); other formats count rows.
    if path.suffix.lower() == ".csv":
        return f"{path.name} line {index + 2}"
    return f"{path.name} row {index + 1}"


def read_ohlcv_file(path: Path, validate: bool = True) -> pl.DataFrame:
    """Read a CSV, Parquet or Feather OHLCV file into a validated price frame, sorted by time.

    Raises InputError naming the file (and the row) for anything it cannot accept. Without
    `validate` (data health checks of a file) bad prices and duplicate times are kept.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        if suffix == ".csv":
            raw = pl.read_csv(path, infer_schema=False)
        elif suffix == ".parquet":
            raw = pl.read_parquet(path)
        else:
            raw = pl.read_ipc(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's fault
        reason = " ".join(str(exc).split())
        raise InputError(f"{path}: cannot be read as {suffix[1:]}: {reason}") from exc

    by_lower = {name.lower().strip(): name for name in raw.columns}
    date_column = next((by_lower[n] for n in _DATE_NAMES if n in by_lower), None)
    if date_column is None and raw.columns and _is_index_name(raw.columns[0]):
        # pandas' df.to_csv() writes the index first, under an empty header: a DatetimeIndex
        # is the timestamp column. Anything else there stays "missing column date".
        if raw.height and _parse_dates(raw[raw.columns[0]]).is_not_null().all():
            date_column = raw.columns[0]
    missing = [c for c in PRICE_COLUMNS if c not in by_lower]
    if date_column is None or missing:
        need = (["date"] if date_column is None else []) + missing
        raise InputError(
            f"{path}: missing column(s) {', '.join(need)}; found {', '.join(raw.columns) or 'none'}; "
            "need Date (or datetime/timestamp, or an unnamed first column of timestamps as pandas "
            "writes it), Open, High, Low, Close, Volume in any case"
        )

    raw_dates = raw[date_column]
    if raw_dates.dtype == pl.Datetime or isinstance(raw_dates.dtype, pl.Datetime):
        tz = raw_dates.dtype.time_zone
        ts = raw_dates.dt.cast_time_unit("us")
        ts = ts.dt.convert_time_zone("UTC") if tz else ts.dt.replace_time_zone("UTC")
    else:
        ts = _parse_dates(raw_dates)
    bad = ts.is_null()
    if bad.any():
        index = int(bad.arg_true()[0])
        raise InputError(
            f"{_row_label(path, index)}: cannot parse date {raw_dates[index]!r}; "
            "use ISO-8601 (naive times are read as UTC) or epoch seconds/milliseconds"
        )
    columns = {"ts": ts}
    for name in PRICE_COLUMNS:
        values = raw[by_lower[name]].cast(pl.Float64, strict=False)
        unparsable = values.is_null() & raw[by_lower[name]].is_not_null()
        if unparsable.any() or values.is_null().any():
            index = int((unparsable | values.is_null()).arg_true()[0])
            raise InputError(f"{_row_label(path, index)}: {name} {raw[by_lower[name]][index]!r} is not a number")
        columns[name] = values
    frame = pl.DataFrame(columns).with_row_index("_row")
    if validate:
        validate_prices(frame, lambda i: _row_label(path, i))
    return frame.sort("ts").drop("_row")


def validate_prices(frame: pl.DataFrame, label: callable) -> None:
    """Reject NaN/zero/negative prices, high < low, open/close outside [low, high],
    negative volume and one timestamp carrying two different bars.

    `frame` needs a `_row` index column; `label(row)` says where the row is.
    """
    now = datetime.now(UTC)
    checks = [
        (pl.any_horizontal([~pl.col(c).is_finite() for c in PRICE_COLUMNS]),
         "a price or volume is NaN or infinite"),
        (pl.any_horizontal([pl.col(c) > MAX_VALUE for c in PRICE_COLUMNS]), f"a price or volume exceeds {MAX_VALUE:g}"),
        ((pl.col("ts") < OLDEST_BAR) | (pl.col("ts") > now + NEWEST_BAR_AHEAD),
         f"the time is outside {OLDEST_BAR:%Y-%m-%d} .. now + {NEWEST_BAR_AHEAD.days} day"),
        (pl.any_horizontal([pl.col(c) <= 0 for c in ("open", "high", "low", "close")]),
         "prices must be > 0"),
        (pl.col("volume") < 0, "volume must be >= 0"),
        (pl.col("high") < pl.col("low"), "high is below low"),
        ((pl.col("open") > pl.col("high")) | (pl.col("open") < pl.col("low"))
         | (pl.col("close") > pl.col("high")) | (pl.col("close") < pl.col("low")),
         "open and close must lie within [low, high]"),
    ]
    for condition, what in checks:
        offending = frame.filter(condition)
        if offending.height:
            row = offending.select("_row", *PRICE_COLUMNS).row(0, named=True)  # a BC time has no Python datetime
            values = ", ".join(f"{c}={row[c]}" for c in PRICE_COLUMNS)
            raise InputError(f"{label(row['_row'])}: {what} ({values})")
    duplicated = frame.filter(pl.col("ts").is_duplicated())
    if duplicated.height:
        distinct = duplicated.unique(subset=["ts", *PRICE_COLUMNS]).filter(pl.col("ts").is_duplicated())
        if distinct.height:
            ts = distinct.sort("_row")["ts"][0]
            rows = duplicated.filter(pl.col("ts") == ts)["_row"].to_list()
            raise InputError(
                f"{label(rows[-1])}: timestamp {ts.isoformat()} appears again with different values "
                f"(first at {label(rows[0])}); remove one of them"
            )


def bar_spacing(frame: pl.DataFrame) -> timedelta | None:
    """The file's bar interval: the most common gap between consecutive bars."""
    if frame.height < 2:
        return None
    gaps = frame["ts"].unique().sort().diff().drop_nulls()
    return gaps.mode().sort()[0]


def native_interval(frame: pl.DataFrame, source: str, declared: str | None = None) -> str:
    """The interval a file's bars are in: the most common gap between them, which must be one of
    SPEC 4.2's intervals. `declared` (the importer's --interval) overrides the guess and is the only
    way to import a single bar, whose interval no gap can tell."""
    if declared is not None:
        return intervals.check(declared)
    spacing = bar_spacing(frame.unique(subset=["ts"]))
    if spacing is None:
        raise InputError(f"{source}: a single bar says nothing about its interval; pass --interval "
                         f"(one of {', '.join(intervals.NAMES)})")
    name = intervals.from_spacing(spacing)
    if name is None:
        raise InputError(f"{source}: bars are {spacing} apart; allowed intervals are "
                         f"{', '.join(intervals.NAMES)}")
    return name


def derive(frame: pl.DataFrame, native: str, targets: tuple[str, ...] | list[str],
           by: tuple[str, ...] = (), clean: bool = True) -> dict[str, pl.DataFrame]:
    """One series at its `native` interval plus every coarser `target` it tiles (SPEC section 2 rules).

    Each target is built from the coarsest interval already built that tiles it, so daily bars
    come from hourly ones whenever there are hourly ones (their `bars` then counts hours, as the
    lake has always recorded). Bars of `native` are labelled by their bucket's open time (a
    daily file stamped 05:00 becomes 00:00 UTC). The frames carry `bars` (source bars used).
    `clean=False` skips that labelling and de-duplication for rows known to be aligned, unique
    and sorted (the lake's own).
    """
    keys = [*by, "ts"]
    base = frame
    if clean:
        base = frame.with_columns(pl.col("ts").dt.truncate(intervals.POLARS_EVERY[native]))
        base = base.unique(subset=keys, keep="first", maintain_order=True).sort(keys)
    if "bars" not in base.columns:
        base = base.with_columns(pl.lit(1, pl.Int32).alias("bars"))
    built = {native: base}
    for target in intervals.coarser_than(native, tuple(targets)):
        source = max((name for name in built if intervals.divides(name, target)), key=intervals.SECONDS.__getitem__)
        built[target] = resample(built[source], intervals.POLARS_EVERY[target], by=by)
    return built
