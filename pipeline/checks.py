"""Look-ahead and warm-up checks of any strategy (`cryptobt strategies check NAME`).

Look-ahead: indicators and signals are recomputed on the data cut right after a
signal bar t (bars 0..t only); a causal strategy gives the same indicator
values and signals at every bar <= t, so any difference is a peek at the
future, reported with the indicator (or signal) and the bar.

Warm-up sensitivity: indicators are recomputed with the first 100, 200, 500 and
1,000 bars dropped; the relative change of each indicator at the last bar says
how long the strategy's memory is (EMA and Wilder smoothing never forget
entirely; an SMA forgets after its period).

Both use the strategy's compiled kernel on one symbol's bars; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline import strategies
from pipeline.errors import PipelineError

DROPS = (100, 200, 500, 1000)
MAX_CUTS = 60  # signal bars re-checked per symbol (spread over the series)


@dataclass
class CheckReport:
    """What the checks found for one symbol."""

    symbol: str
    bars: int
    cuts_checked: int = 0
    lookahead: list[str] = field(default_factory=list)  # one line per finding
    warmup: dict[int, dict[str, float | None]] = field(default_factory=dict)  # drop -> indicator -> rel. change


def _compute(strategy: strategies.Strategy, columns: dict[str, np.ndarray], params_row: np.ndarray, end: int,
             start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cols = tuple(np.ascontiguousarray(columns[name][start:end]).reshape(1, -1) for name in strategy.columns)
    close = np.ascontiguousarray(columns["close"][start:end])
    return strategy.kernels().indicators_and_signals_single(cols, close, params_row)


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b))


def check_symbol(strategy_name: str, params: dict, symbol: str, columns: dict[str, np.ndarray]) -> CheckReport:
    """Run both checks on one symbol's bars (`columns`: name -> 1-D float64, no gaps)."""
    strategy = strategies.get_strategy(strategy_name)
    resolved = strategies.resolve_params(strategy_name, params)
    row = np.array([float(resolved[name]) for name in strategy.param_names], dtype=np.float64)
    missing = [c for c in (*strategy.columns, "close") if c not in columns]
    if missing:
        raise PipelineError(f"the check needs the {', '.join(missing)} column(s) for {strategy_name!r}")
    n = int(columns["close"].shape[0])
    report = CheckReport(symbol, n)
    ind, entries, exits = _compute(strategy, columns, row, n)
    signal_bars = np.flatnonzero(entries | exits)
    if signal_bars.size > MAX_CUTS:
        signal_bars = signal_bars[np.linspace(0, signal_bars.size - 1, MAX_CUTS).astype(np.int64)]
    names = strategy.indicators
    flagged: set[str] = set()
    for t in signal_bars:
        cut_ind, cut_entries, cut_exits = _compute(strategy, columns, row, int(t) + 1)
        report.cuts_checked += 1
        series = [(f"indicator {name!r}", ind[k, : t + 1], cut_ind[k]) for k, name in enumerate(names)]
        series += [("the entry signal", entries[: t + 1], cut_entries), ("the exit signal", exits[: t + 1], cut_exits)]
        for label, full, cut in series:
            differs = np.flatnonzero(~_same(full.astype(np.float64), cut.astype(np.float64)))
            if differs.size and label not in flagged:
                flagged.add(label)
                b = int(differs[0])
                report.lookahead.append(
                    f"{label} at bar {b} is {full[b].item()!r} with all the data but {cut[b].item()!r} with the "
                    f"data cut after bar {int(t)}: it reads bars after {b}")
    for drop in DROPS:
        if n - drop < 2:
            continue
        late_ind, _, _ = _compute(strategy, columns, row, n, start=drop)
        changes: dict[str, float | None] = {}
        for k, name in enumerate(names):
            full_value, late_value = ind[k, n - 1], late_ind[k, -1]
            if np.isnan(full_value) or np.isnan(late_value):
                changes[name] = None
            else:
                scale = max(abs(full_value), 1e-300)
                changes[name] = float(abs(late_value - full_value) / scale)
        report.warmup[drop] = changes
    return report
