"""One batch: aligned prices in, kernels run over every symbol and parameter set, results out.

No I/O here beyond what the reader returns: the cache and the results table are
wired around this by `pipeline.runs`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numba
import numpy as np

from pipeline.core import intervals, metrics
from pipeline.core.errors import PipelineError
from pipeline.core.intervals import SECONDS as STEP_SECONDS
from pipeline.core.run_options import OBJECTIVES
from pipeline.core.versions import ENGINE_VERSION
from pipeline.engine import strategies
from pipeline.engine.kernels import enums
from pipeline.engine.kernels.blocks import N_BLOCK_STATS
from pipeline.engine.options import DEFAULT_EXECUTION, Execution, RunConfig
from pipeline.lake.align import bar_span
from pipeline.lake.reader import PriceBatch

REASONS = {
    enums.STATUS_TOO_FEW_BARS: "too few bars for the warm-up: {bars} < {needed} needed",
    enums.STATUS_NO_BARS: "no bars in the requested range",
}


def start_column(batch: PriceBatch, config: RunConfig) -> int:
    """The first grid column simulated: bars before the --timerange start only warm indicators up."""
    if config.timerange_start is None:
        return 0
    return int(np.searchsorted(batch.times, int(config.timerange_start.timestamp())))


def bars_per_year(batch: PriceBatch, config: RunConfig, start_t: int = 0) -> np.ndarray:
    """Each symbol's annualisation: its observed bars a year over the simulated range, or the calendar's."""
    calendar = float(intervals.BARS_PER_YEAR[batch.interval])
    n_symbols = len(batch.symbols)
    if config.annualization == "calendar" or batch.times.size <= start_t:
        return np.full(n_symbols, calendar)
    counts, first, last = bar_span(batch.columns["close"], start_t)
    has = counts > 0
    step = intervals.SECONDS[batch.interval]
    span_years = ((last - first) * step + step) / intervals.YEAR_SECONDS
    return np.where(has, counts / np.where(has, span_years, 1.0), calendar)


def code_version(strategy: strategies.Strategy) -> str:
    """The engine version with a hash of the strategy's source and the shared kernels.

    Part of every cache key and results row: editing a strategy file (a user's or a
    built-in) or a kernel can never serve a number computed by the old code.
    """
    return f"{ENGINE_VERSION}+{strategy.code_version[:16]}"


def thread_count() -> int:
    """Threads the kernels run on now (set_threads)."""
    return numba.get_num_threads()


def set_threads(workers: int) -> None:
    """Numba threads for the kernels; 0 = all cores. Results do not depend on it."""
    available = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(available if workers <= 0 else min(workers, available))


# A result in columns and as an Arrow row (about 75 fields); a sweep keeps one chunk of symbols' worth.
RESULT_ROW_BYTES = 800


def estimate_memory(n_symbols: int, n_time: int, n_combos: int, n_blocks: int = 0, n_days: int = 0) -> int:
    """Bytes a run needs: the price arrays, the metrics cube, a sweep's block sums (and daily equity, twice:
    the kernel's order and the grid's) and the result rows."""
    prices = 2 * n_symbols * n_time * 8
    cube = n_symbols * n_combos * (enums.N_METRICS + n_blocks * N_BLOCK_STATS + 2 * n_days) * 8
    rows = n_symbols * n_combos * RESULT_ROW_BYTES
    buffers = numba.get_num_threads() * n_time * 8 * 10
    return prices + cube + rows + buffers


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_memory(n_symbols: int, n_time: int, n_combos: int, n_blocks: int = 0, n_days: int = 0) -> None:
    """Refuse a run that would not fit, saying what it would need."""
    need = estimate_memory(n_symbols, n_time, n_combos, n_blocks, n_days)
    have = available_memory()
    if need > 0.8 * have:
        raise PipelineError(
            f"this run needs about {need / 2**30:.1f} GiB ({n_symbols} symbols x {n_combos} parameter sets x "
            f"{n_time} bars) but only {have / 2**30:.1f} GiB is available; narrow the grid, the symbols "
            "or the --timerange"
        )


def columns_needed(config: RunConfig) -> tuple[str, ...]:
    """The price columns a run reads: the strategy's COLUMNS, the close, the open for next_open fills,
    and open, high and low when a stop is set (a run without stops reads none of them for the fills);
    futures always read open, high and low (funding at the open, the liquidation check on the range)."""
    wanted = ["close", *config.strategy.columns]
    if config.fill == "next_open":
        wanted.append("open")
    if config.has_stops or config.market == "futures":
        wanted += ["open", "high", "low"]
    return tuple(dict.fromkeys(wanted))


# What a futures run reads beside the prices (pipeline.lake.reader): the funding rate summed per bar and
# the mark price bars, NaN where there is none.
FUTURES_COLUMNS = ("funding", "mark_open", "mark_high", "mark_low")


def futures_inputs(batch: PriceBatch, config: RunConfig, rows: slice | int) -> tuple[np.ndarray, ...]:
    """The futures kernels' funding and mark arrays of `rows` (all NaN where the read has none)."""
    close = batch.columns["close"][rows]
    return tuple(np.ascontiguousarray(batch.columns[name][rows]) if name in batch.columns
                 else np.full(close.shape, np.nan) for name in FUTURES_COLUMNS)


def _column(batch: PriceBatch, name: str, rows: slice | int) -> np.ndarray:
    if name not in batch.columns:
        raise PipelineError(f"this run needs the {name} column, which this read lacks")
    return np.ascontiguousarray(batch.columns[name][rows])


def detail_inputs(batch: PriceBatch, rows: slice | int, futures: bool = False) -> tuple[Any, ...]:
    """The kernels' --detail arguments of `rows`: the finer bars' open, high and low on their grid (futures: and
    the finer mark bars' open, high and low, NaN where none), each grid column's first finer column and the
    finer bars per bar; Nones without detail."""
    detail = batch.detail
    names = ("open", "high", "low", *(("mark_open", "mark_high", "mark_low") if futures else ()))
    if detail is None:
        return (None,) * (len(names) + 2)
    fine = intervals.SECONDS[detail.interval]
    origin = int(detail.times[0]) if detail.times.size else int(batch.times[0]) if batch.times.size else 0
    first = np.ascontiguousarray((batch.times - origin) // fine, dtype=np.int64)
    shape = detail.columns["open"][rows].shape
    return (*(np.ascontiguousarray(detail.columns[c][rows]) if c in detail.columns else np.full(shape, np.nan)
              for c in names), first, intervals.SECONDS[batch.interval] // fine)


def execution_matrix(config: RunConfig, order: np.ndarray) -> np.ndarray | None:
    """(C x N_EXECUTION) rows of the parameter sets in kernel `order`; None when every set has the defaults."""
    if not config.executions and config.market != "futures":
        return None
    rows = np.array([config.execution(c).row() for c in order]).reshape(len(order), enums.N_EXECUTION)
    return np.ascontiguousarray(rows)


def strategy_columns(batch: PriceBatch, strategy: strategies.Strategy,
                     rows: slice | None = None) -> tuple[np.ndarray, ...]:
    """The strategy's COLUMNS (and its informative series' on the grid, `informative.attach`) as the kernels
    take them: a tuple of C-contiguous (symbols x time) arrays."""
    names = strategy.input_columns
    missing = [name for name in names if name not in batch.columns]
    if missing:
        raise PipelineError(f"strategy {strategy.name!r} needs the {', '.join(missing)} column(s), which this read lacks")
    return tuple(np.ascontiguousarray(batch.columns[name][rows if rows is not None else slice(None)])
                 for name in names)


def run_metrics(batch: PriceBatch, config: RunConfig, block_fractions: np.ndarray | None = None,
                blocks_out: np.ndarray | None = None, annual_bars: np.ndarray | None = None,
                day_equity: np.ndarray | None = None) -> np.ndarray:
    """The (symbols x params x METRIC_NAMES) cube for every symbol and parameter set.

    With `block_fractions` (B + 1 edges, `pipeline.engine.kernels.blocks`), also fills `blocks_out`
    (symbols x B x N_BLOCK_STATS x params, in the config's parameter order). `annual_bars` is
    `bars_per_year(batch, config, start_column(batch, config))` when the caller has it already.
    With `day_equity` (symbols x days x params, days from the grid's first UTC day: `grid_days`), also
    writes each set's equity at every day's last simulated bar there (NaN on days without one).
    """
    strategy = config.strategy
    combos, recompute, order = strategies.combos_matrix(config.strategy, config.params_list)
    shared = strategies.indicator_slots(config.strategy, combos, recompute, batch.columns["close"].shape[1])
    ind_slots, ind_fills = (None, None) if shared is None else shared[:2]
    recompute = recompute if shared is None else shared[2]
    open_ = batch.columns.get("open")
    if config.fill == "next_open" and open_ is None:
        raise PipelineError("fill=next_open needs the open column")
    close = np.ascontiguousarray(batch.columns["close"])
    open_ = np.ascontiguousarray(open_ if open_ is not None else close)
    out = np.empty((close.shape[0], combos.shape[0], enums.N_METRICS))
    start = start_column(batch, config)
    execution = execution_matrix(config, order)
    every = slice(None)
    fractions = None if block_fractions is None else np.ascontiguousarray(block_fractions, dtype=np.float64)
    # The kernel writes in its own order; where that is the caller's (a grid whose sets sharing an indicator
    # are adjacent already), it writes straight into the caller's arrays, without a copy back.
    in_order = bool(np.array_equal(order, np.arange(order.size)))
    sorted_blocks = None if fractions is None else _kernel_buffer(
        blocks_out, in_order, (close.shape[0], fractions.size - 1, N_BLOCK_STATS, combos.shape[0]))
    day_of_column = None if day_equity is None else intervals.day_columns(batch.times)
    sorted_days = None if day_equity is None else _kernel_buffer(day_equity, in_order, day_equity.shape)
    if sorted_days is not None:
        sorted_days[:] = np.nan
    if close.shape[0] and close.shape[1] and config.market == "futures":
        tiers, counts = config.tier_table.stacked(batch.symbols)
        strategy.kernels().run_grid_futures(
            strategy_columns(batch, config.strategy), open_, _column(batch, "high", every), _column(batch, "low", every),
            close, *futures_inputs(batch, config, every), tiers, counts, combos, recompute, execution,
            config.margin == "cross", config.fee_frac, config.initial, config.fill == "next_open",
            bars_per_year(batch, config, start) if annual_bars is None else annual_bars, start, out, fractions,
            sorted_blocks, *detail_inputs(batch, every, futures=True), day_of_column, sorted_days, ind_slots, ind_fills)
    elif close.shape[0] and close.shape[1]:
        strategy.kernels().run_grid(strategy_columns(batch, config.strategy), open_, close, combos, recompute,
                                    config.fee_frac, config.initial, config.fill == "next_open",
                                    bars_per_year(batch, config, start) if annual_bars is None else annual_bars,
                                    start, out,
                                    *((_column(batch, "high", every), _column(batch, "low", every))
                                      if config.has_stops else (None, None)), execution, fractions, sorted_blocks,
                                    *(detail_inputs(batch, every) if config.has_stops else (None,) * 5),
                                    day_of_column, sorted_days, ind_slots, ind_fills)
    else:
        out[:] = 0.0
        out[:, :, enums.M_STATUS] = enums.STATUS_NO_BARS
        out[:, :, enums.M_FIRST_INDEX] = -1
        out[:, :, enums.M_LAST_INDEX] = -1
    # Back to the caller's parameter order (in order, a plain copy: numpy's copy through an index array
    # along the last axis took 45 ms for 135 sets' block sums of 211 symbols, a slice's 7 ms).
    back = slice(None) if in_order else order
    if blocks_out is not None and sorted_blocks is not blocks_out and close.shape[0] and close.shape[1]:
        blocks_out[..., back] = sorted_blocks
    if day_equity is not None and sorted_days is not day_equity:
        day_equity[..., back] = sorted_days
    if in_order:
        return out
    unsorted = np.empty_like(out)
    unsorted[:, order] = out
    return unsorted


def _kernel_buffer(caller: np.ndarray | None, in_order: bool, shape: tuple[int, ...]) -> np.ndarray:
    """Where the kernel writes what the caller asked for in `caller`: that array itself when the kernel's
    set order is the caller's and the array is one the kernel can take (C-contiguous float64 of the
    shape), else a new one to copy back from."""
    if (caller is not None and in_order and caller.shape == shape and caller.dtype == np.float64
            and caller.flags.c_contiguous and caller.flags.writeable):
        return caller
    return np.empty(shape)


# A sweep's statistics fields (pipeline/core/metrics.py's "sweep" section): None outside a sweep.
SWEEP_FIELDS = tuple(m.name for m in metrics.of_section("sweep"))


def _iso(epoch_seconds: int) -> str:
    return datetime.fromtimestamp(int(epoch_seconds), UTC).isoformat()


def _number(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else float(value)


def metric_value(metric: metrics.Metric, raw: float, has_bars: bool, initial: float) -> float | int | None:
    """A metric's result field from its kernel column: None for NaN and infinities, an int for an
    integer metric, and without a bar in the range what the table says (`Metric.without_bars`)."""
    if not has_bars and metric.without_bars != metrics.KERNEL:
        return initial if metric.without_bars == metrics.INITIAL else metric.without_bars
    number = _number(raw)
    if metric.dtype != "int64":
        return number
    if number is None:  # a count (a metric with a value without bars) is never undefined
        return None if metric.without_bars is None else 0
    return int(number)


def metric_fields(selected: tuple[metrics.Metric, ...], slots: dict[str, int], row: np.ndarray,
                  has_bars: bool, initial: float, derived: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result fields of the `selected` metrics, in the table's order: each from its column of the
    kernel's output `row` (`slots`), or from `derived` (what the shaping computes itself)."""
    derived = derived or {}
    return {m.name: derived[m.name] if m.name in derived else metric_value(m, row[slots[m.name]], has_bars, initial)
            for m in selected}


# The metrics of every single-symbol result, and those the shaping computes (not a kernel column).
RESULT_METRICS = metrics.of_section("result")
DERIVED_METRICS = ("days_of_data", "partial_bars")


def partial_bars(batch: PriceBatch, config: RunConfig) -> np.ndarray:
    """Each symbol's bars in the simulated range built from less than their interval's hours."""
    if batch.coverage is None or batch.times.size == 0:
        return np.zeros(len(batch.symbols), dtype=np.int64)
    return (batch.coverage[:, start_column(batch, config):] < 1.0).sum(axis=1)


def shape_result(batch: PriceBatch, config: RunConfig, symbol_index: int, params: dict[str, Any],
                 metrics_row: np.ndarray, annual_bars: float, partial: int = 0,
                 execution: Execution = DEFAULT_EXECUTION) -> dict[str, Any]:
    """One result with SPEC section 4's field names; `annual_bars` is what its Sharpe used."""
    status = int(metrics_row[enums.M_STATUS])
    bars = int(metrics_row[enums.M_BARS])
    first, last = int(metrics_row[enums.M_FIRST_INDEX]), int(metrics_row[enums.M_LAST_INDEX])
    step = STEP_SECONDS[batch.interval]
    has_bars = first >= 0 and batch.times.size > 0
    reason = None
    if status != enums.STATUS_OK:
        needed = strategies.warmup_bars(config.strategy, params)
        reason = REASONS[status].format(bars=bars, needed=needed)
    return {
        "symbol": batch.symbols[symbol_index],
        "strategy": config.strategy.name,
        "params": dict(params),
        "interval": batch.interval,
        "start": _iso(batch.times[first]) if has_bars else None,
        "end": _iso(batch.times[last]) if has_bars else None,
        "timerange_start": config.timerange_start.isoformat() if config.timerange_start else None,
        "timerange_end": config.timerange_end.isoformat() if config.timerange_end else None,
        **metric_fields(RESULT_METRICS, enums.METRIC_SLOTS, metrics_row, has_bars, config.initial, {
            "days_of_data": round((batch.times[last] - batch.times[first] + step) / 86_400, 6) if has_bars else 0.0,
            "partial_bars": int(partial)}),
        "min_bar_coverage": config.min_bar_coverage,
        "annualization": config.annualization,
        "detail": config.detail,
        "bars_per_year": float(annual_bars),
        "fill": config.fill,
        "fee_pct": config.fee_pct,
        "initial_investment": config.initial,
        **execution.fields(),
        "snapshot_id": batch.snapshot_id,
        "computed_snapshot_id": batch.snapshot_id,
        "source": batch.source,
        "market": config.market,
        **config.futures_fields(),
        "data_version": batch.data_versions[symbol_index],
        "engine_version": code_version(config.strategy),
        "reason": reason,
        # Filled for sweeps (pipeline.engine.overfit, pipeline.engine.sweep_stats): per symbol, over all its
        # parameter sets.
        **dict.fromkeys(SWEEP_FIELDS),
        "from_cache": False,
    }


@dataclass
class ResultColumns:
    """The results of a (symbols x sets) cube as columns, rows symbol-major (row = y * C + c):
    what `shape_result` gives each result, without a dict per result (a sweep's results go
    to the results table this way). `fields` are per row: counts int64, other numbers float64
    with NaN for None (an integer stat too: the table casts it), times datetime64[s] with NaT,
    `reason` objects;
    `per_symbol` are (Y,) and `constants` one value each; the parameters are `config.sets`
    taken by `set_index`."""

    config: RunConfig
    symbol_index: np.ndarray
    set_index: np.ndarray
    fields: dict[str, np.ndarray]
    per_symbol: dict[str, list]
    constants: dict[str, Any]

    @property
    def n_rows(self) -> int:
        return int(self.symbol_index.size)


def result_columns(batch: PriceBatch, config: RunConfig, cube: np.ndarray, annual_bars: np.ndarray,
                   partial: np.ndarray) -> ResultColumns:
    """`shape_result` of every (symbol, set) of `cube` (Y x C x N_METRICS, C = config's sets), as columns."""
    n_symbols, n_sets = cube.shape[:2]
    flat = cube.reshape(n_symbols * n_sets, enums.N_METRICS)
    symbol_index = np.repeat(np.arange(n_symbols), n_sets)
    set_index = np.tile(np.arange(n_sets), n_symbols)
    first = flat[:, enums.M_FIRST_INDEX].astype(np.int64)
    last = flat[:, enums.M_LAST_INDEX].astype(np.int64)
    has_bars = (first >= 0) & (batch.times.size > 0)
    times = batch.times if batch.times.size else np.zeros(1, dtype=np.int64)
    start = times[np.where(has_bars, first, 0)]
    end = times[np.where(has_bars, last, 0)]
    fields: dict[str, np.ndarray] = {}
    not_a_time = np.datetime64("NaT", "s")
    fields["start"] = np.where(has_bars, start.astype("datetime64[s]"), not_a_time)
    fields["end"] = np.where(has_bars, end.astype("datetime64[s]"), not_a_time)
    # shape_result's round(x, 6) on each distinct span (few): the same float, bit for bit.
    spans, where = np.unique(np.where(has_bars, end - start + STEP_SECONDS[batch.interval], 0),
                             return_inverse=True)
    fields["days_of_data"] = np.array([round(int(s) / 86_400, 6) for s in spans])[where]
    _metric_columns(fields, flat, has_bars, config.initial)
    fields["partial_bars"] = np.asarray(partial, dtype=np.int64)[symbol_index]
    fields["bars_per_year"] = np.asarray(annual_bars, dtype=np.float64)[symbol_index]
    status = flat[:, enums.M_STATUS].astype(np.int64)
    reason = np.full(status.size, None, dtype=object)
    for row in np.flatnonzero(status != enums.STATUS_OK):
        needed = strategies.warmup_bars(config.strategy, config.params_list[set_index[row]])
        reason[row] = REASONS[int(status[row])].format(bars=int(fields["bars"][row]), needed=needed)
    fields["reason"] = reason
    constants = {
        "strategy": config.strategy.name, "interval": batch.interval,
        "timerange_start": config.timerange_start.isoformat() if config.timerange_start else None,
        "timerange_end": config.timerange_end.isoformat() if config.timerange_end else None,
        "min_bar_coverage": config.min_bar_coverage, "annualization": config.annualization, "detail": config.detail,
        "fill": config.fill, "fee_pct": config.fee_pct, "initial_investment": config.initial,
        "snapshot_id": batch.snapshot_id, "computed_snapshot_id": batch.snapshot_id,
        "source": batch.source, "market": config.market, **config.futures_fields(),
        "engine_version": code_version(config.strategy), "from_cache": False,
    }
    per_symbol = {"symbol": list(batch.symbols), "data_version": list(batch.data_versions)}
    return ResultColumns(config, symbol_index, set_index, fields, per_symbol, constants)


def _metric_columns(fields: dict[str, np.ndarray], flat: np.ndarray, has_bars: np.ndarray, initial: float) -> None:
    """`metric_value` of each kernel metric over the rows of `flat`, into `fields`: counts int64, other
    numbers float64 with NaN for None (an integer stat too: the table casts it)."""
    for metric in RESULT_METRICS:
        if metric.name in DERIVED_METRICS:
            continue
        values = flat[:, enums.METRIC_SLOTS[metric.name]]
        if metric.without_bars == metrics.KERNEL:
            fields[metric.name] = values.astype(np.int64)
        elif metric.dtype == "int64" and metric.without_bars is not None:
            fields[metric.name] = np.where(has_bars, values, metric.without_bars).astype(np.int64)
        else:
            values = values.copy()
            with np.errstate(invalid="ignore"):
                values[~np.isfinite(values)] = np.nan
            empty = initial if metric.without_bars == metrics.INITIAL else (
                np.nan if metric.without_bars is None else metric.without_bars)
            fields[metric.name] = np.where(has_bars, values, empty)


def column_rows(batch: PriceBatch, config: RunConfig, cube: np.ndarray, columns: ResultColumns,
                rows: np.ndarray | list[int]) -> list[dict[str, Any]]:
    """Rows `rows` of `columns` (made from `cube`) as result dicts: `shape_result`'s, with the sweep
    statistics the columns carry, and the trade log when `config.trades`."""
    annual, partial = columns.fields["bars_per_year"], columns.fields["partial_bars"]
    out = []
    for row in rows:
        y, c = int(columns.symbol_index[row]), int(columns.set_index[row])
        params, execution = config.params_list[c], config.execution(c)
        result = shape_result(batch, config, y, params, cube[y, c], annual[row], partial[row], execution)
        for name in SWEEP_FIELDS:
            if name in columns.fields:
                value = columns.fields[name][row]
                result[name] = int(value) if metrics.BY_NAME[name].dtype == "int64" and not (
                    isinstance(value, float) and math.isnan(value)) else _number(value)
        if config.trades:
            result["trades"], result["round_trips"], _ = trade_log(batch, config, y, params, execution)
        out.append(result)
    return out


class TradeLog(NamedTuple):
    """One result's trades: the fill log, its round trips and the equity at every grid column."""

    fills: list[dict[str, Any]]  # SPEC 4: time, action, price, units, value, fee, indicator
    round_trips: list[dict[str, Any]]  # SPEC 4.1: entry_time .. exit_reason
    equity: np.ndarray  # NaN where the symbol has no bar


def round_trips(batch: PriceBatch, symbol_index: int, trades: np.ndarray) -> list[dict[str, Any]]:
    """Each buy with its sell (TRADE_DTYPE fills, bars on the grid), or with the last close when the
    position is still open after the last bar (`end_of_data`: marked there, not sold).

    `fees` are both fills' (the entry's alone at the end of data), `pnl` the net proceeds (or the
    marked value) less the cash the entry committed, `return_pct` that over the committed cash, and
    `bars_held` the symbol's bars from the entry fill to the exit fill (gaps are not bars)."""
    close = batch.columns["close"][symbol_index]
    bars = np.flatnonzero(~np.isnan(close))
    position = np.searchsorted(bars, trades["bar"]) if len(trades) else np.zeros(0, dtype=np.int64)
    trips = []
    for k in range(0, len(trades), 2):
        entry = trades[k]
        if k + 1 < len(trades):
            exit_ = trades[k + 1]
            exit_bar, exit_price, exit_pos = int(exit_["bar"]), float(exit_["price"]), int(position[k + 1])
            fees, value, reason = float(entry["fee"] + exit_["fee"]), float(exit_["value"]), int(exit_["reason"])
        else:
            exit_bar, exit_pos = int(bars[-1]), len(bars) - 1
            exit_price = float(close[exit_bar])
            fees, value, reason = float(entry["fee"]), float(entry["units"] * exit_price), enums.EXIT_END_OF_DATA
        pnl = value - float(entry["value"])
        trips.append({
            "entry_time": _iso(batch.times[entry["bar"]]),
            "entry_price": float(entry["price"]),
            "exit_time": _iso(batch.times[exit_bar]),
            "exit_price": exit_price,
            "units": float(entry["units"]),
            "fees": fees,
            "pnl": pnl,
            "return_pct": pnl / float(entry["value"]) * 100.0,
            "bars_held": exit_pos - int(position[k]),
            "exit_reason": enums.EXIT_REASON_NAMES[reason],
        })
    return trips


def futures_round_trips(batch: PriceBatch, trades: np.ndarray, leverage: float) -> list[dict[str, Any]]:
    """Each futures entry with its exit (FUTURES_TRADE_DTYPE records, bars on the grid, an exit record for a
    position still open after the last bar): round_trips' fields plus side, leverage and funding paid.
    `pnl` is the cash the exit returned less the entry's stake (funding and both fees in it)."""
    trips = []
    for k in range(0, len(trades) - 1, 2):
        entry, exit_ = trades[k], trades[k + 1]
        pnl = float(exit_["value"]) - float(entry["value"])
        trips.append({
            "entry_time": _iso(batch.times[entry["bar"]]),
            "entry_price": float(entry["price"]),
            "exit_time": _iso(batch.times[exit_["bar"]]),
            "exit_price": float(exit_["price"]),
            "units": float(entry["units"]),
            "fees": float(entry["fee"] + exit_["fee"]),
            "pnl": pnl,
            "return_pct": pnl / float(entry["value"]) * 100.0,
            "bars_held": 0,  # set by the caller, who knows the symbol's bars
            "exit_reason": enums.EXIT_REASON_NAMES[int(exit_["reason"])],
            "side": "long" if entry["side"] == 1 else "short",
            "leverage": leverage,
            "funding_paid": float(exit_["funding"]),
        })
    return trips


def trade_log(batch: PriceBatch, config: RunConfig, symbol_index: int, params: dict[str, Any],
              execution: Execution = DEFAULT_EXECUTION) -> TradeLog:
    """The fills, round trips and equity curve of one symbol and parameter set."""
    combos, _, _ = strategies.combos_matrix(config.strategy, [params])
    close = np.ascontiguousarray(batch.columns["close"][symbol_index])
    open_ = np.ascontiguousarray(batch.columns.get("open", batch.columns["close"])[symbol_index])
    start = start_column(batch, config)
    columns = strategy_columns(batch, config.strategy, slice(symbol_index, symbol_index + 1))
    row = symbol_index
    if config.market == "futures":
        return _futures_trade_log(batch, config, symbol_index, combos[0], execution, columns, open_, close, start)
    _, trades, equity = config.strategy.kernels().run_single(
        columns, open_, close, combos[0], config.fee_frac,
        config.initial, config.fill == "next_open", float(bars_per_year(batch, config, start)[symbol_index]),
        start, *((_column(batch, "high", row), _column(batch, "low", row)) if execution.has_stops
                 else (None, None)), None if execution == DEFAULT_EXECUTION else execution.row(),
        *(detail_inputs(batch, row) if execution.has_stops else (None,) * 5),
    )
    return TradeLog([_fill(batch, t) for t in trades], round_trips(batch, symbol_index, trades), equity)


def _fill(batch: PriceBatch, t: np.void) -> dict[str, Any]:
    """One fill of a trade log (SPEC 4: time .. indicator)."""
    return {
        "time": _iso(batch.times[t["bar"]]),
        "action": "buy" if t["action"] == enums.ACTION_BUY else "sell",
        "price": float(t["price"]),
        "units": float(t["units"]),
        "value": float(t["value"]),
        "fee": float(t["fee"]),
        "indicator": _number(float(t["indicator"])),
    }


def _futures_trade_log(batch: PriceBatch, config: RunConfig, symbol_index: int, params_row: np.ndarray,
                       execution: Execution, columns: tuple[np.ndarray, ...], open_: np.ndarray, close: np.ndarray,
                       start: int) -> TradeLog:
    row = symbol_index
    exec_row = execution.row()
    _, trades, equity = config.strategy.kernels().run_single_futures(
        columns, open_, _column(batch, "high", row), _column(batch, "low", row), close,
        *futures_inputs(batch, config, row), config.tier_table.of(batch.symbols[symbol_index]), params_row,
        exec_row, config.margin == "cross", config.fee_frac, config.initial, config.fill == "next_open",
        float(bars_per_year(batch, config, start)[symbol_index]), start, *detail_inputs(batch, row, futures=True))
    fills = [_fill(batch, t) for t in trades if t["reason"] != enums.EXIT_END_OF_DATA]
    trips = futures_round_trips(batch, trades, execution.leverage)
    bars = np.flatnonzero(~np.isnan(batch.columns["close"][symbol_index]))
    position = np.searchsorted(bars, trades["bar"])
    for k, trip in enumerate(trips):
        trip["bars_held"] = int(position[2 * k + 1] - position[2 * k])
    return TradeLog(fills, trips, equity)


def run(batch: PriceBatch, config: RunConfig, block_fractions: np.ndarray | None = None,
        blocks_out: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Every (symbol, parameter set) result of `config` over `batch`; with `config.trades` each
    carries its fill log (`trades`) and its `round_trips` (block statistics into `blocks_out` when
    `block_fractions` is given: see run_metrics)."""
    annual = bars_per_year(batch, config, start_column(batch, config))
    cube = run_metrics(batch, config, block_fractions, blocks_out, annual)
    partial = partial_bars(batch, config)
    results = []
    for i in range(len(batch.symbols)):
        for c, (params, execution) in enumerate(config.sets):
            result = shape_result(batch, config, i, params, cube[i, c], annual[i], partial[i], execution)
            if config.trades:
                result["trades"], result["round_trips"], _ = trade_log(batch, config, i, params, execution)
            results.append(result)
    return results


def leaderboard(results: list[dict[str, Any]], objective: str = "total_return",
                min_trades: int = 0) -> list[dict[str, Any]]:
    """Best `objective` first; results with fewer than `min_trades` entries after every one that
    has them (they never win), and results without the objective's value (no bars) last."""
    field = OBJECTIVES[objective]

    def rank(r: dict[str, Any]) -> tuple[bool, bool, float, str]:
        value = r.get(field)
        return (r["num_trades"] < min_trades, value is None, -(value or 0.0), r["symbol"])

    return sorted(results, key=rank)


def best_rows(columns: ResultColumns, n: int | None, objective: str = "total_return",
              min_trades: int = 0) -> np.ndarray:
    """Row indices of each symbol's `n` best results in `columns` (all with None), symbol by
    symbol, each in `leaderboard`'s order."""
    value = columns.fields[OBJECTIVES[objective]]
    missing = np.isnan(value)
    n_symbols = len(columns.per_symbol["symbol"])
    if not n_symbols or not columns.n_rows:
        return np.zeros(0, dtype=np.int64)
    # lexsort is stable and its last key leads: symbol, the trade guard, no value, then the best value.
    order = np.lexsort((np.where(missing, 0.0, -value), missing, columns.fields["num_trades"] < min_trades,
                        columns.symbol_index))
    return order.reshape(n_symbols, -1)[:, :n].ravel()


def ranking(config: RunConfig) -> tuple[str, int]:
    """The (objective, min_trades) a run's results are ordered by; the trade guard is for sweeps only."""
    return config.objective, config.min_trades if len(config.params_list) > 1 else 0


def top_per_symbol(results: list[dict[str, Any]], n: int, objective: str = "total_return",
                   min_trades: int = 0) -> list[dict[str, Any]]:
    """The `n` best parameter sets of each symbol, symbols in leaderboard order."""
    by_symbol: dict[str, list[dict[str, Any]]] = {}
    for result in leaderboard(results, objective, min_trades):
        kept = by_symbol.setdefault(result["symbol"], [])
        if len(kept) < n:
            kept.append(result)
    return [r for rows in by_symbol.values() for r in rows]


def sweep_best(results: list[dict[str, Any]], n: int, objective: str = "total_return",
               min_trades: int = 0) -> list[dict[str, Any]]:
    """A sweep's answer (`--json`, the API): the `n` best overall, then each symbol's `n` best not among them.

    `results` are in leaderboard order of the same objective.
    """
    best = results[:n]
    return best + [r for r in top_per_symbol(results, n, objective, min_trades) if r not in best]
