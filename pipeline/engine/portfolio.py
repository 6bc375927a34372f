"""Portfolio mode: one account across every symbol of a run, with slots, stakes and ranking.

The strategy's signals are computed once per distinct strategy parameter set for all
symbols (the same kernels as a single-symbol run); the account is then simulated by
`kernels.portfolio` for every (slots, stake) combination in parallel. No I/O here: the
caller passes the aligned prices (`reader.read_prices`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipeline.core import intervals, metrics
from pipeline.core.errors import PipelineError
from pipeline.core.intervals import SECONDS as STEP_SECONDS
from pipeline.engine import batch as engine
from pipeline.engine import strategies
from pipeline.engine.kernels import enums
from pipeline.engine.kernels import portfolio as pk
from pipeline.engine.kernels import portfolio_futures as pfk
from pipeline.engine.options import RunConfig
from pipeline.lake.reader import PriceBatch

RANK_BY = ("auto", "volume", "name")
# A sweep's parameter sets beyond this need a narrower grid (each is a whole account).
MAX_PORTFOLIO_SETS = 10_000
# An account's metrics (the portfolio kernel's columns), in the table's order.
PORTFOLIO_METRICS = tuple(m for m in metrics.METRICS if m.portfolio)


@dataclass(frozen=True)
class Stake:
    """What one entry commits: a fraction of the equity at that moment, or a fixed amount."""

    value: float
    is_fraction: bool

    @classmethod
    def parse(cls, text: str | float) -> Stake:
        """`0.1` or `10%` = 10 % of equity (a number in (0, 1]); `250` = 250 units of cash (> 1)."""
        raw = str(text).strip()
        percent = raw.endswith("%")
        try:
            number = float(raw[:-1] if percent else raw)
        except ValueError:
            raise PipelineError(
                f"--stake {text!r} is not a number; use a fraction of equity in (0, 1] (0.1 or 10%) "
                "or an amount of cash > 1 (250)"
            ) from None
        if percent:
            number /= 100.0
        if not math.isfinite(number) or number <= 0 or (percent and number > 1):
            raise PipelineError(
                f"--stake {text!r} is out of range: a fraction of equity in (0, 1] (0.1 or 10%) "
                "or an amount of cash > 1 (250)"
            )
        return cls(number, percent or number <= 1.0)

    def label(self) -> str:
        return f"{self.value * 100:g}%" if self.is_fraction else f"{self.value:g}"


@dataclass(frozen=True)
class PortfolioSet:
    """One account's settings: the strategy's parameters, the slots and the stake."""

    params: dict[str, Any]
    max_open: int
    stake: Stake


def request_sets(strategy: strategies.Strategy, params: dict[str, Any] | list[dict[str, Any]],
                 max_open: list[int], stakes: list[str | float], rank_by: str, **run: Any
                 ) -> tuple[RunConfig, list[PortfolioSet]]:
    """The one validation of a portfolio request (the CLI's, the API's, the notebook's): its stakes,
    --rank-by, the run options (`options.run_config`) and its accounts (`make_sets`), before any work."""
    from pipeline.engine import options

    parsed = [Stake.parse(text) for text in stakes]
    if rank_by not in RANK_BY:
        raise PipelineError(f"--rank-by {rank_by!r} is not allowed; use one of: {', '.join(RANK_BY)}")
    config = options.run_config(strategy, params, **run)
    return config, make_sets(config, sorted(set(max_open)), list(dict.fromkeys(parsed)))


def make_sets(config: RunConfig, max_open: list[int], stakes: list[Stake], n_symbols_hint: int | None = None
              ) -> list[PortfolioSet]:
    """Every combination of strategy parameters x slots x stakes, validated."""
    executions = {config.execution(c) for c in range(len(config.params_list))}
    if any(e.has_stops or e.size != 1.0 for e in executions):
        raise PipelineError("stops (--sl, --tp, --trail) and --size are for single-symbol runs; a portfolio "
                            "sizes its entries with --stake and has no stops")
    if len(executions) > 1:
        raise PipelineError("a portfolio takes one --slippage; it sweeps strategy parameters, --max-open and "
                            "--stake")
    bad = [m for m in max_open if not isinstance(m, int) or m < 1]
    if bad:
        raise PipelineError(f"--max-open {bad[0]!r} is out of range: an integer >= 1")
    if not stakes:
        raise PipelineError("--stake is required: a fraction of equity in (0, 1] or an amount of cash > 1")
    for stake in stakes:
        if not stake.is_fraction and stake.value > config.initial:
            raise PipelineError(f"--stake {stake.value:g} is more than the initial cash {config.initial:g}")
    sets = [PortfolioSet(p, m, s) for p, m, s in itertools.product(config.params_list, max_open, stakes)]
    if len(sets) > MAX_PORTFOLIO_SETS:
        raise PipelineError(f"this portfolio sweep has {len(sets):,} accounts; at most {MAX_PORTFOLIO_SETS:,}")
    return sets


def rank_scores(batch: PriceBatch, rank_by: str) -> tuple[np.ndarray, str]:
    """(S x T) scores, higher first, and the rule used (`auto` resolves to volume or name)."""
    if rank_by not in RANK_BY:
        raise PipelineError(f"--rank-by {rank_by!r} is not allowed; use one of: {', '.join(RANK_BY)}")
    close = batch.columns["close"]
    if rank_by == "auto":
        rank_by = "volume" if "volume" in batch.columns else "name"
    if rank_by == "name":
        # Equal scores: the kernel breaks ties by symbol index, and symbols are in name order.
        return np.zeros(close.shape), "name"
    if "volume" not in batch.columns:
        raise PipelineError("--rank-by volume needs the volume column")
    window = max(1, 86_400 // STEP_SECONDS[batch.interval])
    quote_volume = batch.columns["volume"] * close
    scores = np.empty(close.shape)
    pk.trailing_sum(np.ascontiguousarray(quote_volume), window, scores)
    return scores, "volume"


def _signals(batch: PriceBatch, strategy: strategies.Strategy, params: dict[str, Any], start: int = 0,
             short: bool = False) -> tuple[np.ndarray, ...]:
    """Signals over the whole history read (warm-up included), from column `start` on: (entries, exits),
    and with `short` the short side too (enter_short, exit_short: the strategy's own, or the mirror)."""
    combos, _, _ = strategies.combos_matrix(strategy, [params])
    close = np.ascontiguousarray(batch.columns["close"])
    out = tuple(np.empty(close.shape, dtype=np.bool_) for _ in range(4 if short else 2))
    columns = engine.strategy_columns(batch, strategy)
    strategy.kernels().signals_on_grid(columns, close, combos[0], *out)
    return tuple(np.ascontiguousarray(a[:, start:]) for a in out)


def _iso(epoch_seconds: int) -> str:
    return datetime.fromtimestamp(int(epoch_seconds), UTC).isoformat()


def _isos(epoch_seconds: np.ndarray) -> list[str]:
    """`_iso` of many times at once (a portfolio's round trips: thousands)."""
    text = np.datetime_as_string(np.asarray(epoch_seconds, dtype="datetime64[s]"), unit="s")
    return [f"{t}+00:00" for t in text.tolist()]


def _number(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else float(value)


def _prices(batch: PriceBatch, config: RunConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Open and close from the first simulated column on (earlier bars only warm signals up)."""
    start = engine.start_column(batch, config)
    close = np.ascontiguousarray(batch.columns["close"][:, start:])
    if config.fill == "next_open":
        if "open" not in batch.columns:
            raise PipelineError("fill=next_open needs the open column")
        return np.ascontiguousarray(batch.columns["open"][:, start:]), close, start
    return close, close, start


# A futures account's rows beside open and close, in the kernel's order (mark_close: where a cross
# account's liquidation closes its positions).
_FUTURES_ROWS = ("high", "low", "funding", "mark_open", "mark_high", "mark_low", "mark_close")


def _futures_prices(batch: PriceBatch, config: RunConfig, start: int) -> tuple[np.ndarray, ...]:
    """(open, high, low, close, funding, mark open/high/low/close) from column `start` on, NaN where a read
    has none of a futures series; and the tier brackets of each symbol (tiers, counts)."""
    close = batch.columns["close"][:, start:]
    rows = {name: np.ascontiguousarray(batch.columns[name][:, start:]) if name in batch.columns
            else np.full(close.shape, np.nan) for name in ("open", *_FUTURES_ROWS)}
    for name in ("open", "high", "low"):
        if name not in batch.columns:
            raise PipelineError(f"a futures portfolio needs the {name} column, which this read lacks")
    tiers, counts = config.tier_table.stacked(batch.symbols)
    return (rows["open"], rows["high"], rows["low"], np.ascontiguousarray(close), rows["funding"], rows["mark_open"],
            rows["mark_high"], rows["mark_low"], rows["mark_close"], tiers, counts)


def _annual_bars(batch: PriceBatch, config: RunConfig, start: int) -> float:
    """The account's annualisation: grid bars with any symbol's bar per year of its span, or the calendar's."""
    calendar = float(intervals.BARS_PER_YEAR[batch.interval])
    valid = ~np.isnan(batch.columns["close"][:, start:]).all(axis=0)
    if config.annualization == "calendar" or not valid.any():
        return calendar
    first, last = int(valid.argmax()), int(valid.size - 1 - valid[::-1].argmax())
    step = intervals.SECONDS[batch.interval]
    return float(valid.sum() / (((last - first) * step + step) / intervals.YEAR_SECONDS))


def _slippage(config: RunConfig) -> float:
    """The run's slippage as a fraction (make_sets allows one for the whole portfolio run)."""
    return config.execution(0).slippage_pct / 100.0


@dataclass
class _Inputs:
    """What every account of a run reads: the prices from the first simulated column, the entry ranks (and
    the rule), and the signals of each distinct parameter set (filled as asked for)."""

    open_: np.ndarray
    close: np.ndarray
    start: int
    scores: np.ndarray
    rule: str
    signals: dict[tuple, tuple[np.ndarray, ...]]


def _inputs(batch: PriceBatch, config: RunConfig, rank_by: str) -> _Inputs:
    open_, close, start = _prices(batch, config)
    scores, rule = rank_scores(batch, rank_by)
    return _Inputs(open_, close, start, np.ascontiguousarray(scores[:, start:]), rule, {})


def _signals_of(inputs: _Inputs, batch: PriceBatch, config: RunConfig, params: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """The signals of one parameter set, computed once per run."""
    key = strategies_key(params)
    if key not in inputs.signals:
        inputs.signals[key] = _signals(batch, config.strategy, params, inputs.start, config.market == "futures")
    return inputs.signals[key]


def run(batch: PriceBatch, config: RunConfig, sets: list[PortfolioSet], rank_by: str = "auto",
        inputs: _Inputs | None = None) -> list[dict[str, Any]]:
    """One result per account in `sets`, best total return first (no trade lists)."""
    slippage = _slippage(config)
    futures = config.market == "futures"
    inputs = inputs or _inputs(batch, config, rank_by)
    open_, close, start, scores, rule = inputs.open_, inputs.close, inputs.start, inputs.scores, inputs.rule
    distinct = list({strategies_key(s.params): s.params for s in sets}.values())
    index = {strategies_key(p): k for k, p in enumerate(distinct)}
    shape = (len(distinct), *close.shape)
    signals = tuple(np.empty(shape, dtype=np.bool_) for _ in range(4 if futures else 2))
    for k, params in enumerate(distinct):
        for array, one in zip(signals, _signals_of(inputs, batch, config, params), strict=True):
            array[k] = one
    out = np.empty((len(sets), enums.N_PORTFOLIO_METRICS))
    signal_set = np.array([index[strategies_key(s.params)] for s in sets], dtype=np.int64)
    max_open = np.array([s.max_open for s in sets], dtype=np.int64)
    is_fraction = np.array([s.stake.is_fraction for s in sets])
    stakes = np.array([s.stake.value for s in sets])
    if close.size and futures:
        *rows, tiers, counts = _futures_prices(batch, config, start)
        execution = config.execution(0)
        pfk.run_portfolio_futures_grid(
            *rows, *signals, signal_set, scores, tiers, counts, max_open, is_fraction, stakes, execution.leverage,
            enums.DIRECTIONS[execution.direction], config.margin == "cross", config.fee_frac, slippage,
            config.initial, config.fill == "next_open", _annual_bars(batch, config, start), out)
    elif close.size:
        pk.run_portfolio_grid(
            open_, close, *signals, signal_set, scores, max_open, is_fraction, stakes,
            config.fee_frac, slippage, config.initial, config.fill == "next_open",
            _annual_bars(batch, config, start), out)
    else:
        out[:] = np.nan
    results = [_shape(batch, config, s, rule, out[c]) for c, s in enumerate(sets)]
    return sorted(results, key=lambda r: (r["total_return_pct"] is None, -(r["total_return_pct"] or 0.0)))


_DETAIL_ONLY = ("contributions", "round_trips", "equity_curve")  # what `detail` adds to `run`'s row


def accounts(batch: PriceBatch, config: RunConfig, sets: list[PortfolioSet], rank_by: str = "auto"
             ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every account of `sets`, best first, and the best one in full (`detail`: contributions, round
    trips, curves; None without accounts)."""
    inputs = _inputs(batch, config, rank_by)
    if len(sets) == 1:  # one account: its full simulation gives its row too (the grid would run it twice)
        full = detail(batch, config, sets[0], rank_by, inputs)
        return [{k: v for k, v in full.items() if k not in _DETAIL_ONLY}], full
    found = run(batch, config, sets, rank_by, inputs)
    if not found:
        return found, None
    best = found[0]
    chosen = next(s for s in sets if s.params == best["params"] and s.max_open == best["max_open"]
                  and s.stake.value == best["stake"])
    return found, detail(batch, config, chosen, rank_by, inputs)


def detail(batch: PriceBatch, config: RunConfig, chosen: PortfolioSet, rank_by: str = "auto",
           inputs: _Inputs | None = None) -> dict[str, Any]:
    """One account in full: its result, per-symbol contributions, round trips and equity curves (`inputs`:
    the run's own, when `run` has just read them)."""
    slippage = _slippage(config)
    futures = config.market == "futures"
    inputs = inputs or _inputs(batch, config, rank_by)
    open_, close, start, scores, rule = inputs.open_, inputs.close, inputs.start, inputs.scores, inputs.rule
    signals = _signals_of(inputs, batch, config, chosen.params)
    times = batch.times[start:]
    n_symbols, n_time = close.shape
    metrics = np.empty(enums.N_PORTFOLIO_METRICS)
    contrib = np.empty((n_symbols, pk.N_CONTRIB))
    equity = np.empty(n_time)
    # One record per entry (its exit, or end_of_data); every entry fills an entry signal (long or short).
    entry_signals = signals[0].sum() + (signals[2].sum() if futures else 0)
    trades = np.empty(int(entry_signals) + n_symbols, dtype=pk.PORTFOLIO_TRADE_DTYPE)
    execution = config.execution(0)
    if futures:
        *rows, tiers, counts = _futures_prices(batch, config, start)
        k = pfk.simulate_portfolio_futures(
            *rows, *signals, scores, tiers, counts, chosen.max_open, chosen.stake.is_fraction, chosen.stake.value,
            execution.leverage, enums.DIRECTIONS[execution.direction], config.margin == "cross", config.fee_frac,
            slippage, config.initial, config.fill == "next_open", _annual_bars(batch, config, start), metrics,
            contrib, equity, trades)
    else:
        k = pk.simulate_portfolio(open_, close, *signals, scores, chosen.max_open, chosen.stake.is_fraction,
                                  chosen.stake.value, config.fee_frac, slippage, config.initial,
                                  config.fill == "next_open", _annual_bars(batch, config, start), metrics,
                                  contrib, equity, trades)
    result = _shape(batch, config, chosen, rule, metrics)
    last_time = _iso(times[-1]) if times.size else None
    result["contributions"] = [
        {"symbol": symbol, "round_trips": int(contrib[i, pk.CONTRIB_TRADES]),
         "pnl": float(contrib[i, pk.CONTRIB_PNL]), "skipped_entries": int(contrib[i, pk.CONTRIB_SKIPPED])}
        for i, symbol in enumerate(batch.symbols)
    ]
    done = trades[:k]
    held = done["exit_bar"] >= 0
    entry_times = _isos(times[done["entry_bar"]])
    exit_times = _isos(times[np.where(held, done["exit_bar"], 0)])
    result["round_trips"] = [
        {
            "symbol": batch.symbols[int(t["symbol"])],
            "entry_time": entry_times[j],
            "entry_price": float(t["entry_price"]),
            "exit_time": exit_times[j] if held[j] else last_time,
            "exit_price": float(t["exit_price"]),
            "units": float(t["units"]),
            "fees": float(t["fees"]),
            "pnl": float(t["pnl"]),
            "return_pct": float(t["return_pct"]),
            "bars_held": int((t["exit_bar"] if t["exit_bar"] >= 0 else n_time - 1) - t["entry_bar"]),
            "exit_reason": enums.EXIT_REASON_NAMES[int(t["exit_reason"])],
            **({"side": "long" if t["side"] == 1 else "short", "leverage": execution.leverage,
                "funding_paid": float(t["funding"])} if futures else {}),
        }
        for j, t in enumerate(done)
    ]
    result["equity_curve"] = {"times": times, "equity": equity,
                              "buy_hold": equal_weight_buy_hold(close, config.initial)}
    return result


def equal_weight_buy_hold(close: np.ndarray, initial: float) -> np.ndarray:
    """initial / S in each symbol from its first close, marked at its latest close (cash before); NaN before
    any symbol has a bar (`kernels.portfolio.equal_weight_curve`)."""
    n_symbols, n_time = close.shape
    if n_symbols == 0:
        return np.full(n_time, np.nan)
    curve = np.empty(n_time)
    pk.equal_weight_curve(np.ascontiguousarray(close), float(initial), curve)
    return curve


def strategies_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def _shape(batch: PriceBatch, config: RunConfig, chosen: PortfolioSet, rule: str, m: np.ndarray) -> dict[str, Any]:
    start = engine.start_column(batch, config)
    times = batch.times[start:]
    valid = ~np.isnan(batch.columns["close"][:, start:]).all(axis=0) if times.size else np.zeros(0, dtype=bool)
    has = bool(valid.any())
    first = int(valid.argmax()) if has else -1
    last = int(valid.size - 1 - valid[::-1].argmax()) if has else -1
    return {
        "mode": "portfolio",
        "symbol": "*",
        "symbols": list(batch.symbols),
        "strategy": config.strategy.name,
        "params": dict(chosen.params),
        "max_open": chosen.max_open,
        "stake": chosen.stake.value,
        "stake_mode": "fraction" if chosen.stake.is_fraction else "amount",
        "rank_by": rule,
        "interval": batch.interval,
        "start": _iso(times[first]) if has else None,
        "end": _iso(times[last]) if has else None,
        "timerange_start": config.timerange_start.isoformat() if config.timerange_start else None,
        "timerange_end": config.timerange_end.isoformat() if config.timerange_end else None,
        **engine.metric_fields(PORTFOLIO_METRICS, enums.PORTFOLIO_SLOTS, m, has, config.initial),
        "fill": config.fill,
        "fee_pct": config.fee_pct,
        "initial_investment": config.initial,
        **config.execution(0).fields(),
        "market": config.market,
        **config.futures_fields(),
        "snapshot_id": batch.snapshot_id,
        "computed_snapshot_id": batch.snapshot_id,
        "data_version": combined_version(batch.symbols, batch.data_versions),
        "engine_version": engine.code_version(config.strategy),
        "reason": None if has else "no bars in the requested range",
        "from_cache": False,
    }


def combined_version(symbols: list[str], versions: list[str]) -> str:
    """One data version for a set of symbols: changes iff the set or any symbol's version does."""
    text = "\n".join(f"{s}={v}" for s, v in zip(symbols, versions, strict=True))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
