"""The benchmark's baselines (bench/baselines) compute what SPEC sections 3 and 4 say.

Real PostgreSQL: a fresh database per module with the schema of sql/*.sql, three
symbols of ~600 hourly bars of a random walk (one of them with missing hours) and
their daily bars. Each baseline is checked against a small loop written here from
SPEC section 4 over TA-Lib's RSI: the seed baselines to rtol 1e-9 with the same
trade list, vectorbt to rtol 1e-6 with the same number of entries.
"""

from __future__ import annotations

import importlib
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("sqlalchemy")
psycopg = pytest.importorskip("psycopg")
talib = pytest.importorskip("talib")
from psycopg import sql  # noqa: E402

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
START = datetime(2024, 1, 1, tzinfo=UTC)
N_HOURS = 600
GAP_HOURS = (50, 51, 52, 230, 231, 400, 555)  # removed from GAPPY's hourly bars
SYMBOLS = ("AAA", "BBB", "GAPPY")


def spec_reference(
    close, period: int, oversold: float, overbought: float, fee_pct: float, initial: float
) -> tuple[float, list[tuple[int, str, float]]]:
    """SPEC section 4, bar by bar over one symbol's bars, with TA-Lib's RSI."""
    close = np.asarray(close, dtype=np.float64)
    rsi = talib.RSI(close, timeperiod=period)
    f = fee_pct / 100.0
    cash, units, holding = float(initial), 0.0, False
    trades: list[tuple[int, str, float]] = []
    for t in range(1, len(close)):
        now, before = float(rsi[t]), float(rsi[t - 1])
        if math.isnan(now) or math.isnan(before):
            continue
        price = float(close[t])
        if not holding and now < oversold and before >= oversold:
            fee = cash * f
            units = (cash - fee) / price
            cash, holding = 0.0, True
            trades.append((t, "buy", price))
        elif holding and now > overbought and before <= overbought:
            proceeds = units * price
            cash = proceeds - proceeds * f
            units, holding = 0.0, False
            trades.append((t, "sell", price))
    return cash + units * float(close[-1]), trades


def _random_walk_bars(rng: np.random.Generator, n: int) -> list[tuple]:
    close = 100.0 * np.exp(np.cumsum(0.012 * rng.standard_normal(n)))
    opens = np.concatenate([[100.0], close[:-1]])
    wick = 1.0 + 0.003 * rng.random((2, n))
    high = np.maximum(opens, close) * wick[0]
    low = np.minimum(opens, close) / wick[1]
    volume = 1000.0 * rng.random(n)
    return [
        (
            START + timedelta(hours=i),
            float(opens[i]),
            float(high[i]),
            float(low[i]),
            float(close[i]),
            float(volume[i]),
        )
        for i in range(n)
    ]


def _daily(hourly: list[tuple]) -> list[tuple]:
    days: dict = {}
    for row in hourly:
        days.setdefault(row[0].date(), []).append(row)
    out = []
    for day, rows in sorted(days.items()):
        out.append(
            (
                datetime(day.year, day.month, day.day, tzinfo=UTC),
                rows[0][1],
                max(r[2] for r in rows),
                min(r[3] for r in rows),
                rows[-1][4],
                sum(r[5] for r in rows),
            )
        )
    return out


@pytest.fixture(scope="module")
def seeded_db(pg_admin_url):
    """(database url, {symbol: {'1h': rows, '1d': rows}}); the database is dropped at the end (one per
    module, so not conftest's make_database, which is per test)."""
    admin = pg_admin_url
    with psycopg.connect(admin, autocommit=True) as conn:
        name = f"cryptobt_test_{uuid.uuid4().hex[:12]}"
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = admin.rsplit("/", 1)[0] + "/" + name
    try:
        rng = np.random.default_rng(20240101)
        data: dict[str, dict[str, list[tuple]]] = {}
        with psycopg.connect(url) as conn:
            for path in sorted(SQL_DIR.glob("*.sql")):  # not sql/queries/
                conn.execute(path.read_text())
            for symbol in SYMBOLS:
                hourly = _random_walk_bars(rng, N_HOURS)
                if symbol == "GAPPY":
                    hourly = [row for i, row in enumerate(hourly) if i not in GAP_HOURS]
                data[symbol] = {"1h": hourly, "1d": _daily(hourly)}
                crypto_id = conn.execute(
                    "INSERT INTO cryptocurrencies (symbol, name) VALUES (%s, %s) RETURNING id",
                    (symbol, symbol),
                ).fetchone()[0]
                with conn.cursor().copy(
                    "COPY crypto_prices (crypto_id, interval_type, datetime, open_price, high_price,"
                    " low_price, close_price, volume) FROM STDIN"
                ) as copy:
                    for interval in ("1h", "1d"):
                        for row in data[symbol][interval]:
                            copy.write_row((crypto_id, interval, *row))
        yield url, data
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _closes(data, symbol: str, interval: str = "1h") -> np.ndarray:
    return np.array([row[4] for row in data[symbol][interval]])


def _check_against_reference(got: dict, data, interval: str, params: tuple) -> int:
    assert sorted(got) == sorted(SYMBOLS)
    total = 0
    for symbol in SYMBOLS:
        want_value, want_trades = spec_reference(_closes(data, symbol, interval), *params)
        assert got[symbol]["trades"] == want_trades, symbol
        assert got[symbol]["num_trades"] == sum(1 for t in want_trades if t[1] == "buy")
        assert got[symbol]["final_value"] == pytest.approx(want_value, rel=1e-9, abs=0), symbol
        total += len(want_trades)
    return total


PARAMS = [(14, 30.0, 70.0, 0.1, 1000.0), (9, 35.0, 60.0, 0.25, 500.0)]


@pytest.mark.parametrize("params", PARAMS)
def test_seeds_original_follows_spec(seeded_db, params):
    from bench.baselines import seeds_original

    url, data = seeded_db
    got = seeds_original.run_rsi_all(url, *params)
    assert _check_against_reference(got, data, "1h", params) >= 4  # the data has trades to compare
    assert seeds_original.run_rsi_all(url, *params, limit_symbols=1).keys() == {"AAA"}


@pytest.mark.parametrize("params", PARAMS)
def test_seeds_phase12_hourly_follows_spec(seeded_db, params):
    from bench.baselines import seeds_phase12

    url, data = seeded_db
    got = seeds_phase12.run_rsi_all(url, *params, interval="1h", processes=2)
    assert _check_against_reference(got, data, "1h", params) >= 4


def test_seeds_phase12_daily_follows_spec(seeded_db):
    from bench.baselines import seeds_phase12

    url, data = seeded_db
    params = (3, 40.0, 60.0, 0.1, 1000.0)  # 25 daily bars: a short RSI so that there are trades
    got = seeds_phase12.run_rsi_all(url, *params)  # interval '1d' is the default
    assert _check_against_reference(got, data, "1d", params) >= 1
    for symbol in SYMBOLS:
        assert got[symbol]["bars"] == len(data[symbol]["1d"])


def test_pandas_rsi_matches_talib(seeded_db):
    from bench.baselines._common import wilder_rsi

    _, data = seeded_db
    close = _closes(data, "AAA")
    for period in (2, 14, 30):
        got = wilder_rsi(pd.Series(close), period).to_numpy()
        want = talib.RSI(close, timeperiod=period)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-10, equal_nan=True)
    flat = np.full(40, 5.0)  # no change at all: TA-Lib writes 0
    np.testing.assert_array_equal(
        wilder_rsi(pd.Series(flat), 14).to_numpy()[14:], talib.RSI(flat, 14)[14:]
    )


def _aligned_grid(data, symbols) -> np.ndarray:
    """(symbols x hours) closes on the full hourly grid, NaN where a symbol has no bar."""
    grid = np.full((len(symbols), N_HOURS), np.nan)
    for i, symbol in enumerate(symbols):
        for row in data[symbol]["1h"]:
            grid[i, int((row[0] - START).total_seconds() // 3600)] = row[4]
    return grid


def _optional_baseline(module: str, package: str):
    """bench.baselines.<module>, or a skip naming `package` when it does not import here."""
    try:
        return importlib.import_module(f"bench.baselines.{module}")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"{package} is not installed or does not import here: {exc}")


def _vectorbt():
    return _optional_baseline("vectorbt_rsi", "vectorbt")


@pytest.mark.parametrize("params", PARAMS)
def test_vectorbt_matches_spec_on_gap_free_data(seeded_db, params):
    vectorbt_rsi = _vectorbt()
    _, data = seeded_db
    symbols = ["AAA", "BBB"]
    got = vectorbt_rsi.run_rsi(_aligned_grid(data, symbols), *params)
    for i, symbol in enumerate(symbols):
        want_value, want_trades = spec_reference(_closes(data, symbol), *params)
        assert got["final_value"][i] == pytest.approx(want_value, rel=1e-6, abs=0), symbol
        assert got["num_trades"][i] == sum(1 for t in want_trades if t[1] == "buy"), symbol


def test_vectorbt_skips_missing_bars(seeded_db):
    """NaN gaps in the aligned grid: each symbol's own bars are compacted before vectorbt runs."""
    vectorbt_rsi = _vectorbt()
    _, data = seeded_db
    grid = _aligned_grid(data, SYMBOLS)
    assert np.isnan(grid[2]).sum() == len(GAP_HOURS)
    got = vectorbt_rsi.run_rsi(grid, 14, 30.0, 70.0, 0.1, 1000.0)
    for i, symbol in enumerate(SYMBOLS):
        want_value, want_trades = spec_reference(_closes(data, symbol), 14, 30.0, 70.0, 0.1, 1000.0)
        assert got["final_value"][i] == pytest.approx(want_value, rel=1e-6, abs=0), symbol
        assert got["num_trades"][i] == sum(1 for t in want_trades if t[1] == "buy"), symbol
    # A symbol with no bar at all keeps its cash.
    empty = vectorbt_rsi.run_rsi(
        np.vstack([grid[:1], np.full((1, N_HOURS), np.nan)]), 14, 30, 70, 0.1, 1000.0
    )
    assert empty["final_value"][1] == 1000.0 and empty["num_trades"][1] == 0


def test_vectorbt_native_rsi_is_wilder_after_convergence(seeded_db):
    """rsi='vbt' (vbt.RSI.run, ewm span 2p-1) differs from TA-Lib only by its seed, which decays."""
    vectorbt_rsi = _vectorbt()
    _, data = seeded_db
    close = _closes(data, "AAA")
    native = vectorbt_rsi.rsi_matrix(close[:, None], 14, "vbt")[:, 0]
    want = talib.RSI(close, 14)
    assert np.isnan(native[: 2 * 14 - 1]).all() and not np.isnan(native[2 * 14 - 1])
    np.testing.assert_allclose(native[400:], want[400:], rtol=1e-9)
    got = vectorbt_rsi.run_rsi(close[None, :], 14, 30, 70, 0.1, 1000.0, rsi="vbt")
    assert got["final_value"].shape == (1,) and np.isfinite(got["final_value"][0])


def _check_peer(got: dict, data, symbols, params, rel: float) -> int:
    """A peer's {final_value, num_trades} arrays against SPEC's loop, symbol by symbol; the entries."""
    entries = 0
    for i, symbol in enumerate(symbols):
        want_value, want_trades = spec_reference(_closes(data, symbol), *params)
        want_entries = sum(1 for t in want_trades if t[1] == "buy")
        assert got["final_value"][i] == pytest.approx(want_value, rel=rel, abs=0), symbol
        assert got["num_trades"][i] == want_entries, symbol
        entries += want_entries
    return entries


@pytest.mark.parametrize("params", PARAMS)
def test_vectorbt_rust_engine_follows_spec(seeded_db, params):
    """vectorbt's Rust engine (vectorbt-rust), named explicitly, on the grid with gaps: SPEC's entries
    and final values, and the Numba engine's numbers."""
    vectorbt_rsi = _vectorbt()
    from vectorbt._engine import is_rust_available

    if not is_rust_available():
        pytest.skip("vectorbt-rust is not installed (or not vectorbt's version): pip install -e .[bench]")
    _, data = seeded_db
    grid = _aligned_grid(data, SYMBOLS)
    got = vectorbt_rsi.run_rsi(grid, *params, engine="rust")
    assert _check_peer(got, data, SYMBOLS, params, 1e-6) >= 2  # there are trades to compare
    numba = vectorbt_rsi.run_rsi(grid, *params, engine="numba")
    np.testing.assert_allclose(got["final_value"], numba["final_value"], rtol=1e-12)
    np.testing.assert_array_equal(got["num_trades"], numba["num_trades"])


def _fast_trade():
    return _optional_baseline("fast_trade_rsi", "fast-trade")


@pytest.mark.parametrize("params", PARAMS)
def test_fast_trade_follows_spec(seeded_db, params):
    """fast-trade, fed each symbol's own bars and TA-Lib's RSI, fills and charges as SPEC says: the same
    entries and final values to 1e-9 (it rounds its account columns to 8 decimals), gaps included."""
    fast_trade_rsi = _fast_trade()
    _, data = seeded_db
    grid = _aligned_grid(data, SYMBOLS)
    assert np.isnan(grid[2]).sum() == len(GAP_HOURS)
    got = fast_trade_rsi.run_rsi(grid, *params)
    assert _check_peer(got, data, SYMBOLS, params, 1e-9) >= 2


def test_fast_trade_keeps_the_cash_of_a_symbol_without_bars(seeded_db):
    fast_trade_rsi = _fast_trade()
    _, data = seeded_db
    grid = np.vstack([_aligned_grid(data, ["AAA"]), np.full((1, N_HOURS), np.nan)])
    got = fast_trade_rsi.run_rsi(grid, 14, 30.0, 70.0, 0.1, 1000.0)
    assert got["final_value"][1] == 1000.0 and got["num_trades"][1] == 0
    assert got["num_trades"][0] > 0
