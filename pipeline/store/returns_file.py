"""`sweep --returns-out FILE.parquet`: a sweep's daily return matrix in long format, for a user's own
statistics (docs/statistics.md shows `arch` on it).

Columns: symbol, set (the set's index in the grid), one column per parameter, day (UTC date) and return.
Written symbol by symbol into a hidden temp file beside FILE, which takes FILE's name (replacing an older
one) only when the sweep finishes: a failed or stopped sweep leaves no half-written file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import PipelineError, disk_full, is_disk_full


def check_path(path: Path | str | None) -> Path | None:
    """A --returns-out path that can be written: a .parquet name in a folder that exists."""
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() != ".parquet":
        raise PipelineError(f"--returns-out {path}: use a .parquet file name")
    if not path.parent.is_dir():
        raise PipelineError(f"--returns-out {path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise PipelineError(f"--returns-out {path}: the folder {path.parent} is not writable")
    return path


def _param_type(values: list[Any]) -> pa.DataType:
    if all(isinstance(v, bool) for v in values):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pa.int64()
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return pa.float64()
    return pa.string()


class ReturnsWriter:
    """The long-format daily returns of a sweep, one symbol at a time (`add`), published by `close`."""

    def __init__(self, path: Path, sets: list[dict[str, Any]]) -> None:
        self.path = path
        names = list(dict.fromkeys(name for params in sets for name in params))
        clash = [n for n in names if n in ("symbol", "set", "day", "return")]
        if clash:
            raise PipelineError(f"--returns-out: parameter {clash[0]!r} has the name of a column of the file")
        types = {n: _param_type([p.get(n) for p in sets if p.get(n) is not None]) for n in names}
        self.params = {n: pa.array([p.get(n) for p in sets], type=types[n]) for n in names}
        self.schema = pa.schema([("symbol", pa.string()), ("set", pa.int64()),
                                 *((n, types[n]) for n in names), ("day", pa.date32()), ("return", pa.float64())])
        self.temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def add(self, symbol: str, first_day: int, returns: np.ndarray) -> None:
        """One symbol's matrix (days x sets, days from epoch day `first_day`) as rows, set by set."""
        n_days, n_sets = returns.shape
        if n_days == 0:
            return
        sets = np.repeat(np.arange(n_sets), n_days)
        take = pa.array(sets)
        columns = {"symbol": pa.array([symbol] * sets.size, type=pa.string()), "set": take,
                   **{n: values.take(take) for n, values in self.params.items()},
                   "day": pa.array(np.tile(np.arange(first_day, first_day + n_days, dtype=np.int32), n_sets),
                                   type=pa.date32()),
                   "return": pa.array(returns.T.ravel())}
        table = pa.table(columns, schema=self.schema)
        try:
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.temp, self.schema, compression="zstd")
            self.writer.write_table(table, row_group_size=1 << 20)
        except OSError as exc:
            self.discard()
            if is_disk_full(exc):
                raise disk_full(self.path.parent, table.nbytes, "--returns-out") from None
            raise
        self.rows += sets.size

    def close(self) -> Path:
        """Publish the file under its name (an empty one when no symbol had a full day)."""
        try:
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.temp, self.schema, compression="zstd")
            self.writer.close()
            with open(self.temp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(self.temp, self.path)
        except OSError as exc:
            self.discard()
            if is_disk_full(exc):
                raise disk_full(self.path.parent, None, "--returns-out") from None
            raise
        return self.path

    def discard(self) -> None:
        """Remove the temp file: nothing is published."""
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        with contextlib.suppress(FileNotFoundError):
            self.temp.unlink()
