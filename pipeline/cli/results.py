"""`cryptobt results` and `cryptobt stats`: the results table's runs, leaderboards, round trips and SQL."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import typer

from pipeline.cli import boards
from pipeline.cli.errors import user_errors
from pipeline.cli.output import console, emit_json
from pipeline.core import run_options, tables
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.engine import options

app = typer.Typer(help="The append-only results table (plain DuckDB works too).", no_args_is_help=True)
# `stats`, listed among the root's commands.
commands = typer.Typer()


def _print_rows(columns: list[str], rows: list[tuple], as_json: bool) -> None:
    """A query's rows: every column the query asked for, none cut (the terminal wraps if it must)."""
    if as_json:
        emit_json([dict(zip(columns, row, strict=True)) for row in rows])
        return
    tables.print_table(console, [tables.Column(c, required=True) for c in columns],
                       [[tables.number(v) for v in row] for row in rows])


# Result columns as the results tables print them; among the optional ones the highest drop_rank
# is left out first when the terminal is narrow. Run settings (stops, sizing) show only where a
# shown row has one set (`_setting_columns`).
RESULT_COLUMNS = {
    "symbol": tables.Column("symbol", required=True, right=False),
    "strategy": tables.Column("strategy", required=True, right=False),
    "params_json": tables.Column("params", required=True, right=False),
    "interval": tables.Column("interval", drop_rank=5, right=False),
    "total_return_pct": tables.Column("return %", required=True),
    "buy_hold_return_pct": tables.Column("b&h %", drop_rank=4),
    "sharpe": tables.Column("sharpe", drop_rank=2),
    "max_drawdown_pct": tables.Column("max dd %", drop_rank=3),
    "win_rate_pct": tables.Column("win %", drop_rank=6),
    "closed_trades": tables.Column("trades", drop_rank=1),
    "open": tables.Column("open", drop_rank=1),
    "final_value": tables.Column("final value", drop_rank=7),
    # The per-set run options (stops, size, slippage, leverage, direction), from the option table.
    **{o.record_field: tables.Column(o.header or o.name, drop_rank=3, right=o.type is not str)
       for o in run_options.PER_SET},
    "deflated_sharpe": tables.Column("dsr", drop_rank=2),
    "pbo": tables.Column("pbo", drop_rank=2),
    "fold": tables.Column("fold", required=True),
    "split": tables.Column("part", required=True, right=False),
    "start": tables.Column("from", drop_rank=4, right=False),
    "end": tables.Column("to", drop_rank=4, right=False),
    # A round trip's (`results trades`).
    "entry_time": tables.Column("entry (UTC)", required=True, right=False),
    "exit_time": tables.Column("exit (UTC)", required=True, right=False),
    "entry_price": tables.Column("entry price", drop_rank=2),
    "exit_price": tables.Column("exit price", drop_rank=2),
    "units": tables.Column("units", drop_rank=4),
    "fees": tables.Column("fees", drop_rank=3),
    "pnl": tables.Column("P&L", required=True),
    "return_pct": tables.Column("return %", drop_rank=1),
    "bars_held": tables.Column("bars", drop_rank=2),
    "exit_reason": tables.Column("exit reason", required=True, right=False),
    "snapshot_id": tables.Column("snapshot", drop_rank=10, right=False),
    "market": tables.Column("market", required=True, right=False),
    "source": tables.Column("source", required=True, right=False),
    "data_version": tables.Column("data version", drop_rank=9, right=False),
    "run_id": tables.Column("run", drop_rank=8, right=False),
    "created_at": tables.Column("created (UTC)", drop_rank=9, right=False),
}
# Walk-forward parts: what each measures.
SPLIT_NAMES = {"train": "train (in sample)", "test": "test (out of sample)", "oos": "oos stitched"}


def _params_cell(params_json: str | None, leave_out: Iterable[str] = ()) -> str:
    """One name=value per line: the cell breaks between parameters, never inside one."""
    import json

    params = json.loads(params_json) if params_json else {}
    return "\n".join(f"{k}={tables.param(v)}" for k, v in params.items() if k not in leave_out) or "-"


def _setting_columns(records: list[dict[str, Any]]) -> list[str]:
    """The run settings (stop-loss, take-profit, trailing, size, slippage) set on any of `records`."""
    from pipeline.store.results import RUN_SETTING_DEFAULTS

    return [k for k, default in RUN_SETTING_DEFAULTS.items()
            if any(r.get(k) is not None and r[k] != default for r in records)]


def _result_cells(records: list[dict[str, Any]], keys: list[str], leave_out: Iterable[str] = ()) -> list[list[str]]:
    """Rows of result records as table cells, each column in its kind's format."""
    def text(record: dict[str, Any], key: str) -> str:
        value = boards.value(record, key)
        if key == "params_json":
            return _params_cell(value, leave_out)
        if key in ("created_at", "start", "end", "entry_time", "exit_time"):
            return "-" if value is None else str(value)[:16 if key != "created_at" else 19]
        if key == "split":
            return SPLIT_NAMES.get(value, value or "-")
        if key == "trail":
            return "yes" if value else "-"
        return tables.cell(key, value)

    return [[text(r, k) for k in keys] for r in records]


def _records(columns: list[str], rows: list[tuple]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in rows]


@app.command("sql")
@user_errors
def results_sql(
    query: Annotated[str, typer.Argument(help="SQL over the views results, trades and runs.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Query the results with DuckDB (read-only, sandboxed).

    Allowed: SELECT statements over the views results, trades and runs (and read_parquet on their
    own folders). Refused: anything that writes (COPY, CREATE, INSERT, ATTACH, SET ...), reading any
    other file, network access and extensions. For anything else open the Parquet files with your
    own DuckDB (see the README); this command is local only and no HTTP endpoint reaches it.

    Example: cryptobt results sql "SELECT symbol, max(total_return_pct) FROM results GROUP BY ALL ORDER BY 2 DESC LIMIT 5"
    """
    from pipeline.store import results

    _print_rows(*results.query(Settings.from_env().results_root, query), as_json)


@app.command("top")
@user_errors
def results_top(
    strategy: Annotated[str | None, typer.Option(help="Only this strategy.")] = None,
    n: Annotated[int, typer.Option(help="How many.")] = 10,
    min_trades: Annotated[int | None, typer.Option(help="Only results with at least this many entries.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The best results ever recorded (newest run of each backtest; walk-forward folds and portfolio
    accounts are not listed).

    Example: cryptobt results top --strategy rsi --n 5 --min-trades 10
    """
    from pipeline.store import results

    options.check_top(n, "--n")
    if min_trades is not None:
        options.check_count("--min-trades", min_trades)
    if strategy is not None:
        options.resolve_strategy(strategy)
    columns, rows = results.top(Settings.from_env().results_root, strategy, n, min_trades=min_trades)
    records = _records(columns, rows)
    if as_json:
        emit_json(records)
        return
    # Two series of one name (another source, another market) are told apart: those columns show
    # whenever the rows hold more than one of them.
    mixed = [k for k in ("market", "source") if len({r[k] for r in records}) > 1]
    keys = ["symbol", *mixed, "strategy", "params_json", "interval", "total_return_pct", "buy_hold_return_pct",
            "sharpe", "max_drawdown_pct", "win_rate_pct", "closed_trades", "open", *_setting_columns(records),
            "final_value", "data_version", "run_id", "created_at"]
    tables.print_table(console, [RESULT_COLUMNS[k] for k in keys], _result_cells(records, keys),
                       f"best {len(rows)} result(s) recorded" + (f" for {strategy}" if strategy else "")
                       + (f" with at least {min_trades} entries" if min_trades else ""))


@app.command("show")
@user_errors
def results_show(
    run_id: Annotated[str | None, typer.Argument(help="The run id a backtest or sweep printed (default: the "
                                                      "newest run).")] = None,
    n: Annotated[int, typer.Option(help="Rows of its leaderboard.")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A past run's leaderboard and parameters, from the results table (freqtrade's backtesting-show).

    A sweep's title says which parameters it swept (a column each) and which it held fixed;
    walk-forward rows (fold, train / test part, stitched out-of-sample) come in a table of their own.
    Example: cryptobt results show 20261122T235959123456Z-ab12cd
    """
    from pipeline.store import results

    shown = results.show(Settings.from_env().results_root, run_id, n)
    run, records = shown["run"], _records(shown["columns"], shown["rows"])
    folds = _records(shown["columns"], shown["walk_forward"])
    if as_json:
        emit_json({"run": run, "results": records, "walk_forward": folds})
        return
    console.print(f"run {run['run_id']} ({run['command'] or 'unknown command'}) at {str(run['created_at'])[:19]}: "
                  f"{run['strategy']} on {run['symbols']} symbol(s) at {', '.join(run['intervals'])}, "
                  f"{run['results']:,} result(s); snapshot {run['snapshot_id']}; fill {run['fill']}, fee "
                  f"{tables.cell('fee_pct', run['fee_pct'])} %, initial "
                  f"{tables.cell('initial_investment', run['initial_investment'])}, timerange "
                  f"{run['timerange_start'] or '-'} .. {run['timerange_end'] or '-'}"
                  + (f"; interrupted: {run['results']:,}{_of(run['planned'])} results kept" if run["interrupted"]
                     else ""), highlight=False)
    swept, fixed = run["swept"], run["fixed"]
    if swept:
        console.print("swept: " + "; ".join(f"{k} = {', '.join(tables.param(v) for v in values)}"
                                            for k, values in swept.items()), highlight=False, soft_wrap=True)
    if fixed:
        console.print("fixed: " + " ".join(f"{k}={tables.param(v)}" for k, v in fixed.items()), highlight=False,
                      soft_wrap=True)
    # A swept parameter gets a column (fixed ones are in the header); settings are columns already.
    import json

    swept_params = [k for k in swept if k not in results.RUN_SETTING_DEFAULTS]
    params_columns = [tables.Column(tables.param_header(k), required=True) for k in swept_params]

    def print_rows(rows: list[dict[str, Any]], keys: list[str], title: str) -> None:
        cells = _result_cells(rows, keys)
        for row, record in zip(cells, rows, strict=True):
            params = json.loads(record["params_json"] or "{}")
            row[1:1] = [tables.param(params[k]) if k in params else "-" for k in swept_params]
        columns = [RESULT_COLUMNS[k] for k in keys]
        tables.print_table(console, [columns[0], *params_columns, *columns[1:]], cells, title)

    settings_shown = [k for k in _setting_columns(records) if k in swept]
    keys = ["symbol", "interval", "total_return_pct", "buy_hold_return_pct", "closed_trades", "open", "win_rate_pct",
            "max_drawdown_pct", "sharpe", *settings_shown,
            *(["deflated_sharpe", "pbo"] if any(r["pbo"] is not None or r["deflated_sharpe"] is not None
                                                for r in records) else [])]
    print_rows(records, keys, f"best {len(records)} of {run['full_range_results']:,} (whole range)")
    if folds:
        print_rows(folds, ["symbol", "fold", "split", "start", "end", "total_return_pct", "sharpe", *settings_shown],
                   "walk-forward: each fold's set chosen in sample (train), judged out of sample (test); "
                   "oos = the test parts stitched")


@app.command("trades")
@user_errors
def results_trades(
    run_id: Annotated[str | None, typer.Argument(help="A run id (default: the newest run).")] = None,
    symbol: Annotated[str | None, typer.Option("--symbol", "-s", help="Only this symbol.")] = None,
    n: Annotated[int, typer.Option(help="Round trips to print (--json prints all).")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A run's round trips (entry and exit, fees, P&L, exit reason), from the trades table.

    Only runs made with --trades (and portfolios) keep them.
    Example: cryptobt results trades 20261122T235959123456Z-ab12cd --symbol ETH_BTC
    """
    from pipeline.store import results

    options.check_top(n, "--n")
    found = results.round_trips(Settings.from_env().results_root, run_id, symbol)
    records = _records(found["columns"], found["rows"])
    if as_json:
        emit_json(records)
        return
    keys = ["symbol", "params_json", "entry_time", "entry_price", "exit_time", "exit_price", "units", "fees", "pnl",
            "return_pct", "bars_held", "exit_reason"]
    varied = {r["params_json"] for r in records}
    if len(varied) == 1:
        keys.remove("params_json")
    tables.print_table(console, [RESULT_COLUMNS[k] for k in keys], _result_cells(records[:n], keys),
                       f"run {found['run_id']}: {min(n, len(records))} of {len(records):,} round trip(s)"
                       + (f" of {symbol}" if symbol else "")
                       + (f"; {_params_cell(varied.pop()).replace(chr(10), ' ')}" if len(varied) == 1 else ""))


@app.command("runs")
@user_errors
def results_runs(
    n: Annotated[int, typer.Option(help="How many of the newest runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The run history, newest first: when, which command and strategy, symbols, results, sets, and
    whether a stop signal interrupted the run (it kept what had finished).

    Example: cryptobt results runs --n 5
    """
    from pipeline.store import results

    options.check_top(n, "--n")
    columns, rows = results.run_history(Settings.from_env().results_root, n)
    records = _records(columns, rows)
    if as_json:
        emit_json(records)
        return
    # The run id is what a user copies into `results show`: never left out, never cut.
    keys = {"run_id": tables.Column("run", required=True, right=False),
            "created_at": tables.Column("created (UTC)", drop_rank=2, right=False),
            "command": tables.Column("command", drop_rank=3, right=False),
            "strategy": tables.Column("strategy", required=True, right=False),
            "symbols": tables.Column("symbols", drop_rank=4), "results": tables.Column("results", drop_rank=5),
            "sets": tables.Column("sets", drop_rank=6), "duration_s": tables.Column("seconds", drop_rank=7),
            "interrupted": tables.Column("interrupted", drop_rank=1, right=False)}
    def text(record: dict[str, Any], key: str) -> str:
        value = record[key]
        if key == "interrupted":
            return "yes" if value else "no"
        if key == "created_at":
            return str(value)[:19]
        if key in ("symbols", "results", "sets"):
            return tables.formatted(value, "count")
        return tables.number(value) if key == "duration_s" else value or "-"

    cells = [[text(r, k) for k in keys] for r in records]
    tables.print_table(console, list(keys.values()), cells, f"newest {len(records)} run(s)")


@app.command("compact")
@user_errors
def results_compact(
    before: Annotated[str | None, typer.Option(
        help="Merge the folders of days before this one (YYYY-MM-DD, UTC); default: before yesterday.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Merge each past day's files of a strategy into one file (results, trades and runs tables): the
    same rows, swapped in whole, so queries over a long history open a few files instead of one a run.

    Example: cryptobt results compact
    """
    from dataclasses import asdict
    from datetime import date

    from pipeline.cli.output import progress_bar
    from pipeline.store import compact

    day = None
    if before is not None:
        try:
            day = date.fromisoformat(before)
        except ValueError:
            raise PipelineError(f"--before {before!r} is not a date: use YYYY-MM-DD, e.g. 2026-11-30") from None
    with progress_bar(transient=True) as bar:
        task = bar.add_task("compacting", total=None)
        merged = compact.compact(Settings.from_env().results_root, day,
                                 lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        emit_json([asdict(m) for m in merged])
        return
    files, rows = sum(m.files for m in merged), sum(m.rows for m in merged)
    before_mb = sum(m.bytes_before for m in merged) / 1e6
    after_mb = sum(m.bytes_after for m in merged) / 1e6
    console.print(f"merged {files:,} file(s) into {len(merged)} ({rows:,} rows; {before_mb:,.1f} MB -> "
                  f"{after_mb:,.1f} MB)" if merged else "nothing to merge: no past day's folder holds two files")


def _of(planned: int | None) -> str:
    return "" if planned is None else f" of {planned:,}"



@commands.command("stats")
@user_errors
def stats_command(
    hours: Annotated[float, typer.Option(help="Look back this many hours.")] = 24.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run metrics: p50/p95/p99 duration, cache hit rate, throughput.

    Example: cryptobt stats --hours 24
    """
    import json

    from pipeline.store import results

    hours = options.check_number("--hours", hours, 0, options.MAX_HOURS, above=True)
    stats = results.run_stats(Settings.from_env().results_root, hours)
    if as_json:
        print(json.dumps(stats, default=str))
        return
    for key, value in stats.items():
        console.print(f"{key}: {tables.number(value)}")
