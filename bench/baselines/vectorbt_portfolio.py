"""Baseline: vectorbt's shared-cash portfolio on the same signals and prices as our portfolio kernel.

    run_shared(close, entries, exits, stake, initial) -> final value
    run_shared_percent(close, entries, exits, fraction, initial) -> equity at every bar

`Portfolio.from_signals(close, entries, exits, size=stake, size_type="value",
cash_sharing=True, group_by=True, fees=0, init_cash=initial)` over the (time x symbols)
grid. Where the semantics match, the final values must agree with ours:

- vectorbt has no limit on open positions and sizes an order's value before fees;
  ours caps positions at --max-open and takes the fee out of the stake. With fees 0,
  a fixed stake, more slots than symbols and enough cash that no entry is ever
  skipped, the two define the same account (checked in the benchmark).
- vectorbt orders same-bar entries by its call sequence, ours by rank; that matters
  only when cash or slots run out, which the agreement case excludes.
- Engine: Numba, named (vectorbt's "auto" would take Rust where vectorbt-rust is installed).
- Missing bars: vectorbt skips orders at a NaN price and values a position at the
  last valid close, as our kernel does.
"""

from __future__ import annotations

import numpy as np
import vectorbt as vbt


def run_shared(close: np.ndarray, entries: np.ndarray, exits: np.ndarray, stake: float, initial: float) -> float:
    """Final value of one shared-cash account; inputs are (symbols x time) like ours."""
    portfolio = vbt.Portfolio.from_signals(
        close.T, entries.T, exits.T, size=stake, size_type="value", fees=0.0, init_cash=initial,
        cash_sharing=True, group_by=True, direction="longonly", accumulate=False, freq="1h",
        engine="numba",  # the engine this row has measured; "auto" takes Rust once vectorbt-rust is installed
    )
    value = portfolio.value().to_numpy()
    return float(value[~np.isnan(value)][-1])


def run_shared_percent(close: np.ndarray, entries: np.ndarray, exits: np.ndarray, fraction: float,
                       initial: float) -> np.ndarray:
    """Equity at every bar of one shared-cash account whose entries each commit `fraction` of its value:
    ours with `--stake` as a fraction and close fills, in vectorbt's terms.

    `Portfolio.from_orders(size_type="targetpercent", cash_sharing=True, call_seq="auto")`: an entry
    of a flat symbol targets `fraction` of the group's value at that bar's close (cash + every
    position at that close), an exit targets 0, and "auto" fills the sells of a bar before its buys
    (ours: exits before entries). Signals become targets by following each symbol flat -> long -> flat
    (an entry while long or an exit while flat does nothing, as in ours). The same account as ours
    with fees 0, slots for every symbol, cash never short, no gaps and no bar with both an exit and an
    entry of one symbol (ours fills both; vectorbt takes one order per symbol and bar).
    """
    size = np.full(close.shape, np.nan)
    for s in range(close.shape[0]):
        held = False
        for t in range(close.shape[1]):
            if held and exits[s, t]:
                size[s, t], held = 0.0, False
            elif not held and entries[s, t]:
                size[s, t], held = fraction, True
    portfolio = vbt.Portfolio.from_orders(
        close.T, size.T, size_type="targetpercent", fees=0.0, init_cash=initial, cash_sharing=True,
        group_by=True, call_seq="auto", freq="1h", engine="numba",
    )
    return portfolio.value().to_numpy()
