"""Users' strategies: one file from --strategy-path, CRYPTOBT_STRATEGY_PATH or an entry point.

The documented template examples/strategies/donchian.py is checked against a
plain-Python loop of its rule on the real Binance sample, run from a copy outside
the repository through the CLI (backtest and sweep), and its compiled kernel is
shown to load from Numba's cache in a second process. Broken files fail with one
line naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.feather as feather
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import PipelineError
from pipeline.engine import batch as engine
from pipeline.engine import strategies
from pipeline.engine.kernels import enums
from pipeline.engine.strategies import get_strategy
from tests.reference import reference_backtest

ROOT = Path(__file__).resolve().parents[1]
DONCHIAN = ROOT / "examples" / "strategies" / "donchian.py"
BINANCE_FILES = sorted((ROOT / "data" / "sample" / "binance-5m").glob("*.feather"))


def donchian_reference(high, low, close, entry_period: int, exit_period: int):
    """The rule of the issue, as a plain loop over Python floats."""
    n = len(close)
    entries, exits, values = [False] * n, [False] * n, [float("nan")] * n
    for t in range(n):
        upper = max(high[t - entry_period:t]) if t >= entry_period else float("nan")
        lower = min(low[t - exit_period:t]) if t >= exit_period else float("nan")
        values[t] = upper
        if t >= max(entry_period, exit_period):
            entries[t] = close[t] > upper
            exits[t] = close[t] < lower
    return np.array(entries), np.array(exits), np.array(values)


@pytest.fixture(scope="module")
def donchian(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outside_repo")
    shutil.copy(DONCHIAN, folder / "donchian.py")
    strategies.add_strategy_paths([folder])
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("fill", ["close", "next_open"])
@pytest.mark.parametrize(("entry_period", "exit_period"), [(20, 10), (5, 30), (1, 1)])
def test_donchian_trades_equal_a_plain_python_loop_on_real_binance_files(donchian, fill, entry_period,
                                                                          exit_period):
    strategy = strategies.get_strategy("donchian")
    row = np.array([entry_period, exit_period], dtype=np.float64)
    total = 0
    for path in BINANCE_FILES:
        table = feather.read_table(path, columns=["open", "high", "low", "close"])
        o, h, lo, c = (np.ascontiguousarray(table[k].to_numpy(), dtype=np.float64)
                       for k in ("open", "high", "low", "close"))
        entries, exits, values = donchian_reference(h.tolist(), lo.tolist(), c.tolist(), entry_period, exit_period)
        ref = reference_backtest(o, c, entries, exits, values, 0.001, 1000.0, fill, 105120.0)
        columns = tuple(x.reshape(1, -1) for x in (h, lo, c))
        metrics, trades, equity = strategy.kernels().run_single(columns, o, c, row, 0.001, 1000.0,
                                                               fill == "next_open", 105120.0, 0)
        assert [(int(t["bar"]), int(t["action"])) for t in trades] == [(t.bar, t.action) for t in ref.trades]
        for field in ("price", "units", "value", "fee"):
            np.testing.assert_allclose(trades[field], [getattr(t, field) for t in ref.trades], rtol=1e-12)
        np.testing.assert_allclose(equity, ref.equity, rtol=1e-12)
        assert metrics[enums.M_NUM_TRADES] == sum(t.action == enums.ACTION_BUY for t in ref.trades)
        total += len(trades)
    assert total > 50


@pytest.mark.slow
def test_donchian_declares_its_parameters_columns_and_warmup(donchian):
    strategy = strategies.get_strategy("donchian")
    assert strategy.defaults == {"entry_period": 20, "exit_period": 10}
    assert strategy.columns == ("high", "low", "close") and not strategy.builtin
    assert strategies.warmup_bars(get_strategy("donchian"), {"entry_period": 30}) == 31
    with pytest.raises(PipelineError, match="entry_period=0 is out of range"):
        strategies.resolve_params(get_strategy("donchian"), {"entry_period": 0})


@pytest.fixture(scope="module")
def lake(build_lake) -> Path:
    return build_lake(n_symbols=6, years=0.25)


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.mark.slow
def test_backtest_and_sweep_of_a_copy_outside_the_repo_write_its_parameters_as_columns(lake, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(DONCHIAN, folder / "donchian.py")
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(lake), "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "results"),
           "REDIS_URL": "", "PYTHONPATH": str(ROOT)}
    done = _cli(["backtest", "donchian", "--strategy-path", str(folder), "--all", "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert len(results) == 6 and {r["strategy"] for r in results} == {"donchian"}
    assert sum(r["num_trades"] for r in results) > 0
    done = _cli(["sweep", "donchian", "--strategy-path", str(folder), "-g", "entry_period=10:60:5",
                 "-g", "exit_period=5:30:5", "--all", "--json", "--top", "1"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    rows = duckdb.sql(
        f"SELECT entry_period, exit_period, params_json FROM read_parquet('{tmp_path}/results/run_date=*/"
        "strategy=donchian/*.parquet', union_by_name = true)").fetchall()
    assert len(rows) == 6 + 6 * 11 * 6
    assert all(json.loads(p) == {"entry_period": e, "exit_period": x} for e, x, p in rows)


@pytest.mark.slow
def test_a_second_process_loads_the_compiled_user_kernel_from_the_cache(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(DONCHIAN, folder / "donchian.py")
    probe = (
        "import numpy as np, sys\n"
        "from pipeline.engine import strategies\n"
        f"strategies.add_strategy_paths([{str(folder)!r}])\n"
        "k = strategies.get_strategy('donchian').kernels()\n"
        "c = np.linspace(1, 2, 200).reshape(1, -1); cols = (c, c, c)\n"
        f"combos = np.array([[20.0, 10.0]]); out = np.empty((1, 1, {enums.N_METRICS}))\n"
        "k.run_grid(cols, c, c, combos, np.ones(1, bool), 0.001, 1000.0, False, np.full(1, 8760.0), 0, out)\n"
        "s = k.run_grid.stats\n"
        "print(sum(s.cache_hits.values()), sum(s.cache_misses.values()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CRYPTOBT_KERNEL_CACHE": str(tmp_path / "kernels")}
    first = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=600)
    second = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.split() == ["0", "1"]  # compiled in the first process
    assert second.stdout.split() == ["1", "0"]  # loaded, not compiled, in the second


def test_editing_the_strategy_file_changes_the_code_version_in_cache_keys_and_results(tmp_path):
    folder = tmp_path / "edit"
    folder.mkdir()
    text = DONCHIAN.read_text().replace('NAME = "donchian"', 'NAME = "donchian_edit"')
    (folder / "donchian_edit.py").write_text(text)
    before = strategies.load_strategy_file(folder / "donchian_edit.py")
    version_before = engine.code_version(get_strategy("donchian_edit"))
    (folder / "donchian_edit.py").write_text(text.replace("close[t] > ind[0, t]", "close[t] >= ind[0, t]"))
    after = strategies.load_strategy_file(folder / "donchian_edit.py")
    assert before.code_version != after.code_version
    assert engine.code_version(get_strategy("donchian_edit")) != version_before


BROKEN = {
    "syntax": ("NAME = 'bad'\ndef (:\n", r"bad_syntax\.py:2: syntax error"),
    "missing": ("NAME = 'nothing_else'\n", r"missing\.py: missing declaration PARAMS"),
    "nopython": (DONCHIAN.read_text().replace('NAME = "donchian"', 'NAME = "nopy"').replace(
        "ready = t >= first", "ready = t >= first and {'a': 'dict'} is not None and object() is not None"),
        r"nopython\.py: strategy 'nopy' does not compile in Numba's nopython mode"),
    "clash": (DONCHIAN.read_text().replace('NAME = "donchian"', 'NAME = "rsi"'),
              r"clash\.py: strategy name 'rsi' clashes with the built-in 'rsi'"),
    "plain": (DONCHIAN.read_text().replace('NAME = "donchian"', 'NAME = "plainpy"').replace(
        "@njit(cache=True)\ndef signals", "def signals"), r"plain\.py: signals is not a Numba function"),
    "unmapped": (DONCHIAN.read_text().replace('NAME = "donchian"', 'NAME = "unmapped"').replace(
        '"lower": ("exit_period",)', '"middle": ("exit_period",)'),
        r"unmapped\.py: INDICATOR_PARAMS as a mapping must name every indicator of INDICATORS \('upper', 'lower'\) "
        r"once: missing \['lower'\]; unknown \['middle'\]"),
    "unknown_param": (DONCHIAN.read_text().replace('NAME = "donchian"', 'NAME = "unknown_param"').replace(
        '"lower": ("exit_period",)', '"lower": ("exit",)'),
        r"unknown_param\.py: INDICATOR_PARAMS names \['exit'\] which are not in PARAMS"),
    "bare_name": (DONCHIAN.read_text().replace('NAME = "donchian"', 'NAME = "bare_name"').replace(
        '"lower": ("exit_period",)', '"lower": "exit_period"'),
        r"bare_name\.py: INDICATOR_PARAMS must be a tuple of parameter names \(or a mapping of each indicator to "
        r"one\), not 'exit_period'"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_strategy_file_is_one_line_naming_the_file_and_the_problem(tmp_path, kind):
    source, pattern = BROKEN[kind]
    name = "bad_syntax" if kind == "syntax" else kind
    folder = tmp_path / kind
    folder.mkdir()
    (folder / f"{name}.py").write_text(source)
    with pytest.raises(PipelineError, match=pattern) as caught:
        strategies.add_strategy_paths([folder])
        strategies.get_strategy(strategies.load_strategy_file(folder / f"{name}.py").name).kernels()
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_the_cli_refuses_a_broken_strategy_path_in_one_line(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "oops.py").write_text("NAME = 'oops'\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": "", "CRYPTOBT_LAKE_ROOT": str(tmp_path / "lake")}
    done = _cli(["backtest", "oops", "--strategy-path", str(folder)], env, tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "oops.py: missing declaration PARAMS" in lines[0]
    env["CRYPTOBT_STRATEGY_PATH"] = str(folder)
    done = _cli(["strategies"], env, tmp_path)
    assert done.returncode == 1 and "oops.py: missing declaration PARAMS" in done.stderr


@pytest.mark.slow
def test_a_sweep_sharing_each_indicator_row_equals_every_set_run_alone(donchian):
    """INDICATOR_PARAMS as a mapping: the kernel keeps upper per entry_period and lower per exit_period,
    so a 3 x 4 sweep computes its indicators 6 times per symbol; every metric equals the set run alone
    and the sweep computing the indicators for every set."""
    strategy = strategies.get_strategy("donchian")
    tables = [feather.read_table(path, columns=["open", "high", "low", "close"]) for path in BINANCE_FILES]
    width = max(t.num_rows for t in tables)
    grid2d = {k: np.full((len(tables), width), np.nan) for k in ("open", "high", "low", "close")}
    for s, table in enumerate(tables):  # symbols of different lengths: NaN after each one's last bar
        for k in grid2d:
            grid2d[k][s, :table.num_rows] = table[k].to_numpy()
    params_list = [{"entry_period": e, "exit_period": x} for e in (3, 55, 20) for x in (30, 2, 10, 7)]
    combos, recompute, order = strategies.combos_matrix(strategy, params_list)
    slots, fills, shared = strategies.indicator_slots(strategy, combos, recompute, width)
    assert recompute.sum() == 12 and shared.sum() == 6 and slots.max() + 1 == 7
    columns = tuple(grid2d[k] for k in strategy.columns)
    kernels = strategy.kernels()
    annual = np.full(len(tables), 105120.0)
    every_set = np.empty((len(tables), len(params_list), enums.N_METRICS))
    kept = np.empty_like(every_set)
    kernels.run_grid(columns, grid2d["open"], grid2d["close"], combos, recompute, 0.001, 1000.0, True, annual, 0,
                     every_set)
    kernels.run_grid(columns, grid2d["open"], grid2d["close"], combos, shared, 0.001, 1000.0, True, annual, 0,
                     kept, None, None, None, None, None, None, None, None, None, 0, None, None, slots, fills)
    np.testing.assert_array_equal(kept, every_set)
    for c in range(len(params_list)):
        for s, table in enumerate(tables):
            n = table.num_rows
            alone, _, _ = kernels.run_single(tuple(grid2d[k][s:s + 1, :n] for k in strategy.columns),
                                             grid2d["open"][s, :n], grid2d["close"][s, :n], combos[c], 0.001,
                                             1000.0, True, 105120.0, 0)
            np.testing.assert_array_equal(kept[s, c], alone)
    assert kept[:, :, enums.M_NUM_TRADES].sum() > 100


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=0, max_size=60),
       period=st.integers(1, 64), want_max=st.booleans())
def test_the_templates_rolling_extreme_is_the_extreme_of_the_period_bars_before(donchian, values, period, want_max):
    """The template's van Herk / Gil-Werman window: for every series and period, bar t holds exactly the
    max (min) of the `period` bars before it, NaN while fewer precede it."""
    module = sys.modules[strategies.get_strategy("donchian").module_name]
    x = np.array(values, dtype=np.float64)
    out = np.empty_like(x)
    module._rolling_extreme_before(x, period, want_max, out)
    pick = max if want_max else min
    expected = [pick(values[t - period:t]) if t >= period else float("nan") for t in range(len(values))]
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.float64))
