"""Admin: the result cache's statistics, clearing and invalidation, and the run metrics; behind
Bearer CRYPTOBT_ADMIN_TOKEN, absent without one configured."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from pipeline.api.answers import (
    OBJECT,
    ApiError,
    AppRunner,
    AppSettings,
    documented,
    json_answer,
    result_cache,
    rule,
)
from pipeline.engine import options


def admin(request: Request) -> None:
    """Bearer CRYPTOBT_ADMIN_TOKEN; the admin endpoints do not exist without one configured."""
    settings = request.app.state.settings
    if not settings.admin_token:
        raise ApiError(404, "admin endpoints are off: set CRYPTOBT_ADMIN_TOKEN to turn them on")
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        raise ApiError(403, "admin endpoints need the header Authorization: Bearer <CRYPTOBT_ADMIN_TOKEN>")


router = APIRouter(dependencies=[Depends(admin)])
ANSWERS = documented(403, 404, **{"200": OBJECT})


@router.get("/api/admin/cache/stats", tags=["admin"], responses=ANSWERS, summary="Keys, hits, misses, hit rate, memory")
async def cache_stats(settings: AppSettings) -> Response:
    def read() -> dict[str, Any]:
        cache = result_cache(settings)
        try:
            return cache.stats()
        finally:
            cache.close()

    return json_answer(await asyncio.to_thread(read))


@router.post("/api/admin/cache/clear", tags=["admin"], responses=ANSWERS,
             summary="Delete every key under the cache prefix")
async def cache_clear(settings: AppSettings) -> Response:
    def clear() -> int:
        cache = result_cache(settings)
        try:
            return cache.clear()
        finally:
            cache.close()

    return json_answer({"deleted": await asyncio.to_thread(clear)})


@router.post("/api/admin/cache/invalidate", tags=["admin"], responses=ANSWERS, summary="Drop one symbol's cached results")
async def cache_invalidate(symbol: Annotated[str, Query(min_length=1)], settings: AppSettings) -> Response:
    def drop() -> int:
        cache = result_cache(settings)
        try:
            return cache.invalidate_symbol(symbol)
        finally:
            cache.close()

    return json_answer({"symbol": symbol, "deleted": await asyncio.to_thread(drop)})


@router.get("/api/admin/performance/stats", tags=["admin"], responses=ANSWERS,
            summary="Run durations (mean, p50, p95, p99), hit rate, throughput; and the API's queue")
async def performance_stats(
        settings: AppSettings, runner: AppRunner,
        hours: Annotated[float, Query(json_schema_extra={"exclusiveMinimum": 0, "maximum": options.MAX_HOURS})
                         ] = 24.0,
) -> Response:
    from pipeline.store import results

    hours = rule(options.check_number, "--hours", hours, 0, options.MAX_HOURS, above=True)
    stats = await asyncio.to_thread(results.run_stats, settings.results_root, hours)
    stats["api"] = {"running": len(runner.running), "waiting": len(runner.waiting),
                    "max_running": runner.max_running, "max_queued": runner.max_queued, **runner.counts}
    return json_answer(stats)
