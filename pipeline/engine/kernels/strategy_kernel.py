"""Batch kernels of one strategy: every (symbol, parameter set) in one parallel pass.

This file is a template. `pipeline.engine.strategies.compiler` copies it once per
strategy (and per version of the strategy's source) with `_STRATEGY_MODULE`
set to the strategy's module, so the strategy's `indicators`, `signals` and
`warmup` are compiled straight into these loops (no dispatch, no per-strategy
branch) and Numba caches the machine code of each copy across processes.

Inputs are (symbols x time) arrays on a shared time grid with NaN where a symbol
has no bar (close NaN <=> no bar). `columns` is a tuple of such arrays, the
strategy's COLUMNS in order. Each symbol's bars are compacted once into
buffers owned by the thread that runs it, the indicator is recomputed only when
the parameter set needs a new one (`recompute`; indicator rows of their own parameters are kept per
distinct value, `_indicators_for`), and every result is written to
its own cell of `out`: no reduction crosses threads, so results do not depend on
the number of threads.
"""

import importlib

import numpy as np
from numba import njit, prange

from pipeline.engine.kernels.batch import compact_bars, finish_row, first_at_or_after, gather_row
from pipeline.engine.kernels.blocks import FILL_FIELDS, N_BLOCK_STATS, N_HELD_SUMS, held_return_sums
from pipeline.engine.kernels.enums import FUTURES_TRADE_DTYPE, N_METRICS, TRADE_DTYPE
from pipeline.engine.kernels.futures import simulate_futures_1d
from pipeline.engine.kernels.simulate import simulate_1d

_STRATEGY_MODULE = "__strategy_module__"  # replaced in each copy; this template is never imported
_strategy = importlib.import_module(_STRATEGY_MODULE)
warmup = _strategy.warmup
N_INDICATORS = len(_strategy.INDICATORS)
N_OUTPUTS = N_INDICATORS + 5  # rows of strategy_outputs: the indicators, entries, exits, sig_value, the short side
# Informative series (a strategy's INFORMATIVE): their COLUMNS ride in `prices` below its own, as rows
# N_COLUMNS.. (pipeline.engine.strategies.Strategy.input_columns), so every kernel here gathers, compacts and
# truncates them with the bars; the strategy's functions get them apart, as `informative[k, j, t]`.
N_INFORMATIVE = len(getattr(_strategy, "INFORMATIVE", ()))
N_COLUMNS = len(_strategy.COLUMNS)
if N_INFORMATIVE:
    _own_indicators = _strategy.indicators
    _own_signals = _strategy.signals

    @njit(cache=True)
    def _informative(prices):
        return np.ascontiguousarray(prices[N_COLUMNS:]).reshape((N_INFORMATIVE, N_COLUMNS, prices.shape[1]))

    @njit(cache=True)
    def indicators(prices, params, ind):
        _own_indicators(prices[:N_COLUMNS], params, ind, _informative(prices))

    @njit(cache=True)
    def signals(prices, params, ind, entries, exits, sig_value):
        _own_signals(prices[:N_COLUMNS], params, ind, entries, exits, sig_value, _informative(prices))
else:
    indicators = _strategy.indicators
    signals = _strategy.signals

# Short signals (futures): the strategy's own `short_signals`, else the mirrored rule (a long exit opens a
# short, a long entry closes it). Which one a strategy may use is checked before a run
# (pipeline.engine.strategies: SHORT_RULE). Returns (enter_short, exit_short): the mirror hands back the long
# signals themselves, swapped, instead of copying them (a copy per symbol was a tenth of a futures run).
if hasattr(_strategy, "short_signals") and N_INFORMATIVE:
    _own_short_signals = _strategy.short_signals

    @njit(cache=True)
    def short_side(prices, params, ind, entries, exits, enter_short, exit_short):
        _own_short_signals(prices[:N_COLUMNS], params, ind, enter_short, exit_short, _informative(prices))
        return enter_short, exit_short
elif hasattr(_strategy, "short_signals"):
    _own_short_signals = _strategy.short_signals

    @njit(cache=True)
    def short_side(prices, params, ind, entries, exits, enter_short, exit_short):
        _own_short_signals(prices, params, ind, enter_short, exit_short)
        return enter_short, exit_short
else:
    @njit(cache=True)
    def short_side(prices, params, ind, entries, exits, enter_short, exit_short):
        return exits, entries


@njit(cache=True)
def _symbol_prices(columns, s, index, m):
    prices = np.empty((len(columns), m))
    for j in range(len(columns)):
        gather_row(columns[j][s], index, prices[j])
    return prices


@njit(cache=True)
def _symbol_buffers(columns, s, open_row, close_row):
    """One symbol's bars compacted (gaps removed) and its working buffers, owned by the caller's thread.

    Returns (open, close, index, prices, ind, entries, exits, sig_value); index maps a bar to the grid.
    """
    n_time = close_row.shape[0]
    open_buf = np.empty(n_time)
    close_buf = np.empty(n_time)
    index_buf = np.empty(n_time, dtype=np.int64)
    m = compact_bars(open_row, close_row, open_buf, close_buf, index_buf)
    index = index_buf[:m]
    prices = _symbol_prices(columns, s, index, m)
    ind = np.empty((N_INDICATORS, m))
    return (open_buf[:m], close_buf[:m], index, prices, ind, np.empty(m, dtype=np.bool_),
            np.empty(m, dtype=np.bool_), np.empty(m))


@njit(cache=True)
def _symbol_range(high_row, low_row, index):
    """One symbol's highs and lows at its bars (for stops)."""
    m = index.shape[0]
    high = np.empty(m)
    low = np.empty(m)
    gather_row(high_row, index, high)
    gather_row(low_row, index, low)
    return high, low


@njit(cache=True)
def _record_days(curve, index, m0, day_of_column, day_out, s, c):
    """day_out[s, d, c] = the equity at day d's last simulated bar, from one row's equity curve."""
    for j in range(curve.shape[0]):
        day_out[s, day_of_column[index[m0 + j]], c] = curve[j]


@njit(cache=True)
def _same_row(combos, c):
    """Whether parameter row c equals row c-1 (a sweep of stops or sizing alone): same signals."""
    if c == 0:
        return False
    for j in range(combos.shape[1]):
        if combos[c, j] != combos[c - 1, j]:
            return False
    return True


@njit(cache=True)
def _indicators_for(prices, combos, c, recompute, ind, ind_slots, ind_fills, table):
    """Bring `ind` to parameter row c's indicators; True when its signals must be computed again.

    Without `ind_slots` the indicators are computed where `recompute` says (rows sharing them are adjacent).
    With them (pipeline.engine.strategies.grid.indicator_slots), each indicator row is kept in `table` at
    slot ind_slots[c, k] the first time a row needs it (ind_fills) and copied back when a later row does.
    """
    params = combos[c]
    if ind_slots is None:
        if c == 0 or recompute[c]:
            indicators(prices, params, ind)
            return True
        return not _same_row(combos, c)
    if c == 0 or recompute[c]:
        indicators(prices, params, ind)
        for k in range(ind.shape[0]):
            if c == 0 or ind_fills[c, k]:
                table[ind_slots[c, k], :] = ind[k]
        return True
    changed = False
    for k in range(ind.shape[0]):
        if ind_slots[c, k] != ind_slots[c - 1, k]:
            ind[k, :] = table[ind_slots[c, k]]
            changed = True
    return changed or not _same_row(combos, c)


@njit(cache=True)
def _indicator_table(ind_slots, m):
    """The table of kept indicator rows of one symbol (no rows without `ind_slots`)."""
    if ind_slots is None or ind_slots.size == 0:
        return np.empty((0, m))
    return np.empty((ind_slots.max() + 1, m))


@njit(cache=True, parallel=True)
def run_grid(columns, open2d, close2d, combos, recompute, fee_frac, initial, fill_next_open,
             bars_per_year, start_t, out, high2d=None, low2d=None, execution=None, block_fractions=None,
             block_out=None, detail_open2d=None, detail_high2d=None, detail_low2d=None, detail_first=None,
             detail_ratio=0, day_of_column=None, day_out=None, ind_slots=None, ind_fills=None):
    """Fill `out[s, c, :]` (METRIC_NAMES order) for every symbol s and parameter row c.

    Args:
        columns: tuple of (S x T) float64 arrays, the strategy's COLUMNS.
        open2d, close2d: (S x T) float64 fill prices, NaN where a symbol has no bar.
        combos: (C x P) float64 parameter rows in the strategy's PARAMS order, sorted so
            that rows sharing an indicator are adjacent (pipeline.engine.strategies.combos_matrix).
        recompute: (C,) bool, True where row c needs a fresh indicator.
        fee_frac, initial, fill_next_open: see simulate_1d.
        bars_per_year: (S,) annualisation of each symbol's Sharpe ratio.
        start_t: first grid column simulated; earlier bars only warm the indicators
            up (a --timerange start with history before it), so no trade fills there.
        out: (S x C x N_METRICS) float64, written in full.
        high2d, low2d: (S x T) highs and lows, needed only when a row of `execution` sets a
            stop (None otherwise: the no-stop path reads neither).
        execution: (C x N_EXECUTION) stops, size and slippage of each row (see simulate_1d);
            None = SPEC section 4 alone for every row.
        block_fractions: (B + 1,) block edges as fractions of each symbol's simulated bars
            (pipeline.engine.kernels.blocks); None = no block statistics (a sweep's PBO and deflated
            Sharpe ratio need them).
        block_out: (S x B x N_BLOCK_STATS x C) float64, filled when block_fractions is given
            (parameter sets last: the overfitting statistics loop over them).
        detail_open2d, detail_high2d, detail_low2d: (S x F) the finer bars of --detail on their own grid,
            detail_first (T,) each grid column's first finer column and detail_ratio finer bars per bar
            (simulate_1d); None: no detail.
        day_of_column, day_out: a sweep's daily returns (its statistics, --returns-out): (T,) the day of
            each grid column (0 = the grid's first UTC day) and (S x D x C), into which each row's equity
            at a day's last simulated bar is written (the cells of days without a bar are left as they are).
        ind_slots, ind_fills: (C x N_INDICATORS) where each indicator row is kept and which row computes it
            (pipeline.engine.strategies.grid.indicator_slots; recompute is then any(ind_fills[c])); None: none kept.

    A symbol with fewer bars than the warm-up gets STATUS_TOO_FEW_BARS, one
    without any bar STATUS_NO_BARS; first_index/last_index hold the time-grid
    index of the symbol's first/last bar (-1 without bars).
    """
    n_symbols, n_time = close2d.shape
    n_combos = combos.shape[0]
    no_equity = np.empty(0)
    no_trades = np.empty(0, dtype=TRADE_DTYPE)
    for s in prange(n_symbols):
        op, cl, index, prices, ind, en, ex, sv = _symbol_buffers(columns, s, open2d[s], close2d[s])
        m = cl.shape[0]
        m0 = first_at_or_after(index, m, start_t)
        curve = no_equity if day_out is None else np.empty(m - m0)
        # Branches on arguments being None are resolved when Numba compiles: each caller's
        # variant holds only its own path (the no-stop one never touches a high or a low).
        if high2d is None:
            hi = op
            lo = op
        else:
            hi, lo = _symbol_range(high2d[s], low2d[s], index)
        if detail_first is not None:
            first = np.empty(m, dtype=np.int64)
            for j in range(m):
                first[j] = detail_first[index[j]]
        # One parameter set's block statistics at a time (simulate_1d fills them as it goes).
        stats = np.empty((0 if block_fractions is None else block_fractions.shape[0] - 1, N_BLOCK_STATS))
        # What the block statistics of an all-in run are made from: the price returns' running sums and
        # the run's fills (simulate_1d's held_sums and fill_log).
        if block_fractions is None:
            held = np.zeros((0, N_HELD_SUMS))
            fills = np.zeros((0, FILL_FIELDS))
        else:
            held = held_return_sums(cl[m0:])
            fills = np.empty((m - m0, FILL_FIELDS))
        table = _indicator_table(ind_slots, m)
        for c in range(n_combos):
            params = combos[c]
            if _indicators_for(prices, combos, c, recompute, ind, ind_slots, ind_fills, table):
                signals(prices, params, ind, en, ex, sv)
            row = out[s, c]
            if execution is None:
                simulate_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], sv[m0:], fee_frac, initial, fill_next_open,
                            bars_per_year[s], row, curve, no_trades, None, None, None, block_fractions, stats,
                            held_sums=held, fill_log=fills)
            elif high2d is None:
                simulate_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], sv[m0:], fee_frac, initial, fill_next_open,
                            bars_per_year[s], row, curve, no_trades, None, None, execution[c], block_fractions,
                            stats, held_sums=held, fill_log=fills)
            elif detail_first is None:
                simulate_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], sv[m0:], fee_frac, initial, fill_next_open,
                            bars_per_year[s], row, curve, no_trades, hi[m0:], lo[m0:], execution[c],
                            block_fractions, stats, held_sums=held, fill_log=fills)
            else:
                simulate_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], sv[m0:], fee_frac, initial, fill_next_open,
                            bars_per_year[s], row, curve, no_trades, hi[m0:], lo[m0:], execution[c],
                            block_fractions, stats, detail_open2d[s], detail_high2d[s], detail_low2d[s],
                            first[m0:], detail_ratio, held, fills)
            finish_row(row, m0, m, index, warmup(params))
            if day_out is not None:
                _record_days(curve, index, m0, day_of_column, day_out, s, c)
            if block_fractions is not None:
                for b in range(stats.shape[0]):
                    for k in range(N_BLOCK_STATS):
                        block_out[s, b, k, c] = stats[b, k]


@njit(cache=True)
def run_single(columns, open1d, close1d, params, fee_frac, initial, fill_next_open, bars_per_year, start_t,
               high1d=None, low1d=None, execution=None, detail_open1d=None, detail_high1d=None, detail_low1d=None,
               detail_first=None, detail_ratio=0):
    """One symbol, one parameter row, with the trade log and the equity curve (from grid column `start_t`).

    Args:
        columns: tuple of (1 x T) float64 arrays, the strategy's COLUMNS.
        open1d, close1d: (T,) float64 on the time grid, NaN where there is no bar.
        params: (P,) float64 parameter row.
        high1d, low1d, execution: as run_grid's, for this one row ((T,) and (N_EXECUTION,)).
        detail_*: as run_grid's, this symbol's row ((F,)), detail_first (T,).

    Returns:
        (metrics, trades, equity): metrics is (N_METRICS,) as one row of
        run_grid's output; trades is a TRADE_DTYPE array whose `bar` and
        `signal_bar` are time-grid indices; equity is (T,) with the equity at
        every close and NaN at missing bars.
    """
    n_time = close1d.shape[0]
    op, cl, index, prices, ind, en, ex, sv = _symbol_buffers(columns, 0, open1d, close1d)
    m = cl.shape[0]
    m0 = first_at_or_after(index, m, start_t)
    indicators(prices, params, ind)
    signals(prices, params, ind, en, ex, sv)
    metrics = np.empty(N_METRICS)
    equity_c = np.empty(m - m0)
    trades_c = np.empty(m - m0, dtype=TRADE_DTYPE)
    if high1d is None:
        k = simulate_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], sv[m0:], fee_frac, initial, fill_next_open,
                        bars_per_year, metrics, equity_c, trades_c, None, None, execution)
    elif detail_first is None:
        hi, lo = _symbol_range(high1d, low1d, index)
        k = simulate_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], sv[m0:], fee_frac, initial, fill_next_open,
                        bars_per_year, metrics, equity_c, trades_c, hi[m0:], lo[m0:], execution)
    else:
        hi, lo = _symbol_range(high1d, low1d, index)
        first = np.empty(m, dtype=np.int64)
        for j in range(m):
            first[j] = detail_first[index[j]]
        k = simulate_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], sv[m0:], fee_frac, initial, fill_next_open,
                        bars_per_year, metrics, equity_c, trades_c, hi[m0:], lo[m0:], execution, None, None,
                        detail_open1d, detail_high1d, detail_low1d, first[m0:], detail_ratio)
    finish_row(metrics, m0, m, index, warmup(params))
    trades = trades_c[:k].copy()
    for j in range(k):
        trades[j]["bar"] = index[m0 + trades[j]["bar"]]
        trades[j]["signal_bar"] = index[m0 + trades[j]["signal_bar"]]
    equity = np.full(n_time, np.nan)
    for j in range(m - m0):
        equity[index[m0 + j]] = equity_c[j]
    return metrics, trades, equity


@njit(cache=True)
def _without_mark(mark_open_row, at):
    """How many of the bars at grid columns `at` have no mark bar."""
    count = 0
    for j in range(at.shape[0]):
        if np.isnan(mark_open_row[at[j]]):
            count += 1
    return count


@njit(cache=True, parallel=True)
def run_grid_futures(columns, open2d, high2d, low2d, close2d, funding2d, mark_open2d, mark_high2d, mark_low2d,
                     tiers, tier_counts, combos, recompute, execution, cross, fee_frac, initial, fill_next_open,
                     bars_per_year, start_t, out, block_fractions=None, block_out=None, detail_open2d=None,
                     detail_high2d=None, detail_low2d=None, detail_mark_open2d=None, detail_mark_high2d=None,
                     detail_mark_low2d=None, detail_first=None, detail_ratio=0, day_of_column=None, day_out=None,
                     ind_slots=None, ind_fills=None):
    """run_grid for perpetual futures (kernels/futures.py): every symbol s and parameter row c into
    `out[s, c, :]`.

    Args beyond run_grid's: high2d, low2d (always read: the liquidation check needs them), funding2d (the
    rate summed per grid column, NaN where none), mark_open2d/mark_high2d/mark_low2d (NaN where the mark
    has no bar), tiers (S x K x N_TIER) with tier_counts (S,) brackets used per symbol, execution
    (C x N_EXECUTION, leverage and direction included) and cross (bool); detail_* as run_grid's, with the
    finer mark bars (S x F); ind_slots, ind_fills as run_grid's.
    """
    n_symbols, n_time = close2d.shape
    n_combos = combos.shape[0]
    no_equity = np.empty(0)
    no_trades = np.empty(0, dtype=FUTURES_TRADE_DTYPE)
    for s in prange(n_symbols):
        op, cl, index, prices, ind, en, ex, sv = _symbol_buffers(columns, s, open2d[s], close2d[s])
        m = cl.shape[0]
        m0 = first_at_or_after(index, m, start_t)
        at = index[m0:]
        curve = no_equity if day_out is None else np.empty(m - m0)
        unmarked = _without_mark(mark_open2d[s], at)
        es_buf = np.empty(m, dtype=np.bool_)
        xs_buf = np.empty(m, dtype=np.bool_)
        es, xs = es_buf, xs_buf
        brackets = tiers[s, :tier_counts[s]]
        stats = np.empty((0 if block_fractions is None else block_fractions.shape[0] - 1, N_BLOCK_STATS))
        if detail_first is not None:
            first = np.empty(m, dtype=np.int64)
            for j in range(m):
                first[j] = detail_first[index[j]]
        table = _indicator_table(ind_slots, m)
        for c in range(n_combos):
            params = combos[c]
            if _indicators_for(prices, combos, c, recompute, ind, ind_slots, ind_fills, table):
                signals(prices, params, ind, en, ex, sv)
                es, xs = short_side(prices, params, ind, en, ex, es_buf, xs_buf)
            row = out[s, c]
            if detail_first is None:
                simulate_futures_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], es[m0:], xs[m0:], sv[m0:], at, high2d[s],
                                    low2d[s], funding2d[s], mark_open2d[s], mark_high2d[s], mark_low2d[s], unmarked,
                                    brackets, execution[c], cross, fee_frac, initial, fill_next_open,
                                    bars_per_year[s], row, curve, no_trades, block_fractions, stats)
            else:
                simulate_futures_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], es[m0:], xs[m0:], sv[m0:], at, high2d[s],
                                    low2d[s], funding2d[s], mark_open2d[s], mark_high2d[s], mark_low2d[s], unmarked,
                                    brackets, execution[c], cross, fee_frac, initial, fill_next_open,
                                    bars_per_year[s], row, curve, no_trades, block_fractions, stats,
                                    detail_open2d[s], detail_high2d[s], detail_low2d[s], detail_mark_open2d[s],
                                    detail_mark_high2d[s], detail_mark_low2d[s], first[m0:], detail_ratio)
            finish_row(row, m0, m, index, warmup(params))
            if day_out is not None:
                _record_days(curve, index, m0, day_of_column, day_out, s, c)
            if block_fractions is not None:
                for b in range(stats.shape[0]):
                    for k in range(N_BLOCK_STATS):
                        block_out[s, b, k, c] = stats[b, k]


@njit(cache=True)
def run_single_futures(columns, open1d, high1d, low1d, close1d, funding1d, mark_open1d, mark_high1d, mark_low1d,
                       tiers, params, execution, cross, fee_frac, initial, fill_next_open, bars_per_year, start_t,
                       detail_open1d=None, detail_high1d=None, detail_low1d=None, detail_mark_open1d=None,
                       detail_mark_high1d=None, detail_mark_low1d=None, detail_first=None, detail_ratio=0):
    """run_single for perpetual futures: (metrics, trades (FUTURES_TRADE_DTYPE, bars on the grid), equity)."""
    n_time = close1d.shape[0]
    op, cl, index, prices, ind, en, ex, sv = _symbol_buffers(columns, 0, open1d, close1d)
    m = cl.shape[0]
    m0 = first_at_or_after(index, m, start_t)
    at = index[m0:]
    indicators(prices, params, ind)
    signals(prices, params, ind, en, ex, sv)
    es, xs = short_side(prices, params, ind, en, ex, np.empty(m, dtype=np.bool_), np.empty(m, dtype=np.bool_))
    metrics = np.empty(N_METRICS)
    equity_c = np.empty(m - m0)
    trades_c = np.empty(2 * (m - m0) + 1, dtype=FUTURES_TRADE_DTYPE)
    if detail_first is None:
        k = simulate_futures_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], es[m0:], xs[m0:], sv[m0:], at, high1d, low1d,
                                funding1d, mark_open1d, mark_high1d, mark_low1d, _without_mark(mark_open1d, at),
                                tiers, execution, cross, fee_frac, initial, fill_next_open, bars_per_year, metrics,
                                equity_c, trades_c)
    else:
        first = np.empty(m, dtype=np.int64)
        for j in range(m):
            first[j] = detail_first[index[j]]
        k = simulate_futures_1d(op[m0:], cl[m0:], en[m0:], ex[m0:], es[m0:], xs[m0:], sv[m0:], at, high1d, low1d,
                                funding1d, mark_open1d, mark_high1d, mark_low1d, _without_mark(mark_open1d, at),
                                tiers, execution, cross, fee_frac, initial, fill_next_open, bars_per_year, metrics,
                                equity_c, trades_c, None, None, detail_open1d, detail_high1d, detail_low1d,
                                detail_mark_open1d, detail_mark_high1d, detail_mark_low1d, first[m0:], detail_ratio)
    finish_row(metrics, m0, m, index, warmup(params))
    trades = trades_c[:k].copy()
    for j in range(k):
        trades[j]["bar"] = index[m0 + trades[j]["bar"]]
        trades[j]["signal_bar"] = index[m0 + trades[j]["signal_bar"]]
    equity = np.full(n_time, np.nan)
    for j in range(m - m0):
        equity[index[m0 + j]] = equity_c[j]
    return metrics, trades, equity


@njit(cache=True, parallel=True)
def signals_on_grid(columns, close2d, params, entries_out, exits_out, enter_short_out=None, exit_short_out=None):
    """Entry/exit signals of every symbol for one parameter row, on the grid (False at gaps); with the
    short outputs given, the short side too (a futures portfolio: the strategy's own, or the mirror)."""
    n_symbols, n_time = close2d.shape
    for s in prange(n_symbols):
        _, _, index, prices, ind, en, ex, sv = _symbol_buffers(columns, s, close2d[s], close2d[s])
        m = index.shape[0]
        indicators(prices, params, ind)
        signals(prices, params, ind, en, ex, sv)
        entries_out[s, :] = False
        exits_out[s, :] = False
        for j in range(m):
            entries_out[s, index[j]] = en[j]
            exits_out[s, index[j]] = ex[j]
        if enter_short_out is not None and exit_short_out is not None:
            es, xs = short_side(prices, params, ind, en, ex, np.empty(m, dtype=np.bool_), np.empty(m, dtype=np.bool_))
            enter_short_out[s, :] = False
            exit_short_out[s, :] = False
            for j in range(m):
                enter_short_out[s, index[j]] = es[j]
                exit_short_out[s, index[j]] = xs[j]


@njit(cache=True)
def indicators_and_signals_single(columns, close1d, params):
    """Indicator rows, entries and exits of one symbol on the time grid (NaN / False at gaps).

    For checks and pictures: returns (ind (N_INDICATORS x T), entries (T,), exits (T,)).
    """
    n_time = close1d.shape[0]
    _, _, index, prices, ind, en, ex, sv = _symbol_buffers(columns, 0, close1d, close1d)
    m = index.shape[0]
    indicators(prices, params, ind)
    signals(prices, params, ind, en, ex, sv)
    ind_out = np.full((N_INDICATORS, n_time), np.nan)
    en_out = np.zeros(n_time, dtype=np.bool_)
    ex_out = np.zeros(n_time, dtype=np.bool_)
    for j in range(m):
        en_out[index[j]] = en[j]
        ex_out[index[j]] = ex[j]
        for r in range(N_INDICATORS):
            ind_out[r, index[j]] = ind[r, j]
    return ind_out, en_out, ex_out


@njit(cache=True)
def warmup_bars(params):
    """The strategy's `warmup` of one parameter row, through this cached kernel."""
    return warmup(params)


@njit(cache=True)
def strategy_outputs(prices, params):
    """Everything the strategy computes from one symbol's bars (`prices`: its COLUMNS x bars, no gaps).

    Returns (N_OUTPUTS x bars) float64: the indicator rows, then the rows of
    pipeline.engine.strategies.api.SIGNAL_OUTPUTS in order (signals as 0/1; the short side is the
    strategy's own short_signals or the mirror of its long signals, as a futures run takes it).
    """
    m = prices.shape[1]
    ind = np.empty((N_INDICATORS, m))
    en = np.empty(m, dtype=np.bool_)
    ex = np.empty(m, dtype=np.bool_)
    sv = np.empty(m)
    indicators(prices, params, ind)
    signals(prices, params, ind, en, ex, sv)
    es, xs = short_side(prices, params, ind, en, ex, np.empty(m, dtype=np.bool_), np.empty(m, dtype=np.bool_))
    out = np.empty((N_OUTPUTS, m))
    for t in range(m):
        for r in range(N_INDICATORS):
            out[r, t] = ind[r, t]
        out[N_INDICATORS, t] = en[t]
        out[N_INDICATORS + 1, t] = ex[t]
        out[N_INDICATORS + 2, t] = sv[t]
        out[N_INDICATORS + 3, t] = es[t]
        out[N_INDICATORS + 4, t] = xs[t]
    return out


@njit(cache=True)
def lookahead_scan(prices, params, starts, ends, where, values):
    """The look-ahead check at every truncation point (`cryptobt strategies check`).

    For each window [starts[w], ends[w]) of one symbol's bars (`prices` as strategy_outputs takes them)
    and each bar t in it, every output computed on the bars starts[w]..t is compared with the same
    output computed on the whole window, at every bar <= t: a causal strategy gives the same numbers
    (NaN equals NaN). `where` (N_OUTPUTS x 4, int64) receives each output's first difference as (bar,
    the bar t it was cut after, window start, window end), -1 where there is none; `values` (N_OUTPUTS
    x 2) the window's value and the cut's there. Returns the number of truncation points checked
    (fewer than the bars only when every output has differed already).
    """
    where[:, :] = -1
    left = N_OUTPUTS
    cuts = 0
    for w in range(starts.shape[0]):
        s = starts[w]
        e = ends[w]
        full = strategy_outputs(np.ascontiguousarray(prices[:, s:e]), params)
        for t in range(s, e):
            if left == 0:
                return cuts
            cut = strategy_outputs(np.ascontiguousarray(prices[:, s:t + 1]), params)
            cuts += 1
            for r in range(N_OUTPUTS):
                if where[r, 0] >= 0:
                    continue
                for b in range(t - s + 1):
                    a = full[r, b]
                    c = cut[r, b]
                    if a != c and not (np.isnan(a) and np.isnan(c)):
                        where[r, 0] = s + b
                        where[r, 1] = t
                        where[r, 2] = s
                        where[r, 3] = e
                        values[r, 0] = a
                        values[r, 1] = c
                        left -= 1
                        break
    return cuts
