"""Sweep statistics from the lake to every surface (issue 30): the daily return matrix a sweep builds equals the
one taken from each set's own equity curve (run_single, not the sweep kernel), the statistics of a real market's
matrix equal `arch`'s on it, and --json, the results table, --returns-out and the errors say what they should."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from pipeline import demo
from pipeline.engine import batch as engine
from pipeline.engine import options, strategies
from pipeline.engine.kernels import bootstrap as kb
from pipeline.lake import reader
from pipeline.lake import snapshots as lake
from tests.cli_env import ROOT, cli_environment

arch_bootstrap = pytest.importorskip("arch.bootstrap")

GRID = ["rsi_period=6:14:2", "oversold_threshold=25,30,35"]  # 15 sets
REPS = 400


@pytest.fixture(scope="module")
def lake_root(build_lake) -> Path:
    """The real Binance sample (20 days of 5m bars, 19 full days at 1h) and two synthetic symbols."""
    return build_lake(n_symbols=2, years=0.25, sample=demo.DEFAULT_SAMPLE)


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=str(ROOT))
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    if check:
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def swept(lake_root: Path, tmp_path_factory) -> tuple[dict, Path, Path, dict[str, str]]:
    """One sweep with every statistic and --returns-out, over two real pairs and a synthetic symbol."""
    folder = tmp_path_factory.mktemp("swept")
    env = cli_environment(lake_root, folder / "results")
    path = folder / "daily.parquet"
    done = cli(env, "sweep", "rsi", *sum((["-g", g] for g in GRID), []), "-s", "ETH_BTC", "-s", "LTC_BTC",
               "-s", "SYN000", "--stats", "all", "--reps", str(REPS), "--seed", "3", "--returns-out", str(path),
               "--json", "--no-cache")
    return json.loads(done.stdout), path, folder / "results", env


def _matrix(path: Path, symbol: str) -> tuple[np.ndarray, np.ndarray]:
    """(days, days x sets) of one symbol from the --returns-out file."""
    rows = duckdb.sql(f"SELECT day, \"set\", \"return\" FROM '{path}' WHERE symbol = '{symbol}' ORDER BY day, \"set\"").fetchnumpy()
    days = np.unique(rows["day"])
    return days, rows["return"].reshape(days.size, -1)


def _reference_days(times: np.ndarray, equity: np.ndarray, initial: float) -> tuple[list[int], list[float]]:
    """Daily returns from one set's equity on the grid (NaN where no bar), by the contract's words alone:
    the equity at each UTC day's last close, from the first full day, carried over days without a bar."""
    last_of_day: dict[int, float] = {}
    for t, e in zip(times, equity, strict=True):
        if not math.isnan(e):
            last_of_day[int(t) // 86_400] = float(e)
    first_time = int(next(t for t, e in zip(times, equity, strict=True) if not math.isnan(e)))
    first_day = first_time // 86_400 + (0 if first_time % 86_400 == 0 else 1)
    previous = initial if first_time % 86_400 == 0 else last_of_day[first_day - 1]
    days, returns = [], []
    for day in range(first_day, max(last_of_day) + 1):
        today = last_of_day.get(day, previous)
        days.append(day)
        returns.append(today / previous - 1.0 if previous > 0 else 0.0)
        previous = today
    return days, returns


def test_the_daily_matrix_is_each_sets_own_equity_curve_sampled_at_day_ends(swept, lake_root: Path) -> None:
    answer, path, _, _ = swept
    rsi = strategies.get_strategy("rsi")
    sets = list(strategies.parse_grid(rsi, GRID))
    config = options.run_config(rsi, sets)
    snapshot = lake.require_snapshot(lake_root, answer["snapshot_id"])
    for symbol in ("ETH_BTC", "SYN000"):
        batch = reader.read_prices(lake_root, [symbol], "1h", None, None, columns=engine.columns_needed(config),
                                   snapshot=snapshot)
        days, matrix = _matrix(path, symbol)
        assert matrix.shape[1] == len(sets)
        for c in (0, 7, len(sets) - 1):
            _, _, equity = engine.trade_log(batch, config, 0, sets[c], config.execution(c))
            ref_days, ref_returns = _reference_days(batch.times, equity, config.initial)
            assert [int(d.astype("datetime64[D]").astype(int)) for d in days] == ref_days
            np.testing.assert_allclose(matrix[:, c], ref_returns, rtol=0, atol=1e-12)
        assert answer["stats"]["symbols"][symbol]["days"] == days.size


def test_a_real_markets_statistics_equal_arch_on_the_same_draws(swept) -> None:
    answer, path, _, _ = swept
    stats = answer["stats"]["symbols"]["ETH_BTC"]
    days, matrix = _matrix(path, "ETH_BTC")
    assert stats["days"] == days.size >= 10 and stats["reason"] is None
    tested = [c for c in range(matrix.shape[1]) if c not in stats["never_traded"]]
    # Sets with the very same daily returns are one model (arch's MCS would divide by their zero variance).
    _, first, group = np.unique(matrix[:, tested].T, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    models = matrix[:, [tested[i] for i in first[order]]]
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group = rank[np.ravel(group)]

    def members(found) -> list[int]:
        return sorted(tested[i] for i, g in enumerate(group) if g in set(int(k) for k in found))

    draws = kb.bootstrap_indices(3, REPS, days.size, int(math.sqrt(days.size)))
    feed = lambda: (lambda rows: lambda: next(rows))(iter(draws))  # noqa: E731 - a fresh feed each time
    zero = np.zeros(days.size)
    spa = arch_bootstrap.SPA(zero, -models, reps=REPS)
    spa.bootstrap.update_indices = feed()
    spa.compute()
    assert stats["spa"] == {k: float(v) for k, v in spa.pvalues.items()}
    step = arch_bootstrap.StepM(zero, -models, size=0.05, reps=REPS)
    step.spa.bootstrap.update_indices = feed()
    step.compute()
    assert stats["stepm"] == members(step.superior_models)
    mcs = arch_bootstrap.MCS(-models, size=0.05, reps=REPS, method="R")
    mcs.bootstrap.update_indices = feed()
    mcs.compute()
    assert stats["mcs"] == members(mcs.included)
    best = matrix[:, stats["best_set"]]
    interval = arch_bootstrap.StationaryBootstrap(int(math.sqrt(days.size)), best)
    interval.update_indices = feed()
    low, high = interval.conf_int(lambda x: x.mean() / x.std(ddof=1) * math.sqrt(365), reps=REPS,
                                  method="basic").ravel()
    assert stats["sharpe_ci"] == pytest.approx([low, high], rel=1e-9)


def test_json_and_the_results_table_carry_the_statistics(swept) -> None:
    answer, _, results_root, _ = swept
    stats = answer["stats"]
    assert set(stats) >= {"symbols", "pooled", "benchmark", "reps", "seed", "alpha", "sets_tried"}
    assert stats["reps"] == REPS and stats["seed"] == 3 and stats["sets_tried"] == 15
    for symbol, s in stats["symbols"].items():
        assert set(s) >= {"spa", "stepm", "mcs", "sharpe_ci", "psr", "min_trl", "haircut_sharpe"}, symbol
        assert set(s["spa"]) == {"lower", "consistent", "upper"}
    assert stats["pooled"]["days"] >= stats["symbols"]["SYN000"]["days"]
    rows = duckdb.sql(f"""SELECT symbol, "set", spa_consistent, in_stepm, in_mcs, sharpe_ci_low, psr, haircut_sharpe,
                                 stats_days
                          FROM read_parquet('{results_root}/run_date=*/strategy=*/*.parquet', union_by_name = true)
                          WHERE run_id = '{answer['run_id']}' ORDER BY symbol, "set" """).fetchall()
    assert len(rows) == 3 * 15
    for symbol, s in stats["symbols"].items():
        mine = [r for r in rows if r[0] == symbol]
        assert [r[1] for r in mine] == list(range(15))
        assert {r[2] for r in mine} == {s["spa"]["consistent"]}
        assert [c for c, r in enumerate(mine) if r[4] == 1] == s["mcs"]
        assert [c for c, r in enumerate(mine) if r[3] == 1] == s["stepm"]
        assert {r[8] for r in mine} == {s["days"]}
        best = [r for r in mine if r[5] is not None]
        assert [r[1] for r in best] == [s["best_set"]] and best[0][6] == pytest.approx(s["psr"])
    assert answer["best"][0]["set"] is not None and "in_mcs" in answer["best"][0]


def test_the_returns_file_is_long_format_with_the_parameters(swept) -> None:
    _, path, _, _ = swept
    columns = [c[0] for c in duckdb.sql(f"DESCRIBE SELECT * FROM '{path}'").fetchall()]
    assert columns == ["symbol", "set", "rsi_period", "oversold_threshold", "overbought_threshold", "day", "return"]
    per_set = duckdb.sql(f"""SELECT "set", any_value(rsi_period), any_value(oversold_threshold), count(DISTINCT rsi_period)
                             FROM '{path}' GROUP BY "set" ORDER BY "set" """).fetchall()
    sets = list(strategies.parse_grid(strategies.get_strategy("rsi"), GRID))
    assert [(r[1], r[2]) for r in per_set] == [(s["rsi_period"], s["oversold_threshold"]) for s in sets]
    assert {r[3] for r in per_set} == {1}
    assert not list(path.parent.glob(".*.tmp"))


def test_the_benchmark_buy_and_hold_is_the_symbol_held(swept, lake_root: Path, tmp_path: Path) -> None:
    """--benchmark buy_and_hold: the SPA against the pair's own daily returns from the first simulated close,
    equal to arch's with that benchmark (taken here from the read closes)."""
    answer, path, _, env = swept
    done = cli(env, "sweep", "rsi", *sum((["-g", g] for g in GRID), []), "-s", "ETH_BTC", "--stats", "spa",
               "--benchmark", "buy_and_hold", "--reps", str(REPS), "--seed", "3", "--json", "--no-cache")
    stats = json.loads(done.stdout)["stats"]["symbols"]["ETH_BTC"]
    days, matrix = _matrix(path, "ETH_BTC")
    snapshot = lake.require_snapshot(lake_root, answer["snapshot_id"])
    batch = reader.read_prices(lake_root, ["ETH_BTC"], "1h", None, None, columns=("close",), snapshot=snapshot)
    held = np.where(np.isnan(batch.columns["close"][0]), np.nan, batch.columns["close"][0])
    rsi = strategies.get_strategy("rsi")
    config = options.run_config(rsi, list(strategies.parse_grid(rsi, GRID)))
    _, _, equity = engine.trade_log(batch, config, 0, config.params_list[0], config.execution(0))
    simulated = np.where(np.isnan(equity), np.nan, held)  # the simulated bars' closes
    first = int(np.flatnonzero(~np.isnan(simulated))[0])
    _, benchmark = _reference_days(batch.times, simulated, simulated[first])  # bought at the first close
    tested = [c for c in range(matrix.shape[1]) if c not in stats["never_traded"]]
    models = np.unique(matrix[:, tested].T, axis=0).T
    draws = kb.bootstrap_indices(3, REPS, days.size, int(math.sqrt(days.size)))
    spa = arch_bootstrap.SPA(-np.asarray(benchmark), -models, reps=REPS)
    rows = iter(draws)
    spa.bootstrap.update_indices = lambda: next(rows)
    spa.compute()
    # A draw of the sample's own days (one block, or one wrapping round the end) gives the very statistic
    # observed: arch counts such a tie as an exceedance or not as its rounding falls, ours never does. Those
    # ties are taken out of arch's count; they are there on this short a series, so the case is tested.
    simulated = spa._simulated_vals.max(axis=0)  # (reps, 3): lower, consistent, upper
    observed = float((models - np.asarray(benchmark)[:, None]).mean(axis=0).max())
    ties = np.abs(simulated - observed) <= 1e-9 * abs(observed)
    assert ties.any()
    expected = ((simulated > observed) & ~ties).mean(axis=0)
    assert [stats["spa"][k] for k in ("lower", "consistent", "upper")] == pytest.approx(list(expected), abs=1e-12)


@pytest.mark.parametrize(("args", "message"), [
    (["--stats", "spa", "--reps", "0"], "--reps 0 is out of range"),
    (["--stats", "spa", "--alpha", "1.5"], "--alpha 1.5 is out of range"),
    (["--stats", "foo"], "--stats 'foo' is not a statistic"),
    (["--stats", "spa", "-g", "oversold_threshold=30"], "--stats needs a sweep of at least two parameter sets"),
    (["--stats", "spa", "--benchmark", "index"], "--benchmark 'index' is not allowed"),
    (["--returns-out", "daily.csv"], "--returns-out daily.csv: use a .parquet file name"),
])
def test_bad_input_is_one_line_before_any_work(lake_root: Path, tmp_path: Path, args: list[str], message: str) -> None:
    env = cli_environment(lake_root, tmp_path / "results")
    grid = [] if "-g" in args else ["-g", "rsi_period=6:10:2"]
    done = cli(env, "sweep", "rsi", *grid, *args, "-s", "ETH_BTC", check=False)
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.parquet"))


def test_the_notebook_gives_the_clis_statistics_and_matrix(swept, lake_root: Path, tmp_path: Path) -> None:
    """The notebook's sweep_statistics and daily_returns on the sample's own 5m frames equal `sweep --interval 5m
    --stats ... --json` and its --returns-out on the lake built from them: one run path."""
    import polars as pl

    import pipeline as cryptobt

    _, _, _, env = swept
    names = ("ETH_BTC", "LTC_BTC")
    frames = {s: pl.read_ipc(ROOT / "data" / "sample" / "binance-5m" / f"{s}-5m.feather") for s in names}
    sets = list(strategies.parse_grid(strategies.get_strategy("rsi"), GRID))
    ours = cryptobt.sweep_statistics(frames, "rsi", sets, stats="spa,stepm,mcs,bootstrap,psr", reps=REPS, seed=3)
    path = tmp_path / "daily.parquet"
    done = cli(env, "sweep", "rsi", *sum((["-g", g] for g in GRID), []), "-s", names[0], "-s", names[1],
               "--interval", "5m", "--stats", "spa,stepm,mcs,bootstrap,psr", "--reps", str(REPS), "--seed", "3",
               "--returns-out", str(path), "--json", "--no-cache")
    assert ours == json.loads(done.stdout)["stats"]
    assert ours["symbols"]["ETH_BTC"]["spa"] is not None
    mine = cryptobt.daily_returns(frames, "rsi", sets).sort("symbol", "set", "day")
    theirs = pl.read_parquet(path).sort("symbol", "set", "day")
    assert mine.equals(theirs) and mine.height > 0
    rows = cryptobt.run_backtest(frames, "rsi", sets, stats="mcs", reps=REPS, seed=3)
    assert sorted(rows.filter(pl.col("symbol") == "ETH_BTC").filter(pl.col("in_mcs") == 1)["set"].to_list()) == \
        ours["symbols"]["ETH_BTC"]["mcs"]


def test_a_perpetuals_daily_matrix_is_each_sets_own_futures_equity() -> None:
    """The futures sweep kernel marks its day ends too: on the real XRP perpetual (with its funding and mark
    series), every set's daily returns equal those of its own futures run's equity (run_single_futures)."""
    import polars as pl

    import pipeline as cryptobt
    from pipeline import notebook

    sample = ROOT / "data" / "sample" / "binance-futures"
    xrp = "XRP_USDT_USDT"
    frames = {xrp: pl.read_ipc(sample / f"{xrp}-1h-futures.feather")}
    funding = {xrp: pl.read_ipc(sample / f"{xrp}-8h-funding_rate.feather")}
    mark = {xrp: pl.read_ipc(sample / f"{xrp}-1h-mark.feather")}
    rsi = strategies.get_strategy("rsi")
    sets = list(options.parse_grid(rsi, ["rsi_period=4,6", "oversold_threshold=35,40", "leverage=3,20",
                                         "direction=long,both"]))
    run = {"market": "futures", "mmr": 0.005}
    daily = cryptobt.daily_returns(frames, "rsi", sets, funding=funding, mark=mark, **run)
    config = options.run_config(rsi, sets, **run)
    batch = notebook._run_batch(frames, config, funding, mark)
    liquidated = 0
    for c in range(len(config.params_list)):
        mine = daily.filter(pl.col("set") == c).sort("day")
        _, trips, equity = engine.trade_log(batch, config, 0, config.params_list[c], config.execution(c))
        liquidated += sum(1 for t in trips if t.get("exit_reason") == "liquidation")
        days, returns = _reference_days(batch.times, equity, config.initial)
        assert [d.toordinal() - 719163 for d in mine["day"]] == days and len(days) >= 3
        np.testing.assert_allclose(mine["return"].to_numpy(), returns, rtol=0, atol=1e-12)
    assert liquidated > 0  # 20x positions were liquidated: the day ends after a liquidation are tested too
    stats = cryptobt.sweep_statistics(frames, "rsi", sets, funding=funding, mark=mark, reps=100, **run)
    assert "the statistics need at least 10" in stats["symbols"][xrp]["reason"]  # the sample is 4 days long


@pytest.mark.parametrize(("run", "message"), [
    ({"stats": "mcs", "n": 15_001}, "--stats mcs over 15,001 sets needs 1.7 GiB for its pair weights"),
    ({"stats": "spa", "reps": 100_000, "n": 2_001}, "--reps 100,000 x 2,001 sets needs 1.5 GiB of bootstrap means"),
])
def test_statistics_too_big_for_memory_are_refused_before_any_work(run: dict, message: str) -> None:
    rsi = strategies.get_strategy("rsi")
    sets = [{"rsi_period": 14, "oversold_threshold": 10 + i * 1e-3} for i in range(run.pop("n"))]
    with pytest.raises(options.PipelineError, match=message):
        options.run_config(rsi, sets, **run)
