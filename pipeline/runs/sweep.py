"""A sweep's chunks of symbols through the kernels: every parameter set in bounded calls, results
as columns, overfitting statistics and walk-forward per chunk, the progress of it all."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.core import intervals
from pipeline.core.run_options import OBJECTIVES
from pipeline.engine import batch as engine
from pipeline.engine import overfit, sweep_stats, walkforward
from pipeline.engine.kernels import enums
from pipeline.engine.options import RunConfig
from pipeline.lake import reader
from pipeline.runs.plan import CHUNK_BAR_STEPS, SWEEP_CALL_SECONDS
from pipeline.store import results
from pipeline.store.returns_file import ReturnsWriter


class Progress:
    """Backtests done (symbol x parameter set) for `on_progress`, and the kernel's time and bar-steps."""

    def __init__(self, on_progress: Callable[[int, int], None] | None, total: int, done: int) -> None:
        self.on_progress, self.total, self.done = on_progress, total, done
        self.kernel_seconds = 0.0
        self.bar_steps = 0
        self._report(done)

    def advance(self, backtests: int) -> None:
        self.done += backtests
        self._report(self.done)

    def within(self, backtests: int) -> None:
        """Backtests done in the chunk under way (a sweep's slices of sets), not yet `advance`d."""
        self._report(self.done + backtests)

    def _report(self, done: int) -> None:
        self.reported = done  # backtests finished, those of the chunk under way included
        if self.on_progress is not None:
            self.on_progress(done, self.total)


class Sweep:
    """A sweep's chunks of symbols: every parameter set in bounded kernel calls (`kernel_part`), the
    chunk's results as columns into the results file (no dict per result), its overfitting statistics
    and walk-forward, and only the `keep` best results of each symbol kept as dicts (all with None)."""

    def __init__(self, config: RunConfig, sink: results.ResultSink | None, keep: int | None,
                 on_results: Callable[[list[dict[str, Any]]], None] | None,
                 should_stop: Callable[[], bool] | None, progress: Progress,
                 returns_out: ReturnsWriter | None = None) -> None:
        self.config, self.sink, self.keep = config, sink, keep
        # --stats and --returns-out: every set's equity at each day's last bar, chunk by chunk.
        self.daily = DailyStatistics(config, returns_out) if config.stats or returns_out else None
        self.on_results, self.should_stop, self.progress = on_results, should_stop, progress
        self.rows = 0
        self.summaries: list[dict[str, Any]] = []  # walk-forward, one per symbol
        self.fold_rows: list[dict[str, Any]] = []  # and its results-table rows
        n_params = len(config.params_list)
        self.return_sums, self.return_counts = np.zeros(n_params), np.zeros(n_params, dtype=np.int64)
        self._part: tuple[reader.PriceBatch, np.ndarray, int] | None = None  # the chunk under way

    def run_part(self, batch: reader.PriceBatch) -> list[dict[str, Any]]:
        cube, blocks, days = kernel_part(batch, self.config, self.daily is not None, self._called, self.should_stop)
        self._part = None
        return self.finish_part(batch, cube, blocks, days)

    def _called(self, batch: reader.PriceBatch, cube: np.ndarray, first: int, stop: int, seconds: float) -> None:
        """`kernel_part`'s report of a kernel call over sets first..stop-1 (none yet: stop 0)."""
        self._part = (batch, cube, stop)
        if stop == 0:
            return
        self.progress.kernel_seconds += seconds
        self.progress.bar_steps += int(batch.bars.sum()) * (stop - first)
        self.progress.within(len(batch.symbols) * stop)

    def finish_part(self, batch: reader.PriceBatch, cube: np.ndarray, blocks: np.ndarray,
                    days: np.ndarray | None) -> list[dict[str, Any]]:
        """A chunk of symbols whose kernels ran (`kernel_part`, here or as a distributed sweep's parts put
        together in set order): its result columns and overfitting statistics, its daily statistics,
        walk-forward, the results written and the kept ones returned."""
        config, n_params = self.config, len(self.config.params_list)
        fractions = overfit.block_fractions(config)
        annual = engine.bars_per_year(batch, config, engine.start_column(batch, config))
        columns = engine.result_columns(batch, config, cube, annual, engine.partial_bars(batch, config))
        has_reason = np.array([r is not None for r in columns.fields["reason"]]).reshape(len(batch.symbols), -1)
        columns.fields.update({name: values.ravel() for name, values in
                               overfit.result_statistics(blocks, config, has_reason).items()})
        if self.daily is not None:
            self.daily.add_part(batch, cube, columns, has_reason, days)
            del days
        if config.walk_forward:
            def row_of(y: int, c: int) -> dict[str, Any]:
                return engine.column_rows(batch, config, cube, columns, [y * n_params + c])[0]

            summaries, rows = walkforward.evaluate(blocks, fractions, config, row_of, len(batch.symbols),
                                                   _simulated_times(batch, config), batch)
            self.summaries.extend(summaries)
            self.fold_rows.extend(rows)
        kept = self._keep(batch, cube, columns)
        self.progress.advance(len(batch.symbols) * n_params)
        return kept

    def finish_interrupted(self) -> list[dict[str, Any]]:
        """The sets of the chunk under way that finished before Ctrl-C: written and kept, without
        the overfitting statistics (they need every set)."""
        if self._part is None or self._part[2] == 0:
            return []
        batch, cube, done = self._part
        self._part = None
        config = self.config.sliced(0, done)
        columns = engine.result_columns(batch, config, cube[:, :done], engine.bars_per_year(
            batch, config, engine.start_column(batch, config)), engine.partial_bars(batch, config))
        return self._keep(batch, cube[:, :done], columns, config)

    def _keep(self, batch: reader.PriceBatch, cube: np.ndarray, columns: engine.ResultColumns,
              config: RunConfig | None = None) -> list[dict[str, Any]]:
        """Write the chunk's results, add them to the per-set returns, and return the kept ones."""
        config = config or self.config
        if self.sink is not None:
            self.sink.write_columns(columns)
        self.rows += columns.n_rows
        returns = columns.fields["total_return_pct"].reshape(len(batch.symbols), -1)
        width = returns.shape[1]
        self.return_sums[:width] += np.nansum(returns, axis=0)
        self.return_counts[:width] += np.isfinite(returns).sum(axis=0)
        kept = engine.column_rows(batch, config, cube, columns,
                                  engine.best_rows(columns, self.keep, *engine.ranking(self.config)))
        if self.on_results and kept:
            self.on_results(kept)
        return kept

    def set_returns(self) -> list[dict[str, Any]]:
        """Each parameter set's mean total return over the symbols that have one (a sweep's heatmap)."""
        return [{"params": params, "symbols": int(count), "total_return_pct": float(total / count)}
                for params, total, count in zip(self.config.params_list, self.return_sums, self.return_counts,
                                                strict=True) if count]


class DailyStatistics:
    """A sweep's daily returns (`sweep_stats.symbol_days`), chunk by chunk: each symbol's statistics into its
    results' columns, the pooled run's sums, and the long-format file of --returns-out."""

    def __init__(self, config: RunConfig, returns_out: ReturnsWriter | None) -> None:
        self.config, self.request, self.returns_out = config, config.stats_request, returns_out
        n_sets = len(config.params_list)
        self.symbols: dict[str, dict[str, Any]] = {}
        self.pool = sweep_stats.DailyPool(n_sets)
        self.objective_sums = np.zeros(n_sets)
        self.objective_counts = np.zeros(n_sets, dtype=np.int64)
        self.trade_sums = np.zeros(n_sets)
        self.traded = np.zeros(n_sets, dtype=bool)
        self.seconds = 0.0  # spent on the statistics (not the kernels, the daily returns or the file)

    def add_part(self, batch: reader.PriceBatch, cube: np.ndarray, columns: engine.ResultColumns,
                 has_reason: np.ndarray, days: np.ndarray) -> None:
        """One chunk of symbols: their daily returns, statistics (into `columns`) and pooled sums."""
        config, request = self.config, self.request
        n_symbols, n_sets = has_reason.shape
        objective, min_trades = engine.ranking(config)
        value = columns.fields[OBJECTIVES[objective]].reshape(n_symbols, n_sets)
        trades = columns.fields["num_trades"].reshape(n_symbols, n_sets)
        best_rows = engine.best_rows(columns, 1, objective, min_trades)
        found: list[dict[str, Any] | None] = []
        for y, symbol in enumerate(batch.symbols):
            first, last = int(cube[y, 0, enums.M_FIRST_INDEX]), int(cube[y, 0, enums.M_LAST_INDEX])
            series = None if first < 0 else sweep_stats.symbol_days(
                batch.times, batch.columns["close"][y], first, last, days[y], config.initial)
            traded = (trades[y] > 0) & ~has_reason[y]
            if series is not None:
                self.pool.add(series)
                if self.returns_out is not None:
                    self.returns_out.add(symbol, series.first_day, series.returns)
            finite = np.isfinite(value[y])
            self.objective_sums += np.where(finite, value[y], 0.0)
            self.objective_counts += finite
            self.trade_sums += trades[y]
            self.traded |= traded
            if request is None:
                found.append(None)
                continue
            if series is None:
                stats = {"reason": "no full UTC day of simulated bars", "days": 0}
            else:
                best = int(columns.set_index[best_rows[y]]) if best_rows.size else -1
                benchmark = series.benchmark if request.benchmark == "buy_and_hold" else np.zeros(len(series.benchmark))
                started = time.perf_counter()
                stats = sweep_stats.statistics(series.returns, traded, benchmark, best, request)
                self.seconds += time.perf_counter() - started
                stats.update(_day_range(series.first_day, series.first_day + stats["days"] - 1))
            self.symbols[symbol] = stats
            found.append(stats)
        if request is not None:
            self._haircut([s for s in found if s is not None])
            _into_columns(columns, found, n_sets)

    def _haircut(self, found: list[dict[str, Any]]) -> None:
        if "haircut" not in self.request.stats:
            return
        started = time.perf_counter()
        cuts = sweep_stats.haircut_sharpes([s.get("sharpe") for s in found],
                                           [sweep_stats.months_of(s.get("days") or 0) for s in found],
                                           self.request.sets_tried, self.request.seed)
        self.seconds += time.perf_counter() - started
        for stats, cut in zip(found, cuts, strict=True):
            stats["haircut_sharpe"] = cut

    def outcome(self) -> dict[str, Any]:
        """What the run says of its statistics (`--json`'s `stats`): the request, each symbol's, the pooled
        run's (its best set: the best mean of the objective over the symbols)."""
        request = self.request
        if request is None:
            return {}
        days, returns, benchmark = self.pool.series()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.objective_counts > 0, self.objective_sums / self.objective_counts, -np.inf)
        guarded = mean.copy()
        n_symbols = max(len(self.symbols), 1)
        guarded[self.trade_sums / n_symbols < engine.ranking(self.config)[1]] = -np.inf
        best = int(np.argmax(guarded if np.isfinite(guarded).any() else mean))
        started = time.perf_counter()
        pooled = sweep_stats.statistics(returns, self.traded, benchmark if request.benchmark == "buy_and_hold"
                                        else np.zeros(len(benchmark)), best, request)
        self.seconds += time.perf_counter() - started
        if days.size:  # the pooled days may have gaps (no symbol on a day): its first and last are its own
            pooled.update(_day_range(int(days[0]), int(days[-1])))
        self._haircut([pooled])
        sharpes = [sweep_stats.annual_sharpe(returns[:, c]) if self.traded[c] else math.nan
                   for c in range(returns.shape[1])] if days.size else []
        pooled["set_sharpes"] = [s if math.isfinite(s) else None for s in sharpes]  # the picture's distribution
        return {"stats": list(request.stats), "benchmark": request.benchmark, "reps": request.reps,
                "seed": request.seed, "alpha": request.alpha, "block_size": request.block_size or "sqrt(days)",
                "sets_tried": request.sets_tried, "symbols": self.symbols, "pooled": pooled}


def kernel_part(batch: reader.PriceBatch, config: RunConfig, daily: bool,
                on_call: Callable[[reader.PriceBatch, np.ndarray, int, int, float], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Every parameter set of `config` over a chunk of symbols through the kernels, in bounded calls
    (CHUNK_BAR_STEPS, then about SWEEP_CALL_SECONDS each): the metrics cube (symbols x sets x metrics), the block sums (symbols x blocks x
    stats x sets) and, with `daily`, each set's equity at every day's end (symbols x days x sets). A set's
    numbers do not depend on the other sets of its call. `on_call(batch, cube, first, stop, seconds)` hears
    of each call (first with stop 0, before any); `should_stop` True between calls raises KeyboardInterrupt."""
    n_params = len(config.params_list)
    fractions = overfit.block_fractions(config)
    blocks = overfit.new_blocks(len(batch.symbols), config)
    cube = np.empty((len(batch.symbols), n_params, engine.enums.N_METRICS))
    sets_per_call = max(1, CHUNK_BAR_STEPS // max(int(batch.bars.sum()), 1))
    annual = engine.bars_per_year(batch, config, engine.start_column(batch, config))
    days = None if not daily else np.full((len(batch.symbols), intervals.grid_days(batch.times)[1], n_params), np.nan)
    if on_call is not None:
        on_call(batch, cube, 0, 0, 0.0)
    first = 0
    while first < n_params:
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        stop = min(first + sets_per_call, n_params)
        t0 = time.perf_counter()
        cube[:, first:stop] = engine.run_metrics(batch, config.sliced(first, stop), fractions,
                                                 blocks[..., first:stop], annual,
                                                 None if days is None else days[:, :, first:stop])
        seconds = time.perf_counter() - t0
        if on_call is not None:
            on_call(batch, cube, first, stop, seconds)
        # The next call about SWEEP_CALL_SECONDS long, growing at most 8x a call (a first call's time is
        # mostly its fixed cost).
        sets_per_call = max(1, min(8 * sets_per_call, int(sets_per_call * SWEEP_CALL_SECONDS / max(seconds, 1e-6))))
        first = stop
    return cube, blocks, days


def _day_range(first_day: int, last_day: int) -> dict[str, str]:
    """first_day and last_day (epoch days) as ISO dates."""
    return {"first_day": str(np.datetime64(first_day, "D")), "last_day": str(np.datetime64(last_day, "D"))}


def _into_columns(columns: engine.ResultColumns, found: list[dict[str, Any] | None], n_sets: int) -> None:
    """Each symbol's statistics into its rows: p-values and days on every row, the StepM and MCS verdict per
    set, the best set's interval, PSR, MinTRL and haircut on its row alone (NaN where none)."""
    n_rows = len(found) * n_sets
    out = {name: np.full(n_rows, np.nan) for name in (
        "stats_days", "spa_lower", "spa_consistent", "spa_upper", "in_stepm", "in_mcs", "sharpe_ci_low",
        "sharpe_ci_high", "psr", "min_trl_days", "haircut_sharpe")}
    for y, stats in enumerate(found):
        if stats is None:
            continue
        rows = slice(y * n_sets, (y + 1) * n_sets)
        out["stats_days"][rows] = stats.get("days") or np.nan
        for kind in ("lower", "consistent", "upper"):
            if stats.get("spa") is not None:
                out[f"spa_{kind}"][rows] = stats["spa"][kind]
        for name in ("stepm", "mcs"):
            if stats.get(name) is not None:
                out[f"in_{name}"][rows] = 0.0
                out[f"in_{name}"][y * n_sets + np.asarray(stats[name], dtype=np.int64)] = 1.0
        best = stats.get("best_set")
        if best is not None and stats.get("reason") is None:
            row = y * n_sets + best
            if stats.get("sharpe_ci") is not None:
                out["sharpe_ci_low"][row], out["sharpe_ci_high"][row] = stats["sharpe_ci"]
            for field, name in (("psr", "psr"), ("min_trl", "min_trl_days"), ("haircut_sharpe", "haircut_sharpe")):
                if stats.get(field) is not None:
                    out[name][row] = stats[field]
    columns.fields.update(out)


def _simulated_times(batch: reader.PriceBatch, config: RunConfig) -> list[Any]:
    """Each symbol's simulated bar times (epoch seconds), from the --timerange start."""
    start = engine.start_column(batch, config)
    close = batch.columns["close"][:, start:]
    return [batch.times[start:][~np.isnan(row)] for row in close]
