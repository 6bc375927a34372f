"""Baseline: the seeds' PHASE 1 + 2 approach, with SPEC's semantics.

As the users' current backtester does it (performance-guide.md, "Implementation
Status"): daily bars by default (`interval_type = '1d'` in the query; hourly on
request), the RSI and both crossing signals vectorised with pandas (`shift(1)`),
a plain Python loop over the signal rows only to track the position, and a
`multiprocessing.Pool` over the cryptos with `min(cpu_count, cryptos, 8)`
processes, each worker with its own database connection (an SQLAlchemy engine
made in the worker's initializer).

Changed from the seeds so that the numbers are comparable with our engine: Wilder's
RSI seeded like TA-Lib (`_common.wilder_rsi`); the seeds' vectorised position
tracker (`ffill` of +1/-1 signals) is replaced by a loop over the signal rows that
follows SPEC section 4 (a signal that does not change the state is ignored; the
seeds' tracker could "sell" while flat), SPEC's fee formulas, fills at the signal
bar's close, and an open position marked at the last close.
"""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pandas as pd
from sqlalchemy import create_engine

from bench.baselines._common import (
    empty_result,
    get_price_data,
    list_symbols,
    sqlalchemy_url,
    wilder_rsi,
)

_engine = None  # one per worker process


def _init_worker(database_url: str) -> None:
    global _engine
    _engine = create_engine(sqlalchemy_url(database_url), pool_size=1, max_overflow=0)


def backtest_rsi_vectorized(
    df: pd.DataFrame,
    period: int,
    oversold: float,
    overbought: float,
    fee_pct: float,
    initial: float,
) -> dict:
    """Signals with pandas, then a loop over the signal rows only (SPEC section 4)."""
    if len(df) <= period:
        return empty_result(initial, len(df), "insufficient data for the RSI warm-up")
    rsi = wilder_rsi(df["close_price"], period)
    prev = rsi.shift(1)
    buy_signal = ((rsi < oversold) & (prev >= oversold)).to_numpy()
    sell_signal = ((rsi > overbought) & (prev <= overbought)).to_numpy()
    close = df["close_price"].to_numpy(dtype=np.float64)
    fee_rate = fee_pct / 100.0
    cash = float(initial)
    units = 0.0
    holding = False
    trades: list[tuple[int, str, float]] = []
    for i in np.flatnonzero(buy_signal | sell_signal):
        price = float(close[i])
        if not holding and buy_signal[i]:
            fee = cash * fee_rate
            units = (cash - fee) / price
            cash = 0.0
            holding = True
            trades.append((int(i), "buy", price))
        elif holding and sell_signal[i]:
            proceeds = units * price
            fee = proceeds * fee_rate
            cash = proceeds - fee
            units = 0.0
            holding = False
            trades.append((int(i), "sell", price))
    final_value = cash + units * float(close[-1])
    return {
        "final_value": final_value,
        "num_trades": sum(1 for t in trades if t[1] == "buy"),
        "trades": trades,
        "bars": len(df),
    }


def _run_one(
    crypto_id: int,
    symbol: str,
    interval: str,
    period: int,
    oversold: float,
    overbought: float,
    fee_pct: float,
    initial: float,
) -> tuple[str, dict]:
    with _engine.connect() as conn:
        df = get_price_data(conn, crypto_id, interval)
    return symbol, backtest_rsi_vectorized(df, period, oversold, overbought, fee_pct, initial)


def run_rsi_all(
    database_url: str,
    period: int = 14,
    oversold: float = 30,
    overbought: float = 70,
    fee_pct: float = 0.1,
    initial: float = 1000.0,
    limit_symbols: int | None = None,
    interval: str = "1d",
    processes: int | None = None,
) -> dict[str, dict]:
    """RSI over every crypto in parallel: {symbol: {final_value, num_trades, trades}}.

    `interval` is '1d' (the seeds' phase-1 default) or '1h'. `processes` defaults to
    the seeds' `min(cpu_count, cryptos, 8)`. `trades` is `[(bar_index, 'buy' | 'sell',
    price)]`, bar_index counting the symbol's own bars from 0.
    """
    if interval not in ("1h", "1d"):
        raise ValueError(f"interval must be '1h' or '1d', got {interval!r}")
    cryptos = list_symbols(database_url, interval, limit_symbols)
    if not cryptos:
        return {}
    if processes is None:
        processes = min(os.cpu_count() or 1, len(cryptos), 8)
    args = [
        (cid, sym, interval, period, oversold, overbought, fee_pct, initial) for cid, sym in cryptos
    ]
    with multiprocessing.Pool(
        processes=processes, initializer=_init_worker, initargs=(database_url,)
    ) as pool:
        results = pool.starmap(_run_one, args)
    return dict(results)
