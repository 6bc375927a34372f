"""Portfolio mode: one account, shared cash, limited slots, ranked entries (kernel level)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.engine.kernels import enums
from pipeline.engine.kernels import portfolio as pk
from pipeline.engine.strategies import get_strategy


def reference_portfolio(open2d, close2d, entries, exits, rank, max_open, stake_is_fraction, stake, fee,
                        slippage, initial, next_open):
    """A plain-Python loop of the documented rules, written from the README's contract, not the kernel."""
    n_sym, n_time = close2d.shape
    cash = initial
    pos: dict[int, dict] = {}
    last: dict[int, float] = {}
    pending: dict[int, tuple[int, float]] = {}  # symbol -> (+1/-1, rank at the signal)
    trades, equity, skipped = [], [], [0, 0]
    for t in range(n_time):
        here = [s for s in range(n_sym) if not math.isnan(close2d[s, t])]
        if not here:
            equity.append(math.nan)
            continue
        # The same shape as the kernel's steps on purpose: an independent reading that must not share its code.
        for s in here:  # exits first
            if s not in pos:
                continue
            if next_open:
                if pending.get(s, (0, 0))[0] != -1:
                    continue
                price = open2d[s, t] * (1 - slippage)
            else:
                if not exits[s, t]:
                    continue
                price = close2d[s, t] * (1 - slippage)
            pending.pop(s, None)
            p = pos.pop(s)
            proceeds = p["units"] * price
            cash += proceeds - proceeds * fee
            pnl = proceeds - proceeds * fee - p["cost"]
            trades.append((s, p["bar"], p["price"], t, price, p["units"], pnl))
        if next_open:
            cands = [s for s in here if s not in pos and pending.get(s, (0, 0))[0] == 1]
            key = {s: pending[s][1] for s in cands}
        else:
            cands = [s for s in here if s not in pos and entries[s, t]]
            key = {s: rank[s, t] for s in cands}
        cands.sort(key=lambda s: (math.isnan(key[s]), -key[s] if not math.isnan(key[s]) else 0, s))
        # The equity at the fill: a close fill marks held positions at this bar's close where they have one.
        at_fill = {s: last[s] if next_open or math.isnan(close2d[s, t]) else close2d[s, t] for s in pos}
        equity_now = cash + sum(p["units"] * at_fill[s] for s, p in pos.items())
        for s in cands:
            pending.pop(s, None)
            if len(pos) >= max_open:
                skipped[0] += 1
                continue
            cost = stake * equity_now if stake_is_fraction else stake
            if cost > cash * (1 + 1e-9):
                skipped[1] += 1
                continue
            cost = min(cost, cash)
            price = (open2d[s, t] if next_open else close2d[s, t]) * (1 + slippage)
            pos[s] = {"units": (cost - cost * fee) / price, "cost": cost, "price": price, "bar": t}
            cash -= cost
        for s in here:
            last[s] = close2d[s, t]
            if next_open:
                if s in pos and exits[s, t]:
                    pending[s] = (-1, 0.0)
                elif s not in pos and entries[s, t]:
                    pending[s] = (1, rank[s, t])
                else:
                    pending.pop(s, None)
        equity.append(cash + sum(p["units"] * last[s] for s, p in pos.items()))
    for s, p in sorted(pos.items()):
        trades.append((s, p["bar"], p["price"], -1, last[s], p["units"], p["units"] * last[s] - p["cost"]))
    return trades, np.array(equity), skipped


def random_market(n_sym: int, n_time: int, seed: int):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_sym, n_time)), axis=1))
    open_ = close * np.exp(rng.normal(0, 0.002, (n_sym, n_time)))
    gaps = rng.random((n_sym, n_time)) < 0.05
    gaps[:, 0] = False
    close[gaps] = np.nan
    open_[gaps] = np.nan
    late = rng.integers(0, n_time // 4, n_sym)  # symbols list at different times
    for s, start in enumerate(late):
        close[s, :start] = np.nan
        open_[s, :start] = np.nan
    entries = rng.random((n_sym, n_time)) < 0.04
    exits = rng.random((n_sym, n_time)) < 0.04
    rank = np.round(rng.random((n_sym, n_time)) * 4)  # coarse: ties are common and must go by symbol
    return open_, close, entries, exits, rank


def run_kernel(open_, close, entries, exits, rank, max_open, frac, stake, fee, slip, initial, next_open):
    n_sym, n_time = close.shape
    metrics = np.empty(enums.N_PORTFOLIO_METRICS)
    contrib = np.empty((n_sym, pk.N_CONTRIB))
    equity = np.empty(n_time)
    trades = np.empty(int(entries.sum()) + n_sym, dtype=pk.PORTFOLIO_TRADE_DTYPE)
    k = pk.simulate_portfolio(open_, close, entries, exits, rank, max_open, frac, stake, fee, slip, initial,
                              next_open, 8760.0, metrics, contrib, equity, trades)
    return metrics, contrib, equity, trades[:k]


@pytest.mark.slow
@pytest.mark.parametrize("next_open", [False, True])
@pytest.mark.parametrize(("frac", "stake"), [(True, 0.25), (False, 180.0)])
def test_ten_symbol_portfolio_with_slot_contention_equals_a_plain_python_loop_trade_by_trade(next_open, frac,
                                                                                               stake):
    args = random_market(10, 3_000, seed=11)
    metrics, contrib, equity, trades = run_kernel(*args, 3, frac, stake, 0.001, 0.0005, 1000.0, next_open)
    ref_trades, ref_equity, ref_skipped = reference_portfolio(*args, 3, frac, stake, 0.001, 0.0005, 1000.0,
                                                              next_open)
    assert len(trades) == len(ref_trades) > 50
    got = [(int(r["symbol"]), int(r["entry_bar"]), r["entry_price"], int(r["exit_bar"]), r["exit_price"],
            r["units"], r["pnl"]) for r in trades]
    order = lambda rows: np.array(sorted(rows, key=lambda x: (x[3] if x[3] >= 0 else 10**9, x[0])),  # noqa: E731
                                  dtype=float)
    ours, reference = order(got), order(ref_trades)
    np.testing.assert_allclose(ours[:, :6], reference[:, :6], rtol=1e-12)
    # A trade's P&L is exit value minus entry cost, a difference of two large amounts: its error is relative to
    # the amounts, not to itself (a P&L of 0.0116 on a 248 notional differed by 2.8e-14, one ulp of the
    # notional, between this machine's and an AVX-512 machine's rounding).
    notional = np.abs(reference[:, 5] * reference[:, 2])
    np.testing.assert_array_less(np.abs(ours[:, 6] - reference[:, 6]), 1e-12 * notional + 1e-300)
    np.testing.assert_allclose(equity, ref_equity, rtol=1e-12)
    assert [metrics[enums.P_SKIPPED_NO_SLOT], metrics[enums.P_SKIPPED_NO_CASH]] == ref_skipped
    assert metrics[enums.P_SKIPPED_NO_SLOT] > 0  # contention really happened
    assert metrics[enums.P_MAX_OPEN_SEEN] == 3
    assert metrics[enums.P_FINAL_VALUE] == pytest.approx(ref_equity[~np.isnan(ref_equity)][-1], rel=1e-12)
    assert contrib[:, pk.CONTRIB_PNL].sum() == pytest.approx(metrics[enums.P_FINAL_VALUE] - 1000.0, rel=1e-9)


def test_ties_in_rank_go_to_the_symbol_that_sorts_first_and_runs_are_deterministic():
    close = np.full((3, 4), 10.0)
    entries = np.zeros((3, 4), dtype=np.bool_)
    entries[:, 1] = True
    exits = np.zeros_like(entries)
    rank = np.zeros((3, 4))
    rank[2, 1] = 5.0  # the highest rank wins the one slot, whatever its place
    _, _, _, trades = run_kernel(close, close, entries, exits, rank, 1, True, 1.0, 0.0, 0.0, 100.0, False)
    assert [int(t["symbol"]) for t in trades] == [2]
    rank[2, 1] = 0.0  # all equal: the first symbol (by name) wins
    metrics, contrib, _, trades = run_kernel(close, close, entries, exits, rank, 1, True, 1.0, 0.0, 0.0, 100.0,
                                             False)
    assert [int(t["symbol"]) for t in trades] == [0]
    assert metrics[enums.P_SKIPPED_NO_SLOT] == 2 and list(contrib[:, pk.CONTRIB_SKIPPED]) == [0, 1, 1]


def test_an_entry_that_cannot_be_funded_is_skipped_and_counted():
    close = np.full((2, 3), 10.0)
    entries = np.zeros((2, 3), dtype=np.bool_)
    entries[0, 0] = entries[1, 1] = True
    metrics, _, _, trades = run_kernel(close, close, entries, np.zeros_like(entries), np.zeros((2, 3)), 5,
                                       False, 600.0, 0.0, 0.0, 1000.0, False)
    assert [int(t["symbol"]) for t in trades] == [0]
    assert metrics[enums.P_SKIPPED_NO_CASH] == 1 and metrics[enums.P_SKIPPED_NO_SLOT] == 0


@pytest.mark.parametrize("next_open", [False, True])
def test_a_fraction_stake_is_sized_from_the_equity_marked_where_the_entry_fills(next_open):
    """--stake 40 %: B's entry commits 40 % of the equity at its fill, A's position marked at its latest
    close then: with close fills that is this bar's close (A has moved from 100 to 120), with next-open
    fills the previous close (this bar's is not known yet). Issue 25."""
    close = np.array([[100.0, 100.0, 120.0, 130.0], [50.0, 50.0, 40.0, 45.0]])
    open_ = np.array([[100.0, 100.0, 110.0, 125.0], [50.0, 50.0, 44.0, 42.0]])
    entries = np.zeros((2, 4), dtype=np.bool_)
    entries[0, 0] = entries[1, 1 if next_open else 2] = True  # both fill: A at bar 0 or 1, B at bar 2
    fee, initial = 0.001, 1000.0
    # By hand, bar by bar, as the README words it.
    cash, units, marks = initial, {}, {}
    for t in range(4):
        for s in (0, 1):
            if entries[s, t - 1 if next_open else t] and (not next_open or t > 0):
                price = open_[s, t] if next_open else close[s, t]
                at_fill = {h: (marks[h] if next_open else close[h, t]) for h in units}
                cost = 0.4 * (cash + sum(units[h] * at_fill[h] for h in units))
                units[s] = (cost - cost * fee) / price
                cash -= cost
        for s in (0, 1):
            marks[s] = close[s, t]
    expected = cash + sum(units[s] * close[s, 3] for s in units)
    metrics, _, _, trades = run_kernel(open_, close, entries, np.zeros_like(entries), np.zeros((2, 4)), 2, True,
                                       0.4, fee, 0.0, initial, next_open)
    assert [int(t["symbol"]) for t in trades] == [0, 1] and metrics[enums.P_SKIPPED_NO_CASH] == 0
    assert metrics[enums.P_FINAL_VALUE] == pytest.approx(expected, rel=1e-12)


def test_fraction_stakes_with_close_fills_equal_vectorbts_target_percent_with_shared_cash():
    """vectorbt sizes `targetpercent` orders from the group's value at the bar's close, as our close
    fills do (issue 25); the cases where the two define the same account are in run_shared_percent."""
    try:
        from bench.baselines import vectorbt_portfolio
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"vectorbt is not installed or does not import here: {exc}")
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (5, 600)), axis=1))
    entries = rng.random(close.shape) < 0.05
    exits = (rng.random(close.shape) < 0.05) & ~entries
    metrics, _, equity, trades = run_kernel(close, close, entries, exits, np.zeros(close.shape), 5, True, 0.1, 0.0,
                                            0.0, 1000.0, False)
    assert len(trades) > 40 and metrics[enums.P_SKIPPED_NO_CASH] == metrics[enums.P_SKIPPED_NO_SLOT] == 0
    np.testing.assert_allclose(equity, vectorbt_portfolio.run_shared_percent(close, entries, exits, 0.1, 1000.0),
                               rtol=1e-12)


def test_parallel_grid_equals_one_account_at_a_time():
    open_, close, entries, exits, rank = random_market(6, 800, seed=3)
    max_open = np.array([1, 2, 6, 3], dtype=np.int64)
    frac = np.array([True, True, False, True])
    stake = np.array([1.0, 0.5, 100.0, 0.2])
    out = np.empty((4, enums.N_PORTFOLIO_METRICS))
    pk.run_portfolio_grid(open_, close, entries[None], exits[None], np.zeros(4, dtype=np.int64), rank, max_open,
                          frac, stake, 0.001, 0.0, 1000.0, False, 8760.0, out)
    for c in range(4):
        single, *_ = run_kernel(open_, close, entries, exits, rank, int(max_open[c]), bool(frac[c]),
                                float(stake[c]), 0.001, 0.0, 1000.0, False)
        np.testing.assert_array_equal(out[c], single)


# --- the account over real runs: parity with the single-symbol engine ------------------------

from pipeline.engine import batch as engine  # noqa: E402
from pipeline.engine import options  # noqa: E402
from pipeline.engine import portfolio as pf  # noqa: E402
from pipeline.lake import reader, snapshots  # noqa: E402


@pytest.fixture(scope="module")
def lake_root(build_lake):
    return build_lake(n_symbols=8, years=0.5)


SINGLE_FIELDS = ("final_value", "total_return_pct", "num_trades", "closed_trades", "win_rate_pct",
                 "max_drawdown_pct", "sharpe", "exposure_pct", "bars")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["rsi", "macd", "bollinger", "ma_crossover", "buy_and_hold"])
@pytest.mark.parametrize("fill", ["close", "next_open"])
def test_one_symbol_one_slot_full_stake_equals_the_single_symbol_run_exactly(lake_root, strategy, fill):
    config = options.run_config(get_strategy(strategy), {}, fill=fill)
    for symbol in reader.resolve_symbols(snapshots.require_snapshot(lake_root), None)[:4]:
        batch = reader.read_prices(lake_root, [symbol], "1h", columns=("open", "close", "volume"))
        single = engine.run(batch, config)[0]
        account = pf.run(batch, config, pf.make_sets(config, [1], [pf.Stake.parse("1.0")]))[0]
        assert {k: account[k] for k in SINGLE_FIELDS} == {k: single[k] for k in SINGLE_FIELDS}, symbol
        assert account["buy_hold_return_pct"] == pytest.approx(single["buy_hold_return_pct"], rel=1e-12)


def test_unlimited_slots_and_fixed_stakes_equal_the_sum_of_independent_accounts(lake_root):
    config = options.run_config(get_strategy("buy_and_hold"), {}, fee=0.1)
    batch = reader.read_prices(lake_root, None, "1h", columns=("open", "close", "volume"))
    n = len(batch.symbols)
    share = options.run_config(get_strategy("buy_and_hold"), {}, fee=0.1, initial=1000.0 / n)
    independent = sum(r["final_value"] for r in engine.run(batch, share))
    account = pf.run(batch, config, pf.make_sets(config, [n], [pf.Stake.parse(str(1000.0 / n))]))[0]
    assert account["final_value"] == pytest.approx(independent, rel=1e-12)
    assert account["skipped_no_slot"] == account["skipped_no_cash"] == 0 and account["num_trades"] == n


def test_detail_round_trips_and_contributions_add_up_to_the_account(lake_root):
    config = options.run_config(get_strategy("rsi"), {})
    batch = reader.read_prices(lake_root, None, "1h", columns=("open", "close", "volume"))
    chosen = pf.make_sets(config, [3], [pf.Stake.parse("30%")])[0]
    full = pf.detail(batch, config, chosen)
    assert full["final_value"] == pf.run(batch, config, [chosen])[0]["final_value"]
    assert sum(c["pnl"] for c in full["contributions"]) == pytest.approx(full["final_value"] - 1000.0, rel=1e-9)
    assert sum(t["pnl"] for t in full["round_trips"]) == pytest.approx(full["final_value"] - 1000.0, rel=1e-9)
    assert {t["exit_reason"] for t in full["round_trips"]} <= {"signal", "end_of_data"}
    assert full["skipped_no_slot"] == sum(c["skipped_entries"] for c in full["contributions"]) - full[
        "skipped_no_cash"]
    equity = full["equity_curve"]["equity"]
    assert equity[~np.isnan(equity)][-1] == pytest.approx(full["final_value"], rel=1e-12)


@pytest.mark.parametrize(("text", "value", "fraction"), [("0.1", 0.1, True), ("10%", 0.1, True),
                                                         ("1", 1.0, True), ("250", 250.0, False)])
def test_stake_is_a_fraction_of_equity_or_an_amount(text, value, fraction):
    assert pf.Stake.parse(text) == pf.Stake(value, fraction)


@pytest.mark.parametrize("text", ["0", "-1", "abc", "nan", "150%", "inf"])
def test_bad_stake_is_one_line_error_naming_it(text):
    with pytest.raises(pf.PipelineError, match="--stake"):
        pf.Stake.parse(text)


def test_portfolio_run_appends_rows_marked_portfolio_that_plain_duckdb_reads(lake_root, tmp_path):
    from dataclasses import replace

    import duckdb

    from pipeline import runs
    from pipeline.core.config import Settings

    settings = replace(Settings(), lake_root=lake_root, results_root=tmp_path / "results", redis_url="")
    config = options.run_config(get_strategy("rsi"), [{"rsi_period": 10}, {"rsi_period": 14}])
    sets = pf.make_sets(config, [2, 4], [pf.Stake.parse("0.25"), pf.Stake.parse("100")])
    outcome = runs.portfolio(settings, config, sets, command="test")
    assert len(outcome.results) == 8 and outcome.best["final_value"] == outcome.results[0]["final_value"]
    rows = duckdb.sql(
        f"SELECT mode, symbol, n_symbols, max_open, stake, stake_mode, params_json, final_value FROM read_parquet("
        f"'{settings.results_root}/**/*.parquet', hive_partitioning = true, union_by_name = true)"
    ).fetchall()
    assert len(rows) == 8 and {r[0] for r in rows} == {"portfolio"} and {r[1] for r in rows} == {"*"}
    assert {(r[3], r[4], r[5]) for r in rows} == {(2, 0.25, "fraction"), (4, 0.25, "fraction"),
                                                  (2, 100.0, "amount"), (4, 100.0, "amount")}
    assert max(r[7] for r in rows) == outcome.best["final_value"]
    single = runs.backtest(settings, options.run_config(get_strategy("rsi"), {}), cache=None)
    from pipeline.store import results

    _, top = results.top(settings.results_root, n=100)
    assert len(top) == len(single.results) and "*" not in {row[0] for row in top}


@pytest.fixture
def portfolio_env(lake_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CRYPTOBT_LAKE_ROOT", str(lake_root))
    monkeypatch.setenv("CRYPTOBT_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("REDIS_URL", "")
    return tmp_path / "results"


def test_portfolio_cli_json_and_picture(portfolio_env, tmp_path):
    import json

    from typer.testing import CliRunner

    from pipeline.cli import app

    picture = tmp_path / "p.png"
    result = CliRunner().invoke(app, ["portfolio", "macd", "--max-open", "2,4", "--stake", "25%", "--json",
                                      "--plot", str(picture)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [a["max_open"] for a in payload["accounts"]] and len(payload["accounts"]) == 2
    best = payload["best"]
    assert best["final_value"] == payload["accounts"][0]["final_value"]
    assert len(best["contributions"]) == 8 and best["round_trips"]
    assert set(best["round_trips"][0]) == {"symbol", "entry_time", "entry_price", "exit_time", "exit_price",
                                           "units", "fees", "pnl", "return_pct", "bars_held", "exit_reason"}
    assert picture.stat().st_size > 10_000


@pytest.mark.parametrize(("args", "message"), [
    (["--max-open", "0"], "--max-open '0' is not allowed"),
    (["--max-open", "x"], "--max-open 'x' is not allowed"),
    (["--stake", "150%"], "--stake '150%' is out of range"),
    (["--stake", "5000"], "--stake 5000 is more than the initial cash"),
    (["--rank-by", "luck"], "--rank-by 'luck' is not allowed"),
    (["--slippage", "-1"], "--slippage -1.0 is out of range"),
    (["--plot", "out.svg"], "use a .html or .png file name"),
    (["-p", "rsi_period=1"], "rsi_period=1 is out of range"),
])
def test_portfolio_bad_input_is_one_line_before_anything_is_written(portfolio_env, args, message):
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, ["portfolio", "rsi", *args])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not portfolio_env.exists()


def test_the_notebook_api_runs_frames_without_a_lake_and_equals_the_lake_path(lake_root, tmp_path):
    import polars as pl

    import pipeline as cryptobt

    batch = reader.read_prices(lake_root, None, "1h", columns=("open", "high", "low", "close", "volume"))
    frames = {}
    for i, symbol in enumerate(batch.symbols):
        keep = ~np.isnan(batch.columns["close"][i])
        frames[symbol] = pl.DataFrame({"date": pl.from_epoch(pl.Series(batch.times[keep]), "s"),
                                       **{c: batch.columns[c][i][keep] for c in ("open", "high", "low", "close",
                                                                                  "volume")}})
    frames["SYN001"] = frames["SYN001"].to_pandas()  # pandas frames go in too
    results = cryptobt.run_backtest(frames, "rsi", {"rsi_period": 10})
    config = options.run_config(get_strategy("rsi"), {"rsi_period": 10})
    expected = {r["symbol"]: r["final_value"] for r in engine.run(batch, config)}
    assert dict(zip(results["symbol"], results["final_value"], strict=True)) == expected
    account = cryptobt.run_portfolio(frames, "rsi", max_open=[2, 3], stake="25%")
    defaults = options.run_config(get_strategy("rsi"), {})
    lake_accounts = pf.run(batch, defaults, pf.make_sets(defaults, [2, 3], [pf.Stake.parse("25%")]))
    assert account.accounts["final_value"].to_list() == [a["final_value"] for a in lake_accounts]
    assert account.trades.height == len(account.best["round_trips"]) > 0
    assert account.equity.height == batch.times.size
    assert account.plot(tmp_path / "p.png").stat().st_size > 10_000
