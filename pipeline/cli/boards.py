"""The leaderboards of backtest and sweep, and the walk-forward table."""

from __future__ import annotations

from typing import Any

from pipeline.cli.output import console
from pipeline.core import tables

# The leaderboard's columns; among the optional ones, the highest drop_rank is left out first
# when the terminal is narrow (pipeline/core/tables.py).
BOARD_COLUMNS = (
    ("symbol", tables.Column("symbol", required=True, right=False)),
    ("total_return_pct", tables.Column("return %", required=True)),
    ("buy_hold_return_pct", tables.Column("b&h %", drop_rank=3)),
    # Closed round trips and the position still open apart: win % counts the closed ones only.
    ("closed_trades", tables.Column("trades", drop_rank=2)),
    ("open", tables.Column("open", drop_rank=2)),
    ("win_rate_pct", tables.Column("win %", drop_rank=4)),
    ("max_drawdown_pct", tables.Column("max dd %", drop_rank=1)),
    ("sharpe", tables.Column("sharpe", drop_rank=1)),
    ("bars", tables.Column("bars", drop_rank=5)),
    ("days_of_data", tables.Column("days", drop_rank=6)),
)
SWEEP_LEFT_OUT = ("buy_hold_return_pct", "bars", "days_of_data")
# A sweep's rows add how much of the result is luck (README "Overfitting statistics").
SWEEP_ADDED = (
    ("deflated_sharpe", tables.Column("dsr", drop_rank=2)),
    ("pbo", tables.Column("pbo", drop_rank=2)),
)


def value(record: dict[str, Any], key: str) -> Any:
    """A record's field, or one derived for printing: `open` = entries not closed (the open position)."""
    if key == "open":
        entries, closed = record.get("num_trades"), record.get("closed_trades")
        return None if entries is None or closed is None else int(entries) - int(closed)
    return record.get(key)


def print_board(results: list[dict[str, Any]], title: str, limit: int, with_params: bool = False) -> None:
    shown = [(key, col) for key, col in BOARD_COLUMNS if not (with_params and key in SWEEP_LEFT_OUT)]
    if with_params:
        shown += SWEEP_ADDED
    rows = results[:limit]
    # A sweep's rows name their parameters: those that vary get a column each (never cut), those
    # fixed across the shown rows go in the title.
    varying: list[str] = []
    sets: list[dict[str, Any]] = [{} for _ in rows]
    if with_params and rows:
        from pipeline.engine.options import set_parameters

        sets = set_parameters(rows)
        names = list(sets[0])
        varying = [k for k in names if len({s[k] for s in sets}) > 1] or names[:1]
        fixed = [f"{k}={tables.param(v)}" for k, v in sets[0].items() if k not in varying]
        title += f"; {' '.join(fixed)}" if fixed else ""
    columns = [shown[0][1], *[tables.Column(tables.param_header(k), required=True) for k in varying],
               *[col for _, col in shown[1:]]]
    cells = [[r["symbol"], *[tables.param(s[k]) for k in varying],
              *[tables.cell(key, value(r, key)) for key, _ in shown[1:]]] for r, s in zip(rows, sets, strict=True)]
    tables.print_table(console, columns, cells, title)


def print_walk_forward(summaries: list[dict[str, Any]], config: Any, limit: int) -> None:
    """Per symbol: the stitched out-of-sample result and how much of the in-sample objective survived."""
    columns = [tables.Column("symbol", required=True, right=False), tables.Column("oos return %", required=True),
               tables.Column("oos sharpe", required=True), tables.Column("oos/is", drop_rank=1),
               tables.Column("sets chosen", drop_rank=2, right=False)]
    cells = []
    for s in summaries[:limit]:
        chosen = " | ".join(",".join(tables.param(v) for v in f["params"].values()) for f in s["folds"])
        cells.append([s["symbol"], tables.cell("total_return_pct", s["oos"]["total_return_pct"]),
                      tables.cell("sharpe", s["oos"]["sharpe"]), tables.cell("oos_is_ratio", s["oos_is_ratio"]), chosen])
    kind = "anchored" if config.anchored else "rolling"
    start = "each test part starting flat" if config.walk_forward_flat_start else "positions carried in"
    tables.print_table(console, columns, cells, f"walk-forward: {config.walk_forward} {kind} folds, train "
                       f"{config.train_ratio:.0%} of each, best by {config.objective}; out of sample ({start}), "
                       "stitched")


def print_stats(stats: dict[str, Any], limit: int) -> None:
    """A sweep's --stats: the pooled run, then the symbols (most significant SPA first), a row each."""
    columns = [tables.Column("symbol", required=True, right=False), tables.Column("days", drop_rank=4),
               tables.Column("spa p (l/c/u)", required=True), tables.Column("stepm", drop_rank=2),
               tables.Column("mcs", drop_rank=2), tables.Column("best set", drop_rank=3),
               tables.Column("sharpe", required=True), tables.Column("sharpe ci", drop_rank=1),
               tables.Column("psr", drop_rank=1), tables.Column("min trl d", drop_rank=3),
               tables.Column("haircut", required=True)]

    def row(name: str, s: dict[str, Any]) -> list[str]:
        if s.get("reason"):
            return [name, tables.cell("count", s.get("days")), s["reason"], *["-"] * 8]
        spa = s.get("spa")
        ci = s.get("sharpe_ci")
        return [name, tables.cell("count", s["days"]),
                "/".join(f"{spa[k]:.3f}" for k in ("lower", "consistent", "upper")) if spa else "-",
                "-" if s.get("stepm") is None else f"{len(s['stepm'])} set(s)",
                "-" if s.get("mcs") is None else f"{len(s['mcs'])} set(s)",
                "-" if s.get("best_set") is None else str(s["best_set"]),
                tables.cell("sharpe", s.get("sharpe")),
                f"{ci[0]:.2f} .. {ci[1]:.2f}" if ci else "-", tables.cell("psr", s.get("psr")),
                tables.cell("min_trl_days", s.get("min_trl")), tables.cell("haircut_sharpe", s.get("haircut_sharpe"))]

    symbols = sorted(stats["symbols"].items(),
                     key=lambda kv: ((kv[1].get("spa") or {}).get("consistent", 2.0), kv[0]))
    cells = [row("(pooled)", stats["pooled"]), *(row(name, s) for name, s in symbols[:limit])]
    more = len(symbols) - limit
    tables.print_table(console, columns, cells,
                       f"sweep statistics vs {stats['benchmark']}: {stats['reps']:,} stationary-bootstrap repetitions, "
                       f"alpha {stats['alpha']:g}, {stats['sets_tried']:,} sets tried"
                       + (f"; {more} more symbol(s) in --json" if more > 0 else ""))
