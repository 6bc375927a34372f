"""Small OHLCV CSV files as a user exports them (a `date` column, lower-case OHLCV), for imports in tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl


def daily_csv(path: Path, days: int = 300) -> None:
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, days)))
    open_ = np.r_[100.0, close[:-1]]
    pl.DataFrame({"date": [(datetime(2020, 1, 1) + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(days)],
                  "open": open_, "high": np.maximum(open_, close) * 1.01, "low": np.minimum(open_, close) * 0.99,
                  "close": close, "volume": rng.uniform(1e5, 1e6, days)}).write_csv(path)


def hourly_csv(path: Path, hours: int = 2000) -> None:
    rng = np.random.default_rng(4)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.005, hours)))
    open_ = np.r_[100.0, close[:-1]]
    pl.DataFrame({"date": [(datetime(2020, 1, 1) + timedelta(hours=i)).strftime("%Y-%m-%d %H:%M:%S")
                           for i in range(hours)],
                  "open": open_, "high": np.maximum(open_, close) * 1.002, "low": np.minimum(open_, close) * 0.998,
                  "close": close, "volume": rng.uniform(1e3, 1e4, hours)}).write_csv(path)
