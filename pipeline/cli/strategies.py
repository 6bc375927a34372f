"""`cryptobt strategies`: list the strategies a run can name, and check one for look-ahead."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from pipeline.cli.errors import user_errors
from pipeline.cli.output import console
from pipeline.cli.run_flags import Params, StrategyPaths
from pipeline.core.config import Settings
from pipeline.engine import options

app = typer.Typer(help="The strategies a run can name: parameters, defaults, allowed ranges.",
                             invoke_without_command=True)


@app.callback()
@user_errors
def strategies_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    strategy_path: StrategyPaths = None,
) -> None:
    """List every strategy with its parameters, defaults and allowed ranges.

    Example: cryptobt strategies
    """
    options.load_strategy_paths(strategy_path)
    if ctx.invoked_subcommand is not None:
        return
    rows = options.strategy_catalog()
    if as_json:
        import json

        print(json.dumps(rows))
        return
    for row in rows:
        console.print(f"[bold]{escape(row['name'])}[/] ({escape(row['origin'])}): {escape(row['description'])}",
                      highlight=False)
        for p in row["parameters"]:
            console.print(f"  {p['name']} = {p['default']}  ({p['allowed']}): {p['description']}", highlight=False)
        if not row["parameters"]:
            console.print("  (no parameters)")
    from pipeline.core.config import strategy_path_env

    # Where a user's own strategies come from, so a stranger knows where to put one.
    folders = [*(strategy_path or []), *strategy_path_env()]
    own = sum(1 for row in rows if row["origin"] != "built-in")
    console.print(f"your strategies: {own} from {', '.join(str(f) for f in folders)}" if folders else
                  "your strategies: none; put a strategy file (one .py, e.g. examples/strategies/donchian.py) in a "
                  "folder and pass --strategy-path FOLDER or set CRYPTOBT_STRATEGY_PATH; `cryptobt strategies check "
                  "NAME --strategy-path FOLDER` tests it for look-ahead", highlight=False)


@app.command("check")
@user_errors
def strategies_check(
    strategy: Annotated[str, typer.Argument(help="The strategy to check (a built-in or your own).")],
    param: Params = None,
    symbol: Annotated[list[str] | None, typer.Option("--symbol", "-s", help="Symbol (repeatable); default: "
                                                     "the lake's first three.")] = None,
    interval: Annotated[str, typer.Option(help="1h or 1d.")] = "1h",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    strategy_path: StrategyPaths = None,
) -> None:
    """Look-ahead, warm-up and declaration checks: exit 1 when the strategy reads bars after the one it
    decides on, or an indicator reads a parameter its INDICATOR_PARAMS does not list.

    Look-ahead: every output (indicators, entries, exits, the logged value) is recomputed on the data
    cut right after every bar; any value that changes at or before that bar is named. Warm-up: the
    indicators are recomputed with the first 100/200/500/1000 bars dropped; the relative change of
    each at the last bar is printed. Declaration: each indicator is recomputed with every parameter its
    INDICATOR_PARAMS leaves out changed, and must not change. Your own code runs with bounds checks: an index out of range is
    an error naming the file.

    Example: cryptobt strategies check donchian --strategy-path examples/strategies -p entry_period=30
    """
    from pipeline import runs
    from pipeline.engine import strategies

    strategies.enable_bounds_checks()
    options.load_strategy_paths(strategy_path)
    reports = runs.check_strategy(Settings.from_env(), options.resolve_strategy(strategy),
                                  options.parse_params(param or []), symbol, interval)
    peeks = [line for report in reports for line in report.lookahead]
    undeclared = [line for report in reports for line in report.declaration]
    if as_json:
        import json
        from dataclasses import asdict

        print(json.dumps({"strategy": strategy, "lookahead": bool(peeks), "undeclared": bool(undeclared),
                          "symbols": [asdict(report) for report in reports]}))
    else:
        for report in reports:
            console.print(f"[bold]{report.symbol}[/] ({report.bars} bars, {report.cuts_checked} cuts): "
                          + ("[red]LOOK-AHEAD[/]" if report.lookahead else "no look-ahead")
                          + (", [red]INDICATOR_PARAMS INCOMPLETE[/]" if report.declaration else ""), highlight=False)
            for line in report.lookahead + report.declaration:
                console.print(f"  {line}", highlight=False, soft_wrap=True)
            for drop, changes in report.warmup.items():
                shown = ", ".join(f"{name} {'n/a' if v is None else f'{v:.2e}'}" for name, v in changes.items())
                console.print(f"  first {drop} bars dropped: relative change at the last bar: {shown or '-'}",
                              highlight=False)
    if peeks or undeclared:
        raise typer.Exit(1)
