"""A synthetic but realistic crypto market, for `db seed`, the demo lake and benchmarks.

What makes it realistic enough to test against: listing dates differ (histories have
different lengths, as real coins do), returns have fat tails and volatility clusters
(GARCH(1,1)), exchanges have outages (gaps of missing hours), bars are consistent
(low <= open, close <= high) and prices stay strictly positive. Same seed, same market.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from numba import njit

HOURS_PER_YEAR = 8760
# A fixed end keeps `--seed N` reproducible whatever day it runs.
DEFAULT_END = datetime(2025, 10, 1, tzinfo=UTC)


@njit(cache=True)
def _garch_log_returns(shocks: np.ndarray, omega: float, alpha: float, beta: float) -> np.ndarray:
    # Volatility clustering: today's variance feeds on yesterday's squared return.
    out = np.empty_like(shocks)
    variance = omega / (1.0 - alpha - beta)
    for t in range(shocks.shape[0]):
        r = np.sqrt(variance) * shocks[t]
        out[t] = r
        variance = omega + alpha * r * r + beta * variance
    return out


def symbol_names(n: int) -> list[str]:
    """Stable synthetic tickers: SYN000, SYN001, ..."""
    return [f"SYN{i:03d}" for i in range(n)]


def generate_symbol(rng: np.random.Generator, hours: int, start: datetime) -> pl.DataFrame:
    """One symbol's hourly bars over `hours` hours from `start` (before listing and gaps removed)."""
    listed_share = rng.uniform(0.15, 1.0) if rng.random() < 0.45 else 1.0
    first_hour = int(hours * (1.0 - listed_share))
    n = hours - first_hour
    # Student-t shocks (fat tails), scaled to unit variance.
    dof = 4.0
    shocks = rng.standard_t(dof, size=n) / np.sqrt(dof / (dof - 2.0))
    hourly_vol = rng.uniform(0.004, 0.02)
    alpha, beta = 0.08, 0.90
    omega = hourly_vol**2 * (1.0 - alpha - beta)
    log_returns = _garch_log_returns(shocks, omega, alpha, beta) + rng.normal(0.0, 2e-5)
    start_price = float(np.exp(rng.uniform(np.log(0.001), np.log(50_000.0))))
    close = start_price * np.exp(np.cumsum(log_returns))
    open_ = np.empty(n)
    open_[0] = start_price
    open_[1:] = close[:-1]
    wick = np.abs(rng.normal(0.0, hourly_vol * 0.6, size=(2, n)))
    high = np.maximum(open_, close) * (1.0 + wick[0])
    low = np.minimum(open_, close) / (1.0 + wick[1])
    volume = np.exp(rng.normal(np.log(1e5 / np.sqrt(start_price)), 0.8, size=n)) * (
        1.0 + 50.0 * np.abs(log_returns)
    )
    # Exchanges quote on a tick (here 6 significant digits of the bar's close) and
    # volumes in lots; one tick per bar keeps low <= open, close <= high after rounding.
    tick = 10.0 ** (np.floor(np.log10(close)) - 5)
    open_, high, low, close = (np.round(x / tick) * tick for x in (open_, high, low, close))
    volume = np.round(volume, 2)
    keep = np.ones(n, dtype=bool)
    for _ in range(rng.poisson(3)):  # exchange outages
        at = int(rng.integers(0, n))
        keep[at: at + int(rng.integers(1, 49))] = False
    keep[0] = True
    start_us = int((start + timedelta(hours=first_hour)).timestamp()) * 1_000_000
    ts = start_us + np.arange(n, dtype=np.int64) * 3_600_000_000
    return pl.DataFrame({
        "ts": ts[keep], "open": open_[keep], "high": high[keep], "low": low[keep],
        "close": close[keep], "volume": volume[keep],
    }).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))


def generate_market(
    n_symbols: int, years: float, seed: int = 42, end: datetime = DEFAULT_END
) -> tuple[list[str], pl.DataFrame]:
    """Hourly bars for `n_symbols` synthetic symbols: (symbols, frame with `symbol_index`)."""
    if n_symbols < 1:
        raise ValueError(f"n_symbols={n_symbols} must be >= 1")
    if years <= 0:
        raise ValueError(f"years={years} must be > 0")
    hours = int(round(years * HOURS_PER_YEAR))
    start = end - timedelta(hours=hours)
    rng = np.random.default_rng(seed)
    parts = [
        generate_symbol(rng, hours, start).with_columns(pl.lit(i, pl.Int32).alias("symbol_index"))
        for i in range(n_symbols)
    ]
    return symbol_names(n_symbols), pl.concat(parts)
