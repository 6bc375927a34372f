"""What every route of the HTTP API shares: JSON answers exactly as `--json` prints them, the one-line
`{"error": "..."}` of every failure, the documented error codes, and the app's settings and runner."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request
from fastapi import Path as ApiPath
from fastapi.responses import Response

from pipeline.api.jobs import Runner
from pipeline.api.models import MAX_BODY_BYTES, ErrorBody
from pipeline.core import tables
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError

T = TypeVar("T")
RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{12}Z-[0-9a-f]{8}$")
RunId = Annotated[str, ApiPath(pattern=RUN_ID.pattern, max_length=40,
                               description="A run id, e.g. 20261122T234450719947Z-564fd93c.")]
Symbol = Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                                     description="Only this symbol.")]
# An error answer names the bad value, cut to this many characters (a value may be up to a body long).
MAX_ERROR_CHARS = 1000
MAX_SHOWN_CHARS = 80


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_answer(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON exactly as `--json` prints it (NaN as null, dates as ISO text)."""
    return Response(tables.json_text(value), status_code=status, media_type="application/json", headers=headers)


def error_answer(status: int, message: str) -> Response:
    text = " ".join(message.split())
    return json_answer({"error": text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."},
                       status)


def shown(value: Any) -> str:
    """A request value as an error names it: JSON scalars only, cut short."""
    if isinstance(value, bool) or value is None:
        return " " + json.dumps(value)
    if not isinstance(value, str | int | float):
        return ""
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 64 else f"{str(value)[:20]}..."
    return " " + (text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS - 3] + "...")


def rule(check: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A `pipeline.engine.options` check of request values: its message (the CLI's) with 422."""
    try:
        return check(*args, **kwargs)
    except PipelineError as exc:
        raise ApiError(422, str(exc)) from None
    except OverflowError as exc:  # a number too large for a float or a C integer somewhere in a rule
        raise ApiError(422, f"a number in the request is too large ({exc})") from None


def rows(columns: list[str], values: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """A query's rows as objects by column name."""
    return [dict(zip(columns, row, strict=True)) for row in values]


def documented(*codes: int, **more: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
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


# The app's settings and runner (`create_app` keeps them in app.state), for a route to declare. Async:
# FastAPI would run a plain function in its thread pool, which a busy server may have full.
async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _runner(request: Request) -> Runner:
    return request.app.state.runner


AppSettings = Annotated[Settings, Depends(_settings)]
AppRunner = Annotated[Runner, Depends(_runner)]


def result_cache(settings: Settings) -> Any:
    """The result cache, for the admin and health routes (close it after use)."""
    from pipeline.store.cache import ResultCache

    # A Redis that is down is reported in the answer (`available`, `ok`), not as a Python warning.
    return ResultCache.from_settings(settings, on_warning=lambda _: None)
