"""`cryptobt strategies check`: a planted one-bar peek is named, also one that only suppresses exits or
only changes the logged value; causal built-ins pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.feather as feather
import pytest

from pipeline.engine import checks, strategies
from pipeline.engine.strategies import get_strategy

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = sorted((ROOT / "data" / "sample" / "binance-5m").glob("*.feather"))[0]
DONCHIAN = (ROOT / "examples" / "strategies" / "donchian.py").read_text()

PEEKING = '''
import numpy as np
from pipeline.engine.strategies.api import Param, njit

NAME = "peeking"
PARAMS = (Param("period", int, 5, "unused", minimum=1),)
COLUMNS = ("close",)
INDICATORS = ("next_change",)
INDICATOR_PARAMS = ("period",)


@njit(cache=True)
def indicators(prices, params, ind):
    close = prices[0]
    n = close.shape[0]
    for t in range(n):
        # The planted bug: bar t reads bar t + 1.
        ind[0, t] = close[t + 1] / close[t] - 1.0 if t + 1 < n else np.nan


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value):
    for t in range(ind.shape[1]):
        entries[t] = ind[0, t] > 0.0
        exits[t] = ind[0, t] < 0.0
        sig_value[t] = ind[0, t]


@njit(cache=True)
def warmup(params):
    return 1
'''


# Each strategy here is a user's file written out whole, the strategy API's boilerplate included (what a
# user writes; not shared with pipeline/engine/strategies on purpose).
# Causal entries; the peek at the next bar is used only to suppress an exit the next bar would regret.
# Cut right after a signal bar of the full series, it never shows: the suppressed bars are no signal bars.
SUPPRESSING = '''
from pipeline.engine.strategies.api import Param, njit

NAME = "suppressing"
PARAMS = (Param("period", int, 3, "bars back", minimum=1),)
COLUMNS = ("close",)
INDICATORS = ()
INDICATOR_PARAMS = ()


@njit(cache=True)
def indicators(prices, params, ind):
    pass


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value):
    close = prices[0]
    k = int(params[0])
    n = close.shape[0]
    for t in range(n):
        up = t >= k and close[t] > close[t - k]
        down = t >= k and close[t] < close[t - k]
        regret = t + 1 < n and close[t + 1] > close[t]
        entries[t] = up
        exits[t] = down and not regret
        sig_value[t] = close[t]


@njit(cache=True)
def warmup(params):
    return int(params[0]) + 1
'''

# Causal signals; only the value written to the trade log reads the next bar.
LOGGING_AHEAD = SUPPRESSING.replace('NAME = "suppressing"', 'NAME = "logging_ahead"').replace(
    "exits[t] = down and not regret", "exits[t] = down").replace(
    "sig_value[t] = close[t]", "sig_value[t] = close[t + 1] if t + 1 < n else close[t]")


@pytest.fixture(scope="module")
def market() -> dict[str, np.ndarray]:
    table = feather.read_table(SAMPLE, columns=["open", "high", "low", "close", "volume"])
    return {name: np.ascontiguousarray(table[name].to_numpy()[:3000], dtype=np.float64) for name in table.column_names}


@pytest.mark.slow
def test_the_check_names_a_strategy_that_peeks_one_bar_ahead(tmp_path, market):
    (tmp_path / "peeking.py").write_text(PEEKING)
    strategies.add_strategy_paths([tmp_path])
    report = checks.check_symbol(get_strategy("peeking"), {}, "X", market)
    assert report.cuts_checked > 0
    assert any("indicator 'next_change'" in line and "reads bars after" in line for line in report.lookahead)
    assert any("signal" in line for line in report.lookahead)


@pytest.mark.slow
def test_the_check_names_a_strategy_that_peeks_only_to_suppress_exits(tmp_path, market):
    (tmp_path / "suppressing.py").write_text(SUPPRESSING)
    strategies.add_strategy_paths([tmp_path])
    report = checks.check_symbol(get_strategy("suppressing"), {}, "X", market)
    assert report.cuts_checked == len(market["close"])  # every bar is a truncation point
    assert [line for line in report.lookahead if "the exit signal" in line and "reads bars after" in line]
    assert not [line for line in report.lookahead if "the entry signal" in line]


@pytest.mark.slow
def test_the_check_compares_every_output_the_strategy_fills_the_logged_value_too(tmp_path, market):
    (tmp_path / "logging_ahead.py").write_text(LOGGING_AHEAD)
    strategies.add_strategy_paths([tmp_path])
    report = checks.check_symbol(get_strategy("logging_ahead"), {}, "X", market)
    assert len(report.lookahead) == 1 and "the logged value" in report.lookahead[0], report.lookahead


# Causal long signals; its own short entries read the next bar (a short side the futures run trades).
SHORTING_AHEAD = SUPPRESSING.replace('NAME = "suppressing"', 'NAME = "shorting_ahead"').replace(
    "exits[t] = down and not regret", "exits[t] = down") + '''

@njit(cache=True)
def short_signals(prices, params, ind, enter_short, exit_short):
    close = prices[0]
    n = close.shape[0]
    for t in range(n):
        enter_short[t] = t + 1 < n and close[t + 1] < close[t]
        exit_short[t] = t >= 1 and close[t] > close[t - 1]
'''


@pytest.mark.slow
def test_the_check_covers_a_strategys_own_short_signals(tmp_path, market):
    (tmp_path / "shorting_ahead.py").write_text(SHORTING_AHEAD)
    strategies.add_strategy_paths([tmp_path])
    report = checks.check_symbol(get_strategy("shorting_ahead"), {}, "X", market)
    assert len(report.lookahead) == 1 and report.lookahead[0].startswith("the short entry signal at bar "), \
        report.lookahead
    assert "reads bars after" in report.lookahead[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rsi", "ma_crossover", "bollinger", "macd", "buy_and_hold"])
def test_the_built_ins_have_no_look_ahead(name, market):
    report = checks.check_symbol(get_strategy(name), {}, "X", market)
    assert report.lookahead == [] and report.declaration == []
    assert report.cuts_checked == len(market["close"])


def test_warmup_sensitivity_is_rounding_for_a_finite_window_and_small_for_wilder(market):
    sma = checks.check_symbol(get_strategy("ma_crossover"), {}, "X", market).warmup
    # A running sum forgets exactly, up to the rounding of the sums dropped.
    assert all(value < 1e-12 for value in sma[100].values())
    rsi = checks.check_symbol(get_strategy("rsi"), {}, "X", market).warmup
    assert all(rsi[drop]["rsi"] is not None for drop in checks.DROPS)
    assert rsi[100]["rsi"] < 1e-3


@pytest.mark.slow
def test_cli_check_exits_1_naming_the_peek_and_0_for_a_causal_strategy(tmp_path):
    import os
    import subprocess
    import sys

    from pipeline import demo

    demo.build_sample_lake(tmp_path / "lake", n_symbols=2, years=0.1, sample=None)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "peeking.py").write_text(PEEKING)
    (folder / "suppressing.py").write_text(SUPPRESSING)
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(tmp_path / "lake"), "REDIS_URL": "", "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "pipeline", "strategies", "check"]
    peek = subprocess.run([*run, "peeking", "--strategy-path", str(folder)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert peek.returncode == 1, peek.stderr
    assert "LOOK-AHEAD" in peek.stdout and "indicator 'next_change'" in peek.stdout
    suppress = subprocess.run([*run, "suppressing", "--strategy-path", str(folder)], capture_output=True,
                              text=True, env=env, timeout=600)
    assert suppress.returncode == 1, suppress.stdout + suppress.stderr
    assert "LOOK-AHEAD" in suppress.stdout and "the exit signal" in suppress.stdout
    (folder / "donchian_lying.py").write_text(DONCHIAN.replace('NAME = "donchian"', 'NAME = "donchian_lying"').replace(
        '{"upper": ("entry_period",), "lower": ("exit_period",)}', '{"upper": ("exit_period",), "lower": ("exit_period",)}'))
    lying = subprocess.run([*run, "donchian_lying", "--strategy-path", str(folder)], capture_output=True, text=True,
                           env=env, timeout=600)
    assert lying.returncode == 1, lying.stdout + lying.stderr
    assert "no look-ahead, INDICATOR_PARAMS INCOMPLETE" in lying.stdout
    assert "indicator 'upper' changes with entry_period" in lying.stdout
    causal = subprocess.run([*run, "rsi", "-p", "rsi_period=10"], capture_output=True, text=True, env=env,
                            timeout=600)
    assert causal.returncode == 0, causal.stderr
    assert "no look-ahead" in causal.stdout and "LOOK-AHEAD" not in causal.stdout



@pytest.mark.slow
def test_the_check_names_an_indicator_reading_a_parameter_its_mapping_leaves_out(tmp_path, market):
    """A sweep reuses each indicator row across sets differing only in parameters it does not declare: a
    mapping that hides one would give those sets a wrong indicator, so the check changes each such
    parameter and names the row that moves. The honest Donchian passes."""
    lying = DONCHIAN.replace('NAME = "donchian"', 'NAME = "donchian_lying"').replace(
        '{"upper": ("entry_period",), "lower": ("exit_period",)}', '{"upper": ("exit_period",), "lower": ("exit_period",)}')
    assert lying != DONCHIAN.replace('NAME = "donchian"', 'NAME = "donchian_lying"')
    (tmp_path / "donchian_lying.py").write_text(lying)
    (tmp_path / "donchian.py").write_text(DONCHIAN)
    strategies.add_strategy_paths([tmp_path])
    found = checks.check_symbol(get_strategy("donchian_lying"), {}, "X", market).declaration
    assert len(found) == 1 and "indicator 'upper' changes with entry_period (20 -> 21)" in found[0]
    honest = checks.check_symbol(get_strategy("donchian"), {}, "X", market)
    assert honest.declaration == [] and honest.lookahead == []
