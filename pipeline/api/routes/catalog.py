"""What there is to run: the strategies with their parameters, the current snapshot's symbols."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from pipeline.api.answers import ARRAY, OBJECT, AppSettings, json_answer
from pipeline.core import run_options
from pipeline.engine import options

router = APIRouter()


@router.get("/api/strategies", tags=["catalog"], responses={200: ARRAY},
            summary="Strategies: parameters, defaults, allowed ranges")
async def strategies() -> Response:
    return json_answer(options.strategy_catalog())


@router.get("/api/symbols", tags=["catalog"], responses={200: OBJECT},
            summary="The current snapshot's symbols and their bars; the intervals a run takes")
async def symbols(settings: AppSettings) -> Response:
    from pipeline.lake import snapshots as lake

    snapshot = await asyncio.to_thread(lake.require_snapshot, settings.lake_root)
    rows = [{"symbol": name, "data_version": meta.get("data_version"),
             "intervals": {k: v for k, v in meta.items() if isinstance(v, dict)}}
            for name, meta in sorted(snapshot.symbols.items())]
    return json_answer({"snapshot_id": snapshot.id, "intervals": list(run_options.INTERVALS), "symbols": rows})
