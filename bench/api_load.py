"""Loopback load on `cryptobt api`: concurrent stream clients, then cached single-symbol requests.

    python -m bench.api_load [--streams 50] [--singles 200] [--symbols 40] [--years 1]

Builds a sample lake in a temporary folder, starts `cryptobt api` on a free loopback port (its own
results folder and Redis prefix), and reports p50/p95 latencies and that nothing is lost: every
stream ends with `done` after one `result` per symbol, and every result equals what
`cryptobt backtest --json --no-cache` computes for the same request. Bounded in count and time
(--deadline seconds); no time is asserted, only reported (bench/API_LOAD.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# What a result must agree on with the CLI's recomputation (lineage fields legitimately differ).
SAME = ("symbol", "strategy", "params", "interval", "bars", "final_value", "total_return_pct",
        "buy_hold_return_pct", "num_trades", "closed_trades", "win_rate_pct", "max_drawdown_pct", "sharpe",
        "data_version")


def distinct_requests(n: int) -> list[dict[str, Any]]:
    """`n` different RSI requests over every symbol (the stream clients cycle through them)."""
    return [{"strategy": "rsi", "params": {"rsi_period": 8 + i}} for i in range(n)]


def _pick(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in SAME}


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "max_ms": None}
    ms = np.asarray(values) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "max_ms": round(float(ms.max()), 1)}


async def _stream(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    first = None
    results: list[dict[str, Any]] = []
    names: list[str] = []
    async with client.stream("POST", "/api/backtest/stream", json=body) as response:
        if response.status_code != 200:
            return {"status": response.status_code, "names": [], "results": [], "seconds": 0.0, "first": None}
        name, data = "message", []
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and data:
                names.append(name)
                if name == "result":
                    first = first or time.perf_counter() - started
                    results.append(json.loads("".join(data)))
                name, data = "message", []
    return {"status": 200, "names": names, "results": results, "seconds": time.perf_counter() - started,
            "first": first}


async def _single(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[int, float, list[dict[str, Any]]]:
    started = time.perf_counter()
    response = await client.post("/api/backtest", json=body)
    return response.status_code, time.perf_counter() - started, response.json()


async def load(base: str, streams: int, singles: int, symbols: list[str], distinct: int,
               concurrency: int = 20) -> dict[str, Any]:
    """Run the load against `base`; the answers and latencies, unchecked."""
    bodies = distinct_requests(distinct)
    limits = httpx.Limits(max_connections=streams + concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        began = time.perf_counter()
        streamed = await asyncio.gather(*[_stream(client, bodies[i % distinct]) for i in range(streams)])
        stream_wall = time.perf_counter() - began
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> tuple[int, float, list[dict[str, Any]], dict[str, Any]]:
            body = {**bodies[i % distinct], "symbols": [symbols[i % len(symbols)]]}
            async with gate:
                status, seconds, answer = await _single(client, body)
            return status, seconds, answer, body

        began = time.perf_counter()
        cached = await asyncio.gather(*[one(i) for i in range(singles)])
        single_wall = time.perf_counter() - began
    return {"bodies": bodies, "streamed": streamed, "cached": cached, "stream_wall_s": stream_wall,
            "single_wall_s": single_wall}


def cli_results(env: dict[str, str], body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What `cryptobt backtest --json --no-cache` computes for `body`, by symbol (an independent recompute)."""
    args = [sys.executable, "-m", "pipeline", "backtest", body["strategy"], "--json", "--no-cache"]
    for name, value in body["params"].items():
        args += ["-p", f"{name}={value}"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the CLI failed: {done.stderr.strip()}")
    return {r["symbol"]: _pick(r) for r in json.loads(done.stdout)["results"]}


def check(report: dict[str, Any], symbols: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Nothing lost, nothing different from the CLI: counts of every kind of problem, and latencies."""
    expected = {json.dumps(b, sort_keys=True): cli_results(env, b) for b in report["bodies"]}
    lost_streams = mismatches = rejected = 0
    for i, got in enumerate(report["streamed"]):
        want = expected[json.dumps(report["bodies"][i % len(report["bodies"])], sort_keys=True)]
        if got["status"] != 200:
            rejected += 1
            continue
        complete = (got["names"] and got["names"][-1] == "done" and got["names"].count("done") == 1
                    and sorted(r["symbol"] for r in got["results"]) == sorted(symbols))
        lost_streams += not complete
        mismatches += sum(_pick(r) != want.get(r["symbol"]) for r in got["results"])
    lost_singles = 0
    for status, _, answer, body in report["cached"]:
        if status != 200 or len(answer) != 1:
            lost_singles += 1
            continue
        want = expected[json.dumps({k: v for k, v in body.items() if k != "symbols"}, sort_keys=True)]
        mismatches += _pick(answer[0]) != want[body["symbols"][0]]
    ok_streams = [s for s in report["streamed"] if s["status"] == 200]
    return {
        "streams": len(report["streamed"]), "streams_rejected_429": rejected, "streams_lost": lost_streams,
        "stream_results": sum(len(s["results"]) for s in ok_streams),
        "stream_done": _percentiles([s["seconds"] for s in ok_streams]),
        "stream_first_result": _percentiles([s["first"] for s in ok_streams if s["first"] is not None]),
        "stream_wall_s": round(report["stream_wall_s"], 3),
        "singles": len(report["cached"]), "singles_lost": lost_singles,
        "single": _percentiles([seconds for status, seconds, _, _ in report["cached"] if status == 200]),
        "single_wall_s": round(report["single_wall_s"], 3),
        "single_per_s": round(len(report["cached"]) / report["single_wall_s"], 1),
        "mismatches_vs_cli": mismatches,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--distinct", type=int, default=10, help="different requests among the streams")
    parser.add_argument("--symbols", type=int, default=40, help="synthetic symbols (plus the 4 real pairs)")
    parser.add_argument("--years", type=float, default=1.0)
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds before the load is abandoned")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "API_LOAD.md")
    args = parser.parse_args()

    from pipeline import demo
    from pipeline.lake import snapshots as lake

    work = Path(tempfile.mkdtemp(prefix="cryptobt-api-load-"))
    lake_root = work / "lake"
    demo.build_sample_lake(lake_root, args.symbols, args.years, demo.DEFAULT_SAMPLE)
    symbols = sorted(lake.require_snapshot(lake_root).symbols)
    port = _free_port()
    env = {**os.environ, "CRYPTOBT_LAKE_ROOT": str(lake_root), "CRYPTOBT_RESULTS_ROOT": str(work / "results"),
           "CRYPTOBT_CACHE_PREFIX": f"cryptobt-api-load-{uuid.uuid4().hex[:8]}",
           "CRYPTOBT_API_QUEUE": str(args.streams + 10), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "api", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).json()["lake"]["ok"]:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the server did not start: {server.stderr.read() if server.poll() else ''}")
            time.sleep(0.2)
        report = asyncio.run(asyncio.wait_for(
            load(base, args.streams, args.singles, symbols, args.distinct), args.deadline))
    finally:
        server.terminate()
        server.wait(timeout=30)
    summary = check(report, symbols, env)
    summary.update({"symbols": len(symbols), "distinct_requests": args.distinct, "cores": os.cpu_count()})
    text = json.dumps(summary, indent=2)
    print(text)
    args.out.write_text(
        "# `cryptobt api` under loopback load\n\n"
        f"`python -m bench.api_load --streams {args.streams} --singles {args.singles}` on "
        f"{os.cpu_count()} cores, {len(symbols)} symbols x {args.years:g} year(s) of hourly bars; "
        "latencies in milliseconds (first result / done per stream; each cached single-symbol request).\n\n"
        f"```json\n{text}\n```\n")
    problems = summary["streams_lost"] + summary["singles_lost"] + summary["mismatches_vs_cli"]
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
