"""`cryptobt db import` (issue 25): every interval end to end, users' narrower columns, bounded memory.

Real PostgreSQL, the real `cryptobt` CLI in a subprocess, real files.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest

from pipeline import intervals
from tests.test_data_trust import cli, env  # noqa: F401 - `env` is a fixture used by the tests below

# Mondays, so that a weekly file's bars are the open times of weeks (SPEC 4.2).
_START = {"1m": datetime(2024, 3, 4), "1w": datetime(2015, 1, 5)}


def _bars_csv(path: Path, interval: str, n: int, seed: int = 7) -> pl.DataFrame:
    """`n` bars of `interval` as a user's CSV (Date, Open, ... Volume), returned as written."""
    rng = np.random.default_rng(seed)
    close = 40 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[40.0, close[:-1]]
    start = _START.get(interval, _START["1m"] if intervals.SECONDS[interval] < 86_400 else datetime(2019, 1, 7))
    frame = pl.DataFrame({
        "Date": [start + intervals.delta(interval) * i for i in range(n)],
        "Open": open_, "High": np.maximum(open_, close) * 1.003, "Low": np.minimum(open_, close) * 0.997,
        "Close": close, "Volume": rng.uniform(1.0, 100.0, n),
    })
    frame.write_csv(path)
    return frame


def _pg_intervals(url: str, symbol: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute(
            "SELECT p.interval_type, count(*) FROM crypto_prices p JOIN cryptocurrencies c ON c.id = p.crypto_id "
            "WHERE c.symbol = %s GROUP BY 1", (symbol,)).fetchall())


def _buckets(frame: pl.DataFrame, interval: str) -> pl.DataFrame:
    """Reference resampling of a file's bars (weeks start on Monday; polars' do too)."""
    return (frame.with_columns(pl.col("Date").dt.truncate(intervals.POLARS_EVERY[interval]))
            .group_by("Date", maintain_order=True).agg(pl.col("Close").last()))


@pytest.mark.parametrize("native", intervals.NAMES)
def test_every_interval_imports_exports_and_backtests(env, tmp_path, native):  # noqa: F811
    n = 240
    frame = _bars_csv(tmp_path / "SYM.csv", native, n)
    coarser = intervals.coarser_than(native, intervals.NAMES)
    every = {**env, "CRYPTOBT_DERIVED_INTERVALS": ",".join(intervals.NAMES)}
    cli(every, "db", "init")
    imported = cli(every, "db", "import", str(tmp_path / "SYM.csv"))
    assert f"at {native}" in imported.stdout
    # PostgreSQL holds the file's interval under its own name, and every coarser one.
    stored = _pg_intervals(env["DATABASE_URL"], "SYM")
    assert stored == {native: n, **{c: _buckets(frame, c).height for c in coarser}}
    cli(every, "export", "--no-prefect")
    # Backtested at its own interval and at the next coarser one with at least two bars.
    checked = [native, *[c for c in coarser if _buckets(frame, c).height >= 2][:1]]
    for interval in checked:
        expected = _buckets(frame, interval)
        done = cli(every, "backtest", "buy_and_hold", "-s", "SYM", "--interval", interval, "--json")
        (result,) = json.loads(done.stdout)
        assert result["interval"] == interval
        assert result["bars"] == expected.height
        assert datetime.fromisoformat(result["start"]).replace(tzinfo=None) == expected["Date"][0]
        bh = (expected["Close"][-1] / expected["Close"][0] - 1) * 100
        assert result["buy_hold_return_pct"] == pytest.approx(bh, rel=1e-12)
    # Re-importing the same file changes nothing.
    assert f"at {native}: 0 rows changed" in cli(every, "db", "import", str(tmp_path / "SYM.csv")).stdout
