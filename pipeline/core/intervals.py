"""Bar intervals (SPEC section 4.2): the one table of names, lengths and bars per year.

Every room that needs an interval's length or its annualisation asks here: the
importer (native interval of a file), the lake (which intervals it stores), the
reader (grid step, intervals derived on read), the engine (`bars_per_year`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pipeline.core.errors import PipelineError

# freqtrade's names, finest first.
SECONDS: dict[str, int] = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "30m": 1_800,
    "1h": 3_600,
    "4h": 14_400,
    "1d": 86_400,
    "1w": 604_800,
}
NAMES: tuple[str, ...] = tuple(SECONDS)
YEAR_SECONDS = 365 * 86_400
# Sharpe and its kin: 365 days of the interval's length; a week is 52 a year (SPEC 4.2).
BARS_PER_YEAR: dict[str, int] = {name: (52 if name == "1w" else YEAR_SECONDS // s) for name, s in SECONDS.items()}
# Weeks start on Monday 00:00 UTC; the Unix epoch was a Thursday, so week buckets are offset by 4 days.
BUCKET_OFFSET_SECONDS: dict[str, int] = {name: (4 * 86_400 if name == "1w" else 0) for name in SECONDS}
# Polars' truncate() names for the same buckets (its weeks also start on Monday).
POLARS_EVERY: dict[str, str] = {"1m": "1m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "1h", "4h": "4h",
                                "1d": "1d", "1w": "1w"}


def check(name: str, option: str = "--interval", extra: tuple[str, ...] = ()) -> str:
    """`name` if it is a known interval (or one of `extra`), else a one-line error naming it."""
    if name in SECONDS or name in extra:
        return name
    allowed = ", ".join((*NAMES, *extra))
    raise PipelineError(f"{option} {name!r} is not allowed; use one of: {allowed}")


def parse_list(text: str, option: str) -> tuple[str, ...]:
    """`"1h,1d"` -> ("1h", "1d"), finest first; unknown names are an error naming them."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        check(name, option)
    return tuple(sorted(set(names), key=SECONDS.__getitem__))


def seconds(name: str) -> int:
    return SECONDS[name]


def delta(name: str) -> timedelta:
    return timedelta(seconds=SECONDS[name])


def from_spacing(spacing: timedelta) -> str | None:
    """The interval whose length is exactly `spacing`, or None."""
    total = spacing.total_seconds()
    return next((name for name, s in SECONDS.items() if s == total), None)


def divides(finer: str, coarser: str) -> bool:
    """Whether bars of `finer` tile bars of `coarser` exactly (same bucket edges)."""
    return SECONDS[coarser] % SECONDS[finer] == 0 and SECONDS[finer] <= SECONDS[coarser]


def coarser_than(name: str, candidates: tuple[str, ...] | list[str]) -> list[str]:
    """The `candidates` that `name` tiles and that are coarser than it, finest first."""
    return [c for c in sorted(candidates, key=SECONDS.__getitem__) if c != name and divides(name, c)]


DAY_SECONDS = 86_400


def grid_days(times: Any) -> tuple[int, int]:
    """(the first UTC day of a time grid (epoch seconds), as days since the epoch, and the days it spans)."""
    if len(times) == 0:
        return 0, 0
    first = int(times[0]) // DAY_SECONDS
    return first, int(times[-1]) // DAY_SECONDS - first + 1


def day_columns(times: Any) -> Any:
    """The UTC day of each grid column, counted from the grid's first (a bar belongs to the day it opens in)."""
    import numpy as np

    return (np.asarray(times, dtype=np.int64) // DAY_SECONDS - grid_days(times)[0]).astype(np.int64)
