"""Terminal tables that fit the terminal's width without cutting a value short.

A symbol or a parameter value cut to "ETH_B…" is a wrong value, so cells never
truncate: columns are chosen by width instead (the least important ones are left
out, and the table says which), and a cell may break between the items it lists
(one parameter per line), never inside one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from pipeline.core import metrics


@dataclass(frozen=True)
class Column:
    header: str
    # Never left out (symbols, parameters, the ranking metric).
    required: bool = False
    # Optional columns are left out highest rank first when the table is too wide.
    drop_rank: int = 0
    right: bool = True


def number(value: Any) -> str:
    """A table cell of unknown kind (user SQL): '-' for missing, two decimals, thousands separators."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, float):
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if abs(value) >= 1e9:
        return f"{value:.2e}"  # 1.20e+10 reads as what it is; 12,000,000,000.00 would not fit
    return f"{value:,.2f}"


# One format per kind of number, the same in CLI tables, the dashboard (static/index.html's `num`)
# and the pictures (pipeline/plots.py): percentages and money with two decimals and thousands
# separators, ratios with two decimals (three below 1, where the third still tells 0.045 from
# 0.054), counts whole with separators, prices and units with six significant digits (a BTC-quoted
# pair trades near 0.05: two decimals would print 0.0874 as 0.09).
KINDS = ("pct", "money", "ratio", "count", "price")
# The kinds of the columns that are not metrics (a metric's is in pipeline/core/metrics.py): the
# run settings, the trades table's and the views'.
COLUMN_KINDS: dict[str, str] = {
    **dict.fromkeys(("initial_investment", "pnl", "fees", "value", "fee", "stake"), "money"),
    **dict.fromkeys(("price", "entry_price", "exit_price", "units", "high", "low", "close"), "price"),
    **dict.fromkeys(("oos_is_ratio", "size", "min_bar_coverage"), "ratio"),
    "open": "count",  # open positions (num_trades - closed_trades), not a price
}


def kind_of(column: str) -> str | None:
    """The kind of a result column by its name (None: not a number, or unknown: `number` formats it);
    a name of neither table (from user SQL) by its ending."""
    if column in metrics.BY_NAME:
        return metrics.BY_NAME[column].format
    if column in COLUMN_KINDS:
        return COLUMN_KINDS[column]
    if column.endswith("_pct"):
        return "pct"
    if column.endswith(("_bars", "_trades", "trials")):
        return "count"
    return None


def formatted(value: Any, kind: str | None) -> str:
    """`value` in the format of its kind (KINDS); '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind is None or isinstance(value, bool) or isinstance(value, str):
        return number(value)
    if math.isinf(value):
        return str(value)
    if kind == "count":
        return f"{int(value):,}"
    if kind == "price":  # as JavaScript's String(Number(v.toPrecision(6))): 0.0873746, 43250.1, 1000000
        rounded = float(f"{value:.6g}")
        return str(int(rounded)) if rounded.is_integer() and abs(rounded) < 1e21 else repr(rounded)
    if kind == "ratio":
        return f"{value:.3f}" if abs(value) < 1 else f"{value:,.2f}"
    if abs(value) >= 1e12:
        return f"{value:.2e}"
    return f"{value:,.2f}"


def cell(column: str, value: Any) -> str:
    """A result column's value as every table prints it."""
    return formatted(value, kind_of(column))


def param_header(name: str) -> str:
    """A parameter's header over two or more lines (rsi_period -> rsi_ / period): narrow, still exact."""
    words = name.split("_")
    return "\n".join([w + "_" for w in words[:-1]] + [words[-1]])


def param(value: Any) -> str:
    """A parameter value as a user would type it back (30, not 30.00; 2.5 in full), never rounded."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _build(title: str | None, columns: Sequence[Column], rows: Sequence[Sequence[str]],
           keep: Sequence[int]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  title_justify="left")
    for i in keep:
        table.add_column(columns[i].header, no_wrap=True, justify="right" if columns[i].right else "left")
    for row in rows:
        table.add_row(*[row[i] for i in keep])
    return table


def natural_width(console: Console, table: Table) -> int:
    """Columns the table needs with no cell cut or wrapped (Rich clamps a plain measure to the terminal)."""
    return Measurement.get(console, console.options.update(max_width=100_000), table).maximum


def print_table(console: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]],
                title: str | None = None) -> None:
    """Print `rows` with as many columns as fit `console.width`; required ones always, whole."""
    keep = list(range(len(columns)))
    width = console.width
    droppable = sorted((i for i, c in enumerate(columns) if not c.required), key=lambda i: -columns[i].drop_rank)
    table = _build(None, columns, rows, keep)
    dropped: list[int] = []
    while natural_width(console, table) > width and droppable:
        dropped.append(droppable.pop(0))
        keep = [i for i in keep if i not in dropped]
        table = _build(None, columns, rows, keep)
    table.title = title
    # Wider than the terminal only when the required columns alone are: the terminal then wraps
    # lines, but no value is cut.
    console.print(table, width=max(width, natural_width(console, table)), crop=False)
    if dropped:
        names = ", ".join(columns[i].header.replace("\n", "") for i in sorted(dropped))
        console.print(f"[dim]left out to fit {width} columns: {names} (a wider terminal or --json shows them)[/]",
                      highlight=False)


def json_safe(value: Any) -> Any:
    """NaN and infinities (from user SQL, say) become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """One JSON document as `--json` prints it and the HTTP API sends it (dates as ISO text)."""
    import json

    return json.dumps(json_safe(value), default=str, allow_nan=False)
