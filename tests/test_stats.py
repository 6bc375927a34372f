"""The full stats set, streamed by the kernel, against textbook formulas computed here with NumPy and
pandas from the equity curve and the trade list the engine reports (quantstats and empyrical are not
dependencies; each formula below is the README's, written independently of the kernel)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from pipeline import notebook
from pipeline.engine import batch as engine
from pipeline.engine import options
from pipeline.engine.strategies import get_strategy
from pipeline.store import results

ROOT = Path(__file__).resolve().parents[1]
BINANCE_FILES = sorted((ROOT / "data" / "sample" / "binance-5m").glob("*.feather"))
FRAMES = {path.stem.split("-")[0]: pl.read_ipc(path) for path in BINANCE_FILES}

RUNS = [
    ("rsi", {}, {}),
    ("rsi", {"rsi_period": 7}, {"sl": 1, "tp": 2, "trail": True, "size": 0.5, "slippage": 0.05}),
    ("macd", {}, {"fill": "next_open", "fee": 0.25}),
    ("bollinger", {"bb_period": 30}, {"tp": 1.5, "annualization": "calendar"}),
]


def expected_stats(initial: float, equity: np.ndarray, trips: list[dict], fills: list[dict],
                   bars_per_year: float) -> dict[str, float]:
    """Every stat from its definition: per-bar returns of the curve that starts at the initial cash,
    drawdown periods as runs of bars under the running peak, trade stats over the closed round trips."""
    curve = pd.Series(np.concatenate(([initial], equity)))
    r = curve.pct_change().dropna().to_numpy()
    n = len(equity)
    years = n / bars_per_year
    peak = curve.cummax()
    drawdown = ((peak - curve) / peak).iloc[1:]
    under = drawdown > 0
    period = (~under).cumsum()[under]
    depths = drawdown[under].groupby(period).max()
    lengths = under[under].groupby(period).size()
    max_dd = drawdown.max()
    cagr = (curve.iloc[-1] / initial) ** (1 / years) - 1
    downside = np.sqrt(np.mean(np.minimum(r, 0.0) ** 2))
    closed = [t for t in trips if t["exit_reason"] != "end_of_data"]
    ret = np.array([t["return_pct"] for t in closed])
    held = np.array([t["bars_held"] for t in closed])
    pnl = np.array([t["pnl"] for t in closed])
    nan = math.nan
    return {
        "cagr_pct": cagr * 100,
        "annual_return_pct": r.mean() * bars_per_year * 100,
        "annual_volatility_pct": r.std(ddof=1) * math.sqrt(bars_per_year) * 100,
        "sortino": r.mean() / downside * math.sqrt(bars_per_year) if downside > 0 else nan,
        "calmar": cagr / max_dd if max_dd > 0 else nan,
        "max_drawdown_duration_bars": float(lengths.max()) if len(lengths) else 0.0,
        "avg_drawdown_pct": depths.mean() * 100 if len(depths) else nan,
        "best_trade_pct": ret.max() if len(ret) else nan,
        "worst_trade_pct": ret.min() if len(ret) else nan,
        "avg_trade_pct": ret.mean() if len(ret) else nan,
        "avg_trade_duration_bars": held.mean() if len(held) else nan,
        "max_trade_duration_bars": float(held.max()) if len(held) else nan,
        "profit_factor": pnl[pnl > 0].sum() / -pnl[pnl < 0].sum() if (pnl < 0).any() else nan,
        "expectancy": pnl.mean() if len(pnl) else nan,
        "sqn": math.sqrt(len(pnl)) * pnl.mean() / pnl.std(ddof=1) if len(pnl) > 1 and pnl.std() > 0 else nan,
        "fees_paid": sum(f["fee"] for f in fills),
    }


def _check(result: dict, expected: dict[str, float]) -> None:
    for name, want in expected.items():
        got = result[name]
        if math.isnan(want):
            assert got is None, f"{result['symbol']} {name}: {got} where the definition is undefined"
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9), f"{result['symbol']} {name}"


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "params", "run"), RUNS, ids=lambda x: str(x) if isinstance(x, str) else None)
def test_every_stat_equals_its_definition_computed_from_the_equity_curve_and_the_trades(strategy, params, run):
    batch = notebook.prices(FRAMES)
    config = options.run_config(get_strategy(strategy), params, trades=True, **run)
    found = engine.run(batch, config)
    checked = 0
    for i, result in enumerate(found):
        log = engine.trade_log(batch, config, i, result["params"], options.Execution.of(result))
        equity = log.equity[~np.isnan(log.equity)]
        assert log.round_trips == result["round_trips"] and log.fills == result["trades"]
        _check(result, expected_stats(config.initial, equity, result["round_trips"], result["trades"],
                                      result["bars_per_year"]))
        checked += result["closed_trades"]
    assert checked > 20  # trade stats over real trades
    # Sharpe = annualised return / annualised volatility: the three share one mean and one deviation.
    for result in found:
        assert result["sharpe"] == pytest.approx(result["annual_return_pct"] / result["annual_volatility_pct"])


def test_stats_without_trades_or_without_a_loss_are_null_not_zero_or_infinite(tmp_path):
    batch = notebook.prices(FRAMES)
    never = engine.run(batch, options.run_config(get_strategy("rsi"), {"oversold_threshold": 1.0, "overbought_threshold": 99.0}))
    for result in never:
        assert result["num_trades"] == 0 and result["fees_paid"] == 0.0 and result["cagr_pct"] == 0.0
        assert result["annual_volatility_pct"] == 0.0 and result["max_drawdown_duration_bars"] == 0
        for name in ("sortino", "calmar", "avg_drawdown_pct", "best_trade_pct", "worst_trade_pct", "avg_trade_pct",
                     "avg_trade_duration_bars", "max_trade_duration_bars", "profit_factor", "expectancy", "sqn"):
            assert result[name] is None, name
    held = engine.run(batch, options.run_config(get_strategy("buy_and_hold"), {}))
    for result in held:  # one trade, still open: no closed trade to take trade stats over
        assert result["best_trade_pct"] is None and result["profit_factor"] is None and result["fees_paid"] > 0
        assert result["max_drawdown_duration_bars"] > 0 and result["avg_drawdown_pct"] > 0
    results.append_results(tmp_path / "results", "run-1", never + held)
    columns, rows = results.query(tmp_path / "results", "SELECT count(*) FILTER (sqn IS NULL), count(*) FILTER ("
                                  "isnan(sortino)), max(max_drawdown_duration_bars) FROM results")
    assert rows == [(len(never) + len(held), 0, max(r["max_drawdown_duration_bars"] for r in held))]


def test_the_grid_kernel_streams_the_same_stats_as_one_run_at_a_time():
    batch = notebook.prices(FRAMES)
    grid = options.parse_grid(get_strategy("rsi"), ["rsi_period=7,14", "sl=0,1", "size=0.5,1"])
    swept = engine.run(batch, options.run_config(get_strategy("rsi"), grid, tp=3))
    for result in swept:
        (single,) = [r for r in engine.run(batch, options.run_config(get_strategy("rsi"), result["params"], sl=result["sl_pct"], tp=3, size=result["size"]))
            if r["symbol"] == result["symbol"]]
        assert {k: single[k] for k in engine.enums.STATS_NAMES} == {k: result[k] for k in engine.enums.STATS_NAMES}
