"""The endpoints behind the dashboard's views, over a real uvicorn, lake, Redis and results table:
the run history, a run's trades, a sweep's parameter sets (its heatmap), portfolio runs and the
price in /api/equity. Each answer is checked against the CLI or the rows the run wrote."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from pipeline import demo
from pipeline.core.config import Settings
from tests.api_server import serving
from tests.test_api import _cli_json


@pytest.fixture(scope="module")
def lake(build_lake) -> Path:
    return build_lake(n_symbols=4, years=0.3, sample=demo.DEFAULT_SAMPLE)


@pytest.fixture
def settings(lake, tmp_path, redis_url, redis_prefix) -> Settings:
    return Settings(lake_root=lake, results_root=tmp_path / "results", redis_url=redis_url,
                    cache_prefix=redis_prefix, api_workers=2, api_queue=8)


@pytest.fixture
def api(settings):
    with serving(settings) as (base, _), httpx.Client(base_url=base, timeout=120) as client:
        yield client


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_run_history_lists_the_runs_newest_first_and_opens_one_as_results_show(api, settings):
    first = api.post("/api/backtest", json={"strategy": "rsi", "symbols": ["ETH_BTC", "SYN000"]})
    second = api.post("/api/sweep", json={"strategy": "macd", "grid": ["fast_period=8,12"], "top": 2})
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    runs = api.get("/api/runs").json()
    assert [r["run_id"] for r in runs] == [second.headers["x-run-id"], first.headers["x-run-id"]]
    assert [(r["command"], r["strategy"], r["symbols"], r["results"], r["sets"]) for r in runs] == [
        ("api sweep", "macd", 8, 16, 2), ("api backtest", "rsi", 2, 2, 1)]
    assert runs == _cli_json(settings, "results", "runs")
    assert [r["run_id"] for r in api.get("/api/runs", params={"n": 1}).json()] == [second.headers["x-run-id"]]
    opened = api.get(f"/api/runs/{first.headers['x-run-id']}").json()
    assert opened == _cli_json(settings, "results", "show", first.headers["x-run-id"], "--n", "100")
    assert [r["symbol"] for r in opened["results"]] == [r["symbol"] for r in first.json()]
    assert [r["total_return_pct"] for r in opened["results"]] == [r["total_return_pct"] for r in first.json()]


def test_a_runs_trades_are_the_round_trips_its_backtest_returned(api):
    answer = api.post("/api/backtest", json={"strategy": "rsi", "symbols": ["ETH_BTC", "LTC_BTC"], "trades": True,
                                             "sl": 3, "tp": 6})
    assert answer.status_code == 200, answer.text
    run_id = answer.headers["x-run-id"]
    for result in answer.json():
        trips = api.get(f"/api/runs/{run_id}/trades", params={"symbol": result["symbol"]}).json()
        assert len(trips) == len(result["round_trips"]) > 0
        for got, want in zip(trips, result["round_trips"], strict=True):
            assert _time(got["entry_time"]) == _time(want["entry_time"])
            assert _time(got["exit_time"]) == _time(want["exit_time"])
            assert {k: got[k] for k in ("entry_price", "exit_price", "units", "fees", "pnl", "return_pct",
                                        "bars_held", "exit_reason")} == {
                k: want[k] for k in ("entry_price", "exit_price", "units", "fees", "pnl", "return_pct", "bars_held",
                                     "exit_reason")}
            assert (got["symbol"], got["sl_pct"], got["tp_pct"]) == (result["symbol"], 3.0, 6.0)
    both = api.get(f"/api/runs/{run_id}/trades").json()
    assert len(both) == sum(len(r["round_trips"]) for r in answer.json())
    # A run that recorded no trades says so, as `results trades` does.
    plain = api.post("/api/backtest", json={"strategy": "rsi", "symbols": ["ETH_BTC"]}).headers["x-run-id"]
    none = api.get(f"/api/runs/{plain}/trades")
    assert none.status_code == 404 and "recorded no trades" in none.json()["error"]


def test_a_sweeps_sets_are_each_sets_mean_over_the_symbols(api):
    grid = ["rsi_period=7,14,21", "oversold_threshold=25,30", "sl=0,5"]
    answer = api.post("/api/sweep", json={"strategy": "rsi", "grid": grid, "top": 1})
    assert answer.status_code == 200, answer.text
    run_id = answer.headers["x-run-id"]
    rows = api.get(f"/api/results/{run_id}").json()  # every row the sweep wrote
    sets = api.get(f"/api/runs/{run_id}/sets").json()
    assert len(sets) == 12
    for entry in sets:
        p = entry["params"]
        assert set(p) == {"rsi_period", "oversold_threshold", "overbought_threshold", "sl"}
        mine = [r for r in rows if json.loads(r["params_json"]) == {k: v for k, v in p.items() if k != "sl"}
                and r["sl_pct"] == p["sl"]]
        returns = [r["total_return_pct"] for r in mine]
        assert entry["symbols"] == len(returns) == 8
        assert entry["total_return_pct"] == pytest.approx(sum(returns) / len(returns), rel=1e-12)
        sharpes = [r["sharpe"] for r in mine if r["sharpe"] is not None]  # SQL's avg skips NULL, as here
        assert entry["sharpe"] == (pytest.approx(sum(sharpes) / len(sharpes), rel=1e-12) if sharpes else None)
    one = api.get(f"/api/runs/{run_id}/sets", params={"symbol": "ETH_BTC"}).json()
    eth = {(json.loads(r["params_json"])["rsi_period"], json.loads(r["params_json"])["oversold_threshold"],
            r["sl_pct"]): r["total_return_pct"] for r in rows if r["symbol"] == "ETH_BTC"}
    assert {(s["params"]["rsi_period"], s["params"]["oversold_threshold"], s["params"]["sl"]): s["total_return_pct"]
            for s in one} == eth
    # The sweep's own answer carries the overfitting statistics per row.
    assert all(r["pbo"] is not None and 0 <= r["deflated_sharpe"] <= 1 for r in answer.json())


def test_portfolio_answers_what_the_cli_prints_with_the_best_accounts_curves(api, settings):
    body = {"strategy": "rsi", "max_open": [1, 3], "stake": ["50%", "100"], "rank_by": "name", "points": 50}
    answer = api.post("/api/portfolio", json=body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    cli = _cli_json(settings, "portfolio", "rsi", "--max-open", "1,3", "--stake", "50%,100", "--rank-by", "name")
    keys = ("max_open", "stake", "stake_mode", "total_return_pct", "buy_hold_return_pct", "num_trades",
            "skipped_no_slot", "skipped_no_cash", "max_drawdown_pct", "sharpe", "final_value")
    assert [{k: a[k] for k in keys} for a in got["accounts"]] == [{k: a[k] for k in keys} for a in cli["accounts"]]
    assert len(got["accounts"]) == 4 and got["run_id"] == answer.headers["x-run-id"]
    best = got["best"]
    assert {k: best[k] for k in keys} == {k: cli["best"][k] for k in keys}
    assert best["round_trips"] == cli["best"]["round_trips"]
    curve = best["equity_curve"]
    assert len(curve["times"]) == len(curve["equity"]) == len(curve["buy_hold"]) <= 51
    assert curve["equity"][-1] == pytest.approx(best["final_value"])
    assert curve["buy_hold"][-1] == pytest.approx(1000 * (1 + best["buy_hold_return_pct"] / 100))
    listed = {r["run_id"]: r for r in api.get("/api/runs").json()}
    assert listed[got["run_id"]]["command"] == "api portfolio"


def test_equity_carries_the_price_and_draws_on_a_named_snapshot(api):
    body = {"strategy": "rsi", "symbol": "ETH_BTC", "points": 100000}
    curve = api.post("/api/equity", json=body).json()
    assert len(curve["close"]) == len(curve["times"])
    # Buy & hold is the initial cash times the price over the first price.
    assert [1000 * c / curve["close"][0] for c in curve["close"]] == pytest.approx(curve["buy_hold"], rel=1e-12)
    fills = {(f["time"], f["price"]) for f in curve["trades"] if f["action"] == "buy"}
    assert fills, "rsi on ETH_BTC trades"
    snapshot = api.get("/api/symbols").json()["snapshot_id"]
    assert api.post("/api/equity", json={**body, "snapshot": snapshot}).json() == curve
    gone = api.post("/api/equity", json={**body, "snapshot": "20200101T000000000000Z-00000000"})
    assert gone.status_code == 400 and "20200101T000000000000Z-00000000" in gone.json()["error"]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("get", "/api/runs?n=0", None, 422, "n '0': Input should be greater than or equal to 1"),
    ("get", "/api/runs?n=1001", None, 422, "n '1001': Input should be less than or equal to 1000"),
    ("get", "/api/runs/nope", None, 422, "run_id 'nope': String should match pattern"),
    ("get", "/api/runs/20200101T000000000000Z-00000000", None, 404,
     "no run '20200101T000000000000Z-00000000' in the results table; recent runs: cryptobt results runs"),
    ("get", "/api/runs/20200101T000000000000Z-00000000/sets", None, 404, "no results for run"),
    ("get", "/api/runs/20200101T000000000000Z-00000000/trades?symbol=a;b", None, 422, "symbol 'a;b'"),
    ("get", "/api/runs/20200101T000000000000Z-00000000/trades", None, 404, "no run '20200101T000000000000Z-00000000'"),
    ("post", "/api/portfolio", {"strategy": "rsi", "stake": ["150%"]}, 422, "--stake '150%' is out of range"),
    ("post", "/api/portfolio", {"strategy": "rsi", "max_open": [0]}, 422,
     "max_open.0 0: Input should be greater than or equal to 1"),
    ("post", "/api/portfolio", {"strategy": "rsi", "rank_by": "luck"}, 422, "--rank-by 'luck' is not allowed"),
    ("post", "/api/portfolio", {"strategy": "rsi", "stake": ["5000"]}, 422, "more than the initial cash 1000"),
    ("post", "/api/portfolio", {"strategy": "rsi", "grid": ["rsi_period=7,14"], "params": {"rsi_period": 7}}, 422,
     "use either params or grid, not both"),
    ("post", "/api/portfolio", {"strategy": "rsi", "symbols": ["NOPE"]}, 400, "unknown symbol(s) 'NOPE'"),
    ("post", "/api/equity", {"strategy": "rsi", "symbol": "ETH_BTC", "snapshot": "../x"}, 422, "snapshot '../x'"),
])
def test_bad_view_requests_are_one_json_error(api, method, path, body, status, message):
    response = api.request(method.upper(), path, json=body)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"] and message in response.json()["error"], response.text


def test_the_new_endpoints_declare_their_bounds_in_the_schema(api):
    paths = api.get("/openapi.json").json()["paths"]
    params = {p["name"]: p["schema"] for p in paths["/api/runs"]["get"]["parameters"]}
    assert params["n"]["minimum"] == 1 and params["n"]["maximum"] == 1000
    for path in ("/api/runs/{run_id}", "/api/runs/{run_id}/trades", "/api/runs/{run_id}/sets"):
        params = {p["name"]: p["schema"] for p in paths[path]["get"]["parameters"]}
        assert params["run_id"]["pattern"].startswith("^") and params["run_id"]["maxLength"] == 40
        assert "n" not in params or (params["n"]["minimum"] == 1 and params["n"]["maximum"] >= 1000)
    symbol = {p["name"]: p["schema"] for p in paths["/api/runs/{run_id}/trades"]["get"]["parameters"]}["symbol"]
    assert symbol["anyOf"][0]["maxLength"] == 64
    assert "/api/portfolio" in paths
