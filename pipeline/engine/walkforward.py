"""Walk-forward: choose on the past, judge on what follows, from one sweep pass.

Each symbol's simulated bars (its own, in time order) are cut into K consecutive folds;
fold k trains on its first `train_ratio` share (from the first bar when `anchored`) and
tests on the rest of the fold. The sweep kernel records per-block return sums for every
parameter set (`pipeline.engine.kernels.blocks`), so the in-sample objective of every set on
every train part, and the out-of-sample result of the set chosen there, come from those
sums: one kernel pass per symbol for all folds and all sets, no re-runs.

The parameter sets are simulated over the whole history once (indicators warmed up from
the first bar, a position open at a fold's start carried in, as a strategy that had been
running would hold it); a fold's numbers are those of its bars on that path. With
`walk_forward_flat_start` each test part is judged instead on a fresh account that starts flat
at the part's first bar: the chosen set alone is simulated again over the part's bars (its
indicators still warmed up on all the history before), one short kernel call per fold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core import run_options
from pipeline.engine.block_sums import sharpe_of_sums
from pipeline.engine.kernels.blocks import (
    B_COUNT,
    B_DOWN2,
    B_END,
    B_START,
    B_SUM,
    B_SUM2,
    N_BLOCK_STATS,
    merge_blocks,
)

if TYPE_CHECKING:
    from pipeline.engine.options import RunConfig
    from pipeline.lake.reader import PriceBatch

# Result fields a walk-forward row keeps from the chosen set's full-history row; its own
# metrics replace the rest, which stay NULL (they describe the full history, not the part).
_KEPT = ("symbol", "strategy", "params", "interval", "timerange_start", "timerange_end", "annualization",
         "bars_per_year", "fill", "fee_pct", "initial_investment", "snapshot_id", "computed_snapshot_id",
         "data_version", "engine_version", "min_bar_coverage", "market",
         *(o.record_field for o in (*run_options.PER_SET, *run_options.FUTURES_RUN)))


def fold_fractions(config: RunConfig) -> np.ndarray:
    """Block edges of the folds: 0, r/K, 1/K, (1 + r)/K, 2/K, ..., 1 (train, test, train, test...)."""
    k, r = config.walk_forward, config.train_ratio
    return np.array([0.0] + [edge for f in range(k) for edge in ((f + r) / k, (f + 1) / k)])


def _objective(merged: np.ndarray, objective: str) -> np.ndarray:
    """Each set's objective on a merged part (N_BLOCK_STATS x N), per bar where it has a length:
    total return as mean log growth per bar, Sharpe and Sortino per bar; -inf where undefined."""
    n = merged[B_COUNT]
    with np.errstate(divide="ignore", invalid="ignore"):
        if objective == "total_return":
            value = np.log(merged[B_END] / merged[B_START]) / n
        elif objective == "sharpe":
            # 0 where undefined: a set that never trades has no excess return.
            value = np.nan_to_num(sharpe_of_sums(n, merged[B_SUM], merged[B_SUM2]), nan=0.0)
        else:
            spread = np.sqrt(merged[B_DOWN2] / n)
            value = np.where(spread > 1e-15, merged[B_SUM] / n / spread, 0.0)
    return np.where(np.isfinite(value), value, -np.inf)


def _part_metrics(merged: np.ndarray, annual_bars: float) -> dict[str, Any]:
    """Return and Sharpe ratio of one set's merged part (N_BLOCK_STATS,)."""
    n = merged[B_COUNT]
    per_bar = float(sharpe_of_sums(n, merged[B_SUM], merged[B_SUM2]))
    sharpe = per_bar * math.sqrt(annual_bars) if math.isfinite(per_bar) else None
    ret = (merged[B_END] / merged[B_START] - 1.0) * 100.0 if n > 0 else None
    return {"bars": int(n), "total_return_pct": None if ret is None else float(ret), "sharpe": sharpe}


def flat_start_part(batch: PriceBatch, config: RunConfig, y: int, c: int, lo: int, hi: int) -> np.ndarray:
    """The block statistics (N_BLOCK_STATS,) of parameter set c on symbol y's simulated bars lo..hi-1,
    simulated as a fresh account: flat, `initial` cash before bar lo, nothing filled before it (the
    --timerange rule: earlier bars only warm the indicators up), a position open after bar hi-1 marked
    at its close. One kernel call over the symbol's bars up to hi-1."""
    from dataclasses import replace

    from pipeline.engine import batch as engine

    start = engine.start_column(batch, config)
    grid = start + np.flatnonzero(~np.isnan(batch.columns["close"][y, start:]))  # simulated bar -> grid column
    part = np.zeros(N_BLOCK_STATS)
    part[B_START] = part[B_END] = config.initial
    if hi <= lo:
        return part
    end = int(grid[hi - 1]) + 1
    columns = {name: column[y: y + 1, :end] for name, column in batch.columns.items()}
    detail = batch.detail and replace(batch.detail, symbols=[batch.symbols[y]], data_versions=[batch.data_versions[y]],
                                      columns={name: column[y: y + 1] for name, column in batch.detail.columns.items()})
    one = replace(batch, symbols=[batch.symbols[y]], times=batch.times[:end], columns=columns,
                  data_versions=[batch.data_versions[y]], coverage=None,
                  bars=(~np.isnan(columns["close"])).sum(axis=1), detail=detail)
    sub = replace(config.sliced(c, c + 1), timerange_start=datetime.fromtimestamp(int(batch.times[grid[lo]]), UTC),
                  timerange_end=None)
    blocks = np.zeros((1, 1, N_BLOCK_STATS, 1))
    engine.run_metrics(one, sub, np.array([0.0, 1.0]), blocks)
    return blocks[0, 0, :, 0]


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).isoformat()


def evaluate(blocks: np.ndarray, fractions: np.ndarray, config: RunConfig,
             row_of: Callable[[int, int], dict[str, Any]], n_symbols: int,
             bar_times: list[np.ndarray], batch: PriceBatch | None = None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Walk-forward of a chunk of `n_symbols` symbols.

    blocks: (Y x B x N_BLOCK_STATS x N) over the fine block edges `fractions` (which include
    `fold_fractions(config)`); row_of(y, c): the full-history result of symbol y and set c (asked
    only for each symbol's first set and the sets chosen); bar_times[y]: the epoch seconds of
    symbol y's simulated bars; batch: the chunk's prices, which `walk_forward_flat_start` simulates
    each test part again from (flat_start_part).

    Returns (summaries, table rows): one summary per symbol (its folds with the chosen sets,
    in-sample objective and out-of-sample return and Sharpe; the stitched out-of-sample
    return and Sharpe; the out-of-sample / in-sample ratio of the objective), and the rows
    for the results table (split = train / test per fold, oos per symbol).
    """
    if config.walk_forward_flat_start and batch is None:
        raise ValueError("walk_forward_flat_start needs the batch to simulate the test parts from")
    folds = fold_fractions(config)
    # Which fine blocks make up each fold part: the fine edges include every fold edge.
    position = np.searchsorted(np.round(fractions, 12), np.round(folds, 12))
    n_fine = len(fractions) - 1
    summaries: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    merged = np.empty((N_BLOCK_STATS, blocks.shape[3]))
    one = np.empty((N_BLOCK_STATS, 1))
    for y in range(n_symbols):
        head = row_of(y, 0)
        if head["reason"] is not None:
            continue
        annual = float(head["bars_per_year"])
        times = bar_times[y]
        m = len(times)
        tested = np.empty((config.walk_forward, N_BLOCK_STATS, 1))  # each fold's test part, in time order
        fold_out = []
        is_values, oos_values = [], []
        for k in range(config.walk_forward):
            train = np.zeros(n_fine, dtype=np.bool_)
            train[(0 if config.anchored else position[2 * k]): position[2 * k + 1]] = True
            test = np.zeros(n_fine, dtype=np.bool_)
            test[position[2 * k + 1]: position[2 * k + 2]] = True
            merge_blocks(blocks[y], train, merged)
            scores = _objective(merged, config.objective)
            chosen = int(np.argmax(scores))
            train_part = _part_metrics(merged[:, chosen], annual)
            edges = {name: int(math.floor(config_fraction * m + 1e-9)) for name, config_fraction in (
                ("train_from", 0.0 if config.anchored else folds[2 * k]), ("test_from", folds[2 * k + 1]),
                ("test_to", folds[2 * k + 2]))}
            if config.walk_forward_flat_start:
                tested[k, :, 0] = flat_start_part(batch, config, y, chosen, edges["test_from"], edges["test_to"])
            else:
                merge_blocks(blocks[y][:, :, chosen: chosen + 1], test, one)
                tested[k] = one
            test_part = _part_metrics(tested[k, :, 0], annual)
            is_values.append(float(scores[chosen]))
            oos_values.append(float(_objective(tested[k], config.objective)[0]))
            span = {"train_start": _iso(times[edges["train_from"]]) if edges["train_from"] < m else None,
                    "train_end": _iso(times[edges["test_from"] - 1]) if edges["test_from"] > 0 else None,
                    "test_start": _iso(times[edges["test_from"]]) if edges["test_from"] < m else None,
                    "test_end": _iso(times[min(edges["test_to"], m) - 1]) if edges["test_to"] > 0 else None}
            chosen_row = head if chosen == 0 else row_of(y, chosen)
            fold_out.append({"fold": k, "params": chosen_row["params"], **span,
                             "in_sample_objective": None if not math.isfinite(is_values[-1]) else is_values[-1],
                             "train": train_part, "test": test_part})
            for split, part, start, end in (("train", train_part, span["train_start"], span["train_end"]),
                                            ("test", test_part, span["test_start"], span["test_end"])):
                table.append(_row(chosen_row, k, split, part, start, end, config.walk_forward_flat_start))
        merge_blocks(tested, np.ones(config.walk_forward, dtype=np.bool_), one)
        oos = _part_metrics(one[:, 0], annual)
        finite_is = [v for v in is_values if math.isfinite(v)]
        finite_oos = [v for v in oos_values if math.isfinite(v)]
        mean_is = sum(finite_is) / len(finite_is) if finite_is else float("nan")
        mean_oos = sum(finite_oos) / len(finite_oos) if finite_oos else float("nan")
        ratio = mean_oos / mean_is if mean_is > 0 and math.isfinite(mean_oos) else None
        summaries.append({"symbol": head["symbol"], "objective": config.objective,
                          "flat_start": config.walk_forward_flat_start, "folds": fold_out, "oos": oos,
                          "oos_is_ratio": ratio})
        first_test = fold_out[0]["test_start"]
        table.append(_row(head, None, "oos", oos, first_test, fold_out[-1]["test_end"],
                          config.walk_forward_flat_start))
    return summaries, table


def _row(base: dict[str, Any], fold: int | None, split: str, part: dict[str, Any], start: str | None,
         end: str | None, flat_start: bool) -> dict[str, Any]:
    """A results-table row of one walk-forward part (the oos row keeps its symbol's first set's fields);
    `walk_forward_flat_start` tells a run whose test parts started flat from one that carried positions in."""
    row = {name: base.get(name) for name in _KEPT}
    if split == "oos":
        row["params"] = {}
    row.update(fold=fold, split=split, walk_forward_flat_start=flat_start, start=start, end=end, bars=part["bars"],
               total_return_pct=part["total_return_pct"], sharpe=part["sharpe"], from_cache=False)
    return row
