"""Read-only SQL over the results, trades and runs tables (DuckDB views, sandboxed), and the
queries the CLI, the API and the dashboard ask: top, show, round trips, run history and stats."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.core import objects, run_options
from pipeline.core.errors import InputError, PipelineError
from pipeline.core.objects import ObjectPath
from pipeline.store.files import (
    COMPACTED_PREFIX,
    may_hold_run,
    reading,
    runs_root,
    trades_root,
)
from pipeline.store.runlog import sweep_stale
from pipeline.store.schemas import (
    DUCKDB_TYPES,
    PARTITION_FIELDS,
    RESULT_SCHEMA,
    RUN_SCHEMA,
    TRADE_SCHEMA,
)
from pipeline.store.values import (
    SAFE_NAME,
    as_utc,
    utc_now,
)

if TYPE_CHECKING:
    import duckdb

# The per-set run options' result columns (stops, size, slippage, leverage), as the SQL below names them.
_PER_SET = ", ".join(o.record_field for o in run_options.PER_SET)

# The rows `results top` ranks: $1 strategy, $2 run id, $4 fewest trades (each NULL: any).
_TOP_FILTER = """($1::VARCHAR IS NULL OR strategy = $1)
  AND ($2::VARCHAR IS NULL OR run_id = $2)
  AND ($4::BIGINT IS NULL OR num_trades >= $4)
  AND total_return_pct IS NOT NULL
  AND coalesce(mode, 'single') = 'single'
  AND fold IS NULL AND split IS NULL"""
# The total return of the $3-th best row (0-based) among them: the rows at or above it are the candidates.
_TOP_CUT_SQL = f"""
SELECT total_return_pct FROM results WHERE {_TOP_FILTER}
ORDER BY total_return_pct DESC LIMIT 1 OFFSET $3
"""  # noqa: S608 (a constant)
_TOP_SQL = f"""
SELECT symbol, strategy, params_json, interval, total_return_pct, buy_hold_return_pct,
       sharpe, max_drawdown_pct, win_rate_pct, num_trades, closed_trades, final_value,
       {_PER_SET}, snapshot_id, source, coalesce(market, 'spot') AS market,
       data_version, run_id, created_at
FROM results
WHERE {_TOP_FILTER}
  AND ($5::DOUBLE IS NULL OR total_return_pct >= $5)
-- The same backtest re-run in later runs counts once: keep its newest row.
QUALIFY row_number() OVER (
    PARTITION BY symbol, strategy, params_json, interval, timerange_start, timerange_end,
                 fill, fee_pct, initial_investment, {_PER_SET},
                 source, coalesce(market, 'spot'), data_version, engine_version
    ORDER BY created_at DESC, run_id DESC) = 1
-- Equal returns (a stop never hit, say) in a total order, whatever order the files are read in.
ORDER BY total_return_pct DESC, symbol, params_json, {_PER_SET}, interval, market, created_at DESC, run_id DESC
LIMIT $3
"""  # noqa: S608 (columns from the option table)

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


# The three tables a query may read.
TABLES = ("results", "trades", "runs")


def connect(results_root: str | os.PathLike[str], run_id: str | None = None,
            tables: Collection[str] = TABLES) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with views ``results``, ``trades`` and ``runs`` (what killed
    runs left in their folders swept up first), or those of them in `tables` (a view costs opening its
    table's files: a query of ours opens only the tables it reads). With `run_id`, the views hold that run's files alone
    (a run's file in every table is ``run_date=*/strategy=*/<run_id>.parquet``, or its rows in a compacted
    file, `pipeline.store.compact`): a query about one run reads one run's files, not the whole history."""
    from pipeline.lake.reader import connect_duckdb

    sweep_stale(results_root)
    con = connect_duckdb()
    # Each query binds the views again, reading every file's footer: read once per connection (its files do
    # not change under it: `files.reading`). `results top` on 28 files: ~250 -> ~200 ms.
    con.execute("SET parquet_metadata_cache = true")
    try:
        _create_views(con, results_root, run_id, tables)
    except BaseException:
        con.close()
        raise
    return con


def _create_views(con: duckdb.DuckDBPyConnection, results_root: str | os.PathLike[str], run_id: str | None,
                  tables: Collection[str]) -> None:
    results = objects.location(results_root)
    every = (
        ("results", results, RESULT_SCHEMA),
        ("trades", trades_root(results_root), TRADE_SCHEMA),
        ("runs", runs_root(results_root), RUN_SCHEMA),
    )
    one_run = run_id is not None and SAFE_NAME.match(run_id) is not None
    for name, root, schema in every:
        if name not in tables:
            continue
        files = _table_files(root) if isinstance(root, ObjectPath) else None
        if one_run:
            files = ([f for f in files if may_hold_run(f.name, run_id)] if files is not None else
                     sorted(root.glob(f"run_date=*/strategy=*/{run_id}.parquet"))
                     + [f for f in sorted(root.glob(f"run_date=*/strategy=*/{COMPACTED_PREFIX}*.parquet"))
                        if may_hold_run(f.name, run_id)])
        if files or (files is None and _has_files(root)):
            if isinstance(root, ObjectPath):
                con.register(f"_{name}_objects", _object_table(root, files))
                relation = con.view(f"_{name}_objects")
            else:
                # union_by_name: files written before a column was added still read.
                relation = con.read_parquet(
                    [str(f) for f in files] if one_run else str(root / "**" / "*.parquet"),
                    hive_partitioning=True, union_by_name=True
                )
            if one_run and any(f.name.startswith(COMPACTED_PREFIX) for f in files):
                # A compacted file holds many runs: the run's own rows (its row groups, by their statistics).
                relation = relation.filter(f"run_id = '{run_id}'")  # a SAFE_NAME: no quote in it
            # Columns added after every file on disk was written read as NULL.
            missing = [f for f in schema if f.name not in relation.columns]
            if missing:
                relation = relation.select(", ".join(
                    ["*"] + [f"CAST(NULL AS {DUCKDB_TYPES[f.type]}) AS {f.name}" for f in missing]))
            relation.create_view(name)
        else:
            # No file yet: an empty table of the same shape, so queries still run.
            empty = pa.schema(list(schema) + PARTITION_FIELDS).empty_table()
            con.register(name, empty)


def _has_files(root: Path) -> bool:
    """Whether the local table folder `root` holds a published file yet."""
    return root.is_dir() and next(root.rglob("*.parquet"), None) is not None


def _table_files(root: ObjectPath) -> list[ObjectPath]:
    """The published files of a table on object storage (one LIST): ``run_date=*/strategy=*/<run>.parquet``."""
    return [root / key for key in sorted(root.walk_files())
            if key.endswith(".parquet") and key.count("/") == 2 and not key.rpartition("/")[2].startswith(".")]


def _object_table(root: ObjectPath, files: list[ObjectPath]) -> Any:
    """A table's files on object storage as one pyarrow dataset for DuckDB: its columns are the union of
    the files' (a file written before a column was added reads it as NULL, like `union_by_name`), plus the
    `run_date` of its folder (hive partitioning, as DuckDB reads a local table)."""
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(pa.schema(PARTITION_FIELDS), flavor="hive")
    found = objects.dataset(files, partitioning=partitioning, partition_base_dir=root.arrow,
                            exclude_invalid_files=False)
    schema = pa.unify_schemas([fragment.physical_schema for fragment in found.get_fragments()]
                              + [pa.schema(PARTITION_FIELDS)], promote_options="permissive")
    return objects.dataset(files, schema=schema, partitioning=partitioning, partition_base_dir=root.arrow)


def query(
    results_root: str | os.PathLike[str],
    sql: str,
    parameters: Sequence[Any] | None = None,
    run_id: str | None = None,
    tables: Collection[str] = TABLES,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run read-only SQL over the views ``results``, ``trades``, ``runs`` (those in `tables`; of the run
    `run_id` alone when given: `sql` must then be about that run only); returns (columns, rows).

    The query runs sandboxed (see `_sandbox`): SELECT statements only, and no file or network
    access beyond reading the three tables' folders.
    """
    with session(results_root, run_id, tables) as run:
        return run(sql, parameters)


@contextmanager
def session(results_root: str | os.PathLike[str], run_id: str | None = None,
            tables: Collection[str] = TABLES) -> Iterator[Callable[..., tuple[list[str], list[tuple[Any, ...]]]]]:
    """`query`'s sandboxed connection for several queries: yields run(sql, parameters) -> (columns, rows).
    The tables' folders are not swapped by `results compact` meanwhile (`files.reading`)."""
    roots = {"results": objects.location(results_root), "trades": trades_root(results_root),
             "runs": runs_root(results_root)}
    with reading([roots[name] for name in tables]):  # the tables it opens
        con = connect(results_root, run_id, tables)
        try:
            _sandbox(con, results_root)
            yield functools.partial(_execute, con)
        finally:
            con.close()


def _execute(con: duckdb.DuckDBPyConnection, sql: str,
             parameters: Sequence[Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    if not sql.strip():
        raise InputError("the query is empty; e.g. SELECT count(*) FROM results")
    import duckdb

    try:
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


def _sandbox(con: duckdb.DuckDBPyConnection, results_root: str | os.PathLike[str]) -> None:
    """Confine `con` to reading the results, trades and runs folders: no other file, no network,
    no extension, and the configuration locked so the query cannot undo it."""
    folders = [(str(root) + "/") if isinstance(root, ObjectPath) else str(Path(root).resolve()) + os.sep
               for root in (objects.location(results_root), trades_root(results_root), runs_root(results_root))]
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
    # Ranking every row of a long history (dedup window over millions of rows) cost seconds: rank only the
    # rows at or above the total return of the `candidates`-th best. The copies of one backtest (the
    # window's partition: same data, code, parameters and settings) have the same numbers, so they are all
    # above the cut or all below it, and the answer is the whole table's. Fewer than `n` distinct
    # backtests above the cut: a deeper cut, until it takes every row.
    candidates = 8 * n
    with session(results_root, run_id, ("results",)) as run:
        while True:
            _, cut = run(_TOP_CUT_SQL, [strategy, run_id, candidates - 1, min_trades])
            threshold = cut[0][0] if cut else None
            columns, rows = run(_TOP_SQL, [strategy, run_id, n, min_trades, threshold])
            if threshold is None or len(rows) >= n:
                return columns, rows
            candidates *= 8


_RUN_ROWS_SQL = f"""
SELECT * EXCLUDE (run_date) FROM results WHERE run_id = $1
ORDER BY total_return_pct DESC NULLS LAST, symbol, params_json, {_PER_SET}, interval, fold NULLS FIRST, split
"""  # noqa: S608 (columns from the option table)


def run_rows(results_root: str | os.PathLike[str], run_id: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Every results row of one run, best total return first."""
    return query(results_root, _RUN_ROWS_SQL, [run_id], run_id, ("results",))


# A run's full-range rows (fold IS NULL) and, apart, its walk-forward rows (fold, split).
_SHOW_COLUMNS = f"""symbol, interval, params_json, total_return_pct, buy_hold_return_pct, num_trades, closed_trades,
       win_rate_pct, max_drawdown_pct, sharpe, {_PER_SET}, n_trials, pbo,
       deflated_sharpe, bars, snapshot_id, data_version, from_cache, reason, fold, split, start, "end" """
_SHOW_SQL = f"""
SELECT {_SHOW_COLUMNS}
FROM results WHERE run_id = ? AND fold IS NULL AND coalesce(split, '') <> 'oos'
ORDER BY total_return_pct DESC NULLS LAST, symbol, params_json, {_PER_SET}, interval
LIMIT ?
"""  # noqa: S608 (a constant)
_SHOW_FOLDS_SQL = f"""
SELECT {_SHOW_COLUMNS}
FROM results WHERE run_id = ? AND (fold IS NOT NULL OR split = 'oos')
ORDER BY symbol, fold NULLS LAST, CASE split WHEN 'train' THEN 0 WHEN 'test' THEN 1 ELSE 2 END, interval,
         params_json, {_PER_SET}
"""  # noqa: S608 (columns from the option table)
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
_SHOW_SETS_SQL = f"""
SELECT DISTINCT params_json, {_PER_SET}
FROM results WHERE run_id = ? AND fold IS NULL AND coalesce(split, '') <> 'oos'
"""  # noqa: S608 (columns from the option table)
_LATEST_RUN_SQL = "SELECT run_id FROM results ORDER BY created_at DESC, run_id DESC LIMIT 1"
# The per-set run options (stops, size, slippage) as results columns, with their defaults.
RUN_SETTING_DEFAULTS = {o.record_field: o.default for o in run_options.PER_SET}


def latest_run_id(results_root: str | os.PathLike[str]) -> str:
    """The newest run in the results table."""
    _, rows = query(results_root, _LATEST_RUN_SQL, tables=("results",))
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
    with session(results_root, run_id, ("results", "runs")) as ask:  # one connection for the four queries
        columns, rows = ask(_SHOW_RUN_SQL, [run_id])
        if not rows:
            raise InputError(f"no run {run_id!r} in the results table at {results_root}; recent runs: "
                             "cryptobt results runs")
        run = dict(zip(columns, rows[0], strict=True))
        set_columns, sets = ask(_SHOW_SETS_SQL, [run_id])
        run["swept"], run["fixed"] = _swept_and_fixed([dict(zip(set_columns, row, strict=True)) for row in sets])
        board_columns, board = ask(_SHOW_SQL, [run_id, n])
        _, folds = ask(_SHOW_FOLDS_SQL, [run_id])
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


_TRADES_SQL = f"""
SELECT symbol, params_json, entry_time, entry_price, exit_time, exit_price, units, fees, pnl, return_pct,
       bars_held, exit_reason, {_PER_SET}
FROM trades
WHERE run_id = $1 AND kind = 'round_trip' AND ($2::VARCHAR IS NULL OR symbol = $2)
ORDER BY symbol, params_json, entry_time, trade_no
"""  # noqa: S608 (columns from the option table)


def round_trips(results_root: str | os.PathLike[str], run_id: str | None = None,
                symbol: str | None = None) -> dict[str, Any]:
    """A run's round trips (SPEC 4.1) from the trades table, the newest run with `run_id` None: an entry
    with its exit, one row each; a position open at the end has `exit_reason = end_of_data`."""
    run_id = latest_run_id(results_root) if run_id is None else run_id
    columns, rows = query(results_root, _TRADES_SQL, [run_id, symbol], run_id)
    if not rows:
        _, found = query(results_root, "SELECT count(*), count(*) FILTER (WHERE symbol = $2) FROM results "
                         "WHERE run_id = $1", [run_id, symbol], run_id)
        total, of_symbol = found[0]
        if not total:
            raise InputError(f"no run {run_id!r} in the results table at {results_root}; recent runs: "
                             "cryptobt results runs")
        if symbol is not None and not of_symbol:
            raise InputError(f"run {run_id} has no results for symbol {symbol!r}")
        raise InputError(f"run {run_id} recorded no trades: only runs with --trades (or a portfolio) keep them; "
                         "re-run it with --trades")
    return {"run_id": run_id, "columns": columns, "rows": rows}


# The newest $1 runs first (one column of every row), then their counts over their rows alone: a compacted
# table keeps a run's rows together, so the second pass reads the row groups of those runs only.
_RUNS_SQL = """
WITH newest AS (
    SELECT run_id, min(created_at) AS created_at FROM results GROUP BY run_id
    ORDER BY created_at DESC, run_id DESC LIMIT $1)
SELECT r.run_id, any_value(n.created_at) AS created_at, any_value(u.command) AS command,
       any_value(r.strategy) AS strategy, count(DISTINCT r.symbol) AS symbols, count(*) AS results,
       count(DISTINCT r.params_json) AS sets, any_value(r.snapshot_id) AS snapshot_id,
       any_value(u.duration_s) AS duration_s, coalesce(any_value(u.interrupted), false) AS interrupted
FROM results r JOIN newest n USING (run_id) LEFT JOIN runs u USING (run_id)
GROUP BY r.run_id
ORDER BY created_at DESC, r.run_id DESC
"""


def run_history(results_root: str | os.PathLike[str], n: int = 20) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The newest `n` runs: when, which command and strategy, how many symbols, results and sets,
    whether a stop signal interrupted it."""
    if n < 1:
        raise InputError(f"--n {n} must be >= 1")
    return query(results_root, _RUNS_SQL, [n], tables=("results", "runs"))


def run_stats(
    results_root: str | os.PathLike[str],
    hours: float = 24.0,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Run metrics over the runs started in the last ``hours``.

    Percentiles interpolate linearly (DuckDB ``quantile_cont``, NumPy's default);
    hit rate and throughput are totals over the window, not means of per-run ratios.
    """
    now = utc_now() if now is None else as_utc(now, "now")
    since = now - timedelta(hours=hours)
    columns, rows = query(results_root, _RUN_STATS_SQL, [since], tables=("runs",))
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


# Each mean adds its symbols in one order (a float sum's last bits depend on it), whatever order the rows are
# stored in: a compacted file holds them best return first, the run's own file in the order it ran them.
_SWEEP_SETS_SQL = f"""
SELECT params_json, {_PER_SET}, count(total_return_pct) AS symbols,
       avg(total_return_pct ORDER BY symbol, interval) AS total_return_pct,
       avg(sharpe ORDER BY symbol, interval) AS sharpe,
       avg(max_drawdown_pct ORDER BY symbol, interval) AS max_drawdown_pct,
       avg(num_trades ORDER BY symbol, interval) AS num_trades
FROM results WHERE run_id = $1 AND split IS NULL AND ($2::VARCHAR IS NULL OR symbol = $2)
GROUP BY ALL
ORDER BY params_json, {_PER_SET}
LIMIT $3
"""  # noqa: S608 (columns from the option table)


def sweep_sets(results_root: str | os.PathLike[str], run_id: str, symbol: str | None = None,
               n: int = 100_000) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Each parameter set of a run with its mean metrics over the symbols (or on `symbol`): a
    sweep's heatmap. Walk-forward rows are left out."""
    return query(results_root, _SWEEP_SETS_SQL, [run_id, symbol, n], run_id, ("results",))
