"""The sweep statistics (issue 30) against `arch` 8 and the published worked examples.

Parity comes two ways: exact, by handing `arch` the very bootstrap draws our kernels sum (arch asks its
bootstrap object for each repetition's indices, `update_indices`, and we answer with ours), and within
Monte-Carlo error, each with its own generator at 5,000 repetitions. arch fails on pandas 3 DataFrames, so
it gets NumPy arrays.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import PipelineError
from pipeline.engine import sweep_stats as ss
from pipeline.engine.kernels import bootstrap as kb

arch_bootstrap = pytest.importorskip("arch.bootstrap")


def _matrix(seed: int, days: int = 400, sets: int = 30, spread: tuple[float, float] = (-0.001, 0.0008)) -> np.ndarray:
    """Daily returns of `sets` strategies sharing a market factor, their means spread over `spread`."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((days, sets)) * 0.02 + np.linspace(*spread, sets)
            + 0.01 * rng.standard_normal((days, 1)))


def _feed(draws: np.ndarray):
    """An `update_indices` that answers arch's bootstrap with our draws, one repetition per call."""
    rows = iter(draws)
    return lambda: next(rows)


def _ours(returns: np.ndarray, benchmark: np.ndarray, reps: int, seed: int, best: int, **kw) -> dict:
    request = ss.StatsRequest(stats=ss.STAT_NAMES, reps=reps, seed=seed, **kw)
    return ss.statistics(returns, np.ones(returns.shape[1], dtype=bool), benchmark, best, request)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("benchmark_kind", ["zero", "market"])
def test_equal_to_arch_on_the_same_draws(seed: int, benchmark_kind: str) -> None:
    returns = _matrix(seed, spread=(-0.003, 0.001))
    days, sets = returns.shape
    rng = np.random.default_rng(seed + 100)
    benchmark = np.zeros(days) if benchmark_kind == "zero" else 0.02 * rng.standard_normal(days) + 0.0005
    reps, block, best = 500, int(math.sqrt(days)), sets - 1
    ours = _ours(returns, benchmark, reps, seed, best)
    draws = kb.bootstrap_indices(seed, reps, days, block)
    # arch works on losses: the negated returns.
    spa = arch_bootstrap.SPA(-benchmark, -returns, reps=reps)
    spa.bootstrap.update_indices = _feed(draws)
    spa.compute()
    assert ours["spa"] == {k: float(v) for k, v in spa.pvalues.items()}
    step = arch_bootstrap.StepM(-benchmark, -returns, size=0.05, reps=reps)
    step.spa.bootstrap.update_indices = _feed(draws)
    step.compute()
    assert ours["stepm"] == [int(k) for k in step.superior_models]
    mcs = arch_bootstrap.MCS(-returns, size=0.05, reps=reps, method="R")
    mcs.bootstrap.update_indices = _feed(draws)
    mcs.compute()
    assert ours["mcs"] == [int(k) for k in mcs.included]
    assert 0 < len(ours["mcs"]) < sets  # a case that tests the elimination, not a trivial set
    interval = arch_bootstrap.StationaryBootstrap(block, returns[:, best])
    interval.update_indices = _feed(draws)
    low, high = interval.conf_int(lambda x: x.mean() / x.std(ddof=1) * math.sqrt(365), reps=reps,
                                  method="basic").ravel()
    assert ours["sharpe_ci"] == pytest.approx([low, high], rel=1e-9)


@pytest.mark.parametrize(("days", "block"), [(400, 20), (1826, 42), (13, 3), (5, 1)])
def test_long_run_variance_is_archs(days: int, block: int) -> None:
    """The SPA's variance by three recursions equals arch's sum over every lag (its SPA's own estimate)."""
    returns = _matrix(days, days=days, sets=6)
    spa = arch_bootstrap.SPA(np.zeros(days), -returns, block_size=block, reps=10)
    spa.compute()
    demeaned = returns - returns.mean(axis=0)
    ours = kb.long_run_variance(np.ascontiguousarray(demeaned.T), 1.0 - 1.0 / block)
    np.testing.assert_allclose(ours, spa._loss_diff_var, rtol=1e-12)


def test_spa_p_values_that_are_not_all_zero_are_tested() -> None:
    """The parity above would be empty if every p-value were 0 or 1: this matrix gives middling ones."""
    returns = _matrix(1)
    ours = _ours(returns, 0.02 * np.random.default_rng(101).standard_normal(400) + 0.0005, 500, 1, 29)
    assert all(0.05 < p < 0.95 for p in ours["spa"].values()), ours["spa"]


def test_within_monte_carlo_error_of_arch_with_its_own_draws() -> None:
    """5,000 repetitions each, each its own generator: p-values within 0.03 (three standard errors)."""
    returns = _matrix(4, spread=(-0.0015, 0.0012))
    benchmark = np.zeros(returns.shape[0])
    ours = _ours(returns, benchmark, 5000, 11, 0)
    spa = arch_bootstrap.SPA(-benchmark, -returns, reps=5000, seed=12)
    spa.compute()
    for kind, value in spa.pvalues.items():
        assert abs(ours["spa"][kind] - value) <= 0.03, (kind, ours["spa"], dict(spa.pvalues))
    assert 0.02 < ours["spa"]["consistent"] < 0.98


def test_clear_cut_sets_equal_to_arch_with_its_own_draws() -> None:
    """Five sets that earn 1 % a day beat a zero benchmark and five that earn nothing do not (StepM); one
    set is far ahead of the others (MCS = that set alone); both equal to arch's with its own generator."""
    rng = np.random.default_rng(5)
    days = 500
    good = 0.01 + 0.01 * rng.standard_normal((days, 5))
    flat = 0.01 * rng.standard_normal((days, 5))
    returns = np.column_stack([flat[:, :2], good, flat[:, 2:]])
    ours = _ours(returns, np.zeros(days), 2000, 3, 2)
    step = arch_bootstrap.StepM(np.zeros(days), -returns, size=0.05, reps=2000, seed=4)
    step.compute()
    assert ours["stepm"] == [int(k) for k in step.superior_models] == [2, 3, 4, 5, 6]
    leader = np.column_stack([0.02 + 0.01 * rng.standard_normal(days), returns])
    ours = _ours(leader, np.zeros(days), 2000, 3, 0)
    mcs = arch_bootstrap.MCS(-leader, size=0.05, reps=2000, method="R", seed=4)
    mcs.compute()
    assert ours["mcs"] == [int(k) for k in mcs.included] == [0]


def test_identical_sets_are_one_model() -> None:
    """Sets with the very same daily returns (a grid's neighbours often have them) are tested once and share
    the verdict; arch's MCS divides by their zero pair variance."""
    returns = _matrix(6)
    doubled = np.column_stack([returns, returns[:, -1], returns[:, 0]])
    ours = _ours(doubled, np.zeros(400), 500, 2, 29)
    plain = _ours(returns, np.zeros(400), 500, 2, 29)
    assert ours["spa"] == plain["spa"]
    assert ours["mcs"] == sorted(plain["mcs"] + [30] * (29 in plain["mcs"]) + [31] * (0 in plain["mcs"]))


def test_sets_that_never_traded_are_listed_and_left_out() -> None:
    returns = _matrix(7)
    traded = np.ones(30, dtype=bool)
    traded[[3, 9]] = False
    returns[:, [3, 9]] = 0.0
    out = ss.statistics(returns, traded, np.zeros(400), 29, ss.StatsRequest(stats=ss.STAT_NAMES, reps=300))
    assert out["never_traded"] == [3, 9] and out["tested"] == 28
    assert 3 not in out["mcs"] and 9 not in out["mcs"]


def test_too_few_days_give_a_reason_not_numbers() -> None:
    out = ss.statistics(_matrix(8, days=9), np.ones(30, dtype=bool), np.zeros(9), 0,
                        ss.StatsRequest(stats=ss.STAT_NAMES, reps=100))
    assert out["spa"] is None and "9 full day(s)" in out["reason"]


@settings(max_examples=60, deadline=None)
@given(days=st.integers(1, 120), sets=st.integers(1, 6), block=st.integers(1, 40), seed=st.integers(0, 2**31),
       reps=st.integers(1, 20))
def test_bootstrap_means_are_the_means_of_the_drawn_days(days: int, sets: int, block: int, seed: int,
                                                          reps: int) -> None:
    """For any series, block and seed: the prefix-sum means equal the plain means of the rows each
    repetition draws, and every draw is a permutation-free sample of valid days of the series' length."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((days, sets))
    prefix = np.zeros((days + 1, sets))
    np.cumsum(matrix, axis=0, out=prefix[1:])
    out = np.empty((reps, sets))
    kb.bootstrap_means(prefix, seed, reps, block, out)
    draws = kb.bootstrap_indices(seed, reps, days, block)
    assert draws.shape == (reps, days) and draws.min() >= 0 and draws.max() < days
    np.testing.assert_allclose(out, matrix[draws].mean(axis=1), rtol=1e-9, atol=1e-12)


def test_block_lengths_are_geometric_with_the_mean_asked() -> None:
    """A new block starts after a day with probability 1 / block: arch's stationary bootstrap."""
    draws = kb.bootstrap_indices(9, 400, 2000, 20)
    continues = (np.diff(draws, axis=1) % 2000) == 1
    assert abs(continues.mean() - (1 - 1 / 20)) < 0.003
    assert abs(np.bincount(draws.ravel(), minlength=2000).std() / 400 - 1) < 3  # every day drawn, no favourite


def test_draws_do_not_depend_on_threads() -> None:
    import numba

    matrix = _matrix(10)
    prefix = np.zeros((401, 30))
    np.cumsum(matrix, axis=0, out=prefix[1:])
    runs = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        out = np.empty((300, 30))
        kb.bootstrap_means(prefix, 3, 300, 20, out)
        runs.append(out)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert np.array_equal(runs[0], runs[1])


def test_haircut_matches_harvey_and_liu_exhibit_5() -> None:
    """Harvey and Liu (2015), "Backtesting", Exhibit 5: an annualised Sharpe ratio of 1.0 over 120 months,
    monthly autocorrelation 0.1 (Lo's correction: 0.912), 100 tests, average correlation 0.4. Printed:
    BHY haircut Sharpe ratio 0.438. Their BHY is the median over 2,000 simulated populations of the other
    tests, so ours, drawn by another generator, agrees within Monte-Carlo error (0.01)."""
    rho = 0.1
    corrected = (1 + (2 * rho / (1 - rho)) * (1 - (1 - rho**12) / (12 * (1 - rho)))) ** -0.5
    assert round(corrected, 3) == 0.912
    for seed in (0, 1, 2):
        (haircut,) = ss.haircut_sharpes([corrected], [120], 100, seed, correlation=0.4)
        assert haircut == pytest.approx(0.438, abs=0.01)


def test_haircut_of_independent_tests_shrinks_with_more_tests() -> None:
    one, many = (ss.haircut_sharpes([1.5], [60], n, 0)[0] for n in (10, 1000))
    assert 0 < many < one < 1.5
    assert ss.haircut_sharpes([-0.5, None], [60, 60], 10, 0) == [None, None]


def test_psr_and_min_trl_match_bailey_and_lopez_de_prado() -> None:
    """Bailey and Lopez de Prado (2012), "The Sharpe Ratio Efficient Frontier": a monthly Sharpe ratio of
    0.458 over 24 months with skewness -2.448 and kurtosis 10.164 has PSR(0) 0.913 (0.982 were the returns
    normal; 0.953 over 36 months); an annual Sharpe ratio of 2 against 1 at 95 % with monthly skewness
    -0.72 and kurtosis 5.78 needs a track record of 59.895 months. The paper prints three decimals (0.9535
    shows as 0.953), hence a tolerance of 1e-3."""
    assert ss.probabilistic_sharpe(0.458, 24, -2.448, 10.164) == pytest.approx(0.913, abs=1e-3)
    assert ss.probabilistic_sharpe(0.458, 24, 0.0, 3.0) == pytest.approx(0.982, abs=1e-3)
    assert ss.probabilistic_sharpe(0.458, 36, -2.448, 10.164) == pytest.approx(0.953, abs=1e-3)
    assert ss.min_track_record(2 / math.sqrt(12), -0.72, 5.78, 1 / math.sqrt(12)) == pytest.approx(59.895, abs=5e-4)
    assert ss.min_track_record(-0.1, 0.0, 3.0) is None


@pytest.mark.parametrize(("text", "message"), [("foo", "--stats 'foo' is not a statistic"),
                                               ("spa,bar", "--stats 'bar' is not a statistic")])
def test_unknown_statistic_is_one_line(text: str, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        ss.parse_stats(text)
    assert ss.parse_stats("mcs, SPA") == ("spa", "mcs") and ss.parse_stats("all") == ss.STAT_NAMES
