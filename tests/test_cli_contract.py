"""The command line's promises to a user, through the real entry point in real processes.

(Bad values, one line each, are tests/test_cli_errors.py.) Here: Ctrl-C stops a run after its current chunk,
keeps and writes what finished, says so and exits 130; .env is read (the environment wins);
`strategies` lists every parameter; tables fit 80 and 120 columns without cutting a value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from pipeline import demo
from pipeline.core import tables
from pipeline.engine import strategies
from tests.cli_env import cli_environment

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_lake(build_lake) -> Path:
    return build_lake(n_symbols=6, years=0.3, sample=demo.DEFAULT_SAMPLE)


@pytest.fixture
def env(small_lake, tmp_path, redis_url, redis_prefix, database_url) -> dict[str, str]:
    return cli_environment(small_lake, tmp_path / "results", REDIS_URL=redis_url, CRYPTOBT_CACHE_PREFIX=redis_prefix,
                           DATABASE_URL=database_url)


def cryptobt(args: list[str], env: dict[str, str], cwd: Path | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_results_sql_prints_nan_as_null_in_json_and_never_a_traceback(env):
    result = cryptobt(["results", "sql", "select 'NaN'::double AS x, 1.5::double AS y", "--json"], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"x": None, "y": 1.5}]


@pytest.mark.slow
def test_ctrl_c_stops_a_big_sweep_keeps_what_finished_and_exits_130(tmp_path, redis_url, redis_prefix):
    lake_root = tmp_path / "lake"
    demo.build_sample_lake(lake_root, n_symbols=6, years=5.0, sample=None)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOBT_")}
    environment.update(CRYPTOBT_LAKE_ROOT=str(lake_root), CRYPTOBT_RESULTS_ROOT=str(tmp_path / "results"),
                       REDIS_URL=redis_url, CRYPTOBT_CACHE_PREFIX=redis_prefix, PYTHONPATH=str(ROOT))
    # 20,000 parameter sets x 6 symbols x 43,800 hourly bars: minutes of work on this machine.
    grid = ["-g", "rsi_period=2:101:1", "-g", "oversold_threshold=10:49:1", "-g", "overbought_threshold=51:55:1"]
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "sweep", "rsi", *grid, "--top", "3", "--yes"],
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    assert process.poll() is None, "the sweep finished before it could be interrupted: make it bigger"
    process.send_signal(signal.SIGINT)
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("Ctrl-C did not stop the sweep")
    assert process.returncode == 130, stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("interrupted (SIGINT): "), stderr
    assert "Traceback" not in stderr
    planned = 20_000 * 6
    files = list((tmp_path / "results").rglob("*.parquet"))
    if "nothing was kept" in last:
        assert not files
        return
    kept = int(last.split("the ", 1)[1].split(" of ")[0].replace(",", ""))
    assert f"of {planned:,} results" in last and 0 < kept < planned
    rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/results/**/*.parquet', "
                      "hive_partitioning = true, union_by_name = true) WHERE run_id IS NOT NULL").fetchall()[0][0]
    assert rows == kept, "every result that finished is written, and only those"
    assert "best 3 of" in stdout


def test_dotenv_in_the_current_folder_is_read_and_the_environment_wins(env, tmp_path, small_lake):
    work = tmp_path / "project"
    work.mkdir()
    other = tmp_path / "from-dotenv" / "results"
    (work / ".env").write_text(f"CRYPTOBT_RESULTS_ROOT={other}\nCRYPTOBT_LAKE_ROOT=/nonexistent/lake\n")
    environment = dict(env)
    del environment["CRYPTOBT_RESULTS_ROOT"]  # from .env
    result = cryptobt(["backtest", "rsi", "-s", "ETH_BTC", "--json"], environment, cwd=work)
    assert result.returncode == 0, result.stderr  # the lake came from the environment, not .env
    assert list(other.rglob("*.parquet")), "results went where .env said"


def test_strategies_say_where_each_comes_from_and_where_yours_live(env):
    """Issue 26: the list named no origin, and nothing told a stranger where their own strategy goes."""
    plain = cryptobt(["strategies"], env).stdout
    assert "rsi (built-in)" in plain
    assert "your strategies: none; put a strategy file" in plain and "--strategy-path" in plain
    examples = ROOT / "examples" / "strategies"
    mine = cryptobt(["strategies", "--strategy-path", str(examples)], {**env, "COLUMNS": "400"}).stdout
    assert f"donchian ({examples / 'donchian.py'})" in mine
    assert f"daily_trend ({examples / 'daily_trend.py'})" in mine
    assert f"your strategies: {len(list(examples.glob('[!_]*.py')))} from {examples}" in mine


def test_strategies_list_every_parameter_default_and_range(env):
    listed = cryptobt(["strategies"], env)
    assert listed.returncode == 0, listed.stderr
    assert all(len(line) <= 80 for line in listed.stdout.splitlines())
    as_json = json.loads(cryptobt(["strategies", "--json"], env).stdout)
    assert [s["name"] for s in as_json] == strategies.strategy_names()
    for entry in as_json:
        assert entry["name"] in listed.stdout
        registered = strategies.get_strategy(entry["name"])
        assert [p["name"] for p in entry["parameters"]] == list(registered.param_names)
        for param, declared in zip(entry["parameters"], registered.params, strict=True):
            assert param["default"] == declared.default and param["allowed"] == declared.allowed()
            assert f"{param['name']} " in listed.stdout and declared.allowed() in listed.stdout


@pytest.mark.parametrize("width", [80, 120])
def test_tables_fit_the_terminal_and_never_cut_a_symbol_or_a_parameter(env, width):
    environment = dict(env, COLUMNS=str(width))
    board = cryptobt(["backtest", "rsi", "--all"], environment)
    sweep = cryptobt(["sweep", "rsi", "-g", "rsi_period=7:28:7", "-g", "oversold_threshold=20,25.5,30",
                      "--all", "--top", "3"], environment)
    top = cryptobt(["results", "top", "--n", "5"], environment)
    for result in (board, sweep, top):
        assert result.returncode == 0, result.stderr
        assert all(len(line) <= width for line in result.stdout.splitlines()), result.stdout
        assert "…" not in result.stdout
    symbols = json.loads(cryptobt(["backtest", "rsi", "--all", "--json"], environment).stdout)["results"]
    for r in symbols:
        assert f" {r['symbol']} " in board.stdout
    assert "25.5 " in sweep.stdout or "oversold_threshold=25.5" in sweep.stdout
    assert "rsi_period=14" in top.stdout


def test_huge_percentages_are_readable_in_a_narrow_cell():
    assert tables.number(1.2e10) == "1.20e+10"
    assert tables.number(-123456.7) == "-123,456.70"
    assert tables.number(12.345) == "12.35"
    assert tables.number(None) == "-"
    assert tables.cell("total_return_pct", 1.2e13) == "1.20e+13"


def test_one_format_per_kind_of_number():
    """Issue 26: percent with 2 decimals, money with thousands separators, ratios 2-3 decimals, counts whole."""
    assert tables.cell("total_return_pct", 5805.8149) == "5,805.81"  # was 5,806: no decimals past 1,000
    assert tables.cell("max_drawdown_pct", 0.5) == "0.50"
    assert tables.cell("final_value", 1134.7749) == "1,134.77"
    assert tables.cell("sharpe", 1.7512) == "1.75"
    assert tables.cell("sharpe", 0.04512) == "0.045"
    assert tables.cell("pbo", 0.4336) == "0.434"
    assert tables.cell("num_trades", 12345) == "12,345"
    assert tables.cell("max_drawdown_duration_bars", 8760) == "8,760"
    assert tables.cell("sharpe", None) == "-" and tables.cell("sharpe", float("nan")) == "-"
    assert tables.cell("entry_price", 0.08737458) == "0.0873746"  # was 0.09 (two decimals)
    assert tables.cell("exit_price", 43250.123) == "43250.1" and tables.cell("price", 1e6) == "1000000"
    assert tables.param(30.0) == "30" and tables.param(25.5) == "25.5" and tables.param(14) == "14"
