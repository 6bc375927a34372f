"""Performance per time block of one equity curve, and the overfitting statistics built on it.

A sweep cuts each symbol's simulated bars into consecutive blocks (fractions of its
own bar count) and records, per (parameter set, block), a few mergeable sums of the
per-bar returns and the block's start and end equity. Any union of blocks then has its exact
Sharpe ratio (and total return, Sortino, moments) without keeping an equity curve
per parameter set: the probability of backtest overfitting (CSCV) and walk-forward
folds are computed from these sums alone.

Per-bar returns are those of the simulator's Sharpe ratio: r[t] = eq[t] / eq[t-1] - 1
with eq[-1] = the initial cash, so the Sharpe of the union of all blocks equals the
run's own (per-bar) Sharpe. The simulator fills the statistics as it goes
(`simulate.simulate_1d`'s block_fractions): block b covers bars block_edge(fractions[b], m)
.. block_edge(fractions[b + 1], m) - 1 of the symbol's m bars (the last block ends at m).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Columns of one block's statistics.
B_COUNT = 0  # returns in the block
B_SUM = 1  # sum of r
B_SUM2 = 2  # sum of r**2
B_DOWN2 = 3  # sum of min(r, 0)**2 (Sortino)
B_START = 4  # equity before the block's first bar
B_END = 5  # equity at the block's last bar
B_SUM3 = 6  # sum of r**3 (skewness, for the deflated Sharpe ratio)
B_SUM4 = 7  # sum of r**4 (kurtosis)
N_BLOCK_STATS = 8


# Columns of `held_return_sums`: the running sums of the bars' own price returns.
H_SUM = 0
H_SUM2 = 1
H_SUM3 = 2
H_SUM4 = 3
H_DOWN2 = 4
N_HELD_SUMS = 5


@njit(cache=True, inline="always")
def _add_moments(sums, r):
    """One return into running sums laid out as `held_return_sums`' columns."""
    r2 = r * r
    sums[H_SUM] += r
    sums[H_SUM2] += r2
    sums[H_SUM3] += r2 * r
    sums[H_SUM4] += r2 * r2
    loss = min(r, 0.0)
    sums[H_DOWN2] += loss * loss


@njit(cache=True)
def held_return_sums(close):
    """Running sums of the price returns a[t] = close[t] / close[t-1] - 1 of one symbol's bars, as
    (m + 1) x N_HELD_SUMS: row t sums a, a**2, a**3, a**4 and min(a, 0)**2 over bars 1 .. t - 1 (row 0
    and row 1 are 0).

    A position holding all the equity (size 1, spot) earns exactly a[t] on a bar it is held through
    without a fill: the equity is units x close. So the block statistics of the bars between two fills
    are two rows' difference, whatever the parameter set (`simulate_1d` with `held_sums`): a sweep's
    block sums cost a few additions per trade, not per bar. The difference differs from the bar-by-bar
    sum in the last bits only (a few 1e-16 of the sums' scale)."""
    m = close.shape[0]
    out = np.zeros((m + 1, N_HELD_SUMS))
    for t in range(1, m):
        for j in range(N_HELD_SUMS):
            out[t + 1, j] = out[t, j]
        _add_moments(out[t + 1], close[t] / close[t - 1] - 1.0)
    return out


@njit(cache=True, inline="always")
def block_edge(fraction: float, m: int) -> int:
    """The first bar of the block starting at `fraction` of a symbol's `m` simulated bars."""
    return int(np.floor(fraction * m + 1e-9))


# Fields of a fill logged by `log_fill`: the bar, then the account after the fill.
F_BAR = 0
F_UNITS = 1
F_CASH = 2
FILL_FIELDS = 3


@njit(cache=True)
def log_fill(fill_log, k, t, units, cash):
    """Log the account after a fill on bar t as the fill log's row k; returns k + 1 (k without a log).
    Plain @njit, not inline: it prunes its own `is None` branch by its argument's type."""
    if fill_log is None:
        return k
    fill_log[k, F_BAR] = t
    fill_log[k, F_UNITS] = units
    fill_log[k, F_CASH] = cash
    return k + 1


@njit(cache=True)
def blocks_from_fills(out, fractions, close, initial, held_sums, fill_log, n_fills):
    """The block statistics of a run whose every entry committed all the cash, from its fills alone.

    out: (B x N_BLOCK_STATS), as `simulate_1d` fills it bar by bar; fractions: (B + 1,) block edges;
    close: the m bars simulated; held_sums: `held_return_sums(close)`; fill_log: `log_fill`'s rows, the
    account (units, cash) after each of the n_fills fills, in bar order.

    Between fills the account is constant, so the equity at any bar is `cash + units * close[t]` of the
    last fill at or before it (the initial cash before the first), the simulator's own expression: the
    blocks' start and end equities and a fill bar's return are the loop's, bit for bit. A flat bar
    returns exactly 0; a bar held through earns the price's return (no cash beside the units), summed
    from held_sums' rows; these sums differ from the loop's in the last bits only.
    """
    # Each `is None` is pruned by the argument's type (simulate_1d's variants without blocks or logs).
    if out is None:
        return
    if fractions is None:
        return
    if held_sums is None:
        return
    if fill_log is None:
        return
    m = close.shape[0]
    n_blocks = fractions.shape[0] - 1
    sums = np.zeros(N_HELD_SUMS)
    cash = initial
    units = 0.0
    held = False
    k = 0
    hi = 0
    for b in range(n_blocks):
        lo = hi
        hi = m if b == n_blocks - 1 else block_edge(fractions[b + 1], m)
        start = initial if lo == 0 else cash + units * close[lo - 1]
        sums[:] = 0.0
        bar = lo  # first bar of the block not summed yet
        while k < n_fills and fill_log[k, F_BAR] < hi:
            t = int(fill_log[k, F_BAR])
            if held and t > bar:
                for j in range(N_HELD_SUMS):  # (a loop, not array arithmetic: no temporary a fill)
                    sums[j] += held_sums[t, j] - held_sums[bar, j]
            before = initial if t == 0 else cash + units * close[t - 1]
            units = fill_log[k, F_UNITS]
            cash = fill_log[k, F_CASH]
            held = not held
            _add_moments(sums, (cash + units * close[t]) / before - 1.0)
            bar = t + 1
            k += 1
        if held and hi > bar:
            for j in range(N_HELD_SUMS):
                sums[j] += held_sums[hi, j] - held_sums[bar, j]
        out[b, B_COUNT] = hi - lo
        out[b, B_SUM] = sums[H_SUM]
        out[b, B_SUM2] = sums[H_SUM2]
        out[b, B_SUM3] = sums[H_SUM3]
        out[b, B_SUM4] = sums[H_SUM4]
        out[b, B_DOWN2] = sums[H_DOWN2]
        out[b, B_START] = start
        out[b, B_END] = start if hi == lo else cash + units * close[hi - 1]


@njit(cache=True, inline="always", error_model="numpy")
def _split_sharpe(count, s, s2):
    """Per-bar Sharpe ratio of returns given by their count, sum and sum of squares, by the very float
    operations of `pipeline.engine.block_sums.sharpe_of_sums` (mean = s / n, var = (s2 - s mean) / (n - 1),
    mean / sqrt(var)), so that equal sums give equal ratios; 0 where undefined (fewer than two returns
    or var <= 1e-30): a set that never trades has no excess return, and ranks need a number.
    Branch-free, so that the loop over the sets vectorises (error_model numpy: no division checks)."""
    mean = s / count
    var = (s2 - s * mean) / (count - 1)
    defined = (count >= 2) & (var > 1e-30)
    return mean / np.sqrt(var if defined else 1.0) if defined else 0.0


# The PBO ranks each half's exact Sharpe ratios (`_split_sharpe`: four divisions and a square root per
# set) through cheap bounds of them (`_split_bounds`: one single-precision division), and takes the exact
# ratio only of the sets whose bounds cannot tell them apart: ranks, and so the PBO, are those of the
# exact ratios, bit for bit. The bounds' error terms, in units of u = 2**-53 (float64's rounding unit):
_U = 2.0 ** -53
_VAR_ERROR = 16 * _U  # |var_a - var| <= _VAR_ERROR (P + D) / (n - 1) (5.3 u P + 5.1 u D, with margin)
_KEY_ERROR = 1e-6  # a key's own roundings: 32 u in float64, plus 2**-23 from the float32 reciprocal
_KEY_FLOOR = 1e-290  # absolute error below which a key's last product may have underflowed
_ORDER_MASK = 0x7FFFFFFFFFFFFFFF


@njit(cache=True, inline="always", error_model="numpy")
def _split_bounds(count, part, last, part2, last2, low, high):
    """Bounds low[k] <= K <= high[k] of K = S |S|, S = _split_sharpe(count, part[k] + last[k],
    part2[k] + last2[k]), set k's exact ratio on one half (x |x| is strictly increasing: K orders the
    sets as S does). A set that never held a return on the half (s2 = 0: S = 0 exactly) gets
    low = high = 0; where no bound is proven (a variance at or under the 1e-30 threshold or beyond
    float32's range, a key beyond 1e13, non-finite sums) low = -inf and high = inf, so that the set
    is compared by its exact ratio.

    key = mean_a |mean_a| / var_a, mean_a = s (1 / n), var_a = (s2 - P) (1 / (n - 1)), P = s mean_a
    and the reciprocal of var_a in float32. mean_a is within 3 u of the exact mean and var_a within
    rho var_a of the exact variance, rho = _VAR_ERROR (P + D) / ((n - 1) var_a), D = s2 - P > 0; as
    P / (n - 1) = n / (n - 1) mean_a**2, rho <= _VAR_ERROR (1 + n / (n - 1) |key|) (1 + 2**-20). So
    |key - K| <= |key| (_KEY_ERROR + 2 rho) + _KEY_FLOOR while rho <= 1/4 (|key| <= 1e13 keeps it
    under 0.04), which also puts the exact variance above 1e-30 when var_a > 1.1e-30."""
    if not count >= 2:  # no set has a ratio on this half
        for k in range(low.shape[0]):
            low[k] = 0.0
            high[k] = 0.0
        return
    reciprocal = 1.0 / count
    reciprocal1 = 1.0 / (count - 1.0)
    constant = _KEY_ERROR + 2.000002 * _VAR_ERROR
    slope = 2.000002 * _VAR_ERROR * count * reciprocal1 * (1.0 + 1e-12)
    for k in range(low.shape[0]):
        s = part[k] + last[k]
        s2 = part2[k] + last2[k]
        mean = s * reciprocal
        var = (s2 - s * mean) * reciprocal1
        key = mean * abs(mean) * np.float64(np.float32(1.0) / np.float32(var))
        size = abs(key)
        tol = size * (constant + slope * size) + _KEY_FLOOR
        bounded = (var > 1.1e-30) & (var < 1e37) & (size <= 1e13)
        low[k] = key - tol if bounded else (0.0 if s2 == 0.0 else -np.inf)
        high[k] = key + tol if bounded else (0.0 if s2 == 0.0 else np.inf)


@njit(cache=True, inline="always")
def _ordered(bits):
    """An int64 that orders as the float64 whose bits these are (a float's sign bit set: the rest
    reversed), so that the max over a half's bounds is an integer reduction, which vectorises."""
    return bits ^ ((bits >> 63) & _ORDER_MASK)


@njit(cache=True, inline="always", error_model="numpy")
def _half_sharpe(count, part, last, part2, last2, k):
    """`_split_sharpe` of set k on a half whose sums are its partial sums plus its last block's."""
    return _split_sharpe(count, part[k] + last[k], part2[k] + last2[k])


@njit(cache=True, inline="always")
def _unsure(low, high, floor, ceiling, j):
    """Whether set j's bounds reach into [floor, ceiling]: its order against a ratio there is unknown."""
    return (high[j] >= floor) & (low[j] <= ceiling)


@njit(cache=True, inline="always")
def _same_sums(part, last, part2, last2, j, s, s2):
    """Whether set j's sums on the half are s and s2: then its ratio is the very ratio of those sums."""
    return (part[j] + last[j] == s) & (part2[j] + last2[j] == s2)


@njit(cache=True, inline="always")
def _best(low, high, count, part, last, part2, last2, scratch):
    """Index of the largest exact ratio of a half (`_split_sharpe`), the first among equals: the
    candidates are the sets whose upper bound reaches the largest lower bound; a lone one is the best
    without computing its ratio. scratch: a 1-element int64 array (to read the bound back as float64)."""
    bits = low.view(np.int64)
    top = _ordered(bits[0])
    for k in range(1, bits.shape[0]):
        top = max(top, _ordered(bits[k]))
    scratch[0] = _ordered(top)
    floor = scratch.view(np.float64)[0]
    candidates = 0
    index_sum = 0
    for k in range(high.shape[0]):
        candidate = high[k] >= floor
        candidates += candidate
        index_sum += k * candidate
    if candidates == 1:
        return index_sum
    best = -1
    best_value = 0.0
    k = 0
    while candidates > 0:
        if high[k] >= floor:
            value = _half_sharpe(count, part, last, part2, last2, k)
            if best < 0 or value > best_value:
                best = k
                best_value = value
            candidates -= 1
        k += 1
    return best


@njit(cache=True, inline="always")
def _rank(low, high, count, part, last, part2, last2, i, weight):
    """Rank of set i's exact ratio among a half's, each set counted weight[j] times, 1 = lowest, ties
    averaged: sets whose bounds lie clearly below or above set i's count from their bounds, the others
    (set i itself, ties, near ties) from their exact ratios."""
    a = _half_sharpe(count, part, last, part2, last2, i)
    below = 0
    equal = 0
    if abs(a) < 1e150:
        ka = a * abs(a)
        margin = abs(ka) * 4 * _U + _KEY_FLOOR
        floor = ka - margin
        ceiling = ka + margin
        unsure = 0
        unsure_index_sum = 0
        for j in range(low.shape[0]):
            below += weight[j] if high[j] < floor else 0
            maybe = _unsure(low, high, floor, ceiling, j)
            unsure += maybe
            unsure_index_sum += j if maybe else 0
        if unsure == 1 and unsure_index_sum == i:
            return below + (weight[i] + 1) / 2.0
        # Sets with set i's very sums on this half have its very ratio (most unsure sets: sets that
        # traded alike there); only the others need their own.
        s = part[i] + last[i]
        s2 = part2[i] + last2[i]
        unsure = 0
        for j in range(low.shape[0]):
            maybe = _unsure(low, high, floor, ceiling, j)
            same = _same_sums(part, last, part2, last2, j, s, s2)
            equal += weight[j] if maybe & same else 0
            unsure += maybe & (not same)
        # A loop that stops at the last of them: a plain loop over every set would be vectorised,
        # with the exact ratio computed for all of them.
        j = 0
        while unsure > 0:
            if _unsure(low, high, floor, ceiling, j) & (not _same_sums(part, last, part2, last2, j, s, s2)):
                value = _half_sharpe(count, part, last, part2, last2, j)
                below += weight[j] * (value < a)
                equal += weight[j] * (value == a)
                unsure -= 1
            j += 1
        return below + (equal + 1) / 2.0
    for j in range(low.shape[0]):  # |a| too large for the bounds' margin: every ratio exactly
        value = _half_sharpe(count, part, last, part2, last2, j)
        below += weight[j] * (value < a)
        equal += weight[j] * (value == a)
    return below + (equal + 1) / 2.0


@njit(cache=True, error_model="numpy")
def pbo_cscv(count, sums, sums2, weight):
    """Probability of backtest overfitting by combinatorially symmetric cross-validation.

    Bailey, Borwein, Lopez de Prado and Zhu (2015). `count` (S,) returns per block,
    `sums`/`sums2` (S x N) the block sums of each of N parameter sets. For every split of
    the S blocks into two halves J (train) and its complement (test): n* = the set with the
    best Sharpe ratio on J; its relative rank w = rank / (N + 1) of its Sharpe on the
    complement (1 = worst, ties averaged); logit = ln(w / (1 - w)). PBO = the share of the
    C(S, S/2) splits whose logit is <= 0 (n* no better than the median out of sample).
    Returns (pbo, mean logit); NaN with fewer than 2 sets or an odd or too small S.

    weight (N,): how many parameter sets each column stands for (`distinct_sets`: sets whose block sums
    are all equal have equal ratios on every half, so one column of them is ranked once and counted
    weight times; N in w = rank / (N + 1) is the number of sets, sum(weight)).

    Each half's sums are its blocks' sums added in block order (((0 + b1) + b2) + ..., as Python's
    sum() adds them), the same numbers whatever splits came before: sets whose blocks are equal on
    a half tie exactly there, and the in-sample best among exact ties is the first set (grid
    order), as argmax picks it.
    """
    n_blocks, n_columns = sums.shape
    n_sets = 0
    for k in range(n_columns):
        n_sets += weight[k]
    if n_sets < 2 or n_blocks < 2 or n_blocks % 2 == 1:
        return np.nan, np.nan
    half = n_blocks // 2
    # Side 0 is the half J, side 1 its complement. Row j of a side's partial sums = the sum of its
    # first j blocks in block order, from 0 (row 0 stays 0); its own sums are its last row plus its
    # last block.
    rows = np.zeros((2, half, n_columns))
    rows2 = np.zeros((2, half, n_columns))
    counts = np.zeros(2)
    taken = np.zeros(2, dtype=np.int64)
    last_block = np.zeros(2, dtype=np.int64)
    lows = np.empty((2, n_columns))
    highs = np.empty((2, n_columns))
    scratch = np.zeros(1, dtype=np.int64)
    splits = 0
    overfit = 0
    logit_sum = 0.0
    # Every half that contains block 0, as a mask whose bit S - 1 - b is block b; the other splits
    # are their complements, so each pair (J, complement) is evaluated from one set of sums, both
    # ways. The masks run in increasing order (Gosper's next combination), so from one split to the
    # next mostly the last blocks change: the rows of the blocks before the first change are kept,
    # and only those from there on are added again (about 1.8 rows per split at S = 16).
    last = 1 << n_blocks
    mask = (1 << (n_blocks - 1)) | ((1 << (half - 1)) - 1)
    previous = 0
    while mask < last:
        first_changed = 0
        if previous != 0:
            high = mask ^ previous
            top = 0
            while high > 1:
                high >>= 1
                top += 1
            first_changed = n_blocks - 1 - top
        counts[:] = 0.0
        taken[:] = 0
        for b in range(n_blocks):
            side = 1 - ((mask >> (n_blocks - 1 - b)) & 1)
            counts[side] += count[b]
            j = taken[side] + 1
            taken[side] = j
            if j == half:
                last_block[side] = b
            elif b >= first_changed:
                for k in range(n_columns):
                    rows[side, j, k] = rows[side, j - 1, k] + sums[b, k]
                    rows2[side, j, k] = rows2[side, j - 1, k] + sums2[b, k]
        previous = mask
        lowest = mask & -mask
        ripple = mask + lowest
        mask = (((ripple ^ mask) >> 2) // lowest) | ripple
        for side in range(2):
            _split_bounds(counts[side], rows[side, half - 1], sums[last_block[side]], rows2[side, half - 1],
                          sums2[last_block[side]], lows[side], highs[side])
        for train in range(2):
            # Train on J and test on its complement (train = 0), then the other way round.
            test = 1 - train
            best = _best(lows[train], highs[train], counts[train], rows[train, half - 1],
                         sums[last_block[train]], rows2[train, half - 1], sums2[last_block[train]], scratch)
            w = _rank(lows[test], highs[test], counts[test], rows[test, half - 1], sums[last_block[test]],
                      rows2[test, half - 1], sums2[last_block[test]], best, weight) / (n_sets + 1.0)
            logit = np.log(w / (1.0 - w))
            logit_sum += logit
            splits += 1
            if logit <= 0.0:
                overfit += 1
    return overfit / splits, logit_sum / splits


@njit(cache=True, parallel=True)
def pbo_many(count, sums, sums2, columns, weight, out):
    """pbo_cscv for every symbol: count (Y x S), sums/sums2 (Y x S x N), of which symbol y's first
    columns[y] are its distinct sets, counted weight (Y x N) times; out (Y x 2) = (pbo, mean logit)."""
    for y in prange(count.shape[0]):
        used = columns[y]
        p, lg = pbo_cscv(count[y], np.ascontiguousarray(sums[y, :, :used]), np.ascontiguousarray(sums2[y, :, :used]),
                         weight[y, :used])
        out[y, 0] = p
        out[y, 1] = lg


@njit(cache=True)
def merge_blocks(blocks, members, out):
    """Statistics of a union of blocks, as one block of the path stitched from them.

    blocks: (B x N_BLOCK_STATS x N) per parameter set; members: (B,) bool, the blocks taken, in
    time order; out: (N_BLOCK_STATS, N). Sums add; the stitched path is the product of the member
    blocks' growths (each rescaled to where the previous one ended, so members from different
    runs stitch), starting at the first member's start.
    """
    n_sets = blocks.shape[2]
    for k in range(n_sets):
        for j in range(N_BLOCK_STATS):
            out[j, k] = 0.0
        level = np.nan
        for b in range(blocks.shape[0]):
            if not members[b]:
                continue
            st = blocks[b, B_START, k]
            if np.isnan(level):
                level = st
                out[B_START, k] = st
            scale = level / st if st != 0.0 else 0.0
            for j in (B_COUNT, B_SUM, B_SUM2, B_DOWN2, B_SUM3, B_SUM4):
                out[j, k] += blocks[b, j, k]
            level = blocks[b, B_END, k] * scale
        out[B_END, k] = level
