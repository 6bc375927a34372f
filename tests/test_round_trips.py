"""Round trips (SPEC 4.1): each entry with its exit, in --json, the trades table and the notebook API,
checked against trips paired by hand from the plain-Python reference's fills."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline import demo, notebook, runs
from pipeline.core.config import Settings
from pipeline.engine import batch as engine
from pipeline.engine import options, strategies
from pipeline.engine.strategies import get_strategy
from pipeline.store import results
from tests.reference import reference_backtest, reference_signals

ROOT = Path(__file__).resolve().parents[1]
BINANCE_FILES = sorted((ROOT / "data" / "sample" / "binance-5m").glob("*.feather"))
FIELDS = ("entry_time", "entry_price", "exit_time", "exit_price", "units", "fees", "pnl", "return_pct", "bars_held",
          "exit_reason")


def _gappy_frames() -> dict[str, pl.DataFrame]:
    """Two real pairs with bars taken out (an outage): bars_held counts bars, not clock time."""
    frames = {}
    for path in BINANCE_FILES[:2]:
        frame = pl.read_ipc(path)
        keep = np.ones(frame.height, dtype=bool)
        keep[1000:1040] = keep[3000:3003] = False
        frames[path.stem.split("-")[0]] = frame.filter(pl.Series(keep))
    return frames


def _paired_by_hand(frame: pl.DataFrame, fill: str, run: dict) -> list[dict]:
    """The reference's fills on the frame's own bars, paired into trips with the SPEC's rules."""
    o, h, lo, c = (frame[k].to_numpy().astype(float) for k in ("open", "high", "low", "close"))
    times = [t.replace(tzinfo=UTC).isoformat() if t.tzinfo is None else t.astimezone(UTC).isoformat()
             for t in frame["date"].to_list()]
    params = strategies.resolve_params(get_strategy("rsi"), {})
    entries, exits, values = reference_signals("rsi", c, params)
    ref = reference_backtest(o, c, entries, exits, values, 0.001, 1000.0, fill, 105120.0, high=h, low=lo,
                             sl=run.get("sl", 0) / 100, tp=run.get("tp", 0) / 100, trail=run.get("trail", False),
                             size=run.get("size", 1.0), slippage=run.get("slippage", 0) / 100)
    trips = []
    for k in range(0, len(ref.trades), 2):
        buy = ref.trades[k]
        sell = ref.trades[k + 1] if k + 1 < len(ref.trades) else None
        value = sell.value if sell else buy.units * c[-1]
        trips.append({
            "entry_time": times[buy.bar], "entry_price": buy.price,
            "exit_time": times[sell.bar if sell else len(c) - 1], "exit_price": sell.price if sell else c[-1],
            "units": buy.units, "fees": buy.fee + (sell.fee if sell else 0.0), "pnl": value - buy.value,
            "return_pct": (value - buy.value) / buy.value * 100, "bars_held": (sell.bar if sell else len(c) - 1) - buy.bar,
            "exit_reason": sell.reason if sell else "end_of_data"})
    return trips


def _same(ours: list[dict], theirs: list[dict]) -> None:
    assert [(t["entry_time"], t["exit_time"], t["bars_held"], t["exit_reason"]) for t in ours] == [
        (t["entry_time"], t["exit_time"], t["bars_held"], t["exit_reason"]) for t in theirs]
    for name in ("entry_price", "exit_price", "units", "fees", "pnl", "return_pct"):
        np.testing.assert_allclose([t[name] for t in ours], [t[name] for t in theirs], rtol=1e-9, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("fill", ["close", "next_open"])
@pytest.mark.parametrize("run", [{}, {"sl": 1, "tp": 2}, {"sl": 0.5, "trail": True, "size": 0.5, "slippage": 0.05}])
def test_round_trips_equal_the_references_fills_paired_by_hand(fill, run):
    frames = _gappy_frames()
    config = options.run_config(get_strategy("rsi"), {}, fill=fill, trades=True, **run)
    found = engine.run(notebook.prices(frames), config)
    reasons = set()
    for result in found:
        frame = frames[result["symbol"]]
        theirs = _paired_by_hand(frame, fill, run)
        _same(result["round_trips"], theirs)
        assert len(result["trades"]) == result["num_trades"] + result["closed_trades"]  # the fill log stays
        reasons |= {t["exit_reason"] for t in result["round_trips"]}
    assert ({"stop_loss", "trailing_stop"} & reasons) if run else ("signal" in reasons)


def test_a_position_open_at_the_end_is_a_trip_marked_at_the_last_close():
    frames = _gappy_frames()
    (result, *_) = engine.run(notebook.prices(frames), options.run_config(get_strategy("buy_and_hold"), {}, trades=True))
    (trip,) = result["round_trips"]
    frame = frames[result["symbol"]]
    assert trip["exit_reason"] == "end_of_data" and trip["exit_price"] == frame["close"][-1]
    assert trip["bars_held"] == frame.height - 1 and trip["fees"] == result["trades"][0]["fee"]
    assert trip["pnl"] == pytest.approx(result["final_value"] - 1000.0, rel=1e-12)


def test_the_notebook_gives_round_trips_as_a_frame_equal_to_the_json():
    frames = _gappy_frames()
    trips = notebook.round_trips(frames, "rsi", {"rsi_period": 10}, sl=1)
    found = engine.run(notebook.prices(frames), options.run_config(get_strategy("rsi"), {"rsi_period": 10}, sl=1, trades=True))
    assert trips.height == sum(len(r["round_trips"]) for r in found) > 0
    assert trips["entry_time"].dtype == pl.Datetime("us", "UTC") and set(FIELDS) <= set(trips.columns)
    mine = sorted((r["symbol"], t["entry_time"], t["pnl"]) for r in found for t in r["round_trips"])
    assert sorted(zip(trips["symbol"], [t.isoformat() for t in trips["entry_time"]], trips["pnl"],
                      strict=True)) == mine
    assert notebook.round_trips(frames, "rsi", {"rsi_period": 10, "oversold_threshold": 1.0}).height == 0


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("round_trips")
    demo.build_sample_lake(root / "lake", n_symbols=2, years=0.3, sample=demo.DEFAULT_SAMPLE)
    return replace(Settings(), lake_root=root / "lake", results_root=root / "results", redis_url="")


@pytest.mark.slow
def test_json_carries_round_trips_with_trades_and_the_trades_table_holds_both_kinds(lake):
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(lake.lake_root), "CRYPTOBT_RESULTS_ROOT": str(lake.results_root),
           "REDIS_URL": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pipeline", "backtest", "rsi", "-s", "ETH_BTC", "--sl", "1",
                           "--trades", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)["results"]
    assert result["round_trips"] and list(result["round_trips"][0]) == list(FIELDS)
    plain = subprocess.run([sys.executable, "-m", "pipeline", "backtest", "rsi", "-s", "ETH_BTC", "--json"],
                           capture_output=True, text=True, env=env, timeout=600)
    assert "round_trips" not in json.loads(plain.stdout)["results"][0] and "trades" not in json.loads(plain.stdout)["results"][0]
    columns, rows = results.query(lake.results_root, """
        SELECT t.kind, count(*), count(t.exit_reason), sum(t.pnl), any_value(t.sl_pct)
        FROM results r JOIN trades t
        USING (run_id, symbol, strategy, interval, params_json, sl_pct, tp_pct, trail, size, slippage_pct)
        GROUP BY t.kind ORDER BY t.kind""")
    trips, fills = len(result["round_trips"]), len(result["trades"])
    assert rows[0][:3] == ("fill", fills, 0) and rows[1][:3] == ("round_trip", trips, trips)
    assert rows[1][3] == pytest.approx(sum(t["pnl"] for t in result["round_trips"])) and rows[1][4] == 1.0
    _, first = results.query(lake.results_root, "SELECT entry_time, exit_reason, bars_held FROM trades "
                                                "WHERE kind = 'round_trip' ORDER BY entry_time LIMIT 1")
    trip = result["round_trips"][0]
    assert first[0] == (datetime.fromisoformat(trip["entry_time"]), trip["exit_reason"], trip["bars_held"])


def test_a_cached_result_without_round_trips_is_recomputed_when_trades_are_asked(lake, redis_url, redis_prefix):
    from pipeline.store.cache import ResultCache

    settings = replace(lake, redis_url=redis_url, cache_prefix=redis_prefix)
    cache = ResultCache.from_settings(settings)
    runs.backtest(settings, options.run_config(get_strategy("rsi"), {}), ["ETH_BTC"], cache=cache, write_results=False)
    with_trades = runs.backtest(settings, options.run_config(get_strategy("rsi"), {}, trades=True), ["ETH_BTC"], cache=cache,
                                write_results=False)
    assert with_trades.cache_hits == 0 and with_trades.results[0]["round_trips"]
    cache.close()
