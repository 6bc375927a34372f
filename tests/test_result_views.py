"""Issue 26's views a user needs, through the real CLI in real processes: `results show` (the newest
run by default, walk-forward rows apart, swept vs fixed parameters, stop and sizing columns),
`results top --min-trades` and its `--json`, `results trades`, `results runs`, closed trades and the
open position apart, symbols left out said in one line, ids never cut at 80 columns, one number
format per kind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline import demo
from pipeline.engine.strategies import get_strategy
from tests.cli_env import cli_environment
from tests.csv_series import daily_csv, hourly_csv

# Every test here runs the CLI in a subprocess: left out of make test-fast.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lake(build_lake) -> Path:
    return build_lake(n_symbols=4, years=0.3)


@pytest.fixture
def env(lake, tmp_path) -> dict[str, str]:
    return cli_environment(lake, tmp_path / "results")


def cryptobt(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    if ok:
        assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


def run_id_of(done: subprocess.CompletedProcess) -> str:
    return re.search(r"run (\d{8}T\d+Z-[0-9a-f]+)", done.stdout + done.stderr).group(1)


def test_results_show_without_an_id_shows_the_newest_run(env):
    cryptobt(env, "backtest", "rsi", "--all")
    newest = run_id_of(cryptobt(env, "backtest", "macd", "--all"))
    shown = cryptobt(env, "results", "show")  # was: exit 2, "Missing argument 'RUN_ID'"
    assert f"run {newest} " in shown.stdout and "macd" in shown.stdout
    as_json = json.loads(cryptobt(env, "results", "show", "--json").stdout)
    assert as_json["run"]["run_id"] == newest


def test_results_show_sets_walk_forward_rows_apart_and_names_swept_and_fixed_parameters(env):
    sweep = cryptobt(env, "sweep", "rsi", "-g", "rsi_period=7,14", "-g", "oversold_threshold=30",
                     "-g", "sl=0,5", "--all", "--walk-forward", "2", "--pbo-blocks", "0", "--yes")
    run_id = run_id_of(sweep)
    shown = cryptobt(env, "results", "show", run_id, "--n", "100")
    out = shown.stdout
    assert "swept: rsi_period = 7, 14; sl_pct = 0, 5" in out.replace("\n", " ")
    fixed = next(line for line in out.splitlines() if line.startswith("fixed: "))
    assert set(fixed.split()[1:]) == {"oversold_threshold=30", "overbought_threshold=70"}
    whole, _, folds = out.partition("walk-forward:")
    assert folds, out
    # Whole-range rows: 4 symbols x 4 sets, none of them a fold's; before, fold rows were mixed in.
    assert re.search(r"best 16 of 16 \(whole range\)", whole)
    assert "train (in" not in whole and "oos" not in whole
    assert "train (in sample)" in folds or "train (in" in folds
    assert "test (out of" in folds and "oos stitched" in folds
    data = json.loads(cryptobt(env, "results", "show", run_id, "--json", "--n", "100").stdout)
    assert {r["fold"] for r in data["results"]} == {None} and len(data["results"]) == 16
    assert {r["split"] for r in data["walk_forward"]} == {"train", "test", "oos"}
    assert data["run"]["swept"] == {"rsi_period": [7, 14], "sl_pct": [0.0, 5.0]}
    # The swept stop-loss is a column of the leaderboard.
    assert "sl %" in whole


def test_results_top_min_trades_json_fields_and_stop_columns(env):
    run_id = run_id_of(cryptobt(env, "backtest", "rsi", "--all", "--sl", "3", "--size", "0.5"))
    rows = json.loads(cryptobt(env, "results", "top", "--n", "50", "--json").stdout)
    assert rows and all(r["snapshot_id"] and r["run_id"] == run_id for r in rows)
    assert all(r["sl_pct"] == 3.0 and r["size"] == 0.5 for r in rows)
    cut = max(r["num_trades"] for r in rows)
    kept = json.loads(cryptobt(env, "results", "top", "--n", "50", "--min-trades", str(cut), "--json").stdout)
    assert kept and all(r["num_trades"] >= cut for r in kept) and len(kept) < len(rows)
    table = cryptobt(env, "results", "top", "--n", "3").stdout
    assert "sl %" in table and "size" in table
    bad = cryptobt(env, "results", "top", "--min-trades", "-1", ok=False)
    assert bad.returncode != 0 and "--min-trades -1" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_results_trades_lists_a_runs_round_trips(env, tmp_path):
    run_id = run_id_of(cryptobt(env, "backtest", "rsi", "--all", "--trades"))
    symbol = "SYN001"
    listed = json.loads(cryptobt(env, "results", "trades", run_id, "--symbol", symbol, "--json").stdout)
    stored = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/trades/**/*.parquet', "
                        f"hive_partitioning = true, union_by_name = true) WHERE run_id = '{run_id}' AND "
                        f"symbol = '{symbol}' AND kind = 'round_trip'").fetchall()[0][0]
    assert len(listed) == stored > 0
    assert {r["symbol"] for r in listed} == {symbol}
    assert listed[-1]["exit_reason"] in ("signal", "end_of_data")
    table = cryptobt(env, "results", "trades", run_id, "--symbol", symbol, "--n", "3").stdout
    assert f"3 of {stored} round trip(s)" in table
    without = run_id_of(cryptobt(env, "backtest", "rsi", "--all"))
    refused = cryptobt(env, "results", "trades", without, ok=False)
    assert refused.returncode == 1 and "--trades" in refused.stderr


def test_closed_trades_and_the_open_position_are_apart(env):
    """buy_and_hold holds one position to the end: 0 closed trades and 1 open (was: `trades 1`, win % of 0)."""
    board = cryptobt(env, "backtest", "buy_and_hold", "--all").stdout
    header = next(line for line in board.splitlines() if "symbol" in line and "return %" in line)
    assert re.search(r"\btrades\b", header) and re.search(r"\bopen\b", header), board
    assert header.split().index("open") == header.split().index("trades") + 1
    row = next(line for line in board.splitlines() if line.strip().startswith("SYN001"))
    assert re.search(r"\s0\s+1\s+-\s", row), row  # trades 0, open 1, win % - (nothing closed)


def test_run_history_and_ids_are_never_cut_at_80_columns(env):
    run_id = run_id_of(cryptobt(env, "backtest", "rsi", "--all"))
    history = cryptobt(env, "results", "runs").stdout
    assert run_id in history
    snapshots = cryptobt(env, "lake", "snapshots").stdout
    snapshot = json.loads(cryptobt(env, "lake", "snapshots", "--json").stdout)[-1]["snapshot_id"]
    assert snapshot in snapshots  # was: '20261204T1640…'
    assert "…" not in history + snapshots
    assert all(len(line) <= 80 for line in (history + snapshots).splitlines())


def test_one_format_per_kind_in_the_tables(env):
    """Percentages with two decimals whatever their size (was 5,806 next to 12.35)."""
    board = cryptobt(env, "backtest", "buy_and_hold", "--all").stdout
    for line in board.splitlines():
        if line.strip().startswith("SYN"):
            value = line.split()[1]
            assert re.fullmatch(r"-?\d{1,3}(,\d{3})*\.\d\d", value), line


def test_symbols_left_out_of_a_run_are_named_in_one_line(tmp_path, database_url):
    environment = dict(os.environ)
    environment.update(DATABASE_URL=database_url, REDIS_URL="", CRYPTOBT_LAKE_ROOT=str(tmp_path / "lake"),
                       CRYPTOBT_RESULTS_ROOT=str(tmp_path / "results"), PREFECT_HOME=str(tmp_path / "prefect"),
                       PYTHONPATH=str(ROOT), COLUMNS="100")
    daily_csv(tmp_path / "GOOG.csv")
    hourly_csv(tmp_path / "HOURLY.csv")
    cryptobt(environment, "db", "init")
    cryptobt(environment, "db", "import", str(tmp_path / "GOOG.csv"))
    cryptobt(environment, "db", "import", str(tmp_path / "HOURLY.csv"))
    cryptobt(environment, "export", "--no-prefect")
    done = cryptobt(environment, "backtest", "rsi")
    # Before: GOOG vanished from the run without a word.
    notes = [line for line in done.stderr.splitlines() if "left out" in line]
    assert notes == [notes[0]] and "GOOG" in notes[0] and "1d" in notes[0] and "1h" in notes[0], done.stderr
    assert "HOURLY" in done.stdout and "GOOG" not in done.stdout
    # --json carries the list with the run (before: a bare list of results, GOOG nowhere).
    answer = json.loads(cryptobt(environment, "backtest", "rsi", "--json").stdout)
    assert answer["left_out"] == {"GOOG": "its own bars are 1d, coarser than 1h"}
    assert [r["symbol"] for r in answer["results"]] == ["HOURLY"] and answer["interval"] == "1h"
    swept = json.loads(cryptobt(environment, "sweep", "rsi", "-g", "rsi_period=7,14", "--json").stdout)
    assert swept["left_out"] == answer["left_out"] and {r["symbol"] for r in swept["best"]} == {"HOURLY"}
    # The run path the API shares says it too (the API's `done` event carries `left_out`).
    from pipeline import runs
    from pipeline.core.config import Settings
    from pipeline.engine import options

    settings = Settings(lake_root=tmp_path / "lake", results_root=tmp_path / "results2", cache_enabled=False)
    outcome = runs.backtest(settings, options.run_config(get_strategy("rsi")), write_results=False)
    assert outcome.left_out == {"GOOG": "its own bars are 1d, coarser than 1h"}
    named = runs.backtest(settings, options.run_config(get_strategy("rsi")), ["HOURLY"], write_results=False)
    assert named.left_out == {}


def test_results_top_tells_two_sources_of_one_symbol_apart(tmp_path, database_url):
    """Issue 26: the sample lake's ETH_BTC and PostgreSQL's ETH_BTC were two unlabelled rows of one name."""
    environment = dict(os.environ)
    environment.update(DATABASE_URL=database_url, REDIS_URL="", CRYPTOBT_RESULTS_ROOT=str(tmp_path / "results"),
                       PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(ROOT), COLUMNS="120")
    sample = ROOT / "data" / "sample" / "binance-5m"
    demo.build_sample_lake(tmp_path / "sample-lake", n_symbols=1, years=0.1, sample=sample)
    cryptobt({**environment, "CRYPTOBT_LAKE_ROOT": str(tmp_path / "sample-lake")}, "backtest", "rsi", "-s", "ETH_BTC")
    postgres = {**environment, "CRYPTOBT_LAKE_ROOT": str(tmp_path / "pg-lake")}
    cryptobt(postgres, "db", "init")
    cryptobt(postgres, "db", "import", str(sample / "ETH_BTC-5m.feather"), "--replace")
    cryptobt(postgres, "export", "--no-prefect")
    cryptobt(postgres, "backtest", "rsi", "-s", "ETH_BTC", "--fee", "0.2")
    rows = [r for r in json.loads(cryptobt(postgres, "results", "top", "--n", "10", "--json").stdout)
            if r["symbol"] == "ETH_BTC"]
    assert {r["source"] for r in rows} == {"sample", database_url.split("//")[0] + "//" + database_url.split("@")[-1]}
    assert {r["market"] for r in rows} == {"spot"}
    table = cryptobt(postgres, "results", "top", "--n", "10").stdout
    assert "source" in table.splitlines()[2] and "sample" in table
