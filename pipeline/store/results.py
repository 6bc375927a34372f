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

Writes never touch an existing file: each run writes a new file per strategy, first to a
hidden temp file in the same directory (``.<run_id>.parquet.<pid>-<random>.tmp``, which no
``*.parquet`` glob matches), fsynced, then published under its final name with a hard
link, which fails instead of overwriting. A writer killed midway leaves only a hidden
temp file behind; readers never see it, and the next command that reads or writes the tables
removes it (`sweep_stale`): each writer lists its temp files in a lease it holds (an flock) for
its life, ``<root>/.writers/<pid>-<random>.lease``, so only a dead writer's are removed, never a
live one's. A run killed that way is recorded in ``runs`` as interrupted with no results.

Column sets are the schema constants below (``RESULT_SCHEMA``, ``TRADE_SCHEMA``,
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

import atexit
import contextlib
import contextvars
import fcntl
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import run_options, stopping
from pipeline.core.config import check_writable_folder
from pipeline.core.errors import InputError, PipelineError, disk_full, is_disk_full
from pipeline.core.versions import ENGINE_VERSION, __version__

if TYPE_CHECKING:
    import duckdb

# The fixed superset of every strategy's parameter names; one DOUBLE column each.
PARAM_COLUMNS: tuple[str, ...] = (
    "bb_period",
    "bb_std",
    "fast_period",
    "overbought_threshold",
    "oversold_threshold",
    "rsi_period",
    "signal_period",
    "slow_period",
)

_TS = pa.timestamp("us", tz="UTC")

RESULT_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", _TS, nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("interval", pa.string(), nullable=False),
        pa.field("params_json", pa.string(), nullable=False),
        *(pa.field(name, pa.float64()) for name in PARAM_COLUMNS),
        pa.field("start", _TS),
        pa.field("end", _TS),
        pa.field("timerange_start", _TS),
        pa.field("timerange_end", _TS),
        pa.field("bars", pa.int64()),
        pa.field("days_of_data", pa.float64()),
        pa.field("final_value", pa.float64()),
        pa.field("total_return_pct", pa.float64()),
        pa.field("buy_hold_return_pct", pa.float64()),
        pa.field("num_trades", pa.int64()),
        pa.field("closed_trades", pa.int64()),
        pa.field("win_rate_pct", pa.float64()),
        pa.field("max_drawdown_pct", pa.float64()),
        pa.field("sharpe", pa.float64()),
        pa.field("exposure_pct", pa.float64()),
        # The full stats set (README: formulas); *_bars count the symbol's bars.
        pa.field("cagr_pct", pa.float64()),
        pa.field("annual_return_pct", pa.float64()),
        pa.field("annual_volatility_pct", pa.float64()),
        pa.field("sortino", pa.float64()),
        pa.field("calmar", pa.float64()),
        pa.field("max_drawdown_duration_bars", pa.int64()),
        pa.field("avg_drawdown_pct", pa.float64()),
        pa.field("best_trade_pct", pa.float64()),
        pa.field("worst_trade_pct", pa.float64()),
        pa.field("avg_trade_pct", pa.float64()),
        pa.field("avg_trade_duration_bars", pa.float64()),
        pa.field("max_trade_duration_bars", pa.int64()),
        pa.field("profit_factor", pa.float64()),
        pa.field("expectancy", pa.float64()),
        pa.field("sqn", pa.float64()),
        pa.field("fees_paid", pa.float64()),
        pa.field("final_value_net", pa.float64()),
        pa.field("warmup_bars", pa.int64()),
        pa.field("partial_bars", pa.int64()),
        pa.field("min_bar_coverage", pa.float64()),
        pa.field("annualization", pa.string()),
        pa.field("bars_per_year", pa.float64()),
        pa.field("fill", pa.string()),
        pa.field("fee_pct", pa.float64()),
        pa.field("initial_investment", pa.float64()),
        # SPEC 4.1: stop-loss and take-profit in percent (0 = none), trailing, size, slippage in percent.
        pa.field("sl_pct", pa.float64()),
        pa.field("tp_pct", pa.float64()),
        pa.field("trail", pa.bool_()),
        pa.field("size", pa.float64()),
        pa.field("slippage_pct", pa.float64()),
        pa.field("snapshot_id", pa.string()),
        pa.field("computed_snapshot_id", pa.string()),
        # Where the bars came from (the snapshot's source) and which market they are: the same symbol
        # name from two sources or markets is two series (NULL in files written before: spot).
        pa.field("source", pa.string()),
        pa.field("market", pa.string()),
        pa.field("data_version", pa.string()),
        pa.field("engine_version", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("from_cache", pa.bool_()),
        # 'single' (one account per symbol) or 'portfolio' (one account over `n_symbols`
        # symbols; `symbol` is '*'); the portfolio's settings follow, NULL for single rows.
        pa.field("mode", pa.string()),
        pa.field("n_symbols", pa.int64()),
        pa.field("max_open", pa.int64()),
        pa.field("stake", pa.float64()),
        pa.field("stake_mode", pa.string()),
        pa.field("rank_by", pa.string()),
        pa.field("skipped_no_slot", pa.int64()),
        pa.field("skipped_no_cash", pa.int64()),
        # Sweeps only (NULL otherwise; README "Overfitting statistics"): parameter sets tried on
        # the symbol, its probability of backtest overfitting, and this row's deflated Sharpe ratio.
        pa.field("n_trials", pa.int64()),
        pa.field("pbo", pa.float64()),
        pa.field("deflated_sharpe", pa.float64()),
        # Walk-forward rows (--walk-forward; NULL otherwise): the fold, and which part the row
        # measures: train / test (the set chosen on the fold's train part) or oos (a symbol's
        # test parts stitched; its params are {}); walk_forward_flat_start: whether the run's test
        # parts started flat (--walk-forward-flat-start) or carried the full-history position in.
        pa.field("fold", pa.int64()),
        pa.field("split", pa.string()),
        pa.field("walk_forward_flat_start", pa.bool_()),
    ]
)

TRADE_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", _TS, nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("interval", pa.string(), nullable=False),
        pa.field("params_json", pa.string(), nullable=False),
        pa.field("snapshot_id", pa.string()),
        pa.field("data_version", pa.string()),
        pa.field("trade_no", pa.int64(), nullable=False),  # 0-based, within its result and kind
        # 'fill' (one buy or sell: time .. indicator) or 'round_trip' (an entry with its exit:
        # entry_time .. exit_reason); NULL in files written before round trips = 'fill'.
        pa.field("kind", pa.string()),
        pa.field("time", _TS),
        pa.field("action", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("units", pa.float64()),
        pa.field("value", pa.float64()),
        pa.field("fee", pa.float64()),
        pa.field("indicator", pa.float64()),
        pa.field("entry_time", _TS),
        pa.field("entry_price", pa.float64()),
        pa.field("exit_time", _TS),
        pa.field("exit_price", pa.float64()),
        pa.field("fees", pa.float64()),
        pa.field("pnl", pa.float64()),
        pa.field("return_pct", pa.float64()),
        pa.field("bars_held", pa.int64()),
        pa.field("exit_reason", pa.string()),
        # The result's run parameters: with params_json they tell a stop sweep's results apart.
        pa.field("sl_pct", pa.float64()),
        pa.field("tp_pct", pa.float64()),
        pa.field("trail", pa.bool_()),
        pa.field("size", pa.float64()),
        pa.field("slippage_pct", pa.float64()),
    ]
)
# The fields of one round trip (SPEC 4.1), as --json, the trades table and the notebook name them.
ROUND_TRIP_FIELDS = ("entry_time", "entry_price", "exit_time", "exit_price", "units", "fees", "pnl", "return_pct",
                     "bars_held", "exit_reason")
_RUN_PARAMETER_FIELDS = ("sl_pct", "tp_pct", "trail", "size", "slippage_pct")

RUN_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("started_at", _TS, nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("n_symbols", pa.int64()),
        pa.field("n_results", pa.int64()),
        pa.field("bars", pa.int64()),  # bar-steps simulated: sum of `bars` over the results
        pa.field("cache_hits", pa.int64()),
        pa.field("cache_misses", pa.int64()),
        pa.field("hit_ratio", pa.float64()),  # null when nothing was looked up
        pa.field("throughput", pa.float64()),  # bar-steps per second
        pa.field("snapshot_id", pa.string()),
        pa.field("engine_version", pa.string()),
        pa.field("code_version", pa.string()),
        pa.field("command", pa.string()),
        # Stopped before it finished (SIGINT, SIGTERM, an API client gone, a server shutting down, or
        # killed: then recorded by the next command, with no results); `planned` is the results it
        # would have had (NULL for a killed run and in files written before these columns).
        pa.field("interrupted", pa.bool_()),
        pa.field("planned", pa.int64()),
    ]
)

# DuckDB spelling of the column types above (for columns older files lack).
_DUCKDB_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN",
                 pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ"}

# Hive partition columns as DuckDB infers them; used for the empty views.
_PARTITION_FIELDS = [pa.field("run_date", pa.date32())]

_TIMESTAMP_FIELDS = ("start", "end", "timerange_start", "timerange_end")
_REQUIRED_FIELDS = ("symbol", "strategy", "interval", "params")
# `pa.Schema.names` builds a new list on every use: a run looks names up once per row and field.
_RESULT_NAMES = tuple(RESULT_SCHEMA.names)
_RESULT_NAME_SET = frozenset(_RESULT_NAMES)
# Path components come from run ids and strategy names: no separators, no leading dot.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

_TOP_SQL = """
SELECT symbol, strategy, params_json, interval, total_return_pct, buy_hold_return_pct,
       sharpe, max_drawdown_pct, win_rate_pct, num_trades, closed_trades, final_value,
       sl_pct, tp_pct, trail, size, slippage_pct, snapshot_id, source, coalesce(market, 'spot') AS market,
       data_version, run_id, created_at
FROM results
WHERE ($1::VARCHAR IS NULL OR strategy = $1)
  AND ($2::VARCHAR IS NULL OR run_id = $2)
  AND ($4::BIGINT IS NULL OR num_trades >= $4)
  AND total_return_pct IS NOT NULL
  AND coalesce(mode, 'single') = 'single'
  AND fold IS NULL AND split IS NULL
-- The same backtest re-run in later runs counts once: keep its newest row.
QUALIFY row_number() OVER (
    PARTITION BY symbol, strategy, params_json, interval, timerange_start, timerange_end,
                 fill, fee_pct, initial_investment, sl_pct, tp_pct, trail, size, slippage_pct,
                 source, coalesce(market, 'spot'), data_version, engine_version
    ORDER BY created_at DESC, run_id DESC) = 1
ORDER BY total_return_pct DESC, symbol, params_json
LIMIT $3
"""

_RUN_STATS_SQL = """
SELECT count(*) AS runs,
       quantile_cont(duration_s, [0.5, 0.95, 0.99]) AS duration_quantiles,
       sum(cache_hits) AS cache_hits,
       sum(cache_misses) AS cache_misses,
       sum(bars) AS bar_steps,
       sum(duration_s) AS total_duration_s,
       sum(duration_s) FILTER (WHERE bars IS NOT NULL) AS measured_duration_s,
       sum(n_results) AS results,
       count(*) FILTER (WHERE interrupted) AS interrupted
FROM runs
WHERE started_at >= $1
"""


def trades_root(results_root: str | os.PathLike[str]) -> Path:
    """Root of the trades table: the sibling ``trades`` directory of the results root."""
    return Path(results_root).parent / "trades"


def runs_root(results_root: str | os.PathLike[str]) -> Path:
    """Root of the runs table: the sibling ``runs`` directory of the results root."""
    return Path(results_root).parent / "runs"


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts by creation time: ``YYYYMMDDTHHMMSSffffffZ-<8 hex>``."""
    now = _utc_now() if now is None else _as_utc(now, "now")
    return f"{now:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}"


def params_json(params: Mapping[str, Any]) -> str:
    """Canonical JSON of a parameter set: sorted keys, no spaces."""
    return json.dumps(_plain(dict(params)), sort_keys=True, separators=(",", ":"))


@lru_cache(maxsize=65_536)
def _params_json_cached(items: tuple) -> str:
    # A sweep repeats each parameter set across every symbol: encode each once.
    return params_json({name: value for name, _, value in items})


def _canonical_params(params: Mapping[str, Any]) -> str:
    # The type is part of the key: 14 == 14.0 as dict keys, but their JSON differs.
    return _params_json_cached(tuple(sorted((k, type(v), v) for k, v in params.items())))


def append_results(
    results_root: str | os.PathLike[str],
    run_id: str,
    results: Iterable[Mapping[str, Any]],
    created_at: datetime | None = None,
) -> list[Path]:
    """Append result records as new files, one per strategy; returns the files written."""
    created = _utc_now() if created_at is None else _as_utc(created_at, "created_at")
    rows_by_strategy: dict[str, list[dict[str, Any]]] = {}
    for record in results:
        row = _result_row(record, run_id, created)
        rows_by_strategy.setdefault(row["strategy"], []).append(row)
    return [
        _write_table(Path(results_root), run_id, strategy, created, rows, _param_fields(RESULT_SCHEMA, rows))
        for strategy, rows in rows_by_strategy.items()
    ]


def result_schema(params_list: Sequence[Mapping[str, Any]]) -> pa.Schema:
    """RESULT_SCHEMA with a DOUBLE column for each numeric parameter of `params_list` that has none
    (a user strategy's own parameters), as `append_results` gives a run's rows."""
    extra = sorted({name for params in params_list for name, value in params.items()
                    if name not in _RESULT_NAME_SET and isinstance(value, int | float)})
    return pa.schema([*RESULT_SCHEMA, *(pa.field(name, pa.float64()) for name in extra)])


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
        _check_name(run_id, "run_id")
        _check_name(strategy, "strategy")
        self.created = _as_utc(created, "created_at")
        self.run_id, self.strategy, self.schema = run_id, strategy, schema
        self.path = (Path(results_root) / f"run_date={self.created.date().isoformat()}" / f"strategy={strategy}"
                     / f"{run_id}.parquet")
        self.rows = 0
        self._files = contextlib.ExitStack()
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []  # parts not written yet: a row group per SINK_ROWS rows

    def __enter__(self) -> ResultSink:
        self._handle = self._files.enter_context(_writing(self.path))
        return self

    def __exit__(self, *exc: Any) -> bool:
        if exc[0] is not None:
            return self._files.__exit__(*exc)
        with contextlib.suppress(_NothingToWrite), contextlib.ExitStack() as unwind:
            unwind.push(self._files)  # closed (and published) even if the last write fails
            self.flush()
            if self._writer is None:
                raise _NothingToWrite  # the temp file is removed, nothing published
        return False

    def write_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Result records (dicts, `engine.shape_result`'s fields) as rows."""
        rows = [_result_row(record, self.run_id, self.created) for record in records]
        if rows:
            self._write(_rows_table(rows, self.schema))

    def write_columns(self, columns: Any) -> None:
        """An `engine.ResultColumns` as rows (no dict per result)."""
        if columns.n_rows:
            self._write(_columns_table(columns, self.run_id, self.created, self.schema))

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


def _columns_table(columns: Any, run_id: str, created: datetime, schema: pa.Schema) -> pa.Table:
    """The results-table rows of an `engine.ResultColumns`: the same values `_result_row` gives
    each of its results as a record (tests/test_overfit.py compares them)."""
    n = columns.n_rows
    by_set = [(params, execution.fields()) for params, execution in columns.config.sets]

    def per_set(values: list[Any], kind: pa.DataType) -> pa.Array:
        return pa.array(values, type=kind).take(pa.array(columns.set_index))

    def constant(value: Any, kind: pa.DataType) -> pa.Array:
        return pa.nulls(n, kind) if value is None else pa.repeat(pa.scalar(value, kind), n)

    arrays: dict[str, pa.Array] = {}
    for field in schema:
        name, kind = field.name, field.type
        if name == "run_id":
            arrays[name] = constant(run_id, kind)
        elif name == "created_at":
            arrays[name] = constant(created, kind)
        elif name == "params_json":
            arrays[name] = per_set([_canonical_params(params) for params, _ in by_set], kind)
        elif name in columns.per_symbol:
            arrays[name] = pa.array(columns.per_symbol[name], type=kind).take(pa.array(columns.symbol_index))
        elif name in columns.fields:
            values = columns.fields[name]
            if values.dtype.kind == "M":
                arrays[name] = pa.array(values, from_pandas=True).cast(kind)
            elif values.dtype.kind == "O":
                arrays[name] = pa.array(values, type=kind, from_pandas=True)
            else:
                arrays[name] = pa.array(values, from_pandas=True).cast(kind)
        elif name in columns.constants:
            value = columns.constants[name]
            arrays[name] = constant(_parse_ts(value, name) if name in _TIMESTAMP_FIELDS else value, kind)
        elif name == "mode":
            arrays[name] = constant("single", kind)
        elif name in _RUN_PARAMETER_FIELDS:
            arrays[name] = per_set([fields[name] for _, fields in by_set], kind)
        elif name not in _RESULT_NAME_SET or name in PARAM_COLUMNS:
            # A parameter's own column: its value where the set has it (numbers only, as _result_row).
            arrays[name] = per_set([float(params[name]) if isinstance(params.get(name), int | float)
                                    and not isinstance(params.get(name), bool) else None
                                    for params, _ in by_set], kind)
        else:
            arrays[name] = pa.nulls(n, kind)
    return pa.Table.from_arrays(list(arrays.values()), schema=schema)


def append_trades(
    results_root: str | os.PathLike[str],
    run_id: str,
    results: Iterable[Mapping[str, Any]],
    created_at: datetime | None = None,
) -> list[Path]:
    """Append the ``trades`` (fills) and ``round_trips`` lists of result records to the trades
    table, one row each (``kind`` says which); returns the files."""
    created = _utc_now() if created_at is None else _as_utc(created_at, "created_at")
    rows_by_strategy: dict[str, list[dict[str, Any]]] = {}
    for record in results:
        trades = record.get("trades") or ()
        trips = record.get("round_trips") or ()
        if not trades and not trips:
            continue
        result = _result_row(record, run_id, created)
        head = {name: result.get(name) for name in ("run_id", "created_at", "symbol", "strategy", "interval",
                                                    "params_json", "snapshot_id", "data_version",
                                                    *_RUN_PARAMETER_FIELDS)}
        rows = rows_by_strategy.setdefault(result["strategy"], [])
        for trade_no, trade in enumerate(trades):
            rows.append({
                **head,
                "trade_no": trade_no,
                "kind": "fill",
                "time": _parse_ts(trade.get("time"), "trades.time"),
                **{name: _plain(trade.get(name)) for name in ("action", "price", "units", "value", "fee",
                                                              "indicator")},
            })
        for trade_no, trip in enumerate(trips):
            rows.append({
                **head,
                "trade_no": trade_no,
                "kind": "round_trip",
                **{name: _plain(trip.get(name)) for name in ROUND_TRIP_FIELDS},
                "entry_time": _parse_ts(trip.get("entry_time"), "round_trips.entry_time"),
                "exit_time": _parse_ts(trip.get("exit_time"), "round_trips.exit_time"),
            })
    root = trades_root(results_root)
    return [
        _write_table(root, run_id, strategy, created, rows, TRADE_SCHEMA)
        for strategy, rows in rows_by_strategy.items()
    ]


def append_run_metrics(
    results_root: str | os.PathLike[str],
    run_id: str,
    *,
    started_at: datetime,
    duration_s: float,
    strategy: str,
    n_symbols: int | None,
    n_results: int,
    bars: int | None,
    cache_hits: int = 0,
    cache_misses: int = 0,
    snapshot_id: str | None = None,
    command: str = "",
    code_version: str = __version__,
    engine_version: str = ENGINE_VERSION,
    interrupted: bool = False,
    planned: int | None = None,
) -> Path:
    """Append one row to the runs table; ``bars`` is the bar-steps simulated in the run."""
    started = _as_utc(started_at, "started_at")
    lookups = cache_hits + cache_misses
    row = {
        "run_id": run_id,
        "started_at": started,
        "duration_s": float(duration_s),
        "strategy": strategy,
        "n_symbols": n_symbols,
        "n_results": n_results,
        "bars": bars,
        "cache_hits": cache_hits,
        "cache_misses": cache_misses,
        "hit_ratio": cache_hits / lookups if lookups else None,
        "throughput": bars / duration_s if duration_s > 0 and bars is not None else None,
        "snapshot_id": snapshot_id,
        "engine_version": engine_version,
        "code_version": code_version,
        "command": command,
        "interrupted": interrupted,
        "planned": planned,
    }
    return _write_table(runs_root(results_root), run_id, strategy, started, [row], RUN_SCHEMA)


def connect(results_root: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with views ``results``, ``trades`` and ``runs`` (what killed
    runs left in their folders swept up first)."""
    from pipeline.lake.reader import connect_duckdb

    sweep_stale(results_root)
    con = connect_duckdb()
    tables = (
        ("results", Path(results_root), RESULT_SCHEMA),
        ("trades", trades_root(results_root), TRADE_SCHEMA),
        ("runs", runs_root(results_root), RUN_SCHEMA),
    )
    for name, root, schema in tables:
        if root.is_dir() and next(root.rglob("*.parquet"), None) is not None:
            # union_by_name: files written before a column was added still read.
            relation = con.read_parquet(
                str(root / "**" / "*.parquet"), hive_partitioning=True, union_by_name=True
            )
            # Columns added after every file on disk was written read as NULL.
            missing = [f for f in schema if f.name not in relation.columns]
            if missing:
                relation = relation.select(", ".join(
                    ["*"] + [f"CAST(NULL AS {_DUCKDB_TYPES[f.type]}) AS {f.name}" for f in missing]))
            relation.create_view(name)
        else:
            # No file yet: an empty table of the same shape, so queries still run.
            empty = pa.schema(list(schema) + _PARTITION_FIELDS).empty_table()
            con.register(name, empty)
    return con


def query(
    results_root: str | os.PathLike[str],
    sql: str,
    parameters: Sequence[Any] | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run read-only SQL over the views ``results``, ``trades``, ``runs``; returns (columns, rows).

    The query runs sandboxed (see `_sandbox`): SELECT statements only, and no file or network
    access beyond reading the three tables' folders.
    """
    if not sql.strip():
        raise InputError("the query is empty; e.g. SELECT count(*) FROM results")
    import duckdb

    con = connect(results_root)
    try:
        _sandbox(con, results_root)
        statements = con.extract_statements(sql)
        kinds = {statement.type for statement in statements}
        if not statements or kinds - {duckdb.StatementType.SELECT}:
            named = ", ".join(sorted(k.name for k in kinds - {duckdb.StatementType.SELECT})) or "none"
            raise InputError(f"only SELECT queries are allowed over results, trades and runs (found: {named}); "
                             "the tables are append-only and the query cannot read or write other files")
        cursor = con.execute(sql, parameters) if parameters is not None else con.execute(sql)
        if cursor is None or cursor.description is None:
            return [], []
        return [d[0] for d in cursor.description], cursor.fetchall()
    except duckdb.Error as exc:
        # DuckDB's message spans lines (the query with a caret under the error): keep its first line.
        raise PipelineError(f"query failed: {str(exc).strip().splitlines()[0]}") from exc
    finally:
        con.close()


def _sandbox(con: duckdb.DuckDBPyConnection, results_root: str | os.PathLike[str]) -> None:
    """Confine `con` to reading the results, trades and runs folders: no other file, no network,
    no extension, and the configuration locked so the query cannot undo it."""
    folders = [str(Path(root).resolve()) + os.sep for root in
               (results_root, trades_root(results_root), runs_root(results_root))]
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET allowed_directories = ?", [folders])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def top(
    results_root: str | os.PathLike[str],
    strategy: str | None = None,
    n: int = 10,
    run_id: str | None = None,
    min_trades: int | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The ``n`` best results by total return (a backtest repeated across runs counts once; walk-forward
    fold rows and portfolio accounts are not backtests of the whole range and are left out); with
    ``min_trades``, only results with at least that many entries."""
    if n < 1:
        raise InputError(f"n={n} must be >= 1")
    return query(results_root, _TOP_SQL, [strategy, run_id, n, min_trades])


_RUN_ROWS_SQL = """
SELECT * EXCLUDE (run_date) FROM results WHERE run_id = $1
ORDER BY total_return_pct DESC NULLS LAST, symbol
"""


def run_rows(results_root: str | os.PathLike[str], run_id: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Every results row of one run, best total return first."""
    return query(results_root, _RUN_ROWS_SQL, [run_id])


# A run's full-range rows (fold IS NULL) and, apart, its walk-forward rows (fold, split).
_SHOW_COLUMNS = """symbol, interval, params_json, total_return_pct, buy_hold_return_pct, num_trades, closed_trades,
       win_rate_pct, max_drawdown_pct, sharpe, sl_pct, tp_pct, trail, size, slippage_pct, n_trials, pbo,
       deflated_sharpe, bars, snapshot_id, data_version, from_cache, reason, fold, split, start, "end" """
_SHOW_SQL = f"""
SELECT {_SHOW_COLUMNS}
FROM results WHERE run_id = ? AND fold IS NULL AND coalesce(split, '') <> 'oos'
ORDER BY total_return_pct DESC NULLS LAST, symbol, params_json
LIMIT ?
"""  # noqa: S608 (a constant)
_SHOW_FOLDS_SQL = f"""
SELECT {_SHOW_COLUMNS}
FROM results WHERE run_id = ? AND (fold IS NOT NULL OR split = 'oos')
ORDER BY symbol, fold NULLS LAST, CASE split WHEN 'train' THEN 0 WHEN 'test' THEN 1 ELSE 2 END
"""  # noqa: S608 (a constant)
_SHOW_RUN_SQL = """
SELECT r.run_id, min(r.created_at) AS created_at, any_value(r.strategy) AS strategy, count(*) AS results,
       count(*) FILTER (WHERE r.fold IS NULL AND coalesce(r.split, '') <> 'oos') AS full_range_results,
       count(DISTINCT r.symbol) AS symbols, list(DISTINCT r.interval ORDER BY r.interval) AS intervals,
       any_value(r.snapshot_id) AS snapshot_id, any_value(r.fill) AS fill, any_value(r.fee_pct) AS fee_pct,
       any_value(r.initial_investment) AS initial_investment, any_value(r.timerange_start) AS timerange_start,
       any_value(r.timerange_end) AS timerange_end, any_value(u.command) AS command,
       any_value(u.duration_s) AS duration_s, any_value(r.mode) AS mode, any_value(u.interrupted) AS interrupted,
       any_value(u.planned) AS planned
FROM results r LEFT JOIN runs u USING (run_id)
WHERE r.run_id = ?
GROUP BY r.run_id
"""
# What a run varied: each distinct parameter set and run setting of its full-range rows.
_SHOW_SETS_SQL = """
SELECT DISTINCT params_json, sl_pct, tp_pct, trail, size, slippage_pct
FROM results WHERE run_id = ? AND fold IS NULL AND coalesce(split, '') <> 'oos'
"""
_LATEST_RUN_SQL = "SELECT run_id FROM results ORDER BY created_at DESC, run_id DESC LIMIT 1"
# SPEC 4.1's run settings, as the results table names them, and their values when not set.
# The per-set run options (stops, size, slippage) as results columns, with their defaults.
RUN_SETTING_DEFAULTS = {o.record_field: o.default for o in run_options.PER_SET}


def latest_run_id(results_root: str | os.PathLike[str]) -> str:
    """The newest run in the results table."""
    _, rows = query(results_root, _LATEST_RUN_SQL)
    if not rows:
        raise InputError(f"the results table at {results_root} holds no run yet: run `cryptobt backtest` first")
    return str(rows[0][0])


def show(results_root: str | os.PathLike[str], run_id: str | None = None, n: int = 20) -> dict[str, Any]:
    """A past run (the newest with `run_id` None) from the results table: what it ran (strategy,
    snapshot, options), which parameters it swept and which it held fixed, its best `n` full-range
    rows and, apart, its walk-forward rows (fold and split: train / test / oos)."""
    if n < 1:
        raise InputError(f"--n {n} must be >= 1")
    run_id = latest_run_id(results_root) if run_id is None else run_id
    columns, rows = query(results_root, _SHOW_RUN_SQL, [run_id])
    if not rows:
        raise InputError(f"no run {run_id!r} in the results table at {results_root}; recent runs: "
                         "cryptobt results runs")
    run = dict(zip(columns, rows[0], strict=True))
    set_columns, sets = query(results_root, _SHOW_SETS_SQL, [run_id])
    run["swept"], run["fixed"] = _swept_and_fixed([dict(zip(set_columns, row, strict=True)) for row in sets])
    board_columns, board = query(results_root, _SHOW_SQL, [run_id, n])
    _, folds = query(results_root, _SHOW_FOLDS_SQL, [run_id])
    return {"run": run, "columns": board_columns, "rows": board, "walk_forward": folds}


def _swept_and_fixed(sets: list[dict[str, Any]]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Parameters and run settings that take several values across a run's sets (sorted values), and
    those that take one (settings at their defaults are left out of `fixed`: nothing was set)."""
    values: dict[str, list[Any]] = {}
    for s in sets:
        for name, value in {**json.loads(s["params_json"] or "{}"),
                            **{k: s[k] for k in RUN_SETTING_DEFAULTS}}.items():
            if value is not None and value not in values.setdefault(name, []):
                values[name].append(value)
    swept = {k: sorted(v) for k, v in values.items() if len(v) > 1}
    fixed = {k: v[0] for k, v in values.items() if len(v) == 1 and RUN_SETTING_DEFAULTS.get(k, object()) != v[0]}
    return swept, fixed


_TRADES_SQL = """
SELECT symbol, params_json, entry_time, entry_price, exit_time, exit_price, units, fees, pnl, return_pct,
       bars_held, exit_reason, sl_pct, tp_pct, trail, size, slippage_pct
FROM trades
WHERE run_id = $1 AND kind = 'round_trip' AND ($2::VARCHAR IS NULL OR symbol = $2)
ORDER BY symbol, params_json, entry_time, trade_no
"""


def round_trips(results_root: str | os.PathLike[str], run_id: str | None = None,
                symbol: str | None = None) -> dict[str, Any]:
    """A run's round trips (SPEC 4.1) from the trades table, the newest run with `run_id` None: an entry
    with its exit, one row each; a position open at the end has `exit_reason = end_of_data`."""
    run_id = latest_run_id(results_root) if run_id is None else run_id
    columns, rows = query(results_root, _TRADES_SQL, [run_id, symbol])
    if not rows:
        _, found = query(results_root, "SELECT count(*), count(*) FILTER (WHERE symbol = $2) FROM results "
                         "WHERE run_id = $1", [run_id, symbol])
        total, of_symbol = found[0]
        if not total:
            raise InputError(f"no run {run_id!r} in the results table at {results_root}; recent runs: "
                             "cryptobt results runs")
        if symbol is not None and not of_symbol:
            raise InputError(f"run {run_id} has no results for symbol {symbol!r}")
        raise InputError(f"run {run_id} recorded no trades: only runs with --trades (or a portfolio) keep them; "
                         "re-run it with --trades")
    return {"run_id": run_id, "columns": columns, "rows": rows}


_RUNS_SQL = """
SELECT r.run_id, min(r.created_at) AS created_at, any_value(u.command) AS command,
       any_value(r.strategy) AS strategy, count(DISTINCT r.symbol) AS symbols, count(*) AS results,
       count(DISTINCT r.params_json) AS sets, any_value(r.snapshot_id) AS snapshot_id,
       any_value(u.duration_s) AS duration_s, coalesce(any_value(u.interrupted), false) AS interrupted
FROM results r LEFT JOIN runs u USING (run_id)
GROUP BY r.run_id
ORDER BY created_at DESC, r.run_id DESC
LIMIT $1
"""


def run_history(results_root: str | os.PathLike[str], n: int = 20) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The newest `n` runs: when, which command and strategy, how many symbols, results and sets,
    whether a stop signal interrupted it."""
    if n < 1:
        raise InputError(f"--n {n} must be >= 1")
    return query(results_root, _RUNS_SQL, [n])


def run_stats(
    results_root: str | os.PathLike[str],
    hours: float = 24.0,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Run metrics over the runs started in the last ``hours``.

    Percentiles interpolate linearly (DuckDB ``quantile_cont``, NumPy's default);
    hit rate and throughput are totals over the window, not means of per-run ratios.
    """
    now = _utc_now() if now is None else _as_utc(now, "now")
    since = now - timedelta(hours=hours)
    columns, rows = query(results_root, _RUN_STATS_SQL, [since])
    stats = dict(zip(columns, rows[0], strict=True))
    runs = int(stats["runs"])
    quantiles = stats["duration_quantiles"] or [None, None, None]
    hits = int(stats["cache_hits"] or 0)
    misses = int(stats["cache_misses"] or 0)
    bar_steps = int(stats["bar_steps"] or 0)
    total_s = float(stats["total_duration_s"] or 0.0)
    measured_s = float(stats["measured_duration_s"] or 0.0)  # less killed runs (their bar-steps are unknown)
    return {
        "hours": hours,
        "since": since,
        "runs": runs,
        "results": int(stats["results"] or 0),
        "interrupted_runs": int(stats["interrupted"] or 0),
        "duration_mean_s": total_s / runs if runs else None,
        "duration_p50_s": quantiles[0],
        "duration_p95_s": quantiles[1],
        "duration_p99_s": quantiles[2],
        "cache_hits": hits,
        "cache_misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else None,
        "bar_steps": bar_steps,
        "throughput_bar_steps_per_s": bar_steps / measured_s if measured_s > 0 else None,
    }


_SWEEP_SETS_SQL = """
SELECT params_json, sl_pct, tp_pct, trail, size, slippage_pct, count(total_return_pct) AS symbols,
       avg(total_return_pct) AS total_return_pct, avg(sharpe) AS sharpe, avg(max_drawdown_pct) AS max_drawdown_pct,
       avg(num_trades) AS num_trades
FROM results WHERE run_id = $1 AND split IS NULL AND ($2::VARCHAR IS NULL OR symbol = $2)
GROUP BY ALL
ORDER BY params_json, sl_pct, tp_pct, trail, size, slippage_pct
LIMIT $3
"""


def sweep_sets(results_root: str | os.PathLike[str], run_id: str, symbol: str | None = None,
               n: int = 100_000) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Each parameter set of a run with its mean metrics over the symbols (or on `symbol`): a
    sweep's heatmap. Walk-forward rows are left out."""
    return query(results_root, _SWEEP_SETS_SQL, [run_id, symbol, n])


# --- rows -----------------------------------------------------------------------------


def _result_row(record: Mapping[str, Any], run_id: str, created: datetime) -> dict[str, Any]:
    missing = [name for name in _REQUIRED_FIELDS if record.get(name) is None]
    if missing:
        raise InputError(f"result record lacks {', '.join(missing)}: {dict(record)!r:.200}")
    params = record["params"]
    if not isinstance(params, Mapping):
        raise InputError(f"result params must be a mapping, got {params!r}")
    row: dict[str, Any] = {
        name: _plain(record.get(name)) for name in _RESULT_NAMES if name in record
    }
    for name in _TIMESTAMP_FIELDS:
        row[name] = _parse_ts(record.get(name), name)
    row.update(
        run_id=run_id,
        created_at=created,
        params_json=_canonical_params(params),
        from_cache=bool(record.get("from_cache", False)),
        mode=record.get("mode", "single"),
    )
    if "symbols" in record:
        row["n_symbols"] = len(record["symbols"])
    # Parameters a strategy does not have stay null. A user strategy's own parameters get
    # columns of their own (see _param_fields); a name that is already a column lives in
    # params_json only.
    for name in PARAM_COLUMNS:
        value = params.get(name)
        row[name] = None if value is None else float(value)
    for name, value in params.items():
        if name not in _RESULT_NAME_SET and isinstance(value, int | float):
            row[name] = float(value)
    return row


def record_problem(record: Mapping[str, Any]) -> str | None:
    """Why `record` cannot become a row of the results table (a field of the wrong type), or None.

    A cheap check of each field against ``RESULT_SCHEMA`` for records from outside the engine
    (the cache): numbers must be numbers, strings strings, timestamps ISO strings.
    """
    for field in RESULT_SCHEMA:
        value = record.get(field.name)
        if value is None:
            continue
        kind = field.type
        if pa.types.is_floating(kind):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif pa.types.is_integer(kind):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif pa.types.is_boolean(kind):
            ok = isinstance(value, bool)
        elif pa.types.is_timestamp(kind):
            ok = isinstance(value, datetime) or (isinstance(value, str) and _parse_iso(value) is not None)
        else:
            ok = isinstance(value, str)
        if not ok:
            return f"{field.name}={value!r:.40} is not a {kind}"
    params = record.get("params")
    if not isinstance(params, Mapping) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in params.values()):
        return f"params={params!r:.60} is not a mapping of numbers"
    return None


def _param_fields(schema: pa.Schema, rows: list[dict[str, Any]]) -> pa.Schema:
    """`schema` plus a DOUBLE column for each parameter of these rows that has none yet."""
    known = set(schema.names)
    extra = sorted({name for row in rows for name in row if name not in known})
    for name in extra:
        schema = schema.append(pa.field(name, pa.float64()))
    return schema


def _write_table(
    root: Path,
    run_id: str,
    strategy: str,
    when: datetime,
    rows: list[dict[str, Any]],
    schema: pa.Schema,
) -> Path:
    _check_name(run_id, "run_id")
    _check_name(strategy, "strategy")
    directory = root / f"run_date={when.date().isoformat()}" / f"strategy={strategy}"
    return _publish(_rows_table(rows, schema), directory / f"{run_id}.parquet")


def _rows_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    columns = {}
    for field in schema:
        values = [row.get(field.name) for row in rows]
        try:
            # from_pandas: NaN becomes NULL. An undefined metric is NULL in SQL, and DuckDB's
            # filter pushdown mishandles NaN in Parquet (`NOT isnan(x)` can keep NaN rows).
            columns[field.name] = pa.array(values, type=field.type, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise InputError(f"column {field.name!r}: {exc}") from None
    return pa.Table.from_pydict(columns, schema=schema)


class _NothingToWrite(Exception):
    """A ResultSink that got no rows: its temp file is removed, nothing is published."""


class _Temp:
    """A hidden temp file beside `final` (``.<final>.<pid>-<random>.tmp``), listed in its writer's
    lease before it is made (`_lease`): `sweep_stale` removes only what dead writers' leases list."""

    def __init__(self, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        self.final = final
        self.path = final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        root = final.parents[2]  # every table file is <root>/run_date=.../strategy=.../<file>
        os.write(_lease(root), f"{self.path.relative_to(root)}\n".encode())
        self.handle = open(self.path, "xb")  # noqa: SIM115 - closed by `_writing`

    def discard(self) -> None:
        """Remove the temp name (the published name, if any, stays)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# Each process that writes a table holds a lease in its folder, `<root>/.writers/<pid>-<random>.lease`:
# flocked for the life of the process, it lists every temp file the process makes there, before it
# makes it. A lease nobody holds is a dead writer's: what it lists can go. A process that ends
# with none of its temp files left removes its leases itself.
WRITERS = ".writers"
_LEASES: dict[Path, tuple[int, int, Path]] = {}  # table root -> (pid, fd, path) of this process's lease
_LEASES_LOCK = threading.Lock()


def _lease(root: Path) -> int:
    """This process's lease in the table folder `root` (an append-only fd), made on first use."""
    with _LEASES_LOCK:
        held = _LEASES.get(root)
        if held is not None and held[0] == os.getpid():
            return held[1]
        if not any(pid == os.getpid() for pid, _, _ in _LEASES.values()):
            atexit.register(_end_leases)
        folder = root / WRITERS
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            path = folder / f"{os.getpid()}-{secrets.token_hex(4)}.lease"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break  # not taken for a dead writer's by a sweep between its creation and the lock
            os.close(fd)
        _LEASES[root] = (os.getpid(), fd, path)
        return fd


def _end_leases() -> None:
    """At exit: remove this process's leases that list no temp file still there (else a later
    command's sweep removes the files and the lease)."""
    for root, (pid, fd, path) in list(_LEASES.items()):
        if pid != os.getpid():
            continue
        with contextlib.suppress(OSError):
            if not any((root / name).exists() for name in path.read_text(encoding="utf-8").splitlines()):
                path.unlink()
        with contextlib.suppress(OSError):
            os.close(fd)
        del _LEASES[root]


class Publication:
    """What a `one_run` block published: `done` once every file is under its final name."""

    done = False


# The temp files staged by the `one_run` block in progress, published at its end.
_STAGED: contextvars.ContextVar[list[_Temp] | None] = contextvars.ContextVar("staged", default=None)


@contextmanager
def one_run() -> Iterator[Publication]:
    """Publish every file the block appends (a run's results, trades and runs row) together.

    Inside the block each table is written to its hidden temp file only; when the block ends
    without an error the files are linked under their final names one after the other, the
    runs row last, and a failure while linking removes this run's files already linked. An
    error inside the block (a full disk, say) publishes nothing. So a run is in the tables
    whole or not at all; only a SIGKILL between two links (microseconds) can leave a run's
    results without its runs row, and readers that need whole runs join on ``runs``. A stop
    signal while linking waits for the links (`stopping.uninterrupted`); the yielded
    `Publication` says whether they were all made.
    """
    staged: list[_Temp] = []
    publication = Publication()
    token = _STAGED.set(staged)
    try:
        yield publication
    except BaseException:
        with stopping.uninterrupted():
            for temp in staged:
                temp.discard()
        raise
    finally:
        _STAGED.reset(token)
    published: list[Path] = []
    with stopping.uninterrupted():
        try:
            for temp in staged:
                _link(temp.path, temp.final)
                published.append(temp.final)
        except BaseException:
            for final in published:
                with contextlib.suppress(FileNotFoundError):
                    final.unlink()
            raise
        finally:
            for temp in staged:
                temp.discard()
        publication.done = True
        for directory in {final.parent for final in published}:
            _fsync_dir(directory)


def check_writable(results_root: str | os.PathLike[str]) -> None:
    """Fail before a run computes anything if any of its three tables' folders cannot be written;
    sweep up what killed runs left there."""
    for root in (Path(results_root), trades_root(results_root), runs_root(results_root)):
        check_writable_folder(root, "CRYPTOBT_RESULTS_ROOT")
    sweep_stale(results_root)


def _publish(table: pa.Table, final: Path) -> Path:
    """Write ``table`` to ``final`` atomically; never replaces an existing file (inside `one_run`,
    only staged: the block publishes it)."""
    with _writing(final, table.nbytes) as handle:
        pq.write_table(table, handle, compression="zstd")
    return final


@contextmanager
def _writing(final: Path, needed_bytes: int | None = None) -> Iterator[Any]:
    """A hidden temp file beside ``final`` to write (`_Temp`); when the block ends without an error
    it is fsynced and published under ``final`` (inside `one_run`: staged, published with the
    run); on an error it is removed and nothing is published."""
    try:
        temp = _Temp(final)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(final.parent, needed_bytes, "CRYPTOBT_RESULTS_ROOT") from None
        raise
    staged = _STAGED.get()
    try:
        try:
            with temp.handle as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(final.parent, needed_bytes, "CRYPTOBT_RESULTS_ROOT") from None
            raise
        if staged is not None:
            staged.append(temp)
            return
        _link(temp.path, final)
    finally:
        if staged is None or temp not in staged:
            temp.discard()
    _fsync_dir(final.parent)


# A temp file of the tables, as a lease lists it: `run_date=.../strategy=.../.<final>.<pid>-<8 hex>.tmp`.
_LEASED_TEMP = re.compile(r"^run_date=[^/]+/strategy=[^/]+/\.(?P<final>[^/]+\.parquet)\.\d+-[0-9a-f]{8}\.tmp$")


def sweep_stale(results_root: str | os.PathLike[str]) -> list[Path]:
    """Remove the temp files that dead writers left in the three tables; returns them.

    Only what the lease of a writer that is gone lists (`_lease`): a live process's files are never
    touched, and the cost is a look at each table's `.writers` folder, not a walk of the tables.
    A results file of a run that was never published means the run was killed: it is recorded in
    ``runs`` as interrupted, with no results. Best effort: what cannot be removed stays."""
    removed: list[Path] = []
    for root in (Path(results_root), trades_root(results_root), runs_root(results_root)):
        try:
            leases = [entry.path for entry in os.scandir(root / WRITERS) if entry.name.endswith(".lease")]
        except OSError:
            continue
        for lease in leases:
            with contextlib.suppress(OSError):
                for temp, last_write in _sweep_lease(root, Path(lease)):
                    removed.append(temp)
                    if root == Path(results_root):
                        _record_killed(results_root, temp, last_write)
    return removed


def _sweep_lease(root: Path, lease: Path) -> list[tuple[Path, float]]:
    """If `lease`'s writer is gone: remove the temp files it lists, then the lease; returns the
    files removed with their last write (epoch seconds)."""
    fd = os.open(lease, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # its writer is alive
        if os.stat(lease).st_ino != os.fstat(fd).st_ino:
            return []  # swept by another command since it was opened
        with os.fdopen(os.dup(fd), encoding="utf-8", errors="replace") as listed:
            names = listed.read().splitlines()
        removed = []
        for name in dict.fromkeys(names):
            if not _LEASED_TEMP.match(name):
                continue  # not a temp file of this table: never touched
            temp = root / name
            with contextlib.suppress(FileNotFoundError):
                last_write = temp.stat().st_mtime
                temp.unlink()
                removed.append((temp, last_write))
        lease.unlink()
        return removed
    finally:
        os.close(fd)


def _record_killed(results_root: str | os.PathLike[str], temp: Path, last_write: float) -> None:
    """A runs row for the run whose results temp file `temp` a killed process left: interrupted,
    no results (unless the run was published after all: a kill between its links and the
    removal of its temp files)."""
    final = temp.with_name(_LEASED_TEMP.match(f"{temp.parent.parent.name}/{temp.parent.name}/{temp.name}")["final"])
    run_id = final.name.removesuffix(".parquet")
    strategy = final.parent.name.partition("=")[2]
    if final.exists() or not _SAFE_NAME.match(run_id) or not _SAFE_NAME.match(strategy):
        return
    try:
        started = datetime.strptime(run_id[:22], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:  # a run id of another form: the results folder's day
        started = datetime.fromisoformat(final.parent.parent.name.partition("=")[2]).replace(tzinfo=UTC)
    with contextlib.suppress(PipelineError, OSError):  # recorded already (another command swept it too)
        append_run_metrics(results_root, run_id, started_at=started,
                           duration_s=max(last_write - started.timestamp(), 0.0), strategy=strategy,
                           n_symbols=None, n_results=0, bars=None, command="(killed)", interrupted=True)


def _link(temp: Path, final: Path) -> None:
    try:
        # A hard link publishes atomically *and* fails if the name exists, which
        # os.replace would silently overwrite.
        os.link(temp, final)
    except FileExistsError:
        raise PipelineError(
            f"{final} already exists; results are append-only (use a new run id)"
        ) from None
    except OSError:
        # Filesystems without hard links: check, then replace (same directory, atomic).
        if final.exists():
            raise PipelineError(f"{final} already exists; results are append-only") from None
        os.replace(temp, final)


def _fsync_dir(directory: Path) -> None:
    # Makes the new directory entry durable; not possible on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- values ---------------------------------------------------------------------------


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise InputError(f"{what}={value!r} must match {_SAFE_NAME.pattern} (it names a path)")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise InputError(f"{what}={value!r} is not a datetime")
    # Naive timestamps are UTC throughout the project.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parse_ts(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _as_utc(value, what)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        parsed = _parse_iso(value)
        if parsed is None:
            raise InputError(f"{what}={value!r} is not an ISO-8601 timestamp")
        return parsed
    raise InputError(f"{what}={value!r} is not a timestamp")


@lru_cache(maxsize=65_536)
def _parse_iso(value: str) -> datetime | None:
    # A sweep repeats each symbol's start/end across every parameter set: parse each once.
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _plain(value: Any) -> Any:
    """NumPy scalars to Python ones (JSON and Arrow both want them)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value
