"""`cryptobt portfolio`: one account over many symbols, its accounts table and best account."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pipeline.cli import boards
from pipeline.cli.errors import user_errors
from pipeline.cli.output import console, err_console, print_whole, warn
from pipeline.cli.run_flags import AllSymbols, Params, StrategyPaths, Symbols, run_options
from pipeline.cli.runs import say_left_out
from pipeline.core import tables
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.engine import options

app = typer.Typer()


def _split_values(items: list[str]) -> list[str]:
    """`--max-open 5,10 --max-open 20` -> ['5', '10', '20']."""
    return [v.strip() for item in items for v in item.split(",") if v.strip()]


@app.command("portfolio")
@user_errors
@run_options("portfolio")
def portfolio_command(
    strategy: Annotated[str, typer.Argument(help="Strategy whose signals drive the account.")],
    symbol: Symbols = None,
    all_: AllSymbols = False,
    max_open: Annotated[list[str] | None, typer.Option(
        "--max-open", help="Most positions open at once (comma list or repeated = a sweep).")] = None,
    stake: Annotated[list[str] | None, typer.Option(
        "--stake", help="Per entry: a fraction of equity in (0, 1] (0.1 or 10%) or an amount of cash > 1 "
                        "(comma list or repeated = a sweep).")] = None,
    rank_by: Annotated[str, typer.Option(
        help="Which same-bar entries win free slots: auto (volume when the lake has it), volume (trailing 24h "
             "quote volume) or name; ties go to the symbol name.")] = "auto",
    param: Params = None,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", "-g", help="Strategy parameter sweep: name=start:stop:step or name=v1,v2.")] = None,
    top: Annotated[int, typer.Option(help="Accounts and symbols in the printed tables.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the accounts and the best one's trades.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Picture of the best account vs equal-weight buy & hold "
                                                   "(.html or .png).")] = None,
    strategy_path: StrategyPaths = None,
    **run: Any,
) -> None:
    """One account over many symbols: shared cash, at most --max-open positions, ranked entries.

    At each bar exits are filled before entries; entries that fire on the same bar compete for
    free slots and cash in --rank-by order. An entry that finds no slot or too little cash is
    skipped and counted.

    Examples:
      cryptobt portfolio rsi --all --max-open 10 --stake 10%
      cryptobt portfolio macd --max-open 5,10,20 --stake 0.05,0.1 --rank-by volume --plot out/portfolio.html
      cryptobt portfolio rsi -g rsi_period=10:20:5 --max-open 10 --stake 100 --json
    """
    from pipeline import runs
    from pipeline.engine import portfolio as pf
    from pipeline.engine import strategies

    options.load_strategy_paths(strategy_path)
    symbols = options.check_symbols(symbol, all_)
    options.check_top(top)
    options.check_plot(plot)
    interval = options.check_interval(run.pop("interval"))
    slots = []
    for text in _split_values(max_open or ["10"]):
        if not text.isascii() or not text.isdigit() or int(text) < 1:
            raise PipelineError(f"--max-open {text!r} is not allowed: an integer >= 1")
        slots.append(int(text))
    if grid and param:
        raise PipelineError("use either --param or --grid, not both")
    chosen = options.resolve_strategy(strategy)
    params: Any = list(strategies.parse_grid(chosen, grid)) if grid else options.parse_params(param or [])
    config, sets = pf.request_sets(chosen, params, slots, _split_values(stake or ["10%"]), rank_by, **run)
    settings = Settings.from_env()
    outcome = runs.portfolio(settings, config, sets, symbols, interval, rank_by=rank_by, command="portfolio")
    say_left_out(outcome.left_out, interval)
    for note in outcome.notes:
        warn(note)
    best = outcome.best
    if plot and best:
        _plot_portfolio(plot, best, outcome, top)
    if as_json:
        import json

        detail = {k: v for k, v in (best or {}).items() if k != "equity_curve"}
        print(json.dumps({"run_id": outcome.run_id, "accounts": outcome.results, "best": detail},
                         default=str, allow_nan=False))
        return
    _print_accounts(strategy, config, outcome, top, settings)


def _print_accounts(strategy: str, config: Any, outcome: Any, top: int, settings: Settings) -> None:
    """The accounts' table (best first), the best account's largest contributions and the run's line."""
    from pipeline.engine import portfolio as pf

    best = outcome.best
    # Only the strategy parameters that vary get a column; fixed ones go in the title.
    varying = [k for k in config.params_list[0] if len({p[k] for p in config.params_list}) > 1]
    fixed = " ".join(f"{k}={tables.param(v)}" for k, v in config.params_list[0].items() if k not in varying)
    futures = config.market == "futures"
    if futures:
        execution = config.execution(0)
        fixed = (f"{fixed + ', ' if fixed else ''}perpetuals {execution.direction} {execution.leverage:g}x "
                 f"{config.margin} margin")
    from rich import box

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title=f"{strategy} portfolio over "
                  f"{len(best['symbols']) if best else 0} symbols ({outcome.interval})"
                  f"{', ' + fixed if fixed else ''}: best {min(top, len(outcome.results))} of "
                  f"{len(outcome.results)} accounts")
    # Headers and cells never truncate: a symbol or a parameter value cut short is a wrong value.
    own = ("liquidated", "funding paid") if futures else ()
    for header in ("slots", "stake", *varying, "return %", "b&h %", "trades", "open", "skipped", *own, "max dd %",
                   "sharpe"):
        table.add_column(header, no_wrap=True, justify="left" if header in ("stake",) else "right")
    for r in outcome.results[:top]:
        table.add_row(str(r["max_open"]), pf.Stake(r["stake"], r["stake_mode"] == "fraction").label(),
                      *[tables.param(r["params"][k]) for k in varying], tables.cell("total_return_pct",
                      r["total_return_pct"]), tables.cell("buy_hold_return_pct", r["buy_hold_return_pct"]),
                      tables.cell("closed_trades", r["closed_trades"]), tables.cell("open", boards.value(r, "open")),
                      tables.cell("bars", r["skipped_no_slot"] + r["skipped_no_cash"]),
                      *((tables.cell("liquidations", r["liquidations"]), tables.cell("funding_paid", r["funding_paid"]))
                        if futures else ()),
                      tables.cell("max_drawdown_pct", r["max_drawdown_pct"]), tables.cell("sharpe", r["sharpe"]))
    print_whole(table)
    if best:
        board = Table("symbol", "round trips", "P&L", "skipped", title="best account: largest contributions")
        for c in sorted(best["contributions"], key=lambda c: -abs(c["pnl"]))[:top]:
            board.add_row(c["symbol"], str(c["round_trips"]), tables.cell("pnl", c["pnl"]), str(c["skipped_entries"]))
        console.print(board)
        console.print(f"best account: final value {tables.cell('final_value', best['final_value'])} from "
                      f"{tables.cell('initial_investment', config.initial)}; "
                      f"{best['skipped_no_slot']} entries skipped for want of a slot, {best['skipped_no_cash']} "
                      f"for want of cash; ranked by {best['rank_by']}")
    console.print(f"run {outcome.run_id}: {outcome.seconds * 1000:.0f} ms (kernel {outcome.kernel_seconds * 1000:.0f}"
                  f" ms); snapshot {outcome.snapshot_id}; results in {settings.results_root} (mode = 'portfolio')")


def _plot_portfolio(path: Path, best: dict[str, Any], outcome: Any, top: int) -> None:
    from pipeline import plots
    from pipeline.engine import portfolio as pf

    stake = pf.Stake(best["stake"], best["stake_mode"] == "fraction").label()
    written = plots.write_portfolio_plot(path, best, f"{best['strategy']} portfolio, max open {best['max_open']}, "
                                         f"stake {stake}, snapshot {outcome.snapshot_id}", top)
    err_console.print(f"picture written to {written}")
