"""Runs: backtest, sweep (answered whole or streamed as Server-Sent Events), one equity curve, a portfolio.

Each run is `runs.execute` (or `runs.portfolio`) in a thread under the app's `jobs.Runner`: bounded,
queued, identical requests joined, cancelled when every listener leaves.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from pipeline.api.answers import (
    ARRAY,
    EVENTS,
    OBJECT,
    ApiError,
    AppRunner,
    AppSettings,
    documented,
    error_answer,
    json_answer,
    rule,
)
from pipeline.api.jobs import Emitter, Job, QueueFull, Runner, ShuttingDown
from pipeline.api.models import EquityRequest, PortfolioRequest, RunRequest, SweepRequest
from pipeline.core import tables
from pipeline.core.config import Settings

# How often an idle stream makes sure its client is still there (ASGI >= 2.4 servers).
DISCONNECT_POLL_SECONDS = 0.25
KEY_SLICE = 10_000  # parameter sets per json.dumps call of a request key (~10 ms of the GIL)

router = APIRouter()


def _sse(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {tables.json_text(data)}\n\n"


def thin(points: int, **series: Any) -> dict[str, list[float]]:
    """Curves of one time axis (`times` first, epoch seconds) cut to at most `points` + 1 evenly spaced
    points, the last always kept; NaN as null."""
    n = len(series["times"])
    step = max(1, -(-n // points))
    keep = list(range(0, n, step))
    if keep and keep[-1] != n - 1:
        keep.append(n - 1)
    return {name: [int(values[i]) if name == "times" else float(values[i]) for i in keep]
            for name, values in series.items()}


def request_key(kind: str, request: RunRequest) -> str:
    """Identical requests (same validated config, symbols, interval, cache use) share one run."""
    config, symbols, interval = request.checked
    extra = {"top": request.top} if isinstance(request, SweepRequest) else {}
    sets = {"params_list": config.params_list, "executions": config.executions}
    rest = {name: value for name, value in config.__dict__.items() if name not in sets}
    digest = hashlib.sha256(json.dumps([kind, rest, symbols, interval, request.no_cache, extra], default=str,
                                       sort_keys=True).encode())
    # The parameter sets a slice at a time: json.dumps holds the GIL (every thread, the event loop too)
    # for the whole call, seconds for a million sets.
    for name, values in sets.items():
        digest.update(name.encode())
        for start in range(0, len(values), KEY_SLICE):
            digest.update(json.dumps(values[start:start + KEY_SLICE], default=str, sort_keys=True).encode())
    return digest.hexdigest()


def _backtest_work(settings: Settings, request: RunRequest, command: str) -> Any:
    from pipeline import runs
    from pipeline.engine import batch as engine

    config, symbols, interval = request.checked
    top = request.top if isinstance(request, SweepRequest) else None

    def work(emitter: Emitter) -> tuple[dict[str, Any], Any]:
        def on_results(batch: list[dict[str, Any]]) -> None:
            for result in batch:
                emitter.emit("result", result)

        def on_progress(done: int, total: int) -> None:
            emitter.emit("progress", {"completed": done, "total": total,
                                      "percent": round(100.0 * done / total, 2) if total else 100.0})

        outcome = runs.execute(settings, config, symbols, interval, no_cache=request.no_cache,
                               on_results=on_results, on_progress=on_progress, command=command,
                               should_stop=emitter.cancelled, keep=top,
                               on_warning=lambda m: emitter.emit("warning", {"warning": m}))
        done = {"run_id": outcome.run_id, "snapshot_id": outcome.snapshot_id, "interval": outcome.interval,
                "results": outcome.n_results, "planned": outcome.planned,
                "interrupted": outcome.interrupted, "cache_hits": outcome.cache_hits,
                "cache_misses": outcome.cache_misses, "seconds": outcome.seconds,
                "kernel_seconds": outcome.kernel_seconds, "bar_steps": outcome.bar_steps,
                "left_out": outcome.left_out, **({"stats": outcome.stats} if outcome.stats else {})}
        answer = outcome.results if top is None else engine.sweep_best(outcome.results, top, *engine.ranking(config))
        return done, answer

    return work


async def _checked(request: RunRequest | PortfolioRequest) -> Any:
    """`request.check()` in a thread (a million-point grid takes seconds), never on the event loop."""
    return await asyncio.to_thread(rule, request.check)


def _queued(runner: Runner, key: str, work: Any) -> Job:
    """`work` submitted under `key`: a full queue answers 429, a server shutting down 503."""
    try:
        return runner.submit(key, work)
    except QueueFull as exc:
        raise ApiError(429, str(exc)) from None
    except ShuttingDown as exc:
        raise ApiError(503, str(exc)) from None


async def _submit(settings: Settings, runner: Runner, kind: str, request: RunRequest) -> Job:
    from pipeline import runs

    config, symbols, interval = await _checked(request)

    def admit() -> str:
        # What the run itself would refuse (unknown symbol, empty --timerange), refused before queueing.
        runs.check_request(settings, config, symbols, interval)
        return request_key(kind, request)

    key = await asyncio.to_thread(admit)
    return _queued(runner, key, _backtest_work(settings, request, f"api {kind}"))


async def _wait(runner: Runner, job: Job) -> Response:
    """The job's answer once it ends (the request leaves it if the client goes)."""
    job.listeners += 1
    try:
        await job.ended.wait()
    finally:
        runner.leave(job)
    last = job.events[-1]
    if last["event"] == "error":
        return error_answer(last["data"]["status"], last["data"]["error"])
    done = last["data"]
    if done.get("interrupted"):  # the server is shutting down: a part is no answer, say what was kept
        kept = (f"kept and wrote the {done['results']:,} of {done['planned']:,} results that finished"
                if done["results"] else "nothing was kept")
        return error_answer(503, f"the run was interrupted (the server is shutting down): {kept} (run "
                                 f"{done['run_id']} marked interrupted); retry when it is back")
    return json_answer(job.answer, headers={"X-Run-Id": done["run_id"]})


async def _stream(settings: Settings, runner: Runner, kind: str, request: Request,
                  body: RunRequest) -> StreamingResponse:
    job = await _submit(settings, runner, kind, body)
    job.listeners += 1

    # Before ASGI 2.4 Starlette watches for the client leaving and cancels this generator; from 2.4
    # on only a failed write tells, so an idle stream writes an SSE comment now and then.
    spec = tuple(int(p) for p in request.scope.get("asgi", {}).get("spec_version", "2.0").split("."))
    probe = spec >= (2, 4)

    async def events() -> AsyncIterator[str]:
        seen = 0
        try:
            while True:
                while seen < len(job.events):
                    event = job.events[seen]
                    seen += 1
                    yield _sse(event["event"], event["data"])
                if job.finished:
                    return
                try:
                    await asyncio.wait_for(job.changed.wait(), DISCONNECT_POLL_SECONDS)
                except TimeoutError:
                    if probe:
                        yield ": still there?\n\n"
        finally:
            runner.leave(job)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/api/backtest", tags=["runs"], responses=documented(429, 503, **{"200": ARRAY}),
             summary="Backtest one strategy over symbols; the results of --json")
async def backtest(body: RunRequest, settings: AppSettings, runner: AppRunner) -> Response:
    return await _wait(runner, await _submit(settings, runner, "backtest", body))


@router.post("/api/backtest/stream", tags=["runs"], responses=documented(429, 503, **{"200": EVENTS}),
             summary="The same as Server-Sent Events: result per symbol, progress, done (or error)")
async def backtest_stream(request: Request, body: RunRequest, settings: AppSettings,
                          runner: AppRunner) -> StreamingResponse:
    return await _stream(settings, runner, "backtest", request, body)


# The sweep's two routes are the backtest's over its own request model: FastAPI reads the body's model
# off each signature, so each route declares its own.
@router.post("/api/sweep", tags=["runs"], responses=documented(429, 503, **{"200": ARRAY}),
             summary="A parameter grid; the best sets overall and per symbol")
async def sweep(body: SweepRequest, settings: AppSettings, runner: AppRunner) -> Response:
    return await _wait(runner, await _submit(settings, runner, "sweep", body))


@router.post("/api/sweep/stream", tags=["runs"], responses=documented(429, 503, **{"200": EVENTS}),
             summary="A sweep as Server-Sent Events")
async def sweep_stream(request: Request, body: SweepRequest, settings: AppSettings,
                       runner: AppRunner) -> StreamingResponse:
    return await _stream(settings, runner, "sweep", request, body)


@router.post("/api/equity", tags=["runs"], responses=documented(404, **{"200": OBJECT}),
             summary="One symbol's equity vs buy & hold with its trades")
async def equity(body: EquityRequest, settings: AppSettings) -> Response:
    from pipeline import runs

    config, symbols, interval = await _checked(body)

    def curve() -> dict[str, Any]:
        chosen = runs.check_request(settings, config, symbols, interval)
        found = runs.equity_curves(settings, config, symbols or [], chosen, snapshot_id=body.snapshot)
        if not found:
            raise ApiError(404, f"{body.symbol} has no bars in this range")
        c = found[0]
        return {"symbol": c.symbol, "interval": chosen, **thin(body.points, times=c.times, close=c.close,
                                                               equity=c.equity, buy_hold=c.buy_hold),
                "trades": c.trades}

    return json_answer(await asyncio.to_thread(curve))


@router.post("/api/portfolio", tags=["runs"], responses=documented(429, 503, **{"200": OBJECT}),
             summary="One account over many symbols (as `portfolio --json`) with the best account's curves")
async def portfolio(body: PortfolioRequest, settings: AppSettings, runner: AppRunner) -> Response:
    from pipeline import runs

    config, sets, symbols = await _checked(body)

    def work(_: Emitter) -> tuple[dict[str, Any], Any]:
        outcome = runs.portfolio(settings, config, sets, symbols, body.interval, rank_by=body.rank_by,
                                 command="api portfolio")
        best = outcome.best
        answer: dict[str, Any] = {"run_id": outcome.run_id, "snapshot_id": outcome.snapshot_id,
                                  "interval": outcome.interval, "accounts": outcome.results, "best": None,
                                  "warnings": outcome.notes}
        if best:
            curve = best["equity_curve"]
            answer["best"] = {k: v for k, v in best.items() if k != "equity_curve"}
            answer["best"]["equity_curve"] = thin(body.points, times=curve["times"], equity=curve["equity"],
                                                  buy_hold=curve["buy_hold"])
        return {"run_id": outcome.run_id}, answer

    await asyncio.to_thread(runs.check_request, settings, config, symbols, body.interval)
    key = hashlib.sha256(json.dumps(["portfolio", body.model_dump()], sort_keys=True).encode()).hexdigest()
    return await _wait(runner, _queued(runner, key, work))
