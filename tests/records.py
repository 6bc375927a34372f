"""A result record as the engine hands it to the cache and to the results table: one sample for
test_cache and test_results, each changing what its tests are about."""

from __future__ import annotations

from typing import Any

from pipeline.core.versions import ENGINE_VERSION


def make_result(symbol: str = "BTC", strategy: str = "rsi", **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "rsi": {"rsi_period": 14, "oversold_threshold": 30, "overbought_threshold": 70},
        "ma_crossover": {"fast_period": 10, "slow_period": 30},
        "bollinger": {"bb_period": 20, "bb_std": 2.5},
        "macd": {"fast_period": 12, "slow_period": 26, "signal_period": 9},
        "buy_and_hold": {},
    }[strategy]
    record: dict[str, Any] = {
        "symbol": symbol,
        "strategy": strategy,
        "params": params,
        "interval": "1h",
        "start": "2024-01-01T00:00:00+00:00",
        "end": "2024-01-21T19:00:00Z",
        "timerange_start": "2024-01-01T00:00:00+00:00",
        "timerange_end": None,
        "bars": 500,
        "days_of_data": 20.79,
        "final_value": 1012.5,
        "total_return_pct": 1.25,
        "buy_hold_return_pct": -3.0,
        "num_trades": 3,
        "closed_trades": 2,
        "win_rate_pct": 50.0,
        "max_drawdown_pct": -4.2,
        "sharpe": 0.8,
        "exposure_pct": 41.5,
        "fill": "close",
        "fee_pct": 0.1,
        "initial_investment": 1000.0,
        "snapshot_id": "snap-1",
        "data_version": f"dv-{symbol}",
        "engine_version": ENGINE_VERSION,
        "reason": None,
        "from_cache": False,
    }
    record.update(overrides)
    return record
