"""How much of a sweep's best result is luck: the deflated Sharpe ratio and the PBO.

Both are computed from the per-block sums the sweep kernel records for every
(symbol, parameter set) (`pipeline.engine.kernels.blocks`), never from equity curves.
Formulas and sources are in the README ("Overfitting statistics").
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.engine.block_sums import sharpe_of_sums
from pipeline.engine.kernels.blocks import (
    B_COUNT,
    B_SUM,
    B_SUM2,
    B_SUM3,
    B_SUM4,
    N_BLOCK_STATS,
    pbo_many,
)

if TYPE_CHECKING:
    from pipeline.engine.options import RunConfig

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()
_erfc = np.vectorize(math.erfc, otypes=[float])


def pbo_fractions(config: RunConfig) -> np.ndarray:
    """Block edges of the CSCV split: `pbo_blocks` equal parts of each symbol's simulated bars
    (one block when the PBO is off: the deflated Sharpe ratio still needs the moments)."""
    return np.linspace(0.0, 1.0, max(config.pbo_blocks, 1) + 1)


def block_fractions(config: RunConfig) -> np.ndarray:
    """The block edges a sweep's kernel records: the PBO's and, with --walk-forward, the folds'
    train/test edges too (every block statistic merges, so one set of finer blocks serves both)."""
    edges = pbo_fractions(config)
    if config.walk_forward:
        from pipeline.engine import walkforward

        edges = np.concatenate([edges, walkforward.fold_fractions(config)])
    return np.unique(np.round(edges, 12))


def _pbo_starts(config: RunConfig) -> np.ndarray:
    """Index of the recorded block each PBO block starts at (recorded blocks are finer when
    walk-forward edges fall inside the PBO's)."""
    return np.searchsorted(np.round(block_fractions(config), 12), np.round(pbo_fractions(config)[:-1], 12))


def distinct_sets(sums: np.ndarray, sums2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The parameter sets of one symbol whose PBO block sums (S x N each) differ: (the first set of each
    group of sets with equal sums, in grid order; how many sets each group holds).

    Sets with equal sums on every block have equal Sharpe ratios on every half of every split, so the
    PBO ranks one of them and counts it as many times (a sweep's sets often trade alike: about 28 % of
    a 1,000-set RSI sweep's sets repeat another's). Equal means the same bytes: the grouping never
    merges sets whose sums differ."""
    rows = np.ascontiguousarray(np.concatenate([sums, sums2]).T)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    return first[order], counts[order]


def moments(blocks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-bar return moments of each (symbol, set) over all blocks of `blocks` (Y x B x K x N).

    Returns n (returns), sharpe (per bar, sample deviation; NaN when undefined), skew and
    kurtosis (Pearson, 3 for a normal law; population moments), each (Y x N).
    """
    totals = blocks.sum(axis=1)
    n = totals[:, B_COUNT, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = totals[:, B_SUM, :] / n
        raw2 = totals[:, B_SUM2, :] / n
        raw3 = totals[:, B_SUM3, :] / n
        raw4 = totals[:, B_SUM4, :] / n
        m2 = raw2 - mean**2
        m3 = raw3 - 3 * mean * raw2 + 2 * mean**3
        m4 = raw4 - 4 * mean * raw3 + 6 * mean**2 * raw2 - 3 * mean**4
        sharpe = sharpe_of_sums(n, totals[:, B_SUM, :], totals[:, B_SUM2, :])
        defined = np.isfinite(sharpe)
        skew = np.where(defined, m3 / np.where(defined, m2, 1.0) ** 1.5, np.nan)
        kurt = np.where(defined, m4 / np.where(defined, m2, 1.0) ** 2, np.nan)
    return {"n": n, "sharpe": sharpe, "skew": skew, "kurt": kurt}


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """SR0 of Bailey and Lopez de Prado (2014): the expected best of `n_trials` unskilled Sharpe
    ratios whose variance across trials is `variance` (per-bar units)."""
    if n_trials < 2 or not variance > 0:
        return 0.0
    return math.sqrt(variance) * ((1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / n_trials)
                                  + EULER_GAMMA * _NORMAL.inv_cdf(1 - 1 / (n_trials * math.e)))


def deflated_sharpe(sharpe: np.ndarray, n: np.ndarray, skew: np.ndarray, kurt: np.ndarray,
                    sr0: float) -> np.ndarray:
    """DSR = Phi((SR - SR0) sqrt(T - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2)), per bar units.

    The probability that the true Sharpe ratio exceeds SR0, the best one expected from luck
    alone; NaN where the Sharpe ratio is undefined or the denominator is not positive.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = 1 - skew * sharpe + (kurt - 1) / 4 * sharpe**2
        z = (sharpe - sr0) * np.sqrt(np.maximum(n - 1, 0)) / np.sqrt(np.where(denominator > 0, denominator, np.nan))
    out = np.full(z.shape, np.nan)
    ok = np.isfinite(z)
    out[ok] = 0.5 * _erfc(-z[ok] / math.sqrt(2))
    return out


def sweep_statistics(blocks: np.ndarray, config: RunConfig) -> dict[str, np.ndarray]:
    """The overfitting statistics of a sweep over Y symbols and N parameter sets.

    `blocks` is (Y x B x K x N) from the kernel with `block_fractions(config)`. Returns, each per
    symbol (Y,) unless said: n_trials, sr0 (per bar), pbo, pbo_logit (mean logit), and
    deflated_sharpe (Y x N: each set's Sharpe deflated by the symbol's SR0).
    """
    n_symbols, _, _, n_sets = blocks.shape
    stats = moments(blocks)
    sr0 = np.zeros(n_symbols)
    for y in range(n_symbols):
        defined = stats["sharpe"][y][np.isfinite(stats["sharpe"][y])]
        variance = float(np.var(defined, ddof=1)) if defined.size >= 2 else 0.0
        sr0[y] = expected_max_sharpe(n_sets, variance)
    dsr = deflated_sharpe(stats["sharpe"], stats["n"], stats["skew"], stats["kurt"], sr0[:, None])
    coarse = np.add.reduceat(blocks[:, :, (B_COUNT, B_SUM, B_SUM2), :], _pbo_starts(config), axis=1)
    sums, sums2 = coarse[:, :, 1, :], coarse[:, :, 2, :]
    # Each symbol's distinct sets first, each counted as often as it occurs (pbo_cscv's weight).
    columns = np.zeros(n_symbols, dtype=np.int64)
    weight = np.zeros((n_symbols, n_sets), dtype=np.int64)
    distinct_sums, distinct_sums2 = np.zeros_like(sums), np.zeros_like(sums2)
    for y in range(n_symbols):
        first, counts = distinct_sets(sums[y], sums2[y])
        columns[y] = len(first)
        weight[y, :len(first)] = counts
        distinct_sums[y, :, :len(first)] = sums[y][:, first]
        distinct_sums2[y, :, :len(first)] = sums2[y][:, first]
    pbo = np.empty((n_symbols, 2))
    pbo_many(np.ascontiguousarray(coarse[:, :, 0, 0]), distinct_sums, distinct_sums2, columns, weight, pbo)
    return {"n_trials": np.full(n_symbols, n_sets), "sr0": sr0, "pbo": pbo[:, 0], "pbo_logit": pbo[:, 1],
            "deflated_sharpe": dsr}


def new_blocks(n_symbols: int, config: RunConfig) -> np.ndarray:
    """The block statistics a sweep over `n_symbols` fills (symbols x blocks x stats x sets).

    With the PBO off (`pbo_blocks` 0) one block: the deflated Sharpe ratio still needs the moments.
    """
    return np.zeros((n_symbols, len(block_fractions(config)) - 1, N_BLOCK_STATS, len(config.params_list)))


def by_symbol(slices: list[list[dict[str, Any]]], n_symbols: int) -> list[list[dict[str, Any]]]:
    """A chunk's sweep results as rows[symbol][set], from its kernel calls (each symbol-major over
    its consecutive slice of the sets)."""
    rows: list[list[dict[str, Any]]] = [[] for _ in range(n_symbols)]
    for results_of_call in slices:
        width = len(results_of_call) // n_symbols
        for y in range(n_symbols):
            rows[y].extend(results_of_call[y * width: (y + 1) * width])
    return rows


def result_statistics(blocks: np.ndarray, config: RunConfig, has_reason: np.ndarray) -> dict[str, np.ndarray]:
    """The n_trials, pbo and deflated_sharpe of a chunk of symbols' sweep results (and each row's set index,
    `set`), each (Y x C), NaN
    where a result has none: results with a `reason` (no bars, too few) have neither statistic,
    and a symbol whose PBO blocks hold fewer than two bars has no PBO (rather than a made-up one)."""
    stats = sweep_statistics(blocks, config)
    n_symbols, n_sets = has_reason.shape
    counts = np.add.reduceat(blocks[:, :, B_COUNT, 0], _pbo_starts(config), axis=1)
    dsr = np.where(has_reason | ~np.isfinite(stats["deflated_sharpe"]), np.nan, stats["deflated_sharpe"])
    usable = (config.pbo_blocks > 1) & (counts.min(axis=1) >= 2) & np.isfinite(stats["pbo"])
    pbo = np.where(usable[:, None] & ~has_reason, stats["pbo"][:, None], np.nan)
    return {"n_trials": np.broadcast_to(stats["n_trials"][:, None], (n_symbols, n_sets)), "pbo": pbo,
            "deflated_sharpe": dsr, "set": np.broadcast_to(np.arange(n_sets)[None, :], (n_symbols, n_sets))}


def attach(rows: list[list[dict[str, Any]]], blocks: np.ndarray, config: RunConfig) -> None:
    """Set n_trials, pbo and deflated_sharpe (and each row's set index) on a chunk of symbols' sweep results
    (rows[symbol][set], see by_symbol), in place."""
    if not rows:
        return
    has_reason = np.array([[r["reason"] is not None for r in symbol_rows] for symbol_rows in rows], dtype=bool)
    stats = result_statistics(blocks, config, has_reason)
    for y, symbol_rows in enumerate(rows):
        for c, result in enumerate(symbol_rows):
            result["set"] = c
            result["n_trials"] = int(stats["n_trials"][y, c])
            for name in ("pbo", "deflated_sharpe"):
                value = stats[name][y, c]
                result[name] = None if math.isnan(value) else float(value)
