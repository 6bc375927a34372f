"""OHLCV files: reading CSV, Parquet and Feather into price frames (whole, a batch at a time, or
spilled a year at a time), each row checked by the bar rules (pipeline.source.bar_rules).

A price frame is a polars DataFrame with `ts` (Datetime[us, UTC], the bar's open time)
and Float64 `open, high, low, close, volume`.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from pipeline.core import import_guard as imports
from pipeline.core import intervals
from pipeline.core.config import BarWindow
from pipeline.core.errors import InputError, disk_full, is_disk_full
from pipeline.source.bar_rules import (
    PRICE_COLUMNS,
    Gaps,
    refuse_bad_rows,
    refuse_conflicting_duplicates,
    validate_prices,
)

if TYPE_CHECKING:
    import polars as pl
else:
    pl = imports.deferred("polars")  # the notebook imports `parse_dates`; a run that only reads never calls it

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".feather", ".arrow", ".ipc")
_DATE_NAMES = ("date", "datetime", "timestamp", "time", "ts", "open_time")
# A big file is read a batch at a time (`read_ohlcv_batches`): this many bytes of a CSV (about 250,000
# lines; its strings take some 10x that once parsed), this many rows of a Parquet or Feather file.
CSV_BLOCK_BYTES = 16 << 20
BATCH_ROWS = 250_000


def symbol_from_path(path: Path) -> str:
    """freqtrade naming: `ETH_BTC-5m.feather` -> `ETH_BTC`."""
    return path.stem.split("-", 1)[0]


def parse_dates(raw: pl.Series) -> pl.Series:
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


def row_labeller(path: Path) -> Callable[[int], str]:
    """Where row `index` (from 0) of the file is, as a message names it (`X.csv line 12`)."""
    return lambda index: _row_label(Path(path), index)


def check_file(path: Path) -> Path:
    """`path` if its type is one we read and it exists, else a one-line error naming it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    return path


def _unreadable(path: Path, exc: Exception) -> InputError:
    reason = " ".join(str(exc).split())
    return InputError(f"{path}: cannot be read as {path.suffix.lower()[1:]}: {reason}")


def _csv_blocks(path: Path, block_bytes: int) -> Iterator[tuple[bytes, bytes]]:
    """(header line, whole lines after it) about `block_bytes` at a time; one empty block for a file of
    a header alone. A newline inside a quoted field is not a line end (quotes before it are odd)."""
    with path.open("rb") as file:
        header = file.readline()
        carry, sent = b"", False
        while True:
            block = file.read(block_bytes)
            data = carry + block
            if not block:
                if data or not sent:
                    yield header, data
                return
            cut = data.rfind(b"\n") + 1
            while cut and data.count(b'"', 0, cut) % 2:
                cut = data.rfind(b"\n", 0, cut - 1) + 1
            if cut:
                yield header, data[:cut]
                sent = True
            carry = data[cut:]


def _raw_batches(path: Path, block_bytes: int, batch_rows: int) -> Iterator[pl.DataFrame]:
    """The file's rows as read (CSV: every column a string), a bounded batch at a time: about
    `block_bytes` of a CSV, `batch_rows` rows of a Parquet or Feather file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            for header, lines in _csv_blocks(path, block_bytes):
                yield pl.read_csv(io.BytesIO(header + lines), infer_schema=False)
            return
        scan = pl.scan_parquet(path) if suffix == ".parquet" else pl.scan_ipc(path)
        rows = scan.select(pl.len()).collect().item()
        for offset in range(0, max(rows, 1), batch_rows):
            yield scan.slice(offset, batch_rows).collect()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's fault
        raise _unreadable(path, exc) from exc


def _columns(raw: pl.DataFrame, path: Path) -> tuple[str, dict[str, str]]:
    """The file's date column and its price columns by lower-case name, or a one-line error."""
    by_lower = {name.lower().strip(): name for name in raw.columns}
    date_column = next((by_lower[n] for n in _DATE_NAMES if n in by_lower), None)
    if date_column is None and raw.columns and _is_index_name(raw.columns[0]):
        # pandas' df.to_csv() writes the index first, under an empty header: a DatetimeIndex
        # is the timestamp column. Anything else there stays "missing column date".
        if raw.height and parse_dates(raw[raw.columns[0]]).is_not_null().all():
            date_column = raw.columns[0]
    missing = [c for c in PRICE_COLUMNS if c not in by_lower]
    if date_column is None or missing:
        need = (["date"] if date_column is None else []) + missing
        raise InputError(
            f"{path}: missing column(s) {', '.join(need)}; found {', '.join(raw.columns) or 'none'}; "
            "need Date (or datetime/timestamp, or an unnamed first column of timestamps as pandas "
            "writes it), Open, High, Low, Close, Volume in any case"
        )
    return date_column, by_lower


def _bars(raw: pl.DataFrame, path: Path, named: tuple[str, dict[str, str]], first_row: int) -> pl.DataFrame:
    """`_row` (the row's index in the file), ts and the prices of rows read from `path` starting at
    row `first_row` (`named`: from `_columns`), or a one-line error naming the first value that is not
    a date or a number."""
    date_column, by_lower = named
    label = row_labeller(path)
    raw_dates = raw[date_column]
    if raw_dates.dtype == pl.Datetime or isinstance(raw_dates.dtype, pl.Datetime):
        tz = raw_dates.dtype.time_zone
        ts = raw_dates.dt.cast_time_unit("us")
        ts = ts.dt.convert_time_zone("UTC") if tz else ts.dt.replace_time_zone("UTC")
    else:
        ts = parse_dates(raw_dates)
    bad = ts.is_null()
    if bad.any():
        index = int(bad.arg_true()[0])
        raise InputError(
            f"{label(first_row + index)}: cannot parse date {raw_dates[index]!r}; "
            "use ISO-8601 (naive times are read as UTC) or epoch seconds/milliseconds"
        )
    columns = {"ts": ts}
    for name in PRICE_COLUMNS:
        values = raw[by_lower[name]].cast(pl.Float64, strict=False)
        unparsable = values.is_null() & raw[by_lower[name]].is_not_null()
        if unparsable.any() or values.is_null().any():
            index = int((unparsable | values.is_null()).arg_true()[0])
            raise InputError(f"{label(first_row + index)}: {name} {raw[by_lower[name]][index]!r} is not a number")
        columns[name] = values
    return pl.DataFrame(columns).with_row_index("_row", offset=first_row).with_columns(pl.col("_row").cast(pl.Int64))


def read_ohlcv_file(path: Path, validate: bool = True, window: BarWindow | None = None) -> pl.DataFrame:
    """Read a CSV, Parquet or Feather OHLCV file into a validated price frame, sorted by time.

    Raises InputError naming the file (and the row) for anything it cannot accept, bars outside
    `window` included. Without `validate` (data health checks of a file) bad prices and duplicate
    times are kept. A file too big to hold whole is read with `read_ohlcv_batches`.
    """
    path = check_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            raw = pl.read_csv(path, infer_schema=False)
        elif suffix == ".parquet":
            raw = pl.read_parquet(path)
        else:
            raw = pl.read_ipc(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's fault
        raise _unreadable(path, exc) from exc
    frame = _bars(raw, path, _columns(raw, path), 0)
    if validate:
        validate_prices(frame, row_labeller(path), window or BarWindow())
    return frame.sort("ts").drop("_row")


def read_ohlcv_batches(path: Path, window: BarWindow | None = None, *, block_bytes: int = CSV_BLOCK_BYTES,
                       batch_rows: int = BATCH_ROWS) -> Iterator[pl.DataFrame]:
    """The file's bars a bounded batch at a time, in file order, each row checked by `bar_rules`
    (the first bad row refuses the file in one line naming it); `_row` is the row's index in the file.
    Memory holds a batch, not the file. Two rows of one time with different bars may sit in different
    batches: the caller refuses them (`refuse_conflicting_duplicates`) once it has them together."""
    path = check_file(path)
    named, first_row = None, 0
    window = window or BarWindow()
    for raw in _raw_batches(path, block_bytes, batch_rows):
        named = named or _columns(raw, path)
        frame = _bars(raw, path, named, first_row)
        refuse_bad_rows(frame, row_labeller(path), window)
        first_row += raw.height
        yield frame


# One spilled bar: its row in the file, its time (microseconds since the epoch) and its prices.
_SPILL_ROW = np.dtype([("_row", "<i8"), ("ts", "<i8"), *((column, "<f8") for column in PRICE_COLUMNS)])


def _year_of(ts: pl.Expr) -> pl.Expr:
    """The stretch of a bar in a `SpilledFile`: the year of the Sunday that ends its week (weeks start on
    Monday 00:00 UTC). A stretch is about a year, cut at week edges, which are edges of every interval's
    buckets: bars derived from one stretch never share a bucket with another's."""
    return (ts.dt.truncate(intervals.POLARS_EVERY["1w"]) + pl.duration(days=6)).dt.year()


class SpilledFile:
    """A file the importer does not hold whole: read a batch at a time (`read_ohlcv_batches`, every row checked by the bar
    rules) into unnamed temporary files, one per year (`_year_of`), and handed back a year at a time.

    Memory holds a batch or a year, never the file; the temporary files have no name, so they vanish
    when closed or when the process ends, however it ends. Reading the years back once refuses two
    different bars at one time (naming both rows) and counts the gaps: `spacing` names the file's
    interval (`interval_of_spacing`). Use it as a context manager.
    """

    def __init__(self, path: Path, window: BarWindow | None = None) -> None:
        self.path = Path(path)
        self.rows = 0
        self._years: dict[int, IO[bytes]] = {}
        try:
            for batch in read_ohlcv_batches(self.path, window):
                self._spill(batch)
            gaps = Gaps()
            for bars in self.years():
                refuse_conflicting_duplicates(bars, row_labeller(self.path))
                gaps.add(bars["ts"].unique(maintain_order=True))
            self.spacing = gaps.most_common()
        except BaseException as exc:
            self.close()
            if is_disk_full(exc):  # about the file's size in rows of 56 bytes
                raise disk_full(tempfile.gettempdir(), self.path.stat().st_size, "TMPDIR") from None
            raise

    def _spill(self, batch: pl.DataFrame) -> None:
        self.rows += batch.height
        keyed = batch.with_columns(_year_of(pl.col("ts")).alias("_year"))
        for (year,), part in keyed.partition_by("_year", as_dict=True).items():
            rows = np.empty(part.height, dtype=_SPILL_ROW)
            rows["_row"] = part["_row"].to_numpy()
            rows["ts"] = part["ts"].dt.epoch("us").to_numpy()
            for column in PRICE_COLUMNS:
                rows[column] = part[column].to_numpy()
            if year not in self._years:
                self._years[year] = tempfile.TemporaryFile(prefix="cryptobt-import-")
            self._years[year].write(rows.tobytes())

    def years(self) -> Iterator[pl.DataFrame]:
        """Each year's bars, years in order, sorted by time then row: `_row`, ts, open..volume."""
        for year in sorted(self._years):
            file = self._years[year]
            file.seek(0)
            rows = np.frombuffer(file.read(), dtype=_SPILL_ROW)
            file.seek(0, io.SEEK_END)
            yield pl.DataFrame({name: rows[name] for name in _SPILL_ROW.names}).with_columns(
                pl.col("ts").cast(pl.Datetime("us", "UTC"))).sort("ts", "_row")

    def close(self) -> None:
        for file in self._years.values():
            file.close()
        self._years.clear()

    def __enter__(self) -> SpilledFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
