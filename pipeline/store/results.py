"""The append-only results tables: results, trades and runs, as hive-partitioned Parquet.

Layout (``root`` is ``settings.results_root``, ``data/results`` by default)::

    <root>/run_date=YYYY-MM-DD/strategy=<name>/<run_id>.parquet           results
    <root>/../trades/run_date=YYYY-MM-DD/strategy=<name>/<run_id>.parquet trades
    <root>/../runs/run_date=YYYY-MM-DD/strategy=<name>/<run_id>.parquet   runs

Trades and runs sit *next to* the results directory, not inside it, so that
``read_parquet('data/results/run_date=*/strategy=*/*.parquet', hive_partitioning = true)`` sees result
rows only. ``run_date`` is the UTC date of ``created_at`` (``started_at`` for runs); it
and ``strategy`` come from the path, and ``strategy`` is also stored in every file so a
file read on its own is complete.

`results compact` (`pipeline.store.compact`) merges a past day's folder into one
``compacted-<first>~<last run id>.parquet`` holding the same rows, swapped in whole.

Writes never touch an existing file: each run writes a new file per strategy, first to a
hidden temp file in the same directory (``.<run_id>.parquet.<pid>-<random>.tmp``, which no
``*.parquet`` glob matches), fsynced, then published under its final name with a hard
link, which fails instead of overwriting. A writer killed midway leaves only a hidden
temp file behind; readers never see it, and the next command that reads or writes the tables
removes it (`sweep_stale`): each writer lists its temp files in a lease it holds (an flock) for
its life, ``<root>/.writers/<pid>-<random>.lease``, so only a dead writer's are removed, never a
live one's. A run killed that way is recorded in ``runs`` as interrupted with no results.

Column sets are the schema constants of `pipeline.store.schemas` (``RESULT_SCHEMA``, ``TRADE_SCHEMA``,
``RUN_SCHEMA``). Parameters live in ``params_json`` (canonical JSON: sorted keys, no
spaces) and in one nullable DOUBLE column per parameter name of every strategy
(``PARAM_COLUMNS``), so one query spans all strategies. Note that ``end`` is an SQL
keyword: write ``"end"`` in queries. Trades join results on
``(run_id, symbol, strategy, interval, params_json, sl_pct, tp_pct, trail, size, slippage_pct)``
(the run parameters tell apart the results of a sweep over stops); its rows are fills
(``kind = 'fill'``) and round trips (``kind = 'round_trip'``). Undefined numbers (None or NaN in
a record) are stored as NULL, never NaN.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import objects
from pipeline.store.files import (
    NothingToWrite,
    Publication,
    one_run,
    rows_table,
    runs_root,
    trades_root,
    write_table,
    writing,
)
from pipeline.store.queries import (
    RUN_SETTING_DEFAULTS,
    connect,
    latest_run_id,
    query,
    round_trips,
    run_history,
    run_rows,
    run_stats,
    show,
    sweep_sets,
    top,
)
from pipeline.store.rows import columns_table, param_fields, record_problem, result_row
from pipeline.store.runlog import append_run_metrics, check_writable, sweep_stale
from pipeline.store.schemas import (
    PARAM_COLUMNS,
    RESULT_SCHEMA,
    ROUND_TRIP_FIELDS,
    RUN_SCHEMA,
    TRADE_SCHEMA,
    result_schema,
)
from pipeline.store.trades import append_trades
from pipeline.store.values import (
    as_utc,
    check_name,
    new_run_id,
    params_json,
    utc_now,
)

# The public entry points of the results tables, each from the module of its concern: callers import
# this module alone.
__all__ = [
    "PARAM_COLUMNS", "RESULT_SCHEMA", "ROUND_TRIP_FIELDS", "RUN_SCHEMA", "RUN_SETTING_DEFAULTS", "SINK_ROWS",
    "TRADE_SCHEMA", "Publication", "ResultSink", "append_results", "append_run_metrics", "append_trades",
    "check_writable", "connect", "latest_run_id", "new_run_id", "one_run", "params_json", "query", "record_problem",
    "result_schema", "round_trips", "run_history", "run_rows", "run_stats", "runs_root", "show", "sweep_sets",
    "sweep_stale", "top", "trades_root",
]


def append_results(
    results_root: str | os.PathLike[str],
    run_id: str,
    results: Iterable[Mapping[str, Any]],
    created_at: datetime | None = None,
) -> list[Path]:
    """Append result records as new files, one per strategy; returns the files written."""
    created = utc_now() if created_at is None else as_utc(created_at, "created_at")
    rows_by_strategy: dict[str, list[dict[str, Any]]] = {}
    for record in results:
        row = result_row(record, run_id, created)
        rows_by_strategy.setdefault(row["strategy"], []).append(row)
    return [
        write_table(objects.location(results_root), run_id, strategy, created, rows, param_fields(RESULT_SCHEMA, rows))
        for strategy, rows in rows_by_strategy.items()
    ]



# Rows a ResultSink holds before it writes them as one row group (~60 MB of Arrow at most).
SINK_ROWS = 65_536


class ResultSink:
    """One run's result rows of one strategy, written part by part into one Parquet file: a sweep's
    chunks of symbols go out as they finish (as columns, `engine.ResultColumns`), so memory holds
    one chunk, not the run. Published like every table file: whole, under its final name, when
    the `with` block ends without an error (inside `one_run`: with the rest of the run); a sink
    that got no rows writes nothing. Its temp file exists from the start of the block: a run
    killed at any point leaves it, and `sweep_stale` records the run as interrupted."""

    def __init__(self, results_root: str | os.PathLike[str], run_id: str, strategy: str, created: datetime,
                 schema: pa.Schema) -> None:
        check_name(run_id, "run_id")
        check_name(strategy, "strategy")
        self.created = as_utc(created, "created_at")
        self.run_id, self.strategy, self.schema = run_id, strategy, schema
        self.path = (objects.location(results_root) / f"run_date={self.created.date().isoformat()}" / f"strategy={strategy}"
                     / f"{run_id}.parquet")
        self.rows = 0
        self._files = contextlib.ExitStack()
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []  # parts not written yet: a row group per SINK_ROWS rows

    def __enter__(self) -> ResultSink:
        self._handle = self._files.enter_context(writing(self.path))
        return self

    def __exit__(self, *exc: Any) -> bool:
        if exc[0] is not None:
            return self._files.__exit__(*exc)
        with contextlib.suppress(NothingToWrite), contextlib.ExitStack() as unwind:
            unwind.push(self._files)  # closed (and published) even if the last write fails
            self.flush()
            if self._writer is None:
                raise NothingToWrite  # the temp file is removed, nothing published
        return False

    def write_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Result records (dicts, `engine.shape_result`'s fields) as rows."""
        rows = [result_row(record, self.run_id, self.created) for record in records]
        if rows:
            self._write(rows_table(rows, self.schema))

    def write_columns(self, columns: Any) -> None:
        """An `engine.ResultColumns` as rows (no dict per result)."""
        if columns.n_rows:
            self._write(columns_table(columns, self.run_id, self.created, self.schema))

    def _write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self.rows += table.num_rows
        if sum(t.num_rows for t in self._pending) >= SINK_ROWS:
            self.flush()

    def flush(self) -> None:
        """Write the rows held so far (the file is published when the sink's block ends)."""
        # Each write_table costs ~15 ms whatever its size (a row group's column chunks and statistics
        # for ~75 columns): a sweep's small chunks of symbols go out together.
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        self._pending = []
        if self._writer is None:
            self._writer = self._files.enter_context(pq.ParquetWriter(self._handle, self.schema, compression="zstd"))
        self._writer.write_table(table)
