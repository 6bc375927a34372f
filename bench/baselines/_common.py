"""Helpers shared by the two seed baselines: the pandas RSI, the symbol list, the URL form.

`wilder_rsi` is the indicator both seed baselines use. The seeds' own RSI was a
rolling-mean (Cutler) RSI, a defect the README of the seeds tells us not to carry
over; this one is Wilder's RSI written with pandas and seeded like TA-Lib's `RSI`
(SPEC section 3), so the baselines compute the same thing our engine computes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import psycopg

SYMBOLS_QUERY = """
    SELECT c.id, c.symbol
    FROM cryptocurrencies c
    WHERE EXISTS (
        SELECT 1 FROM crypto_prices p WHERE p.crypto_id = c.id AND p.interval_type = %s
    )
    ORDER BY c.symbol
"""

PRICES_QUERY = """
    SELECT datetime, open_price, high_price, low_price, close_price, volume
    FROM crypto_prices
    WHERE crypto_id = :crypto_id AND interval_type = :interval
    ORDER BY datetime
"""


def sqlalchemy_url(database_url: str) -> str:
    """`postgresql://...` -> `postgresql+psycopg://...` (SQLAlchemy would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


def list_symbols(database_url: str, interval: str, limit: int | None) -> list[tuple[int, str]]:
    """(crypto_id, symbol) of every crypto with bars of `interval`, by symbol; first `limit`."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(SYMBOLS_QUERY, (interval,)).fetchall()
    rows = [(int(i), str(s)) for i, s in rows]
    return rows if limit is None else rows[: int(limit)]


def wilder_rsi(close: pd.Series, period: int) -> pd.Series:
    """Wilder's RSI with pandas, equal to TA-Lib's `RSI` up to float rounding (~1e-13).

    TA-Lib seeds the average gain and loss at bar `period` with the plain mean of the
    first `period` changes, then smooths with `avg = (avg * (period - 1) + x) / period`,
    i.e. an EWM with `alpha = 1 / period, adjust=False`. So: NaN before bar `period`,
    the mean at bar `period`, the raw changes after it, and `ewm(...).mean()` of that
    series (pandas' EWM starts at its first non-NaN value). RSI is
    `100 * gain / (gain + loss)` and 0 where both are 0, as TA-Lib writes it.
    """
    if period < 2:
        raise ValueError(f"rsi_period must be an integer >= 2, got {period!r}")
    n = len(close)
    if n <= period:
        return pd.Series(np.nan, index=close.index, dtype=np.float64)
    delta = close.astype(np.float64).diff()
    gain = delta.clip(lower=0.0)
    loss = (-delta).clip(lower=0.0)

    def smoothed(x: pd.Series) -> pd.Series:
        seeded = x.copy()
        seeded.iloc[:period] = np.nan
        seeded.iloc[period] = x.iloc[1 : period + 1].mean()
        return seeded.ewm(alpha=1.0 / period, adjust=False).mean()

    avg_gain = smoothed(gain)
    avg_loss = smoothed(loss)
    total = avg_gain + avg_loss
    rsi = (100.0 * avg_gain / total).where(total != 0.0, 0.0)
    rsi.iloc[:period] = np.nan
    return rsi


def empty_result(initial: float, bars: int, reason: str) -> dict:
    return {
        "final_value": float(initial),
        "num_trades": 0,
        "trades": [],
        "bars": bars,
        "reason": reason,
    }


def get_price_data(conn, crypto_id: int, interval: str = "1h") -> pd.DataFrame:
    """All rows of one crypto and interval, oldest first, indexed by datetime (the seeds' query)."""
    from sqlalchemy import text

    df = pd.read_sql(text(PRICES_QUERY), conn, params={"crypto_id": crypto_id, "interval": interval})
    if not df.empty:
        df["datetime"] = pd.to_datetime(df["datetime"], utc=True)
        df = df.set_index("datetime")
    return df
