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


def _signals(batch: PriceBatch, strategy: strategies.Strategy, params: dict[str, Any], start: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Signals over the whole history read (warm-up included), from column `start` on."""
    combos, _, _ = strategies.combos_matrix(strategy, [params])
    close = np.ascontiguousarray(batch.columns["close"])
    entries = np.empty(close.shape, dtype=np.bool_)
    exits = np.empty(close.shape, dtype=np.bool_)
    columns = engine.strategy_columns(batch, strategy)
    strategy.kernels().signals_on_grid(columns, close, combos[0], entries, exits)
    return np.ascontiguousarray(entries[:, start:]), np.ascontiguousarray(exits[:, start:])


def _iso(epoch_seconds: int) -> str:
    return datetime.fromtimestamp(int(epoch_seconds), UTC).isoformat()


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


def run(batch: PriceBatch, config: RunConfig, sets: list[PortfolioSet], rank_by: str = "auto"
        ) -> list[dict[str, Any]]:
    """One result per account in `sets`, best total return first (no trade lists)."""
    slippage = _slippage(config)
    open_, close, start = _prices(batch, config)
    scores, rule = rank_scores(batch, rank_by)
    scores = np.ascontiguousarray(scores[:, start:])
    distinct = list({strategies_key(s.params): s.params for s in sets}.values())
    index = {strategies_key(p): k for k, p in enumerate(distinct)}
    shape = (len(distinct), *close.shape)
    entries = np.empty(shape, dtype=np.bool_)
    exits = np.empty(shape, dtype=np.bool_)
    for k, params in enumerate(distinct):
        entries[k], exits[k] = _signals(batch, config.strategy, params, start)
    out = np.empty((len(sets), enums.N_PORTFOLIO_METRICS))
    if close.size:
        pk.run_portfolio_grid(
            open_, close, entries, exits, np.array([index[strategies_key(s.params)] for s in sets], dtype=np.int64),
            scores, np.array([s.max_open for s in sets], dtype=np.int64),
            np.array([s.stake.is_fraction for s in sets]), np.array([s.stake.value for s in sets]),
            config.fee_frac, slippage, config.initial, config.fill == "next_open",
            _annual_bars(batch, config, start), out)
    else:
        out[:] = np.nan
    results = [_shape(batch, config, s, rule, out[c]) for c, s in enumerate(sets)]
    return sorted(results, key=lambda r: (r["total_return_pct"] is None, -(r["total_return_pct"] or 0.0)))


def detail(batch: PriceBatch, config: RunConfig, chosen: PortfolioSet, rank_by: str = "auto") -> dict[str, Any]:
    """One account in full: its result, per-symbol contributions, round trips and equity curves."""
    slippage = _slippage(config)
    open_, close, start = _prices(batch, config)
    scores, rule = rank_scores(batch, rank_by)
    scores = np.ascontiguousarray(scores[:, start:])
    entries, exits = _signals(batch, config.strategy, chosen.params, start)
    times = batch.times[start:]
    n_symbols, n_time = close.shape
    metrics = np.empty(enums.N_PORTFOLIO_METRICS)
    contrib = np.empty((n_symbols, pk.N_CONTRIB))
    equity = np.empty(n_time)
    trades = np.empty(int(entries.sum()) + n_symbols, dtype=pk.PORTFOLIO_TRADE_DTYPE)
    k = pk.simulate_portfolio(open_, close, entries, exits, scores, chosen.max_open, chosen.stake.is_fraction,
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
    result["round_trips"] = [
        {
            "symbol": batch.symbols[int(t["symbol"])],
            "entry_time": _iso(times[t["entry_bar"]]),
            "entry_price": float(t["entry_price"]),
            "exit_time": _iso(times[t["exit_bar"]]) if t["exit_bar"] >= 0 else last_time,
            "exit_price": float(t["exit_price"]),
            "units": float(t["units"]),
            "fees": float(t["fees"]),
            "pnl": float(t["pnl"]),
            "return_pct": float(t["return_pct"]),
            "bars_held": int((t["exit_bar"] if t["exit_bar"] >= 0 else n_time - 1) - t["entry_bar"]),
            "exit_reason": enums.EXIT_REASON_NAMES[int(t["exit_reason"])],
        }
        for t in trades[:k]
    ]
    result["equity_curve"] = {"times": times, "equity": equity,
                              "buy_hold": equal_weight_buy_hold(close, config.initial)}
    return result


def equal_weight_buy_hold(close: np.ndarray, initial: float) -> np.ndarray:
    """initial / S in each symbol from its first close, marked at its latest close (cash before)."""
    n_symbols, n_time = close.shape
    if n_symbols == 0:
        return np.full(n_time, np.nan)
    valid = ~np.isnan(close)
    first_idx = np.where(valid.any(axis=1), valid.argmax(axis=1), n_time)
    first = np.array([close[s, i] if i < n_time else np.nan for s, i in enumerate(first_idx)])
    # Forward-fill each symbol's latest close along time.
    idx = np.where(valid, np.arange(n_time), 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    marked = np.take_along_axis(close, idx, axis=1)
    ratio = np.where(np.arange(n_time)[None, :] >= first_idx[:, None], marked / first[:, None], 1.0)
    curve = initial / n_symbols * ratio.sum(axis=0)
    curve[~valid.any(axis=0)] = np.nan
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
