"""The stationary bootstrap over a sweep's daily return matrix, and the tests built on its draws.

One repetition is one draw of day indices (Politis and Romano's stationary bootstrap: a block starts at a
uniform day and runs for a geometric number of days of mean `block`, wrapping round the end), shared by
every column of the matrix, as the reality check, StepM and the model confidence set require. A block of
consecutive days sums as the difference of two prefix sums, so a repetition costs a few dozen row
differences instead of one row per day. The draws come from a counter-based generator (splitmix64 keyed
by the seed and the repetition), so repetition r is the same whatever thread runs it and however many
threads there are. The formulas, and where each follows `arch` 8, are in the contract ("Sweep
statistics").
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_UNIT = 1.0 / 9007199254740992.0  # 2**-53


@njit(cache=True, inline="always")
def _splitmix(state):
    """(next state, 64 random bits) of splitmix64."""
    state = state + _GOLDEN
    z = state
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return state, z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _stream(seed, rep):
    """The generator state of repetition `rep` under `seed` (one stream per repetition)."""
    state, bits = _splitmix(np.uint64(seed) * _GOLDEN + np.uint64(rep))
    return bits ^ state


@njit(cache=True, inline="always")
def _uniform(state):
    """(next state, a uniform in [0, 1))."""
    state, bits = _splitmix(state)
    return state, (bits >> np.uint64(11)) * _UNIT


@njit(cache=True)
def stationary_blocks(seed, rep, n_days, block, starts, lengths):
    """Repetition `rep`'s blocks over `n_days` days: block b covers days starts[b] .. starts[b] + lengths[b] - 1
    (modulo n_days), in order, lengths summing to n_days. Returns the number of blocks (at most n_days).

    A block's length is geometric with mean `block` (a new block starts after each day with probability
    1 / block), cut at the series' length: the distribution of `arch`'s StationaryBootstrap indices."""
    state = _stream(seed, rep)
    p = 1.0 / block
    log_stay = np.log(1.0 - p) if p < 1.0 else -np.inf
    t = 0
    b = 0
    while t < n_days:
        state, u = _uniform(state)
        start = min(int(u * n_days), n_days - 1)
        state, v = _uniform(state)
        length = 1 if p >= 1.0 else 1 + int(np.floor(np.log(1.0 - v) / log_stay))
        length = min(length, n_days - t)
        starts[b] = start
        lengths[b] = length
        b += 1
        t += length
    return b


@njit(cache=True)
def bootstrap_indices(seed, reps, n_days, block):
    """The day index of every draw (reps x n_days): what `bootstrap_means` sums, for tests and for handing
    the very same draws to another implementation."""
    out = np.empty((reps, n_days), dtype=np.int64)
    starts = np.empty(n_days, dtype=np.int64)
    lengths = np.empty(n_days, dtype=np.int64)
    for r in range(reps):
        n_blocks = stationary_blocks(seed, r, n_days, block, starts, lengths)
        t = 0
        for b in range(n_blocks):
            for i in range(lengths[b]):
                out[r, t] = (starts[b] + i) % n_days
                t += 1
    return out


@njit(cache=True, parallel=True)
def bootstrap_means(prefix, seed, reps, block, out):
    """out[r, k] = the mean of column k over repetition r's draw, from `prefix` ((T + 1) x K: row t holds
    the sum of rows 0 .. t - 1 of the matrix, row 0 zeros). One shared draw per repetition for all columns."""
    n_days = prefix.shape[0] - 1
    n_cols = prefix.shape[1]
    for r in prange(reps):
        starts = np.empty(n_days, dtype=np.int64)
        lengths = np.empty(n_days, dtype=np.int64)
        n_blocks = stationary_blocks(seed, r, n_days, block, starts, lengths)
        acc = np.zeros(n_cols)
        for b in range(n_blocks):
            lo = starts[b]
            hi = lo + lengths[b]
            if hi <= n_days:
                for k in range(n_cols):
                    acc[k] += prefix[hi, k] - prefix[lo, k]
            else:
                wrapped = hi - n_days
                for k in range(n_cols):
                    acc[k] += (prefix[n_days, k] - prefix[lo, k]) + prefix[wrapped, k]
        for k in range(n_cols):
            out[r, k] = acc[k] / n_days


@njit(cache=True, parallel=True)
def long_run_variance(demeaned, q):
    """omega^2 of each row of `demeaned` (K x T, each series minus its mean): (gamma_0 + 2 sum over lags
    i = 1 .. T - 1 of kappa_i gamma_i) / T with Politis and Romano's stationary-bootstrap kernel kappa_i =
    (1 - i / T) q^i + (i / T) q^(T - i), q = 1 - 1 / block, gamma_i = sum over t of x_t x_(t + i): `arch`'s
    SPA variance. Sum over t of x_t A_t, A_t = sum over i of kappa_i x_(t + i), in O(T) by three backward
    recursions (P1 = sum q^i x, P2 = sum i q^i x, S = sum i q^(T - i) x over the days after t) instead of
    every lag's autocovariance."""
    n_series, n = demeaned.shape
    out = np.empty(n_series)
    q_last = q ** (n - 1)
    for k in prange(n_series):
        x = demeaned[k]
        total = x[n - 1] * x[n - 1]
        if q == 0.0:  # a block of one day: kappa is 0 at every lag
            for t in range(n - 1):
                total += x[t] * x[t]
            out[k] = total / n
            continue
        p1 = 0.0
        p2 = 0.0
        r_sum = 0.0  # sum over j > t of q^(T - j + t) x_j
        s_sum = 0.0  # sum over j > t of (j - t) q^(T - j + t) x_j
        for t in range(n - 2, -1, -1):
            following = x[t + 1]
            p2 = q * (following + p2 + p1)
            p1 = q * (following + p1)
            s_sum = q_last * following + (s_sum + r_sum) / q
            r_sum = q_last * following + r_sum / q
            weighted = p1 - p2 / n + s_sum / n
            total += x[t] * x[t] + 2.0 * x[t] * weighted
        out[k] = total / n
    return out


@njit(cache=True, parallel=True)
def spa_exceedances(boot, recentre, observed, selected, tie, out):
    """The SPA's bootstrap statistics against the observed one: out[r, j] = 1 where max over the selected
    columns k of (boot[r, k] - recentre[j, k]) exceeds `observed` by more than `tie`, for each recentring j
    (lower, consistent, upper), else 0. `arch`'s SPA.compute: the statistic is the largest mean loss
    differential. A draw that takes the same days as the sample, in any rotation (a block wrapping round the
    end), gives the very statistic observed: a tie, which the sums' rounding must not turn into an
    exceedance (arch counts it or not as its own rounding falls)."""
    reps, n_cols = boot.shape
    for r in prange(reps):
        for j in range(recentre.shape[0]):
            best = -np.inf
            for k in range(n_cols):
                if selected[k]:
                    value = boot[r, k] - recentre[j, k]
                    if value > best:
                        best = value
            out[r, j] = 1.0 if best > observed + tie else 0.0


@njit(cache=True, parallel=True)
def spa_maxima(boot, recentre, selected, out):
    """out[r] = max over the selected columns k of (boot[r, k] - recentre[k]): the distribution StepM's
    critical value is a quantile of."""
    reps, n_cols = boot.shape
    for r in prange(reps):
        best = -np.inf
        for k in range(n_cols):
            if selected[k]:
                value = boot[r, k] - recentre[k]
                if value > best:
                    best = value
        out[r] = best


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def pair_weights(centred):
    """1 / sqrt(v[i, j]) of the model confidence set, v[i, j] the mean over repetitions of
    (centred[i, r] - centred[j, r])**2 (`centred` K x R: each column's bootstrap mean loss minus its mean
    loss), plus 1 on the diagonal as `arch` adds; 0 where a pair's difference never varies (it cannot
    decide). Symmetric. Rows i and K - 1 - i go to the same thread (together K - 1 pairs), so the
    threads share the triangle evenly."""
    n_cols, reps = centred.shape
    out = np.empty((n_cols, n_cols))
    for half in prange((n_cols + 1) // 2):
        for pick in range(2):
            h = np.int64(half)  # prange's index is unsigned: int64 arithmetic with it would be float
            i = h if pick == 0 else n_cols - 1 - h
            if pick == 1 and i == h:
                continue  # the middle row of an odd K
            out[i, i] = 1.0
            for j in range(i + 1, n_cols):
                total = 0.0
                for r in range(reps):
                    d = centred[i, r] - centred[j, r]
                    total += d * d
                v = total / reps
                w = 1.0 / np.sqrt(v) if v > 0.0 else 0.0
                out[i, j] = w
                out[j, i] = w
    return out


@njit(cache=True)
def _row_best(stats, alive, i):
    """The largest stats[i, j] over the models j still in (alive)."""
    best = -np.inf
    for j in range(stats.shape[0]):
        if alive[j] and stats[i, j] > best:
            best = stats[i, j]
    return best


@njit(cache=True)
def mcs_order(mean_loss, weights):
    """The model confidence set's elimination order and statistics, from the sample alone (Hansen, Lunde and
    Nason 2011, the range statistic T_R; `arch`'s MCS method "R"): with t[i, j] = (mean_loss[i] -
    mean_loss[j]) * weights[i, j], step s's statistic is the largest t[i, j] over the models left, and it
    eliminates that pair's i (the first in row-major order). Returns (order (K - 1,): the model eliminated at
    each step, statistic (K - 1,)). The bootstrap decides only the steps' p-values (`mcs_exceedances`)."""
    n_cols = mean_loss.shape[0]
    stats = np.empty((n_cols, n_cols))
    for i in range(n_cols):
        for j in range(n_cols):
            stats[i, j] = (mean_loss[i] - mean_loss[j]) * weights[i, j]
    alive = np.ones(n_cols, dtype=np.bool_)
    observed = np.empty(n_cols)  # each model's largest t[i, j] over the models left
    for i in range(n_cols):
        observed[i] = _row_best(stats, alive, i)
    order = np.empty(max(n_cols - 1, 0), dtype=np.int64)
    statistic = np.empty(max(n_cols - 1, 0))
    for step in range(n_cols - 1):
        worst = -1
        top = -np.inf
        for i in range(n_cols):
            if alive[i] and observed[i] > top:
                top = observed[i]
                worst = i
        order[step] = worst
        statistic[step] = top
        alive[worst] = False
        for i in range(n_cols):
            if alive[i] and stats[i, worst] == observed[i]:
                observed[i] = _row_best(stats, alive, i)
    return order, statistic


@njit(cache=True, inline="always", fastmath={"nnan", "ninf", "nsz"})
def _row_max(a, c, row):
    """max over j of (a - c[j]) * row[j]."""
    best = -np.inf
    for j in range(c.shape[0]):
        best = max(best, (a - c[j]) * row[j])
    return best


@njit(cache=True, parallel=True, fastmath={"nnan", "ninf", "nsz"})
def mcs_row_maxima(centred_t, weights, out):
    """out[r, i] = max over every j of (centred_t[r, i] - centred_t[r, j]) * weights[i, j]: each repetition's
    row maxima before any elimination. Four repetitions share each pass over a row of the weights (the
    weights are read a quarter as often, and the four maxima fill the vector unit); the flags only let the
    maxima vectorise (no NaN here), the values are those of the plain loop, bit for bit."""
    reps, n_cols = centred_t.shape
    quads = reps // 4
    for q in prange(quads + reps % 4):
        if q >= quads:  # the repetitions past the last four, one at a time
            r = 4 * quads + (q - quads)
            for i in range(n_cols):
                out[r, i] = _row_max(centred_t[r, i], centred_t[r], weights[i])
            continue
        r0 = 4 * q
        c0 = centred_t[r0]
        c1 = centred_t[r0 + 1]
        c2 = centred_t[r0 + 2]
        c3 = centred_t[r0 + 3]
        for i in range(n_cols):
            row = weights[i]
            a0 = c0[i]
            a1 = c1[i]
            a2 = c2[i]
            a3 = c3[i]
            b0 = -np.inf
            b1 = -np.inf
            b2 = -np.inf
            b3 = -np.inf
            for j in range(n_cols):
                x = row[j]
                b0 = max(b0, (a0 - c0[j]) * x)
                b1 = max(b1, (a1 - c1[j]) * x)
                b2 = max(b2, (a2 - c2[j]) * x)
                b3 = max(b3, (a3 - c3[j]) * x)
            out[r0, i] = b0
            out[r0 + 1, i] = b1
            out[r0 + 2, i] = b2
            out[r0 + 3, i] = b3


@njit(cache=True, parallel=True)
def mcs_exceedances(centred_t, weights, order, statistic, eliminated_at, first, stop, row_max, out):
    """Steps first .. stop - 1 of the model confidence set for every repetition: out[r, s] = 1 where the largest
    (centred_t[r, i] - centred_t[r, j]) * weights[i, j] over the models left at step s exceeds the step's
    statistic. `row_max` (R x K) carries each repetition's row maxima over the models left from one call to
    the next (`mcs_row_maxima` before the first); `eliminated_at[i]` is the step that eliminates model i (K - 1:
    never). After step s eliminates e = order[s], the row maxima that e attained are recomputed (weights is
    symmetric: its row e is read in order), and the next step's largest is found in the same pass."""
    reps, n_cols = centred_t.shape
    for r in prange(reps):
        c = centred_t[r]
        rm = row_max[r]
        best = -np.inf
        for i in range(n_cols):
            if eliminated_at[i] >= first and rm[i] > best:
                best = rm[i]
        for step in range(first, stop):
            out[r, step - first] = 1.0 if statistic[step] < best else 0.0
            e = order[step]
            ce = c[e]
            we = weights[e]
            best = -np.inf
            for i in range(n_cols):
                if eliminated_at[i] <= step:
                    continue
                if (c[i] - ce) * we[i] == rm[i]:
                    a = c[i]
                    wi = weights[i]
                    top = -np.inf
                    for j in range(n_cols):
                        if eliminated_at[j] > step:
                            value = (a - c[j]) * wi[j]
                            if value > top:
                                top = value
                    rm[i] = top
                if rm[i] > best:
                    best = rm[i]


@njit(cache=True, parallel=True)
def bhy_population(n_tests, draws, seed, correlation, p_null, mean_effect):
    """Harvey and Liu's (2015) simulated populations of the other tests, as their program draws them: `draws`
    populations of n_tests t-ratios from Harvey, Liu and Zhu's model (with probability p_null a strategy has
    no edge, else its monthly mean is exponential with mean `mean_effect`; its t-ratio over 240 months of
    15 % annual volatility is |mean / se + z|, the z standard normals with pairwise `correlation`, 0 for
    independent tests), as sorted p-values 2 (1 - Phi(t)) (draws x n_tests), with each population's suffix
    minima for `bhy_adjust` (draws x (n_tests + 1)): suffix[w, q] = the smallest scaled value of the others
    from the q-th on, each as it stands after a tested p-value (combined position q + 2, 1-based, scaled by
    (n_tests + 1) c / position, c = sum of 1 / i for i = 1 .. n_tests + 1; the largest of all unscaled)."""
    m = n_tests
    scale = _bhy_scale(m)
    se = 0.15 / np.sqrt(12.0) / np.sqrt(240.0)
    shared = np.sqrt(correlation)
    own_part = np.sqrt(1.0 - correlation)
    others = np.empty((draws, m))
    suffix = np.empty((draws, m + 1))
    for w in prange(draws):
        state = _stream(seed, w)
        state, common = _normal(state)
        row = others[w]
        for q in range(m):
            state, z = _normal(state)
            state, edge = _uniform(state)
            state, e = _uniform(state)
            mean = -mean_effect * np.log(1.0 - e) if edge > p_null else 0.0
            t = abs(mean / se + shared * common + own_part * z)
            row[q] = math.erfc(t / np.sqrt(2.0))  # 2 (1 - Phi(t))
        row.sort()
        suffix[w, m] = np.inf
        for q in range(m - 1, -1, -1):
            value = row[q] if q == m - 1 else scale / (q + 2) * row[q]
            suffix[w, q] = min(value, suffix[w, q + 1])
    return others, suffix


@njit(cache=True, inline="always")
def _bhy_scale(m):
    c_const = 0.0
    for i in range(1, m + 2):
        c_const += 1.0 / i
    return (m + 1) * c_const


@njit(cache=True, parallel=True)
def bhy_adjust(others, suffix, p_values):
    """The BHY-adjusted p-value of each of `p_values` as one test among each population of `bhy_population`
    (draws x len(p_values)): with the n_tests + 1 p-values sorted, the k-th becomes the smallest over j >= k
    of (n_tests + 1) c / j times the j-th (the largest unscaled), as Harvey and Liu's program adjusts them."""
    draws, m = others.shape
    scale = _bhy_scale(m)
    out = np.empty((draws, p_values.shape[0]))
    for w in prange(draws):
        for n in range(p_values.shape[0]):
            p = p_values[n]
            k = np.searchsorted(others[w], p)  # others below the tested p-value: its position is k + 1
            own = p if k == m else scale / (k + 1) * p
            out[w, n] = min(own, suffix[w, k])
    return out


@njit(cache=True, inline="always")
def _normal(state):
    """(next state, a standard normal) by Box and Muller's cosine."""
    state, u1 = _uniform(state)
    state, u2 = _uniform(state)
    return state, np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * np.pi * u2)
