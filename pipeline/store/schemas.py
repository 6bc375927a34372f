"""The column sets of the results tables: ``RESULT_SCHEMA`` (its metric columns from
pipeline/core/metrics.py), ``TRADE_SCHEMA`` and ``RUN_SCHEMA``, and the names derived from them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from pipeline.core import metrics, run_options

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


def _metric_fields(section: metrics.Section) -> list[pa.Field]:
    """The results columns of one section of the table of metrics."""
    return [pa.field(m.name, pa.from_numpy_dtype(m.dtype)) for m in metrics.of_section(section)]


# What names a result, first in the results and the trades tables.
_RESULT_HEAD = (
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("created_at", _TS, nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("strategy", pa.string(), nullable=False),
    pa.field("interval", pa.string(), nullable=False),
    pa.field("params_json", pa.string(), nullable=False),
)
# The per-set run options (stops, size, slippage; pipeline/core/run_options.py) as columns of both tables.
_OPTION_TYPES = {bool: pa.bool_(), str: pa.string()}  # any other option is a number
_PER_SET_COLUMNS = tuple(pa.field(o.record_field, _OPTION_TYPES.get(o.type, pa.float64()))
                         for o in run_options.PER_SET)

_FUTURES_RUN_COLUMNS = tuple(pa.field(o.record_field, _OPTION_TYPES.get(o.type, pa.float64()))
                             for o in run_options.FUTURES_RUN)

RESULT_SCHEMA = pa.schema(
    [
        *_RESULT_HEAD,
        *(pa.field(name, pa.float64()) for name in PARAM_COLUMNS),
        pa.field("start", _TS),
        pa.field("end", _TS),
        pa.field("timerange_start", _TS),
        pa.field("timerange_end", _TS),
        # Every result's metrics (pipeline/core/metrics.py), NULL where undefined.
        *_metric_fields("result"),
        pa.field("min_bar_coverage", pa.float64()),
        pa.field("annualization", pa.string()),
        # --detail: the finer interval stops were decided on (NULL: each bar by its own rule).
        pa.field("detail", pa.string()),
        pa.field("bars_per_year", pa.float64()),
        pa.field("fill", pa.string()),
        pa.field("fee_pct", pa.float64()),
        pa.field("initial_investment", pa.float64()),
        # SPEC 4.1: stop-loss and take-profit in percent (0 = none), trailing, size, slippage in percent.
        *_PER_SET_COLUMNS,
        pa.field("snapshot_id", pa.string()),
        pa.field("computed_snapshot_id", pa.string()),
        # Where the bars came from (the snapshot's source) and which market they are: the same symbol
        # name from two sources or markets is two series (NULL in files written before: spot).
        pa.field("source", pa.string()),
        pa.field("market", pa.string()),
        # Futures (SPEC 4.3): margin, mmr, tiers (the table's identity); leverage and direction are per set.
        *_FUTURES_RUN_COLUMNS,
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
        *_metric_fields("portfolio"),
        # Sweeps only (NULL otherwise; README "Overfitting statistics").
        *_metric_fields("sweep"),
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
        *_RESULT_HEAD,
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
        *_PER_SET_COLUMNS,
        # Futures round trips (SPEC 4.3): the position's side and the funding it paid; the market of
        # every row (NULL in files written before: spot).
        pa.field("side", pa.string()),
        pa.field("funding_paid", pa.float64()),
        pa.field("market", pa.string()),
    ]
)
# The fields of one round trip (SPEC 4.1), as --json, the trades table and the notebook name them.
ROUND_TRIP_FIELDS = ("entry_time", "entry_price", "exit_time", "exit_price", "units", "fees", "pnl", "return_pct",
                     "bars_held", "exit_reason")
# A futures round trip's fields beside those (leverage is a run parameter).
FUTURES_TRIP_FIELDS = ("side", "funding_paid")
RUN_PARAMETER_FIELDS = tuple(o.record_field for o in run_options.PER_SET)

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
DUCKDB_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN",
                 pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ"}

# Hive partition columns as DuckDB infers them; used for the empty views.
PARTITION_FIELDS = [pa.field("run_date", pa.date32())]

TIMESTAMP_FIELDS = ("start", "end", "timerange_start", "timerange_end")
REQUIRED_FIELDS = ("symbol", "strategy", "interval", "params")
# `pa.Schema.names` builds a new list on every use: a run looks names up once per row and field.
RESULT_NAMES = tuple(RESULT_SCHEMA.names)
RESULT_NAME_SET = frozenset(RESULT_NAMES)


def result_schema(params_list: Sequence[Mapping[str, Any]]) -> pa.Schema:
    """RESULT_SCHEMA with a DOUBLE column for each numeric parameter of `params_list` that has none
    (a user strategy's own parameters), as `append_results` gives a run's rows."""
    extra = sorted({name for params in params_list for name, value in params.items()
                    if name not in RESULT_NAME_SET and isinstance(value, int | float)})
    return pa.schema([*RESULT_SCHEMA, *(pa.field(name, pa.float64()) for name in extra)])
