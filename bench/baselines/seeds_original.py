"""Baseline: the seeds' ORIGINAL approach, with SPEC's semantics.

As the users' first backtester did it (performance-guide.md, "Current Performance
Analysis"): cryptos one after the other; per crypto one SQL query that fetches all
of its hourly rows into a DataFrame with `pandas.read_sql` (SQLAlchemy + psycopg);
the RSI computed with pandas on a copy of the frame; then a row-by-row
`df.iterrows()` loop that tracks the position and records the trades.

Changed from the seeds so that the numbers are comparable with our engine: Wilder's
RSI seeded like TA-Lib (`_common.wilder_rsi`, not the seeds' rolling mean), the
crossing rules of SPEC section 3, SPEC section 4's fee formulas, fills at the
signal bar's close, and an open position marked at the last close (not sold).
The query filters on `interval_type = '1h'` (the seeds' query had no interval
filter and would have mixed daily bars into the hourly series).
"""

from __future__ import annotations

import math

import pandas as pd
from sqlalchemy import create_engine

from bench.baselines._common import (
    empty_result,
    get_price_data,
    list_symbols,
    sqlalchemy_url,
    wilder_rsi,
)


def backtest_rsi_iterrows(
    df: pd.DataFrame,
    period: int,
    oversold: float,
    overbought: float,
    fee_pct: float,
    initial: float,
) -> dict:
    """The seeds' per-row loop over `df.iterrows()` (SPEC section 4 semantics)."""
    if len(df) <= period:
        return empty_result(initial, len(df), "insufficient data for the RSI warm-up")
    df = df.copy()
    df["rsi"] = wilder_rsi(df["close_price"], period)
    fee_rate = fee_pct / 100.0
    cash = float(initial)
    units = 0.0
    holding = False
    prev_rsi = math.nan
    trades: list[tuple[int, str, float]] = []
    for i, (_, row) in enumerate(df.iterrows()):
        rsi = row["rsi"]
        price = float(row["close_price"])
        if not holding:
            if rsi < oversold and prev_rsi >= oversold:  # NaN compares False: no signal in warm-up
                fee = cash * fee_rate
                units = (cash - fee) / price
                cash = 0.0
                holding = True
                trades.append((i, "buy", price))
        elif rsi > overbought and prev_rsi <= overbought:
            proceeds = units * price
            fee = proceeds * fee_rate
            cash = proceeds - fee
            units = 0.0
            holding = False
            trades.append((i, "sell", price))
        prev_rsi = rsi
    last_close = float(df["close_price"].iloc[-1])
    final_value = cash + units * last_close
    return {
        "final_value": final_value,
        "num_trades": sum(1 for t in trades if t[1] == "buy"),
        "trades": trades,
        "bars": len(df),
    }


def run_rsi_all(
    database_url: str,
    period: int = 14,
    oversold: float = 30,
    overbought: float = 70,
    fee_pct: float = 0.1,
    initial: float = 1000.0,
    limit_symbols: int | None = None,
) -> dict[str, dict]:
    """RSI over every crypto's hourly bars, sequentially: {symbol: {final_value, num_trades, trades}}.

    `trades` is `[(bar_index, 'buy' | 'sell', price)]`, bar_index counting the symbol's
    own bars from 0. `limit_symbols` keeps the first N symbols in symbol order.
    """
    cryptos = list_symbols(database_url, "1h", limit_symbols)
    engine = create_engine(sqlalchemy_url(database_url))
    results: dict[str, dict] = {}
    try:
        with engine.connect() as conn:
            for crypto_id, symbol in cryptos:
                df = get_price_data(conn, crypto_id, "1h")
                results[symbol] = backtest_rsi_iterrows(
                    df, period, oversold, overbought, fee_pct, initial
                )
    finally:
        engine.dispose()
    return results
