"""Baseline: vectorbt on the same aligned (symbols x time) close array our engine reads.

    run_rsi(close, period, oversold, overbought, fee_pct, initial, rsi="talib", engine="numba")

How vectorbt is configured to follow SPEC sections 3 and 4:

- Gaps. Our arrays have NaN where a symbol has no bar, and SPEC says a missing bar
  is not a bar. vectorbt's indicators and simulation would see the NaN (an RSI
  diff across a gap is NaN, its EWM restarts...), so each symbol's bars are first
  compacted to the front of its column, in time order, with the NaN moved to the
  end. Indicators, signals and fills then run over the symbol's own bars.
- RSI. `rsi="talib"` (default) runs TA-Lib's RSI through vectorbt's indicator
  factory (`vbt.IndicatorFactory.from_talib("RSI")`): SPEC's RSI exactly.
  `rsi="vbt"` runs vectorbt's own `vbt.RSI.run(window=2 * period - 1, ewm=True)`:
  span 2p-1 gives Wilder's smoothing factor 1/p, but vectorbt seeds the average
  with the first change instead of the mean of the first p changes, and its first
  value comes at bar 2p-1 instead of p. The difference decays like (1 - 1/p)^n
  (below 1e-9 after ~300 bars for p = 14) but can move or drop crossings near the
  start, so final values can differ. vectorbt's default `vbt.RSI.run(close, 14)`
  (ewm=False) is Cutler's rolling-mean RSI, not Wilder's.
- Signals. Computed with numpy as SPEC writes them (`rsi[t] < os <= rsi[t-1]`,
  `rsi[t] > ob >= rsi[t-1]`). vectorbt's `rsi_crossed_below/above` agree except at
  exact equality with the threshold on a symbol's first RSI bar.
- Orders. `Portfolio.from_signals(direction="longonly", accumulate=False,
  size=np.inf, init_cash=initial)` at the signal bar's close: all-in / all-out, one
  position, repeated entries ignored.
- Fees. vectorbt charges `fees * order value` on top of the order, so an all-in buy
  gets `units = cash / ((1 + f) * price)`, while SPEC takes the fee out of the cash:
  `units = cash * (1 - f) / price` (relative difference about f^2, 1e-6 per buy at
  f = 0.1 %). The fee array therefore holds `f / (1 - f)` on entry bars and `f`
  elsewhere: vectorbt then buys `cash * (1 - f) / price` units for a fee of
  `cash * f`, and sells for `units * price * (1 - f)`, both as SPEC says.
- Final value. Cash plus units times the symbol's last close (its last bar, not
  the grid's last column), read from vectorbt's cash and asset series at that bar.
- Engine. vectorbt 1.2 dispatches its simulation and its cash / asset series to
  the Rust kernels of the `vectorbt-rust` package when `engine="rust"` (per call,
  or `vbt.settings["engine"]`), to its Numba kernels with `engine="numba"`; its
  default, "auto", takes Rust whenever vectorbt-rust is installed. The engine is
  passed explicitly so that each benchmark row measures the engine it names. The
  RSI is TA-Lib's either way (C, not vectorbt's).
"""

from __future__ import annotations

import numpy as np
import vectorbt as vbt

from bench.baselines._grid import compact

_TALIB_RSI = None


def _talib_rsi_indicator():
    global _TALIB_RSI
    if _TALIB_RSI is None:
        _TALIB_RSI = vbt.IndicatorFactory.from_talib("RSI")
    return _TALIB_RSI


def rsi_matrix(close_tx: np.ndarray, period: int, rsi: str = "talib") -> np.ndarray:
    """RSI of a (time x symbols) array through vectorbt (see the module docstring)."""
    if rsi == "talib":
        return np.asarray(
            _talib_rsi_indicator().run(close_tx, timeperiod=period).real, dtype=np.float64
        )
    if rsi == "vbt":
        out = vbt.RSI.run(close_tx, window=2 * period - 1, ewm=True, adjust=False).rsi
        return np.asarray(out, dtype=np.float64)
    raise ValueError(f"rsi must be 'talib' or 'vbt', got {rsi!r}")


def run_rsi(
    close: np.ndarray,
    period: int = 14,
    oversold: float = 30,
    overbought: float = 70,
    fee_pct: float = 0.1,
    initial: float = 1000.0,
    rsi: str = "talib",
    engine: str = "numba",
) -> dict[str, np.ndarray]:
    """vectorbt RSI strategy over (symbols x time) closes with NaN gaps.

    Returns {"final_value": float64[symbols], "num_trades": int64[symbols]} (entries).
    """
    packed, bars = compact(close)
    n_symbols = packed.shape[0]
    if packed.shape[1] == 0:
        return {
            "final_value": np.full(n_symbols, float(initial)),
            "num_trades": np.zeros(n_symbols, np.int64),
        }
    close_tx = np.ascontiguousarray(packed.T)  # vectorbt: rows are time, columns are symbols
    values = rsi_matrix(close_tx, period, rsi)
    prev = np.vstack([np.full((1, n_symbols), np.nan), values[:-1]])
    with np.errstate(invalid="ignore"):
        entries = (values < oversold) & (prev >= oversold)
        exits = (values > overbought) & (prev <= overbought)
    f = fee_pct / 100.0
    fees = np.where(entries, f / (1.0 - f), f)
    pf = vbt.Portfolio.from_signals(
        close_tx,
        entries,
        exits,
        size=np.inf,
        fees=fees,
        init_cash=float(initial),
        direction="longonly",
        accumulate=False,
        engine=engine,
    )
    cash = np.asarray(pf.cash(), dtype=np.float64).reshape(close_tx.shape)
    assets = np.asarray(pf.assets(), dtype=np.float64).reshape(close_tx.shape)
    last = np.maximum(bars - 1, 0)
    cols = np.arange(n_symbols)
    final_value = cash[last, cols] + assets[last, cols] * np.where(
        bars > 0, close_tx[last, cols], 0.0
    )
    final_value = np.where(bars > 0, final_value, float(initial))
    records = pf.orders.values
    buys = records["col"][records["side"] == 0]
    num_trades = np.bincount(buys, minlength=n_symbols).astype(np.int64)
    return {"final_value": final_value, "num_trades": num_trades}
