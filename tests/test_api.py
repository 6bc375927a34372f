"""The HTTP API (`cryptobt api`) with httpx against the real app on a real uvicorn: real Redis,
a real lake, real PostgreSQL for /healthz. No mocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline import demo
from pipeline.core.config import Settings
from pipeline.engine import options
from tests.api_server import serving, sse_events

TOKEN = "test-admin-token-9f2c"
# Metrics a cached and a computed result must agree on (lineage fields legitimately differ).
SAME = ("symbol", "strategy", "params", "interval", "bars", "final_value", "total_return_pct",
        "buy_hold_return_pct", "num_trades", "closed_trades", "win_rate_pct", "max_drawdown_pct", "sharpe",
        "data_version")
# A sweep large enough that it is still running when a test acts on it: 20,000 parameter sets over
# two symbols of three years (about 1 G bar-steps, about a hundred kernel calls).
LONG_GRID = ["rsi_period=2:101:1", "oversold_threshold=10:49:1", "overbought_threshold=60:64:1"]


@pytest.fixture(scope="module")
def small_lake(build_lake) -> Path:
    return build_lake(n_symbols=6, years=0.3, sample=demo.DEFAULT_SAMPLE)


@pytest.fixture(scope="module")
def long_lake(build_lake) -> Path:
    return build_lake(n_symbols=2, years=3.0)


@pytest.fixture
def settings(small_lake, tmp_path, redis_url, redis_prefix, database_url) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, lake_root=small_lake,
                    results_root=tmp_path / "results", cache_prefix=redis_prefix, admin_token=TOKEN,
                    api_workers=2, api_queue=8)


@pytest.fixture
def api(settings):
    with serving(settings) as (base, app), httpx.Client(base_url=base, timeout=60) as client:
        client.app = app
        yield client


def _cli_json(settings: Settings, *args: str) -> Any:
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(settings.lake_root),
           "CRYPTOBT_RESULTS_ROOT": str(settings.results_root), "REDIS_URL": settings.redis_url,
           "CRYPTOBT_CACHE_PREFIX": settings.cache_prefix, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "pipeline", *args, "--json"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _pick(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in SAME} for r in rows]


def test_backtest_answers_what_the_cli_prints_and_caches_it(api, settings):
    body = {"strategy": "rsi", "symbols": ["ETH_BTC", "SYN001"], "params": {"rsi_period": 21}, "fee": 0.2}
    first = api.post("/api/backtest", json=body)
    assert first.status_code == 200, first.text
    run_id = first.headers["x-run-id"]
    cli = _cli_json(settings, "backtest", "rsi", "-s", "ETH_BTC", "-s", "SYN001", "-p", "rsi_period=21",
                    "--fee", "0.2")["results"]
    assert _pick(first.json()) == _pick(cli)
    assert [r["symbol"] for r in first.json()] == [r["symbol"] for r in cli]
    # The CLI's run above found both in the cache the API filled.
    stats = api.get("/api/admin/performance/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert stats["runs"] == 2 and stats["cache_hits"] == 2 and stats["cache_misses"] == 2
    rows = api.get(f"/api/results/{run_id}").json()
    assert sorted(r["symbol"] for r in rows) == ["ETH_BTC", "SYN001"]
    assert {r["run_id"] for r in rows} == {run_id}


def test_stream_sends_each_result_progress_and_done(api, settings):
    body = {"strategy": "macd", "all": True}
    with api.stream("POST", "/api/backtest/stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("done") == 1
    results = [data for name, data in events if name == "result"]
    progress = [data for name, data in events if name == "progress"]
    symbols = sorted(demo_symbols(settings))
    assert sorted(r["symbol"] for r in results) == symbols
    assert progress[-1] == {"completed": len(symbols), "total": len(symbols), "percent": 100.0}
    assert [p["completed"] for p in progress] == sorted(p["completed"] for p in progress)
    done = events[-1][1]
    assert done["results"] == len(symbols) and not done["interrupted"] and done["seconds"] > 0
    assert _pick(sorted(results, key=lambda r: r["symbol"])) == _pick(
        sorted(api.post("/api/backtest", json=body).json(), key=lambda r: r["symbol"]))
    # A second identical stream is all cache hits, cached results first.
    with api.stream("POST", "/api/backtest/stream", json=body) as response:
        again = list(sse_events(response.iter_lines()))
    assert again[-1][1]["cache_hits"] == len(symbols) and again[-1][1]["cache_misses"] == 0


def demo_symbols(settings: Settings) -> list[str]:
    from pipeline.lake import snapshots as lake

    return list(lake.require_snapshot(settings.lake_root).symbols)


def test_sweep_answers_the_cli_shape(api, settings):
    body = {"strategy": "rsi", "symbols": ["SYN000", "XMR_BTC"], "grid": ["rsi_period=7,14", "oversold_threshold=25,30"],
            "top": 2}
    answer = api.post("/api/sweep", json=body)
    assert answer.status_code == 200, answer.text
    cli = _cli_json(settings, "sweep", "rsi", "-s", "SYN000", "-s", "XMR_BTC", "-g", "rsi_period=7,14",
                    "-g", "oversold_threshold=25,30", "--top", "2")["best"]
    assert _pick(answer.json()) == _pick(cli)
    with api.stream("POST", "/api/sweep/stream", json=body) as response:
        events = list(sse_events(response.iter_lines()))
    # Streamed: each symbol's `top` best (2 x 2); written: all 8 (the done event counts them).
    assert len([1 for name, _ in events if name == "result"]) == 4 and events[-1][0] == "done"
    assert events[-1][1]["results"] == 8


def test_sweep_statistics_end_the_stream_as_the_cli_prints_them(api, settings):
    """Issue 30: `stats` and its options in the body; the done event carries what `sweep --json` has, the
    rows their columns; a bad `reps` is the CLI's one-line error, before any work."""
    body = {"strategy": "rsi", "symbols": ["ETH_BTC", "SYN000"], "grid": ["rsi_period=7,14", "oversold_threshold=25,30"],
            "stats": "spa,mcs,psr", "reps": 300, "seed": 4, "benchmark": "buy_and_hold"}
    with api.stream("POST", "/api/sweep/stream", json=body) as response:
        events = list(sse_events(response.iter_lines()))
    assert events[-1][0] == "done", events[-1]
    stats = events[-1][1]["stats"]
    cli = _cli_json(settings, "sweep", "rsi", "-s", "ETH_BTC", "-s", "SYN000", "-g", "rsi_period=7,14",
                    "-g", "oversold_threshold=25,30", "--stats", "spa,mcs,psr", "--reps", "300", "--seed", "4",
                    "--benchmark", "buy_and_hold")["stats"]
    assert stats == cli and stats["benchmark"] == "buy_and_hold"
    assert stats["symbols"]["ETH_BTC"]["spa"] is not None and stats["symbols"]["ETH_BTC"]["stepm"] is None
    rows = [data for name, data in events if name == "result"]
    assert all(r["spa_consistent"] == stats["symbols"][r["symbol"]]["spa"]["consistent"] for r in rows)
    bad = api.post("/api/sweep", json={**body, "reps": 0})
    assert bad.status_code == 422 and bad.json()["error"].startswith("--reps 0 is out of range"), bad.text


def test_stops_size_and_slippage_in_the_body_answer_what_the_cli_flags_give(api, settings):
    body = {"strategy": "rsi", "symbols": ["ETH_BTC"], "grid": ["sl=1,2", "trail=0,1"], "tp": 3, "size": 0.5,
            "slippage": 0.05, "top": 4}
    answer = api.post("/api/sweep", json=body)
    assert answer.status_code == 200, answer.text
    cli = _cli_json(settings, "sweep", "rsi", "-s", "ETH_BTC", "-g", "sl=1,2", "-g", "trail=0,1", "--tp", "3",
                    "--size", "0.5", "--slippage", "0.05", "--top", "4")["best"]
    keys = (*SAME, "sl_pct", "tp_pct", "trail", "size", "slippage_pct")
    assert [{k: r[k] for k in keys} for r in answer.json()] == [{k: r[k] for k in keys} for r in cli]
    assert {(r["sl_pct"], r["trail"]) for r in cli} == {(1.0, False), (1.0, True), (2.0, False), (2.0, True)}


def test_intrabar_detail_in_the_body_answers_what_the_cli_flag_gives(api, settings):
    """Issue 29: `detail` decides the stops on the sample pairs' own 5-minute bars, as `--detail 5m` does."""
    body = {"strategy": "rsi", "symbols": ["ETH_BTC", "LTC_BTC"], "sl": 0.5, "tp": 0.6, "detail": "5m"}
    answer = api.post("/api/backtest", json=body)
    assert answer.status_code == 200, answer.text
    cli = _cli_json(settings, "backtest", "rsi", "-s", "ETH_BTC", "-s", "LTC_BTC", "--sl", "0.5", "--tp", "0.6",
                    "--detail", "5m")["results"]
    keys = (*SAME, "detail", "bars_without_detail")
    assert sorted(({k: r[k] for k in keys} for r in answer.json()), key=lambda r: r["symbol"]) == sorted(
        ({k: r[k] for k in keys} for r in cli), key=lambda r: r["symbol"])
    assert {r["detail"] for r in cli} == {"5m"} and all(r["bars_without_detail"] == 0 for r in cli)


def test_catalog_endpoints_come_from_the_registry_and_the_lake(api, settings):
    assert api.get("/api/strategies").json() == json.loads(json.dumps(options.strategy_catalog()))
    symbols = api.get("/api/symbols").json()
    assert sorted(s["symbol"] for s in symbols["symbols"]) == sorted(demo_symbols(settings))
    assert "/api/backtest/stream" in api.get("/openapi.json").json()["paths"]
    assert api.get("/docs").status_code == 200
    page = api.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    # Offline: the dashboard names no other host.
    assert "http://" not in page.text and "https://" not in page.text


def test_results_top_and_equity(api):
    api.post("/api/backtest", json={"strategy": "bollinger"})
    top = api.get("/api/results/top", params={"strategy": "bollinger", "n": 3}).json()
    assert len(top) == 3 and top[0]["total_return_pct"] >= top[-1]["total_return_pct"]
    curve = api.post("/api/equity", json={"strategy": "rsi", "symbol": "ETH_BTC", "points": 100}).json()
    assert curve["symbol"] == "ETH_BTC" and len(curve["times"]) == len(curve["equity"]) <= 101
    result = api.post("/api/backtest", json={"strategy": "rsi", "symbols": ["ETH_BTC"], "trades": True}).json()[0]
    assert curve["equity"][-1] == pytest.approx(result["final_value"])
    assert len(curve["trades"]) == len(result["trades"])


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/api/backtest", {"strategy": "nope"}, 422, "unknown strategy 'nope'; choose one of:"),
    ("/api/backtest", {"strategy": "rsi", "params": {"rsi_period": 1}}, 422, "rsi_period=1 is out of range"),
    ("/api/backtest", {"strategy": "ma_crossover", "params": {"fast_period": 40}}, 422,
     "fast_period=40 must be less than slow_period=30"),
    ("/api/backtest", {"strategy": "rsi", "fee": 100}, 422, "--fee 100.0 is out of range"),
    ("/api/backtest", {"strategy": "rsi", "fill": "open"}, 422, "--fill 'open' is not allowed"),
    ("/api/backtest", {"strategy": "rsi", "interval": "2h"}, 422, "--interval '2h' is not allowed"),
    ("/api/backtest", {"strategy": "rsi", "symbols": ["ETH_BTC"], "all": True}, 422, "use either --symbol or --all"),
    ("/api/backtest", {"strategy": "rsi", "timerange": "2024"}, 422, "--timerange '2024'"),
    ("/api/backtest", {"strategy": "rsi", "fee": "abc"}, 422, "fee 'abc': Input should be a valid number"),
    ("/api/backtest", {"strategy": "rsi", "bogus": 1}, 422, "bogus 1: Extra inputs are not permitted"),
    ("/api/backtest", {"strategy": "rsi", "symbols": ["x'); DROP TABLE results; --"]}, 400, "unknown symbol(s)"),
    ("/api/backtest/stream", {"strategy": "rsi", "timerange": "20300101-"}, 400, "--timerange has no bars"),
    ("/api/sweep", {"strategy": "rsi", "grid": ["rsi_period=9:2:1"]}, 422, "stop is below start"),
    ("/api/sweep", {"strategy": "rsi", "grid": ["rsi_period=7,14"], "top": 0}, 422, "--top 0 is out of range"),
    ("/api/backtest", {"strategy": "rsi", "sl": -1}, 422, "--sl -1.0 is out of range: must be a number >= 0"),
    ("/api/backtest", {"strategy": "rsi", "size": 2}, 422, "--size 2.0 is out of range: must be a number > 0"),
    ("/api/backtest", {"strategy": "rsi", "trail": True}, 422, "--trail needs a stop-loss to trail"),
    ("/api/sweep", {"strategy": "rsi", "grid": ["sl=1,2"], "sl": 3}, 422, "sl is given twice"),
    ("/api/backtest", {"strategy": "rsi", "sl": 1, "detail": "3m"}, 422, "--detail '3m' is not allowed"),
    ("/api/backtest", {"strategy": "rsi", "detail": "5m"}, 422, "--detail 5m decides stops on finer bars"),
    ("/api/backtest", {"strategy": "rsi", "sl": 1, "detail": "1h"}, 400, "--detail 1h is not finer than the run's 1h"),
    ("/api/equity", {"strategy": "rsi", "symbol": "NOPE"}, 400, "unknown symbol(s) 'NOPE'"),
])
def test_bad_requests_are_one_json_error_with_the_cli_message(api, path, body, status, message):
    response = api.post(path, json=body)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"] and message in response.json()["error"]
    assert "Traceback" not in response.text and "\n" not in response.json()["error"]


def test_the_cli_refuses_the_same_values_with_the_same_message(settings):
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(settings.lake_root), "REDIS_URL": "",
           "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "pipeline", "backtest", "rsi", "-p", "rsi_period=1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "rsi_period=1 is out of range: must be an integer >= 2" in done.stderr


def test_bad_queries_and_unknown_runs(api):
    assert api.get("/api/results/top", params={"n": 0}).json() == {
        "error": f"--n 0 is out of range: an integer from 1 to {options.MAX_TOP}"}
    assert api.get("/api/results/top", params={"strategy": "nope"}).status_code == 400
    assert api.get("/api/results/not-a-run").status_code == 422
    missing = api.get("/api/results/20200101T000000000000Z-0123abcd")
    assert missing.status_code == 404 and "no results for run" in missing.json()["error"]
    assert api.post("/api/backtest", content=b"{not json", headers={"content-type": "application/json"}
                    ).status_code == 422
    assert api.get("/api/nothing").json() == {"error": "Not Found"}


def test_results_sql_is_not_reachable(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if "sql" in p or "query" in p]
    for path in ("/api/results/sql", "/api/sql", "/api/results/query"):
        assert api.post(path, json={"query": "SELECT 1"}).status_code in (404, 405)
        assert api.get(path, params={"query": "SELECT 1"}).status_code in (404, 405, 422)


def test_admin_endpoints_need_the_token(api, settings, redis_client):
    api.post("/api/backtest", json={"strategy": "rsi", "symbols": ["ETH_BTC", "LTC_BTC"]})
    for method, path in (("GET", "/api/admin/cache/stats"), ("POST", "/api/admin/cache/clear"),
                         ("POST", "/api/admin/cache/invalidate?symbol=ETH_BTC"),
                         ("GET", "/api/admin/performance/stats?hours=24")):
        assert api.request(method, path).status_code == 403
        wrong = api.request(method, path, headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 403 and TOKEN not in wrong.text
    auth = {"Authorization": f"Bearer {TOKEN}"}
    stats = api.get("/api/admin/cache/stats", headers=auth).json()
    assert stats["keys"] == 2 and stats["prefix"] == settings.cache_prefix
    dropped = api.post("/api/admin/cache/invalidate", params={"symbol": "ETH_BTC"}, headers=auth).json()
    assert dropped == {"symbol": "ETH_BTC", "deleted": 1}
    assert api.get("/api/admin/cache/stats", headers=auth).json()["keys"] == 1
    assert api.post("/api/admin/cache/clear", headers=auth).json()["deleted"] >= 1
    assert list(redis_client.scan_iter(match=f"{settings.cache_prefix}:bt:*")) == []
    perf = api.get("/api/admin/performance/stats", params={"hours": 24}, headers=auth).json()
    assert perf["runs"] == 1 and perf["duration_mean_s"] > 0 and perf["duration_p95_s"] > 0
    assert perf["api"]["max_running"] == 2
    assert api.get("/api/admin/performance/stats", params={"hours": 0}, headers=auth).json() == {
        "error": "--hours 0.0 is out of range: a number > 0 and <= 876000"}  # as `cryptobt stats --hours 0`


def test_admin_endpoints_are_off_without_a_token(settings):
    with serving(replace(settings, admin_token="")) as (base, _), httpx.Client(base_url=base) as client:
        response = client.get("/api/admin/cache/stats", headers={"Authorization": "Bearer x"})
        assert response.status_code == 404 and "CRYPTOBT_ADMIN_TOKEN" in response.json()["error"]


def test_healthz_reports_lake_redis_postgres_without_secrets(settings, tmp_path):
    with serving(replace(settings, database_url=settings.database_url.replace("postgres@", "postgres:pw-secret@"))
                 ) as (base, _), httpx.Client(base_url=base, timeout=30) as client:
        health = client.get("/healthz").json()
    assert health["lake"]["ok"] and health["lake"]["snapshot_id"] and health["redis"]["ok"]
    assert "pw-secret" not in json.dumps(health)
    with serving(replace(settings, redis_url="redis://127.0.0.1:1/0", lake_root=tmp_path / "none")
                 ) as (base, _), httpx.Client(base_url=base, timeout=30) as client:
        down = client.get("/healthz")
    assert down.status_code == 503
    assert not down.json()["lake"]["ok"] and not down.json()["redis"]["ok"] and down.json()["postgres"]["ok"]


def _wait_finished(app, count: int = 1) -> list:
    deadline = time.monotonic() + 120
    while len(app.state.runner.recent) < count:
        assert time.monotonic() < deadline, "the runs never finished"
        time.sleep(0.05)
    return list(app.state.runner.recent)


@pytest.mark.slow
def test_a_client_that_disconnects_cancels_the_rest_of_the_run(settings, long_lake):
    with serving(replace(settings, lake_root=long_lake)) as (base, app):
        with httpx.Client(base_url=base, timeout=60) as client, client.stream(
                "POST", "/api/sweep/stream", json={"strategy": "rsi", "grid": LONG_GRID}) as response:
            # Leaves once the kernel is under way (a sweep streams each symbol's best results when
            # its chunk of symbols is done, progress within it).
            for name, data in sse_events(response.iter_lines()):
                if name == "progress" and data["completed"] > 0:
                    break
        gone = time.monotonic()
        job = _wait_finished(app)[0]
    done = job.events[-1]["data"]
    assert job.state == "cancelled" and done["interrupted"]
    assert 0 < done["results"] < done["planned"] == 20000 * 2
    print(f"cancelled {job.finished_at - gone:.3f} s after the client left; "
          f"{done['results']} of {done['planned']} results kept")


@pytest.mark.slow
def test_a_full_queue_answers_429_and_queued_requests_learn_their_position(settings, long_lake):
    tight = replace(settings, lake_root=long_lake, api_workers=1, api_queue=1)
    with serving(tight) as (base, app), httpx.Client(base_url=base, timeout=60) as one, \
            httpx.Client(base_url=base, timeout=60) as two:
        with one.stream("POST", "/api/sweep/stream", json={"strategy": "rsi", "grid": LONG_GRID}) as first:
            # Held, not dropped: closing the iterator would close the connection (and cancel the run).
            events_first = sse_events(first.iter_lines())
            assert next(events_first)[0] == "progress"
            with two.stream("POST", "/api/sweep/stream",
                            json={"strategy": "rsi", "grid": LONG_GRID, "fee": 0.2}) as second:
                events_second = sse_events(second.iter_lines())
                name, data = next(events_second)
                assert (name, data) == ("queued", {"position": 1, "running": 1})
                refused = httpx.post(f"{base}/api/backtest", json={"strategy": "macd"}, timeout=30)
                assert refused.status_code == 429 and "retry later" in refused.json()["error"]
        finished = _wait_finished(app, 2)
    assert sorted(job.state for job in finished) == ["cancelled", "cancelled"]
    assert app.state.runner.counts["rejected"] == 1 and app.state.runner.counts["started"] == 1


@pytest.mark.slow
def test_identical_concurrent_requests_compute_once(settings, long_lake):
    body = {"strategy": "rsi", "grid": ["rsi_period=2:61:1", "oversold_threshold=20,25,30"]}
    with serving(replace(settings, lake_root=long_lake)) as (base, app), \
            httpx.Client(base_url=base, timeout=120) as one, httpx.Client(base_url=base, timeout=120) as two:
        with one.stream("POST", "/api/sweep/stream", json=body) as first:
            stream_a = sse_events(first.iter_lines())  # held: dropping it would close the connection
            events_a = [next(stream_a)]
            assert events_a[0][0] == "progress"
            with two.stream("POST", "/api/sweep/stream", json=body) as second:
                events_b = list(sse_events(second.iter_lines()))
            events_a += list(stream_a)
    assert app.state.runner.counts["started"] == 1 and app.state.runner.counts["joined"] == 1
    assert events_a == events_b and events_a[-1][0] == "done"
    assert events_a[-1][1]["results"] == 180 * 2


@pytest.fixture(scope="module")
def futures_lake(build_lake) -> Path:
    return build_lake(n_symbols=2, years=0.1, futures_sample=demo.DEFAULT_FUTURES)


def test_futures_runs_through_the_api_with_the_clis_numbers_and_errors(futures_lake, tmp_path, redis_url,
                                                                      redis_prefix, database_url):
    """SPEC 4.3 through HTTP: the option table's futures fields are the API's, with the CLI's numbers and the
    CLI's one-line errors (422/400 with {"error": ...})."""
    settings = Settings(database_url=database_url, redis_url=redis_url, lake_root=futures_lake,
                        results_root=tmp_path / "results", cache_prefix=redis_prefix, admin_token=TOKEN)
    body = {"strategy": "rsi", "symbols": [demo.FUTURES_SYMBOL], "market": "futures", "leverage": 20,
            "direction": "both", "margin": "cross", "params": {"rsi_period": 6}}
    with serving(settings) as (base, _), httpx.Client(base_url=base, timeout=60) as client:
        answer = client.post("/api/backtest", json=body)
        assert answer.status_code == 200, answer.text
        (row,) = answer.json()
        cli = _cli_json(settings, "backtest", "rsi", "-s", demo.FUTURES_SYMBOL, "--market", "futures", "--leverage",
                        "20", "--direction", "both", "--margin", "cross", "-p", "rsi_period=6")["results"]
        assert _pick([row]) == _pick(cli)
        assert (row["market"], row["leverage"], row["margin"]) == ("futures", 20.0, "cross")
        assert row["funding_paid"] is not None and row["bars_without_mark"] == 43
        bad = client.post("/api/backtest", json={**body, "leverage": 126})
        assert bad.status_code in (400, 422) and "125" in bad.text
        spot = client.post("/api/backtest", json={"strategy": "rsi", "all": True, "leverage": 3})
        assert spot.status_code in (400, 422) and "add --market futures" in spot.json()["error"]
