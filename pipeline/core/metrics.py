"""The one table of result metrics: each metric declared once, everything else derived from it.

From `METRICS` come the kernels' output slots (`pipeline.engine.kernels.enums`: the `M_*` and `P_*`
column numbers, in this order), the shaping of kernel rows into result records
(`pipeline.engine.batch`, `pipeline.engine.portfolio`), the metric columns of the results table and
so the check of cached records (`pipeline.store.schemas`), the format of each metric in CLI tables
and on the dashboard (`pipeline.core.tables.kind_of`, injected into the page) and the table of
metrics in docs/cli.md (`markdown_table`, checked by tests/test_docs.py).

Adding a metric = one entry here plus its use in the kernel (the kernel writes `out[M_<NAME>]`).
The order is the order of the results columns and of the record fields, and of the kernel slots:
Numba's on-disk cache of a kernel file notices edits of that file only, not of this table, so a
metric is added after the last kernel metric of its section, or the kernel files that read slots
(kernels/simulate.py, kernels/batch.py, kernels/portfolio.py) change with the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What a result without a bar in its range holds (`without_bars`): the kernel's value all the same,
# or the initial cash; any other value is that value (None: undefined, NULL in the table).
KERNEL = "kernel"
INITIAL = "initial"

Section = Literal["result", "portfolio", "sweep"]


@dataclass(frozen=True)
class Metric:
    """One number a result carries."""

    name: str
    dtype: Literal["float64", "int64"]  # its results column; NULL where undefined
    unit: str  # "%", "cash", "ratio", "bars", "trades", "days" or "sets"
    format: str | None  # its kind in `tables.KINDS` (None: a plain number, two decimals)
    description: str
    # Where the results table puts it: with every result's metrics, with the portfolio's settings, or
    # with a sweep's statistics.
    section: Section = "result"
    single: bool = False  # a slot of the single-symbol kernels' output row (simulate_1d, run_grid)
    portfolio: bool = False  # a slot of the portfolio kernel's output row (simulate_portfolio)
    spec: bool = False  # one of SPEC section 4's metrics (the rest are the full stats set and context)
    stats: bool = False  # the full stats set (portfolio rows leave it NULL)
    without_bars: float | str | None = None  # KERNEL, INITIAL, or the value itself
    stored: bool = True  # a column of the results table (else in the record only)


def _stat(name: str, dtype: Literal["float64", "int64"], unit: str, kind: str | None, description: str) -> Metric:
    return Metric(name, dtype, unit, kind, description, single=True, stats=True)


METRICS: tuple[Metric, ...] = (
    Metric("bars", "int64", "bars", "count", "bars simulated (after the warm-up); bar-steps in a portfolio",
           single=True, portfolio=True, spec=True, without_bars=KERNEL),
    Metric("days_of_data", "float64", "days", None, "first bar open to last bar close"),
    Metric("final_value", "float64", "cash", "money",
           "cash plus the open position marked at the last close (not sold)",
           single=True, portfolio=True, spec=True, without_bars=INITIAL),
    Metric("final_value_net", "float64", "cash", "money",
           "final_value less the exit fee the open position would pay at the last close",
           single=True, spec=True, without_bars=INITIAL),
    Metric("total_return_pct", "float64", "%", "pct", "(final_value / initial cash - 1) x 100",
           single=True, portfolio=True, spec=True, without_bars=0.0),
    Metric("buy_hold_return_pct", "float64", "%", "pct", "price change first close -> last close, no fees",
           single=True, portfolio=True, spec=True),
    Metric("num_trades", "int64", "trades", "count", "entries", single=True, portfolio=True, spec=True,
           without_bars=0),
    Metric("closed_trades", "int64", "trades", "count", "entries closed by a signal or a stop",
           single=True, portfolio=True, spec=True, without_bars=0),
    Metric("win_rate_pct", "float64", "%", "pct", "closed trades with a positive P&L; NULL without one",
           single=True, portfolio=True, spec=True),
    Metric("max_drawdown_pct", "float64", "%", "pct", "deepest fall of the equity below its running peak",
           single=True, portfolio=True, spec=True),
    Metric("sharpe", "float64", "ratio", "ratio",
           "mean / sample std (ddof = 1) of the per-bar returns x sqrt(bars_per_year)",
           single=True, portfolio=True, spec=True),
    Metric("exposure_pct", "float64", "%", "pct", "share of closes held in position",
           single=True, portfolio=True, spec=True),
    _stat("cagr_pct", "float64", "%", "pct", "((final_value / initial) ^ (1 / years) - 1) x 100"),
    _stat("annual_return_pct", "float64", "%", "pct", "mean(r) x bars_per_year x 100"),
    _stat("annual_volatility_pct", "float64", "%", "pct", "std(r, ddof=1) x sqrt(bars_per_year) x 100"),
    _stat("sortino", "float64", "ratio", "ratio", "mean(r) / sqrt(mean(min(r, 0)^2)) x sqrt(bars_per_year)"),
    _stat("calmar", "float64", "ratio", "ratio", "cagr_pct / max_drawdown_pct"),
    _stat("max_drawdown_duration_bars", "int64", "bars", "count", "the longest drawdown period"),
    _stat("avg_drawdown_pct", "float64", "%", "pct", "mean over drawdown periods of each one's deepest fall"),
    _stat("best_trade_pct", "float64", "%", "pct", "max of the closed trades' return_pct"),
    _stat("worst_trade_pct", "float64", "%", "pct", "min of the closed trades' return_pct"),
    _stat("avg_trade_pct", "float64", "%", "pct", "mean of the closed trades' return_pct"),
    _stat("avg_trade_duration_bars", "float64", "bars", "count", "mean of the closed trades' bars_held"),
    _stat("max_trade_duration_bars", "int64", "bars", "count", "max of the closed trades' bars_held"),
    _stat("profit_factor", "float64", "ratio", "ratio", "sum(pnl > 0) / -sum(pnl < 0)"),
    _stat("expectancy", "float64", "cash", "money", "mean(pnl) per closed trade"),
    _stat("sqn", "float64", "ratio", "ratio", "sqrt(N) x mean(pnl) / std(pnl, ddof=1) over the N closed trades"),
    _stat("fees_paid", "float64", "cash", "money", "every fee paid, entries and exits"),
    Metric("warmup_bars", "int64", "bars", "count",
           "bars before the --timerange start the indicators warmed up on (no trade there)",
           single=True, without_bars=KERNEL),
    # Futures (SPEC 4.3); NULL on spot.
    Metric("funding_paid", "float64", "cash", "money",
           "funding the positions paid (positive) or received (negative); futures", single=True, portfolio=True),
    Metric("liquidations", "int64", "trades", "count", "positions liquidated; futures", single=True,
           portfolio=True),
    Metric("max_margin_ratio", "float64", "ratio", "ratio",
           "highest maintenance margin / margin balance at a held bar's adverse mark extreme (1 = liquidated); "
           "futures", single=True, portfolio=True),
    Metric("bars_without_mark", "int64", "bars", "count",
           "simulated bars the mark series has no bar for (funding and liquidation used the price bar); futures",
           single=True, portfolio=True),
    # --detail (issue 29); NULL without it.
    Metric("bars_without_detail", "int64", "bars", "count",
           "held bars whose range reached a stop level but had no finer bar (decided by the bar's own rule); "
           "--detail", single=True),
    Metric("partial_bars", "int64", "bars", "count", "simulated bars built from less than their interval's hours"),
    Metric("skipped_no_slot", "int64", "trades", "count", "entry signals left out: every slot taken",
           section="portfolio", portfolio=True, without_bars=0),
    Metric("skipped_no_cash", "int64", "trades", "count", "entry signals left out: not enough cash for the stake",
           section="portfolio", portfolio=True, without_bars=0),
    Metric("max_open_seen", "int64", "trades", "count", "most positions open at once",
           section="portfolio", portfolio=True, without_bars=0, stored=False),
    Metric("n_trials", "int64", "sets", "count", "parameter sets tried on the symbol", section="sweep"),
    Metric("pbo", "float64", "ratio", "ratio", "the symbol's probability of backtest overfitting (CSCV)",
           section="sweep"),
    Metric("deflated_sharpe", "float64", "ratio", "ratio",
           "the row's Deflated Sharpe Ratio: probability that its Sharpe beats n_trials unskilled trials",
           section="sweep"),
    Metric("set", "int64", "sets", "count", "the row's parameter set: its index in the sweep's grid (as in "
           "--returns-out)", section="sweep"),
    # --stats (issue 30, docs/statistics.md): per symbol on every row, per set, or on the best set's row alone.
    Metric("stats_days", "int64", "days", "count", "the symbol's full UTC days of daily returns --stats used",
           section="sweep"),
    Metric("spa_lower", "float64", "ratio", "ratio", "the symbol's SPA p-value (lower) that no set beats "
           "--benchmark after the search; --stats spa", section="sweep"),
    Metric("spa_consistent", "float64", "ratio", "ratio", "the symbol's SPA p-value (consistent, Hansen's "
           "headline one); --stats spa", section="sweep"),
    Metric("spa_upper", "float64", "ratio", "ratio", "the symbol's SPA p-value (upper: White's reality check); "
           "--stats spa", section="sweep"),
    Metric("in_stepm", "int64", "sets", "count", "1 where StepM finds the row's set better than --benchmark at "
           "family-wise error --alpha, else 0; --stats stepm", section="sweep"),
    Metric("in_mcs", "int64", "sets", "count", "1 where the row's set is in the model confidence set at --alpha "
           "(statistically indistinguishable from the best), else 0; --stats mcs", section="sweep"),
    Metric("sharpe_ci_low", "float64", "ratio", "ratio", "the best set's annualised daily Sharpe ratio: "
           "lower end of its stationary-bootstrap interval at 1 - --alpha; on the best set's row; --stats "
           "bootstrap", section="sweep"),
    Metric("sharpe_ci_high", "float64", "ratio", "ratio", "upper end of that interval; --stats bootstrap",
           section="sweep"),
    Metric("psr", "float64", "ratio", "ratio", "the best set's probabilistic Sharpe ratio against 0 (daily "
           "returns); on the best set's row; --stats psr", section="sweep"),
    Metric("min_trl_days", "float64", "days", None, "the best set's minimum track record length at 95 %, in "
           "days; --stats psr", section="sweep"),
    Metric("haircut_sharpe", "float64", "ratio", "ratio", "the best set's annualised Sharpe ratio after Harvey "
           "and Liu's BHY haircut for n_trials tests; on the best set's row; --stats haircut", section="sweep"),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


def of_section(section: Section) -> tuple[Metric, ...]:
    """The stored metrics of one section of the results table, in order."""
    return tuple(m for m in METRICS if m.section == section and m.stored)


SQL_TYPES = {"float64": "DOUBLE", "int64": "BIGINT"}  # as DuckDB names them


def markdown_table() -> str:
    """The table of metrics in docs/cli.md."""
    lines = ["| metric | type | unit | what it is |", "|---|---|---|---|"]
    for m in METRICS:
        notes = [{"portfolio": "portfolio rows", "sweep": "sweeps, see sweeps.md"}.get(m.section, ""),
                 "" if m.stored else "in the JSON only, not a results column"]
        note = "; ".join(n for n in notes if n)
        lines.append(f"| `{m.name}` | {SQL_TYPES[m.dtype]} | {m.unit} | {m.description}{f' ({note})' if note else ''} |")
    return "\n".join(lines)
