"""Statistics of the per-block return sums the sweep kernel records (`pipeline.engine.kernels.blocks`),
shared by the overfitting statistics (`overfit`) and the walk-forward (`walkforward`)."""

from __future__ import annotations

import numpy as np


def sharpe_of_sums(n: np.ndarray, s: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Per-bar Sharpe ratio (mean over sample standard deviation) of returns given by their count,
    sum and sum of squares; NaN with fewer than two returns or no deviation. The PBO kernel ranks by
    the same float operations (`pipeline.engine.kernels.blocks._split_sharpe`): keep the two alike."""
    n, s, s2 = np.asarray(n, dtype=float), np.asarray(s, dtype=float), np.asarray(s2, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s / n
        var = (s2 - s * mean) / (n - 1)
        defined = (n >= 2) & (var > 1e-30)
        return np.where(defined, mean / np.sqrt(np.where(defined, var, 1.0)), np.nan)
