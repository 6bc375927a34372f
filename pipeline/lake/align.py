"""Placing rows read from the lake onto the (symbols x time) grid, one batch of rows at a time."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def scatter_to_grid(symbol_ids: np.ndarray, ts_us: np.ndarray, values: np.ndarray, row_of: np.ndarray,
                    t0_us: int, step_us: int, out: np.ndarray) -> int:
    """out[row_of[symbol_ids[i]], (ts_us[i] - t0_us) // step_us] = values[i] for every row that falls
    inside `out`; returns how many did not (they are not written).

    `out` is prefilled with NaN (no bar). Sequential: the reader calls it once per batch of rows
    as the batches arrive (a parallel launch per batch costs more than the batch).
    """
    rows, width = out.shape
    outside = 0
    previous_id, previous_ts, column = -1, 0, 0
    for i in range(symbol_ids.shape[0]):
        symbol_id = symbol_ids[i]
        ts = ts_us[i]
        # The lake keeps each symbol's bars in time order: the next bar is usually the next column,
        # found without the division (which is most of the cost of the whole pass).
        if symbol_id == previous_id and ts - previous_ts == step_us:
            column += 1
        else:
            column = (ts - t0_us) // step_us
        previous_id, previous_ts = symbol_id, ts
        row = row_of[symbol_id] if 0 <= symbol_id < row_of.shape[0] else -1
        if row < 0 or row >= rows or column < 0 or column >= width:
            outside += 1
        else:
            out[row, column] = values[i]
    return outside


def bar_span(values: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of the grid, from column `start` on: how many bars (non-NaN cells), and the columns of
    the first and the last (-1 when none). One pass that vectorises (NumPy needs a mask and three);
    over threads for many rows only: waking the threads costs more than a sweep chunk's few rows
    take (tens of ms on a busy machine against 0.1 ms)."""
    return (_bar_span_threads if values.shape[0] >= 64 else _bar_span_one_thread)(values, start)


def _bar_span(values, start):
    rows, width = values.shape
    counts = np.zeros(rows, dtype=np.int64)
    firsts = np.full(rows, -1, dtype=np.int64)
    lasts = np.full(rows, -1, dtype=np.int64)
    for row in prange(rows):
        line = values[row]
        count = 0
        for column in range(start, width):
            count += line[column] == line[column]  # False for NaN only
        counts[row] = count
        if count:
            first = start
            while line[first] != line[first]:
                first += 1
            last = width - 1
            while line[last] != line[last]:
                last -= 1
            firsts[row], lasts[row] = first, last
    return counts, firsts, lasts


_bar_span_threads = njit(cache=True, parallel=True)(_bar_span)
_bar_span_one_thread = njit(cache=True)(_bar_span)


def funding_to_grid(rows: np.ndarray, ts_us: np.ndarray, rates: np.ndarray, t0_us: int, step_us: int,
                    shape: tuple[int, int]) -> np.ndarray:
    """The funding rate of each grid cell (SPEC 4.3): every funding time floors to the open of the bar
    holding it, `(ts - t0) // step`, and a bar holding several sums them (8-hourly funding on daily bars);
    NaN where no funding time falls. `rows` are grid rows (-1: not read); times outside the grid are left
    out, like a funding time in a gap the kernels never reach."""
    n_rows, width = shape
    columns = (ts_us - t0_us) // step_us
    inside = (rows >= 0) & (rows < n_rows) & (columns >= 0) & (columns < width)
    sums = np.zeros(shape)
    counts = np.zeros(shape, dtype=np.int64)
    np.add.at(sums, (rows[inside], columns[inside]), rates[inside])
    np.add.at(counts, (rows[inside], columns[inside]), 1)
    return np.where(counts > 0, sums, np.nan)


def last_closed(bar_open_s: np.ndarray, step_s: int, series_open_s: np.ndarray, series_step_s: int) -> np.ndarray:
    """For each bar (open times `bar_open_s`, length `step_s`), the index in `series_open_s` (ascending open
    times of bars `series_step_s` long) of the last series bar closed by that bar's close, -1 before the first:
    series bar u is visible to bar t iff u + series_step <= t + step (a daily bar of day D first to the hourly
    bar labelled D 23:00, whose close is D+1 00:00)."""
    return np.searchsorted(series_open_s, bar_open_s + (step_s - series_step_s), side="right").astype(np.int64) - 1
