"""Prefect flow: backtest strategies over every symbol of the current snapshot (nightly schedule).

Symbols (and sweep grids) are split into shards, one task each, so the same flow
runs on threads locally or on a Dask cluster (`prefect_dask.DaskTaskRunner`) with
identical results: every shard computes its symbols independently and appends its
own results file. The leaderboard is published as a Prefect table artifact. Last, past days'
results files are compacted (`cryptobt results compact`), as the export flow vacuums the lake.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline import runs
from pipeline.core import objects
from pipeline.core.config import Settings
from pipeline.core.run_options import BY_NAME as OPTION
from pipeline.engine import batch as engine
from pipeline.engine import options, strategies
from pipeline.lake import reader
from pipeline.lake import snapshots as lake
from pipeline.store.cache import ResultCache

PORTFOLIO_COLUMNS = ("strategy", "max_open", "stake", "stake_mode", "total_return_pct", "buy_hold_return_pct",
                     "num_trades", "skipped_no_slot", "skipped_no_cash", "max_drawdown_pct", "sharpe")
LEADERBOARD_COLUMNS = ("symbol", "strategy", "interval", "total_return_pct", "buy_hold_return_pct", "closed_trades",
                       "win_rate_pct", "max_drawdown_pct", "sharpe")


@task(name="backtest-shard", cache_policy=NO_CACHE)
def shard_task(strategy: str, params_list: list[dict[str, Any]], symbols: list[str], interval: str,
               fee_pct: float, fill: str, initial: float) -> list[dict[str, Any]]:
    settings = Settings.from_env()
    # A task may run in another process (Dask): it resolves the name it was sent at its own edge.
    config = options.run_config(options.resolve_strategy(strategy), params_list, fee=fee_pct, fill=fill,
                                initial=initial)
    cache = ResultCache.from_settings(settings, on_warning=get_run_logger().warning)
    outcome = runs.backtest(settings, config, symbols, interval, cache=cache, command="flow:backtest")
    get_run_logger().info("%s: %d symbols in %.2f s (%d from cache)", strategy, len(symbols),
                          outcome.seconds, outcome.cache_hits)
    return outcome.results


@task(name="portfolio", cache_policy=NO_CACHE)
def portfolio_task(strategy: str, params_list: list[dict[str, Any]], interval: str, fee_pct: float, fill: str,
                   initial: float, max_open: list[int], stakes: list[str], rank_by: str) -> list[dict[str, Any]]:
    """One shared account per (parameters, slots, stake) over every symbol: one task, it spans them all."""
    from pipeline.engine import portfolio as pf

    settings = Settings.from_env()
    config = options.run_config(options.resolve_strategy(strategy), params_list, fee=fee_pct, fill=fill,
                                initial=initial)
    sets = pf.make_sets(config, max_open, [pf.Stake.parse(s) for s in stakes])
    outcome = runs.portfolio(settings, config, sets, None, interval, rank_by=rank_by, command="flow:portfolio")
    get_run_logger().info("%s portfolio: %d accounts in %.2f s", strategy, len(sets), outcome.seconds)
    return [{k: v for k, v in r.items() if k != "symbols"} for r in outcome.results]


@task(name="compact-results", cache_policy=NO_CACHE)
def compact_task(settings: Settings) -> int:
    """Merge each past day's results files (the days before yesterday): queries over a long history open a
    file a day, not a file a run. Returns the folders merged."""
    from pipeline.store import compact

    if objects.is_object_url(settings.results_root):
        get_run_logger().info("results on object storage: not compacted (a query lists them in one request)")
        return 0
    merged = compact.compact(settings.results_root)
    if merged:
        get_run_logger().info("compacted %d folder(s): %d files into %d", len(merged),
                              sum(m.files for m in merged), len(merged))
    return len(merged)


def shard(items: list[str], shards: int) -> list[list[str]]:
    shards = max(1, min(shards, len(items)))
    return [items[i::shards] for i in range(shards)]


def by_interval(snapshot: lake.Snapshot, symbols: list[str], interval: str) -> dict[str, list[str]]:
    """The interval each symbol runs at: `interval`, or the symbol's own when its bars are coarser (a
    daily-only series in the nightly hourly run runs daily, never fails the flow)."""
    groups: dict[str, list[str]] = {}
    for name in symbols:
        meta = snapshot.symbols[name]
        own = interval if reader.read_from(meta, interval) else (meta.get("native") or reader.stored(meta)[0])
        groups.setdefault(own, []).append(name)
    return groups


@flow(name="backtest-all", log_prints=True)
def backtest_flow(
    strategy_names: list[str] | None = None,
    interval: str = OPTION["interval"].default,
    grid: dict[str, list[str]] | None = None,
    shards: int = 2,
    fee_pct: float = OPTION["fee"].default,
    fill: str = OPTION["fill"].default,
    initial: float = OPTION["initial"].default,
    mode: str = "single",
    max_open: list[int] | None = None,
    stake: list[str] | None = None,
    rank_by: str = "auto",
) -> list[dict[str, Any]]:
    """Every strategy (default: all) over every symbol; `grid` maps a strategy to sweep specs.

    `mode="portfolio"` runs one shared account per strategy instead (`max_open` slots, `stake`
    per entry, `--rank-by` rule: see `cryptobt portfolio --help`) and publishes its accounts.
    """
    if mode not in ("single", "portfolio"):
        raise ValueError(f"mode {mode!r} is not allowed; use single or portfolio")
    settings = Settings.from_env()
    names = strategy_names or strategies.strategy_names()
    chosen = {name: options.resolve_strategy(name) for name in names}
    snapshot = lake.require_snapshot(settings.lake_root)
    symbols = reader.resolve_symbols(snapshot, None)
    groups = by_interval(snapshot, symbols, interval) if interval != "auto" else {interval: symbols}
    elsewhere = {n: iv for iv, names_at in groups.items() if iv != interval for n in names_at}
    futures = []
    for name in names:
        specs = (grid or {}).get(name)
        strategy = chosen[name]
        params_list = (list(strategies.parse_grid(strategy, specs)) if specs
                       else [strategies.resolve_params(strategy, {})])
        # Validate once here so a bad grid fails before any shard starts.
        options.run_config(strategy, params_list, fee=fee_pct, fill=fill, initial=initial)
        if mode == "portfolio":
            futures.append(portfolio_task.submit(name, params_list, interval, fee_pct, fill, initial,
                                                 max_open or [10], stake or ["10%"], rank_by))
            continue
        for at, names_at in groups.items():
            for part in shard(names_at, shards):
                futures.append(shard_task.submit(name, params_list, part, at, fee_pct, fill, initial))
    results = [r for future in futures for r in future.result()]
    if mode == "portfolio":
        accounts = sorted(results, key=lambda r: -(r["total_return_pct"] or 0.0))
        create_table_artifact(
            key="portfolio-accounts",
            table=[{k: r[k] for k in PORTFOLIO_COLUMNS} for r in accounts[:50]],
            description=f"Top 50 of {len(accounts)} portfolio accounts over {len(symbols) - len(elsewhere)} symbols "
                        f"on snapshot {snapshot.id}" + _left_out(elsewhere, interval, "left out of the account"),
        )
        return accounts
    board = engine.leaderboard(results)
    create_table_artifact(
        key="backtest-leaderboard",
        table=[{k: r[k] for k in LEADERBOARD_COLUMNS} for r in board[:50]],
        description=f"Top 50 of {len(board)} results on snapshot {snapshot.id}"
                    + _left_out(elsewhere, interval, "run at their own interval"),
    )
    get_run_logger().info("best: %s %s %.2f %%", board[0]["symbol"], board[0]["strategy"],
                          board[0]["total_return_pct"] or 0.0) if board else None
    compact_task(settings)
    return board


def _left_out(elsewhere: dict[str, str], interval: str, what: str) -> str:
    """The artifact's line on symbols whose own bars are coarser than the flow's interval."""
    if not elsewhere:
        return ""
    return (f"; {len(elsewhere)} symbol(s) have no {interval} bars, {what}: "
            + ", ".join(f"{n} ({iv})" for n, iv in sorted(elsewhere.items())))
