"""A portfolio run: one shared account per set, through the same plan, one read, the portfolio
kernel, and the results table."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.core import intervals
from pipeline.core.config import Settings
from pipeline.engine import batch as engine
from pipeline.engine import portfolio as pf
from pipeline.engine.options import RunConfig
from pipeline.lake import reader
from pipeline.runs.backtest import futures_notes
from pipeline.runs.informative import with_informative
from pipeline.runs.plan import left_out, pinning, plan_run
from pipeline.store import results


@dataclass
class PortfolioOutcome:
    run_id: str
    results: list[dict[str, Any]]  # one per account, best total return first
    best: dict[str, Any] | None  # the best account in full: contributions, round trips, curves
    snapshot_id: str
    interval: str
    seconds: float
    kernel_seconds: float
    bar_steps: int
    paths: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # as RunOutcome's
    notes: list[str] = field(default_factory=list)  # warnings of the run (a futures leverage above the tiers')


@pinning
def portfolio(
    settings: Settings,
    config: RunConfig,
    sets: list,
    symbols: list[str] | None = None,
    interval: str = "1h",
    *,
    rank_by: str = "auto",
    write_results: bool = True,
    command: str = "",
) -> PortfolioOutcome:
    """One shared account per entry of `sets` (pipeline.engine.portfolio.make_sets) over `symbols` (None = all).

    One batched read; signals once per distinct strategy parameter set; the best account is
    re-simulated in full for its trade list and curves. Portfolio results are not cached
    (one account depends on every symbol's data); they are appended to the results table
    with mode = 'portfolio'. The stages: plan (`plan_run`), read, compute (`_accounts`), publish.
    """
    plan = plan_run(settings, config, symbols, interval, write_results=write_results, command=command)
    # One account needs one grid: `auto` takes the coarsest interval any symbol needs.
    interval = max(plan.interval_of.values(), key=intervals.SECONDS.get, default="1h")
    batch = reader.read_prices(settings.lake_root, plan.names, interval, None, config.timerange_end,
                               columns=tuple(dict.fromkeys((*engine.columns_needed(config), "volume"))),
                               snapshot=plan.snapshot, min_coverage=config.min_bar_coverage)
    if config.market == "futures":
        batch = reader.with_futures(batch, plan.snapshot)
    batch = with_informative(batch, config.strategy, settings.lake_root, plan.snapshot, config.timerange_end)
    engine.check_memory(len(plan.names), batch.times.size, len(sets))
    t0 = time.perf_counter()
    accounts, best = pf.accounts(batch, config, sets, rank_by)
    kernel_seconds = time.perf_counter() - t0
    bar_steps = int(batch.bars.sum()) * len(sets)
    seconds = time.perf_counter() - plan.started
    paths: list[str] = []
    if write_results and accounts:
        with results.one_run():
            paths += [str(p) for p in results.append_results(settings.results_root, plan.run_id, accounts,
                                                             plan.started_at)]
            results.append_run_metrics(
                settings.results_root, plan.run_id, started_at=plan.started_at, duration_s=seconds,
                strategy=config.strategy.name, n_symbols=len(plan.names), n_results=len(accounts), bars=bar_steps,
                snapshot_id=plan.snapshot.id, command=command,
            )
    return PortfolioOutcome(plan.run_id, accounts, best, plan.snapshot.id, interval, seconds, kernel_seconds,
                            bar_steps, paths, left_out(plan.snapshot, plan.interval_of, interval, symbols,
                                                       config.market), futures_notes(config, plan.snapshot, plan.names))
