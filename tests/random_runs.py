"""Random markets for the kernels' property tests, drawn from hypothesis data, and the check that two runs
of a kernel gave the same numbers bit for bit."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


def random_bars(data: st.DataObject, max_bars: int = 300) -> tuple[np.random.Generator, np.ndarray, np.ndarray,
                                                                     np.ndarray, np.ndarray]:
    """(rng, open, high, low, close) of 0..max_bars bars: a random walk at a drawn price level, with flat
    spells (returns of exactly 0) in half the draws, opens off the previous close, and ranges around both."""
    n = data.draw(st.integers(0, max_bars))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    steps = rng.normal(0.0, 0.02, n)
    steps[rng.random(n) < data.draw(st.sampled_from([0.0, 0.5]))] = 0.0
    close = data.draw(st.sampled_from([0.07, 1.0, 1e4])) * np.exp(np.cumsum(steps))
    open_ = np.r_[close[:1], close[:-1]] * np.exp(rng.normal(0.0, 0.005, n))
    high = np.maximum(open_, close) * (1 + rng.random(n) * 0.02)
    low = np.minimum(open_, close) * (1 - rng.random(n) * 0.02)
    return rng, open_, high, low, close


def assert_same_run(ours: tuple[np.ndarray, np.ndarray, np.ndarray],
                    expected: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Two (metrics, equity, trades) equal bit for bit; the trade records field by field (NaN equals NaN)."""
    np.testing.assert_array_equal(ours[0], expected[0])
    np.testing.assert_array_equal(ours[1], expected[1])
    for field in ours[2].dtype.names:
        np.testing.assert_array_equal(ours[2][field], expected[2][field], err_msg=field)
