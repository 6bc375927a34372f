"""`cryptobt data`: what the lake holds, and its data health."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.errors import user_errors
from pipeline.cli.output import console
from pipeline.core import tables
from pipeline.core.config import Settings

app = typer.Typer(help="What the lake holds: list symbols and intervals, check data health.",
                       no_args_is_help=True)


@app.command("list")
@user_errors
def data_list(
    snapshot: Annotated[str | None, typer.Option(help="A kept snapshot instead of the current one.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False,
) -> None:
    """Every symbol of the lake: its own interval, the intervals it can be read at, first and last
    bar, bars, gaps, data version and source.

    Example: cryptobt data list --json
    """
    import json

    from pipeline.lake import contents as data

    rows = data.listing(Settings.from_env().lake_root, snapshot)
    if as_json:
        print(json.dumps(rows))
        return
    title = (f"{len(rows)} symbol(s) in snapshot {rows[0]['snapshot_id']} from {rows[0]['source']}" if rows
             else "no symbols")
    columns = [tables.Column("symbol", required=True, right=False), tables.Column("interval", required=True),
               tables.Column("readable at", drop_rank=2, right=False),
               tables.Column("first bar (UTC)", required=True, right=False),
               tables.Column("last bar (UTC)", required=True, right=False), tables.Column("bars", required=True),
               tables.Column("gaps", drop_rank=1), tables.Column("data version", drop_rank=3, right=False)]
    refused = [r for r in rows if r["refused"]]
    rows = [[r["symbol"] + (" *" if r["refused"] else ""), r["interval"] or "-", " ".join(r["intervals"]) or "-",
             (r["first"] or "-")[:16].replace("T", " "), (r["last"] or "-")[:16].replace("T", " "), f"{r['bars']:,}",
             f"{r['gaps']:,}" if r["gaps"] is not None else "-", r["data_version"] or "-"] for r in rows]
    tables.print_table(console, columns, rows, title)
    for r in refused:
        console.print(f"* {r['symbol']}: refused by the export: {r['refused']}", highlight=False, soft_wrap=True)


@app.command("check")
@user_errors
def data_check(
    targets: Annotated[list[str] | None, typer.Argument(help="Symbols of the lake or OHLCV files (default: every "
                                                             "symbol).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when anything is found.")] = False,
    snapshot: Annotated[str | None, typer.Option(help="A kept snapshot instead of the current one.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Data health: gaps, jumps beyond CRYPTOBT_JUMP_RATIO (10x), stale closes (CRYPTOBT_STALE_BARS
    equal closes in a row, 24), zero prices, zero volume, high below low, duplicate timestamps.
    Findings are warnings (exit 0) unless --strict.

    Examples: cryptobt data check | cryptobt data check SYN001 ETH_BTC | cryptobt data check prices.csv --strict
    """
    import json

    from pipeline.lake import contents as data
    from pipeline.source import health

    settings = Settings.from_env()
    thresholds = health.Thresholds(settings.jump_ratio, settings.stale_bars)
    found = data.check(settings.lake_root, targets or [], thresholds, snapshot)
    if as_json:
        print(json.dumps(found))
    else:
        flagged = {name: notes for name, notes in found.items() if notes}
        for name in sorted(flagged):
            label = "[red]error:[/]" if strict else "[yellow]warning:[/]"
            console.print(f"{label} {name}: {'; '.join(flagged[name])}", highlight=False, soft_wrap=True)
        console.print(f"checked {len(found)}: {len(flagged)} with findings, {len(found) - len(flagged)} clean "
                      f"(jumps beyond {thresholds.jump_ratio:g}x, stale from {thresholds.stale_bars} equal closes)")
    if strict and any(found.values()):
        raise typer.Exit(1)
