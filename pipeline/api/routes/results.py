"""What was run: the best results recorded, a run's rows, the run history with a run's leaderboard,
round trips and a sweep's parameter sets (the dashboard's Runs tab)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as ApiPath
from fastapi.responses import Response

from pipeline.api.answers import (
    ARRAY,
    OBJECT,
    RUN_ID,
    ApiError,
    AppSettings,
    RunId,
    Symbol,
    documented,
    json_answer,
    rows,
    rule,
)
from pipeline.core.config import Settings
from pipeline.core.errors import InputError
from pipeline.engine import options

router = APIRouter()


def _not_found(settings: Settings, exc: InputError) -> ApiError:
    """A 404 with the CLI's message, less the server's folder (a client has no use for it)."""
    return ApiError(404, str(exc).replace(f" at {settings.results_root}", ""))


@router.get("/api/results/top", tags=["results"], responses={200: ARRAY},
            summary="The best results recorded (as `results top`)")
async def results_top(
        settings: AppSettings,
        strategy: Annotated[str | None, Query(max_length=100)] = None,
        n: Annotated[int, Query(json_schema_extra={"minimum": 1, "maximum": options.MAX_TOP})] = 10,
) -> Response:
    from pipeline.store import results

    rule(options.check_top, n, "--n")
    if strategy is not None:
        options.resolve_strategy(strategy)
    columns, found = await asyncio.to_thread(results.top, settings.results_root, strategy, n)
    return json_answer(rows(columns, found))


@router.get("/api/results/{run_id}", tags=["results"], responses=documented(404, **{"200": ARRAY}),
            summary="Every results row of one run")
async def results_of_run(run_id: Annotated[str, ApiPath(json_schema_extra={"pattern": RUN_ID.pattern})],
                         settings: AppSettings) -> Response:
    from pipeline.store import results

    if not RUN_ID.match(run_id):
        raise ApiError(422, f"run id {run_id!r} is not a run id (e.g. 20261122T234450719947Z-564fd93c)")
    columns, found = await asyncio.to_thread(results.run_rows, settings.results_root, run_id)
    if not found:
        raise ApiError(404, f"no results for run {run_id}")
    return json_answer(rows(columns, found))


@router.get("/api/runs", tags=["results"], responses={200: ARRAY},
            summary="The run history, newest first (as `results runs`)")
async def run_history(
    settings: AppSettings,
    n: Annotated[int, Query(ge=1, le=1000, description="How many of the newest runs.")] = 50,
) -> Response:
    from pipeline.store import results

    return json_answer(rows(*await asyncio.to_thread(results.run_history, settings.results_root, n)))


@router.get("/api/runs/{run_id}", tags=["results"], responses=documented(404, **{"200": OBJECT}),
            summary="A past run and its leaderboard (as `results show`)")
async def run_show(run_id: RunId, settings: AppSettings,
                   n: Annotated[int, Query(ge=1, le=10_000, description="Rows of its leaderboard.")] = 100,
                   ) -> Response:
    from pipeline.store import results

    try:
        shown = await asyncio.to_thread(results.show, settings.results_root, run_id, n)
    except InputError as exc:
        raise _not_found(settings, exc) from None
    return json_answer({"run": shown["run"], "results": rows(shown["columns"], shown["rows"]),
                        "walk_forward": rows(shown["columns"], shown["walk_forward"])})


@router.get("/api/runs/{run_id}/trades", tags=["results"], responses=documented(404, **{"200": ARRAY}),
            summary="A run's round trips from the trades table (as `results trades`; runs made with trades on)")
async def run_trades(run_id: RunId, settings: AppSettings, symbol: Symbol = None) -> Response:
    from pipeline.store import results

    try:
        found = await asyncio.to_thread(results.round_trips, settings.results_root, run_id, symbol)
    except InputError as exc:  # no such run, symbol, or no trades recorded
        raise _not_found(settings, exc) from None
    return json_answer(rows(found["columns"], found["rows"]))


@router.get("/api/runs/{run_id}/sets", tags=["results"], responses=documented(404, **{"200": ARRAY}),
            summary="A sweep's parameter sets with their mean metrics over its symbols (or one): its heatmap")
async def run_sets(run_id: RunId, settings: AppSettings, symbol: Symbol = None,
                   n: Annotated[int, Query(ge=1, le=100_000, description="Most parameter sets.")] = 100_000,
                   ) -> Response:
    from pipeline.store import results

    sets = rows(*await asyncio.to_thread(results.sweep_sets, settings.results_root, run_id, symbol, n))
    if not sets:
        raise ApiError(404, f"no results for run {run_id}" + (f" and symbol {symbol}" if symbol else ""))
    for row in sets:
        row["params"] = json.loads(row.pop("params_json"))
    # The strategy's parameters, then the run parameters (sl, tp, ...) the sweep varied, as -g names them.
    named = options.set_parameters(sets)
    return json_answer([{"params": p, **{k: r[k] for k in ("symbols", "total_return_pct", "sharpe",
                                                            "max_drawdown_pct", "num_trades")}}
                        for p, r in zip(named, sets, strict=True)])
