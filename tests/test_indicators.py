"""The indicator kernels against TA-Lib: real Binance data, random walks, flat stretches, gaps."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.feather as feather
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine.kernels import indicators as ind

BINANCE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample" / "binance-5m"
BINANCE_FILES = sorted(BINANCE_DIR.glob("*.feather"))

HYP = settings(max_examples=40, deadline=None)


def assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Same NaN mask, and equal to 1e-9 where TA-Lib has a value."""
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12, equal_nan=True)


def run_1d(func, x: np.ndarray, *args) -> np.ndarray:
    out = np.empty_like(x)
    func(x, *args, out)
    return out


def bbands(x: np.ndarray, period: int, nbdev: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    upper, middle, lower = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    ind.bbands_1d(x, period, nbdev, upper, middle, lower)
    return upper, middle, lower


def macd(x: np.ndarray, fast: int, slow: int, signal: int) -> tuple[np.ndarray, np.ndarray]:
    m, s = np.empty_like(x), np.empty_like(x)
    ind.macd_1d(x, fast, slow, signal, m, s)
    return m, s


def check_all_against_talib(x: np.ndarray) -> None:
    for period in (2, 5, 14, 30):
        assert_same(run_1d(ind.sma_1d, x, period), talib.SMA(x, period))
        assert_same(run_1d(ind.ema_1d, x, period), talib.EMA(x, period))
        assert_same(run_1d(ind.rsi_1d, x, period), talib.RSI(x, period))
        for nbdev in (1.0, 2.0, 2.5):
            for ours, theirs in zip(bbands(x, period, nbdev), talib.BBANDS(x, period, nbdev, nbdev, 0), strict=True):
                assert_same(ours, theirs)
    for fast, slow, signal in ((12, 26, 9), (2, 3, 1), (5, 35, 5)):
        m, s, _ = talib.MACD(x, fast, slow, signal)
        ours_m, ours_s = macd(x, fast, slow, signal)
        assert_same(ours_m, m)
        assert_same(ours_s, s)


@pytest.fixture(scope="module")
def binance_closes() -> dict[str, np.ndarray]:
    if len(BINANCE_FILES) != 4:
        pytest.fail(f"expected the four real Binance 5m sample files in {BINANCE_DIR}, found {len(BINANCE_FILES)}")
    return {
        p.stem: np.ascontiguousarray(feather.read_table(p)["close"].to_numpy(), dtype=np.float64)
        for p in BINANCE_FILES
    }


@pytest.mark.slow
def test_sma_ema_rsi_bbands_macd_match_talib_on_real_binance_files(binance_closes):
    for name, close in binance_closes.items():
        try:
            check_all_against_talib(close)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_indicators_are_bit_identical_to_talib_on_satoshi_priced_pair(binance_closes):
    # ADA_BTC trades around 5e-5 with many unchanged closes: the regime where
    # TA-Lib's zero handling decides values. Bit identity, not just 1e-9.
    x = binance_closes["ADA_BTC-5m"]
    np.testing.assert_array_equal(run_1d(ind.rsi_1d, x, 14), talib.RSI(x, 14))
    for ours, theirs in zip(bbands(x, 20, 2.0), talib.BBANDS(x, 20, 2.0, 2.0, 0), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(run_1d(ind.ema_1d, x, 26), talib.EMA(x, 26))
    for ours, theirs in zip(macd(x, 12, 26, 9), talib.MACD(x, 12, 26, 9)[:2], strict=True):
        np.testing.assert_array_equal(ours, theirs)


@st.composite
def price_walks(draw, min_size: int = 2, max_size: int = 400) -> np.ndarray:
    """Random walks at crypto price levels (satoshi to 10^4) with flat stretches."""
    n = draw(st.integers(min_size, max_size))
    level = draw(st.sampled_from([4.3e-5, 0.07, 1.0, 123.456, 1e4]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, draw(st.sampled_from([1e-4, 1e-3, 2e-2])), n)
    # Unchanged closes are common on 5m bars: zero out a share of the steps.
    steps[rng.random(n) < draw(st.sampled_from([0.0, 0.3, 0.9]))] = 0.0
    x = level * np.exp(np.cumsum(steps))
    if n > 10 and draw(st.booleans()):
        a = int(rng.integers(0, n - 5))
        b = int(rng.integers(a + 1, n))
        x[a:b] = x[a]  # a long flat stretch
    return np.ascontiguousarray(x)


@HYP
@given(price_walks(min_size=60))
def test_indicators_match_talib_on_random_walks_with_flat_stretches(x):
    check_all_against_talib(x)


@HYP
@given(price_walks(min_size=1, max_size=40), st.integers(1, 45))
def test_short_series_are_nan_exactly_where_talib_is(x, period):
    assert_same(run_1d(ind.sma_1d, x, period), talib.SMA(x, period))
    assert_same(run_1d(ind.ema_1d, x, period), talib.EMA(x, period))
    if period >= 2:
        assert_same(run_1d(ind.rsi_1d, x, period), talib.RSI(x, period))
        for ours, theirs in zip(bbands(x, period, 2.0), talib.BBANDS(x, period, 2.0, 2.0, 0), strict=True):
            assert_same(ours, theirs)
        slow = period + 1
        m, s, _ = talib.MACD(x, period, slow, 3)
        ours_m, ours_s = macd(x, period, slow, 3)
        assert_same(ours_m, m)
        assert_same(ours_s, s)


@pytest.mark.parametrize("level", [4.3e-5, 1.0, 1e4])
def test_flat_series_gives_zero_rsi_and_collapsed_bands_like_talib(level):
    x = np.full(200, level)
    rsi = run_1d(ind.rsi_1d, x, 14)
    np.testing.assert_array_equal(rsi, talib.RSI(x, 14))
    assert np.all(rsi[14:] == 0.0)  # TA-Lib: avg gain + avg loss == 0 -> 0
    upper, middle, lower = bbands(x, 20, 2.0)
    for ours, theirs in zip((upper, middle, lower), talib.BBANDS(x, 20, 2.0, 2.0, 0), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(upper[19:], middle[19:])
    np.testing.assert_array_equal(lower[19:], middle[19:])


def test_tiny_moves_keep_a_nonzero_rsi_and_band_width_like_talib():
    # Moves of 1e-12 on a 5e-5 price: TA-Lib < 0.6 zeroed these with a fixed
    # 1e-8 epsilon; the bundled library (and so the kernels) must not.
    rng = np.random.default_rng(7)
    x = 5e-5 + np.cumsum(rng.choice([-1e-12, 0.0, 1e-12], 300))
    rsi = run_1d(ind.rsi_1d, x, 14)
    np.testing.assert_array_equal(rsi, talib.RSI(x, 14))
    assert np.nanmax(rsi) > 0.0
    upper, middle, lower = bbands(x, 20, 2.0)
    np.testing.assert_array_equal(upper, talib.BBANDS(x, 20, 2.0, 2.0, 0)[0])
    assert np.nanmax(upper - lower) > 0.0


def test_period_one_moving_averages_copy_the_series_and_bands_collapse_onto_it():
    x = np.array([3.0, 1.5, 2.25, 7.0, 7.0, 0.1])
    np.testing.assert_array_equal(run_1d(ind.sma_1d, x, 1), x)
    np.testing.assert_array_equal(run_1d(ind.ema_1d, x, 1), talib.EMA(x, 1))
    for band in bbands(x, 1, 2.0):
        np.testing.assert_array_equal(band, x)
    # A period-1 signal line is the MACD line itself (TA-Lib copies, no EMA step).
    jumpy = np.tile(x, 10)
    ours_m, ours_s = macd(jumpy, 2, 3, 1)
    talib_m, talib_s, _ = talib.MACD(jumpy, 2, 3, 1)
    np.testing.assert_array_equal(ours_m, talib_m)
    np.testing.assert_array_equal(ours_s, talib_s)


def test_fma_rounds_once():
    rng = np.random.default_rng(3)
    for a, b, c in rng.normal(0.0, 1.0, (200, 3)) * rng.choice([1e-8, 1.0, 1e8], (200, 3)):
        exact = float(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))
        assert ind.fma_nb(a, b, c) == exact


@st.composite
def gappy_panels(draw) -> np.ndarray:
    """(symbols x time) closes with NaN at missing bars (leading, trailing and inner gaps)."""
    rows = [draw(price_walks(min_size=50, max_size=150)) for _ in range(draw(st.integers(1, 4)))]
    t = max(len(r) for r in rows)
    panel = np.full((len(rows), t), np.nan)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    for i, row in enumerate(rows):
        mask = rng.random(t) < draw(st.sampled_from([0.0, 0.1, 0.5]))
        slots = np.flatnonzero(~mask)[: len(row)]
        panel[i, slots] = row[: len(slots)]
    return panel


@pytest.mark.slow
@HYP
@given(gappy_panels())
def test_2d_wrappers_skip_missing_bars_and_match_talib_on_each_compacted_row(panel):
    outputs = {
        "sma": ind.sma_2d(panel, 10),
        "ema": ind.ema_2d(panel, 10),
        "rsi": ind.rsi_2d(panel, 14),
        "bb": ind.bbands_2d(panel, 20, 2.0),
        "macd": ind.macd_2d(panel, 12, 26, 9),
    }
    for i, row in enumerate(panel):
        have = ~np.isnan(row)
        x = np.ascontiguousarray(row[have])
        expected = {
            "sma": [talib.SMA(x, 10)],
            "ema": [talib.EMA(x, 10)],
            "rsi": [talib.RSI(x, 14)],
            "bb": list(talib.BBANDS(x, 20, 2.0, 2.0, 0)),
            "macd": list(talib.MACD(x, 12, 26, 9)[:2]),
        }
        for key, out in outputs.items():
            arrays = out if isinstance(out, tuple) else (out,)
            for ours, theirs in zip(arrays, expected[key], strict=True):
                assert np.all(np.isnan(ours[i][~have])), f"{key}: value at a missing bar"
                assert_same(ours[i][have], theirs)


@HYP
@given(price_walks(min_size=80, max_size=200), st.data())
def test_changing_later_bars_never_changes_earlier_indicator_values(x, data):
    t = data.draw(st.integers(1, len(x) - 1))
    y = x.copy()
    y[t:] = y[t:] * data.draw(st.sampled_from([0.5, 1.0000001, 3.0]))
    pairs = [
        (run_1d(ind.sma_1d, x, 9), run_1d(ind.sma_1d, y, 9)),
        (run_1d(ind.ema_1d, x, 9), run_1d(ind.ema_1d, y, 9)),
        (run_1d(ind.rsi_1d, x, 9), run_1d(ind.rsi_1d, y, 9)),
        *zip(bbands(x, 9, 2.0), bbands(y, 9, 2.0), strict=True),
        *zip(macd(x, 5, 13, 4), macd(y, 5, 13, 4), strict=True),
    ]
    for before, after in pairs:
        np.testing.assert_array_equal(before[:t], after[:t])
