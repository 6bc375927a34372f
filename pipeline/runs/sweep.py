"""A sweep's chunks of symbols through the kernels: every parameter set in bounded calls, results
as columns, overfitting statistics and walk-forward per chunk, the progress of it all."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.engine import batch as engine
from pipeline.engine import overfit, walkforward
from pipeline.engine.options import RunConfig
from pipeline.lake import reader
from pipeline.runs.plan import CHUNK_BAR_STEPS
from pipeline.store import results


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
    """A sweep's chunks of symbols: every parameter set in bounded kernel calls (CHUNK_BAR_STEPS),
    the chunk's results as columns into the results file (no dict per result), its overfitting
    statistics and walk-forward, and only the `keep` best results of each symbol kept as dicts
    (all with None)."""

    def __init__(self, config: RunConfig, sink: results.ResultSink | None, keep: int | None,
                 on_results: Callable[[list[dict[str, Any]]], None] | None,
                 should_stop: Callable[[], bool] | None, progress: Progress) -> None:
        self.config, self.sink, self.keep = config, sink, keep
        self.on_results, self.should_stop, self.progress = on_results, should_stop, progress
        self.rows = 0
        self.summaries: list[dict[str, Any]] = []  # walk-forward, one per symbol
        self.fold_rows: list[dict[str, Any]] = []  # and its results-table rows
        n_params = len(config.params_list)
        self.return_sums, self.return_counts = np.zeros(n_params), np.zeros(n_params, dtype=np.int64)
        self._part: tuple[reader.PriceBatch, np.ndarray, int] | None = None  # the chunk under way

    def run_part(self, batch: reader.PriceBatch) -> list[dict[str, Any]]:
        config, n_params = self.config, len(self.config.params_list)
        fractions = overfit.block_fractions(config)
        blocks = overfit.new_blocks(len(batch.symbols), config)
        cube = np.empty((len(batch.symbols), n_params, engine.enums.N_METRICS))
        sets_per_call = max(1, CHUNK_BAR_STEPS // max(int(batch.bars.sum()), 1))
        annual = engine.bars_per_year(batch, config, engine.start_column(batch, config))
        self._part = (batch, cube, 0)
        for first in range(0, n_params, sets_per_call):
            if self.should_stop is not None and self.should_stop():
                raise KeyboardInterrupt
            stop = min(first + sets_per_call, n_params)
            t0 = time.perf_counter()
            cube[:, first:stop] = engine.run_metrics(batch, config.sliced(first, stop), fractions,
                                                     blocks[..., first:stop], annual)
            self.progress.kernel_seconds += time.perf_counter() - t0
            self.progress.bar_steps += int(batch.bars.sum()) * (stop - first)
            self._part = (batch, cube, stop)
            self.progress.within(len(batch.symbols) * stop)
        self._part = None
        columns = engine.result_columns(batch, config, cube, annual, engine.partial_bars(batch, config))
        has_reason = np.array([r is not None for r in columns.fields["reason"]]).reshape(len(batch.symbols), -1)
        columns.fields.update({name: values.ravel() for name, values in
                               overfit.result_statistics(blocks, config, has_reason).items()})
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


def _simulated_times(batch: reader.PriceBatch, config: RunConfig) -> list[Any]:
    """Each symbol's simulated bar times (epoch seconds), from the --timerange start."""
    start = engine.start_column(batch, config)
    close = batch.columns["close"][:, start:]
    return [batch.times[start:][~np.isnan(row)] for row in close]
