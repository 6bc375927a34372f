"""Health: the lake snapshot, Redis and PostgreSQL, each reachable or not."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from pipeline.api.answers import OBJECT, AppSettings, json_answer, result_cache
from pipeline.core.config import redact_url
from pipeline.core.errors import PipelineError

router = APIRouter()


@router.get("/healthz", tags=["health"], responses={200: OBJECT, 503: {**OBJECT, "description": "No lake snapshot"}},
            summary="Lake snapshot, Redis and PostgreSQL reachability")
async def healthz(settings: AppSettings) -> Response:
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
        cache = result_cache(settings)
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
    return json_answer(health, 200 if health["lake"]["ok"] else 503)
