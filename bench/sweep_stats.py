"""Issue 30's rows: the sweep statistics over a real sweep's daily return matrix, against `arch` on the same
matrix in the same run, and over every symbol of the lake.

One symbol: a 1,000-set RSI sweep of its hourly bars (the benchmark's lake: 5 years) writes its daily return
matrix (--returns-out); every statistic (SPA, StepM, MCS, the Sharpe interval, PSR and MinTRL; the haircut apart:
its draws are shared by all symbols) is timed on it with 1,000 repetitions, and `arch` 8 runs the same tests
on the same matrix: SPA, StepM and the interval at 1,000 repetitions; its MCS keeps a repetitions x sets x sets
array (8 GB at 1,000 x 1,000 x 1,000), so it runs at 100 repetitions and its time is scaled to 1,000 (its cost
is linear in the repetitions). All symbols: the same sweep over every symbol with --stats all, the statistics'
share of it timed inside the run.

    python -m bench.sweep_stats [--quick]   # prints the rows (the lake of bench.run's last run)
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import timed
from pipeline import runs
from pipeline.core.config import Settings
from pipeline.engine import options, strategies, sweep_stats
from pipeline.engine.strategies import get_strategy

ARCH_MCS_REPS = 100


def _matrix(path: Path, symbol: str) -> np.ndarray:
    import duckdb

    rows = duckdb.sql(f"""SELECT "set", "return" FROM '{path}' WHERE symbol = '{symbol}'
                          ORDER BY "set", day""").fetchnumpy()
    n_sets = int(rows["set"].max()) + 1
    return rows["return"].reshape(n_sets, -1).T.copy()


def bench_sweep_stats(settings: Settings, grid: list[dict[str, Any]], symbol: str, all_symbols: bool = True,
                      reps: int = 1000) -> dict:
    rsi = get_strategy("rsi")
    found: dict = {"sets": len(grid), "reps": reps, "symbol": symbol}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "daily.parquet"
        runs.backtest(settings, options.run_config(rsi, grid), [symbol], write_results=False, keep=1,
                      returns_out=path)
        matrix = _matrix(path, symbol)
    days, n_sets = matrix.shape
    traded = np.abs(matrix).sum(axis=0) > 0
    found.update(days=days, traded=int(traded.sum()))
    request = sweep_stats.StatsRequest(stats=("spa", "stepm", "mcs", "bootstrap", "psr"), reps=reps, seed=0)
    best = int(np.argmax(np.where(traded, matrix.sum(axis=0), -np.inf)))
    zero = np.zeros(days)
    ours = sweep_stats.statistics(matrix, traded, zero, best, request)
    found["ours"] = timed(lambda: sweep_stats.statistics(matrix, traded, zero, best, request), 3)
    found["distinct"] = int(len(sweep_stats._distinct(matrix[:, traded])[0]))
    found["mcs_size"] = len(ours["mcs"])
    found["spa"] = ours["spa"]
    for name in ("spa", "stepm", "mcs", "bootstrap"):
        one = sweep_stats.StatsRequest(stats=(name,), reps=reps, seed=0)
        found[f"ours_{name}"] = timed(lambda one=one: sweep_stats.statistics(matrix, traded, zero, best, one), 3)
    def haircut() -> None:  # a run draws the other tests' populations once: timed with that draw
        sweep_stats._POPULATIONS.clear()
        sweep_stats.haircut_sharpes([ours["sharpe"]], [sweep_stats.months_of(days)], n_sets, 0)

    found["ours_haircut_one"] = timed(haircut, 3)
    found["arch"] = bench_arch(matrix[:, traded], ours, best, reps)
    if all_symbols:
        t = time.perf_counter()
        outcome = runs.backtest(settings, options.run_config(rsi, grid, stats="all", reps=reps), write_results=False,
                                keep=1)
        found["all"] = {"seconds": time.perf_counter() - t, "stats_seconds": outcome.stats_seconds,
                        "symbols": len(outcome.stats["symbols"]), "kernel_seconds": outcome.kernel_seconds}
    return found


def bench_arch(models: np.ndarray, ours: dict, best: int, reps: int) -> dict:
    """arch 8 on the same matrix (distinct traded sets: its MCS divides by identical columns' zero variance)."""
    try:
        from arch.bootstrap import MCS, SPA, StationaryBootstrap, StepM
    except ImportError as exc:
        return {"skipped": f"arch is not installed ({exc})"}
    _, first, _ = np.unique(models.T, axis=0, return_index=True, return_inverse=True)
    models = models[:, np.sort(first)]
    days = models.shape[0]
    zero = np.zeros(days)
    out: dict = {"sets": models.shape[1]}
    t = time.perf_counter()
    spa = SPA(zero, -models, reps=reps, seed=0)
    spa.compute()
    out["spa_seconds"] = time.perf_counter() - t
    out["spa"] = {k: float(v) for k, v in spa.pvalues.items()}
    t = time.perf_counter()
    step = StepM(zero, -models, size=0.05, reps=reps, seed=0)
    step.compute()
    out["stepm_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    mcs = MCS(-models, size=0.05, reps=ARCH_MCS_REPS, method="R", seed=0)
    mcs.compute()
    out["mcs_seconds_at"] = time.perf_counter() - t
    out["mcs_seconds"] = out["mcs_seconds_at"] * reps / ARCH_MCS_REPS
    out["mcs_size"] = len(mcs.included)
    t = time.perf_counter()
    StationaryBootstrap(int(math.sqrt(days)), models[:, 0]).conf_int(
        lambda x: x.mean() / x.std(ddof=1) * math.sqrt(365), reps=reps, method="basic")
    out["interval_seconds"] = time.perf_counter() - t
    out["seconds"] = out["spa_seconds"] + out["stepm_seconds"] + out["mcs_seconds"] + out["interval_seconds"]
    return out


def report_lines(s: dict) -> list[str]:
    """The rows of bench/RESULTS.md."""
    from bench.run import _goal

    o, a = s["ours"], s["arch"]
    lines = [
        f"| sweep statistics, one symbol ({s['symbol']}): the daily returns of a {s['sets']:,}-set RSI sweep "
        f"({s['days']:,} days, {s['traded']:,} sets traded, {s['distinct']:,} distinct), {s['reps']:,} repetitions: "
        f"SPA + StepM + MCS + interval + PSR (SPA {s['ours_spa']['median']:.3f} s, StepM "
        f"{s['ours_stepm']['median']:.3f} s, MCS {s['ours_mcs']['median']:.3f} s ({s['mcs_size']} sets in it), "
        f"interval {s['ours_bootstrap']['median']:.3f} s; the haircut, drawing its 2,000 populations of other tests "
        f"(once a run), {s['ours_haircut_one']['median']:.3f} s) | "
        f"{o['median']:.3f} s | <= 1 s | {_goal(o['median'], 1.0)} |",
    ]
    if a.get("skipped"):
        lines.append(f"| arch 8 on the same matrix | skipped: {a['skipped']} | | |")
    else:
        lines.append(
            f"| arch 8 on the same matrix ({a['sets']:,} distinct traded sets): SPA {a['spa_seconds']:.2f} s, StepM "
            f"{a['stepm_seconds']:.2f} s, MCS {a['mcs_seconds']:.1f} s (measured at {ARCH_MCS_REPS} repetitions: "
            f"{a['mcs_seconds_at']:.2f} s; {a['mcs_size']} sets in it), interval {a['interval_seconds']:.2f} s | "
            f"{a['seconds']:.1f} s: ours is {a['seconds'] / o['median']:,.0f}x faster | | SPA p-values: arch "
            f"{a['spa']['consistent']:.3f}, ours {s['spa']['consistent']:.3f} (own generators) |")
    if s.get("all"):
        al = s["all"]
        lines.append(
            f"| sweep statistics over all {al['symbols']} symbols (the same sweep with `--stats all`, every symbol's "
            f"5 years): the statistics' share of the run | {al['stats_seconds']:.1f} s (the whole run "
            f"{al['seconds']:.1f} s, its kernels {al['kernel_seconds']:.1f} s) | <= 60 s | "
            f"{_goal(al['stats_seconds'], 60)} |")
    return lines


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbol", default=None)
    parser.add_argument("--no-all", action="store_true", help="Only the one-symbol rows.")
    args = parser.parse_args()
    settings = Settings.from_env()
    grid = strategies.parse_grid(get_strategy("rsi"), ["rsi_period=5:50:5", "oversold_threshold=15:42:3",
                                                       "overbought_threshold=60:87:3"])
    from pipeline.lake import snapshots as lake

    symbol = args.symbol or sorted(lake.require_snapshot(settings.lake_root).symbols)[0]
    found = bench_sweep_stats(settings, grid, symbol, not args.no_all)
    print("\n".join(report_lines(found)))


if __name__ == "__main__":
    main()
