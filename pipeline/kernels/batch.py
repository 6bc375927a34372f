"""Batch engine: every (symbol, parameter combo) of one strategy in one parallel kernel.

Inputs are (symbols x time) arrays on a shared time grid with NaN where a symbol
has no bar (close NaN <=> no bar). Each symbol's bars are compacted once into
buffers owned by the thread that runs it, the indicator is recomputed only when
the combo needs a new one (`recompute`), and every result is written to its own
cell of `out`: no reduction crosses threads, so results do not depend on the
number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from pipeline.kernels.enums import (
    M_BARS,
    M_FIRST_INDEX,
    M_LAST_INDEX,
    M_STATUS,
    M_WARMUP_BARS,
    N_IND_BUFFERS,
    N_METRICS,
    STATUS_NO_BARS,
    STATUS_OK,
    STATUS_TOO_FEW_BARS,
    TRADE_DTYPE,
)
from pipeline.kernels.indicators import compact_1d, strategy_indicators_1d
from pipeline.kernels.signals import strategy_signals_1d, warmup_bars_nb
from pipeline.kernels.simulate import simulate_1d


@njit(cache=True)
def _compact_bars(open_row, close_row, open_buf, close_buf, index):
    m = 0
    for t in range(close_row.shape[0]):
        if not np.isnan(close_row[t]):
            open_buf[m] = open_row[t]
            close_buf[m] = close_row[t]
            index[m] = t
            m += 1
    return m


@njit(cache=True)
def _first_at_or_after(index, m, start_t):
    """The first compacted bar at or after grid column `start_t` (m when there is none)."""
    j = 0
    while j < m and index[j] < start_t:
        j += 1
    return j


@njit(cache=True)
def _finish_row(metrics, m0, m, index, warmup):
    """Add the symbol's place in the time grid, its warm-up bars and the status to a metrics row.

    Bars m0..m-1 are the range simulated; bars before m0 only warmed the indicators up.
    """
    if m > m0:
        metrics[M_FIRST_INDEX] = index[m0]
        metrics[M_LAST_INDEX] = index[m - 1]
    else:
        metrics[M_FIRST_INDEX] = -1
        metrics[M_LAST_INDEX] = -1
    metrics[M_BARS] = m - m0
    metrics[M_WARMUP_BARS] = m0
    if m == m0:
        metrics[M_STATUS] = STATUS_NO_BARS
    elif m < warmup:
        metrics[M_STATUS] = STATUS_TOO_FEW_BARS
    else:
        metrics[M_STATUS] = STATUS_OK


@njit(cache=True, parallel=True)
def run_grid(
    strategy_code: int,
    open2d: np.ndarray,
    close2d: np.ndarray,
    combos: np.ndarray,
    recompute: np.ndarray,
    fee_frac: float,
    initial: float,
    fill_next_open: bool,
    bars_per_year: np.ndarray,
    start_t: int,
    out: np.ndarray,
) -> None:
    """Fill `out[s, c, :]` (METRIC_NAMES order) for every symbol s and combo c.

    Args:
        strategy_code: one of the STRAT_* codes.
        open2d, close2d: (S x T) float64, NaN where a symbol has no bar.
        combos: (C x N_PARAMS) float64 parameter rows, sorted so that combos
            sharing an indicator are adjacent (pipeline.strategies.combos_matrix).
        recompute: (C,) bool, True where combo c needs a fresh indicator
            (always True for c == 0).
        fee_frac, initial, fill_next_open: see simulate_1d.
        bars_per_year: (S,) annualisation of each symbol's Sharpe ratio.
        start_t: first grid column simulated; earlier bars only warm the indicators
            up (a --timerange start with history before it), so no trade fills there.
        out: (S x C x N_METRICS) float64, written in full.

    A symbol with fewer bars than the strategy's warm-up gets status
    STATUS_TOO_FEW_BARS (zero trades: no signal can fire); one without any bar
    gets STATUS_NO_BARS. The columns first_index/last_index hold the time-grid
    index of the symbol's first/last bar (-1 without bars) and `bars` its bar count.
    """
    n_symbols, n_time = close2d.shape
    n_combos = combos.shape[0]
    no_equity = np.empty(0)
    no_trades = np.empty(0, dtype=TRADE_DTYPE)
    for s in prange(n_symbols):
        open_buf = np.empty(n_time)
        close_buf = np.empty(n_time)
        index = np.empty(n_time, dtype=np.int64)
        buf0 = np.empty(n_time)
        buf1 = np.empty(n_time)
        buf2 = np.empty(n_time)
        entries = np.empty(n_time, dtype=np.bool_)
        exits = np.empty(n_time, dtype=np.bool_)
        sig_value = np.empty(n_time)
        m = _compact_bars(open2d[s], close2d[s], open_buf, close_buf, index)
        m0 = _first_at_or_after(index, m, start_t)
        op = open_buf[:m]
        cl = close_buf[:m]
        b0 = buf0[:m]
        b1 = buf1[:m]
        b2 = buf2[:m]
        en = entries[:m]
        ex = exits[:m]
        sv = sig_value[:m]
        for c in range(n_combos):
            params = combos[c]
            # The first combo of every symbol must compute, whatever recompute[0] says.
            if c == 0 or recompute[c]:
                strategy_indicators_1d(strategy_code, cl, params, b0, b1, b2)
            strategy_signals_1d(strategy_code, cl, params, b0, b1, b2, en, ex, sv)
            row = out[s, c]
            simulate_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], sv[m0:], fee_frac, initial, fill_next_open,
                        bars_per_year[s], row, no_equity, no_trades)
            _finish_row(row, m0, m, index, warmup_bars_nb(strategy_code, params))


@njit(cache=True)
def run_single(
    strategy_code: int,
    open1d: np.ndarray,
    close1d: np.ndarray,
    params: np.ndarray,
    fee_frac: float,
    initial: float,
    fill_next_open: bool,
    bars_per_year: float,
    start_t: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One symbol, one combo, with the trade log and the equity curve (from grid column `start_t`).

    Args:
        open1d, close1d: (T,) float64 on the time grid, NaN where there is no bar.
        params: (N_PARAMS,) float64 parameter row.

    Returns:
        (metrics, trades, equity): metrics is (N_METRICS,) as one row of
        run_grid's output; trades is a TRADE_DTYPE array whose `bar` and
        `signal_bar` are time-grid indices; equity is (T,) with the equity at
        every close and NaN at missing bars.
    """
    n_time = close1d.shape[0]
    open_buf = np.empty(n_time)
    close_buf = np.empty(n_time)
    index = np.empty(n_time, dtype=np.int64)
    m = _compact_bars(open1d, close1d, open_buf, close_buf, index)
    m0 = _first_at_or_after(index, m, start_t)
    op = open_buf[:m]
    cl = close_buf[:m]
    b0 = np.empty(m)
    b1 = np.empty(m)
    b2 = np.empty(m)
    en = np.empty(m, dtype=np.bool_)
    ex = np.empty(m, dtype=np.bool_)
    sv = np.empty(m)
    strategy_indicators_1d(strategy_code, cl, params, b0, b1, b2)
    strategy_signals_1d(strategy_code, cl, params, b0, b1, b2, en, ex, sv)
    metrics = np.empty(N_METRICS)
    equity_c = np.empty(m - m0)
    trades_c = np.empty(m - m0, dtype=TRADE_DTYPE)
    k = simulate_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], sv[m0:], fee_frac, initial, fill_next_open,
                    bars_per_year, metrics, equity_c, trades_c)
    _finish_row(metrics, m0, m, index, warmup_bars_nb(strategy_code, params))
    trades = trades_c[:k].copy()
    for j in range(k):
        trades[j]["bar"] = index[m0 + trades[j]["bar"]]
        trades[j]["signal_bar"] = index[m0 + trades[j]["signal_bar"]]
    equity = np.full(n_time, np.nan)
    for j in range(m - m0):
        equity[index[m0 + j]] = equity_c[j]
    return metrics, trades, equity


@njit(cache=True)
def indicators_single(strategy_code: int, close1d: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The strategy's indicator buffers for one symbol, on the time grid (NaN at missing bars).

    Returns a (N_IND_BUFFERS x T) array; see indicators.strategy_indicators_1d
    for what each row holds per strategy. For plots and checks.
    """
    n_time = close1d.shape[0]
    close_buf = np.empty(n_time)
    index = np.empty(n_time, dtype=np.int64)
    m = compact_1d(close1d, close_buf, index)
    bufs = np.full((N_IND_BUFFERS, m), np.nan)
    strategy_indicators_1d(strategy_code, close_buf[:m], params, bufs[0], bufs[1], bufs[2])
    out = np.full((N_IND_BUFFERS, n_time), np.nan)
    for j in range(m):
        for r in range(N_IND_BUFFERS):
            out[r, index[j]] = bufs[r, j]
    return out
