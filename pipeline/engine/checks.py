"""Look-ahead and warm-up checks of any strategy (`cryptobt strategies check NAME`).

Look-ahead: every output the strategy computes (each indicator row and each of
`pipeline.engine.strategies.api.SIGNAL_OUTPUTS`: entries, exits, the logged value) is
recomputed with the data cut right after every bar t, and compared at every bar
<= t with the same output computed on the uncut data; a causal strategy gives the
same numbers, so any difference is a peek at the future, reported with the output
and the bar. Every bar is a truncation point, not only the bars that signal: a
strategy that peeks only to suppress an exit signals nothing at the bars it
suppressed. To keep that at n x window bar-steps rather than n^2, the bars are cut
into consecutive windows of `warm-up + WINDOW` bars, each checked on its own (a
causal strategy started at a window's first bar is causal there too).

Warm-up sensitivity: indicators are recomputed with the first 100, 200, 500 and
1,000 bars dropped; the relative change of each indicator at the last bar says
how long the strategy's memory is (EMA and Wilder smoothing never forget
entirely; an SMA forgets after its period).

Declaration: each indicator row is recomputed with every parameter its INDICATOR_PARAMS leaves out
changed; a row that changes reads a parameter it did not declare, and a sweep, which reuses the row
across sets that differ only there (`grid.indicator_slots`), would give those sets a wrong indicator.

All three use the strategy's compiled kernel on one symbol's bars; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.engine import strategies
from pipeline.engine.strategies.api import SIGNAL_OUTPUTS

DROPS = (100, 200, 500, 1000)
WINDOW = 1000  # bars after the warm-up in each look-ahead window
_LABELS = {"entries": "the entry signal", "exits": "the exit signal", "sig_value": "the logged value",
           "enter_short": "the short entry signal", "exit_short": "the short exit signal"}
_SIGNALS = ("the entry signal", "the exit signal", "the short entry signal", "the short exit signal")


@dataclass
class CheckReport:
    """What the checks found for one symbol."""

    symbol: str
    bars: int
    cuts_checked: int = 0
    lookahead: list[str] = field(default_factory=list)  # one line per finding
    warmup: dict[int, dict[str, float | None]] = field(default_factory=dict)  # drop -> indicator -> rel. change
    declaration: list[str] = field(default_factory=list)  # one line per indicator reading an undeclared parameter


def output_labels(strategy: strategies.Strategy) -> list[str]:
    """How findings name each row of the kernel's `strategy_outputs`: the indicators, then SIGNAL_OUTPUTS."""
    return [f"indicator {name!r}" for name in strategy.indicators] + [
        _LABELS.get(name, f"the output {name!r}") for name in SIGNAL_OUTPUTS]


def windows(n: int, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the look-ahead windows over n bars: `warmup + WINDOW` bars each, the last one
    taking the rest when it would be shorter than half of that."""
    length = max(1, min(n, warmup + WINDOW))
    starts = list(range(0, n, length))
    if len(starts) > 1 and n - starts[-1] < length // 2:
        starts.pop()
    ends = starts[1:] + [n]
    return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)


def _shown(label: str, value: float) -> str:
    return str(bool(value)) if label in _SIGNALS else repr(float(value))


def check_symbol(strategy: strategies.Strategy, params: dict, symbol: str,
                 columns: dict[str, np.ndarray]) -> CheckReport:
    """Run both checks on one symbol's bars (`columns`: name -> 1-D float64, no gaps)."""
    resolved = strategies.resolve_params(strategy, params)
    row = np.array([float(resolved[name]) for name in strategy.param_names], dtype=np.float64)
    missing = [c for c in strategy.input_columns if c not in columns]
    if missing:
        raise PipelineError(f"the check needs the {', '.join(missing)} column(s) for {strategy.name!r}")
    # Its informative series too (their values as the run aligns them): truncating the bars truncates them.
    prices = np.ascontiguousarray(np.stack([np.asarray(columns[c], dtype=np.float64)
                                            for c in strategy.input_columns]))
    n = int(prices.shape[1])
    report = CheckReport(symbol, n)
    kernels = strategy.kernels()
    labels = output_labels(strategy)
    full = kernels.strategy_outputs(prices, row)
    if full.shape[0] != len(labels):
        raise PipelineError(f"the kernel of {strategy.name!r} computes {full.shape[0]} outputs but the check "
                            f"names {len(labels)}: SIGNAL_OUTPUTS and strategy_outputs disagree")
    starts, ends = windows(n, strategies.warmup_bars(strategy, resolved))
    where = np.empty((len(labels), 4), dtype=np.int64)
    values = np.empty((len(labels), 2))
    report.cuts_checked = int(kernels.lookahead_scan(prices, row, starts, ends, where, values)) if n else 0
    for k, label in enumerate(labels):
        bar, cut, start, end = (int(v) for v in where[k])
        if bar < 0:
            continue
        since = f"bars {start}..{end - 1}" if start or end < n else "all the data"
        report.lookahead.append(
            f"{label} at bar {bar} is {_shown(label, values[k, 0])} computed on {since} but "
            f"{_shown(label, values[k, 1])} computed on bars {start}..{cut}: it reads bars after {bar}")
    report.declaration = _undeclared_reads(strategy, resolved, prices, full)
    for drop in DROPS:
        if n - drop < 2:
            continue
        late = kernels.strategy_outputs(np.ascontiguousarray(prices[:, drop:]), row)
        changes: dict[str, float | None] = {}
        for k, name in enumerate(strategy.indicators):
            full_value, late_value = full[k, n - 1], late[k, -1]
            if np.isnan(full_value) or np.isnan(late_value):
                changes[name] = None
            else:
                scale = max(abs(full_value), 1e-300)
                changes[name] = float(abs(late_value - full_value) / scale)
        report.warmup[drop] = changes
    return report


def _other_value(strategy: strategies.Strategy, resolved: dict, name: str) -> dict | None:
    """`resolved` with parameter `name` moved to a nearby value its range and CHECK allow (None: none is)."""
    value = resolved[name]
    nearby = (value + 1, value - 1, value + 2, value * 2) if isinstance(value, int) else (
        value * 1.1, value * 0.9, value + 1, value - 1)
    for candidate in nearby:
        try:
            moved = strategies.resolve_params(strategy, {**resolved, name: candidate})
        except PipelineError:
            continue
        if moved[name] != value and strategy.params_problem(moved) is None:
            return moved
    return None


def _undeclared_reads(strategy: strategies.Strategy, resolved: dict, prices: np.ndarray,
                      full: np.ndarray) -> list[str]:
    """Each indicator row that changes with a parameter its INDICATOR_PARAMS does not list."""
    found = []
    kernels = strategy.kernels()
    for name in strategy.param_names:
        rows = [k for k, own in enumerate(strategy.row_params) if name not in own]
        moved = _other_value(strategy, resolved, name) if rows else None
        if moved is None:
            continue
        other = kernels.strategy_outputs(prices, np.array([float(moved[p]) for p in strategy.param_names]))
        for k in rows:
            if not np.array_equal(full[k], other[k], equal_nan=True):
                found.append(f"indicator {strategy.indicators[k]!r} changes with {name} "
                             f"({resolved[name]} -> {moved[name]}) but INDICATOR_PARAMS does not list {name} for it: "
                             "a sweep would reuse it in sets where it differs; add it")
    return found
