"""The aligned (symbols x time) grid as the peers take it: each symbol's own bars, gaps removed.

Shared by the vectorbt and fast-trade baselines (numpy only, so that neither needs the other)."""

from __future__ import annotations

import numpy as np


def compact(close: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's non-NaN values moved to its front, in order; (compacted, bars per row)."""
    close = np.atleast_2d(np.asarray(close, dtype=np.float64))
    valid = ~np.isnan(close)
    order = np.argsort(~valid, axis=1, kind="stable")
    return np.take_along_axis(close, order, axis=1), valid.sum(axis=1)
