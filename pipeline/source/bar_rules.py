"""The rules a bar obeys, in one place: what makes a bar unacceptable (`bar_rules`: the importer
refuses a file, the export a symbol, by them), a series' native interval, and how bars aggregate
into coarser intervals (SPEC section 2: `resample`, `derive`; the importer, the seeder and the lake
all call them).

A price frame is a polars DataFrame with `ts` (Datetime[us, UTC], the bar's open time)
and Float64 `open, high, low, close, volume`, plus optional key columns (a symbol id).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core import import_guard as imports
from pipeline.core import intervals
from pipeline.core.config import BarWindow
from pipeline.core.errors import InputError

if TYPE_CHECKING:
    import polars as pl
else:
    pl = imports.deferred("polars")  # the lake imports `derive`; a run that only reads never calls it

PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
# Accepted bars: finite values up to 1e15 (larger ones overflow a backtest's products), at times within
# the settings' BarWindow (default 1970-01-01 .. now + 1 day).
MAX_VALUE = 1e15


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


def bar_rules(window: BarWindow) -> list[tuple[pl.Expr, str]]:
    """What makes a bar unacceptable, as (condition on a price frame's row, what is wrong), in the
    order a message names them: the importer refuses a file, the export a symbol, by these rules."""
    now = datetime.now(UTC)
    return [
        (pl.any_horizontal([~pl.col(c).is_finite() for c in PRICE_COLUMNS]),
         "a price or volume is NaN or infinite"),
        (pl.any_horizontal([pl.col(c) > MAX_VALUE for c in PRICE_COLUMNS]), f"a price or volume exceeds {MAX_VALUE:g}"),
        ((pl.col("ts") < window.earliest) | (pl.col("ts") > now + window.ahead),
         f"the time is outside {window.describe()}"),
        (pl.any_horizontal([pl.col(c) <= 0 for c in ("open", "high", "low", "close")]),
         "prices must be > 0"),
        (pl.col("volume") < 0, "volume must be >= 0"),
        (pl.col("high") < pl.col("low"), "high is below low"),
        ((pl.col("open") > pl.col("high")) | (pl.col("open") < pl.col("low"))
         | (pl.col("close") > pl.col("high")) | (pl.col("close") < pl.col("low")),
         "open and close must lie within [low, high]"),
    ]


def _values(row: dict) -> str:
    return ", ".join(f"{c}={row[c]}" for c in PRICE_COLUMNS)


def validate_prices(frame: pl.DataFrame, label: Callable[[int], str], window: BarWindow) -> None:
    """Refuse the first row that breaks a `bar_rules` rule, then one timestamp carrying two different bars.

    `frame` needs a `_row` index column; `label(row)` says where the row is.
    """
    refuse_bad_rows(frame, label, window)
    refuse_conflicting_duplicates(frame, label)


def refuse_bad_rows(frame: pl.DataFrame, label: Callable[[int], str], window: BarWindow) -> None:
    """A one-line error naming the first row (`_row`, placed by `label`) that breaks a `bar_rules` rule."""
    for condition, what in bar_rules(window):
        offending = frame.filter(condition)
        if offending.height:
            row = offending.select("_row", *PRICE_COLUMNS).row(0, named=True)  # a BC time has no Python datetime
            raise InputError(f"{label(row['_row'])}: {what} ({_values(row)})")


def refuse_conflicting_duplicates(frame: pl.DataFrame, label: Callable[[int], str]) -> None:
    """A one-line error naming two rows of one timestamp with different bars (equal ones are kept)."""
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


def _time_text(us: int) -> str:
    """A bar time for a message, also where Python's datetime cannot hold it (BC, past 9999, infinity)."""
    if us >= 2**63 - 1 or us <= -(2**63):  # PostgreSQL's 'infinity' and '-infinity'
        return "infinity" if us > 0 else "-infinity"
    return np.datetime_as_string(np.datetime64(us, "us"), unit="s" if us % 1_000_000 == 0 else "us") + "+00:00"


def bad_symbols(bars: pl.DataFrame, natives: dict[str, str], window: BarWindow) -> dict[str, str]:
    """Symbols with rows that break `bar_rules`, or whose time is not the open of a bar of the symbol's
    native interval (`natives`), each with what is wrong: the count of bad rows and the first of them.

    `bars` has symbol, ts, open..volume, as the export reads them from PostgreSQL.
    """
    if bars.is_empty():
        return {}
    by_native: dict[str, list[str]] = {}
    for name, native in natives.items():
        by_native.setdefault(native, []).append(name)
    ts_us = pl.col("ts").cast(pl.Int64)

    def misaligned(native: str) -> pl.Expr:
        step, offset = intervals.SECONDS[native] * 1_000_000, intervals.BUCKET_OFFSET_SECONDS[native] * 1_000_000
        return (ts_us - offset) % step != 0

    # One native interval (the usual lake) needs no per-symbol lookup: about 3x faster on 10 M rows.
    aligned_rule = misaligned(next(iter(by_native))) if len(by_native) == 1 else pl.any_horizontal(
        [pl.col("symbol").is_in(names) & misaligned(native) for native, names in by_native.items()])
    rules: list[tuple[pl.Expr, str | None]] = [*bar_rules(window), (aligned_rule, None)]  # None: misaligned
    flagged = bars.filter(pl.any_horizontal([condition for condition, _ in rules]).fill_null(True))
    found: dict[str, str] = {}
    for (name,), rows in flagged.partition_by("symbol", as_dict=True, maintain_order=True).items():
        for condition, what in rules:
            hit = rows.filter(condition.fill_null(True))
            if hit.height:
                first = hit.with_columns(pl.col("ts").cast(pl.Int64)).sort("ts").row(0, named=True)
                what = what or f"the time is not the open time of a {natives.get(name)} bar"
                found[name] = (f"{rows.height:,} bad row(s) in PostgreSQL, the first at {_time_text(first['ts'])}: "
                               f"{what} ({_values(first)})")
                break
    return dict(sorted(found.items()))


class Gaps:
    """Counts of the gaps between consecutive distinct bar times, fed in time order a piece at a time
    (a whole series, or a file a year at a time); `most_common` is the series' bar spacing."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}  # gap in microseconds -> how many
        self.last: int | None = None

    def add(self, times: pl.Series) -> None:
        """`times`: distinct bar times, sorted, all later than those added before."""
        us = times.dt.epoch("us").to_numpy()
        if us.size == 0:
            return
        gaps, counts = np.unique(np.diff(us if self.last is None else np.r_[self.last, us]), return_counts=True)
        for gap, count in zip(gaps.tolist(), counts.tolist(), strict=True):
            self.counts[gap] = self.counts.get(gap, 0) + count
        self.last = int(us[-1])

    def most_common(self) -> timedelta | None:
        """The most common gap (the smallest of equally common ones); None under two bar times."""
        if not self.counts:
            return None
        top = max(self.counts.values())
        return timedelta(microseconds=min(gap for gap, count in self.counts.items() if count == top))


def bar_spacing(frame: pl.DataFrame) -> timedelta | None:
    """The file's bar interval: the most common gap between consecutive bars."""
    gaps = Gaps()
    gaps.add(frame["ts"].unique().sort())
    return gaps.most_common()


def native_interval(frame: pl.DataFrame, source: str, declared: str | None = None) -> str:
    """The interval a file's bars are in: the most common gap between them, which must be one of
    SPEC 4.2's intervals. `declared` (the importer's --interval) overrides the guess and is the only
    way to import a single bar, whose interval no gap can tell."""
    spacing = None if declared is not None else bar_spacing(frame.unique(subset=["ts"]))
    return interval_of_spacing(spacing, source, declared)


def interval_of_spacing(spacing: timedelta | None, source: str, declared: str | None = None) -> str:
    """`native_interval` of a file whose most common gap between bars is `spacing` (None: one bar)."""
    if declared is not None:
        return intervals.check(declared)
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
