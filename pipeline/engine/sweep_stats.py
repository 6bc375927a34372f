"""What a sweep's best set is worth after the search: tests over the daily returns of every parameter set.

Given one symbol's (or the pooled run's) daily return matrix (days x sets), `statistics` computes Hansen's
SPA p-values against a benchmark, Romano and Wolf's StepM set, Hansen, Lunde and Nason's model confidence
set, a stationary-bootstrap interval of the best set's annualised Sharpe ratio, its probabilistic Sharpe
ratio and minimum track record length (Bailey and Lopez de Prado 2012), and Harvey and Liu's (2015)
haircut Sharpe ratio with the BHY adjustment. The heavy loops are numba kernels
(`pipeline.engine.kernels.bootstrap`); the rules are the contract's ("Sweep statistics").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from pipeline.core.run_options import STAT_NAMES, StatsRequest, parse_stats  # noqa: F401 (their home)
from pipeline.engine.kernels import bootstrap as kernels
from pipeline.engine.overfit import deflated_sharpe

DAYS_PER_YEAR = 365  # crypto trades every day: a daily Sharpe ratio annualises by sqrt(365)
MIN_DAYS = 10  # fewer full days than this: no statistics (blocks of one to three days of a handful say nothing)
# Bootstrap statistics within this share of the observed one's scale are ties (the sample's own days redrawn),
# never exceedances: rounding of the sums is some 1e-16 of it.
SPA_TIE = 1e-9
HL_DRAWS = 2000  # Harvey and Liu's program draws 2,000 populations of other tests
_NORMAL = NormalDist()


def daily_returns(day_equity: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Each set's return on each day (days x sets) from its equity at each day's last close (NaN on a day
    without a bar: the equity carries) and its equity before the first day (`base`, per set).

    An equity that reached 0 stays there: its later returns are 0, not 0 / 0."""
    equity = np.vstack([base[None, :], day_equity])
    gaps = np.isnan(day_equity[:, 0]) if day_equity.size else np.zeros(0, dtype=bool)
    if gaps.any():  # a day without a bar (every set alike): carry the last equity over it
        index = np.where(np.isfinite(equity), np.arange(equity.shape[0])[:, None], 0)
        np.maximum.accumulate(index, axis=0, out=index)
        equity = np.take_along_axis(equity, index, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = np.divide(equity[1:], equity[:-1])
    returns -= 1.0
    returns[~(equity[:-1] > 0)] = 0.0
    return returns


def spa_recentring(loss_diff: np.ndarray, block: int) -> np.ndarray:
    """The SPA's three recentrings of the bootstrap means (3 x K: lower, consistent, upper), as `arch`'s SPA:
    upper the mean loss differential, lower that floored at 0, consistent that set to 0 where the mean is
    below -sqrt(omega^2 / T * 2 ln ln T), omega^2 the stationary bootstrap's long-run variance (Politis and
    Romano's kernel with p = 1 / block)."""
    n = loss_diff.shape[0]
    mean = loss_diff.mean(axis=0)
    variance = kernels.long_run_variance(np.ascontiguousarray((loss_diff - mean).T), 1.0 - 1.0 / block)
    with np.errstate(invalid="ignore"):
        threshold = -np.sqrt(variance / n * 2.0 * math.log(math.log(n)))
    consistent = np.where(mean >= threshold, mean, 0.0)
    return np.vstack([np.maximum(mean, 0.0), consistent, mean])


def spa_pvalues(loss_diff: np.ndarray, boot_diff: np.ndarray, recentre: np.ndarray) -> dict[str, float]:
    """Hansen's SPA p-values (lower, consistent, upper) that no column beats the benchmark: the share of
    repetitions whose largest recentred bootstrap mean (`spa_recentring`) exceeds the largest mean loss
    differential."""
    exceed = np.empty((boot_diff.shape[0], 3))
    observed = float(loss_diff.mean(axis=0).max())
    kernels.spa_exceedances(boot_diff, recentre, observed, np.ones(loss_diff.shape[1], dtype=np.bool_),
                            SPA_TIE * max(abs(observed), float(np.abs(loss_diff).mean())), exceed)
    lower, consistent, upper = exceed.mean(axis=0)
    return {"lower": float(lower), "consistent": float(consistent), "upper": float(upper)}


def stepm(loss_diff: np.ndarray, boot_diff: np.ndarray, recentre: np.ndarray, alpha: float) -> np.ndarray:
    """Romano and Wolf's StepM as `arch` runs it: the columns whose mean loss differential exceeds the
    (1 - alpha) quantile of the largest consistent-recentred bootstrap mean over the columns not yet found
    better, step by step until a step finds none (column indices, ascending); `recentre` is
    `spa_recentring`'s."""
    recentre = recentre[1]
    mean = loss_diff.mean(axis=0)
    n_cols = mean.size
    selected = np.ones(n_cols, dtype=np.bool_)
    maxima = np.empty(boot_diff.shape[0])
    found: list[int] = []
    while True:
        kernels.spa_maxima(boot_diff, recentre, selected, maxima)
        critical = np.percentile(maxima, 100.0 * (1.0 - alpha))
        better = np.flatnonzero((mean > critical) & selected)
        found.extend(int(k) for k in better)
        if better.size == 0 or better.size >= n_cols:
            break
        selected = np.ones(n_cols, dtype=np.bool_)
        selected[found] = False
    return np.array(sorted(found), dtype=np.int64)


MCS_STEPS = 8  # elimination steps per kernel call: the set is usually known long before the last model


def model_confidence_set(losses_mean: np.ndarray, boot_losses: np.ndarray, alpha: float) -> np.ndarray:
    """The model confidence set at size `alpha` (column indices, ascending), by the range statistic: the
    elimination order comes from the sample (`kernels.mcs_order`); each step's p-value is the share of
    repetitions whose statistic over the models left exceeds the sample's, a model's MCS p-value the largest
    of the steps' up to its own. The set is the models left at the first step whose running p-value exceeds
    `alpha` (every later p-value is at least that), so the steps stop there."""
    centred = np.ascontiguousarray(boot_losses - losses_mean)
    weights = kernels.pair_weights(np.ascontiguousarray(centred.T))
    order, statistic = kernels.mcs_order(losses_mean, weights)
    n_cols = losses_mean.size
    eliminated_at = np.full(n_cols, n_cols - 1, dtype=np.int64)
    eliminated_at[order] = np.arange(order.size)
    row_max = np.empty_like(centred)
    kernels.mcs_row_maxima(centred, weights, row_max)
    running = 0.0
    for first in range(0, order.size, MCS_STEPS):
        stop = min(first + MCS_STEPS, order.size)
        exceed = np.empty((centred.shape[0], stop - first))
        kernels.mcs_exceedances(centred, weights, order, statistic, eliminated_at, first, stop, row_max, exceed)
        for offset, p_value in enumerate(exceed.mean(axis=0)):
            running = max(running, p_value)
            if running > alpha:  # this step's model and every one left are in the set
                return np.flatnonzero(eliminated_at >= first + offset)
    return np.flatnonzero(eliminated_at == n_cols - 1)  # only the last model left


def annual_sharpe(returns: np.ndarray) -> float:
    """mean / sample deviation * sqrt(365) of daily returns; NaN where undefined."""
    if returns.size < 2:
        return math.nan
    deviation = returns.std(ddof=1)
    return float(returns.mean() / deviation * math.sqrt(DAYS_PER_YEAR)) if deviation > 0 else math.nan


def sharpe_interval(returns: np.ndarray, boot_mean: np.ndarray, boot_square: np.ndarray,
                    alpha: float) -> list[float] | None:
    """The basic (reverse percentile) bootstrap interval of the annualised Sharpe ratio at 1 - alpha, as
    `arch`'s conf_int(method="basic"): 2 S - the upper and lower percentiles of the bootstrap Sharpe ratios."""
    n = returns.size
    sharpe = annual_sharpe(returns)
    with np.errstate(invalid="ignore", divide="ignore"):
        deviation = np.sqrt(np.maximum(boot_square - boot_mean**2, 0.0) * n / (n - 1))
        draws = boot_mean / deviation * math.sqrt(DAYS_PER_YEAR)
    draws = draws[np.isfinite(draws)]
    if not math.isfinite(sharpe) or draws.size == 0:
        return None
    low, high = np.percentile(draws, [100.0 * alpha / 2, 100.0 * (1 - alpha / 2)])
    return [float(2 * sharpe - high), float(2 * sharpe - low)]


def moments(returns: np.ndarray) -> tuple[float, float, float]:
    """(per-period Sharpe ratio with the sample deviation, population skewness, Pearson kurtosis) of
    returns; NaN where the deviation is 0."""
    deviation = returns.std(ddof=1) if returns.size > 1 else 0.0
    if not deviation > 0:
        return math.nan, math.nan, math.nan
    centred = returns - returns.mean()
    m2 = (centred**2).mean()
    return (float(returns.mean() / deviation), float((centred**3).mean() / m2**1.5),
            float((centred**4).mean() / m2**2))


def probabilistic_sharpe(sharpe: float, n: int, skew: float, kurt: float, benchmark: float = 0.0) -> float | None:
    """Bailey and Lopez de Prado's (2012) PSR: the probability that the true Sharpe ratio exceeds `benchmark`,
    given a per-period Sharpe ratio over n returns of that skewness and (Pearson) kurtosis; the deflated
    Sharpe ratio's formula with the benchmark for SR0."""
    value = float(deflated_sharpe(np.array([sharpe]), np.array([n]), np.array([skew]), np.array([kurt]),
                                  benchmark)[0])
    return value if math.isfinite(value) else None


def min_track_record(sharpe: float, skew: float, kurt: float, benchmark: float = 0.0,
                     confidence: float = 0.95) -> float | None:
    """Bailey and Lopez de Prado's minimum track record length, in periods: the returns needed for the PSR
    against `benchmark` to reach `confidence`, 1 + (1 - skew SR + (kurt - 1) / 4 SR^2) (z / (SR - SR*))^2.
    None unless the Sharpe ratio beats the benchmark."""
    if not (math.isfinite(sharpe) and sharpe > benchmark):
        return None
    spread = 1 - skew * sharpe + (kurt - 1) / 4 * sharpe**2
    return float(1 + spread * (_NORMAL.inv_cdf(confidence) / (sharpe - benchmark)) ** 2)


def hlz_parameters(correlation: float) -> tuple[float, float]:
    """(share of strategies without an edge, mean monthly return of those with one) of Harvey, Liu and Zhu's
    model at an average correlation among strategies, interpolated in their table as Harvey and Liu's
    program does (0.2's row outside [0, 1))."""
    rows = ((0.0, 0.39660, 0.0054995), (0.2, 0.44589, 0.0055508), (0.4, 0.48604, 0.0055413),
            (0.6, 0.59902, 0.0055512), (0.8, 0.83901, 0.0055956))
    if not 0.0 <= correlation < 1.0:
        return rows[1][1], rows[1][2]
    low = min(int(correlation / 0.2), 3)  # their program extrapolates 0.8 .. 1 from the last two rows
    weight = (correlation - rows[low][0]) / 0.2
    return tuple(float((1 - weight) * rows[low][k] + weight * rows[low + 1][k]) for k in (1, 2))  # type: ignore[return-value]


_POPULATIONS: dict[tuple[int, int, int, float], tuple[np.ndarray, np.ndarray]] = {}
POPULATION_CACHE_VALUES = 20_000_000  # a population kept for the next symbols up to this size (320 MB)


def _population(n_tests: int, draws: int, seed: int, correlation: float) -> tuple[np.ndarray, np.ndarray]:
    """`kernels.bhy_population`, the last one kept while small (a sweep's symbols share it)."""
    key = (n_tests, draws, seed, correlation)
    if key in _POPULATIONS:
        return _POPULATIONS[key]
    p_null, mean_effect = hlz_parameters(correlation)
    found = kernels.bhy_population(n_tests, draws, seed, correlation, p_null, mean_effect)
    _POPULATIONS.clear()
    if n_tests * draws <= POPULATION_CACHE_VALUES:
        _POPULATIONS[key] = found
    return found


def haircut_sharpes(sharpes: list[float | None], months: list[int], n_tests: int, seed: int,
                    correlation: float = 0.0, draws: int = HL_DRAWS) -> list[float | None]:
    """Harvey and Liu's (2015) haircut Sharpe ratio with the BHY adjustment, for each annualised Sharpe
    ratio over its number of months, as one strategy among `n_tests` tried whose returns have the average
    `correlation` (0: independent tests): the t-ratio sr / sqrt(12) * sqrt(months), its two-sided Student-t
    p-value on months - 1 degrees of freedom, the median over `draws` simulated populations of the other
    tests of its BHY-adjusted p-value (`kernels.bhy_population`, `kernels.bhy_adjust`), turned back into an annualised Sharpe ratio
    the same way. None where the Sharpe ratio is not positive or there are fewer than two months."""
    from scipy import stats

    out: list[float | None] = [None] * len(sharpes)
    wanted = [i for i, (sr, n) in enumerate(zip(sharpes, months, strict=True))
              if sr is not None and math.isfinite(sr) and sr > 0 and n >= 2]
    if not wanted or n_tests < 1:
        return out
    n = np.array([months[i] for i in wanted], dtype=np.float64)
    t_ratio = np.array([sharpes[i] for i in wanted]) / math.sqrt(12) * np.sqrt(n)
    p_value = 2 * stats.t.sf(t_ratio, n - 1)
    others, suffix = _population(int(n_tests), int(draws), int(seed), float(correlation))
    adjusted = np.median(kernels.bhy_adjust(others, suffix, p_value), axis=0)
    z = stats.t.isf(adjusted / 2, n - 1)
    for i, value in zip(wanted, z / np.sqrt(n) * math.sqrt(12), strict=True):
        out[i] = float(max(value, 0.0))
    return out


def months_of(days: int) -> int:
    """Harvey and Liu's months of daily data: floor(days * 12 / 360)."""
    return math.floor(days * 12 / 360)


def _distinct(returns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the first of each group of identical columns, each column's group, groups numbered in the order of
    their first column): sets with the very same daily returns are one model to the tests (identical columns
    make the MCS's pair variances 0). Columns are grouped by two random projections and confirmed equal
    element by element: O(days x sets), where sorting the columns themselves is O(days x sets x log sets)."""
    n_days, n_sets = returns.shape
    keys = np.random.default_rng(0).standard_normal((n_days, 2)).T @ returns  # 2 x sets
    order = np.lexsort((np.arange(n_sets), keys[1], keys[0]))
    group = np.empty(n_sets, dtype=np.int64)
    leaders: list[int] = []  # the first column of each group
    previous = -1
    for c in order:
        if previous >= 0 and keys[0, c] == keys[0, previous] and keys[1, c] == keys[1, previous] and np.array_equal(
                returns[:, c], returns[:, leaders[group[previous]]]):
            group[c] = group[previous]
        else:
            group[c] = len(leaders)
            leaders.append(int(c))
        previous = c
    first = np.array(leaders, dtype=np.int64)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return np.sort(first), rank[group]


def statistics(returns: np.ndarray, traded: np.ndarray, benchmark: np.ndarray, best: int,
               request: StatsRequest) -> dict[str, Any]:
    """The requested statistics of one daily return matrix (days x sets; `traded` marks the sets that
    traded, `benchmark` the benchmark's daily returns, `best` the sweep's best set by its objective).

    Returns the fields `--json` carries per symbol: days, block_size, tested (the sets tested), never_traded,
    spa, stepm, mcs (set indices), best_set, sharpe, sharpe_ci, psr, min_trl, haircut_sharpe (None until
    `haircut_sharpes` fills it: its draws are shared across symbols), benchmark_sharpe (0 for zero: None) and
    `reason` when there are none."""
    n_days, n_sets = returns.shape
    tested = np.flatnonzero(traded)
    out: dict[str, Any] = {"days": int(n_days), "block_size": None, "tested": int(tested.size),
                           "never_traded": [int(c) for c in np.flatnonzero(~traded)], "spa": None, "stepm": None,
                           "mcs": None, "best_set": int(best) if best >= 0 else None, "sharpe": None,
                           "sharpe_ci": None, "psr": None, "min_trl": None, "haircut_sharpe": None,
                           "benchmark_sharpe": None, "reason": None}
    if n_days < MIN_DAYS:
        out["reason"] = f"{n_days} full day(s) of returns; the statistics need at least {MIN_DAYS}"
        return out
    if tested.size == 0:
        out["reason"] = "no parameter set traded"
        return out
    block = request.block_for(n_days)
    out["block_size"] = block
    benchmark_sharpe = annual_sharpe(benchmark)
    out["benchmark_sharpe"] = benchmark_sharpe if math.isfinite(benchmark_sharpe) else None
    wanted = set(request.stats)
    best_returns = returns[:, best] if best >= 0 else None
    if best_returns is not None:
        sharpe = annual_sharpe(best_returns)
        out["sharpe"] = sharpe if math.isfinite(sharpe) else None
    representatives, group = _distinct(returns[:, tested])
    models = returns[:, tested[representatives]]
    needs_boot = wanted & {"spa", "stepm", "mcs", "bootstrap"}
    if needs_boot:
        extra = [benchmark]
        if best_returns is not None:
            extra += [best_returns, best_returns**2]
        matrix = np.column_stack([models, *extra])
        prefix = np.zeros((n_days + 1, matrix.shape[1]))
        np.cumsum(matrix, axis=0, out=prefix[1:])
        boot = np.empty((request.reps, matrix.shape[1]))
        kernels.bootstrap_means(prefix, request.seed, request.reps, block, boot)
        n_models = models.shape[1]
        boot_models, boot_benchmark = boot[:, :n_models], boot[:, n_models]
        loss_diff = models - benchmark[:, None]  # the benchmark's loss minus the set's: returns minus benchmark
        boot_diff = np.ascontiguousarray(boot_models - boot_benchmark[:, None])

        def members(columns: np.ndarray) -> list[int]:
            chosen = np.isin(group, columns)
            return [int(c) for c in tested[chosen]]

        recentre = spa_recentring(loss_diff, block) if wanted & {"spa", "stepm"} else None
        if "spa" in wanted:
            out["spa"] = spa_pvalues(loss_diff, boot_diff, recentre)
        if "stepm" in wanted:
            out["stepm"] = members(stepm(loss_diff, boot_diff, recentre, request.alpha))
        if "mcs" in wanted:
            if n_models >= 2:
                out["mcs"] = members(model_confidence_set(-models.mean(axis=0), -boot_models, request.alpha))
            else:
                out["mcs"] = members(np.arange(n_models))
        if "bootstrap" in wanted and best_returns is not None:
            out["sharpe_ci"] = sharpe_interval(best_returns, boot[:, n_models + 1], boot[:, n_models + 2],
                                               request.alpha)
    if "psr" in wanted and best_returns is not None:
        sharpe, skew, kurt = moments(best_returns)
        out["psr"] = probabilistic_sharpe(sharpe, n_days, skew, kurt)
        out["min_trl"] = min_track_record(sharpe, skew, kurt)
    return out


@dataclass
class DailySeries:
    """One symbol's daily returns under every set of a sweep (days x sets), its benchmark's, and the epoch day
    (days since 1970-01-01, UTC) of the first row."""

    first_day: int
    returns: np.ndarray
    benchmark: np.ndarray


def symbol_days(times: np.ndarray, close: np.ndarray, first: int, last: int, day_equity: np.ndarray,
                initial: float) -> DailySeries | None:
    """One symbol's daily returns from the equity a sweep's kernel marked at each day's last simulated bar
    (`day_equity`, days of the grid x sets, NaN on days without a bar), its simulated bars being grid columns
    first .. last. The days run from the first full UTC day (the first simulated bar's own day when that bar
    opens at midnight: its base is the initial cash; else the next day, on the first day's last equity) to
    the day of the last simulated bar. The benchmark is buy and hold from the first simulated bar's close.
    None without a full day."""
    from pipeline.core.intervals import DAY_SECONDS, day_columns

    grid_first = int(times[0]) // DAY_SECONDS
    start = int(times[first])
    own_day = start // DAY_SECONDS - grid_first
    full = start % DAY_SECONDS == 0
    first_day = own_day if full else own_day + 1
    last_day = int(times[last]) // DAY_SECONDS - grid_first
    if last_day < first_day:
        return None
    equity = day_equity[first_day: last_day + 1]
    base = np.full(day_equity.shape[1], initial) if full else day_equity[first_day - 1]
    # Buy and hold: the close at each day's last simulated bar, bought at the first one's close.
    columns = first + np.flatnonzero(np.isfinite(close[first: last + 1]))
    days = day_columns(times)[columns]
    ends = np.r_[days[1:] != days[:-1], True]
    day_close = np.full(day_equity.shape[0], np.nan)
    day_close[days[ends]] = close[columns[ends]]
    held = day_close[first_day: last_day + 1, None]
    held_base = np.array([close[first] if full else day_close[first_day - 1]])
    return DailySeries(grid_first + first_day, daily_returns(equity, base), daily_returns(held, held_base)[:, 0])


class DailyPool:
    """The pooled run: each set's daily return averaged over the symbols that have that day (an equal-weight
    account over the symbols, rebalanced daily), added symbol by symbol."""

    def __init__(self, n_sets: int) -> None:
        self.first_day: int | None = None
        self.sums = np.zeros((0, n_sets))
        self.benchmark = np.zeros(0)
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, series: DailySeries) -> None:
        n = series.returns.shape[0]
        start = series.first_day if self.first_day is None else min(self.first_day, series.first_day)
        old_end = start if self.first_day is None else self.first_day + self.counts.size
        end = max(series.first_day + n, old_end)
        if self.first_day != start or end - start != self.counts.size:
            offset = 0 if self.first_day is None else self.first_day - start
            sums = np.zeros((end - start, self.sums.shape[1]))
            benchmark = np.zeros(end - start)
            counts = np.zeros(end - start, dtype=np.int64)
            sums[offset: offset + self.counts.size] = self.sums
            benchmark[offset: offset + self.counts.size] = self.benchmark
            counts[offset: offset + self.counts.size] = self.counts
            self.first_day, self.sums, self.benchmark, self.counts = start, sums, benchmark, counts
        at = series.first_day - self.first_day
        self.sums[at: at + n] += series.returns
        self.benchmark[at: at + n] += series.benchmark
        self.counts[at: at + n] += 1

    def series(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(epoch days, returns days x sets, benchmark) over the days at least one symbol has."""
        have = self.counts > 0
        days = (self.first_day or 0) + np.flatnonzero(have)
        return days, self.sums[have] / self.counts[have, None], self.benchmark[have] / self.counts[have]
