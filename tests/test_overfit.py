"""Sweeps you can trust (issue 14): objectives with a trade guard, the deflated Sharpe ratio and the
probability of backtest overfitting (PBO), each checked against a first-principles computation written
here from the papers' definitions, on per-bar returns taken from each parameter set's own equity curve
(NumPy and the standard library only)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import demo, notebook
from pipeline.engine import batch as engine
from pipeline.engine import options, overfit, strategies, walkforward
from pipeline.engine.kernels.blocks import B_END, B_START
from pipeline.engine.strategies import get_strategy
from pipeline.lake import snapshots as lake
from tests.random_runs import random_bars

ROOT = Path(__file__).resolve().parents[1]
GRID = ["rsi_period=6:18:4", "oversold_threshold=25,35", "overbought_threshold=65,75"]  # 16 sets


def random_walks(n_symbols: int, bars: int, seed: int) -> dict[str, pl.DataFrame]:
    """Hourly random-walk markets: no strategy has an edge on them."""
    rng = np.random.default_rng(seed)
    start = pl.datetime(2021, 1, 1)
    times = pl.datetime_range(start, start + pl.duration(hours=bars - 1), "1h", eager=True)
    frames = {}
    for i in range(n_symbols):
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, bars)))
        open_ = np.r_[close[0], close[:-1]]
        frames[f"RW{i:02d}"] = pl.DataFrame({"date": times, "open": open_, "high": np.maximum(open_, close),
                                             "low": np.minimum(open_, close), "close": close,
                                             "volume": np.ones(bars)})
    return frames


@pytest.fixture(scope="module")
def sweep():
    """A 12-set RSI sweep over three random walks: the batch, its config, results and block sums."""
    batch = notebook.prices(random_walks(3, 3_000, seed=5))
    # 8 PBO blocks: C(8, 4) = 70 splits keep the first-principles loop quick (the default 16 is tested below).
    config = options.run_config(get_strategy("rsi"), list(strategies.parse_grid(get_strategy("rsi"), GRID)), pbo_blocks=8)
    blocks = overfit.new_blocks(len(batch.symbols), config)
    results = engine.run(batch, config, overfit.block_fractions(config), blocks)
    overfit.attach(overfit.by_symbol([results], len(batch.symbols)), blocks, config)
    return batch, config, results, blocks


def returns_of(batch, config, symbol_index: int, params: dict) -> np.ndarray:
    """Per-bar returns of one parameter set's equity curve, the first against the initial cash."""
    equity = engine.trade_log(batch, config, symbol_index, params).equity
    equity = equity[~np.isnan(equity)]
    return np.r_[equity[0] / config.initial, equity[1:] / equity[:-1]] - 1.0


def sharpe(r: np.ndarray) -> float:
    sd = r.std(ddof=1)
    return float(r.mean() / sd) if len(r) > 1 and sd > 1e-15 else 0.0


@pytest.mark.slow
def test_the_blocks_together_give_the_runs_own_sharpe_and_return(sweep):
    batch, config, results, blocks = sweep
    moments = overfit.moments(blocks)
    growth = (blocks[:, :, B_END, :] / blocks[:, :, B_START, :]).prod(axis=1)
    for j, result in enumerate(results):
        y, c = divmod(j, len(config.params_list))
        assert moments["sharpe"][y, c] * math.sqrt(result["bars_per_year"]) == pytest.approx(result["sharpe"],
                                                                                          rel=1e-9)
        assert growth[y, c] * config.initial == pytest.approx(result["final_value"], rel=1e-12)


def test_each_blocks_statistics_equal_numpy_on_the_sets_own_equity_curve(sweep):
    """The kernel fills the block statistics while simulating; here they are computed from each
    set's equity curve (trade_log) with NumPy, block by block, as pipeline.engine.kernels.blocks defines them."""
    from pipeline.engine.kernels import blocks as kb

    batch, config, results, blocks = sweep
    fractions = overfit.block_fractions(config)
    for j, result in enumerate(results[:: 5]):
        y, c = divmod(j * 5, len(config.params_list))
        equity = engine.trade_log(batch, config, y, result["params"]).equity
        equity = equity[~np.isnan(equity)]
        m = len(equity)
        path = np.r_[config.initial, equity]  # path[t] is the equity before bar t
        r = path[1:] / path[:-1] - 1.0
        edges = [int(math.floor(f * m + 1e-9)) for f in fractions[:-1]] + [m]
        for b in range(len(edges) - 1):
            lo, hi = edges[b], edges[b + 1]
            part = r[lo:hi]
            expected = {kb.B_COUNT: hi - lo, kb.B_SUM: part.sum(), kb.B_SUM2: (part ** 2).sum(),
                        kb.B_SUM3: (part ** 3).sum(), kb.B_SUM4: (part ** 4).sum(),
                        kb.B_DOWN2: (np.minimum(part, 0) ** 2).sum(), kb.B_START: path[lo], kb.B_END: path[hi]}
            for stat, value in expected.items():
                assert blocks[y, b, stat, c] == pytest.approx(value, rel=1e-9, abs=1e-15), (b, stat)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_blocks_made_from_the_fills_equal_the_blocks_summed_bar_by_bar(data):
    """An all-in run's blocks come from its fills (blocks_from_fills): a held bar's return is the price's,
    a flat bar's 0. Against the same run summed bar by bar: counts and start and end equities equal bit for
    bit, the sums to the last bits; with stops, next-open fills, flat spells, more blocks than bars and
    positions held across block edges or still open at the end."""
    from pipeline.engine.kernels import blocks as kb
    from pipeline.engine.kernels.enums import N_METRICS, TRADE_DTYPE
    from pipeline.engine.kernels.simulate import simulate_1d

    rng, open_, high, low, close = random_bars(data)
    n = close.size
    rate = data.draw(st.sampled_from([0.02, 0.2, 0.6]))
    entries, exits = rng.random(n) < rate, rng.random(n) < rate
    sl = data.draw(st.sampled_from([0.0, 0.01, 0.03]))
    row = options.Execution(sl * 100, data.draw(st.sampled_from([0.0, 2.0])), sl > 0 and data.draw(st.booleans()),
                            1.0, data.draw(st.sampled_from([0.0, 0.1]))).row()
    n_blocks = data.draw(st.sampled_from([1, 4, 16, 40]))
    fractions = np.linspace(0.0, 1.0, n_blocks + 1)
    fill_next_open = data.draw(st.booleans())
    fee = data.draw(st.sampled_from([0.0, 0.001]))

    def blocks(by_fills: bool) -> np.ndarray:
        out = np.full((n_blocks, kb.N_BLOCK_STATS), np.nan)
        args = (open_, close, entries, exits, np.zeros(n), fee, 1000.0, fill_next_open, 8760.0,
                np.empty(N_METRICS), np.empty(0), np.empty(0, dtype=TRADE_DTYPE), high, low, row, fractions, out)
        if by_fills:
            simulate_1d(*args, held_sums=kb.held_return_sums(close), fill_log=np.empty((n, kb.FILL_FIELDS)))
        else:
            simulate_1d(*args)
        return out

    by_bar, by_fill = blocks(False), blocks(True)
    exact = [kb.B_COUNT, kb.B_START, kb.B_END]
    np.testing.assert_array_equal(by_fill[:, exact], by_bar[:, exact])
    sums = [kb.B_SUM, kb.B_SUM2, kb.B_SUM3, kb.B_SUM4, kb.B_DOWN2]
    np.testing.assert_allclose(by_fill[:, sums], by_bar[:, sums], rtol=1e-10, atol=1e-15)


def test_pbo_equals_combinatorially_symmetric_cross_validation_from_first_principles(sweep):
    # Bailey, Borwein, Lopez de Prado and Zhu (2015): a T x N matrix of returns cut into S row
    # blocks; for every choice of S/2 blocks as the training set the best in-sample Sharpe's
    # relative rank out of sample w, its logit ln(w / (1 - w)); PBO = the share of logits <= 0.
    batch, config, results, _ = sweep
    n_sets, n_blocks = len(config.params_list), config.pbo_blocks
    for y, symbol in enumerate(batch.symbols):
        matrix = np.column_stack([returns_of(batch, config, y, p) for p in config.params_list])
        edges = [(b * len(matrix)) // n_blocks for b in range(n_blocks + 1)]
        parts = [matrix[edges[b]: edges[b + 1]] for b in range(n_blocks)]
        logits = []
        for train in itertools.combinations(range(n_blocks), n_blocks // 2):
            test = [b for b in range(n_blocks) if b not in train]
            is_ = np.vstack([parts[b] for b in train])
            oos = np.vstack([parts[b] for b in test])
            in_sharpe = [sharpe(is_[:, k]) for k in range(n_sets)]
            out_sharpe = np.array([sharpe(oos[:, k]) for k in range(n_sets)])
            best = int(np.argmax(in_sharpe))
            rank = (out_sharpe < out_sharpe[best]).sum() + ((out_sharpe == out_sharpe[best]).sum() + 1) / 2
            w = rank / (n_sets + 1)
            logits.append(math.log(w / (1 - w)))
        expected = float(np.mean(np.array(logits) <= 0))
        mine = {r["pbo"] for r in results if r["symbol"] == symbol}
        assert len(mine) == 1 and math.comb(n_blocks, n_blocks // 2) == len(logits)
        assert mine.pop() == pytest.approx(expected, abs=1e-12)


def test_deflated_sharpe_equals_bailey_and_lopez_de_prado_from_first_principles(sweep):
    # DSR = Phi((SR - SR0) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2)),
    # SR0 = sqrt(V[SR]) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e))).
    batch, config, results, _ = sweep
    normal, gamma = NormalDist(), 0.5772156649015329
    n_sets = len(config.params_list)
    for y, symbol in enumerate(batch.symbols):
        rets = [returns_of(batch, config, y, p) for p in config.params_list]
        srs = np.array([r.mean() / r.std(ddof=1) for r in rets])
        sr0 = math.sqrt(srs.var(ddof=1)) * ((1 - gamma) * normal.inv_cdf(1 - 1 / n_sets)
                                            + gamma * normal.inv_cdf(1 - 1 / (n_sets * math.e)))
        by_params = {json.dumps(r["params"], sort_keys=True): r for r in results if r["symbol"] == symbol}
        for params, r, sr in zip(config.params_list, rets, srs, strict=True):
            centred = r - r.mean()
            skew = (centred**3).mean() / (centred**2).mean() ** 1.5
            kurt = (centred**4).mean() / (centred**2).mean() ** 2
            z = (sr - sr0) * math.sqrt(len(r) - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
            got = by_params[json.dumps(params, sort_keys=True)]
            assert got["n_trials"] == n_sets
            assert got["deflated_sharpe"] == pytest.approx(normal.cdf(z), rel=1e-7, abs=1e-12)


def test_a_sweep_over_pure_noise_shows_pbo_near_a_half_and_no_skill():
    frames = random_walks(12, 4_000, seed=11)
    grid = list(strategies.parse_grid(get_strategy("rsi"), ["rsi_period=5:30:5", "oversold_threshold=20,25,30,35",
                                               "overbought_threshold=65,70,75,80"]))
    board = notebook.run_backtest(frames, "rsi", grid, objective="sharpe", min_trades=0)
    per_symbol = board.group_by("symbol").agg(pl.col("pbo").first(), pl.col("deflated_sharpe").first())
    # The first row of each symbol in a sharpe-ordered board is its best set: not significant at 95 %.
    assert 0.3 <= per_symbol["pbo"].mean() <= 0.7
    assert (per_symbol["deflated_sharpe"] < 0.95).mean() >= 0.9


def test_objectives_rank_by_their_field_and_sets_below_min_trades_never_win(sweep):
    batch, config, results, _ = sweep
    for objective, field in engine.OBJECTIVES.items():
        board = engine.leaderboard(results, objective, min_trades=3)
        eligible = [r for r in results if r["num_trades"] >= 3]
        assert board[0][field] == max(r[field] for r in eligible if r[field] is not None)
        assert all(r["num_trades"] >= 3 for r in board[: len(eligible)])
    with pytest.raises(Exception, match="--objective 'alpha' is not allowed"):
        options.run_config(get_strategy("rsi"), {}, objective="alpha")
    with pytest.raises(Exception, match="--pbo-blocks 7 is not allowed"):
        options.run_config(get_strategy("rsi"), {}, pbo_blocks=7)
    with pytest.raises(Exception, match="--min-trades -1 is out of range"):
        options.run_config(get_strategy("rsi"), {}, min_trades=-1)


def cli_sweep(tmp_path: Path, n_symbols: int, *options_: str) -> tuple[Any, set[str]]:
    """`cryptobt sweep rsi` over GRID on a fresh sample lake: its --json answer and the lake's symbols."""
    lake_root = tmp_path / "lake"
    if not lake_root.exists():  # a second sweep over the same lake adds to the same results table
        demo.build_sample_lake(lake_root, n_symbols=n_symbols, years=0.5, sample=demo.DEFAULT_SAMPLE)
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(lake_root), "CRYPTOBT_RESULTS_ROOT": str(tmp_path / "results"),
           "REDIS_URL": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pipeline", "sweep", "rsi", *sum((["-g", g] for g in GRID), []),
                           *options_, "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    return (answer if "walk_forward" in answer else answer["best"]), set(lake.require_snapshot(lake_root).symbols)


@pytest.mark.slow
def test_cli_sweep_json_and_results_table_carry_the_statistics(tmp_path):
    answer, symbols = cli_sweep(tmp_path, 3, "--objective", "sharpe", "--min-trades", "2", "--top", "2")
    assert {r["symbol"] for r in answer} == symbols
    assert all(r["n_trials"] == 16 and 0 <= r["pbo"] <= 1 and 0 <= r["deflated_sharpe"] <= 1 for r in answer)
    import duckdb

    # Every row has its symbol's PBO; a row has a deflated Sharpe ratio exactly when it has a Sharpe ratio.
    rows = duckdb.sql(f"SELECT count(*), count(pbo), count(deflated_sharpe) - count(sharpe), min(n_trials) FROM "
                      f"read_parquet('{tmp_path}/results/**/*.parquet', union_by_name=true)").fetchall()[0]
    assert rows == (16 * len(symbols), 16 * len(symbols), 0, 16)


def test_samples_draw_a_reproducible_subset_of_the_grid_even_of_one_too_large_to_list():
    specs = ["rsi_period=5:40:5", "oversold_threshold=15:40:5", "overbought_threshold=60:85:5"]
    whole = strategies.parse_grid(get_strategy("rsi"), specs)
    first = strategies.parse_grid(get_strategy("rsi"), specs, samples=20, seed=7)
    assert first == strategies.parse_grid(get_strategy("rsi"), specs, samples=20, seed=7)
    assert first != strategies.parse_grid(get_strategy("rsi"), specs, samples=20, seed=8)
    assert len(first) == 20 and all(p in whole for p in first)
    assert first == [p for p in whole if p in first]  # grid order
    # 10^9 grid points: refused whole, sampled without listing them.
    huge = ["rsi_period=2:1001:1", "oversold_threshold=1:40:0.039", "overbought_threshold=60:99:0.039"]
    with pytest.raises(Exception, match="more than 1000000; use larger steps or --samples"):
        strategies.parse_grid(get_strategy("rsi"), huge)
    assert len(strategies.parse_grid(get_strategy("rsi"), huge, samples=100, seed=1)) == 100
    with pytest.raises(Exception, match="--samples 0 is out of range"):
        strategies.parse_grid(get_strategy("rsi"), specs, samples=0)


@pytest.mark.parametrize("anchored", [False, True])
@pytest.mark.parametrize("objective", ["sharpe", "total_return", "sortino"])
def test_walk_forward_equals_choosing_on_each_train_part_and_judging_on_its_test_part(anchored, objective):
    batch = notebook.prices(random_walks(2, 2_500, seed=9))
    config = options.run_config(get_strategy("rsi"), list(strategies.parse_grid(get_strategy("rsi"), GRID)), walk_forward=4, train_ratio=0.6,
                                anchored=anchored, objective=objective)
    blocks = overfit.new_blocks(len(batch.symbols), config)
    fractions = overfit.block_fractions(config)
    results = engine.run(batch, config, fractions, blocks)
    n_sets = len(config.params_list)
    rows = [results[y * n_sets: (y + 1) * n_sets] for y in range(len(batch.symbols))]
    times = [batch.times[~np.isnan(batch.columns["close"][y])] for y in range(len(batch.symbols))]
    summaries, table = walkforward.evaluate(blocks, fractions, config, lambda y, c: rows[y][c], len(rows), times)

    def score(r: np.ndarray) -> float:
        if objective == "total_return":
            return float(np.log1p(r).sum() / len(r))
        spread = r.std(ddof=1) if objective == "sharpe" else math.sqrt((np.minimum(r, 0) ** 2).mean())
        return float(r.mean() / spread) if spread > 1e-15 else 0.0

    for y, summary in enumerate(summaries):
        rets = np.column_stack([returns_of(batch, config, y, p) for p in config.params_list])
        m, k = len(rets), config.walk_forward
        stitched = []
        for f, fold in enumerate(summary["folds"]):
            train_from = 0 if anchored else (f * m) // k
            test_from, test_to = math.floor((f + 0.6) / k * m + 1e-9), ((f + 1) * m) // k
            chosen = int(np.argmax([score(rets[train_from:test_from, c]) for c in range(n_sets)]))
            assert fold["params"] == config.params_list[chosen]
            test = rets[test_from:test_to, chosen]
            assert fold["test"]["total_return_pct"] == pytest.approx((np.prod(1 + test) - 1) * 100, rel=1e-9, abs=1e-9)
            assert fold["test"]["bars"] == len(test)
            stitched.append(test)
        oos = np.concatenate(stitched)
        assert summary["oos"]["total_return_pct"] == pytest.approx((np.prod(1 + oos) - 1) * 100, rel=1e-9, abs=1e-9)
        assert summary["oos"]["sharpe"] == pytest.approx(oos.mean() / oos.std(ddof=1)
                                                         * math.sqrt(rows[y][0]["bars_per_year"]), rel=1e-7)
    assert {r["split"] for r in table} == {"train", "test", "oos"}
    assert len(table) == len(summaries) * (2 * config.walk_forward + 1)


@pytest.mark.parametrize("anchored", [False, True])
def test_walk_forward_flat_start_judges_each_test_part_from_a_fresh_account(anchored):
    """--walk-forward-flat-start: every test part starts flat with fresh cash (no position carried in;
    the first entry pays its fee as any entry; a position open at the part's end is marked at its last
    close). Expected: the set chosen on the train part (full-history path) run over the test part's bars
    by a plain loop of SPEC's close-fill rules on the strategy's own signals (warmed up on all history)."""
    batch = notebook.prices(random_walks(3, 2_500, seed=9))
    params = list(strategies.parse_grid(get_strategy("rsi"), GRID))
    config = options.run_config(get_strategy("rsi"), params, walk_forward=3, train_ratio=0.6, anchored=anchored,
                                walk_forward_flat_start=True)
    carried_config = options.run_config(get_strategy("rsi"), params, walk_forward=3, train_ratio=0.6, anchored=anchored)
    n_sets, fee = len(params), config.fee_frac
    rsi = strategies.get_strategy("rsi")
    answers = {}
    for name, run_config in (("flat", config), ("carried", carried_config)):
        blocks = overfit.new_blocks(len(batch.symbols), run_config)
        fractions = overfit.block_fractions(run_config)
        results = engine.run(batch, run_config, fractions, blocks)
        rows = [results[y * n_sets: (y + 1) * n_sets] for y in range(len(batch.symbols))]
        times = [batch.times[~np.isnan(batch.columns["close"][y])] for y in range(len(batch.symbols))]
        answers[name] = walkforward.evaluate(blocks, fractions, run_config, lambda y, c, rows=rows: rows[y][c],
                                             len(rows), times, batch)
    differs = 0
    for y, (summary, carried) in enumerate(zip(answers["flat"][0], answers["carried"][0], strict=True)):
        close = batch.columns["close"][y]
        rets = np.column_stack([returns_of(batch, config, y, p) for p in params])
        m, k = len(rets), config.walk_forward
        growth = 1.0
        for f, (fold, carried_fold) in enumerate(zip(summary["folds"], carried["folds"], strict=True)):
            train_from = 0 if anchored else (f * m) // k
            test_from, test_to = math.floor((f + 0.6) / k * m + 1e-9), ((f + 1) * m) // k
            chosen = int(np.argmax([np.log1p(rets[train_from:test_from, c]).sum() / (test_from - train_from)
                                    for c in range(n_sets)]))
            assert fold["params"] == carried_fold["params"] == params[chosen]
            row = strategies.combos_matrix(get_strategy("rsi"), [params[chosen]])[0][0]
            _, entries, exits = rsi.kernels().indicators_and_signals_single((close[None, :],), close, row)
            cash, units, path = config.initial, 0.0, [config.initial]
            for t in range(test_from, test_to):
                if units == 0.0 and entries[t]:
                    units, cash = (cash - cash * fee) / close[t], 0.0
                elif units > 0.0 and exits[t]:
                    cash, units = units * close[t] - units * close[t] * fee, 0.0
                path.append(cash + units * close[t])
            part = np.array(path)
            assert fold["test"]["total_return_pct"] == pytest.approx((part[-1] / part[0] - 1) * 100, rel=1e-9,
                                                                     abs=1e-9)
            assert fold["test"]["bars"] == test_to - test_from
            r = part[1:] / part[:-1] - 1
            if r.std(ddof=1) > 1e-15:
                assert fold["test"]["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1)
                                                               * math.sqrt(rows_bars_per_year(batch, config, y)),
                                                               rel=1e-7)
            growth *= part[-1] / part[0]
            differs += fold["test"]["total_return_pct"] != pytest.approx(carried_fold["test"]["total_return_pct"])
        assert summary["oos"]["total_return_pct"] == pytest.approx((growth - 1) * 100, rel=1e-9, abs=1e-9)
    assert differs > 0  # a position carried into a test part changes its numbers: the case is exercised
    flat_rows, carried_rows = answers["flat"][1], answers["carried"][1]
    assert {r["walk_forward_flat_start"] for r in flat_rows} == {True}
    assert {r["walk_forward_flat_start"] for r in carried_rows} == {False}


def rows_bars_per_year(batch, config, y: int) -> float:
    return float(engine.bars_per_year(batch, config)[y])


def test_walk_forward_options_are_checked_before_any_work():
    with pytest.raises(Exception, match="--walk-forward 1 is out of range"):
        options.run_config(get_strategy("rsi"), {}, walk_forward=1)
    with pytest.raises(Exception, match="--train-ratio 1.0 is out of range"):
        options.run_config(get_strategy("rsi"), {}, walk_forward=3, train_ratio=1.0)
    with pytest.raises(Exception, match="--objective profit_factor cannot rank a walk-forward fold"):
        options.run_config(get_strategy("rsi"), {}, walk_forward=3, objective="profit_factor")
    with pytest.raises(Exception, match="--walk-forward-flat-start needs --walk-forward K"):
        options.run_config(get_strategy("rsi"), {}, walk_forward_flat_start=True)


@pytest.mark.slow
def test_cli_walk_forward_prints_folds_and_writes_train_test_and_oos_rows(tmp_path):
    answer, symbols = cli_sweep(tmp_path, 2, "--objective", "sharpe", "--walk-forward", "3", "--anchored")
    assert {s["symbol"] for s in answer["walk_forward"]} == symbols
    assert all(len(s["folds"]) == 3 and s["folds"][0]["train_start"] <= s["folds"][0]["test_start"]
               for s in answer["walk_forward"])
    import duckdb

    counts = dict(duckdb.sql(f"SELECT coalesce(split, 'sweep'), count(*) FROM read_parquet("
                             f"'{tmp_path}/results/**/*.parquet', union_by_name=true) GROUP BY 1").fetchall())
    assert counts == {"sweep": 16 * len(symbols), "train": 3 * len(symbols), "test": 3 * len(symbols),
                      "oos": len(symbols)}


@pytest.mark.slow
def test_cli_walk_forward_flat_start_rows_are_told_apart_from_carried_ones(tmp_path):
    """The same sweep with and without --walk-forward-flat-start into one results table: every walk-forward
    row says which it is, the JSON too, and the API's request (its run key) and the notebook take the option."""
    carried, symbols = cli_sweep(tmp_path, 2, "--objective", "sharpe", "--walk-forward", "3")
    flat, _ = cli_sweep(tmp_path, 2, "--objective", "sharpe", "--walk-forward", "3", "--walk-forward-flat-start")
    assert {s["flat_start"] for s in carried["walk_forward"]} == {False}
    assert {s["flat_start"] for s in flat["walk_forward"]} == {True}
    oos = {(answer is flat, s["symbol"]): s["oos"]["total_return_pct"] for answer in (carried, flat)
           for s in answer["walk_forward"]}
    assert any(oos[(True, symbol)] != oos[(False, symbol)] for symbol in symbols)
    import duckdb

    rows = duckdb.sql(f"SELECT walk_forward_flat_start, split, symbol, total_return_pct FROM read_parquet("
                      f"'{tmp_path}/results/**/*.parquet', union_by_name=true) WHERE split IS NOT NULL").fetchall()
    assert len(rows) == 2 * len(symbols) * (2 * 3 + 1)
    assert {(flag, split) for flag, split, _, _ in rows} == {(f, s) for f in (False, True) for s in ("train", "test",
                                                                                                   "oos")}
    assert {(flag, symbol): ret for flag, split, symbol, ret in rows if split == "oos"} == pytest.approx(
        {(flag, symbol): ret for (flag, symbol), ret in oos.items()}, rel=1e-12)
    sweep_rows = duckdb.sql(f"SELECT count(*), count(walk_forward_flat_start) FROM read_parquet("
                            f"'{tmp_path}/results/**/*.parquet', union_by_name=true) WHERE split IS NULL").fetchall()[0]
    assert sweep_rows == (2 * 16 * len(symbols), 0)  # plain sweep rows: NULL

    from pipeline.api.models import SweepRequest
    from pipeline.api.routes import runs as api_runs

    requests = [SweepRequest(strategy="rsi", grid=GRID, walk_forward=3, walk_forward_flat_start=flag)
                for flag in (False, True)]
    assert [r.check()[0].walk_forward_flat_start for r in requests] == [False, True]
    assert api_runs.request_key("sweep", requests[0]) != api_runs.request_key("sweep", requests[1])
    with pytest.raises(Exception, match="--walk-forward-flat-start needs --walk-forward K"):
        SweepRequest(strategy="rsi", grid=GRID, walk_forward_flat_start=True).check()
    with pytest.raises(Exception, match="--walk-forward-flat-start needs --walk-forward K"):
        notebook.run_backtest(random_walks(1, 200, seed=1), "rsi", walk_forward_flat_start=True)


@pytest.mark.parametrize("suffix", [".png", ".html"])
def test_the_notebook_draws_the_clis_pictures_of_a_backtest_and_a_sweep(tmp_path, suffix):
    import pipeline as cryptobt

    frames = random_walks(3, 1_500, seed=2)
    single = cryptobt.plot(frames, "rsi", tmp_path / f"one{suffix}", {"rsi_period": 10})
    sweep = cryptobt.plot(frames, "rsi", tmp_path / f"sweep{suffix}", list(strategies.parse_grid(get_strategy("rsi"), GRID)),
                          objective="sharpe")
    assert single.stat().st_size > 10_000 and sweep.stat().st_size > single.stat().st_size * 0.5
    with pytest.raises(Exception, match="use a .html or .png file name"):
        cryptobt.plot(frames, "rsi", tmp_path / "x.pdf")


@pytest.mark.slow
def test_your_own_entry_and_exit_arrays_run_as_the_strategy_that_made_them():
    # RSI's own signals handed in as arrays give RSI's results, with stops and fees too.
    import pipeline as cryptobt

    frames = random_walks(3, 2_000, seed=4)
    rsi = strategies.get_strategy("rsi")
    row = strategies.combos_matrix(get_strategy("rsi"), [strategies.resolve_params(get_strategy("rsi"), {})])[0][0]
    entries, exits = {}, {}
    for symbol, frame in frames.items():
        close = frame["close"].to_numpy().reshape(1, -1)
        _, entries[symbol], exits[symbol] = rsi.kernels().indicators_and_signals_single((close,), close[0], row)
    options_ = {"fee": 0.2, "sl": 3.0, "tp": 6.0}
    mine = cryptobt.run_signals(frames, entries, exits, **options_).sort("symbol")
    theirs = cryptobt.run_backtest(frames, "rsi", **options_).sort("symbol")
    assert mine["num_trades"].to_list() == theirs["num_trades"].to_list()
    assert mine["final_value"].to_list() == theirs["final_value"].to_list()
    assert sum(mine["num_trades"]) > 0
    with pytest.raises(Exception, match="must each have one value per frame row"):
        cryptobt.run_signals(frames, {s: e[:-1] for s, e in entries.items()}, exits)


@pytest.mark.slow
@pytest.mark.parametrize("with_stops", [False, True])
def test_sweep_result_columns_are_the_rows_its_result_dicts_give(with_stops):
    """A sweep writes its results as columns (no dict per result): every row, every column, equals
    what the dict path (shape_result + the statistics, through _result_row) writes for it, including
    a symbol too short for the warm-up (its reason) and a --timerange."""
    from datetime import UTC, datetime

    from pipeline.store import files, results, rows

    frames = random_walks(3, 1_500, seed=11)
    frames["SHORT"] = random_walks(1, 12, seed=12)["RW00"]
    batch = notebook.prices(frames)
    grid = GRID + (["sl=0,3", "trail=0,1"] if with_stops else [])
    config = options.run_config(get_strategy("rsi"), list(options.parse_grid(get_strategy("rsi"), grid)), pbo_blocks=4,
                                timerange="20210110-")
    blocks = overfit.new_blocks(len(batch.symbols), config)
    dicts = engine.run(batch, config, overfit.block_fractions(config), blocks)
    overfit.attach(overfit.by_symbol([dicts], len(batch.symbols)), blocks, config)
    assert any(d["reason"] for d in dicts) and any(d["pbo"] is not None for d in dicts)

    cube = engine.run_metrics(batch, config)
    columns = engine.result_columns(batch, config, cube, engine.bars_per_year(
        batch, config, engine.start_column(batch, config)), engine.partial_bars(batch, config))
    has_reason = np.array([r is not None for r in columns.fields["reason"]]).reshape(len(batch.symbols), -1)
    columns.fields.update({k: v.ravel() for k, v in overfit.result_statistics(blocks, config, has_reason).items()})

    created = datetime(2026, 12, 2, tzinfo=UTC)
    schema = results.result_schema(config.params_list)
    from_columns = rows.columns_table(columns, "run", created, schema)
    from_dicts = files.rows_table([rows.result_row(d, "run", created) for d in dicts], schema)
    assert from_columns.num_rows == len(dicts)
    for name in schema.names:
        assert from_columns[name].to_pylist() == from_dicts[name].to_pylist(), name
    # The kept rows (each symbol's best, as dicts) are the dict path's own, in leaderboard order.
    kept = engine.column_rows(batch, config, cube, columns, engine.best_rows(columns, 2, "sharpe", 3))
    assert len(kept) == 2 * len(batch.symbols)
    assert engine.top_per_symbol(kept, 2, "sharpe", 3) == engine.top_per_symbol(dicts, 2, "sharpe", 3)


def cscv_from_block_sums(count: np.ndarray, sums: np.ndarray, sums2: np.ndarray) -> tuple[float, float, int]:
    """CSCV (Bailey et al. 2015) as the README's contract words it, in plain NumPy: each half's sums are
    its blocks' sums added in block order; the in-sample best is the first of exactly tied sets (grid
    order, as argmax picks it); out-of-sample ties share their rank. Returns (pbo, mean logit, the
    number of splits whose in-sample best was tied)."""
    n_blocks, n_sets = sums.shape

    def sharpe_of(blocks: tuple[int, ...]) -> np.ndarray:
        n = sum(count[b] for b in blocks)
        s, s2 = sum(sums[b] for b in blocks), sum(sums2[b] for b in blocks)
        var = (s2 - s * (s / n)) / (n - 1)
        return np.where(var > 1e-30, (s / n) / np.sqrt(np.where(var > 1e-30, var, 1.0)), 0.0)

    logits, tied = [], 0
    for train in itertools.combinations(range(n_blocks), n_blocks // 2):
        test = tuple(b for b in range(n_blocks) if b not in train)
        in_sample, out = sharpe_of(train), sharpe_of(test)
        best = int(np.argmax(in_sample))
        tied += int((in_sample == in_sample[best]).sum() > 1)
        rank = (out < out[best]).sum() + ((out == out[best]).sum() + 1) / 2
        w = rank / (n_sets + 1)
        logits.append(math.log(w / (1 - w)))
    return sum(g <= 0 for g in logits) / len(logits), sum(logits) / len(logits), tied


def tied_block_sums(seed: int, n_blocks: int = 8, n_sets: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block sums with exact ties: sets that trade in two or three blocks only (their other blocks are
    exactly 0, as a flat set's returns are), duplicated sets, and sets that equal another on some blocks
    and differ on others; losing trades, so that in many splits the in-sample best is a tie at 0."""
    rng = np.random.default_rng(seed)
    count = np.full(n_blocks, 120.0)
    sums = np.zeros((n_blocks, n_sets))
    sums2 = np.zeros((n_blocks, n_sets))
    for k in range(n_sets):
        active = rng.choice(n_blocks, size=rng.integers(2, 4), replace=False)
        r = rng.normal(-0.004, 0.02, (len(active), 40))
        sums[active, k], sums2[active, k] = r.sum(axis=1), (r**2).sum(axis=1)
    sums[:, 5], sums2[:, 5] = sums[:, 2], sums2[:, 2]  # a duplicated set
    half = rng.random(n_blocks) < 0.5
    sums[half, 9], sums2[half, 9] = sums[half, 3], sums2[half, 3]  # equal to set 3 on some blocks only
    return count, sums, sums2


@pytest.mark.parametrize("seed", range(12))
def test_pbo_breaks_exact_in_sample_ties_by_the_documented_rule_not_by_summation_order(seed):
    """Sets whose blocks are equal on a half tie exactly there: the first (grid order) is the in-sample
    best, whatever blocks the split enumeration added and took out before (issue 25)."""
    from pipeline.engine.kernels.blocks import pbo_cscv

    count, sums, sums2 = tied_block_sums(seed)
    pbo, logit, tied = cscv_from_block_sums(count, sums, sums2)
    assert tied > 0
    assert pbo_cscv(count, sums, sums2, np.ones(sums.shape[1], dtype=np.int64)) == pytest.approx((pbo, logit), abs=1e-12)


def test_a_sweeps_pbo_with_tied_sets_equals_cscv_from_its_block_sums():
    """A sweep at the default 16 blocks over markets that sit still for spells (a set holding or out of
    the market there has returns of exactly 0), with extreme thresholds that rarely trade and duplicated
    sets: in-sample ties are common, and every symbol's PBO and mean logit are CSCV's from the sweep's own
    block sums (which the test above checks against each set's equity curve)."""
    from pipeline.engine.kernels.blocks import B_COUNT, B_SUM, B_SUM2

    rng = np.random.default_rng(0)
    frames = {}
    for symbol, frame in random_walks(3, 3_000, seed=0).items():
        steps = rng.normal(0.0, 0.01, frame.height)
        steps[rng.random(frame.height) < 0.5] = 0.0
        close = 100 * np.exp(np.cumsum(steps))
        open_ = np.r_[close[0], close[:-1]]
        frames[symbol] = frame.with_columns(close=close, open=open_, high=np.maximum(open_, close),
                                            low=np.minimum(open_, close))
    batch = notebook.prices(frames)
    grid = list(strategies.parse_grid(get_strategy("rsi"), ["rsi_period=6:18:6", "oversold_threshold=10,20,30",
                                              "overbought_threshold=70,90"]))
    config = options.run_config(get_strategy("rsi"), grid + grid[:3])
    assert config.pbo_blocks == 16
    blocks = overfit.new_blocks(len(batch.symbols), config)
    results = engine.run(batch, config, overfit.block_fractions(config), blocks)
    stats = overfit.sweep_statistics(blocks, config)
    overfit.attach(overfit.by_symbol([results], len(batch.symbols)), blocks, config)
    expected = [cscv_from_block_sums(blocks[y, :, B_COUNT, 0], blocks[y, :, B_SUM], blocks[y, :, B_SUM2])
                for y in range(len(batch.symbols))]
    assert all(tied > 0 for _, _, tied in expected)
    got = np.column_stack([stats["pbo"], stats["pbo_logit"]])
    np.testing.assert_allclose(got, [(pbo, logit) for pbo, logit, _ in expected], rtol=0, atol=1e-12)
    for y, symbol in enumerate(batch.symbols):
        assert {r["pbo"] for r in results if r["symbol"] == symbol} == {stats["pbo"][y]}


def near_tied_block_sums(data: st.DataObject) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block sums built to defeat an approximate ranking: sets whose returns are another's scaled (equal
    Sharpe ratios in exact arithmetic, a few ulps apart in floats), sets a few ulps from another on one
    block, copies on some blocks, blocks without a trade, constant returns (a variance cancelled to
    its rounding noise, on either side of 0 and of the 1e-30 threshold), returns that barely vary
    (per-bar ratios up to 1e6, where the variance's rounding outweighs the key's own), single-return
    blocks, and magnitudes from subnormal squares to 1e140."""
    n_blocks = data.draw(st.sampled_from([2, 4, 6, 8]), label="blocks")
    n_sets = data.draw(st.integers(2, 12), label="sets")
    scale = data.draw(st.sampled_from([1e-160, 1e-20, 1e-3, 1.0, 1e140]), label="scale")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    count = rng.choice([1.0, 2.0, 3.0, 40.0, 1000.0], n_blocks)
    mean = rng.normal(0.0, 0.3, n_sets)[None, :] * rng.choice([0.01, 1.0], (n_blocks, 1))
    sums = scale * (count[:, None] * mean + rng.normal(0, 1, (n_blocks, n_sets)) * np.sqrt(count)[:, None])
    sums2 = scale**2 * (count[:, None] * (1 + mean**2)) * rng.uniform(0.5, 2.0, (n_blocks, n_sets))
    for k in range(1, n_sets):
        j = int(rng.integers(0, k))
        kind = data.draw(st.sampled_from(["free", "scaled", "ulps", "copy", "idle", "constant", "steady"]),
                         label=f"set {k}")
        some = rng.random(n_blocks) < 0.5
        if kind == "scaled":  # the same returns times c: the same ratio up to rounding
            c = float(rng.choice([3.0, 0.1, 1 + 2**-40, 7.000000001]))
            sums[:, k], sums2[:, k] = sums[:, j] * c, sums2[:, j] * (c * c)
        elif kind == "ulps":
            sums[:, k], sums2[:, k] = sums[:, j], sums2[:, j]
            b = int(rng.integers(0, n_blocks))
            steps = int(rng.integers(-3, 4))
            target = np.inf if steps > 0 else -np.inf
            for _ in range(abs(steps)):
                sums[b, k] = np.nextafter(sums[b, k], target)
        elif kind == "copy":
            sums[some, k], sums2[some, k] = sums[some, j], sums2[some, j]
        elif kind == "idle":
            sums[some, k] = sums2[some, k] = 0.0
        elif kind == "constant":  # every return r: s = n r, s2 = n r**2, nudged by an ulp or two
            r = scale * float(rng.choice([1e-3, 1e-16, 0.5]))
            sums[some, k] = count[some] * r
            sums2[some, k] = np.nextafter(count[some] * r * r, rng.choice([np.inf, -np.inf], int(some.sum())))
        elif kind == "steady":  # returns that barely vary: per-bar ratios up to 1e6, their variance cancelled
            r = scale * float(rng.choice([1e-3, 0.5]))
            sums[:, k] = count * r
            sums2[:, k] = count * r * r * (1 + float(rng.choice([1e-8, 1e-11, 1e-13])) * rng.uniform(1, 2, n_blocks))
    return count, sums, sums2


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_pbo_ranks_by_the_exact_ratios_where_they_nearly_tie(data):
    """pbo_cscv orders sets through cheap bounds of their Sharpe ratios and computes a ratio only where
    bounds overlap: its PBO and mean logit are those of ranking the exact ratios (cscv_from_block_sums,
    by the same float operations), on block sums made to sit inside the bounds' margins."""
    from pipeline.engine.kernels.blocks import pbo_cscv

    count, sums, sums2 = near_tied_block_sums(data)
    pbo, logit, _ = cscv_from_block_sums(count, sums, sums2)
    got = pbo_cscv(count, sums, sums2, np.ones(sums.shape[1], dtype=np.int64))
    assert got[0] == pbo
    assert got[1] == pytest.approx(logit, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_pbo_of_the_distinct_sets_counted_by_their_weight_equals_the_pbo_of_every_set(seed):
    """The sweep ranks each group of sets with equal block sums once, counted as often as it occurs
    (overfit.distinct_sets): the same PBO and mean logit, bit for bit, as ranking every set."""
    from pipeline.engine.kernels.blocks import pbo_cscv

    count, sums, sums2 = tied_block_sums(seed)
    copies = np.random.default_rng(seed).integers(0, sums.shape[1], 30)  # sets repeated in grid order
    sums, sums2 = np.column_stack([sums, sums[:, copies]]), np.column_stack([sums2, sums2[:, copies]])
    first, counts = overfit.distinct_sets(sums, sums2)
    assert len(first) < sums.shape[1] and counts.sum() == sums.shape[1] and list(first) == sorted(first)
    every = pbo_cscv(count, sums, sums2, np.ones(sums.shape[1], dtype=np.int64))
    assert pbo_cscv(count, np.ascontiguousarray(sums[:, first]), np.ascontiguousarray(sums2[:, first]), counts) == every
    assert every == pytest.approx(cscv_from_block_sums(count, sums, sums2)[:2], abs=1e-12)
