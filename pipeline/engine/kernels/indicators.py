"""Technical indicators as Numba kernels that reproduce TA-Lib bit for bit.

The `_1d` functions take a contiguous float64 series without NaN (the caller
removes missing bars: a missing bar is not a bar) and write into preallocated
outputs, NaN during the warm-up, exactly where TA-Lib is NaN. They follow the
arithmetic of the TA-Lib C library bundled with the `ta-lib` 0.8.x wheels
(C core 0.8.1), operation for operation, so that results are identical and not
merely close:

- SMA: running sum, each value `sum / period`.
- EMA: seeded with the SMA of the first `period` values, then
  `fma(x - prev, k, prev)` with `k = 2 / (period + 1)` (TA-Lib's EMA step is a
  fused multiply-add; a separate multiply and add differs in the last bit);
  period 1 is a copy of the input.
- RSI: Wilder; the first `period` gains/losses averaged, then
  `(avg * (period - 1) + new) * (1 / period)`; output 0 when avg gain + avg loss
  is exactly 0 (older TA-Lib releases compared with a fixed epsilon, 1e-8 then
  1e-14, which zeroed the RSI of satoshi-priced pairs; the bundled one does not).
- BBANDS (SMA middle band): population variance from running sums of
  deviations from a shift, re-anchored to the window mean with a two-pass
  rebuild when cancellation threatens (variance < 1e-6 of the mean squared
  deviation, a departing term > 1e6 times the remaining sum, or every 32
  windows); a rebuilt variance below 1e-12 of its mean square is 0. The
  standard deviation is the plain square root (no fixed epsilon any more).
- MACD: slow and fast EMAs both start at bar `slow - 1` (the fast one seeded
  with the mean of `x[slow-fast:slow]`), signal = EMA of the MACD line, and
  the MACD line is NaN until the signal line exists.

The `_2d` wrappers take (symbols x time) arrays with NaN at missing bars, run
the `_1d` function per row over that row's bars only and put NaN back at the
missing bars.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c with a single rounding (LLVM's llvm.fma: hardware or libm, exact either way)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        dbl = ir.DoubleType()
        fnty = ir.FunctionType(dbl, [dbl, dbl, dbl])
        fn = builder.module.declare_intrinsic("llvm.fma", [dbl], fnty)
        return builder.call(fn, args)

    return sig, codegen


@njit(cache=True)
def fma_nb(a: float, b: float, c: float) -> float:
    """Fused multiply-add, exposed so tests can check it against exact arithmetic."""
    return _fma(float(a), float(b), float(c))


# --- moving averages ----------------------------------------------------------


@njit(cache=True)
def sma_1d(x: np.ndarray, period: int, out: np.ndarray) -> None:
    """Simple moving average (TA-Lib SMA). First value at index period-1."""
    n = x.shape[0]
    out[:] = np.nan
    if period < 1 or n < period:
        return
    total = 0.0
    for i in range(period - 1):
        total += x[i]
    for i in range(period - 1, n):
        total += x[i]
        value = total
        total -= x[i - period + 1]
        out[i] = value / period


@njit(cache=True)
def _ema_from(x, period, k, start, out):
    # TA-Lib's TA_INT_EMA asked for outputs from `start` on: seed with the mean of
    # the `period` values ending at `start`, then step with a fused multiply-add.
    n = x.shape[0]
    if period == 1:
        # TA-Lib copies the input for period 1 (k = 1 would round x - prev + prev).
        for i in range(start, n):
            out[i] = x[i]
        return
    total = 0.0
    for i in range(start - period + 1, start + 1):
        total += x[i]
    prev = total / period
    out[start] = prev
    for i in range(start + 1, n):
        prev = _fma(x[i] - prev, k, prev)
        out[i] = prev


@njit(cache=True)
def ema_1d(x: np.ndarray, period: int, out: np.ndarray) -> None:
    """Exponential moving average (TA-Lib EMA), seeded with the SMA of the first `period` values."""
    n = x.shape[0]
    out[:] = np.nan
    if period < 1 or n < period:
        return
    _ema_from(x, period, 2.0 / (period + 1), period - 1, out)


# --- RSI ----------------------------------------------------------------------


@njit(cache=True)
def rsi_1d(x: np.ndarray, period: int, out: np.ndarray) -> None:
    """Wilder's RSI (TA-Lib RSI). First value at index `period`."""
    n = x.shape[0]
    out[:] = np.nan
    if period < 1 or n <= period:
        return
    if period == 1:
        # TA-Lib copies the input for period 1 (the strategies never allow it).
        for i in range(1, n):
            out[i] = x[i]
        return
    inv = 1.0 / period
    prev_gain = 0.0
    prev_loss = 0.0
    prev_value = x[0]
    for i in range(1, period + 1):
        diff = x[i] - prev_value
        prev_value = x[i]
        if diff < 0.0:
            prev_loss -= diff
        else:
            prev_gain += diff
    prev_loss *= inv
    prev_gain *= inv
    total = prev_gain + prev_loss
    out[period] = 0.0 if total == 0.0 else 100.0 * (prev_gain / total)
    # Wilder's smoothing from here on. The loop above, alike in shape, sums the first `period` moves
    # instead: two loops, so that each keeps TA-Lib's float operations in TA-Lib's order.
    for i in range(period + 1, n):
        diff = x[i] - prev_value
        prev_value = x[i]
        prev_loss *= period - 1
        prev_gain *= period - 1
        if diff < 0.0:
            prev_loss -= diff
        else:
            prev_gain += diff
        prev_loss *= inv
        prev_gain *= inv
        total = prev_gain + prev_loss
        out[i] = 0.0 if total == 0.0 else 100.0 * (prev_gain / total)


# --- Bollinger bands ----------------------------------------------------------


@njit(cache=True)
def bb_std_1d(x: np.ndarray, period: int, middle: np.ndarray, std: np.ndarray) -> None:
    """SMA middle band and population standard deviation, as TA-Lib's BBANDS computes them.

    Split from `bbands_1d` so a sweep over `bb_std` reuses one computation:
    the bands are then `middle +/- std * nbdev`, exactly TA-Lib's last step.
    """
    n = x.shape[0]
    middle[:] = np.nan
    std[:] = np.nan
    if period < 1 or n < period:
        return
    lookback = period - 1
    inv = 1.0 / period
    trailing = 0
    shift = x[0]
    ma_total = 0.0
    total1 = 0.0
    total2 = 0.0
    for j in range(lookback):
        ma_total += x[j]
        d = x[j] - shift
        total1 += d
        total2 += d * d
    bars_since_reseed = 32 * period
    for i in range(lookback, n):
        ma_total += x[i]
        d = x[i] - shift
        total1 += d
        total2 += d * d
        mean1 = total1 * inv
        variance = total2 * inv - mean1 * mean1
        middle[i] = ma_total / period
        ma_total -= x[trailing]
        d = x[trailing] - shift
        total1 -= d
        departing = d * d
        total2 -= departing
        trailing += 1
        bars_since_reseed -= 1
        if (
            variance < 0.000001 * (total2 * inv)
            or departing > 1000000.0 * total2
            or bars_since_reseed <= 0
        ):
            # The shift went stale: rebuild the sums around the window mean.
            bars_since_reseed = 32 * period
            start = i - lookback
            acc = 0.0
            for j in range(start, i + 1):
                acc += x[j]
            shift = acc * inv
            total1 = 0.0
            total2 = 0.0
            for j in range(start, i + 1):
                d = x[j] - shift
                total1 += d
                total2 += d * d
            mean1 = total1 * inv
            variance = total2 * inv - mean1 * mean1
            if variance < 0.000000000001 * (total2 * inv):
                variance = 0.0
            d = x[start] - shift
            total1 -= d
            total2 -= d * d
        std[i] = np.sqrt(variance)


@njit(cache=True)
def bands_from_std_1d(
    middle: np.ndarray, std: np.ndarray, nbdev: float, upper: np.ndarray, lower: np.ndarray
) -> None:
    """upper/lower = middle +/- std * nbdev (NaN stays NaN)."""
    for i in range(middle.shape[0]):
        width = std[i] * nbdev
        upper[i] = middle[i] + width
        lower[i] = middle[i] - width


@njit(cache=True)
def bbands_1d(
    x: np.ndarray,
    period: int,
    nbdev: float,
    upper: np.ndarray,
    middle: np.ndarray,
    lower: np.ndarray,
) -> None:
    """Bollinger bands (TA-Lib BBANDS, matype=SMA, nbdevup = nbdevdn = nbdev)."""
    std = np.empty(x.shape[0])
    bb_std_1d(x, period, middle, std)
    bands_from_std_1d(middle, std, nbdev, upper, lower)


# --- MACD ---------------------------------------------------------------------


@njit(cache=True)
def macd_1d(
    x: np.ndarray,
    fast: int,
    slow: int,
    signal: int,
    macd_out: np.ndarray,
    signal_out: np.ndarray,
) -> None:
    """MACD line and signal line (TA-Lib MACD). Both first valid at index slow + signal - 2."""
    n = x.shape[0]
    macd_out[:] = np.nan
    signal_out[:] = np.nan
    if slow < fast:
        fast, slow = slow, fast
    if fast < 1 or signal < 1:
        return
    first = slow - 1 + signal - 1
    if n <= first:
        return
    # Both EMAs start at bar slow-1, so the fast one is seeded with x[slow-fast:slow].
    k_slow = 2.0 / (slow + 1)
    k_fast = 2.0 / (fast + 1)
    slow_total = 0.0
    for i in range(slow):
        slow_total += x[i]
    fast_total = 0.0
    for i in range(slow - fast, slow):
        fast_total += x[i]
    slow_prev = slow_total / slow
    fast_prev = fast_total / fast
    macd_out[slow - 1] = fast_prev - slow_prev
    for i in range(slow, n):
        # A period-1 EMA is the input itself, as in ema_1d.
        slow_prev = x[i] if slow == 1 else _fma(x[i] - slow_prev, k_slow, slow_prev)
        fast_prev = x[i] if fast == 1 else _fma(x[i] - fast_prev, k_fast, fast_prev)
        macd_out[i] = fast_prev - slow_prev
    _ema_from(macd_out, signal, 2.0 / (signal + 1), first, signal_out)
    # TA-Lib reports the MACD line only where the signal line exists.
    for i in range(slow - 1, first):
        macd_out[i] = np.nan


# --- 2-D wrappers (symbols x time, NaN = no bar) ------------------------------


@njit(cache=True)
def compact_1d(row: np.ndarray, buf: np.ndarray, index: np.ndarray) -> int:
    """Copy the non-NaN values of `row` into `buf` and their positions into `index`; return the count."""
    m = 0
    for t in range(row.shape[0]):
        v = row[t]
        if not np.isnan(v):
            buf[m] = v
            index[m] = t
            m += 1
    return m


_SMA, _EMA, _RSI, _BBANDS, _MACD = 0, 1, 2, 3, 4


@njit(cache=True, parallel=True)
def _rows_2d(kind: int, x: np.ndarray, p0: float, p1: float, p2: float) -> np.ndarray:
    """Apply one 1-D indicator to every row over the row's bars only; NaN at missing bars.

    Returns (3 x S x T): the indicator's outputs in its 1-D order (unused planes stay NaN).
    """
    s_count, t_count = x.shape
    out = np.full((3, s_count, t_count), np.nan)
    for s in prange(s_count):
        buf = np.empty(t_count)
        index = np.empty(t_count, dtype=np.int64)
        res = np.full((3, t_count), np.nan)
        m = compact_1d(x[s], buf, index)
        if kind == _SMA:
            sma_1d(buf[:m], int(p0), res[0, :m])
        elif kind == _EMA:
            ema_1d(buf[:m], int(p0), res[0, :m])
        elif kind == _RSI:
            rsi_1d(buf[:m], int(p0), res[0, :m])
        elif kind == _BBANDS:
            bbands_1d(buf[:m], int(p0), p1, res[0, :m], res[1, :m], res[2, :m])
        else:
            macd_1d(buf[:m], int(p0), int(p1), int(p2), res[0, :m], res[1, :m])
        for k in range(3):
            for j in range(m):
                out[k, s, index[j]] = res[k, j]
    return out


def sma_2d(x: np.ndarray, period: int) -> np.ndarray:
    """SMA per row over the row's bars only; NaN at missing bars."""
    return _rows_2d(_SMA, x, period, 0.0, 0.0)[0]


def ema_2d(x: np.ndarray, period: int) -> np.ndarray:
    """EMA per row over the row's bars only; NaN at missing bars."""
    return _rows_2d(_EMA, x, period, 0.0, 0.0)[0]


def rsi_2d(x: np.ndarray, period: int) -> np.ndarray:
    """RSI per row over the row's bars only; NaN at missing bars."""
    return _rows_2d(_RSI, x, period, 0.0, 0.0)[0]


def bbands_2d(x: np.ndarray, period: int, nbdev: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bollinger bands per row over the row's bars only; returns (upper, middle, lower)."""
    upper, middle, lower = _rows_2d(_BBANDS, x, period, nbdev, 0.0)
    return upper, middle, lower


def macd_2d(x: np.ndarray, fast: int, slow: int, signal: int) -> tuple[np.ndarray, np.ndarray]:
    """MACD per row over the row's bars only; returns (macd, signal)."""
    planes = _rows_2d(_MACD, x, fast, slow, signal)
    return planes[0], planes[1]
