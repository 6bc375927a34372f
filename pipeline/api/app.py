"""The HTTP API and dashboard (`cryptobt api`): wiring only, over the same run path as the CLI.

Validation is `pipeline.engine.options` (through `models`), runs are `runs.execute` in threads under
`jobs.Runner` (bounded, queued, identical requests joined, cancelled when every listener
leaves). Errors are `{"error": "..."}` with a 4xx code; nothing else of an exception leaves.
`results sql` (arbitrary SQL) is deliberately not reachable from here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import fastapi_offline
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as ApiPath
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette._utils import parse_host_header
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api import page
from pipeline.api.jobs import Emitter, Job, QueueFull, Runner, ShuttingDown
from pipeline.api.models import (
    MAX_BODY_BYTES,
    EquityRequest,
    ErrorBody,
    PortfolioRequest,
    RunRequest,
    SweepRequest,
)
from pipeline.core import run_options, tables
from pipeline.core.config import Settings, redact_url
from pipeline.core.errors import InputError, PipelineError
from pipeline.engine import options

T = TypeVar("T")
# Swagger UI's files (swagger-ui-bundle.js, swagger-ui.css, favicon.png) as fastapi-offline ships them.
DOCS_STATIC = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_ASSETS = "/docs-assets"
RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{12}Z-[0-9a-f]{8}$")
RunId = Annotated[str, ApiPath(pattern=RUN_ID.pattern, max_length=40,
                               description="A run id, e.g. 20261122T234450719947Z-564fd93c.")]
Symbol = Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                                     description="Only this symbol.")]
# How often an idle stream makes sure its client is still there (ASGI >= 2.4 servers).
DISCONNECT_POLL_SECONDS = 0.25
# An error answer names the bad value, cut to this many characters (a value may be up to a body long).
MAX_ERROR_CHARS = 1000
MAX_SHOWN_CHARS = 80
KEY_SLICE = 10_000  # parameter sets per json.dumps call of a request key (~10 ms of the GIL)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON exactly as `--json` prints it (NaN as null, dates as ISO text)."""
    return Response(tables.json_text(value), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str) -> Response:
    text = " ".join(message.split())
    return _json({"error": text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."}, status)


def _shown(value: Any) -> str:
    """A request value as an error names it: JSON scalars only, cut short."""
    if isinstance(value, bool) or value is None:
        return " " + json.dumps(value)
    if not isinstance(value, str | int | float):
        return ""
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 64 else f"{str(value)[:20]}..."
    return " " + (text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS - 3] + "...")


class AllowedHosts(TrustedHostMiddleware):
    """Starlette's Host check, answering this API's one-line JSON error: a web page's script that
    reaches the server through a name it controls (DNS rebinding) sends that name as Host."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allow_any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("host")
        parsed = parse_host_header(given)
        host = parsed.host.lower() if parsed is not None else None
        if host is not None and any(host == p or (p.startswith("*") and host.endswith(p[1:]))
                                    for p in self.allowed_hosts):
            await self.app(scope, receive, send)
            return
        shown = _shown(given)[1:] if given is not None else "(none)"
        await _error(400, f"Host {shown} is not a name this server answers to; allowed: "
                          f"{', '.join(self.allowed_hosts)} (add names with CRYPTOBT_API_ALLOWED_HOSTS)"
                     )(scope, receive, send)


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413, before reading it when Content-Length says
    so, else as soon as the bytes received pass the limit (chunked bodies)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self) -> str:
        return f"the request body is larger than {self.limit:,} bytes, the most this API reads"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isascii() or not length.isdigit() or int(length) > self.limit):
            await _error(413, self._too_large())(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # FastAPI lets an HTTPException from reading the body through: the app answers it.
                    raise StarletteHTTPException(413, self._too_large())
            return message

        await self.app(scope, limited, send)


def allowed_hosts(settings: Settings, host: str | None = None) -> list[str]:
    """The Host names served: CRYPTOBT_API_ALLOWED_HOSTS (default localhost, 127.0.0.1, ::1) and the
    address the server listens on; IPv6 literals as a Host header writes them ([::1])."""
    names = [*settings.api_allowed_hosts, *([host] if host else [])]
    return list(dict.fromkeys(f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names))


def _rule(check: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A `pipeline.engine.options` check of request values: its message (the CLI's) with 422."""
    try:
        return check(*args, **kwargs)
    except PipelineError as exc:
        raise ApiError(422, str(exc)) from None
    except OverflowError as exc:  # a number too large for a float or a C integer somewhere in a rule
        raise ApiError(422, f"a number in the request is too large ({exc})") from None




def _sse(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {tables.json_text(data)}\n\n"


def _thin(points: int, **series: Any) -> dict[str, list[float]]:
    """Curves of one time axis (`times` first, epoch seconds) cut to at most `points` + 1 evenly spaced
    points, the last always kept; NaN as null."""
    n = len(series["times"])
    step = max(1, -(-n // points))
    keep = list(range(0, n, step))
    if keep and keep[-1] != n - 1:
        keep.append(n - 1)
    return {name: [int(values[i]) if name == "times" else float(values[i]) for i in keep]
            for name, values in series.items()}


def _request_key(kind: str, request: RunRequest) -> str:
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


def _documented(*codes: int, **more: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses`: each error code's `{"error": ...}` body, plus `more` (by code)."""
    what = {400: "A Host not served, a body that is not JSON text, or what the lake refuses (an unknown "
                 "symbol, a timerange without bars)",
            403: "Admin endpoints need Authorization: Bearer <CRYPTOBT_ADMIN_TOKEN>",
            404: "Not found (or admin endpoints off)",
            413: f"The body is larger than {MAX_BODY_BYTES:,} bytes",
            422: "A value that breaks a rule; the message is the CLI's",
            429: "The run queue is full; retry later",
            503: "The server is shutting down: the run was refused, or interrupted (the message says what was "
                 "kept)"}
    out: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody, "description": what[code]} for code in codes}
    out.update({int(code): value for code, value in more.items()})
    return out


def _body(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"content": {media: {"schema": schema}}}


ARRAY = _body({"type": "array", "items": {"type": "object"}})
OBJECT = _body({"type": "object"})
# Each Server-Sent Event (OpenAPI 3.1: the media type's schema is one event's): data is JSON text.
EVENTS = {**_body({"type": "object", "required": ["event", "data"],
                   "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}, "text/event-stream"),
          "description": "Server-Sent Events: queued, progress, result, warning, then done or error"}


def create_app(settings: Settings | None = None, host: str | None = None) -> FastAPI:
    """The app over `settings` (default: the environment), serving the Host names of `allowed_hosts`
    (`host`: the address it listens on). One Runner per app."""
    # The modules the handlers use, imported now: a first import inside a handler holds the event loop.
    for module in ("store.cache", "engine.batch", "lake.snapshots", "store.results", "runs", "source.postgres",
                   "engine.strategies"):
        importlib.import_module(f"pipeline.{module}")

    settings = settings or Settings.from_env()
    runner = Runner(settings.api_workers or os.cpu_count() or 1, settings.api_queue)
    app = FastAPI(title="cryptobt", version=__import__("pipeline").__version__,
                  description="Backtest every crypto at once: runs, streams, results, cache and run metrics. "
                              f"Request bodies are at most {MAX_BODY_BYTES:,} bytes (413 beyond); errors are "
                              '`{"error": "..."}`.',
                  docs_url=None, redoc_url=None, responses=_documented(400, 413, 422))
    app.state.settings = settings
    app.state.runner = runner
    # Outermost first: a wrong Host is refused before its body is read.
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(AllowedHosts, allowed_hosts=allowed_hosts(settings, host))

    # --- errors: one JSON line, never a traceback ------------------------------------

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        problems = []
        for error in exc.errors():
            if error.get("type") == "json_invalid":
                problems.append(f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'unreadable')})")
            else:
                where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
                problems.append(f"{where}{_shown(error.get('input'))}: {error.get('msg', 'invalid')}")
        return _error(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(PipelineError)
    async def _pipeline(_: Request, exc: PipelineError) -> Response:
        return _error(400, str(exc))

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> Response:
        return _error(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        return _error(500, f"unexpected {type(exc).__name__}")

    # --- runs -------------------------------------------------------------------------

    def _backtest_work(request: RunRequest, command: str) -> Any:
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
                    "left_out": outcome.left_out}
            answer = outcome.results if top is None else engine.sweep_best(outcome.results, top, *engine.ranking(config))
            return done, answer

        return work

    async def _checked(request: RunRequest) -> tuple[Any, list[str] | None, str]:
        """`request.check()` in a thread (a million-point grid takes seconds), never on the event loop."""
        return await asyncio.to_thread(_rule, request.check)

    async def _submit(kind: str, request: RunRequest) -> Job:
        from pipeline import runs

        config, symbols, interval = await _checked(request)

        def admit() -> str:
            # What the run itself would refuse (unknown symbol, empty --timerange), refused before queueing.
            runs.check_request(settings, config, symbols, interval)
            return _request_key(kind, request)

        key = await asyncio.to_thread(admit)
        try:
            return runner.submit(key, _backtest_work(request, f"api {kind}"))
        except QueueFull as exc:
            raise ApiError(429, str(exc)) from None
        except ShuttingDown as exc:
            raise ApiError(503, str(exc)) from None

    async def _answer(kind: str, request: RunRequest) -> Response:
        return await _wait(await _submit(kind, request))

    async def _wait(job: Job) -> Response:
        """The job's answer once it ends (the request leaves it if the client goes)."""
        job.listeners += 1
        try:
            await job.ended.wait()
        finally:
            runner.leave(job)
        last = job.events[-1]
        if last["event"] == "error":
            return _error(last["data"]["status"], last["data"]["error"])
        done = last["data"]
        if done.get("interrupted"):  # the server is shutting down: a part is no answer, say what was kept
            kept = (f"kept and wrote the {done['results']:,} of {done['planned']:,} results that finished"
                    if done["results"] else "nothing was kept")
            return _error(503, f"the run was interrupted (the server is shutting down): {kept} (run {done['run_id']} "
                               "marked interrupted); retry when it is back")
        return _json(job.answer, headers={"X-Run-Id": done["run_id"]})

    async def _stream(kind: str, request: Request, body: RunRequest) -> StreamingResponse:
        job = await _submit(kind, body)
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

    @app.post("/api/backtest", tags=["runs"], responses=_documented(429, 503, **{"200": ARRAY}), summary="Backtest one strategy over symbols; the results of --json")
    async def backtest(body: RunRequest) -> Response:
        return await _answer("backtest", body)

    @app.post("/api/backtest/stream", tags=["runs"], responses=_documented(429, 503, **{"200": EVENTS}),
              summary="The same as Server-Sent Events: result per symbol, progress, done (or error)")
    async def backtest_stream(request: Request, body: RunRequest) -> StreamingResponse:
        return await _stream("backtest", request, body)

    @app.post("/api/sweep", tags=["runs"], responses=_documented(429, 503, **{"200": ARRAY}), summary="A parameter grid; the best sets overall and per symbol")
    async def sweep(body: SweepRequest) -> Response:
        return await _answer("sweep", body)

    @app.post("/api/sweep/stream", tags=["runs"], responses=_documented(429, 503, **{"200": EVENTS}), summary="A sweep as Server-Sent Events")
    async def sweep_stream(request: Request, body: SweepRequest) -> StreamingResponse:
        return await _stream("sweep", request, body)

    @app.post("/api/equity", tags=["runs"], responses=_documented(404, **{"200": OBJECT}), summary="One symbol's equity vs buy & hold with its trades")
    async def equity(body: EquityRequest) -> Response:
        from pipeline import runs

        config, symbols, interval = await _checked(body)

        def curve() -> dict[str, Any]:
            chosen = runs.check_request(settings, config, symbols, interval)
            found = runs.equity_curves(settings, config, symbols or [], chosen, snapshot_id=body.snapshot)
            if not found:
                raise ApiError(404, f"{body.symbol} has no bars in this range")
            c = found[0]
            return {"symbol": c.symbol, "interval": chosen, **_thin(body.points, times=c.times, close=c.close,
                                                                    equity=c.equity, buy_hold=c.buy_hold),
                    "trades": c.trades}

        return _json(await asyncio.to_thread(curve))

    @app.post("/api/portfolio", tags=["runs"], responses=_documented(429, 503, **{"200": OBJECT}),
              summary="One account over many symbols (as `portfolio --json`) with the best account's curves")
    async def portfolio(body: PortfolioRequest) -> Response:
        from pipeline import runs

        config, sets, symbols = await _checked(body)

        def work(_: Emitter) -> tuple[dict[str, Any], Any]:
            outcome = runs.portfolio(settings, config, sets, symbols, body.interval, rank_by=body.rank_by,
                                     command="api portfolio")
            best = outcome.best
            answer: dict[str, Any] = {"run_id": outcome.run_id, "snapshot_id": outcome.snapshot_id,
                                      "interval": outcome.interval, "accounts": outcome.results, "best": None}
            if best:
                curve = best["equity_curve"]
                answer["best"] = {k: v for k, v in best.items() if k != "equity_curve"}
                answer["best"]["equity_curve"] = _thin(body.points, times=curve["times"], equity=curve["equity"],
                                                       buy_hold=curve["buy_hold"])
            return {"run_id": outcome.run_id}, answer

        await asyncio.to_thread(runs.check_request, settings, config, symbols, body.interval)
        key = hashlib.sha256(json.dumps(["portfolio", body.model_dump()], sort_keys=True).encode()).hexdigest()
        try:
            return await _wait(runner.submit(key, work))
        except QueueFull as exc:
            raise ApiError(429, str(exc)) from None
        except ShuttingDown as exc:
            raise ApiError(503, str(exc)) from None

    # --- what there is ----------------------------------------------------------------

    @app.get("/api/strategies", tags=["catalog"], responses={200: ARRAY}, summary="Strategies: parameters, defaults, allowed ranges")
    async def strategies() -> Response:
        return _json(options.strategy_catalog())

    @app.get("/api/symbols", tags=["catalog"], responses={200: OBJECT}, summary="The current snapshot's symbols and their bars; the intervals a run takes")
    async def symbols() -> Response:
        from pipeline.lake import snapshots as lake

        snapshot = await asyncio.to_thread(lake.require_snapshot, settings.lake_root)
        rows = [{"symbol": name, "data_version": meta.get("data_version"),
                 "intervals": {k: v for k, v in meta.items() if isinstance(v, dict)}}
                for name, meta in sorted(snapshot.symbols.items())]
        return _json({"snapshot_id": snapshot.id, "intervals": list(run_options.INTERVALS), "symbols": rows})

    @app.get("/api/results/top", tags=["results"], responses={200: ARRAY}, summary="The best results recorded (as `results top`)")
    async def results_top(
            strategy: Annotated[str | None, Query(max_length=100)] = None,
            n: Annotated[int, Query(json_schema_extra={"minimum": 1, "maximum": options.MAX_TOP})] = 10,
    ) -> Response:
        from pipeline.engine.strategies import get_strategy
        from pipeline.store import results

        _rule(options.check_top, n, "--n")
        if strategy is not None:
            get_strategy(strategy)
        columns, rows = await asyncio.to_thread(results.top, settings.results_root, strategy, n)
        return _json([dict(zip(columns, row, strict=True)) for row in rows])

    @app.get("/api/results/{run_id}", tags=["results"], responses=_documented(404, **{"200": ARRAY}),
             summary="Every results row of one run")
    async def results_of_run(run_id: Annotated[str, ApiPath(json_schema_extra={"pattern": RUN_ID.pattern})]
                             ) -> Response:
        from pipeline.store import results

        if not RUN_ID.match(run_id):
            raise ApiError(422, f"run id {run_id!r} is not a run id (e.g. 20261122T234450719947Z-564fd93c)")
        columns, rows = await asyncio.to_thread(results.run_rows, settings.results_root, run_id)
        if not rows:
            raise ApiError(404, f"no results for run {run_id}")
        return _json([dict(zip(columns, row, strict=True)) for row in rows])

    # --- the run history (the dashboard's Runs tab) ---------------------------------------

    def _rows(columns: list[str], rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def _not_found(exc: InputError) -> ApiError:
        """A 404 with the CLI's message, less the server's folder (a client has no use for it)."""
        return ApiError(404, str(exc).replace(f" at {settings.results_root}", ""))

    @app.get("/api/runs", tags=["results"], responses={200: ARRAY}, summary="The run history, newest first (as `results runs`)")
    async def run_history(
        n: Annotated[int, Query(ge=1, le=1000, description="How many of the newest runs.")] = 50,
    ) -> Response:
        from pipeline.store import results

        return _json(_rows(*await asyncio.to_thread(results.run_history, settings.results_root, n)))

    @app.get("/api/runs/{run_id}", tags=["results"], responses=_documented(404, **{"200": OBJECT}), summary="A past run and its leaderboard (as `results show`)")
    async def run_show(run_id: RunId,
                       n: Annotated[int, Query(ge=1, le=10_000, description="Rows of its leaderboard.")] = 100,
                       ) -> Response:
        from pipeline.store import results

        try:
            shown = await asyncio.to_thread(results.show, settings.results_root, run_id, n)
        except InputError as exc:
            raise _not_found(exc) from None
        return _json({"run": shown["run"], "results": _rows(shown["columns"], shown["rows"]),
                      "walk_forward": _rows(shown["columns"], shown["walk_forward"])})

    @app.get("/api/runs/{run_id}/trades", tags=["results"], responses=_documented(404, **{"200": ARRAY}),
             summary="A run's round trips from the trades table (as `results trades`; runs made with trades on)")
    async def run_trades(run_id: RunId, symbol: Symbol = None) -> Response:
        from pipeline.store import results

        try:
            found = await asyncio.to_thread(results.round_trips, settings.results_root, run_id, symbol)
        except InputError as exc:  # no such run, symbol, or no trades recorded
            raise _not_found(exc) from None
        return _json(_rows(found["columns"], found["rows"]))

    @app.get("/api/runs/{run_id}/sets", tags=["results"], responses=_documented(404, **{"200": ARRAY}),
             summary="A sweep's parameter sets with their mean metrics over its symbols (or one): its heatmap")
    async def run_sets(run_id: RunId, symbol: Symbol = None,
                       n: Annotated[int, Query(ge=1, le=100_000, description="Most parameter sets.")] = 100_000,
                       ) -> Response:
        from pipeline.store import results

        rows = _rows(*await asyncio.to_thread(results.sweep_sets, settings.results_root, run_id, symbol, n))
        if not rows:
            raise ApiError(404, f"no results for run {run_id}" + (f" and symbol {symbol}" if symbol else ""))
        for row in rows:
            row["params"] = json.loads(row.pop("params_json"))
        # The strategy's parameters, then the run parameters (sl, tp, ...) the sweep varied, as -g names them.
        named = options.set_parameters(rows)
        return _json([{"params": p, **{k: r[k] for k in ("symbols", "total_return_pct", "sharpe",
                                                          "max_drawdown_pct", "num_trades")}}
                      for p, r in zip(named, rows, strict=True)])

    # --- admin ------------------------------------------------------------------------

    def admin(request: Request) -> None:
        """Bearer CRYPTOBT_ADMIN_TOKEN; the admin endpoints do not exist without one configured."""
        if not settings.admin_token:
            raise ApiError(404, "admin endpoints are off: set CRYPTOBT_ADMIN_TOKEN to turn them on")
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
            raise ApiError(403, "admin endpoints need the header Authorization: Bearer <CRYPTOBT_ADMIN_TOKEN>")

    guarded = [Depends(admin)]
    admin_answers = _documented(403, 404, **{"200": OBJECT})

    def _cache() -> Any:
        from pipeline.store.cache import ResultCache

        # A Redis that is down is reported in the answer (`available`, `ok`), not as a Python warning.
        return ResultCache.from_settings(settings, on_warning=lambda _: None)

    @app.get("/api/admin/cache/stats", tags=["admin"], dependencies=guarded, responses=admin_answers, summary="Keys, hits, misses, hit rate, memory")
    async def cache_stats() -> Response:
        def read() -> dict[str, Any]:
            cache = _cache()
            try:
                return cache.stats()
            finally:
                cache.close()

        return _json(await asyncio.to_thread(read))

    @app.post("/api/admin/cache/clear", tags=["admin"], dependencies=guarded, responses=admin_answers, summary="Delete every key under the cache prefix")
    async def cache_clear() -> Response:
        def clear() -> int:
            cache = _cache()
            try:
                return cache.clear()
            finally:
                cache.close()

        return _json({"deleted": await asyncio.to_thread(clear)})

    @app.post("/api/admin/cache/invalidate", tags=["admin"], dependencies=guarded, responses=admin_answers, summary="Drop one symbol's cached results")
    async def cache_invalidate(symbol: Annotated[str, Query(min_length=1)]) -> Response:
        def drop() -> int:
            cache = _cache()
            try:
                return cache.invalidate_symbol(symbol)
            finally:
                cache.close()

        return _json({"symbol": symbol, "deleted": await asyncio.to_thread(drop)})

    @app.get("/api/admin/performance/stats", tags=["admin"], dependencies=guarded, responses=admin_answers,
             summary="Run durations (mean, p50, p95, p99), hit rate, throughput; and the API's queue")
    async def performance_stats(
            hours: Annotated[float, Query(json_schema_extra={"exclusiveMinimum": 0, "maximum": options.MAX_HOURS})
                             ] = 24.0,
    ) -> Response:
        from pipeline.store import results

        hours = _rule(options.check_number, "--hours", hours, 0, options.MAX_HOURS, above=True)
        stats = await asyncio.to_thread(results.run_stats, settings.results_root, hours)
        stats["api"] = {"running": len(runner.running), "waiting": len(runner.waiting),
                        "max_running": runner.max_running, "max_queued": runner.max_queued, **runner.counts}
        return _json(stats)

    # --- health and the dashboard -----------------------------------------------------

    @app.get("/healthz", tags=["health"], responses={200: OBJECT, 503: {**OBJECT, "description": "No lake snapshot"}},
             summary="Lake snapshot, Redis and PostgreSQL reachability")
    async def healthz() -> Response:
        def check() -> dict[str, Any]:
            from pipeline.lake import snapshots as lake
            from pipeline.source import postgres as source

            out: dict[str, Any] = {}
            try:
                snapshot = lake.current_snapshot(settings.lake_root)
                out["lake"] = {"ok": snapshot is not None, "snapshot_id": snapshot.id if snapshot else None,
                               "symbols": len(snapshot.symbols) if snapshot else 0}
            except PipelineError as exc:
                out["lake"] = {"ok": False, "error": str(exc)}
            cache = _cache()
            try:
                out["redis"] = {"ok": cache.ping(), "enabled": cache.enabled, "url": redact_url(cache.url)}
            finally:
                cache.close()
            started = time.perf_counter()
            try:
                with source.connect(settings.database_url) as conn:
                    conn.execute("SELECT 1")
                out["postgres"] = {"ok": True, "url": redact_url(settings.database_url),
                                   "ms": round((time.perf_counter() - started) * 1000, 1)}
            except PipelineError as exc:
                out["postgres"] = {"ok": False, "url": redact_url(settings.database_url), "error": str(exc)}
            out["ok"] = all(part["ok"] for part in out.values())
            return out

        health = await asyncio.to_thread(check)
        # Runs need only the lake: the service is up when it has a snapshot; the rest is reported.
        return _json(health, 200 if health["lake"]["ok"] else 503)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus what it cannot see: the registered strategies' names, and that a
        stream answers text/event-stream only."""
        if app.openapi_schema is None:
            from pipeline.engine.strategies import strategy_names

            schema = FastAPI.openapi(app)
            for model in ("RunRequest", "SweepRequest", "EquityRequest", "PortfolioRequest"):
                schema["components"]["schemas"][model]["properties"]["strategy"]["enum"] = strategy_names()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    content = operation["responses"].get("200", {}).get("content", {})
                    if "text/event-stream" in content:
                        content.pop("application/json", None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page.dashboard_html())

    # /docs with its script and style served from here (fastapi-offline's copy of Swagger UI): FastAPI's
    # own page loads them from a CDN and is blank offline. No /redoc: ReDoc fetches its logo from its CDN
    # whatever the options.
    app.mount(DOCS_ASSETS, StaticFiles(directory=DOCS_STATIC), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        # No validator badge: Swagger UI would fetch it from validator.swagger.io.
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="cryptobt - Swagger UI",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})

    return app


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` with uvicorn until SIGINT or SIGTERM (alike). Then, before uvicorn closes the
    connections, the app's runner closes: queued runs end with `error`, running ones stop after
    their current chunk, write what finished and end with `done` (interrupted: true), and every
    open stream gets that last event. A second signal stops the runs at once: their `error` says
    what was kept."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:  # a second signal of either kind, not only Ctrl-C
                self.force_exit = True
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: Any = None) -> None:
            await app.state.runner.close(lambda: self.force_exit)
            # The runs have ended (a second signal ended them at once): the rest of the shutdown is
            # quick, and a forced one would skip the app's lifespan end (a logged traceback).
            self.force_exit = False
            await super().shutdown(sockets)

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)).run()
