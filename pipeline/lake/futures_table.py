"""The perpetuals' funding rates and mark bars in a snapshot (SPEC 4.3): one Parquet file beside the
price files, committed, checksummed and verified with them, read in the run's DuckDB read.

The export reads PostgreSQL's futures tables whole at every export (a few rows a day per perpetual) and
the commit writes the file only when its content changed, else hard-links the parent's. Each perpetual's
rows have a digest (`symbols`), folded into its series' data version when a futures run reads it, so
an imported funding rate or mark bar changes the cache keys of exactly the series it belongs to.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pipeline.core.objects import ObjectPath
from pipeline.lake.snapshots import read_whole
from pipeline.lake.verify import file_fingerprint

PATH = "futures/futures.parquet"
# The rows: the perpetual's series name, `funding` or `mark`, the mark's interval (NULL for funding),
# the time (funding: as stamped; mark: the bar's open) and the values (funding: the rate in `open`).
SCHEMA = {"symbol": pl.String, "kind": pl.String, "interval": pl.String, "datetime": pl.Datetime("us", "UTC"),
          "open": pl.Float64, "high": pl.Float64, "low": pl.Float64, "close": pl.Float64}


def canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows in the file's column types and order, sorted: equal content, equal bytes to hash."""
    return frame.select(list(SCHEMA)).cast(SCHEMA).sort(["symbol", "kind", "interval", "datetime"],
                                                         nulls_last=True)


def _digest(frame: pl.DataFrame) -> str:
    digest = hashlib.sha256()
    for name in SCHEMA:
        column = frame[name]
        if column.dtype == pl.String:
            digest.update("\x1f".join("" if v is None else v for v in column.to_list()).encode())
        elif column.dtype == pl.Datetime:
            digest.update(column.dt.epoch("us").to_numpy().astype(np.int64).tobytes())
        else:
            digest.update(column.fill_null(np.nan).to_numpy().astype(np.float64).tobytes())
        digest.update(b"\x1e")
    return digest.hexdigest()


def symbol_digests(frame: pl.DataFrame) -> dict[str, str]:
    """Each perpetual's digest of its rows (canonical order)."""
    return {str(key[0]): _digest(part) for key, part in sorted(frame.partition_by("symbol", as_dict=True).items())}


def stage(frame: pl.DataFrame | None, folder: Path, parent: dict | None, parent_path: Path | None) -> dict | None:
    """The manifest's `futures` record of the new snapshot staged in `folder`: the file written (or the
    parent's linked when the rows are the same), with each perpetual's digest. None: no futures rows.
    `frame` None keeps the parent's record (an export that did not read the futures tables)."""
    if frame is None:
        frame = read(parent_path.parent.parent, parent) if parent and parent_path is not None else None
        if frame is None:
            return None
    frame = canonical(frame)
    if frame.height == 0:
        return None
    digest = _digest(frame)
    target = folder / PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    if parent is not None and parent_path is not None and parent.get("digest") == digest:
        if isinstance(parent_path, ObjectPath):  # copied server-side when published (commit.publish_objects)
            return {**parent}
        os.link(parent_path, target)
        return {**parent}
    pq.write_table(frame.to_arrow(), target, compression="zstd")
    with open(target, "rb+") as handle:
        os.fsync(handle.fileno())
    return {"path": PATH, "rows": frame.height, "digest": digest, "symbols": symbol_digests(frame),
            **file_fingerprint(target)}


def read(snapshot_path: Path, record: dict | None) -> pl.DataFrame | None:
    """The futures rows of the snapshot at `snapshot_path` (its manifest's `record`), or None."""
    if not record:
        return None
    return read_whole(snapshot_path / record["path"])
