"""The HTTP API and dashboard (`cryptobt api`): wiring only, over the same run path as the CLI.

Validation is `pipeline.engine.options` (through `models`), runs are `runs.execute` in threads under
`jobs.Runner` (bounded, queued, identical requests joined, cancelled when every listener
leaves). The routes are `pipeline.api.routes`, one router per concern; this module makes the app:
its middleware, its error answers and its schema. Errors are `{"error": "..."}` with a 4xx code;
nothing else of an exception leaves. `results sql` (arbitrary SQL) is deliberately not reachable from here.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette._utils import parse_host_header
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api.answers import ApiError, documented, error_answer, shown
from pipeline.api.jobs import Runner
from pipeline.api.models import MAX_BODY_BYTES
from pipeline.api.routes import admin, catalog, dashboard, health, results, runs
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError

# The routers, in the order their paths appear in the schema.
ROUTERS = (runs.router, catalog.router, results.router, admin.router, health.router, dashboard.router)


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
        host_shown = shown(given)[1:] if given is not None else "(none)"
        await error_answer(400, f"Host {host_shown} is not a name this server answers to; allowed: "
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
            await error_answer(413, self._too_large())(scope, receive, send)
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


def _errors(app: FastAPI) -> None:
    """Every failure answered as one JSON line, never a traceback."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        problems = []
        for error in exc.errors():
            if error.get("type") == "json_invalid":
                problems.append(f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'unreadable')})")
            else:
                where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
                problems.append(f"{where}{shown(error.get('input'))}: {error.get('msg', 'invalid')}")
        return error_answer(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(PipelineError)
    async def _pipeline(_: Request, exc: PipelineError) -> Response:
        return error_answer(400, str(exc))

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> Response:
        return error_answer(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return error_answer(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        return error_answer(500, f"unexpected {type(exc).__name__}")


def _schema(app: FastAPI) -> dict[str, Any]:
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


def create_app(settings: Settings | None = None, host: str | None = None) -> FastAPI:
    """The app over `settings` (default: the environment), serving the Host names of `allowed_hosts`
    (`host`: the address it listens on). One Runner per app."""
    # The modules the handlers use, imported now: a first import inside a handler holds the event loop.
    for module in ("store.cache", "engine.batch", "lake.snapshots", "store.results", "runs", "source.postgres",
                   "engine.strategies"):
        importlib.import_module(f"pipeline.{module}")

    settings = settings or Settings.from_env()
    app = FastAPI(title="cryptobt", version=__import__("pipeline").__version__,
                  description="Backtest every crypto at once: runs, streams, results, cache and run metrics. "
                              f"Request bodies are at most {MAX_BODY_BYTES:,} bytes (413 beyond); errors are "
                              '`{"error": "..."}`.',
                  docs_url=None, redoc_url=None, responses=documented(400, 413, 422))
    app.state.settings = settings  # the routes' AppSettings and AppRunner
    app.state.runner = Runner(settings.api_workers or os.cpu_count() or 1, settings.api_queue)
    # Outermost first: a wrong Host is refused before its body is read.
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(AllowedHosts, allowed_hosts=allowed_hosts(settings, host))
    _errors(app)
    for router in ROUTERS:
        app.include_router(router)
    dashboard.mount_docs_assets(app)
    app.openapi = lambda: _schema(app)  # type: ignore[method-assign]
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
